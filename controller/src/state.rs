//! The scheduler's view of the cluster, rebuilt from the API objects alone:
//! - node inventory from each node's register annotation, cordons, and the
//!   handshake (a node agent that went away takes its devices out);
//! - usage from the allocation annotations of the pods that still hold devices.
//!
//! Nothing else is kept, so a restarted controller sees exactly what the
//! previous one saw and cannot allocate a device twice.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use hami_api::{keys, node_register, Handshake, PodAllocation};
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};

use crate::schedule::device::{Device, Node};

/// A `Requesting_` handshake older than this means the node agent is gone.
pub const HANDSHAKE_TIMEOUT_SECONDS: i64 = 60;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    pub nodes: BTreeMap<String, Node>,
    /// Every device grant counted, per container, for the metrics.
    pub grants: Vec<ContainerGrant>,
    /// What could not be read, for the log: `(object, problem)`.
    pub warnings: Vec<(String, String)>,
}

/// One device granted to one container of a live pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerGrant {
    pub namespace: String,
    pub pod: String,
    /// The container's slot in the allocation (init containers first).
    pub container: usize,
    pub node: String,
    pub uuid: String,
    pub memory_mib: u64,
    pub cores: u32,
}

fn annotation<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Whether a pod still holds the devices recorded in its annotations.
fn holds_devices(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded") | Some("Failed"))
}

impl ClusterState {
    /// Rebuilds the state from the nodes and pods a reflector holds; `now`
    /// is the scheduler's local time, as the handshake stamps are.
    /// Takes the objects as owned or shared (`Arc`, as a reflector store
    /// holds them), so a rebuild never copies the cluster.
    pub fn rebuild<N: Borrow<KubeNode>, P: Borrow<Pod>>(
        nodes: &[N],
        pods: &[P],
        now: NaiveDateTime,
    ) -> Self {
        let mut state = Self::default();
        for n in nodes.iter().map(Borrow::borrow) {
            let Some(name) = n.metadata.name.clone() else {
                continue;
            };
            let Some(register) = annotation(&n.metadata, keys::NODE_NVIDIA_REGISTER) else {
                continue;
            };
            let infos = match node_register::decode(register) {
                Ok(i) => i,
                Err(e) => {
                    state.warnings.push((format!("node/{name}"), e.to_string()));
                    continue;
                }
            };
            let cordoned: Vec<&str> = annotation(&n.metadata, keys::DEVICE_CORDON)
                .map(|v| v.split(',').map(str::trim).collect())
                .unwrap_or_default();
            let agent_alive = match annotation(&n.metadata, keys::NODE_NVIDIA_HANDSHAKE) {
                // No handshake yet: the register annotation alone vouches for the node.
                None => true,
                Some(h) => match Handshake::decode(h) {
                    Ok(Handshake::Reported(_)) => true,
                    Ok(Handshake::Requesting(at)) => {
                        (now - at).num_seconds() <= HANDSHAKE_TIMEOUT_SECONDS
                    }
                    Ok(Handshake::Deleted(_)) => false,
                    Err(e) => {
                        state.warnings.push((format!("node/{name}"), e.to_string()));
                        false
                    }
                },
            };
            let devices = infos
                .iter()
                .map(|info| {
                    let mut d = Device::from_register(info);
                    d.cordoned = cordoned.contains(&d.uuid.as_str());
                    d.healthy &= agent_alive;
                    d
                })
                .collect();
            state.nodes.insert(name.clone(), Node { name, devices });
        }
        for p in pods.iter().map(Borrow::borrow).filter(|p| holds_devices(p)) {
            state.charge(p);
        }
        state
    }

