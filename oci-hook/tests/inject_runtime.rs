//! The hook under real runc and crun, at createContainer and at prestart:
//! the fake-driver application in the container is held to the annotated
//! quota, and the preload list, device node, limits file and read-only mounts
//! are what the container sees. Poststop removes the host state, and nothing
//! is left mounted on the host.

mod support;

use hami_testkit::need::require;
use hami_testkit::oci::{OciRuntime, OciSandbox};
use support::{field, host_mounts_under, needs, Scene, CHUNK, PROBE};

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
