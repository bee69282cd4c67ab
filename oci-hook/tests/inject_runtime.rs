//! The hook under real runc and crun, at createContainer and at prestart:
//! the fake-driver application in the container is held to the annotated
//! quota, and the preload list, device node, limits file and read-only mounts
//! are what the container sees. Poststop removes the host state, and nothing
//! is left mounted on the host.

mod support;

use hami_testkit::need::require;
use hami_testkit::oci::{OciRuntime, OciSandbox};
use hami_testkit::process::mounts_under as host_mounts_under;
use support::{field, needs, Scene, CHUNK, PROBE};

const IMAGE_PRELOAD: &str = "/lib/x86_64-linux-gnu/libc.so.6";

fn injects_and_limits(runtime: OciRuntime, stage: &str) {
    let test = format!("{}_{stage}_injects_and_limits", runtime.binary());
    if !require(&test, &needs(runtime)) {
        return;
    }
    let scene = Scene::new("/dev/null");
    // The image has a preload list of its own: it must survive.
    scene
        .rootfs
        .write("/etc/ld.so.preload", &format!("{IMAGE_PRELOAD}\n"))
        .unwrap();
    let mut bundle = scene.bundle("bundle", stage, PROBE);
    bundle
        .annotation("hami.io/gpumem", "1g")
        .annotation("hami.io/gpucores", "30")
        // The image tries to lift its own quota: the limits file outranks it.
        .env("CUDA_DEVICE_MEMORY_LIMIT_0", "8g")
        .env("CUDA_DISABLE_CONTROL", "true");
    let sandbox = OciSandbox::new(runtime).unwrap();
    let id = hami_testkit::unique_name("inject");
    let out = sandbox.run(&mut bundle, &id).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let sections: Vec<&str> = stdout.split("---\n").collect();
    assert_eq!(sections.len(), 5, "{stdout}");

    let preload: Vec<&str> = sections[0].lines().collect();
    assert_eq!(
        preload,
        ["/usr/local/vgpu/libhami_core.so", IMAGE_PRELOAD],
        "added first, the image's entries kept"
    );
    let node = sections[1];
    assert!(
        node.starts_with('c') && node.contains("1,") && node.contains(" 3 "),
        "/dev/nvidia0 is the host's /dev/null (1:3): {node}"
    );
    assert!(
        sections[2].contains("CUDA_DEVICE_MEMORY_LIMIT_0=1g")
            && sections[2].contains("CUDA_DEVICE_SM_LIMIT=30"),
        "{}",
        sections[2]
    );
    let mount_options = |target: &str| -> String {
        sections[3]
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(target))
            .unwrap_or_else(|| panic!("{target} is not mounted: {}", sections[3]))
            .split(' ')
            .nth(5)
            .unwrap()
            .to_owned()
    };
    for ro in [
        "/usr/local/vgpu/libhami_core.so",
        "/usr/local/vgpu/limits.env",
    ] {
        assert!(mount_options(ro).starts_with("ro"), "{ro}: {}", sections[3]);
    }
    assert!(mount_options("/usr/local/vgpu/region").starts_with("rw"));

    let app = sections[4];
    assert_eq!(
        field(app, "info", "total"),
        Some(1 << 30),
        "{app}\n{stderr}"
    );
    assert_eq!(
        field(app, "alloc-until-oom", "count"),
        Some((1 << 30) / CHUNK),
        "{app}"
    );
    assert_eq!(
        field(app, "alloc-until-oom", "rc"),
        Some(2),
        "CUDA_ERROR_OUT_OF_MEMORY"
    );

    // poststop removed the container's state; the hook logged with its id.
    assert!(!scene.allocation_dir(&id).exists());
    let log = std::fs::read_to_string(scene.log_dir.join("oci-hook.log")).unwrap();
    assert!(
        log.contains(&id) && log.contains("injected hami-core"),
        "{log}"
    );
    assert!(
        host_mounts_under(scene.work.path()).is_empty(),
        "mounts leaked onto the host: {:?}",
        host_mounts_under(scene.work.path())
    );
}

#[test]
fn runc_create_container_injects_and_limits() {
    injects_and_limits(OciRuntime::Runc, "createContainer");
}

#[test]
fn runc_prestart_injects_and_limits() {
    injects_and_limits(OciRuntime::Runc, "prestart");
}

#[test]
fn crun_create_container_injects_and_limits() {
    injects_and_limits(OciRuntime::Crun, "createContainer");
}

#[test]
fn crun_prestart_injects_and_limits() {
    injects_and_limits(OciRuntime::Crun, "prestart");
}

