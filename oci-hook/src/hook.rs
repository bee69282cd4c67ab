//! One hook invocation, from the runtime's State to an injected container.
//!
//! The injection is the one a CDI spec from hami-cdi describes (the same
//! builder makes both), applied by the hook instead of the runtime:
//! - the quota environment goes into the limits file, mounted read-only,
//!   because a hook cannot change the environment of a process the runtime
//!   has already configured;
//! - `/etc/ld.so.preload` is appended to, never replaced, so the image's own
//!   preloads keep working.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hami_cdi::builder::{
    self, DeviceNodes, EditSource, RegionMount, VendorExtras, DEFAULT_KIND, LIBRARY_IN_CONTAINER,
};
use hami_cdi::discovery::{self, Inventory};
use hami_cdi::store;
use hami_cdi::{Allocation, Grant, Layout};
use thiserror::Error;

use crate::confine::{identity, RootFs};
use crate::inject::{self, DevicePlan, MountPlan, Plan};
use crate::mount::MountFlags;
use crate::request::{self, Decision, DeviceRef, DeviceRequest};
use crate::state::{Config, State};
use crate::{cgroup, namespace};

/// Where the limits file lives in an allocation's host directory.
pub use hami_cdi::builder::LIMITS_FILE;

#[derive(Debug, Error)]
pub enum HookError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("the container asked for hami-core but its request is invalid: {0}")]
    Request(#[from] request::RequestError),
    #[error("device discovery: {0}")]
    Discovery(String),
    #[error("{0}")]
    Device(String),
    #[error(transparent)]
    Build(#[from] builder::BuildError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Inject(#[from] inject::InjectError),
    #[error("container id {0:?}: only letters, digits, '_', '-' and '.' are supported")]
    ContainerId(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Namespace(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HookError {
    let what = what.into();
    move |source| HookError::Io { what, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    CreateContainer,
    Prestart,
    Poststop,
}

/// The node's side of the configuration: where things are on the host.
#[derive(Debug, Clone)]
pub struct HookConfig {
    /// nvidia, ascend or mock.
    pub vendor: String,
    /// The inventory file for the mock vendor.
    pub inventory: Option<PathBuf>,
    pub dev: PathBuf,
    /// Host path of libhami_core.so.
    pub library: PathBuf,
    /// Host directory for each container's limits file and shared region.
    pub state_dir: PathBuf,
    pub cgroup_root: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    NotRequested,
    Skipped(String),
    Injected { name: String, done: Vec<String> },
    Removed { name: String, existed: bool },
}

/// The State's annotations, completed from config.json (runtimes that put
/// fewer annotations into the State).
pub fn annotations(state: &State, config: &Config) -> BTreeMap<String, String> {
    let mut all = config.annotations.clone();
    all.extend(state.annotations.clone());
    all
}

/// The allocation name of a container: its state directory and CDI-style name.
pub fn allocation_name(container_id: &str) -> Result<String, HookError> {
    let ok = !container_id.is_empty()
        && container_id.len() <= 200
        && container_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok {
        return Err(HookError::ContainerId(container_id.to_owned()));
    }
    Ok(format!("ctr-{container_id}"))
}

fn layout(cfg: &HookConfig) -> Layout {
    Layout {
        kind: DEFAULT_KIND.to_owned(),
        library: cfg.library.clone(),
        state_dir: cfg.state_dir.clone(),
        hook: None,
    }
}

pub fn run(stage: Stage, cfg: &HookConfig, state: &State) -> Result<Outcome, HookError> {
    let config = Config::read(&state.bundle)?;
    let annotations = annotations(state, &config);
    let name = allocation_name(&state.id)?;
    let layout = layout(cfg);
    if request::is_requested(&annotations) {
        crate::trusted::ensure_dir(&cfg.state_dir)
            .map_err(io_error("the hook's state directory"))?;
    }
    if stage == Stage::Poststop {
        if !request::is_requested(&annotations) {
            return Ok(Outcome::NotRequested);
        }
        let existed = store::remove_state(&layout, &name)?;
        return Ok(Outcome::Removed { name, existed });
    }
    let requests = match request::decide(&annotations)? {
        Decision::NotRequested => return Ok(Outcome::NotRequested),
        Decision::NothingForThisContainer(reason) => return Ok(Outcome::Skipped(reason)),
        Decision::Inject(requests) => requests,
    };
    let inventory = discovery::for_vendor(&cfg.vendor, &cfg.dev, cfg.inventory.as_deref())
        .map_err(HookError::Discovery)?
        .inventory()
        .map_err(|e| HookError::Discovery(e.to_string()))?;
    let allocation = Allocation {
        name: name.clone(),
        grants: resolve(&requests, &inventory)?,
    };
    if !cfg.library.is_file() {
        return Err(HookError::Io {
            what: format!("library {}", cfg.library.display()),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    let plan = builder::plan(&allocation, &inventory, &layout)?;
    let spec = builder::build(&allocation, &inventory, &layout)?;
    let injection = injection_plan(&plan, &layout);
    let kubernetes = request::is_kubernetes(&annotations);
    // The limits file comes with the state: the spec's quota environment.
    let result = store::prepare_state(&allocation, &layout, &spec)
        .map_err(HookError::from)
        .and_then(|()| inject_into(stage, cfg, state, &config, &injection, kubernetes));
    match result {
        Ok(done) => Ok(Outcome::Injected { name, done }),
        Err(e) => {
            // The runtime will not start the container: leave nothing behind.
            let _ = store::remove_state(&layout, &name);
            Err(e)
        }
    }
}

/// Devices named by index or UUID → this node's devices.
fn resolve(requests: &[DeviceRequest], inventory: &Inventory) -> Result<Vec<Grant>, HookError> {
    let available = || {
        inventory
            .devices
            .iter()
            .map(|d| format!("{} ({})", d.index, d.uuid))
            .collect::<Vec<_>>()
            .join(", ")
    };
    requests
        .iter()
        .map(|r| {
            let found = match &r.device {
                DeviceRef::Index(i) => inventory.device(*i),
                DeviceRef::Uuid(u) => inventory.devices.iter().find(|d| &d.uuid == u),
            };
            let device = found.ok_or_else(|| {
                HookError::Device(format!(
                    "device {:?} is not on this node (devices: {})",
                    r.device,
                    available()
                ))
            })?;
            Ok(Grant {
                index: device.index,
                memory_bytes: r.memory_bytes,
                cores: r.cores,
            })
        })
        .collect()
}

fn injection_plan(plan: &builder::Plan<'_>, layout: &Layout) -> Plan {
    let mut mounts = vec![MountPlan {
        source: layout.library.clone(),
        target: LIBRARY_IN_CONTAINER.to_owned(),
        flags: MountFlags {
            writable: false,
            executable: true,
        },
        follow_source_symlinks: true,
    }];
    // The region and lock directories are the hook's own state (never a
    // symlink); the vendor's driver files are the node's installation.
    let region = RegionMount
        .edits(plan)
        .mounts
        .into_iter()
        .map(|m| (m, false));
    let vendor = VendorExtras
        .edits(plan)
        .mounts
        .into_iter()
        .map(|m| (m, true));
    for (m, follow) in region.chain(vendor) {
        mounts.push(MountPlan {
            source: PathBuf::from(&m.host_path),
            target: m.container_path.clone(),
            flags: MountFlags {
                writable: !m.options.iter().any(|o| o == "ro"),
                executable: false,
            },
            follow_source_symlinks: follow,
        });
    }
    let devices = DeviceNodes
        .edits(plan)
        .device_nodes
        .into_iter()
        .map(|n| DevicePlan {
            host: PathBuf::from(n.host_path.as_deref().unwrap_or(&n.path)),
            target: n.path,
        })
        .collect();
    Plan {
        mounts,
        devices,
        preload: LIBRARY_IN_CONTAINER.to_owned(),
    }
}

/// The rootfs the hook will write into, refused where writing "into the
/// container" would write the host: a relative `root.path` must stay inside
/// the bundle; any rootfs must not be `/` nor contain the hook's own host
/// paths (state, library, devices, cgroups). An absolute path elsewhere is
/// what podman and CRI-O give (their storage), so it is accepted.
fn checked_rootfs(config: &Config, bundle: &Path, cfg: &HookConfig) -> Result<PathBuf, HookError> {
    use std::path::Component;
    let refuse = |why: String| {
        Err(HookError::Namespace(format!(
            "root.path {}: {why}",
            config.root.path.display()
        )))
    };
    if config
        .root
        .path
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return refuse("\"..\" is not allowed in a container's rootfs path".into());
    }
    let path = config.rootfs(bundle);
    let real = std::fs::canonicalize(&path)
        .map_err(io_error(format!("container rootfs {}", path.display())))?;
    if !config.root.path.is_absolute() {
        let real_bundle = std::fs::canonicalize(bundle)
            .map_err(io_error(format!("bundle {}", bundle.display())))?;
        if !real.starts_with(&real_bundle) || real == real_bundle {
            return refuse(format!(
                "resolves to {}, outside the bundle {}",
                real.display(),
                real_bundle.display()
            ));
        }
    }
    if real == Path::new("/") {
        return refuse("is the host's root".into());
    }
    for own in [&cfg.state_dir, &cfg.library, &cfg.dev, &cfg.cgroup_root] {
        let own = std::fs::canonicalize(own).unwrap_or_else(|_| own.clone());
        if own.starts_with(&real) {
            return refuse(format!(
                "resolves to {}, which holds the host's {}",
                real.display(),
                own.display()
            ));
        }
    }
    Ok(path)
}

/// Every device of the allocation must already be in the runtime spec.
fn check_granted(devices: &[inject::PreparedDevice], config: &Config) -> Result<(), HookError> {
    for d in devices {
        let (major, minor) = (libc::major(d.rdev), libc::minor(d.rdev));
        if !config.grants_device(d.kind, u64::from(major), u64::from(minor)) {
            return Err(HookError::Device(format!(
                "the allocation names {} ({major}:{minor}), which the runtime did not give this \
                 container; on Kubernetes devices come from the device plugin, and the hook \
                 adds none",
                d.target
            )));
        }
    }
    Ok(())
}

/// Finds the rootfs in the current mount namespace: at its bundle path
/// (before the runtime's pivot_root) or at `/` (after it).
fn locate_rootfs(host_path: &Path, expected: (u64, u64)) -> Result<RootFs, HookError> {
    for candidate in [host_path, Path::new("/")] {
        if let Ok(root) = RootFs::open(candidate) {
            if identity(root.handle()).ok() == Some(expected) {
                return Ok(root);
            }
        }
    }
    Err(HookError::Namespace(format!(
        "the container rootfs {} is neither at its path nor at / in the container's mount namespace",
        host_path.display()
    )))
}

fn inject_into(
    stage: Stage,
    cfg: &HookConfig,
    state: &State,
    config: &Config,
    plan: &Plan,
    kubernetes: bool,
) -> Result<Vec<String>, HookError> {
    let rootfs_path = checked_rootfs(config, &state.bundle, cfg)?;
    let expected = RootFs::open(&rootfs_path)
        .and_then(|r| identity(r.handle()))
        .map_err(io_error(format!(
            "container rootfs {}",
            rootfs_path.display()
        )))?;
    if !config.has_own_mount_namespace() {
        return Err(HookError::Namespace(
            "the container has no mount namespace of its own: mounting would change the host"
                .into(),
        ));
    }
    if config.rootfs_propagates_to_host() {
        return Err(HookError::Namespace(
            "the container's rootfsPropagation is shared: mounts under its rootfs would \
             propagate to the host; give this container its quota through the CDI path \
             (the device plugin) instead"
                .into(),
        ));
    }
    let mut prepared = inject::prepare(plan)?;
    if kubernetes {
        // On Kubernetes the device plugin decides which devices a container
        // may open; annotations, which a pod author can write, never add one.
        check_granted(&prepared.devices, config)?;
        let granted = prepared.devices.len();
        prepared.devices.clear();
        if granted > 0 {
            tracing::debug!("{granted} device nodes already granted by the runtime");
        }
    }
    // The State's pid is in the runtime's pid namespace. A createContainer hook
    // runs inside the container, where that number can name another process
    // (runc reports the init as seen from inside: 1); it is already in the
    // container's mount namespace and cgroup, as the runtime spec requires.
    let pid = match stage {
        Stage::Prestart => Some(state.pid.filter(|p| *p > 0).ok_or_else(|| {
            HookError::Namespace("prestart: the runtime's State has no container pid".into())
        })?),
        _ => None,
    };
    let mut done = Vec::new();

    // The host's cgroupfs is only certain to be visible before entering.
    let rules: Vec<String> = prepared
        .devices
        .iter()
        .map(|d| cgroup::rule(d.kind, d.rdev))
        .collect();
    if !rules.is_empty() {
        let outcome = cgroup::allow(&cfg.cgroup_root, pid, &rules)
            .map_err(io_error("allowing the devices in the container's cgroup"))?;
        done.push(format!("devices cgroup: {outcome:?}"));
    }
    if let Some(pid) = pid {
        if !namespace::shares_mount_ns_with(pid).map_err(io_error(format!(
            "reading the mount namespace of pid {pid}"
        )))? {
            namespace::enter_mount_ns(pid).map_err(io_error(format!(
                "entering the mount namespace of pid {pid}"
            )))?;
            done.push(format!("entered the mount namespace of pid {pid}"));
        }
    }
    let root = locate_rootfs(&rootfs_path, expected)?;
    done.extend(prepared.apply(&root)?);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_become_allocation_names() {
        assert_eq!(allocation_name("abc-1.2_x").unwrap(), "ctr-abc-1.2_x");
        let hex = "0123456789abcdef".repeat(4);
        assert!(allocation_name(&hex).is_ok());
        for bad in ["", "../x", "a/b", "a b", "a\nb"] {
            assert!(allocation_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rootfs_paths_that_are_the_host_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink("/", bundle.join("hostroot")).unwrap();
        let cfg = HookConfig {
            vendor: "mock".into(),
            inventory: None,
            dev: "/dev".into(),
            library: "/usr/local/vgpu/libhami_core.so".into(),
            state_dir: dir.path().join("state"),
            cgroup_root: "/sys/fs/cgroup".into(),
        };
        let config = |root: &str| -> Config {
            serde_json::from_value(serde_json::json!({"root": {"path": root}})).unwrap()
        };
        let check =
            |root: &str| checked_rootfs(&config(root), &bundle, &cfg).map_err(|e| e.to_string());
        assert_eq!(check("rootfs").unwrap(), bundle.join("rootfs"));
        // podman and CRI-O give an absolute path into their storage.
        let elsewhere = dir.path().join("elsewhere");
        assert!(check(elsewhere.to_str().unwrap()).is_ok());
        for (root, why) in [
            ("/", "host's root"),
            ("../elsewhere", "\"..\""),
            ("hostroot", "outside the bundle"),
            (".", "outside the bundle"),
            ("/usr", "holds the host's"),
        ] {
            let err = check(root).unwrap_err();
            assert!(err.contains(why), "{root}: {err}");
        }
        // A rootfs that holds the hook's state directory.
        let err = check(dir.path().to_str().unwrap()).unwrap_err();
        assert!(err.contains("holds the host's"), "{err}");
    }

    #[test]
    fn requests_resolve_by_index_or_uuid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inv.json");
        std::fs::write(
            &path,
            r#"{"devices":[{"index":0,"uuid":"GPU-a","memoryMiB":8192},{"index":3,"uuid":"GPU-b","memoryMiB":8192}]}"#,
        )
        .unwrap();
        let inv = discovery::for_vendor("mock", Path::new("/dev"), Some(&path))
            .unwrap()
            .inventory()
            .unwrap();
        let req = |device| DeviceRequest {
            device,
            memory_bytes: Some(1 << 30),
            cores: Some(20),
        };
        let grants = resolve(
            &[
                req(DeviceRef::Uuid("GPU-b".into())),
                req(DeviceRef::Index(0)),
            ],
            &inv,
        )
        .unwrap();
        assert_eq!(grants[0].index, 3);
        assert_eq!(grants[1].index, 0);
        let err = resolve(&[req(DeviceRef::Uuid("GPU-zz".into()))], &inv)
            .unwrap_err()
            .to_string();
        assert!(err.contains("GPU-zz") && err.contains("3 (GPU-b)"), "{err}");
        assert!(resolve(&[req(DeviceRef::Index(1))], &inv).is_err());
    }
}
