//! The minimal kubelet device plugin (v1beta1): devices advertised as
//! split-count replicas, and Allocate answered for the pod the scheduler
//! decided on. The decision, not kubelet's choice of replica IDs, says
//! which physical devices and quotas a container gets.
//!
//! Finding the pod: the node lock lets one pod per node be in
//! `bind-phase: allocating` at a time; should a lock have expired and two be
//! pending, the earliest `bind-time` goes first (then namespace and name),
//! and a container is matched only to the next unallocated device slot of
//! a pod whose device count is what kubelet asks for. A slot is never given
//! twice, so two pods' allocations cannot be swapped (HAMi#781).

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::Stream;
use hami_api::{BindPhase, PodAllocation};
use hami_cdi::builder::{self, Allocation, Grant, Layout};
use hami_cdi::discovery::Inventory;
use hami_cdi::store::{self, SpecStore};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

pub mod api {
    tonic::include_proto!("v1beta1");
}

use api::device_plugin_server::DevicePlugin;

pub const API_VERSION: &str = "v1beta1";
pub const HEALTHY: &str = "Healthy";
pub const UNHEALTHY: &str = "Unhealthy";

/// One physical device as the plugin advertises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginDevice {
    pub uuid: String,
    pub numa: i64,
    pub healthy: bool,
}

/// `split` replicas per device, `<uuid>::<n>`: what kubelet counts.
pub fn replicas(devices: &[PluginDevice], split: u32) -> Vec<api::Device> {
    devices
        .iter()
        .flat_map(|d| {
            (0..split).map(move |n| api::Device {
                id: format!("{}::{n}", d.uuid),
                health: if d.healthy { HEALTHY } else { UNHEALTHY }.to_owned(),
                topology: Some(api::TopologyInfo {
                    nodes: vec![api::NumaNode { id: d.numa }],
                }),
            })
        })
        .collect()
}

/// A pod on this node waiting for its devices (`bind-phase: allocating`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `hami.io/bind-time` (Unix seconds).
    pub bind_time: i64,
    /// The scheduler's decision: one slot per container, init containers first.
    pub allocation: PodAllocation,
    /// Container names in the same order.
    pub containers: Vec<String>,
}

/// What Allocate needs from the cluster.
pub trait PodSource: Send + Sync + 'static {
    fn pending(&self) -> BoxFuture<'static, Result<Vec<PendingPod>, String>>;
    fn set_phase(
        &self,
        namespace: &str,
        name: &str,
        phase: BindPhase,
    ) -> BoxFuture<'static, Result<(), String>>;
}

/// The pod and container slot a request for `count` devices is for.
pub fn match_slot(
    pods: &[PendingPod],
    taken: &HashMap<String, BTreeSet<usize>>,
    count: usize,
) -> Option<(usize, usize)> {
    let mut order: Vec<usize> = (0..pods.len()).collect();
    order.sort_by(|a, b| {
        let (x, y) = (&pods[*a], &pods[*b]);
        (x.bind_time, &x.namespace, &x.name).cmp(&(y.bind_time, &y.namespace, &y.name))
    });
    for p in order {
        let pod = &pods[p];
        let done = taken.get(&pod.uid);
        let next = pod
            .allocation
            .containers
            .iter()
            .enumerate()
            .find(|(slot, devices)| !devices.is_empty() && done.is_none_or(|d| !d.contains(slot)));
        if let Some((slot, devices)) = next {
            if devices.len() == count {
                return Some((p, slot));
            }
        }
    }
    None
}

/// Writes a container's CDI spec and host state with hami-cdi.
pub struct SpecWriter {
    pub inventory: Inventory,
    pub layout: Layout,
    pub store: SpecStore,
}

