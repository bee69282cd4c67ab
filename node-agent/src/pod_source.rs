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
        Box::pin(async move {
            let list = pods
                .list(&ListParams::default().fields(&selector))
                .await
                .map_err(|e| format!("listing this node's pods: {e}"))?;
            Ok(list.items.iter().filter_map(pending_pod).collect())
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
