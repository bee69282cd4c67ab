//! Podman with everything private to one test: storage root, runroot, tmpdir,
//! `containers.conf` and cgroup parent.
//!
//! Debian's podman 4.3 needs on this host: the cgroupfs manager (no systemd),
//! file events (no journald), explicit ulimits (the default nproc exceeds what
//! an unprivileged-resource container may set), runc, and `--network none`
//! (no netavark setup). Containers run from an exploded rootfs (`--rootfs`), so
//! no image registry is involved.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tempfile::TempDir;

use crate::cgroup::CgroupParent;
use crate::need::Need;
use crate::process::{run_with_timeout, DEFAULT_TIMEOUT};
use crate::{KitError, Result};

pub const NEEDS: [Need; 3] = [Need::Root, Need::Binary("podman"), Need::Binary("runc")];

const CONTAINERS_CONF: &str = r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"#;

pub struct Podman {
    dir: TempDir,
    cgroups: CgroupParent,
    hooks_dir: Option<PathBuf>,
}

impl Podman {
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hami-podman-")
            .tempdir()
            .map_err(KitError::io("create podman dir"))?;
        let conf = dir.path().join("containers.conf");
        fs::write(&conf, CONTAINERS_CONF)
            .map_err(KitError::io(format!("write {}", conf.display())))?;
        Ok(Self {
            dir,
            cgroups: CgroupParent::new(),
            hooks_dir: None,
        })
    }

    /// Passes `--hooks-dir` (OCI hooks.d JSON files) to every podman call.
    pub fn with_hooks_dir(mut self, dir: &Path) -> Self {
        self.hooks_dir = Some(dir.to_path_buf());
        self
    }

    pub fn containers_conf(&self) -> PathBuf {
        self.dir.path().join("containers.conf")
    }

    pub fn cgroups(&self) -> &CgroupParent {
        &self.cgroups
    }

    /// `podman` with the private global options; add a subcommand and run it.
    pub fn command(&self) -> Command {
        let base = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.containers_conf())
            .arg("--root")
            .arg(base.join("root"))
            .arg("--runroot")
            .arg(base.join("runroot"))
            .arg("--tmpdir")
            .arg(base.join("tmp"))
            .args(["--storage-driver", "vfs"]);
        if let Some(hooks) = &self.hooks_dir {
            c.arg("--hooks-dir").arg(hooks);
        }
        c
    }

    /// `podman run --rm --network none --cgroup-parent <private> <args…>`.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        self.run_with_timeout(args, DEFAULT_TIMEOUT)
    }

    pub fn run_with_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut cmd = self.command();
        cmd.args(["run", "--rm", "--network", "none", "--cgroup-parent"])
            .arg(self.cgroups.path())
            .args(args);
        run_with_timeout(&mut cmd, timeout)
    }
}

impl Podman {
    /// Removes every container, kills whatever is left in our cgroups by PID and
    /// unmounts leftovers. Idempotent; `Drop` calls it before deleting the directory.
    pub fn teardown(&self) {
        let _ = run_with_timeout(
            self.command()
                .args(["rm", "--all", "--force", "--time", "0"]),
            DEFAULT_TIMEOUT,
        );
        self.cgroups.cleanup();
        crate::process::unmount_under(self.dir.path());
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.teardown();
    }
}
