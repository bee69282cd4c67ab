//! The podman path end to end: `hami-oci-hook install --runtime podman` writes
//! the hooks.d files, podman (with `--hooks-dir`) runs the hook for containers
//! annotated `huawei.com/vnpu-mode=hami-core`, and the fake-driver applications
//! inside (a CUDA one and a CANN one) are held to the annotated quota. An unannotated container does not
//! match the hooks.d rule at all, and poststop removes the container's state.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use hami_testkit::need::{require, Need};
use hami_testkit::podman::Podman;
use support::{fake_gpu, field, Scene, CHUNK, HOOK, PROBE};

fn allocations(scene: &Scene) -> Vec<String> {
    std::fs::read_dir(&scene.state_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ctr-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn podman_runs_the_installed_hook_for_annotated_containers() {
    let needs: Vec<Need> = hami_testkit::podman::NEEDS
        .iter()
        .chain(hami_testkit::fake_gpu::NEEDS.iter())
        .copied()
        .collect();
    if !require(
        "podman_runs_the_installed_hook_for_annotated_containers",
        &needs,
    ) {
        return;
    }
    let scene = Scene::new("/dev/null");
    let hooks_dir = scene.work.path().join("hooks.d");
    let mut install = Command::new(HOOK);
    install
        .args(["install", "--runtime", "podman", "--hook-path", HOOK])
        .arg("--hooks-dir")
        .arg(&hooks_dir);
    // The node options, exactly as the runtime tests give them to the hook.
    install.args(&scene.hook_args("x")[2..]);
    let out = install.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(hooks_dir.join("hami-oci-hook.json").is_file());
    assert!(hooks_dir.join("hami-oci-hook-poststop.json").is_file());

    let podman = Podman::new().unwrap().with_hooks_dir(&hooks_dir);
    let rootfs = scene.rootfs.path().to_string_lossy().into_owned();

    // Not annotated: the hooks.d rule does not match, so the hook never runs.
    let out = podman
        .run(&["--rootfs", &rootfs, "/usr/bin/cuda_app", "info"])
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(field(&stdout, "info", "total"), Some(8 << 30), "{stdout}");
    assert!(
        !scene.log_dir.exists(),
        "the hook ran for an unannotated container"
    );

    let out = podman
        .run(&[
            "--annotation",
            "huawei.com/vnpu-mode=hami-core",
            "--annotation",
            "hami.io/vnpu-core-memory=1024",
            "--rootfs",
            &rootfs,
            "/bin/sh",
            "-c",
            PROBE,
        ])
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("/usr/local/vgpu/libhami_core.so\n"),
        "{stdout}"
    );
    assert!(stdout.contains("CUDA_DEVICE_MEMORY_LIMIT_0=1g"), "{stdout}");
    assert_eq!(field(&stdout, "info", "total"), Some(1 << 30), "{stdout}");
    assert_eq!(
        field(&stdout, "alloc-until-oom", "count"),
        Some((1 << 30) / CHUNK),
        "{stdout}"
    );

    // A CANN-style application (it dlopens libascendcl.so) in the same mode:
    // 4096 MiB of a 64 GiB fake NPU, then Ascend's out-of-memory code.
    fake_gpu().install_npu(&scene.rootfs).unwrap();
    let out = podman
        .run(&[
            "--annotation",
            "huawei.com/vnpu-mode=hami-core",
            "--annotation",
            "hami.io/vnpu-core-memory=4096",
            "--rootfs",
            &rootfs,
            "/usr/bin/npu_app",
            "info",
            "acl-until-oom",
            "1073741824",
        ])
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(field(&stdout, "info", "total"), Some(4 << 30), "{stdout}");
    assert_eq!(
        field(&stdout, "acl-until-oom", "count"),
        Some(4),
        "{stdout}"
    );
    assert_eq!(
        field(&stdout, "acl-until-oom", "rc"),
        Some(207_001),
        "ACL_ERROR_RT_MEMORY_ALLOCATION"
    );

    let log = std::fs::read_to_string(scene.log_dir.join("oci-hook.log")).unwrap();
    assert_eq!(log.matches("injected hami-core").count(), 2, "{log}");

    // poststop runs when podman cleans the container up.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !allocations(&scene).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(allocations(&scene), Vec::<String>::new(), "{log}");
}
