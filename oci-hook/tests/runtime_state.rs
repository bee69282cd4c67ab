//! The State real runtimes hand a hook, read by our parser: a hook that copies
//! its stdin to a file runs at createContainer and prestart under runc and crun.

use std::path::Path;

use hami_oci_hook::state::{read_state, Config};
use hami_testkit::bundle::OciBundle;
use hami_testkit::need::require;
use hami_testkit::oci::{OciRuntime, OciSandbox};
use hami_testkit::rootfs::Rootfs;

fn runtime_hands_us_a_state_we_read(runtime: OciRuntime, stage: &str) {
    let test = format!("{}_{stage}_state", runtime.binary());
    if !require(&test, &runtime.needs()) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let rootfs = Rootfs::busybox(&work.path().join("rootfs")).unwrap();
    let capture = work.path().join("state.json");
    let bundle_dir = work.path().join("bundle");
    let mut bundle = OciBundle::new(&bundle_dir, rootfs.path(), &["/bin/true"]);
    bundle.annotation("huawei.com/vnpu-mode", "hami-core").hook(
        stage,
        Path::new("/bin/sh"),
        &["sh", "-c", &format!("cat > {}", capture.display())],
        &[],
    );
    let sandbox = OciSandbox::new(runtime).unwrap();
    let id = format!("state-{}-{stage}", std::process::id());
    let out = sandbox.run(&mut bundle, &id).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let state = read_state(std::fs::File::open(&capture).unwrap()).unwrap();
    assert_eq!(state.id, id);
    assert_eq!(state.bundle, bundle_dir);
    assert_eq!(
        state
            .annotations
            .get("huawei.com/vnpu-mode")
            .map(String::as_str),
        Some("hami-core")
    );
    // crun 1.8 sends pid 0 to createContainer hooks (runc sends the init pid):
    // the hook must not depend on the pid at that stage.
    if runtime == OciRuntime::Crun && stage == "createContainer" {
        assert_eq!(state.pid, Some(0), "{state:?}");
    } else {
        assert!(state.pid.is_some_and(|p| p > 0), "{state:?}");
    }
    let config = Config::read(&state.bundle).unwrap();
    assert_eq!(config.rootfs(&state.bundle), rootfs.path());
}

#[test]
fn runc_create_container_state() {
    runtime_hands_us_a_state_we_read(OciRuntime::Runc, "createContainer");
}

#[test]
fn runc_prestart_state() {
    runtime_hands_us_a_state_we_read(OciRuntime::Runc, "prestart");
}

#[test]
fn crun_create_container_state() {
    runtime_hands_us_a_state_we_read(OciRuntime::Crun, "createContainer");
}

#[test]
fn crun_prestart_state() {
    runtime_hands_us_a_state_we_read(OciRuntime::Crun, "prestart");
}
