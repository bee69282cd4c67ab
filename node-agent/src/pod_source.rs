//! The pods Allocate looks among, from the API server: this node's pods in
//! `bind-phase: allocating`, with the scheduler's decision; and the answer
//! written back as `bind-phase`.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use hami_api::{keys, BindPhase, PodAllocation};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::Api;

use crate::device_plugin::{PendingPod, PodSource};

pub struct KubePods {
    pub pods: Api<Pod>,
    pub client: kube::Client,
    pub node: String,
    /// What a pod must show before its decision is believed.
    pub trust: Trust,
    /// The controller's decision key, a mounted Secret: read on every
    /// Allocate, so a key that appears (or rotates) after start is used, and
    /// a configured key that cannot be read fails Allocate instead of
    /// trusting unsealed decisions.
    pub decision_key_file: Option<std::path::PathBuf>,
}

/// Annotations are written through the API server, where a pod author can
/// write them too (a hand-set `spec.nodeName`, an allocation, `bind-time: 0`
/// to jump the queue). A pending pod is answered only when it is one this
/// scheduler placed and its decision is what it asks for.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The resource this plugin serves (`nvidia.com/gpu`): each container's
    /// slot must hold exactly as many devices as the container requests.
    pub resource: String,
    /// The scheduler names whose pods the controller places.
    pub scheduler_names: Vec<String>,
    /// The controller's decision key; when set, only sealed decisions.
    pub decision_key: Option<hami_api::seal::DecisionKey>,
}

/// Why a pod that looks pending is not answered, or `Ok`.
pub fn check_trusted(pod: &Pod, allocation: &PodAllocation, trust: &Trust) -> Result<(), String> {
    let spec = pod.spec.as_ref().ok_or("no spec")?;
    let scheduler = spec
        .scheduler_name
        .as_deref()
        .unwrap_or("default-scheduler");
    if !trust.scheduler_names.iter().any(|n| n == scheduler) {
        return Err(format!(
            "schedulerName is {scheduler:?}, not {}: this scheduler did not place it",
            trust.scheduler_names.join(" or ")
        ));
    }
    let containers: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .collect();
    if allocation.containers.len() != containers.len() {
        return Err(format!(
            "the allocation has {} container slots, the pod {} containers",
            allocation.containers.len(),
            containers.len()
        ));
    }
    for (c, slot) in containers.iter().zip(&allocation.containers) {
        let asked = c
            .resources
            .as_ref()
            .and_then(|r| {
                r.limits
                    .as_ref()
                    .and_then(|l| l.get(&trust.resource))
                    .or_else(|| r.requests.as_ref().and_then(|l| l.get(&trust.resource)))
            })
            .map_or(Ok(0), |q| q.0.trim().parse::<usize>())
            .map_err(|_| {
                format!(
                    "container {}: {} is not a device count",
                    c.name, trust.resource
                )
            })?;
        if asked != slot.len() {
            return Err(format!(
                "container {} asks for {asked} {} but its slot holds {} devices",
                c.name,
                trust.resource,
                slot.len()
            ));
        }
    }
    if let Some(key) = &trust.decision_key {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let none = BTreeMap::new();
        key.check_pod(uid, pod.metadata.annotations.as_ref().unwrap_or(&none))?;
    }
    Ok(())
}

/// A pod of this node waiting for its devices, if this scheduler placed it
/// (see [`Trust`]); a pod that fails the checks is logged and skipped.
pub fn trusted_pending_pod(pod: &Pod, trust: &Trust) -> Option<PendingPod> {
    let pending = pending_pod(pod)?;
    match check_trusted(pod, &pending.allocation, trust) {
        Ok(()) => Some(pending),
        Err(why) => {
            tracing::warn!(
                pod = %pending.name,
                namespace = %pending.namespace,
                "not answering Allocate for this pod's decision: {why}"
            );
            None
        }
    }
}

/// A pod of this node waiting for its devices, or `None`.
pub fn pending_pod(pod: &Pod) -> Option<PendingPod> {
    let ann = pod.metadata.annotations.as_ref()?;
    if ann.get(keys::BIND_PHASE).map(String::as_str) != Some(BindPhase::Allocating.as_str()) {
        return None;
    }
    let decision = ann
        .get(keys::VGPU_DEVICES_TO_ALLOCATE)
        .or_else(|| ann.get(keys::VGPU_DEVICES_ALLOCATED))?;
    let allocation = PodAllocation::decode(decision).ok()?;
    let spec = pod.spec.as_ref()?;
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| c.name.clone())
        .collect();
    Some(PendingPod {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        bind_time: ann
            .get(keys::BIND_TIME)
            .and_then(|t| t.parse().ok())
            .unwrap_or(i64::MAX),
        allocation,
        containers,
    })
}

