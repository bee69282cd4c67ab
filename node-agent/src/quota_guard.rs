//! Failing closed on the device-plugin path: a pod that runs although
//! kubelet never called Allocate for it is stopped.
//!
//! Allocate is where a container gets hami-core and its limits. kubelet
//! skips it when the resource is missing from the node's capacity (kubelet
//! drops extended resources it does not know before admitting a pod, as the
//! scheduler extender manages them), for instance while the device plugin
//! is down: such a pod starts with no quota, and an image that sets
//! `NVIDIA_VISIBLE_DEVICES=all` sees every GPU whole. The scheduler decided
//! devices for it and its bind phase is still `allocating`, since only this
//! agent's Allocate moves it on; a started container in that state ran
//! without its quota, and the pod is deleted.

use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;

use crate::device_plugin::PendingPod;
use crate::pod_source::pending_pod;

/// Why `pod` runs without the quota its decision sets, or `None` when it
/// does not: no decision, Allocate answered (phase no longer `allocating`),
/// or no container has started yet. `allocated` says whether this agent
/// holds an allocation for the pod on disk (an Allocate whose phase update
/// was lost).
pub fn escaped(pod: &Pod, allocated: impl Fn(&PendingPod) -> bool) -> Option<String> {
    let pending = pending_pod(pod)?;
    let status = pod.status.as_ref()?;
    let started: Vec<&str> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter(|c| {
            c.state
                .as_ref()
                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                || c.last_state
                    .as_ref()
                    .is_some_and(|s| s.terminated.is_some())
        })
        .map(|c| c.name.as_str())
        .collect();
    if started.is_empty() || allocated(&pending) {
        return None;
    }
    Some(format!(
        "container {} started without its device quota: kubelet never called Allocate for \
         this pod (bind-phase is still allocating); deleted so that it does not run unlimited",
        started.join(", ")
    ))
}

/// Stops a pod found by [`escaped`].
pub trait PodStopper: Send + Sync {
    fn stop(&self, pod: &Pod, why: &str) -> BoxFuture<'static, Result<(), String>>;
}

/// Deletes every pod of `pods` that [`escaped`]; returns `namespace/name`
/// of each one deleted.
pub async fn enforce(
    pods: &[Pod],
    allocated: impl Fn(&PendingPod) -> bool,
    stopper: &dyn PodStopper,
) -> Vec<String> {
    let mut stopped = Vec::new();
    for pod in pods {
        let Some(why) = escaped(pod, &allocated) else {
            continue;
        };
        let name = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        match stopper.stop(pod, &why).await {
            Ok(()) => {
                tracing::warn!(pod = %name, "{why}");
                stopped.push(name);
            }
            Err(e) => tracing::warn!(pod = %name, "{why}, but deleting it failed: {e}"),
        }
    }
    stopped
}

/// Deletes through the API server, with a Warning event that says why.
pub struct KubeStopper(pub kube::Client);

impl PodStopper for KubeStopper {
    fn stop(&self, pod: &Pod, why: &str) -> BoxFuture<'static, Result<(), String>> {
        let client = self.0.clone();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let why = why.to_owned();
        Box::pin(async move {
            let events: kube::Api<k8s_openapi::api::core::v1::Event> =
                kube::Api::namespaced(client.clone(), &namespace);
            let now = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let event = serde_json::json!({
                "metadata": {"generateName": format!("{name}."), "namespace": namespace},
                "involvedObject": {"kind": "Pod", "namespace": namespace, "name": name, "uid": uid},
                "type": "Warning",
                "reason": "QuotaNotApplied",
                "message": why,
                "source": {"component": "hami-node"},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            });
            match serde_json::from_value(event) {
                Ok(event) => {
                    if let Err(e) = events.create(&Default::default(), &event).await {
                        tracing::debug!("recording QuotaNotApplied: {e}");
                    }
                }
                Err(e) => tracing::debug!("building QuotaNotApplied: {e}"),
            }
            let pods: kube::Api<Pod> = kube::Api::namespaced(client, &namespace);
            // Only the pod that escaped: a new one under the same name is not it.
            let params = kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            pods.delete(&name, &params)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;

    fn pod(phase: &str, state: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "team", "uid": "u1", "annotations": {
                "hami.io/bind-phase": phase,
                "hami.io/vgpu-devices-to-allocate": "GPU-0,NVIDIA,3000,30:;"}},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "c", "ready": true, "restartCount": 0, "image": "i", "imageID": "",
                 "state": state}]}
        }))
        .unwrap()
    }

    const NOTHING_ON_DISK: fn(&PendingPod) -> bool = |_| false;

    #[test]
    fn a_started_container_still_allocating_escaped() {
        let why = escaped(&pod("allocating", json!({"running": {}})), NOTHING_ON_DISK).unwrap();
        assert!(why.contains("container c started"), "{why}");
        let done = pod("allocating", json!({"terminated": {"exitCode": 0}}));
        assert!(escaped(&done, NOTHING_ON_DISK).is_some(), "ran and exited");
    }

    #[test]
    fn allocated_waiting_or_undecided_pods_are_left_alone() {
        assert!(escaped(&pod("success", json!({"running": {}})), NOTHING_ON_DISK).is_none());
        let waiting = pod(
            "allocating",
            json!({"waiting": {"reason": "ContainerCreating"}}),
        );
        assert!(
            escaped(&waiting, NOTHING_ON_DISK).is_none(),
            "not started yet"
        );
        // Allocate answered but the phase update was lost: its allocation is on disk.
        assert!(escaped(&pod("allocating", json!({"running": {}})), |_| true).is_none());
        let mut plain = pod("allocating", json!({"running": {}}));
        plain.metadata.annotations = None;
        assert!(
            escaped(&plain, NOTHING_ON_DISK).is_none(),
            "no decision, no quota"
        );
    }

    struct Recorder(Mutex<Vec<String>>);

    impl PodStopper for Recorder {
        fn stop(&self, pod: &Pod, why: &str) -> BoxFuture<'static, Result<(), String>> {
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {why}", pod.metadata.name.as_deref().unwrap()));
            Box::pin(async { Ok(()) })
        }
    }

    #[test]
    fn enforce_stops_exactly_the_escaped_pods() {
        let recorder = Recorder(Mutex::new(Vec::new()));
        let pods = [
            pod("allocating", json!({"running": {}})),
            pod("success", json!({"running": {}})),
        ];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let stopped = runtime.block_on(enforce(&pods, NOTHING_ON_DISK, &recorder));
        assert_eq!(stopped, ["team/p"]);
        let calls = recorder.0.lock().unwrap();
        assert_eq!(calls.len(), 1);
        assert!(calls[0].contains("never called Allocate"), "{}", calls[0]);
    }
}
