//! A real one-node Kubernetes cluster for a test: `hack/cluster.sh up` under a
//! temporary directory (etcd, kube-apiserver, kube-controller-manager, the
//! schedulers, a private containerd and kubelet), `kubectl` bound to it, and
//! host daemons (hami-controller, hami-node) whose logs are kept. Dropping
//! the cluster runs `hack/cluster.sh down`, which stops everything by PID.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::need::Need;
use crate::process::run_with_timeout;
use crate::{KitError, Result};

pub const NEEDS: [Need; 6] = [
    Need::Root,
    Need::Binary("containerd"),
    Need::Binary("ctr"),
    Need::Binary("runc"),
    Need::Binary("etcd"),
    Need::Binary("openssl"),
];

/// Where the Kubernetes binaries are: `HAMI_KUBE_BIN` (hack/test.sh sets it
/// from hack/cluster/build-kube.sh), if it holds them.
pub fn kube_bin() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("HAMI_KUBE_BIN")?);
    ["kube-apiserver", "kube-scheduler", "kubelet", "kubectl"]
        .iter()
        .all(|b| dir.join(b).is_file())
        .then_some(dir)
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hack/cluster.sh")
}

pub struct KubeCluster {
    pub dir: PathBuf,
    pub bin: PathBuf,
    daemons: Vec<Daemon>,
}

/// What `up` may be given instead of its defaults.
#[derive(Default)]
pub struct ClusterOptions<'a> {
    /// hami-scheduler's KubeSchedulerConfiguration (the chart's rendering).
    pub scheduler_config: Option<&'a Path>,
    /// A containerd config (e.g. after `hami-oci-hook install` merged it).
    pub containerd_config: Option<&'a Path>,
}

impl KubeCluster {
    /// The containerd config `up` generates for `dir`, to merge into first.
    pub fn containerd_config(dir: &Path) -> Result<String> {
        let out = run_with_timeout(
            Command::new("bash")
                .arg(script())
                .arg("containerd-config")
                .arg(dir),
            Duration::from_secs(10),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn up(dir: &Path, bin: &Path, options: &ClusterOptions<'_>) -> Result<Self> {
        let mut command = Command::new("bash");
        command
            .arg(script())
            .arg("up")
            .arg(dir)
            .env("KUBE_BIN", bin);
        if let Some(c) = options.scheduler_config {
            command.env("HAMI_CLUSTER_SCHEDULER_CONFIG", c);
        }
        if let Some(c) = options.containerd_config {
            command.env("HAMI_CLUSTER_CONTAINERD_CONFIG", c);
        }
        let cluster = Self {
            dir: dir.to_owned(),
            bin: bin.to_owned(),
            daemons: Vec::new(),
        };
        // Dropped on failure too: down stops what came up.
        let out = run_with_timeout(&mut command, Duration::from_secs(300))?;
        if !out.status.success() {
            return Err(KitError::Failed {
                command: "hack/cluster.sh up".into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(cluster)
    }

    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        self.dir.join(format!("{user}.kubeconfig"))
    }

    pub fn pki(&self, name: &str) -> PathBuf {
        self.dir.join("pki").join(name)
    }

    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd/containerd.sock")
    }

    /// `kubectl` as the cluster admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as("admin", args, None)
    }

    /// `kubectl` as `user` (a kubeconfig `up` wrote), with `stdin` piped in.
    pub fn kubectl_as(&self, user: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = Command::new(self.bin.join("kubectl"));
        c.env("KUBECONFIG", self.kubeconfig(user)).args(args);
        let Some(input) = stdin else {
            return run_with_timeout(&mut c, Duration::from_secs(60)).expect("kubectl runs");
        };
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl starts");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .expect("write kubectl stdin");
        child.wait_with_output().expect("kubectl runs")
    }

    /// `kubectl apply -f -` of `object`; panics with kubectl's words if refused.
    pub fn apply(&self, object: &Value) {
        let out = self.kubectl_as("admin", &["apply", "-f", "-"], Some(&object.to_string()));
        assert!(
            out.status.success(),
            "kubectl apply refused {}/{}: {}",
            object["kind"],
            object["metadata"]["name"],
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl get ... -o json`, or None when it is not there.
    pub fn get(&self, args: &[&str]) -> Option<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl(&all);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Polls `check` every 250 ms until it gives Some, for `timeout`; on time
    /// out, panics with `what` and the logs of every component.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check() {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out ({timeout:?}) waiting for {what}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The tail of every component's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut files: Vec<PathBuf> = fs::read_dir(self.dir.join("logs"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            let text = fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            // A daemon's fatal error is usually its last words, unless a
            // backtrace follows them: the error lines come first.
            let errors: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with("Error") || l.contains("ERROR") || l.starts_with('E'))
                .take(10)
                .collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            out.push_str(&format!(
                "---- {} (errors: {})\n{}\n---- {} (last {} lines)\n{}\n",
                f.display(),
                errors.len(),
                errors.join("\n"),
                f.display(),
                tail.len(),
                tail.join("\n")
            ));
        }
        out
    }

    /// Starts a host daemon named `name` (log in `<dir>/logs/<name>.log`),
    /// stopped with the cluster or by [`KubeCluster::stop`].
    pub fn spawn(&mut self, name: &str, command: &mut Command) {
        let log_path = self.dir.join("logs").join(format!("{name}.log"));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("daemon log");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.daemons.push(Daemon {
            name: name.to_owned(),
            child,
        });
    }

    /// Stops daemon `name` with `signal` (SIGKILL for a crash) and waits for it.
    pub fn stop(&mut self, name: &str, signal: i32) {
        if let Some(i) = self.daemons.iter().position(|d| d.name == name) {
            let mut d = self.daemons.remove(i);
            // SAFETY: signalling a child this cluster started and has not reaped.
            unsafe { libc::kill(d.child.id() as i32, signal) };
            let _ = d.child.wait();
        }
    }

    pub fn daemon_log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join("logs").join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Restarts a component `hack/cluster.sh` started (kubelet, say): stops
    /// it by its PID file and starts it again with the same command line.
    pub fn restart_component(&self, name: &str) {
        let pidfile = self.dir.join("pids").join(format!("{name}.pid"));
        let pid: i32 = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid file for {name}"));
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).expect("component cmdline");
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // SAFETY: the component's own PID, from the file the script wrote.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("logs").join(format!("{name}.log")))
            .expect("component log");
        let child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("restart component");
        fs::write(&pidfile, child.id().to_string()).expect("write pid file");
        // The script's down stops it by that file; this handle is let go.
        std::mem::forget(child);
    }
}

struct Daemon {
    name: String,
    child: Child,
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
        if std::env::var_os("HAMI_KEEP_CLUSTER").is_some() {
            eprintln!(
                "HAMI_KEEP_CLUSTER: leaving the cluster in {}",
                self.dir.display()
            );
            return;
        }
        let _ = Command::new("bash")
            .arg(script())
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
    }
}
