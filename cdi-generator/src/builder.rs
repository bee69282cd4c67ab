//! Allocation + inventory → CDI spec. Each kind of injection is one small
//! [`EditSource`]; their edits are merged into the device's `containerEdits`,
//! and the declared `cdiVersion` is the lowest the result needs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hami_api::keys;
use hami_api::quota::MemoryQuota;
use thiserror::Error;

use crate::discovery::{DiscoveredDevice, Inventory, Vendor};
use crate::spec::{self, ContainerEdits, Device, DeviceNode, Hook, Mount, Spec};

pub const DEFAULT_KIND: &str = "hami.io/vgpu";
/// Where the interposer appears in every container.
pub const LIBRARY_IN_CONTAINER: &str = "/usr/local/vgpu/libhami_core.so";
/// The shared-region directory inside the container, and the region file in it.
pub const REGION_DIR_IN_CONTAINER: &str = "/usr/local/vgpu/region";
pub const REGION_FILE: &str = "vgpu.cache";
pub const PRELOAD_FILE: &str = "ld.so.preload";
/// The node's limits file in an allocation's host directory, mounted
/// read-only at [`hami_api::limits_file::LIMITS_FILE_IN_CONTAINER`].
pub const LIMITS_FILE: &str = "limits.env";
/// The node-wide lock directory inside every container, and the lock file in it.
pub const LOCK_DIR_IN_CONTAINER: &str = "/usr/local/vgpu/lock";
pub const CONTEXT_LOCK_FILE: &str = "context.lock";
/// The one variable every hook entry sets. A hook with no `env` inherits the
/// environment of the runtime process that starts it, and runc starts
/// createContainer hooks from inside the container, with the image's
/// environment (LD_PRELOAD included: the CVE-2025-23266 shape). An empty list
/// is not enough: runtimes that rewrite config.json drop empty lists.
pub const HOOK_ENV: &str = "HAMI_OCI_HOOK=1";
/// The node agent's NPU arbiter directory inside Ascend containers,
/// read-only: it holds the arbiter's socket (Ascend time-slicing).
pub const ARBITER_DIR_IN_CONTAINER: &str = "/usr/local/vgpu/arbiter";
/// The arbiter's directory in the state directory, on the host.
pub const ARBITER_DIR: &str = ".arbiter";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("name {0:?} is not a valid CDI device name (letters, digits, '_', '-', '.', ':'; starting with a letter)")]
    BadName(String),
    #[error("kind {0:?} is not vendor/class (e.g. hami.io/vgpu)")]
    BadKind(String),
    #[error("no devices requested")]
    NoDevices,
    #[error("device {index} is requested twice")]
    DuplicateDevice { index: u32 },
    #[error("device {index} does not exist on this node (devices: {available})")]
    UnknownDevice { index: u32, available: String },
    #[error("device {index}: a {quota} quota is more than the device's {device} of memory")]
    QuotaTooLarge {
        index: u32,
        quota: String,
        device: String,
    },
    #[error("compute share {0} is not a percentage 1-100")]
    BadCores(u8),
}

/// One device of an allocation and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub index: u32,
    /// Bytes; `None` = the whole device.
    pub memory_bytes: Option<u64>,
    /// Percent; `None` = unthrottled.
    pub cores: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The CDI device name: `podman run --device hami.io/vgpu=<name>`.
    pub name: String,
    pub grants: Vec<Grant>,
}

/// Where things live on the host, and optional extras.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub kind: String,
    /// Host path of libhami_core.so.
    pub library: PathBuf,
    /// Host directory holding one subdirectory of state per allocation.
    pub state_dir: PathBuf,
    /// `hami-oci-hook`, to add as a createContainer hook.
    pub hook: Option<PathBuf>,
}

impl Layout {
    pub fn allocation_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join(name)
    }
    pub fn region_dir(&self, name: &str) -> PathBuf {
        self.allocation_dir(name).join("region")
    }
    pub fn limits_file(&self, name: &str) -> PathBuf {
        self.allocation_dir(name).join(LIMITS_FILE)
    }
    pub fn preload_file(&self, name: &str) -> PathBuf {
        self.allocation_dir(name).join(PRELOAD_FILE)
    }
    /// Shared by every allocation on the node.
    pub fn lock_dir(&self) -> PathBuf {
        self.state_dir.join(".lock")
    }
    /// Where the node agent's NPU arbiter listens; root's alone, mounted
    /// read-only (a socket on a read-only mount still accepts connections).
    pub fn arbiter_dir(&self) -> PathBuf {
        self.state_dir.join(ARBITER_DIR)
    }
}

/// A validated allocation with its devices resolved.
pub struct Plan<'a> {
    pub allocation: &'a Allocation,
    pub inventory: &'a Inventory,
    pub layout: &'a Layout,
    pub devices: Vec<(&'a Grant, &'a DiscoveredDevice)>,
}

