//! hami-core inside a real podman container: the library is bind-mounted
//! read-only, the fake driver sits in the image's library directory, and the
//! shared region lives in a host directory that the host reads back.

mod support;

use hami_core::region::layout::Limits;
use hami_core::region::Region;
use hami_testkit::need::{require, Need};
use hami_testkit::podman::{self, Podman};
use hami_testkit::rootfs::Rootfs;
use support::{field, fixture, HUNDRED_MIB, MIB};

const PRELOAD_INSIDE: &str = "/usr/local/vgpu/libhami_core.so";

#[test]
fn podman_container_gets_only_its_quota() {
    let needs: Vec<Need> = podman::NEEDS
        .iter()
        .copied()
        .chain([Need::Binary("gcc")])
        .collect();
    if !require("podman_container_gets_only_its_quota", &needs) {
        return;
    }
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let rootfs = Rootfs::busybox(&work.path().join("rootfs")).unwrap();
    fx.gpu.install(&rootfs).unwrap();
    // The preload's own runtime dependencies must exist in the image.
    rootfs.add_shared_libraries_of(&fx.preload).unwrap();
    let region_dir = work.path().join("vgpu");
    std::fs::create_dir(&region_dir).unwrap();

    let pm = Podman::new().unwrap();
    let run = |extra: &[&str], args: &[&str]| {
        let volume = format!("{}:{PRELOAD_INSIDE}:ro", fx.preload.display());
        let region = format!("{}:/run/hami/vgpu", region_dir.display());
        let rootfs_arg = rootfs.path().to_string_lossy().into_owned();
        let mut all: Vec<&str> = vec!["--volume", &volume, "--volume", &region];
        all.extend_from_slice(extra);
        all.extend_from_slice(&["--rootfs", &rootfs_arg, "/usr/bin/cuda_app"]);
        all.extend_from_slice(args);
        let out = pm.run(&all).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };

    let quota_env = [
        "--env",
        "LD_PRELOAD=/usr/local/vgpu/libhami_core.so",
        "--env",
        "CUDA_DEVICE_MEMORY_LIMIT=1000m",
        "--env",
        "CUDA_DEVICE_MEMORY_SHARED_CACHE=/run/hami/vgpu/vgpu.cache",
    ];
    let out = run(
        &quota_env,
        &["info", "nvml-info", "alloc-until-oom", HUNDRED_MIB],
    );
    assert_eq!(field(&out, "info", "total"), 1000 * MIB, "{out}");
    assert_eq!(field(&out, "nvml-info", "total"), 1000 * MIB, "{out}");
    assert_eq!(field(&out, "alloc-until-oom", "count"), 10, "{out}");

    // The host side reads the container's usage from the region file.
    let region =
        Region::open_or_create(&region_dir.join("vgpu.cache"), &Limits::unlimited()).unwrap();
    assert_eq!(region.limits().memory_bytes[0], 1000 * MIB);
    assert_eq!(region.device_used(0), 1000 * MIB);

    // Control: the same image without the preload sees the whole 8 GiB device.
    let out = run(&[], &["info", "alloc-until-oom", HUNDRED_MIB]);
    assert_eq!(field(&out, "info", "total"), 8192 * MIB, "{out}");
    assert_eq!(field(&out, "alloc-until-oom", "count"), 81, "{out}");
}
