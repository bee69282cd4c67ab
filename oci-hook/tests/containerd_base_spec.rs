//! containerd 1.6 (Debian's) with the files `hami-oci-hook install --runtime
//! containerd` writes: the merged config.toml (CDI, annotation passthrough,
//! base_runtime_spec) and the base runtime spec carrying the hook. A private
//! containerd runs a container from that base spec with `ctr run` (through its
//! runc shim), annotated as the CRI plugin would pass a pod's annotations,
//! and the fake-driver application inside is held to the quota.
//!
//! The CRI plugin copying pod annotations into the spec (`pod_annotations`)
//! is not involved here (the test sets them on the spec directly); the CRI
//! path is tests/e2e/tests/containerd_cri.rs.

mod support;

use std::process::Command;

use hami_testkit::containerd::Containerd;
use hami_testkit::need::{require, Need};
use serde_json::{json, Value};
use support::{field, Scene, CHUNK, GPU_UUID, HOOK, PROBE};

#[test]
fn containerd_runs_the_hook_from_the_installed_base_spec() {
    let needs: Vec<Need> = hami_testkit::containerd::NEEDS
        .iter()
        .chain(hami_testkit::fake_gpu::NEEDS.iter())
        .copied()
        .collect();
    if !require(
        "containerd_runs_the_hook_from_the_installed_base_spec",
        &needs,
    ) {
        return;
    }
    let scene = Scene::new("/dev/null");
    let config = scene.work.path().join("config.toml");
    let base_spec = scene.work.path().join("hami-base-spec.json");
    // The user's config, which install must keep.
    std::fs::write(
        &config,
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.local/pause:3.9\"\n",
    )
    .unwrap();
    let out = Command::new(HOOK)
        .args(["install", "--runtime", "containerd", "--hook-path", HOOK])
        .arg("--containerd-config")
        .arg(&config)
        .arg("--base-spec")
        .arg(&base_spec)
        .args(&scene.hook_args("x")[2..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged = std::fs::read_to_string(&config).unwrap();
    for expected in [
        "sandbox_image = \"registry.local/pause:3.9\"",
        "enable_cdi = true",
        "\"hami.io/*\"",
        &format!("base_runtime_spec = \"{}\"", base_spec.display()),
    ] {
        assert!(merged.contains(expected), "{expected}: {merged}");
    }
    assert!(scene.work.path().join("config.toml.hami-backup").exists());

    let containerd = Containerd::start().unwrap();
    let id = hami_testkit::unique_name("ctrd");
    let mut spec: Value =
        serde_json::from_str(&std::fs::read_to_string(&base_spec).unwrap()).unwrap();
    spec["process"]["args"] = json!(["/bin/sh", "-c", PROBE]);
    spec["process"]["env"] = json!(["PATH=/usr/bin:/bin"]);
    spec["root"]["path"] = json!(scene.rootfs.path());
    spec["linux"]["cgroupsPath"] = json!(containerd.cgroups().child(&id));
    // As the CRI plugin would pass a scheduled pod: the scheduler's
    // allocation, and the device the device plugin granted in the spec (on
    // Kubernetes the hook adds no device of its own).
    spec["annotations"] = json!({
        "hami.io/vgpu-devices-to-allocate": format!("{GPU_UUID},NVIDIA,1024,0:;"),
        "io.kubernetes.cri.container-name": "app",
        "io.kubernetes.cri.container-type": "container",
    });
    spec["linux"]["devices"] = json!([
        {"path": "/dev/nvidia0", "type": "c", "major": 1, "minor": 3, "fileMode": 438, "uid": 0, "gid": 0}
    ]);
    let spec_path = scene.work.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();

    let out = containerd.run_spec(&spec_path, &id).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{stdout}\n{stderr}\n{}",
        containerd.log()
    );
    assert!(
        stdout.starts_with("/usr/local/vgpu/libhami_core.so\n"),
        "{stdout}"
    );
    assert_eq!(field(&stdout, "info", "total"), Some(1 << 30), "{stdout}");
    assert_eq!(
        field(&stdout, "alloc-until-oom", "count"),
        Some((1 << 30) / CHUNK),
        "{stdout}"
    );
    let log = std::fs::read_to_string(scene.log_dir.join("oci-hook.log")).unwrap();
    assert!(
        log.contains(&id) && log.contains("injected hami-core"),
        "{log}"
    );
    assert!(
        !scene.allocation_dir(&id).exists(),
        "poststop did not clean up"
    );
}
