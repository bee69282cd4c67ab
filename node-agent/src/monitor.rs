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

/// An owner file is a few hundred bytes.
const MAX_OWNER_BYTES: u64 = 64 << 10;

/// A whole scan of the state directory; what is left after it is reported,
/// not waited for (one slow filesystem must not stall every scrape).
pub const SCAN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// `dir/owner.json`, read as [`hami_region::safe_read`] reads anything a
/// container might have touched: no symlink, no FIFO, bounded. A missing
/// file is the default owner (nobody).
pub fn read_owner(dir: &Path) -> Result<Owner, String> {
    read_owner_if_any(dir).map(Option::unwrap_or_default)
}

/// [`read_owner`], telling a missing file (`None`) from a default one.
pub fn read_owner_if_any(dir: &Path) -> Result<Option<Owner>, String> {
    let path = dir.join(OWNER_FILE);
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(format!("{}: no parent directory", dir.display()));
    };
    let relative = Path::new(name).join(OWNER_FILE);
    match hami_region::safe_read::read_beneath(
        parent,
        &relative,
        hami_region::safe_read::Size::AtMost(MAX_OWNER_BYTES),
    ) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Reads every allocation's region under `state_dir`, in name order.
pub fn scan(state_dir: &Path) -> Report {
    scan_until(state_dir, std::time::Instant::now() + SCAN_DEADLINE)
}

/// [`scan`] that stops at `deadline`, reporting the allocations not read.
pub fn scan_until(state_dir: &Path, deadline: std::time::Instant) -> Report {
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
            // Not followed: an allocation directory is a real directory.
            .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
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
        if std::time::Instant::now() > deadline {
            report.errors.push((
                allocation,
                "not read: the scan ran past its deadline".into(),
            ));
            continue;
        }
        let relative = Path::new(&allocation).join("region").join(REGION_FILE);
        if std::fs::symlink_metadata(state_dir.join(&relative)).is_err() {
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
        match Snapshot::read_beneath(state_dir, &relative) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn region_dir(state: &Path, name: &str) -> PathBuf {
        let dir = state.join(name).join("region");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// What a container can put where its region was (its region directory
    /// is mounted writable): every scrape must still finish, at once, with
    /// the honest neighbours read and each hostile entry named.
    #[test]
    fn hostile_region_files_are_reported_not_followed() {
        let state = tempfile::tempdir().unwrap();
        let s = state.path();
        let mut limits = hami_region::layout::Limits::unlimited();
        limits.memory_bytes[0] = 1 << 30;
        hami_region::Region::open_or_create(&region_dir(s, "a-good").join(REGION_FILE), &limits)
            .unwrap();
        let fifo = region_dir(s, "b-fifo").join(REGION_FILE);
        mkfifo(&fifo);
        std::os::unix::fs::symlink("/dev/zero", region_dir(s, "c-zero").join(REGION_FILE)).unwrap();
        let sparse = std::fs::File::create(region_dir(s, "d-sparse").join(REGION_FILE)).unwrap();
        sparse.set_len(1 << 40).unwrap();
        // An allocation directory that is a symlink to another's.
        std::os::unix::fs::symlink(s.join("a-good"), s.join("e-link")).unwrap();
        // An owner file swapped for a FIFO.
        hami_region::Region::open_or_create(&region_dir(s, "f-owner").join(REGION_FILE), &limits)
            .unwrap();
        mkfifo(&s.join("f-owner").join(OWNER_FILE));

        let started = Instant::now();
        let report = scan(s);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let read: Vec<&str> = report
            .containers
            .iter()
            .map(|c| c.allocation.as_str())
            .collect();
        assert_eq!(read, ["a-good", "f-owner"], "{report:?}");
        assert_eq!(
            report.containers[0].snapshot.limits.memory_bytes[0],
            1 << 30
        );
        let failed: Vec<&str> = report.errors.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(
            failed,
            ["b-fifo", "c-zero", "d-sparse", "f-owner"],
            "{report:?}"
        );
        let why = |name: &str| &report.errors.iter().find(|(a, _)| a == name).unwrap().1;
        assert!(
            why("b-fifo").contains("not a regular file"),
            "{}",
            why("b-fifo")
        );
        assert!(why("c-zero").contains("symlink"), "{}", why("c-zero"));
        assert!(
            why("d-sparse").contains("expected exactly"),
            "{}",
            why("d-sparse")
        );
    }

    #[test]
    fn a_scan_past_its_deadline_reports_what_it_did_not_read() {
        let state = tempfile::tempdir().unwrap();
        let limits = hami_region::layout::Limits::unlimited();
        for name in ["a", "b"] {
            hami_region::Region::open_or_create(
                &region_dir(state.path(), name).join(REGION_FILE),
                &limits,
            )
            .unwrap();
        }
        let report = scan_until(state.path(), Instant::now() - Duration::from_secs(1));
        assert!(report.containers.is_empty());
        assert_eq!(report.errors.len(), 2);
        assert!(report.errors[0].1.contains("deadline"));
    }
}
