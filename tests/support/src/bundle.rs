//! An OCI bundle: a directory with `config.json` and a rootfs.
//!
//! The config is the shape `runc spec` produces (namespaces, standard mounts,
//! masked paths), minus the terminal, and kept as a `serde_json::Value` so tests
//! can add hooks, mounts, devices and annotations exactly as a runtime would see
//! them from containerd or CRI-O.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::{KitError, Result};

#[derive(Debug)]
pub struct OciBundle {
    dir: PathBuf,
    config: Value,
}

impl OciBundle {
    /// A bundle in `dir` whose root is `rootfs` (absolute), running `args`.
    pub fn new(dir: &Path, rootfs: &Path, args: &[&str]) -> Self {
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/",
                "capabilities": {
                    "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                    "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                    "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true
            },
            "root": {"path": rootfs, "readonly": false},
            "hostname": "hami-test",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]}
            ],
            "linux": {
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "namespaces": [
                    {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                    {"type": "uts"}, {"type": "mount"}
                ],
                "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
                                "/sys/firmware", "/proc/scsi"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                                  "/proc/sysrq-trigger"]
            }
        });
        Self {
            dir: dir.to_path_buf(),
            config,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &Value {
        &self.config
    }

    /// Direct access for anything the helpers below do not cover.
    pub fn config_mut(&mut self) -> &mut Value {
        &mut self.config
    }

    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        push(
            &mut self.config["process"]["env"],
            json!(format!("{key}={value}")),
        );
        self
    }

    pub fn annotation(&mut self, key: &str, value: &str) -> &mut Self {
        if !self.config["annotations"].is_object() {
            self.config["annotations"] = json!({});
        }
        self.config["annotations"][key] = json!(value);
        self
    }

    /// A bind mount of a host path (read-only when `readonly`).
    pub fn bind_mount(&mut self, host: &Path, inside: &str, readonly: bool) -> &mut Self {
        let mut options = vec!["rbind", "nosuid", "nodev"];
        if readonly {
            options.push("ro");
        }
        push(
            &mut self.config["mounts"],
            json!({"destination": inside, "type": "bind", "source": host, "options": options}),
        );
        self
    }

    /// A hook at `stage` (`prestart`, `createRuntime`, `createContainer`, `startContainer`, `poststop`, …).
    pub fn hook(&mut self, stage: &str, path: &Path, args: &[&str], env: &[&str]) -> &mut Self {
        if !self.config["hooks"].is_object() {
            self.config["hooks"] = json!({});
        }
        let mut hook = json!({"path": path, "args": args});
        if !env.is_empty() {
            hook["env"] = json!(env);
        }
        push(&mut self.config["hooks"][stage], hook);
        self
    }

    pub fn cgroups_path(&mut self, path: &str) -> &mut Self {
        self.config["linux"]["cgroupsPath"] = json!(path);
        self
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    pub fn write(&self) -> Result<PathBuf> {
        fs::create_dir_all(&self.dir)
            .map_err(KitError::io(format!("create {}", self.dir.display())))?;
        let path = self.config_path();
        let text = serde_json::to_string_pretty(&self.config).expect("config is plain JSON");
        fs::write(&path, text).map_err(KitError::io(format!("write {}", path.display())))?;
        Ok(path)
    }
}

fn push(slot: &mut Value, item: Value) {
    if !slot.is_array() {
        *slot = json!([]);
    }
    slot.as_array_mut().expect("just made an array").push(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_shape_the_config_like_runtimes_expect() {
        let mut b = OciBundle::new(Path::new("/b"), Path::new("/b/rootfs"), &["/bin/sh"]);
        b.env("A", "1")
            .annotation("huawei.com/vnpu-mode", "hami-core")
            .hook(
                "createContainer",
                Path::new("/usr/bin/hook"),
                &["hook", "x"],
                &[],
            )
            .bind_mount(Path::new("/host/lib.so"), "/usr/lib/lib.so", true)
            .cgroups_path("/p/c");
        let c = b.config();
        assert_eq!(c["process"]["env"][1], "A=1");
        assert_eq!(c["annotations"]["huawei.com/vnpu-mode"], "hami-core");
        assert_eq!(c["hooks"]["createContainer"][0]["args"][1], "x");
        assert!(c["hooks"]["createContainer"][0].get("env").is_none());
        let last_mount = c["mounts"].as_array().unwrap().last().unwrap();
        assert_eq!(
            last_mount["options"].as_array().unwrap().last().unwrap(),
            "ro"
        );
        assert_eq!(c["linux"]["cgroupsPath"], "/p/c");
    }
}
