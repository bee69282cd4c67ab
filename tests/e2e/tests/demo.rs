//! The local demo's scenario as a test: real podman, CDI specs from hami-cdi
//! in /var/run/cdi, hami-core preloaded through /etc/ld.so.preload, two
//! containers on one fake GPU.

use hami_e2e::{verify, Scenario};
use hami_testkit::need::{require, Need};

#[test]
fn two_containers_share_one_gpu_through_cdi_specs() {
    let needs: Vec<Need> = hami_testkit::podman::NEEDS
        .iter()
        .chain(hami_testkit::fake_gpu::NEEDS.iter())
        .copied()
        .collect();
    if !require("two_containers_share_one_gpu_through_cdi_specs", &needs) {
        return;
    }
    let library = hami_testkit::test_library();
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    // A name unique to this run: the specs go to the shared /var/run/cdi.
    let prefix = format!("e2e{}", std::process::id());
    let mut scenario = Scenario::demo(work.path(), &state, &library, &prefix);
    scenario.saturate_seconds = 4;
    let result = scenario.run();
    // What CDI put into the container, seen from inside it.
    let probe = result.as_ref().ok().map(|_| {
        scenario.probe(
            &scenario.tenants[0],
            &[
                "sh",
                "-c",
                "env; ls /dev/nvidia0 /usr/local/vgpu/libhami_core.so; cat /etc/ld.so.preload",
            ],
        )
    });
    scenario.clean();
    let observed = result.unwrap();
    let problems = verify(&scenario.tenants, &observed, scenario.chunk);
    assert!(
        problems.is_empty(),
        "{problems:#?}\n{}",
        observed
            .iter()
            .map(|o| o.output.as_str())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    let probe = probe.unwrap().unwrap();
    for expected in [
        "CUDA_DEVICE_MEMORY_LIMIT_0=2g",
        "CUDA_DEVICE_SM_LIMIT=30",
        "CUDA_DEVICE_MEMORY_SHARED_CACHE=/usr/local/vgpu/region/vgpu.cache",
        "NVIDIA_VISIBLE_DEVICES=GPU-fa4e0000-0000-4000-8000-000000000000",
        "/dev/nvidia0",
        "/usr/local/vgpu/libhami_core.so\n/usr/local/vgpu/libhami_core.so",
    ] {
        assert!(
            probe.contains(expected),
            "{expected:?} missing in the container:\n{probe}"
        );
    }
    for t in &scenario.tenants {
        assert!(
            !std::path::Path::new(&format!("/var/run/cdi/hami.io-vgpu_{}.json", t.name)).exists()
        );
    }
}
