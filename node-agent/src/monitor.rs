//! The usage monitor: every container's shared region under the state
//! directory (`<state-dir>/<allocation>/region/vgpu.cache`, as hami-cdi and
//! the OCI hook lay them out), read read-only. A region that cannot be read
//! is reported with its reason and the rest are still read.

use std::path::{Path, PathBuf};

use hami_region::snapshot::Snapshot;
use serde::Deserialize;

/// Who a region belongs to, when the side that created the allocation said
/// so (`owner.json` beside `region/`); otherwise only the allocation name
/// is known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Owner {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub pod: String,
    #[serde(default)]
    pub container: String,
    /// Physical device UUID per container-local device index.
    #[serde(default)]
    pub devices: Vec<String>,
    /// The pod's UID, when the device plugin made the allocation: a pod
    /// re-created under the same name is a different pod.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_uid: String,
}

pub const OWNER_FILE: &str = "owner.json";
pub const REGION_FILE: &str = "vgpu.cache";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUsage {
    pub allocation: String,
    pub owner: Owner,
    pub snapshot: Snapshot,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub containers: Vec<ContainerUsage>,
    /// Regions (or owner files) that could not be read, with the reason.
    pub errors: Vec<(String, String)>,
}

fn read_owner(dir: &Path) -> Result<Owner, String> {
    let path = dir.join(OWNER_FILE);
    match std::fs::read(&path) {
        Ok(bytes) if bytes.len() > 64 << 10 => Err(format!("{} is too large", path.display())),
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Owner::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Reads every allocation's region under `state_dir`, in name order.
pub fn scan(state_dir: &Path) -> Report {
    let mut report = Report::default();
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir(state_dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            // `.lock` and other dot entries are node-wide, not allocations.
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
            })
            .filter(|p| p.is_dir())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            report
                .errors
                .push((state_dir.display().to_string(), e.to_string()));
            return report;
        }
    };
    dirs.sort();
    for dir in dirs {
        let allocation = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let region = dir.join("region").join(REGION_FILE);
        if !region.exists() {
            // Created, but no process has started in it yet.
            continue;
        }
        let owner = match read_owner(&dir) {
            Ok(o) => o,
            Err(e) => {
                report.errors.push((allocation.clone(), e));
                Owner::default()
            }
        };
        match Snapshot::read(&region) {
            Ok(snapshot) => report.containers.push(ContainerUsage {
                allocation,
                owner,
                snapshot,
            }),
            Err(e) => report.errors.push((allocation, e.to_string())),
        }
    }
    report
}
