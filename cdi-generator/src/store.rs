//! Writing, listing and removing specs and their host-side state.
//!
//! A spec is written to a hidden temporary file in the spec directory, synced,
//! and renamed over its final name, so a runtime scanning the directory sees
//! either the old spec, the new one, or none: never a torn file that would
//! make it reject the whole directory (and so every other container's device).
//! Temporaries end in `.tmp-<pid>`, a suffix CDI runtimes do not load.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use std::path::{Path, PathBuf};

use hami_region::layout::Limits;
use hami_region::Region;
use thiserror::Error;

use crate::builder::{Allocation, Layout, LIBRARY_IN_CONTAINER, REGION_FILE};
use crate::spec::Spec;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a CDI spec: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("shared region for {name}: {source}")]
    Region {
        name: String,
        #[source]
        source: hami_region::RegionError,
    },
}

fn io(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        context,
        path,
        source,
    }
}

/// `hami.io/vgpu` + `job1` → `hami.io-vgpu_job1.json`.
pub fn spec_file_name(kind: &str, name: &str) -> String {
    format!("{}_{name}.json", kind.replace('/', "-"))
}

pub struct SpecStore {
    pub dir: PathBuf,
}

/// A spec found in the store.
pub struct Listed {
    pub name: String,
    pub path: PathBuf,
    pub spec: Spec,
}

impl SpecStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path_of(&self, kind: &str, name: &str) -> PathBuf {
        self.dir.join(spec_file_name(kind, name))
    }

    /// Writes `spec` atomically under the name of its (single) device.
    pub fn write(&self, spec: &Spec) -> Result<PathBuf, StoreError> {
        fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        let name = spec.devices.first().map_or("", |d| d.name.as_str());
        let path = self.path_of(&spec.kind, name);
        let file_name = path
            .file_name()
            .expect("has a name")
            .to_string_lossy()
            .into_owned();
        let tmp = self
            .dir
            .join(format!(".{file_name}.tmp-{}", std::process::id()));
        let text = serde_json::to_string_pretty(spec).expect("spec is plain data") + "\n";
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)
                .map_err(io("create", &tmp))?;
            f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("sync", &tmp))?;
            test_pause_before_rename();
            fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
            // The rename itself must survive a power cut.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io("sync", &self.dir))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| path)
    }

    pub fn read(&self, kind: &str, name: &str) -> Result<Spec, StoreError> {
        read_spec(&self.path_of(kind, name))
    }

    /// Every spec of `kind` in the directory; files that do not parse are reported.
    pub fn list(&self, kind: &str) -> Result<(Vec<Listed>, Vec<StoreError>), StoreError> {
        let prefix = format!("{}_", kind.replace('/', "-"));
        let mut found = Vec::new();
        let mut broken = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((found, broken)),
            Err(e) => return Err(io("read", &self.dir)(e)),
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file
                .strip_prefix(&prefix)
                .and_then(|f| f.strip_suffix(".json"))
            else {
                continue;
            };
            match read_spec(&entry.path()) {
                Ok(spec) => found.push(Listed {
                    name: name.to_owned(),
                    path: entry.path(),
                    spec,
                }),
                Err(e) => broken.push(e),
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((found, broken))
    }

    /// Removes a spec; false if there was none.
    pub fn remove(&self, kind: &str, name: &str) -> Result<bool, StoreError> {
        let path = self.path_of(kind, name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }

    /// Removes the specs of `kind` whose allocation `keep` rejects (pods or
    /// containers that are gone), and temporaries left by writers that died.
    pub fn remove_stale(
        &self,
        kind: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        let mut removed = Vec::new();
        let (specs, _) = self.list(kind)?;
        for s in specs {
            if !keep(&s.name) && self.remove(kind, &s.name)? {
                removed.push(s.name);
            }
        }
        for entry in fs::read_dir(&self.dir)
            .map_err(io("read", &self.dir))?
            .flatten()
        {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = file
                .starts_with('.')
                .then(|| file.rsplit_once(".tmp-"))
                .flatten()
                .map(|(_, p)| p)
            else {
                continue;
            };
            let writer_alive = pid
                .parse::<u32>()
                .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !writer_alive && fs::remove_file(entry.path()).is_ok() {
                removed.push(file);
            }
        }
        Ok(removed)
    }
}

fn read_spec(path: &Path) -> Result<Spec, StoreError> {
    let text = fs::read_to_string(path).map_err(io("read", path))?;
    serde_json::from_str(&text).map_err(|e| StoreError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Fault injection for the crash test: the writer stops with its temporary
/// written and the rename not yet done, so the test can kill it there.
fn test_pause_before_rename() {
    if std::env::var_os("HAMI_CDI_TEST_PAUSE_BEFORE_RENAME").is_some() {
        eprintln!("hami-cdi: paused before rename (test hook)");
        std::thread::sleep(std::time::Duration::from_secs(600));
    }
}

/// Creates the allocation's host state: the ld.so.preload file naming the
/// library, and the shared region pre-created with the allocation's limits
/// (the node side writes the limits; processes in the container map them read-only).
pub fn prepare_state(
    allocation: &Allocation,
    layout: &Layout,
    spec: &Spec,
) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let create_dir = |dir: &Path| {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io("create", dir))
    };
    let region_dir = layout.region_dir(&allocation.name);
    create_dir(&region_dir)?;
    let lock_dir = layout.lock_dir();
    create_dir(&lock_dir)?;
    // Processes of any uid in any container create their lock files here;
    // sticky, so none can remove or replace another's.
    fs::set_permissions(&lock_dir, fs::Permissions::from_mode(0o1777))
        .map_err(io("chmod", &lock_dir))?;
    // Mounted into Ascend containers before the arbiter may have started.
    create_dir(&layout.arbiter_dir())?;
    write_node_file(
        &layout.limits_file(&allocation.name),
        limits_text(spec)?.as_bytes(),
    )?;
    let preload = layout.preload_file(&allocation.name);
    write_node_file(&preload, format!("{LIBRARY_IN_CONTAINER}\n").as_bytes())?;
    let mut limits = Limits::unlimited();
    // The spec also sets CUDA_DEVICE_SM_LIMIT, which applies to every device
    // without its own _<i>: mirror that, so region and environment agree.
    let first_cores = allocation
        .grants
        .first()
        .and_then(|g| g.cores)
        .map_or(0, u32::from);
    limits.sm_percent = [first_cores; hami_region::MAX_DEVICES];
    for (i, g) in allocation
        .grants
        .iter()
        .enumerate()
        .take(hami_region::MAX_DEVICES)
    {
        limits.memory_bytes[i] = g.memory_bytes.unwrap_or(0);
        limits.sm_percent[i] = g.cores.map_or(0, u32::from);
    }
    let region = region_dir.join(REGION_FILE);
    // A region left from an earlier allocation of the same name carries old limits.
    let _ = fs::remove_file(&region);
    Region::create_new(&region, &limits).map_err(|source| StoreError::Region {
        name: allocation.name.clone(),
        source,
    })?;
    // Usage is written by the container's processes, whatever their uid; the
    // limits they must not change are checked against the read-only limits.
    fs::set_permissions(&region, fs::Permissions::from_mode(0o666))
        .map_err(io("chmod", &region))?;
    Ok(())
}

/// The spec's environment as the node's limits file: what hami-core reads
/// with precedence over the process environment.
pub fn limits_text(spec: &Spec) -> Result<String, StoreError> {
    let pairs: Vec<(&str, &str)> = spec
        .devices
        .iter()
        .take(1)
        .flat_map(|d| &d.container_edits.env)
        .filter_map(|e| e.split_once('='))
        .collect();
    hami_api::limits_file::render("hami-cdi", pairs).map_err(|e| StoreError::Parse {
        path: PathBuf::from(crate::builder::LIMITS_FILE),
        reason: e.to_string(),
    })
}

/// A node-owned file (0644), created anew: never written through a name
/// that someone else put there.
fn write_node_file(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let _ = fs::remove_file(path);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .and_then(|mut f| f.write_all(contents).and_then(|()| f.sync_all()))
        .map_err(io("write", path))
}

/// Removes an allocation's host state.
pub fn remove_state(layout: &Layout, name: &str) -> Result<bool, StoreError> {
    let dir = layout.allocation_dir(name);
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("remove", &dir)(e)),
    }
}

