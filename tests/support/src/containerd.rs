//! A private containerd daemon for one test: its own root, state directory
//! and socket under a temporary directory, the CRI plugin off, and containers
//! driven with `ctr`. Teardown kills the daemon and the shims it started (by
//! PID) and unmounts what it left under its directories.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::cgroup::CgroupParent;
use crate::need::Need;
use crate::process::{run_with_timeout, DEFAULT_TIMEOUT};
use crate::{KitError, Result};

pub const NEEDS: [Need; 4] = [
    Need::Root,
    Need::Binary("containerd"),
    Need::Binary("ctr"),
    Need::Binary("runc"),
];

pub struct Containerd {
    dir: TempDir,
    daemon: Option<Child>,
    cgroups: CgroupParent,
}

/// The CRI plugin's settings for a test daemon: a sandbox image the test
/// imports itself, no CNI (pods use the host network), overlayfs.
pub struct CriSettings<'a> {
    pub sandbox_image: &'a str,
}

impl Containerd {
    /// A daemon with the CRI plugin off, started.
    pub fn start() -> Result<Self> {
        let mut me = Self::prepare()?;
        let config = me.dir.path().join("config.toml");
        fs::write(&config, me.base_config(None))
            .map_err(KitError::io(format!("write {}", config.display())))?;
        me.launch(&config)?;
        Ok(me)
    }

    /// The private directories, no daemon yet: write a config (starting from
    /// [`Containerd::base_config`]) and [`Containerd::launch`] it.
    pub fn prepare() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hami-containerd-")
            .tempdir()
            .map_err(KitError::io("create containerd dir"))?;
        Ok(Self {
            dir,
            daemon: None,
            cgroups: CgroupParent::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A version 2 config using this daemon's private root, state and sockets.
    pub fn base_config(&self, cri: Option<&CriSettings<'_>>) -> String {
        let base = self.dir.path();
        let mut text = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n",
            root = base.join("root").display(),
            state = base.join("state").display(),
        );
        if cri.is_none() {
            text.push_str("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n");
        }
        text.push_str(&format!(
            "[grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
            sock = self.socket().display()
        ));
        if let Some(cri) = cri {
            text.push_str(&format!(
                "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{image}\"\n  \
                 restrict_oom_score_adj = true\n  disable_apparmor = true\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"{cni}/bin\"\n  conf_dir = \"{cni}/conf\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\"\n",
                image = cri.sandbox_image,
                cni = base.join("cni").display(),
            ));
        }
        text
    }

    /// Starts containerd with `config` and waits until it answers.
    pub fn launch(&mut self, config: &Path) -> Result<()> {
        let base = self.dir.path();
        let log = fs::File::create(base.join("containerd.log"))
            .map_err(KitError::io("create containerd log"))?;
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(KitError::io("dup log"))?)
            .stderr(log)
            .spawn()
            .map_err(KitError::io("start containerd"))?;
        self.daemon = Some(daemon);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = run_with_timeout(self.ctr().arg("version"), Duration::from_secs(10))
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(KitError::Failed {
                    command: "ctr version".into(),
                    status: "containerd did not answer on its socket within 30 s".into(),
                    stderr: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn cgroups(&self) -> &CgroupParent {
        &self.cgroups
    }

    /// `ctr` bound to this daemon, in the `hami-test` namespace.
    pub fn ctr(&self) -> Command {
        self.ctr_in("hami-test")
    }

    /// `ctr` bound to this daemon in `namespace` (the CRI plugin's is `k8s.io`).
    pub fn ctr_in(&self, namespace: &str) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.socket())
            .args(["--namespace", namespace]);
        c
    }

    /// `ctr run --rm --config <spec> <id>`: the container from a complete
    /// runtime spec (its `root.path` an absolute directory), in the foreground.
    pub fn run_spec(&self, spec: &Path, id: &str) -> Result<Output> {
        run_with_timeout(
            self.ctr()
                .args(["run", "--rm", "--config"])
                .arg(spec)
                .arg(id),
            DEFAULT_TIMEOUT,
        )
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.cgroups.cleanup();
        // The shims outlive the daemon; each records its PID under the state dir.
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        let mut pids = Vec::new();
        collect_shim_pids(&self.dir.path().join("state"), &mut pids);
        for pid in pids {
            // SAFETY: signalling a PID this daemon's shim wrote for itself.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        crate::process::unmount_under(self.dir.path());
    }
}

fn collect_shim_pids(dir: &Path, out: &mut Vec<i32>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_shim_pids(&p, out);
        } else if p.file_name().is_some_and(|n| n == "shim.pid") {
            if let Some(pid) = fs::read_to_string(&p)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                out.push(pid);
            }
        }
    }
}