/// A CDI-safe allocation name for a pod's container.
pub fn allocation_name(namespace: &str, pod: &str, container: &str) -> String {
    format!("{namespace}_{pod}_{container}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// One device of an allocation: which, and its quota (0 = none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceQuota {
    pub uuid: String,
    pub memory_bytes: u64,
    pub cores: u32,
}

impl SpecWriter {
    /// Writes allocation `name`'s state, region, `owner.json` and CDI spec;
    /// returns the spec's container edits.
    pub fn prepare(
        &self,
        name: &str,
        devices: &[DeviceQuota],
        owner: &crate::monitor::Owner,
    ) -> Result<hami_cdi::spec::ContainerEdits, String> {
        let mut grants = Vec::new();
        for d in devices {
            let dev = self
                .inventory
                .devices
                .iter()
                .find(|x| x.uuid == d.uuid)
                .ok_or_else(|| format!("device {} is not on this node", d.uuid))?;
            grants.push(Grant {
                index: dev.index,
                memory_bytes: (d.memory_bytes > 0).then_some(d.memory_bytes),
                cores: (d.cores > 0).then(|| u8::try_from(d.cores.min(100)).unwrap_or(100)),
            });
        }
        let allocation = Allocation {
            name: name.to_owned(),
            grants,
        };
        let spec = builder::build(&allocation, &self.inventory, &self.layout)
            .map_err(|e| e.to_string())?;
        store::prepare_state(&allocation, &self.layout, &spec).map_err(|e| e.to_string())?;
        let owner_path = self
            .layout
            .allocation_dir(name)
            .join(crate::monitor::OWNER_FILE);
        let owner_json = serde_json::to_string(owner).map_err(|e| e.to_string())?;
        std::fs::write(&owner_path, owner_json)
            .map_err(|e| format!("{}: {e}", owner_path.display()))?;
        self.store.write(&spec).map_err(|e| e.to_string())?;
        Ok(spec.devices[0].container_edits.clone())
    }

    /// Removes allocation `name`'s spec and state (either may be gone already).
    pub fn remove(&self, name: &str) -> Result<(), String> {
        self.store
            .remove(&self.layout.kind, name)
            .map_err(|e| e.to_string())?;
        store::remove_state(&self.layout, name).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The CDI device ID of allocation `name`.
    pub fn cdi_id(&self, name: &str) -> String {
        format!("{}={name}", self.layout.kind)
    }

    fn write(
        &self,
        pod: &PendingPod,
        slot: usize,
    ) -> Result<api::ContainerAllocateResponse, String> {
        let container = pod
            .containers
            .get(slot)
            .cloned()
            .unwrap_or_else(|| format!("slot{slot}"));
        let name = allocation_name(&pod.namespace, &pod.name, &container);
        let devices: Vec<DeviceQuota> = pod.allocation.containers[slot]
            .iter()
            .map(|d| DeviceQuota {
                uuid: d.uuid.clone(),
                memory_bytes: u64::from(d.mem_mib) << 20,
                cores: d.cores,
            })
            .collect();
        let owner = crate::monitor::Owner {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            container,
            devices: devices.iter().map(|d| d.uuid.clone()).collect(),
            pod_uid: pod.uid.clone(),
        };
        let edits = self.prepare(&name, &devices, &owner)?;
        Ok(api::ContainerAllocateResponse {
            envs: edits
                .env
                .iter()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            mounts: edits
                .mounts
                .iter()
                .map(|m| api::Mount {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.clone(),
                    read_only: m.options.iter().any(|o| o == "ro"),
                })
                .collect(),
            devices: edits
                .device_nodes
                .iter()
                .map(|n| api::DeviceSpec {
                    container_path: n.path.clone(),
                    host_path: n.host_path.clone().unwrap_or_else(|| n.path.clone()),
                    permissions: n.permissions.clone().unwrap_or_else(|| "rw".into()),
                })
                .collect(),
            annotations: Default::default(),
            cdi_devices: vec![api::CdiDevice {
                name: self.cdi_id(&name),
            }],
        })
    }
}

pub struct Plugin {
    pub devices: watch::Receiver<Vec<api::Device>>,
    pub pods: Arc<dyn PodSource>,
    pub writer: Arc<SpecWriter>,
    /// Name the CDI device in the response (runtimes with CDI use it; the
    /// classic env, mounts and devices are returned either way).
    pub cdi: bool,
    /// Container slots already allocated, per pod UID.
    pub taken: Mutex<HashMap<String, BTreeSet<usize>>>,
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<api::ListAndWatchResponse, Status>> + Send>>;

impl SpecWriter {
    /// The slots of `pod` whose allocation is already on disk for this very
    /// pod (its UID in `owner.json`): what an agent restarted between two
    /// containers of one pod must not hand out again.
    pub fn allocated_slots(&self, pod: &PendingPod) -> BTreeSet<usize> {
        pod.containers
            .iter()
            .enumerate()
            .filter(|(_, container)| {
                let dir = self.layout.allocation_dir(&allocation_name(
                    &pod.namespace,
                    &pod.name,
                    container,
                ));
                crate::monitor::read_owner(&dir)
                    .is_ok_and(|o| !o.pod_uid.is_empty() && o.pod_uid == pod.uid)
            })
            .map(|(slot, _)| slot)
            .collect()
    }
}

impl Plugin {
    async fn allocate_one(&self, count: usize) -> Result<api::ContainerAllocateResponse, Status> {
        let pods = self.pods.pending().await.map_err(Status::unavailable)?;
        let found = {
            let mut taken = self.taken.lock().expect("taken lock");
            // What this agent did before a restart is on disk.
            for pod in &pods {
                let on_disk = self.writer.allocated_slots(pod);
                taken.entry(pod.uid.clone()).or_default().extend(on_disk);
            }
            match_slot(&pods, &taken, count)
        };
        let Some((p, slot)) = found else {
            return Err(Status::failed_precondition(format!(
                "no pod in bind-phase allocating on this node asks for {count} device(s) next"
            )));
        };
        let pod = &pods[p];
        match self.writer.write(pod, slot) {
            Ok(mut response) => {
                if !self.cdi {
                    response.cdi_devices.clear();
                }
                let finished = {
                    let mut taken = self.taken.lock().expect("taken lock");
                    let done = taken.entry(pod.uid.clone()).or_default();
                    done.insert(slot);
                    pod.allocation
                        .containers
                        .iter()
                        .enumerate()
                        .all(|(s, d)| d.is_empty() || done.contains(&s))
                };
                if finished {
                    // The node agent's answer ends the bind: the node lock is free.
                    if let Err(e) = self
                        .pods
                        .set_phase(&pod.namespace, &pod.name, BindPhase::Success)
                        .await
                    {
                        tracing::warn!("marking {}/{} success: {e}", pod.namespace, pod.name);
                    }
                }
                Ok(response)
            }
            Err(e) => {
                let _ = self
                    .pods
                    .set_phase(&pod.namespace, &pod.name, BindPhase::Failed)
                    .await;
                Err(Status::internal(format!(
                    "{}/{}: {e}",
                    pod.namespace, pod.name
                )))
            }
        }
    }
}

#[tonic::async_trait]
impl DevicePlugin for Plugin {
    type ListAndWatchStream = DeviceStream;

    async fn get_device_plugin_options(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<api::DevicePluginOptions>, Status> {
        Ok(Response::new(api::DevicePluginOptions::default()))
    }

    async fn list_and_watch(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let rx = self.devices.clone();
        // The current list at once, then every change.
        let stream = futures_util::stream::unfold((rx, true), |(mut rx, first)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let devices = rx.borrow_and_update().clone();
            Some((Ok(api::ListAndWatchResponse { devices }), (rx, false)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        _: Request<api::PreferredAllocationRequest>,
    ) -> Result<Response<api::PreferredAllocationResponse>, Status> {
        Err(Status::unimplemented(
            "no preferred allocation: the scheduler decides",
        ))
    }

    async fn allocate(
        &self,
        request: Request<api::AllocateRequest>,
    ) -> Result<Response<api::AllocateResponse>, Status> {
        let mut container_responses = Vec::new();
        for c in request.into_inner().container_requests {
            container_responses.push(self.allocate_one(c.devices_ids.len()).await?);
        }
        Ok(Response::new(api::AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<api::PreStartContainerRequest>,
    ) -> Result<Response<api::PreStartContainerResponse>, Status> {
        Ok(Response::new(api::PreStartContainerResponse {}))
    }
}