/// A quota the hook cannot read exactly stops the container, with the reason
/// in the runtime's error; the container's process never runs.
#[test]
fn malformed_quota_fails_container_creation() {
    if !require(
        "malformed_quota_fails_container_creation",
        &needs(OciRuntime::Runc),
    ) {
        return;
    }
    let scene = Scene::new("/dev/null");
    let cases = [
        (vec![("hami.io/gpumem", "4Gi")], "hami.io/gpumem"),
        (vec![("hami.io/gpucores", "150")], "hami.io/gpucores"),
        (
            vec![("hami.io/devices", "7"), ("hami.io/gpumem", "1g")],
            "not on this node",
        ),
        (vec![("huawei.com/vnpu-mode", "hami-core")], "no quota"),
        (
            vec![(
                "hami.io/vgpu-devices-to-allocate",
                "GPU-a,NVIDIA,1000,0:;GPU-b,NVIDIA,1000,0:",
            )],
            "container slots",
        ),
    ];
    for (annotations, reason) in cases {
        let mut bundle = scene.bundle("bundle", "createContainer", "echo CONTAINER-RAN");
        for (k, v) in &annotations {
            bundle.annotation(k, v);
        }
        let sandbox = OciSandbox::new(OciRuntime::Runc).unwrap();
        let id = hami_testkit::unique_name("closed");
        let out = sandbox.run(&mut bundle, &id).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{annotations:?} started: {stdout}");
        assert!(!stdout.contains("CONTAINER-RAN"), "{annotations:?}");
        assert!(
            stderr.contains("refusing to start the container") && stderr.contains(reason),
            "{annotations:?}: {stderr}"
        );
        assert!(!scene.allocation_dir(&id).exists(), "state left behind");
    }
}

/// A container without hami annotations is left exactly as it was: no log,
/// no state, no preload file, no mounts.
#[test]
fn unannotated_container_is_untouched() {
    if !require(
        "unannotated_container_is_untouched",
        &needs(OciRuntime::Runc),
    ) {
        return;
    }
    let scene = Scene::new("/dev/null");
    let mut bundle = scene.bundle(
        "bundle",
        "createContainer",
        "ls /etc/ld.so.preload /usr/local/vgpu 2>&1; grep -c vgpu /proc/self/mountinfo",
    );
    bundle.annotation("io.kubernetes.cri.container-name", "app");
    let sandbox = OciSandbox::new(OciRuntime::Runc).unwrap();
    let out = sandbox
        .run(&mut bundle, &hami_testkit::unique_name("plain"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("No such file"), "{stdout}");
    assert!(stdout.trim_end().ends_with('0'), "{stdout}");
    assert!(!scene.log_dir.exists(), "the fast path opened the log");
    assert!(!scene.state_dir.exists());
    assert!(!scene.rootfs.path().join("etc/ld.so.preload").exists());
}

/// A device node the runtime's devices cgroup does not list (the host's
/// /dev/loop-control, 10:237; runc's defaults do allow /dev/net/tun) can be
/// opened only because the hook allowed it.
fn injected_device_is_allowed(runtime: OciRuntime) {
    let name = format!("{}_injected_device_is_allowed", runtime.binary());
    if !require(&name, &needs(runtime)) {
        return;
    }
    let v1_devices = std::path::Path::new("/sys/fs/cgroup/devices/devices.allow").exists();
    let node = std::path::Path::new("/dev/loop-control");
    if !v1_devices || !node.exists() {
        // Not this machine's kind: say so rather than pass silently.
        eprintln!("SKIP {name}: needs a cgroup v1 devices controller and /dev/loop-control");
        assert!(
            std::env::var_os(hami_testkit::need::REQUIRE_ENV).is_none(),
            "{name} cannot run here"
        );
        return;
    }
    for stage in ["createContainer", "prestart"] {
        let scene = Scene::new("/dev/loop-control");
        let mut bundle = scene.bundle(
            "bundle",
            stage,
            "ls -ln /dev/nvidia0; if exec 3<>/dev/nvidia0; then echo OPENED; else echo DENIED; fi",
        );
        bundle.annotation("hami.io/gpumem", "1g");
        let sandbox = OciSandbox::new(runtime).unwrap();
        let out = sandbox
            .run(&mut bundle, &hami_testkit::unique_name("devcg"))
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("10, 237"), "{stdout}");
        assert!(stdout.contains("OPENED"), "{stage}: {stdout}\n{stderr}");
    }
}

#[test]
fn runc_injected_device_is_allowed_in_the_v1_devices_cgroup() {
    injected_device_is_allowed(OciRuntime::Runc);
}

#[test]
fn crun_injected_device_is_allowed_in_the_v1_devices_cgroup() {
    injected_device_is_allowed(OciRuntime::Crun);
}

/// With `rootfsPropagation: rshared` a mount under the rootfs propagates to
/// the host's peer of it wherever the host's mounts are shared (systemd makes
/// `/` shared; this test machine's are private, so the leak itself cannot be
/// shown here): the hook refuses rather than mount there.
#[test]
fn shared_rootfs_propagation_is_refused() {
    if !require(
        "shared_rootfs_propagation_is_refused",
        &needs(OciRuntime::Runc),
    ) {
        return;
    }
    let scene = Scene::new("/dev/null");
    for propagation in ["shared", "rshared"] {
        let mut bundle = scene.bundle("bundle", "createContainer", "echo CONTAINER-RAN");
        bundle.annotation("hami.io/gpumem", "1g");
        bundle.config_mut()["linux"]["rootfsPropagation"] = serde_json::json!(propagation);
        let sandbox = OciSandbox::new(OciRuntime::Runc).unwrap();
        let out = sandbox
            .run(&mut bundle, &hami_testkit::unique_name("shared"))
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{propagation}: started");
        assert!(stderr.contains("rootfsPropagation is shared"), "{stderr}");
        assert!(
            host_mounts_under(scene.work.path()).is_empty(),
            "{propagation}: {:?}",
            host_mounts_under(scene.work.path())
        );
    }
}