impl PodSource for KubePods {
    fn pending(&self) -> BoxFuture<'static, Result<Vec<PendingPod>, String>> {
        let pods = self.pods.clone();
        let selector = format!("spec.nodeName={}", self.node);
        let mut trust = self.trust.clone();
        let key_file = self.decision_key_file.clone();
        Box::pin(async move {
            if let Some(path) = key_file {
                let key = hami_api::seal::DecisionKey::from_file(&path)
                    .map_err(|e| format!("the controller's decision key is not available: {e}"))?;
                trust.decision_key = Some(key);
            }
            let list = pods
                .list(&ListParams::default().fields(&selector))
                .await
                .map_err(|e| format!("listing this node's pods: {e}"))?;
            Ok(list
                .items
                .iter()
                .filter_map(|p| trusted_pending_pod(p, &trust))
                .collect())
        })
    }

    fn set_phase(
        &self,
        namespace: &str,
        name: &str,
        phase: BindPhase,
    ) -> BoxFuture<'static, Result<(), String>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let name = name.to_owned();
        let mut annotations = BTreeMap::new();
        annotations.insert(keys::BIND_PHASE.to_owned(), phase.as_str().to_owned());
        let body = serde_json::json!({"metadata": {"annotations": annotations}});
        Box::pin(async move {
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&body))
                .await
                .map(|_| ())
                .map_err(|e| format!("patching pod {name}: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ann: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "annotations": ann},
            "spec": {"initContainers": [{"name": "init"}], "containers": [{"name": "main"}]}
        }))
        .unwrap()
    }

    fn trust(key: Option<&hami_api::seal::DecisionKey>) -> Trust {
        Trust {
            resource: "nvidia.com/gpu".into(),
            scheduler_names: vec!["hami-scheduler".into()],
            decision_key: key.cloned(),
        }
    }

    fn scheduled(ann: serde_json::Value, scheduler: &str, gpus: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "annotations": ann},
            "spec": {"schedulerName": scheduler, "nodeName": "n1",
                     "containers": [{"name": "main", "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}
        }))
        .unwrap()
    }

    /// The attack: a pod with a hand-set nodeName and a decision of its own
    /// (`bind-time: 0` to be matched first) takes a real pod's Allocate.
    #[test]
    fn forged_decisions_are_not_answered() {
        let decision = json!({
            "hami.io/bind-phase": "allocating", "hami.io/bind-time": "0",
            "hami.io/vgpu-node": "n1",
            "hami.io/vgpu-devices-to-allocate": "GPU-a,NVIDIA-T4,80000,100:;"});
        // Another scheduler (or none: default-scheduler) placed it.
        assert!(trusted_pending_pod(
            &scheduled(decision.clone(), "default-scheduler", "1"),
            &trust(None)
        )
        .is_none());
        // It asks for no device, or for two, but the slot holds one.
        assert!(trusted_pending_pod(
            &scheduled(decision.clone(), "hami-scheduler", "0"),
            &trust(None)
        )
        .is_none());
        assert!(trusted_pending_pod(
            &scheduled(decision.clone(), "hami-scheduler", "2"),
            &trust(None)
        )
        .is_none());
        assert!(trusted_pending_pod(
            &scheduled(decision.clone(), "hami-scheduler", "1"),
            &trust(None)
        )
        .is_some());
        // With the controller's key, the decision must be sealed for this pod.
        let key = hami_api::seal::DecisionKey::new(&[5; 32]);
        let pod = scheduled(decision.clone(), "hami-scheduler", "1");
        let err = check_trusted(
            &pod,
            &pending_pod(&pod).unwrap().allocation,
            &trust(Some(&key)),
        )
        .unwrap_err();
        assert!(err.contains("decision-seal"), "{err}");
        let mut sealed = decision.clone();
        let ann: BTreeMap<String, String> = serde_json::from_value(decision).unwrap();
        sealed["hami.io/decision-seal"] = json!(key.seal_annotations("u", "n1", &ann));
        let pod = scheduled(sealed, "hami-scheduler", "1");
        assert!(trusted_pending_pod(&pod, &trust(Some(&key))).is_some());
    }

    #[test]
    fn only_allocating_pods_with_a_decision_count() {
        let p = pending_pod(&pod(json!({
            "hami.io/bind-phase": "allocating", "hami.io/bind-time": "1795413601",
            "hami.io/vgpu-devices-to-allocate": ";GPU-a,NVIDIA-T4,3000,30:;"})))
        .unwrap();
        assert_eq!(p.bind_time, 1795413601);
        assert_eq!(p.containers, ["init", "main"]);
        assert_eq!(p.allocation.containers[1][0].uuid, "GPU-a");
        for ann in [
            json!({"hami.io/bind-phase": "success", "hami.io/vgpu-devices-to-allocate": "GPU-a,T,1,0:;"}),
            json!({"hami.io/bind-phase": "allocating"}),
            json!({"hami.io/bind-phase": "allocating", "hami.io/vgpu-devices-to-allocate": "garbage"}),
        ] {
            assert!(pending_pod(&pod(ann.clone())).is_none(), "{ann}");
        }
    }
}
