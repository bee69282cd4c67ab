//! What the runtime tells a hook: the OCI State on stdin, and the bundle's
//! `config.json` (runtime-spec `state` and `config`). Only the fields the hook
//! needs are modelled; unknown fields are ignored, as the spec requires.
//! Both inputs are size-capped: a hook must not be made to read without end.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// The State is a few hundred bytes; annotations can make it larger, not this large.
pub const MAX_STATE_BYTES: u64 = 1 << 20;
/// config.json carries the whole process spec; 16 MiB is far beyond any real one.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("reading the OCI state from stdin: {0}")]
    Read(#[source] std::io::Error),
    #[error("{what} is larger than {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("{what} is not valid JSON for an OCI {what}: {reason}")]
    Parse { what: &'static str, reason: String },
    #[error("OCI state: {0}")]
    Invalid(String),
    #[error("reading {path}: {source}")]
    Config {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// runtime-spec `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub pid: Option<i32>,
    pub bundle: PathBuf,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The parts of runtime-spec `config.json` the hook reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub root: Root,
    #[serde(default)]
    pub process: Option<Process>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub linux: Option<Linux>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    #[serde(default)]
    pub rootfs_propagation: Option<String>,
    /// Device nodes the runtime creates (on Kubernetes: what the device plugin granted).
    #[serde(default)]
    pub devices: Vec<LinuxDevice>,
}

/// runtime-spec `linux.devices[]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LinuxDevice {
    #[serde(default)]
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub major: i64,
    #[serde(default)]
    pub minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Root {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    #[serde(default)]
    pub env: Vec<String>,
}

fn read_capped(mut r: impl Read, limit: u64, what: &'static str) -> Result<Vec<u8>, StateError> {
    let mut buf = Vec::new();
    (&mut r)
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(StateError::Read)?;
    if buf.len() as u64 > limit {
        return Err(StateError::TooLarge { what, limit });
    }
    Ok(buf)
}

/// Reads and checks the State a runtime writes to a hook's stdin.
pub fn read_state(r: impl Read) -> Result<State, StateError> {
    let buf = read_capped(r, MAX_STATE_BYTES, "state")?;
    let state: State = serde_json::from_slice(&buf).map_err(|e| StateError::Parse {
        what: "state",
        reason: e.to_string(),
    })?;
    if state.id.is_empty() {
        return Err(StateError::Invalid("empty container id".into()));
    }
    if !state.bundle.is_absolute() {
        return Err(StateError::Invalid(format!(
            "bundle {} is not an absolute path",
            state.bundle.display()
        )));
    }
    Ok(state)
}

impl Config {
    /// Reads `<bundle>/config.json`.
    pub fn read(bundle: &Path) -> Result<Self, StateError> {
        let path = bundle.join("config.json");
        let file = std::fs::File::open(&path).map_err(|source| StateError::Config {
            path: path.clone(),
            source,
        })?;
        let buf = read_capped(file, MAX_CONFIG_BYTES, "config")?;
        serde_json::from_slice(&buf).map_err(|e| StateError::Parse {
            what: "config",
            reason: e.to_string(),
        })
    }

    /// Whether the container gets a mount namespace of its own (a new one, not
    /// one joined by path, which could be the host's).
    pub fn has_own_mount_namespace(&self) -> bool {
        self.linux.as_ref().is_some_and(|l| {
            l.namespaces
                .iter()
                .any(|n| n.kind == "mount" && n.path.as_deref().unwrap_or("").is_empty())
        })
    }

    /// Whether a mount under the rootfs would propagate to the host's peer
    /// mount (`rootfsPropagation: shared` or `rshared`).
    pub fn rootfs_propagates_to_host(&self) -> bool {
        self.linux
            .as_ref()
            .and_then(|l| l.rootfs_propagation.as_deref())
            .is_some_and(|p| matches!(p, "shared" | "rshared"))
    }

    /// Whether the runtime creates a node of this type (`libc::S_IFCHR` or
    /// `S_IFBLK`) and number for the container.
    pub fn grants_device(&self, kind: u32, major: u64, minor: u64) -> bool {
        let want = if kind == libc::S_IFBLK { "b" } else { "c" };
        self.linux.as_ref().is_some_and(|l| {
            l.devices.iter().any(|d| {
                // "u" is runtime-spec's other name for an unbuffered char device.
                let same_type = d.kind == want || (want == "c" && d.kind == "u");
                same_type
                    && u64::try_from(d.major) == Ok(major)
                    && u64::try_from(d.minor) == Ok(minor)
            })
        })
    }

    /// The rootfs on the host: `root.path`, relative to the bundle unless absolute.
    pub fn rootfs(&self, bundle: &Path) -> PathBuf {
        if self.root.path.is_absolute() {
            self.root.path.clone()
        } else {
            bundle.join(&self.root.path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNC_STATE: &str = r#"{"ociVersion":"1.0.2","id":"smoke","status":"creating","pid":4242,"bundle":"/run/bundle","annotations":{"huawei.com/vnpu-mode":"hami-core"}}"#;

    #[test]
    fn reads_a_runtime_state() {
        let s = read_state(RUNC_STATE.as_bytes()).unwrap();
        assert_eq!(s.id, "smoke");
        assert_eq!(s.pid, Some(4242));
        assert_eq!(s.bundle, PathBuf::from("/run/bundle"));
        assert_eq!(s.annotations["huawei.com/vnpu-mode"], "hami-core");
        // Fields from newer runtime-spec versions are ignored.
        let newer = RUNC_STATE.replace("\"pid\"", "\"future\":[1,2],\"pid\"");
        assert!(read_state(newer.as_bytes()).is_ok());
    }

    #[test]
    fn bad_states_are_named() {
        let cases: &[(&str, &str)] = &[
            ("", "not valid JSON"),
            ("{", "not valid JSON"),
            ("[]", "not valid JSON"),
            (
                r#"{"ociVersion":"1","id":"x","status":"creating"}"#,
                "bundle",
            ),
            (
                r#"{"ociVersion":"1","id":"","status":"creating","bundle":"/b"}"#,
                "empty container id",
            ),
            (
                r#"{"ociVersion":"1","id":"x","status":"creating","bundle":"b"}"#,
                "not an absolute path",
            ),
            (
                r#"{"ociVersion":"1","id":"x","status":"creating","bundle":"/b","pid":"one"}"#,
                "expected i32",
            ),
        ];
        for (input, needle) in cases {
            let err = read_state(input.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(needle), "{input:?} -> {err}");
        }
    }

    #[test]
    fn an_endless_stdin_is_cut_off() {
        let endless = std::io::repeat(b' ');
        let err = read_state(endless).unwrap_err();
        assert!(matches!(err, StateError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn mount_namespace_must_be_new() {
        let with = |ns: &str| -> Config {
            serde_json::from_str(&format!(
                r#"{{"root":{{"path":"/r"}},"linux":{{"namespaces":[{ns}]}}}}"#
            ))
            .unwrap()
        };
        assert!(with(r#"{"type":"pid"},{"type":"mount"}"#).has_own_mount_namespace());
        assert!(!with(r#"{"type":"pid"}"#).has_own_mount_namespace());
        assert!(!with(r#"{"type":"mount","path":"/proc/1/ns/mnt"}"#).has_own_mount_namespace());
        let propagation = |p: &str| -> bool {
            serde_json::from_str::<Config>(&format!(
                r#"{{"root":{{"path":"/r"}},"linux":{{"rootfsPropagation":"{p}"}}}}"#
            ))
            .unwrap()
            .rootfs_propagates_to_host()
        };
        assert!(propagation("rshared") && propagation("shared"));
        assert!(!propagation("rslave") && !propagation("private"));
    }

    #[test]
    fn config_rootfs_is_relative_to_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"env":["A=1"],"args":["sh"]},"annotations":{"k":"v"},"linux":{}}"#,
        )
        .unwrap();
        let c = Config::read(dir.path()).unwrap();
        assert_eq!(c.rootfs(dir.path()), dir.path().join("rootfs"));
        assert_eq!(c.process.as_ref().unwrap().env, vec!["A=1"]);
        assert!(!c.has_own_mount_namespace(), "linux has no namespaces");
        let err = Config::read(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.json"), "{err}");
    }
}