/// Bytes in use per device according to the allocation's region, if it has
/// one. Read as a snapshot: the region is never mapped, created or locked
/// here, and nothing the container put in its region directory is followed.
pub fn usage(layout: &Layout, name: &str) -> Option<Vec<u64>> {
    let relative = Path::new(name).join("region").join(REGION_FILE);
    let snapshot =
        hami_region::snapshot::Snapshot::read_beneath(&layout.state_dir, &relative).ok()?;
    Some(snapshot.used_bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{Grant, DEFAULT_KIND};

    fn layout(dir: &Path) -> Layout {
        Layout {
            kind: DEFAULT_KIND.into(),
            library: "/usr/local/vgpu/libhami_core.so".into(),
            state_dir: dir.join("state"),
            hook: None,
        }
    }

    fn spec() -> Spec {
        serde_json::from_value(serde_json::json!({
            "cdiVersion": "0.5.0", "kind": DEFAULT_KIND,
            "devices": [{"name": "job1", "containerEdits": {"env": ["CUDA_DEVICE_MEMORY_LIMIT_0=1g"]}}]
        }))
        .unwrap()
    }

    fn allocation() -> Allocation {
        Allocation {
            name: "job1".into(),
            grants: vec![Grant {
                index: 0,
                memory_bytes: Some(1 << 30),
                cores: Some(30),
            }],
        }
    }

    /// The region directory is the container's to write: a symlink it puts
    /// at the region must never be opened, let alone created or resized,
    /// by root (`hami-cdi list` used to map whatever was there read-write).
    #[test]
    fn planted_region_symlinks_are_never_followed() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let layout = layout(dir.path());
        prepare_state(&allocation(), &layout, &spec()).unwrap();
        assert_eq!(usage(&layout, "job1").unwrap()[0], 0);
        let region = layout.region_dir("job1").join(REGION_FILE);
        assert_eq!(fs::metadata(&region).unwrap().mode() & 0o777, 0o666);
        let limits = layout.limits_file("job1");
        assert_eq!(fs::metadata(&limits).unwrap().mode() & 0o777, 0o644);
        assert!(fs::read_to_string(&limits)
            .unwrap()
            .contains("CUDA_DEVICE_MEMORY_LIMIT_0=1g"));
        assert_eq!(
            fs::metadata(layout.lock_dir())
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o1777
        );

        let victim = dir.path().join("victim");
        fs::write(&victim, "").unwrap();
        fs::remove_file(&region).unwrap();
        std::os::unix::fs::symlink(&victim, &region).unwrap();
        assert_eq!(usage(&layout, "job1"), None);
        assert_eq!(
            fs::metadata(&victim).unwrap().len(),
            0,
            "the victim was written"
        );
        // Preparing the allocation again replaces the link, not its target.
        prepare_state(&allocation(), &layout, &spec()).unwrap();
        assert!(fs::symlink_metadata(&region).unwrap().is_file());
        assert_eq!(fs::metadata(&victim).unwrap().len(), 0);
    }
}
