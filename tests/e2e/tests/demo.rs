//! The local demo's scenario as a test: real podman, CDI specs from hami-cdi
//! in /var/run/cdi, hami-core preloaded through /etc/ld.so.preload, two
//! containers on one fake GPU.

use hami_e2e::{find_library, verify, Scenario};
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
    let exe = std::env::current_exe().unwrap();
    let library = find_library(exe.parent().unwrap()).expect(
        "libhami_core.so not built: run the whole workspace's tests (cargo test --workspace)",
    );
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    // A name unique to this run: the specs go to the shared /var/run/cdi.
    let prefix = format!("e2e{}", std::process::id());
    let mut scenario = Scenario::demo(work.path(), &state, &library, &prefix);
    scenario.saturate_seconds = 4;
    let result = scenario.run();
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
    for t in &scenario.tenants {
        assert!(
            !std::path::Path::new(&format!("/var/run/cdi/hami.io-vgpu_{}.json", t.name)).exists()
        );
    }
}
