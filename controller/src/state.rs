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
use hami_api::{keys, node_register, DeviceInfo, Handshake, LinkScores, PodAllocation, Quantity};
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod, ResourceQuota};

use crate::admission::quota::{hard_limits, QuotaCheck, Usage};

use crate::schedule::device::{Device, Node, Topology};
use crate::schedule::pod::NEURON_CORES_PER_DEVICE;
use crate::schedule::vendor::{Family, VendorProfile};

/// A `Requesting_` handshake older than this means the node agent is gone.
pub const HANDSHAKE_TIMEOUT_SECONDS: i64 = 60;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    pub nodes: BTreeMap<String, Node>,
    /// Every device grant counted, per container, for the metrics.
    pub grants: Vec<ContainerGrant>,
    /// ResourceQuota `spec.hard` `limits.*` entries per namespace (the
    /// smallest where several quotas name a key).
    pub quotas: BTreeMap<String, BTreeMap<String, u64>>,
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
    /// The family's place in the profiles the state was rebuilt with.
    pub vendor: u16,
}

fn annotation<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn pod_id(pod: &Pod) -> String {
    format!(
        "pod/{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// `Ok` for a pod whose decision this scheduler sealed; `Err(None)` for a
/// pod with no decision at all, `Err(Some(why))` for a forged or edited one.
fn sealed(key: &hami_api::seal::DecisionKey, pod: &Pod) -> Result<(), Option<String>> {
    let Some(annotations) = pod.metadata.annotations.as_ref() else {
        return Err(None);
    };
    if !annotations.keys().any(|k| keys::is_sealed_decision_key(k)) {
        return Err(None);
    }
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    key.check_pod(uid, annotations)
        .map_err(|e| Some(format!("not counted as usage: {e}")))
}

/// Whether a pod still holds the devices recorded in its annotations.
fn holds_devices(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded") | Some("Failed"))
}

/// Whether the family's node agent still answers (see [`Handshake`]).
fn agent_alive(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
    now: NaiveDateTime,
    warn: &mut dyn FnMut(String),
) -> bool {
    if key.is_empty() {
        return true;
    }
    match annotation(meta, key) {
        // No handshake yet: the register annotation alone vouches for the node.
        None => true,
        Some(h) => match Handshake::decode(h) {
            Ok(Handshake::Reported(_)) => true,
            Ok(Handshake::Requesting(at)) => (now - at).num_seconds() <= HANDSHAKE_TIMEOUT_SECONDS,
            Ok(Handshake::Deleted(_)) => false,
            Err(e) => {
                warn(e.to_string());
                false
            }
        },
    }
}

/// A string or number from a device's `custominfo` (HAMi's vendor extras).
fn custom_info(info: &DeviceInfo, key: &str) -> Option<String> {
    match info.extra.get("custominfo")?.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// AWS Neuron devices, from the node's capacity as the Neuron device plugin
/// advertises it (HAMi reads them the same way; there is no register).
fn neuron_devices(node: &KubeNode, name: &str, profile: &VendorProfile) -> Vec<Device> {
    let capacity = |resource: &Option<String>| -> i64 {
        resource
            .as_ref()
            .and_then(|r| node.status.as_ref()?.capacity.as_ref()?.get(r))
            .and_then(|q| Quantity::parse(&q.0).ok()?.value_ceil().ok())
            .unwrap_or(0)
    };
    let devices = capacity(&Some(profile.resources.resource_count_name.clone()));
    if devices <= 0 {
        return Vec::new();
    }
    let cores = capacity(&profile.resources.resource_core_name);
    let per_device = u32::try_from(cores / devices)
        .ok()
        .filter(|c| *c > 0)
        .unwrap_or(NEURON_CORES_PER_DEVICE);
    (0..u32::try_from(devices.min(64)).unwrap_or(0))
        .map(|i| Device {
            cores: per_device,
            split: per_device,
            memory_mib: 0,
            ..Device::new(format!("{name}-AWSNeuron-{i}"), i, "AWSNeuron", 0)
        })
        .collect()
}

impl ClusterState {
    /// Rebuilds the state for HAMi's default families (NVIDIA first).
    pub fn rebuild<N: Borrow<KubeNode>, P: Borrow<Pod>>(
        nodes: &[N],
        pods: &[P],
        now: NaiveDateTime,
    ) -> Self {
        Self::rebuild_with(&VendorProfile::defaults(), nodes, pods, now)
    }

    /// Rebuilds the state from the nodes and pods a reflector holds; `now`
    /// is the scheduler's local time, as the handshake stamps are. A device's
    /// `vendor` is its family's place in `profiles`.
    /// Takes the objects as owned or shared (`Arc`, as a reflector store
    /// holds them), so a rebuild never copies the cluster.
    pub fn rebuild_with<N: Borrow<KubeNode>, P: Borrow<Pod>>(
        profiles: &[VendorProfile],
        nodes: &[N],
        pods: &[P],
        now: NaiveDateTime,
    ) -> Self {
        Self::rebuild_sealed(profiles, nodes, pods, now, None)
    }

    /// [`ClusterState::rebuild_with`] counting, when `key` is given, only
    /// the allocations that carry this scheduler's seal: a pod that wrote a
    /// decision for itself (a hand-set `spec.nodeName` and allocation) is a
    /// warning, not usage that would crowd out real pods.
    pub fn rebuild_sealed<N: Borrow<KubeNode>, P: Borrow<Pod>>(
        profiles: &[VendorProfile],
        nodes: &[N],
        pods: &[P],
        now: NaiveDateTime,
        key: Option<&hami_api::seal::DecisionKey>,
    ) -> Self {
        let mut state = Self::default();
        for n in nodes.iter().map(Borrow::borrow) {
            let Some(name) = n.metadata.name.clone() else {
                continue;
            };
            if let Some(node) = state.read_node(profiles, n, &name, now) {
                state.nodes.insert(name, node);
            }
        }
        for p in pods.iter().map(Borrow::borrow).filter(|p| holds_devices(p)) {
            if let Some(key) = key {
                if let Err(why) = sealed(key, p) {
                    if let Some(why) = why {
                        state.warnings.push((pod_id(p), why));
                    }
                    continue;
                }
            }
            for (vi, profile) in profiles.iter().enumerate() {
                state.charge(p, profile, u16::try_from(vi).unwrap_or(u16::MAX));
            }
        }
        state
    }

    /// Adds the namespaces' ResourceQuotas.
    pub fn with_quotas<Q: Borrow<ResourceQuota>>(mut self, quotas: &[Q]) -> Self {
        let mut by_namespace: BTreeMap<String, Vec<&ResourceQuota>> = BTreeMap::new();
        for q in quotas.iter().map(Borrow::borrow) {
            if let Some(ns) = &q.metadata.namespace {
                by_namespace.entry(ns.clone()).or_default().push(q);
            }
        }
        self.quotas = by_namespace
            .into_iter()
            .map(|(ns, qs)| (ns, hard_limits(&qs)))
            .filter(|(_, hard)| !hard.is_empty())
            .collect();
        self
    }

    /// The namespace's quota room, `None` where no quota applies. What its
    /// live pods hold comes from their grants; while a pod is pending its
    /// init containers' grants count too (they may be running).
    pub fn quota_check(&self, namespace: &str, profiles: &[VendorProfile]) -> Option<QuotaCheck> {
        let hard = self.quotas.get(namespace)?;
        let mut used: BTreeMap<String, Usage> = BTreeMap::new();
        for g in self.grants.iter().filter(|g| g.namespace == namespace) {
            let Some(profile) = profiles.get(usize::from(g.vendor)) else {
                continue;
            };
            let u = used.entry(profile.name().to_owned()).or_default();
            u.memory_mib = u.memory_mib.saturating_add(g.memory_mib);
            u.cores = u.cores.saturating_add(u64::from(g.cores));
        }
        Some(QuotaCheck {
            namespace: namespace.to_owned(),
            hard: hard.clone(),
            used,
        })
    }

    /// The largest registered device memory per family, for the webhook's
    /// "larger than any device" check.
    pub fn largest_memory_mib(&self, profiles: &[VendorProfile]) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for d in self.nodes.values().flat_map(|n| &n.devices) {
            if let Some(p) = profiles.get(usize::from(d.vendor)) {
                if p.manages_memory() && d.memory_mib > 0 {
                    let m = out.entry(p.name().to_owned()).or_default();
                    *m = (*m).max(d.memory_mib);
                }
            }
        }
        out
    }

    /// Every family's devices on one node, with its topology; `None` for a
    /// node that registers none (or whose registers are all unreadable).
    fn read_node(
        &mut self,
        profiles: &[VendorProfile],
        n: &KubeNode,
        name: &str,
        now: NaiveDateTime,
    ) -> Option<Node> {
        let meta = &n.metadata;
        let cordoned: Vec<&str> = annotation(meta, keys::DEVICE_CORDON)
            .map(|v| v.split(',').map(str::trim).collect())
            .unwrap_or_default();
        let mut devices = Vec::new();
        let mut vastai_dies = false;
        for (vi, profile) in profiles.iter().enumerate() {
            let vendor = u16::try_from(vi).unwrap_or(u16::MAX);
            let mut found = if profile.family == Family::AwsNeuron {
                neuron_devices(n, name, profile)
            } else {
                let Some(register) = annotation(meta, &profile.keys.node_register) else {
                    continue;
                };
                let infos = match node_register::decode(register) {
                    Ok(i) => i,
                    Err(e) => {
                        self.warnings.push((format!("node/{name}"), e.to_string()));
                        continue;
                    }
                };
                if profile.family == Family::Vastai {
                    vastai_dies = infos
                        .iter()
                        .any(|i| custom_info(i, "DeviceStrategy").as_deref() == Some("die"));
                }
                infos
                    .iter()
                    .map(|info| Device {
                        group: custom_info(info, "AIC").or_else(|| custom_info(info, "NetworkID")),
                        ..Device::from_register(info)
                    })
                    .collect()
            };
            let mut warn = |e: String| self.warnings.push((format!("node/{name}"), e));
            let alive = agent_alive(meta, &profile.keys.node_handshake, now, &mut warn);
            for d in &mut found {
                d.vendor = vendor;
                d.cordoned = cordoned.contains(&d.uuid.as_str());
                d.healthy &= alive;
            }
            devices.extend(found);
        }
        if devices.is_empty() {
            return None;
        }
        let mut node = Node::new(name, devices);
        node.topology = Topology {
            links: self.links(meta, name, &node.devices),
            neuron_ring: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(keys::INSTANCE_TYPE_LABEL))
                .is_some_and(|t| t.to_ascii_lowercase().starts_with("inf")),
            vnpu_core: annotation(meta, keys::NODE_HAMI_VNPU_CORE) == Some("true"),
            vastai_dies,
        };
        Some(node)
    }

    /// The link score matrix by device position, from the node agent's
    /// annotation (empty when absent or unreadable).
    fn links(
        &mut self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        name: &str,
        devices: &[Device],
    ) -> Vec<Vec<u32>> {
        let Some(value) = annotation(meta, keys::NODE_NVIDIA_SCORE) else {
            return Vec::new();
        };
        match LinkScores::decode(value) {
            Ok(scores) if !scores.is_empty() => devices
                .iter()
                .map(|a| {
                    devices
                        .iter()
                        .map(|b| scores.score(&a.uuid, &b.uuid))
                        .collect()
                })
                .collect(),
            Ok(_) => Vec::new(),
            Err(e) => {
                self.warnings.push((format!("node/{name}"), e.to_string()));
                Vec::new()
            }
        }
    }

    /// Adds the devices `pod`'s annotations grant (in `profile`'s keys) to
    /// its node's usage.
    fn charge(&mut self, pod: &Pod, profile: &VendorProfile, vendor: u16) {
        let meta = &pod.metadata;
        let Some(value) = annotation(meta, &profile.keys.devices_allocated)
            .or_else(|| annotation(meta, &profile.keys.devices_to_allocate))
        else {
            return;
        };
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
                            vendor,
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

    /// A pod author's hand-written allocation (the scheduler never saw the
    /// pod) must not take devices from real pods once decisions are sealed.
    #[test]
    fn only_sealed_allocations_count_when_decisions_are_sealed() {
        let key = hami_api::seal::DecisionKey::new(&[3; 32]);
        let nodes = [node("n1", json!({}))];
        let mut real = pod("real", "GPU-a,NVIDIA-A100,3000,30:;", "Running", 0);
        real.metadata.uid = Some("uid-real".into());
        let ann = real.metadata.annotations.as_mut().unwrap();
        let seal = key.seal_annotations("uid-real", "n1", ann);
        ann.insert(keys::DECISION_SEAL.into(), seal.clone());
        let mut forged = pod("forged", "GPU-a,NVIDIA-A100,78000,70:;", "Running", 0);
        forged.metadata.uid = Some("uid-forged".into());
        // Even a seal copied from the real pod does not carry over.
        forged
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys::DECISION_SEAL.into(), seal);
        let plain: Pod = serde_json::from_value(json!({"metadata": {"name": "plain"}})).unwrap();
        let pods = [real, forged, plain];
        let unsealed = ClusterState::rebuild(&nodes, &pods, now());
        assert_eq!(unsealed.nodes["n1"].devices[0].used_memory_mib, 81000);
        let sealed = ClusterState::rebuild_sealed(
            &VendorProfile::defaults(),
            &nodes,
            &pods,
            now(),
            Some(&key),
        );
        let d = &sealed.nodes["n1"].devices[0];
        assert_eq!((d.used_memory_mib, d.tasks), (3000, 1));
        assert_eq!(sealed.warnings.len(), 1, "{:?}", sealed.warnings);
        assert!(sealed.warnings[0].0.ends_with("/forged"));
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

    #[test]
    fn every_family_registers_with_its_topology() {
        let va = r#"[{"id":"va-0","count":4,"devmem":16384,"devcore":100,"type":"Vastai","health":true,"custominfo":{"AIC":"card-a","DeviceStrategy":"die"}},{"id":"va-1","index":1,"count":4,"devmem":16384,"devcore":100,"type":"Vastai","health":true,"custominfo":{"AIC":"card-a","DeviceStrategy":"die"}}]"#;
        let c910 = r#"[{"id":"npu-0","count":1,"devmem":65536,"devcore":100,"type":"Ascend910C","health":true,"custominfo":{"NetworkID":7}}]"#;
        let node: KubeNode = serde_json::from_value(json!({
            "metadata": {"name": "mixed",
                "labels": {"node.kubernetes.io/instance-type": "inf2.48xlarge"},
                "annotations": {
                    "hami.io/node-va-register": va,
                    "hami.io/node-register-Ascend910C": c910,
                    "hami-vnpu-core": "true",
                    "hami.io/node-nvidia-register": REGISTER,
                    "hami.io/node-nvidia-score": r#"[{"uuid":"GPU-a","score":{"GPU-b":600}}]"#,
                    "hami.io/node-handshake-va": "Deleted_2026-11-23 04:00:00"}},
            "status": {"capacity": {"aws.amazon.com/neuron": "3", "aws.amazon.com/neuroncore": "6"}}
        }))
        .unwrap();
        let profiles = VendorProfile::defaults();
        let s = ClusterState::rebuild_with(&profiles, &[node], &[] as &[Pod], now());
        let n = &s.nodes["mixed"];
        let family = |d: &Device| profiles[usize::from(d.vendor)].name().to_owned();
        let summary: Vec<(String, String, Option<String>, bool)> = n
            .devices
            .iter()
            .map(|d| (d.uuid.clone(), family(d), d.group.clone(), d.healthy))
            .collect();
        let want = |u: &str, f: &str, g: Option<&str>, h: bool| {
            (u.to_owned(), f.to_owned(), g.map(str::to_owned), h)
        };
        assert_eq!(
            summary,
            vec![
                want("GPU-a", "nvidia", None, true),
                want("GPU-b", "nvidia", None, true),
                want("npu-0", "Ascend910C", Some("7"), true),
                want("mixed-AWSNeuron-0", "awsneuron", None, true),
                want("mixed-AWSNeuron-1", "awsneuron", None, true),
                want("mixed-AWSNeuron-2", "awsneuron", None, true),
                // The Vastai agent said goodbye: its dies are out.
                want("va-0", "vastai", Some("card-a"), false),
                want("va-1", "vastai", Some("card-a"), false),
            ]
        );
        let neuron = &n.devices[3];
        assert_eq!((neuron.cores, neuron.split, neuron.memory_mib), (2, 2, 0));
        assert!(n.topology.neuron_ring && n.topology.vnpu_core && n.topology.vastai_dies);
        assert_eq!(n.topology.links[0][1], 600);
        assert_eq!(n.topology.links[1][0], 600);
        assert_eq!(n.topology.links[0][2], 0);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn ascend_usage_comes_from_its_own_keys() {
        let c910 = r#"[{"id":"npu-0","count":4,"devmem":65536,"devcore":100,"type":"Ascend910B3","health":true}]"#;
        let node: KubeNode = serde_json::from_value(json!({"metadata": {"name": "n1",
            "annotations": {"hami.io/node-register-Ascend910B3": c910}}}))
        .unwrap();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "annotations": {
                "hami.io/vgpu-node": "n1",
                "hami.io/Ascend910B3-devices-allocated": "npu-0,Ascend910B3,16384,25:;"}},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Running"}
        }))
        .unwrap();
        let s = ClusterState::rebuild(&[node], &[pod], now());
        let d = &s.nodes["n1"].devices[0];
        assert_eq!((d.used_memory_mib, d.used_cores, d.tasks), (16384, 25, 1));
    }
}
