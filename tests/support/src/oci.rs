//! `runc run` / `crun run` on an [`OciBundle`], with a private state root and a
//! private cgroup parent, torn down on drop.
//!
//! crun 1.8 refuses a cgroup v1 hybrid host while the unified hierarchy is
//! mounted, so it runs in a private mount namespace with
//! `/sys/fs/cgroup/unified` unmounted there (the host mount stays).

use std::cell::RefCell;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use tempfile::TempDir;

use crate::bundle::OciBundle;
use crate::cgroup::CgroupParent;
use crate::need::Need;
use crate::process::{run_with_timeout, DEFAULT_TIMEOUT};
use crate::{KitError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciRuntime {
    Runc,
    Crun,
}

impl OciRuntime {
    pub fn binary(self) -> &'static str {
        match self {
            OciRuntime::Runc => "runc",
            OciRuntime::Crun => "crun",
        }
    }

    /// What a test must have to use this runtime.
    pub fn needs(self) -> [Need; 3] {
        [
            Need::Root,
            Need::Binary(self.binary()),
            Need::Binary("unshare"),
        ]
    }

    /// The runtime command with `--root <state>`, wrapped as this host requires.
    fn command(self, state_root: &std::path::Path) -> Command {
        match self {
            OciRuntime::Runc => {
                let mut c = Command::new("runc");
                c.arg("--root").arg(state_root);
                c
            }
            OciRuntime::Crun => {
                let mut c = Command::new("unshare");
                c.args([
                    "-m",
                    "sh",
                    "-c",
                    "umount /sys/fs/cgroup/unified 2>/dev/null; exec crun \"$@\"",
                    "crun",
                    "--root",
                ])
                .arg(state_root);
                c
            }
        }
    }
}

/// One runtime with its own state directory and cgroup parent.
pub struct OciSandbox {
    runtime: OciRuntime,
    state: TempDir,
    cgroups: CgroupParent,
    started: RefCell<Vec<String>>,
}

impl OciSandbox {
    pub fn new(runtime: OciRuntime) -> Result<Self> {
        let state = tempfile::Builder::new()
            .prefix("hami-oci-state-")
            .tempdir()
            .map_err(KitError::io("create runtime state dir"))?;
        Ok(Self {
            runtime,
            state,
            cgroups: CgroupParent::new(),
            started: RefCell::new(Vec::new()),
        })
    }

    pub fn runtime(&self) -> OciRuntime {
        self.runtime
    }

    pub fn cgroups(&self) -> &CgroupParent {
        &self.cgroups
    }

    pub fn state_root(&self) -> PathBuf {
        self.state.path().to_path_buf()
    }

    /// A runtime command bound to this sandbox's state root (`state`, `kill`, …).
    pub fn command(&self) -> Command {
        self.runtime.command(self.state.path())
    }

    /// Writes the bundle's config with this sandbox's cgroup path and runs it to
    /// completion in the foreground, returning the container's output.
    pub fn run(&self, bundle: &mut OciBundle, id: &str) -> Result<Output> {
        self.run_with_timeout(bundle, id, DEFAULT_TIMEOUT)
    }

    pub fn run_with_timeout(
        &self,
        bundle: &mut OciBundle,
        id: &str,
        timeout: Duration,
    ) -> Result<Output> {
        bundle.cgroups_path(&self.cgroups.child(id));
        bundle.write()?;
        self.started.borrow_mut().push(id.to_owned());
        let mut cmd = self.command();
        cmd.arg("run").arg("--bundle").arg(bundle.dir()).arg(id);
        let out = run_with_timeout(&mut cmd, timeout);
        self.remove(id);
        out
    }

    /// Kills the container's init by PID (from `state`) and deletes it.
    fn remove(&self, id: &str) {
        if let Ok(out) = run_with_timeout(self.command().args(["state", id]), DEFAULT_TIMEOUT) {
            if let Ok(state) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                if let Some(pid) = state["pid"].as_i64().filter(|p| *p > 1) {
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
        }
        let _ = run_with_timeout(
            self.command().args(["delete", "--force", id]),
            DEFAULT_TIMEOUT,
        );
    }
}

impl Drop for OciSandbox {
    fn drop(&mut self) {
        for id in self.started.take() {
            self.remove(&id);
        }
        self.cgroups.cleanup();
    }
}
