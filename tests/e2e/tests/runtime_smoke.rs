//! Smoke test of the runtime test kit: a dynamically linked C program runs in a
//! real podman, runc and crun container built from the kit's busybox rootfs, a
//! preloaded library's constructor runs inside it, and the kit leaves no cgroup
//! behind.

use std::path::Path;

use hami_testkit::bundle::OciBundle;
use hami_testkit::cc::{self, Artifact};
use hami_testkit::need::{require, Need};
use hami_testkit::oci::{OciRuntime, OciSandbox};
use hami_testkit::podman::{self, Podman};
use hami_testkit::rootfs::Rootfs;

const APP: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(void) {
    const char *preload = getenv("LD_PRELOAD");
    printf("app: pid=%d preload=%s\n", (int)getpid(), preload ? preload : "(unset)");
    return 0;
}
"#;

const PROBE: &str = r#"#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void probe(void) {
    printf("probe: constructor ran in pid namespace init=%d\n", getpid() == 1);
    fflush(stdout);
}
"#;

const PRELOAD_INSIDE: &str = "/usr/lib/hami-probe.so";

/// A rootfs holding the app at /usr/bin/app and the probe at PRELOAD_INSIDE.
fn rootfs_with_app(work: &Path) -> Rootfs {
    let rootfs = Rootfs::busybox(&work.join("rootfs")).expect("rootfs");
    let app = cc::compile(APP, &work.join("app"), Artifact::Executable, &[]).expect("compile app");
    let probe = cc::compile(PROBE, &work.join("probe.so"), Artifact::SharedLibrary, &[])
        .expect("compile probe");
    rootfs
        .add_binary(&app, "/usr/bin/app")
        .expect("install app");
    rootfs
        .add_binary(&probe, PRELOAD_INSIDE)
        .expect("install probe");
    rootfs
}

fn stdout_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "container failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_preloaded(stdout: &str) {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("probe: constructor ran in pid namespace init=1"),
        "{stdout}"
    );
    assert!(
        lines.contains(&format!("app: pid=1 preload={PRELOAD_INSIDE}").as_str()),
        "{stdout}"
    );
}

fn assert_cgroups_gone(name: &str) {
    let leftovers: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path().join(name.trim_start_matches('/')))
        .filter(|p| p.exists())
        .collect();
    assert!(leftovers.is_empty(), "cgroups left behind: {leftovers:?}");
}

#[test]
fn podman_runs_a_dynamic_app_with_ld_preload() {
    let needs: Vec<Need> = podman::NEEDS
        .iter()
        .chain(cc::NEEDS.iter())
        .copied()
        .collect();
    if !require("podman_runs_a_dynamic_app_with_ld_preload", &needs) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let rootfs = rootfs_with_app(work.path());
    let rootfs_arg = rootfs.path().to_string_lossy().into_owned();
    let pm = Podman::new().unwrap();
    let cgroup = pm.cgroups().path();

    let preload_env = format!("LD_PRELOAD={PRELOAD_INSIDE}");
    let out = pm
        .run(&[
            "--env",
            &preload_env,
            "--rootfs",
            &rootfs_arg,
            "/usr/bin/app",
        ])
        .unwrap();
    assert_preloaded(&stdout_of(&out));

    // Negative control: without the preload nothing else runs, and the kit's
    // containers.conf ulimits are in force.
    let out = pm
        .run(&[
            "--rootfs",
            &rootfs_arg,
            "sh",
            "-c",
            "ulimit -n; /usr/bin/app",
        ])
        .unwrap();
    assert_eq!(stdout_of(&out), "20000\napp: pid=1 preload=(unset)\n");

    drop(pm);
    assert_cgroups_gone(&cgroup);
}

fn oci_runtime_runs_a_dynamic_app_with_ld_preload(runtime: OciRuntime, test: &str) {
    let needs: Vec<Need> = runtime
        .needs()
        .iter()
        .chain(cc::NEEDS.iter())
        .copied()
        .collect();
    if !require(test, &needs) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let rootfs = rootfs_with_app(work.path());
    let sandbox = OciSandbox::new(runtime).unwrap();
    let cgroup = sandbox.cgroups().path();

    let mut bundle = OciBundle::new(
        &work.path().join("bundle"),
        rootfs.path(),
        &["/usr/bin/app"],
    );
    bundle.env("LD_PRELOAD", PRELOAD_INSIDE);
    let out = sandbox.run(&mut bundle, "smoke-preload").unwrap();
    assert_preloaded(&stdout_of(&out));

    let mut plain = OciBundle::new(&work.path().join("plain"), rootfs.path(), &["/usr/bin/app"]);
    let out = sandbox.run(&mut plain, "smoke-plain").unwrap();
    assert_eq!(stdout_of(&out), "app: pid=1 preload=(unset)\n");

    drop(sandbox);
    assert_cgroups_gone(&cgroup);
}

#[test]
fn runc_runs_a_dynamic_app_with_ld_preload() {
    oci_runtime_runs_a_dynamic_app_with_ld_preload(
        OciRuntime::Runc,
        "runc_runs_a_dynamic_app_with_ld_preload",
    );
}

#[test]
fn crun_runs_a_dynamic_app_with_ld_preload() {
    oci_runtime_runs_a_dynamic_app_with_ld_preload(
        OciRuntime::Crun,
        "crun_runs_a_dynamic_app_with_ld_preload",
    );
}

/// A container left running (detached) is killed by the kit's teardown.
#[test]
fn podman_teardown_kills_a_detached_container() {
    let needs: Vec<Need> = podman::NEEDS.to_vec();
    if !require("podman_teardown_kills_a_detached_container", &needs) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let rootfs = Rootfs::busybox(&work.path().join("rootfs")).unwrap();
    let rootfs_arg = rootfs.path().to_string_lossy().into_owned();
    let pm = Podman::new().unwrap();
    let cgroup = pm.cgroups().path();

    let out = pm
        .run(&["--detach", "--rootfs", &rootfs_arg, "sleep", "600"])
        .unwrap();
    let id = stdout_of(&out).trim().to_owned();
    let mut inspect = pm.command();
    inspect.args(["inspect", "--format", "{{.State.Pid}}", &id]);
    let pid: i32 = String::from_utf8_lossy(&inspect.output().unwrap().stdout)
        .trim()
        .parse()
        .expect("container pid");
    assert!(
        pid > 1 && Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid}"
    );

    // Checked before the private directory goes: conmon also exits when its
    // runroot disappears, which would hide a teardown that kills nothing.
    pm.teardown();
    assert!(
        !is_running(pid),
        "container process {pid} survived teardown"
    );
    assert_cgroups_gone(&cgroup);
    drop(pm);
}

/// True while `pid` exists and is not a zombie awaiting its reaper.
fn is_running(pid: i32) -> bool {
    for _ in 0..100 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return false,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z')) =>
            {
                return false
            }
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    true
}
