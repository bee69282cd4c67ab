//! Images built to make the hook (root, on the host) write or mount outside
//! the container: every path the hook touches is a symlink to a host path,
//! absolute or relative with `..`, or sits under a symlinked parent. Each run
//! goes through real runc at createContainer and at prestart; the host tree
//! must come out byte-identical, and the container is either confined (it runs
//! with the injection inside its rootfs) or refused.
//!
//! Also: an image whose environment sets LD_PRELOAD, pointing at a library
//! that marks the host when loaded, must not reach the hook.

mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use hami_testkit::cc::{compile, Artifact};
use hami_testkit::need::require;
use hami_testkit::oci::{OciRuntime, OciSandbox};
use hami_testkit::process::mounts_under as host_mounts_under;
use support::{field, needs, Scene, HOOK, HOOK_ENV, STATIC_HOOK_ENV};

/// A host directory the image aims at; its contents must never change.
struct HostDecoy {
    dir: PathBuf,
}

impl HostDecoy {
    fn new(scene: &Scene) -> Self {
        let dir = scene.work.path().join("host");
        for sub in ["etc", "usr/local/vgpu", "dev", "lib"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for f in [
            "etc/ld.so.preload",
            "usr/local/vgpu/libhami_core.so",
            "usr/local/vgpu/limits.env",
            "dev/nvidia0",
            "victim",
        ] {
            std::fs::write(dir.join(f), "host original\n").unwrap();
        }
        Self { dir }
    }

    fn snapshot(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                let meta = std::fs::symlink_metadata(&p).unwrap();
                if meta.is_dir() {
                    out.push((rel, "dir".into()));
                    walk(base, &p, out);
                } else {
                    out.push((
                        rel,
                        format!(
                            "{:o} {}",
                            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()),
                            std::fs::read_to_string(&p).unwrap_or_else(|_| "<special>".into())
                        ),
                    ));
                }
            }
        }
        walk(&self.dir, &self.dir, &mut out);
        out.sort();
        out
    }
}

/// Plants `link` (a path inside the rootfs) pointing at `target`, after
/// removing whatever the image had there.
fn plant(scene: &Scene, link: &str, target: &Path) {
    let at = scene.rootfs.path().join(link.trim_start_matches('/'));
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    if at.is_dir() && !at.is_symlink() {
        std::fs::remove_dir_all(&at).unwrap();
    } else {
        let _ = std::fs::remove_file(&at);
    }
    symlink(target, &at).unwrap();
}

/// `..` enough times to climb from `link`'s directory to `/`, then `target`.
fn climbing(link: &str, target: &Path) -> PathBuf {
    let depth = Path::new(link).components().count() + 8;
    let mut p = PathBuf::new();
    for _ in 0..depth {
        p.push("..");
    }
    p.join(target.strip_prefix("/").unwrap())
}

const SCRIPT: &str = "/usr/bin/cuda_app info; head -1 /etc/ld.so.preload";

fn attack(stage: &str, plant_links: impl Fn(&Scene, &HostDecoy)) {
    let scene = Scene::new("/dev/null");
    let decoy = HostDecoy::new(&scene);
    let before = decoy.snapshot();
    plant_links(&scene, &decoy);
    let mut bundle = scene.bundle("bundle", stage, SCRIPT);
    bundle.annotation("hami.io/gpumem", "1g");
    let sandbox = OciSandbox::new(OciRuntime::Runc).unwrap();
    let id = hami_testkit::unique_name("hostile");
    let out = sandbox.run(&mut bundle, &id).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        decoy.snapshot(),
        before,
        "the host changed ({stage})\n{stdout}\n{stderr}"
    );
    assert!(
        host_mounts_under(scene.work.path()).is_empty(),
        "mounted onto the host: {:?}",
        host_mounts_under(scene.work.path())
    );
    if out.status.success() {
        // Confined: it ran, and with the quota.
        assert_eq!(
            field(&stdout, "info", "total"),
            Some(1 << 30),
            "ran unlimited ({stage}): {stdout}\n{stderr}"
        );
        assert!(
            stdout.contains("/usr/local/vgpu/libhami_core.so"),
            "{stdout}"
        );
    } else {
        // Refused, with the hook's reason in the runtime's error.
        assert!(
            stderr.contains("refusing to start the container"),
            "{stderr}"
        );
        assert!(!stdout.contains("info "), "the container ran: {stdout}");
    }
}

fn hostile(name: &str, plant_links: impl Fn(&Scene, &HostDecoy) + Copy) {
    if !require(name, &needs(OciRuntime::Runc)) {
        return;
    }
    for stage in ["createContainer", "prestart"] {
        attack(stage, plant_links);
    }
}

#[test]
fn preload_file_is_an_absolute_symlink_to_the_host() {
    hostile("preload_file_is_an_absolute_symlink_to_the_host", |s, d| {
        plant(s, "/etc/ld.so.preload", &d.dir.join("etc/ld.so.preload"))
    });
}

#[test]
fn preload_file_is_a_relative_dotdot_symlink() {
    hostile("preload_file_is_a_relative_dotdot_symlink", |s, d| {
        let target = climbing("/etc/ld.so.preload", &d.dir.join("victim"));
        plant(s, "/etc/ld.so.preload", &target)
    });
}

#[test]
fn etc_is_a_symlink_to_a_host_directory() {
    hostile("etc_is_a_symlink_to_a_host_directory", |s, d| {
        plant(s, "/etc", &d.dir.join("etc"))
    });
}

