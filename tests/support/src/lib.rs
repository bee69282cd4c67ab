//! `hami-testkit`: the runtime test kit every hami-rs end-to-end test builds on.
//!
//! It drives the real container runtimes Debian ships (runc, crun, podman) on a
//! machine with cgroup v1 hybrid and no systemd, and cleans up only what it
//! created, by PID and by cgroup path:
//!
//! - [`rootfs::Rootfs`]: a busybox root filesystem plus the host's dynamic loader
//!   and libc, so `LD_PRELOAD` works inside the container;
//! - [`bundle::OciBundle`]: an OCI bundle (`config.json`) for that rootfs;
//! - [`oci::OciSandbox`]: `runc run` / `crun run` with a private state root;
//! - [`podman::Podman`]: podman with a private root, runroot and `containers.conf`;
//! - [`need`]: skip-or-fail policy for tests that need root or runtime binaries;
//! - [`cc`]: builds the C test programs with the host's gcc;
//! - [`fake_gpu`]: the project's fake CUDA driver and test apps, for rootfs images.

pub mod bundle;
pub mod cc;
pub mod cgroup;
pub mod containerd;
pub mod fake_gpu;
pub mod kube;
pub mod need;
pub mod oci;
pub mod oci_image;
pub mod podman;
pub mod process;
pub mod rootfs;

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum KitError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` timed out after {seconds} s; stdout: {stdout:?}; stderr: {stderr:?}")]
    Timeout {
        command: String,
        seconds: u64,
        stdout: String,
        stderr: String,
    },
    #[error("`{command}` failed ({status}); stderr: {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot find {what} on the host: {detail}")]
    HostMissing { what: String, detail: String },
    #[error("path {0} is not inside the rootfs")]
    OutsideRootfs(PathBuf),
}

impl KitError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> KitError {
        let context = context.into();
        move |source| KitError::Io { context, source }
    }
}

pub type Result<T, E = KitError> = std::result::Result<T, E>;

/// `key=<number>` from the first line of a test program's output that starts
/// with `prefix ` (the fake applications print `op key=value …` lines).
pub fn field(out: &str, prefix: &str, key: &str) -> Option<u64> {
    let line = out.lines().find(|l| l.starts_with(&format!("{prefix} ")))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))?
        .parse()
        .ok()
}

/// Host path of the release (or test-profile) libhami_core.so next to `exe`
/// (a binary in `target/<profile>/`, or a test in its `deps/`).
pub fn find_library(exe: &std::path::Path) -> Option<std::path::PathBuf> {
    let dir = exe.parent()?;
    [
        dir.join("libhami_core.so"),
        dir.join("deps/libhami_core.so"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// libhami_core.so for a test binary (which runs from `target/<profile>/deps/`).
pub fn test_library() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    find_library(exe.parent().expect("test binary directory")).expect(
        "libhami_core.so not built: run the whole workspace's tests (cargo test --workspace)",
    )
}

/// A name unique to this process and call, for container ids and cgroup parents.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:08x}", std::process::id())
}