    /// Adds the devices `pod`'s annotations grant to its node's usage.
    fn charge(&mut self, pod: &Pod) {
        let meta = &pod.metadata;
        let id = format!(
            "pod/{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        );
        let Some(node_name) = annotation(meta, keys::VGPU_NODE)
            .map(str::to_owned)
            .or_else(|| pod.spec.as_ref().and_then(|s| s.node_name.clone()))
        else {
            return;
        };
        let Some(value) = annotation(meta, keys::VGPU_DEVICES_ALLOCATED)
            .or_else(|| annotation(meta, keys::VGPU_DEVICES_TO_ALLOCATE))
        else {
            return;
        };
        let allocation = match PodAllocation::decode(value) {
            Ok(a) => a,
            Err(e) => {
                self.warnings.push((id, e.to_string()));
                return;
            }
        };
        let Some(node) = self.nodes.get_mut(&node_name) else {
            return;
        };
        // Init containers run before the app containers, one at a time: while
        // the pod is still pending they may run, so their devices are counted
        // too; after that only the app containers' stay.
        let init = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .map_or(0, Vec::len);
        let pending = pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running");
        for (slot, devices) in allocation.containers.iter().enumerate() {
            if slot < init && !pending {
                continue;
            }
            for d in devices {
                match node.devices.iter_mut().find(|x| x.uuid == d.uuid) {
                    Some(dev) => {
                        dev.grant(u64::from(d.mem_mib), d.cores);
                        self.grants.push(ContainerGrant {
                            namespace: meta.namespace.clone().unwrap_or_default(),
                            pod: meta.name.clone().unwrap_or_default(),
                            container: slot,
                            node: node_name.clone(),
                            uuid: d.uuid.clone(),
                            memory_mib: u64::from(d.mem_mib),
                            cores: d.cores,
                        });
                    }
                    None => self.warnings.push((
                        id.clone(),
                        format!("device {} is not registered on node {node_name}", d.uuid),
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const REGISTER: &str = r#"[{"id":"GPU-a","count":10,"devmem":81920,"devcore":100,"type":"NVIDIA-A100","health":true},{"id":"GPU-b","index":1,"count":10,"devmem":81920,"devcore":100,"type":"NVIDIA-A100","health":true}]"#;

    fn now() -> NaiveDateTime {
        chrono::NaiveDate::from_ymd_opt(2026, 11, 23)
            .unwrap()
            .and_hms_opt(5, 0, 0)
            .unwrap()
    }

    fn node(name: &str, extra: serde_json::Value) -> KubeNode {
        let mut ann = json!({"hami.io/node-nvidia-register": REGISTER});
        for (k, v) in extra.as_object().unwrap() {
            ann[k] = v.clone();
        }
        serde_json::from_value(json!({"metadata": {"name": name, "annotations": ann}})).unwrap()
    }

    fn pod(name: &str, alloc: &str, phase: &str, init: usize) -> Pod {
        let init: Vec<_> = (0..init)
            .map(|i| json!({"name": format!("i{i}")}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "annotations": {
                "hami.io/vgpu-node": "n1", "hami.io/vgpu-devices-allocated": alloc}},
            "spec": {"containers": [{"name": "c"}], "initContainers": init},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    #[test]
    fn usage_is_rebuilt_from_live_pods_only() {
        let nodes = [node("n1", json!({}))];
        let pods = [
            pod("a", "GPU-a,NVIDIA-A100,3000,30:;", "Running", 0),
            pod(
                "b",
                "GPU-a,NVIDIA-A100,1000,10:GPU-b,NVIDIA-A100,500,0:;",
                "Running",
                0,
            ),
            pod("done", "GPU-b,NVIDIA-A100,9000,50:;", "Succeeded", 0),
        ];
        let s = ClusterState::rebuild(&nodes, &pods, now());
        let d = &s.nodes["n1"].devices;
        assert_eq!(
            (d[0].used_memory_mib, d[0].used_cores, d[0].tasks),
            (4000, 40, 2)
        );
        assert_eq!((d[1].used_memory_mib, d[1].tasks), (500, 1));
        // A restart sees the same objects and rebuilds the same state.
        assert_eq!(ClusterState::rebuild(&nodes, &pods, now()), s);
    }

    #[test]
    fn init_slots_count_only_while_the_pod_is_pending() {
        let nodes = [node("n1", json!({}))];
        let alloc = "GPU-b,NVIDIA-A100,8000,0:;GPU-a,NVIDIA-A100,1000,0:;";
        let pending = ClusterState::rebuild(&nodes, &[pod("p", alloc, "Pending", 1)], now());
        assert_eq!(pending.nodes["n1"].devices[1].used_memory_mib, 8000);
        let running = ClusterState::rebuild(&nodes, &[pod("p", alloc, "Running", 1)], now());
        assert_eq!(running.nodes["n1"].devices[1].used_memory_mib, 0);
        assert_eq!(running.nodes["n1"].devices[0].used_memory_mib, 1000);
    }

    #[test]
    fn cordons_and_handshakes_take_devices_out() {
        let nodes = [
            node("n1", json!({"hami.io/device-cordon": "GPU-b"})),
            node(
                "gone",
                json!({"hami.io/node-handshake": "Deleted_2026-11-23 04:00:00"}),
            ),
            node(
                "stale",
                json!({"hami.io/node-handshake": "Requesting_2026-11-23 04:58:00"}),
            ),
            node(
                "fresh",
                json!({"hami.io/node-handshake": "Requesting_2026-11-23 04:59:30"}),
            ),
            node("garbled", json!({"hami.io/node-handshake": "whenever"})),
        ];
        let s = ClusterState::rebuild(&nodes, &[] as &[Pod], now());
        assert!(!s.nodes["n1"].devices[0].cordoned && s.nodes["n1"].devices[1].cordoned);
        for (n, healthy) in [
            ("gone", false),
            ("stale", false),
            ("fresh", true),
            ("garbled", false),
        ] {
            assert_eq!(s.nodes[n].devices[0].healthy, healthy, "{n}");
        }
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    }

    #[test]
    fn unreadable_annotations_are_warnings_not_usage() {
        let mut bad_node = node("bad", json!({}));
        bad_node
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("hami.io/node-nvidia-register".into(), "[{".into());
        let pods = [
            pod("x", "not an allocation", "Running", 0),
            pod("y", "GPU-zz,NVIDIA-A100,1,0:;", "Running", 0),
        ];
        let s = ClusterState::rebuild(&[node("n1", json!({})), bad_node], &pods, now());
        assert!(!s.nodes.contains_key("bad"));
        assert_eq!(s.warnings.len(), 3, "{:?}", s.warnings);
        assert!(s.nodes["n1"].devices.iter().all(|d| d.tasks == 0));
    }
}