#[test]
fn vgpu_directory_is_a_symlink_to_the_host() {
    hostile("vgpu_directory_is_a_symlink_to_the_host", |s, d| {
        plant(s, "/usr/local/vgpu", &d.dir.join("usr/local/vgpu"))
    });
}

#[test]
fn usr_local_parent_is_a_relative_symlink_out() {
    hostile("usr_local_parent_is_a_relative_symlink_out", |s, d| {
        let target = climbing("/usr/local", &d.dir.join("usr/local"));
        plant(s, "/usr/local", &target)
    });
}

#[test]
fn mount_targets_are_symlinks_to_host_files() {
    hostile("mount_targets_are_symlinks_to_host_files", |s, d| {
        plant(
            s,
            "/usr/local/vgpu/libhami_core.so",
            &d.dir.join("usr/local/vgpu/libhami_core.so"),
        );
        plant(
            s,
            "/usr/local/vgpu/limits.env",
            &d.dir.join("usr/local/vgpu/limits.env"),
        );
        plant(s, "/usr/local/vgpu/region", &d.dir.join("lib"));
    });
}

#[test]
fn image_dev_entries_are_symlinks_to_the_host() {
    // runc mounts a tmpfs over /dev; the image's own /dev must not matter either way.
    hostile("image_dev_entries_are_symlinks_to_the_host", |s, d| {
        plant(s, "/dev/nvidia0", &d.dir.join("dev/nvidia0"))
    });
}

/// The image's ENV sets LD_PRELOAD to a library that, if a process outside
/// the container loaded it, would record itself in a file on the host. Both an
/// absolute host path and a path relative to the working directory (the
/// CVE-2025-23266 shape) are tried, at createContainer and prestart, with:
/// - the hook configured as `install` writes it (an explicit env): runc does
///   not hand it the container's environment;
/// - the statically linked hook with no env at all (runc then starts the
///   createContainer hook with the container's environment): there is no
///   loader to honour LD_PRELOAD;
/// - the dynamic hook with no env: the loader has already run the library by
///   the time main starts (which is why nodes get the static build), but the
///   hook sees the inherited variables and refuses the container.
#[test]
fn image_ld_preload_never_reaches_the_hook() {
    let name = "image_ld_preload_never_reaches_the_hook";
    let mut all_needs = needs(OciRuntime::Runc);
    all_needs.extend(hami_testkit::cc::NEEDS);
    if !require(name, &all_needs) {
        return;
    }
    let static_hook = std::env::var_os(STATIC_HOOK_ENV).map(PathBuf::from);
    if static_hook.is_none() {
        eprintln!("SKIP part of {name}: {STATIC_HOOK_ENV} is not set (hack/test.sh sets it)");
        assert!(
            std::env::var_os(hami_testkit::need::REQUIRE_ENV).is_none(),
            "{STATIC_HOOK_ENV} must be set when runtimes are required"
        );
    }
    let scene = Scene::new("/dev/null");
    let marker = scene.work.path().join("loaded-outside-the-container");
    let evil = compile(
        &format!(
            r#"#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void mark(void) {{
    /* Only a process outside the container's root can reach this path;
       it records which program it was. */
    int fd = open("{}", O_CREAT | O_WRONLY | O_APPEND, 0644);
    if (fd < 0) return;
    char exe[256];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {{ exe[n] = '\n'; (void)!write(fd, exe, n + 1); }}
    close(fd);
}}"#,
            marker.display()
        ),
        &scene.work.path().join("evil.so"),
        Artifact::SharedLibrary,
        &[],
    )
    .unwrap();
    scene.rootfs.copy_in(&evil, "/evil.so").unwrap();
    let preload = format!("{}:evil.so:/evil.so", evil.display());

    let run = |label: &str, stage: &str, hook: &Path, env: &[&str]| {
        let _ = std::fs::remove_file(&marker);
        let mut bundle =
            scene.bundle_with_hook(&format!("bundle-{label}-{stage}"), stage, SCRIPT, hook, env);
        bundle
            .annotation("hami.io/gpumem", "1g")
            .env("LD_PRELOAD", &preload);
        let sandbox = OciSandbox::new(OciRuntime::Runc).unwrap();
        let out = sandbox
            .run(&mut bundle, &hami_testkit::unique_name("ldpreload"))
            .unwrap();
        let loaded_by = std::fs::read_to_string(&marker).unwrap_or_default();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            loaded_by,
        )
    };
    for stage in ["createContainer", "prestart"] {
        let (ok, stdout, stderr, loaded_by) = run("installed", stage, Path::new(HOOK), &[HOOK_ENV]);
        assert!(ok, "{stdout}\n{stderr}");
        assert_eq!(field(&stdout, "info", "total"), Some(1 << 30), "{stdout}");
        assert_eq!(loaded_by, "", "installed hook, {stage}");

        if let Some(hook) = &static_hook {
            let (ok, stdout, stderr, loaded_by) = run("static", stage, hook, &[]);
            assert!(ok, "{stdout}\n{stderr}");
            assert_eq!(field(&stdout, "info", "total"), Some(1 << 30), "{stdout}");
            assert_eq!(loaded_by, "", "static hook without env, {stage}");
        }
    }
    // runc starts createContainer hooks without an env from inside the container.
    let (ok, stdout, stderr, _) = run("bare", "createContainer", Path::new(HOOK), &[]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("started with the container's environment (LD_PRELOAD)"),
        "{stderr}"
    );
}