/// One kind of injection.
pub trait EditSource {
    fn edits(&self, plan: &Plan<'_>) -> ContainerEdits;
}

/// The quota environment hami-core reads (HAMi's names), and device visibility.
pub struct QuotaEnv;
/// The accelerator's device nodes, per device and shared.
pub struct DeviceNodes;
/// libhami_core.so read-only, and /etc/ld.so.preload naming it.
pub struct Preload;
/// The per-container shared-region directory, and the node-wide lock directory, writable.
pub struct RegionMount;
/// What the vendor's inventory adds (the mock driver's state and settings).
pub struct VendorExtras;
/// `hami-oci-hook` at createContainer, when configured.
pub struct CreateContainerHook;

impl EditSource for QuotaEnv {
    fn edits(&self, plan: &Plan<'_>) -> ContainerEdits {
        let mut env = Vec::new();
        for (i, (grant, _)) in plan.devices.iter().enumerate() {
            if let Some(bytes) = grant.memory_bytes {
                env.push(format!(
                    "{}={}",
                    keys::env_memory_limit_for(i),
                    MemoryQuota::from_bytes(bytes)
                ));
            }
            if let Some(cores) = grant.cores {
                env.push(format!("{}={cores}", keys::env_sm_limit_for(i)));
            }
        }
        if let Some(cores) = plan.devices.first().and_then(|(g, _)| g.cores) {
            env.push(format!("{}={cores}", keys::ENV_SM_LIMIT));
        }
        env.push(format!(
            "{}={REGION_DIR_IN_CONTAINER}/{REGION_FILE}",
            keys::ENV_SHARED_CACHE
        ));
        // Pinned: a pod or image env with CUDA_DISABLE_CONTROL=true must not
        // switch the quota off.
        env.push(format!("{}=false", keys::ENV_DISABLE_CONTROL));
        env.push(format!(
            "{}={LOCK_DIR_IN_CONTAINER}/{CONTEXT_LOCK_FILE}",
            keys::ENV_CONTEXT_LOCK
        ));
        match plan.inventory.vendor {
            Vendor::Nvidia | Vendor::Mock => {
                let uuids: Vec<&str> = plan.devices.iter().map(|(_, d)| d.uuid.as_str()).collect();
                env.push(format!("NVIDIA_VISIBLE_DEVICES={}", uuids.join(",")));
            }
            Vendor::Ascend => {
                let ids: Vec<String> = plan
                    .devices
                    .iter()
                    .map(|(_, d)| d.index.to_string())
                    .collect();
                env.push(format!("ASCEND_VISIBLE_DEVICES={}", ids.join(",")));
                if let Some(bytes) = plan.devices.first().and_then(|(g, _)| g.memory_bytes) {
                    env.push(format!("{}={}", keys::ENV_NPU_MEM_QUOTA, bytes >> 20));
                }
                env.push(format!(
                    "{}={ARBITER_DIR_IN_CONTAINER}/{}",
                    keys::ENV_NPU_SCHEDULE,
                    hami_region::npu_wire::SOCKET_FILE
                ));
                env.push(format!("{}={}", keys::ENV_NPU_DEVICE_IDS, ids.join(",")));
            }
        }
        ContainerEdits {
            env,
            ..ContainerEdits::default()
        }
    }
}

impl EditSource for DeviceNodes {
    fn edits(&self, plan: &Plan<'_>) -> ContainerEdits {
        let nodes = plan
            .devices
            .iter()
            .flat_map(|(_, d)| &d.nodes)
            .chain(&plan.inventory.shared_nodes)
            .map(|n| DeviceNode {
                path: n.path.clone(),
                host_path: n.host_path.clone().filter(|h| *h != n.path),
                ..DeviceNode::default()
            })
            .collect();
        ContainerEdits {
            device_nodes: nodes,
            ..ContainerEdits::default()
        }
    }
}

fn bind(host: &Path, container: &str, writable: bool) -> Mount {
    Mount {
        host_path: host.to_string_lossy().into_owned(),
        container_path: container.to_owned(),
        mount_type: None,
        options: vec![
            "rbind".into(),
            "nosuid".into(),
            "nodev".into(),
            if writable { "rw" } else { "ro" }.into(),
        ],
    }
}

impl EditSource for Preload {
    fn edits(&self, plan: &Plan<'_>) -> ContainerEdits {
        let name = &plan.allocation.name;
        ContainerEdits {
            mounts: vec![
                bind(&plan.layout.library, LIBRARY_IN_CONTAINER, false),
                bind(&plan.layout.preload_file(name), "/etc/ld.so.preload", false),
            ],
            ..ContainerEdits::default()
        }
    }
}

impl EditSource for RegionMount {
    fn edits(&self, plan: &Plan<'_>) -> ContainerEdits {
        let mut mounts = vec![
            bind(
                &plan.layout.region_dir(&plan.allocation.name),
                REGION_DIR_IN_CONTAINER,
                true,
            ),
            bind(&plan.layout.lock_dir(), LOCK_DIR_IN_CONTAINER, true),
            // The node's word on the limits, whatever the pod's or the
            // image's environment says (hami-core checks the region
            // against it).
            bind(
                &plan.layout.limits_file(&plan.allocation.name),
                hami_api::limits_file::LIMITS_FILE_IN_CONTAINER,
                false,
            ),
        ];
        if plan.inventory.vendor == Vendor::Ascend {
            mounts.push(bind(
                &plan.layout.arbiter_dir(),
                ARBITER_DIR_IN_CONTAINER,
                false,
            ));
        }
        ContainerEdits {
            mounts,
            ..ContainerEdits::default()
        }
    }
}

impl EditSource for VendorExtras {
    fn edits(&self, plan: &Plan<'_>) -> ContainerEdits {
        ContainerEdits {
            env: plan
                .inventory
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            mounts: plan.inventory.mounts.clone(),
            ..ContainerEdits::default()
        }
    }
}

impl EditSource for CreateContainerHook {
    fn edits(&self, plan: &Plan<'_>) -> ContainerEdits {
        let Some(hook) = &plan.layout.hook else {
            return ContainerEdits::default();
        };
        ContainerEdits {
            hooks: vec![Hook {
                hook_name: "createContainer".into(),
                path: hook.to_string_lossy().into_owned(),
                args: vec!["hami-oci-hook".into(), "createContainer".into()],
                env: vec![HOOK_ENV.into()],
                timeout: Some(10),
            }],
            ..ContainerEdits::default()
        }
    }
}

/// The sources every spec is made of, in order.
pub fn default_sources() -> Vec<Box<dyn EditSource>> {
    vec![
        Box::new(QuotaEnv),
        Box::new(VendorExtras),
        Box::new(DeviceNodes),
        Box::new(Preload),
        Box::new(RegionMount),
        Box::new(CreateContainerHook),
    ]
}

/// Checks the allocation against the node and resolves its devices.
pub fn plan<'a>(
    allocation: &'a Allocation,
    inventory: &'a Inventory,
    layout: &'a Layout,
) -> Result<Plan<'a>, BuildError> {
    if !spec::valid_device_name(&allocation.name) {
        return Err(BuildError::BadName(allocation.name.clone()));
    }
    if !spec::valid_kind(&layout.kind) {
        return Err(BuildError::BadKind(layout.kind.clone()));
    }
    if allocation.grants.is_empty() {
        return Err(BuildError::NoDevices);
    }
    let mut devices = Vec::new();
    for grant in &allocation.grants {
        if devices
            .iter()
            .any(|(g, _): &(&Grant, _)| g.index == grant.index)
        {
            return Err(BuildError::DuplicateDevice { index: grant.index });
        }
        if let Some(c) = grant.cores.filter(|c| *c == 0 || *c > 100) {
            return Err(BuildError::BadCores(c));
        }
        let device = inventory
            .device(grant.index)
            .ok_or_else(|| BuildError::UnknownDevice {
                index: grant.index,
                available: inventory
                    .devices
                    .iter()
                    .map(|d| d.index.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        if let Some(bytes) = grant.memory_bytes {
            if device.memory_bytes != 0 && bytes > device.memory_bytes {
                return Err(BuildError::QuotaTooLarge {
                    index: grant.index,
                    quota: MemoryQuota::from_bytes(bytes).to_string(),
                    device: MemoryQuota::from_bytes(device.memory_bytes).to_string(),
                });
            }
        }
        devices.push((grant, device));
    }
    Ok(Plan {
        allocation,
        inventory,
        layout,
        devices,
    })
}

/// Builds the spec for one allocation: one CDI device named after it.
pub fn build(
    allocation: &Allocation,
    inventory: &Inventory,
    layout: &Layout,
) -> Result<Spec, BuildError> {
    let plan = plan(allocation, inventory, layout)?;
    let mut edits = ContainerEdits::default();
    for source in default_sources() {
        edits.merge(source.edits(&plan));
    }
    let mut spec = Spec {
        cdi_version: String::new(),
        kind: layout.kind.clone(),
        annotations: BTreeMap::new(),
        devices: vec![Device {
            name: allocation.name.clone(),
            annotations: BTreeMap::new(),
            container_edits: edits,
        }],
        container_edits: None,
    };
    spec.cdi_version = spec::minimum_version(&spec).to_owned();
    Ok(spec)
}
