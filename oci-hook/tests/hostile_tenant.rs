//! What a pod author, an image or a node user can write, aimed at the hook
//! through real runc: forged annotations on Kubernetes, an image preload list
//! that only looks like ours, a FIFO where the hook reads, a shared volume
//! under the mount targets, and world-writable or symlinked host state. Each
//! test is an attack that worked before the hook was hardened against it.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hami_testkit::need::require;
use hami_testkit::oci::{OciRuntime, OciSandbox};
use hami_testkit::process::mounts_under as host_mounts_under;
use serde_json::json;
use support::{field, needs, Scene, GPU_UUID, PROBE};

/// What a CRI runtime puts into every Kubernetes container's spec.
const CRI: [(&str, &str); 2] = [
    ("io.kubernetes.cri.container-type", "container"),
    ("io.kubernetes.cri.container-name", "app"),
];

fn allocation() -> String {
    format!("{GPU_UUID},NVIDIA,1024,0:;")
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(bundle: &mut hami_testkit::bundle::OciBundle, label: &str) -> Run {
    let sandbox = OciSandbox::new(OciRuntime::Runc).unwrap();
    let out = sandbox
        .run(bundle, &hami_testkit::unique_name(label))
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn runc_ready(test: &str) -> bool {
    require(test, &needs(OciRuntime::Runc))
}

/// A scheduler allocation (a pod author can write one by hand) for a container
/// the device plugin gave no device: the hook must not create the node nor
/// allow it in the devices cgroup (reproduced before as `c 1:3 rwm`).
#[test]
fn kubernetes_annotations_never_grant_a_device() {
    if !runc_ready("kubernetes_annotations_never_grant_a_device") {
        return;
    }
    let scene = Scene::new("/dev/null");
    let mut bundle = scene.bundle("forged", "createContainer", PROBE);
    for (k, v) in CRI {
        bundle.annotation(k, v);
    }
    bundle.annotation("hami.io/vgpu-devices-to-allocate", &allocation());
    let r = run(&mut bundle, "forged");
    assert!(!r.ok, "started without a granted device:\n{}", r.stdout);
    assert!(
        r.stderr.contains("the runtime did not give this container"),
        "{}",
        r.stderr
    );
    let left: Vec<_> = std::fs::read_dir(&scene.state_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ctr-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "a refused container left host state: {left:?}"
    );

    // The same pod once the device plugin granted the device: runc creates
    // the node, the hook adds the quota and nothing else.
    let mut bundle = scene.bundle("granted", "createContainer", PROBE);
    for (k, v) in CRI {
        bundle.annotation(k, v);
    }
    bundle.annotation("hami.io/vgpu-devices-to-allocate", &allocation());
    bundle.config_mut()["linux"]["devices"] = json!([
        {"path": "/dev/nvidia0", "type": "c", "major": 1, "minor": 3, "fileMode": 438, "uid": 0, "gid": 0}
    ]);
    let r = run(&mut bundle, "granted");
    assert!(r.ok, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(
        field(&r.stdout, "info", "total"),
        Some(1 << 30),
        "{}",
        r.stdout
    );
    let log = std::fs::read_to_string(scene.log_dir.join("oci-hook.log")).unwrap();
    assert!(log.contains("injected hami-core"), "{log}");
    assert!(
        !log.contains("devices cgroup") && !log.contains("device /dev/nvidia0"),
        "the hook granted a device itself:\n{log}"
    );
}

/// `hami.io/gpumem` and `hami.io/devices` are podman's direct form. On
/// Kubernetes they are a pod author naming a device by hand: ignored.
#[test]
fn kubernetes_containers_ignore_the_direct_form() {
    if !runc_ready("kubernetes_containers_ignore_the_direct_form") {
        return;
    }
    let scene = Scene::new("/dev/null");
    let mut bundle = scene.bundle(
        "direct",
        "createContainer",
        "ls /dev/nvidia0 /usr/local/vgpu 2>&1; cat /etc/ld.so.preload 2>&1; true",
    );
    for (k, v) in CRI {
        bundle.annotation(k, v);
    }
    bundle
        .annotation("hami.io/gpumem", "1g")
        .annotation("hami.io/devices", "0");
    let r = run(&mut bundle, "direct");
    assert!(r.ok, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("/dev/nvidia0: No such file")
            && r.stdout.contains("/usr/local/vgpu: No such file")
            && !r.stdout.contains("libhami_core"),
        "{}",
        r.stdout
    );
}

/// Six preload lists that Rust's `split_whitespace` read as "ours first" but
/// glibc reads as another file name (so nothing was preloaded and the quota
/// did not apply). Each container must still be held to 1 GiB.
#[test]
fn preload_lookalikes_do_not_lift_the_quota() {
    if !runc_ready("preload_lookalikes_do_not_lift_the_quota") {
        return;
    }
    let scene = Scene::new("/dev/null");
    let ours = "/usr/local/vgpu/libhami_core.so";
    for (i, list) in [
        format!("{ours}\r\n"),
        format!("\r{ours}\n"),
        format!("{ours}\x0b\n"),
        format!("{ours}\x0c\n"),
        format!("{ours}\u{a0}\n"),
        format!("{ours}\u{3000}\n"),
    ]
    .iter()
    .enumerate()
    {
        scene.rootfs.write("/etc/ld.so.preload", list).unwrap();
        let mut bundle = scene.bundle(&format!("lookalike-{i}"), "createContainer", PROBE);
        bundle.annotation("hami.io/gpumem", "1g");
        let r = run(&mut bundle, "lookalike");
        assert!(r.ok, "{list:?}\n{}\n{}", r.stdout, r.stderr);
        assert_eq!(
            field(&r.stdout, "info", "total"),
            Some(1 << 30),
            "{list:?}: the quota did not apply\n{}",
            r.stdout
        );
    }
}

/// A FIFO at /etc/ld.so.preload: a plain open blocks for ever (every
/// container creation on the node would hang with it). Refused at once.
#[test]
fn a_fifo_where_the_hook_reads_is_refused_without_hanging() {
    if !runc_ready("a_fifo_where_the_hook_reads_is_refused_without_hanging") {
        return;
    }
    let scene = Scene::new("/dev/null");
    let fifo = scene.rootfs.path().join("etc/ld.so.preload");
    let _ = std::fs::remove_file(&fifo);
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let mut bundle = scene.bundle("fifo", "createContainer", PROBE);
    bundle.annotation("hami.io/gpumem", "1g");
    let started = Instant::now();
    let r = run(&mut bundle, "fifo");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!r.ok, "{}", r.stdout);
    assert!(r.stderr.contains("found a FIFO"), "{}", r.stderr);
}

/// A shared volume under the hook's mount targets (`rshared` here, a
/// `Bidirectional` volume on Kubernetes) would carry the hook's mounts back
/// out to the host's peer mount.
#[test]
fn mounts_never_go_onto_a_shared_volume() {
    if !runc_ready("mounts_never_go_onto_a_shared_volume") {
        return;
    }
    let scene = Scene::new("/dev/null");
    let volume = scene.work.path().join("shared-volume");
    std::fs::create_dir_all(&volume).unwrap();
    let sh = |cmd: &str| {
        let status = Command::new("sh").args(["-c", cmd]).status().unwrap();
        assert!(status.success(), "{cmd}");
    };
    let v = volume.display();
    sh(&format!("mount --bind {v} {v} && mount --make-shared {v}"));
    let mut bundle = scene.bundle("shared", "createContainer", PROBE);
    bundle.annotation("hami.io/gpumem", "1g");
    let mounts = &mut bundle.config_mut()["mounts"];
    mounts.as_array_mut().unwrap().push(json!({
        "destination": "/usr/local/vgpu",
        "type": "bind",
        "source": volume,
        "options": ["rbind", "rw", "rshared"]
    }));
    let r = run(&mut bundle, "shared");
    let leaked = host_mounts_under(&volume);
    // The volume's own mount is expected; nothing may be stacked beneath it.
    let below: Vec<_> = leaked
        .iter()
        .filter(|m| Path::new(m) != volume.as_path())
        .cloned()
        .collect();
    for m in below.iter().rev() {
        let _ = Command::new("umount").arg(m).status();
    }
    sh(&format!("umount -l {v}"));
    assert!(below.is_empty(), "propagated to the host: {below:?}");
    assert!(!r.ok, "{}", r.stdout);
    assert!(r.stderr.contains("shared mount"), "{}", r.stderr);
}

/// The hook writes its state and log as root: a group- or world-writable
/// state directory (any node user could rewrite a limits file) is refused,
/// and a symlinked log file is not followed.
#[test]
fn host_state_and_log_belong_to_root_alone() {
    if !runc_ready("host_state_and_log_belong_to_root_alone") {
        return;
    }
    let scene = Scene::new("/dev/null");
    // Keep the state after the run to read its modes: no poststop.
    let mut bundle = scene.bundle("modes", "createContainer", "sleep 0");
    bundle.annotation("hami.io/gpumem", "1g");
    bundle.config_mut()["hooks"]["poststop"] = json!([]);
    let id = hami_testkit::unique_name("modes");
    let sandbox = OciSandbox::new(OciRuntime::Runc).unwrap();
    let out = sandbox.run(&mut bundle, &id).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    let alloc = scene.allocation_dir(&id);
    assert_eq!(mode(&scene.state_dir), 0o755);
    assert_eq!(mode(&alloc), 0o755);
    assert_eq!(mode(&alloc.join("limits.env")), 0o644);
    assert_eq!(mode(&scene.log_dir.join("oci-hook.log")), 0o640);
    // Written by the container's processes, whatever their uid.
    assert_eq!(mode(&alloc.join("region/vgpu.cache")), 0o666);
    let lock_dir = scene.state_dir.join(".lock");
    assert_eq!(mode(&lock_dir), 0o1777);

    // A node user makes the state dir writable: refused, fail closed.
    std::fs::set_permissions(&scene.state_dir, PermissionsExt::from_mode(0o777)).unwrap();
    let mut bundle = scene.bundle("open-state", "createContainer", "sleep 0");
    bundle.annotation("hami.io/gpumem", "1g");
    let r = run(&mut bundle, "open-state");
    assert!(!r.ok);
    assert!(
        r.stderr.contains("writable by group or others"),
        "{}",
        r.stderr
    );
    std::fs::set_permissions(&scene.state_dir, PermissionsExt::from_mode(0o755)).unwrap();

    // The log file replaced by a symlink to a host file: never appended to.
    let victim = scene.work.path().join("victim");
    std::fs::write(&victim, "host original\n").unwrap();
    let log = scene.log_dir.join("oci-hook.log");
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    let mut bundle = scene.bundle("log-link", "createContainer", PROBE);
    bundle.annotation("hami.io/gpumem", "1g");
    let r = run(&mut bundle, "log-link");
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host original\n");
    assert_eq!(
        field(&r.stdout, "info", "total"),
        Some(1 << 30),
        "{}",
        r.stdout
    );
}
