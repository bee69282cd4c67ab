//! The [`Cluster`] behind a real API server:
//! - kube-rs reflectors keep every Node and Pod;
//! - the state is rebuilt from them when they have changed;
//! - decisions are written with a merge patch.
//!
//! A decision written by `/filter` reaches the reflector only after a watch
//! round trip. Until it does, the controller keeps it as a pending grant on
//! top of the rebuilt state, so two pods filtered back to back cannot both
//! get the same free memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use hami_api::{keys, PodAllocation};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;

use crate::pending::Delivery;
use crate::schedule::vendor::VendorProfile;
use crate::server::Cluster;
use crate::state::{ClusterState, ContainerGrant};

/// A decision written to a pod that the reflector has not shown yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingGrant {
    pub namespace: String,
    pub name: String,
    pub node: String,
    /// The annotation the decision is in (the family's `devices-allocated`).
    pub key: String,
    pub allocation: String,
    /// When the write started: a grant whose write never shows up (the
    /// request was cut off by the deadline, or the pod is gone) is dropped
    /// after [`PENDING_TTL`] instead of holding the devices forever.
    pub since: std::time::Instant,
}

pub const PENDING_TTL: std::time::Duration = std::time::Duration::from_secs(120);

/// The merge patch that records `annotations` on a pod.
pub fn annotation_patch(annotations: &BTreeMap<String, String>) -> serde_json::Value {
    serde_json::json!({ "metadata": { "annotations": annotations } })
}

/// Merge-patches a pod's annotations (the field manager is the controller's).
pub async fn patch_annotations(
    api: &Api<Pod>,
    name: &str,
    patch: &serde_json::Value,
) -> Result<(), String> {
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
        .map_err(|e| format!("patching pod {name}: {e}"))
}

/// Applies the grants the pods in `pods` do not show yet; returns the ones
/// still pending (the others have arrived and are dropped).
pub fn overlay(
    state: &mut ClusterState,
    pods: &[Arc<Pod>],
    pending: &[PendingGrant],
    profiles: &[VendorProfile],
) -> Vec<PendingGrant> {
    let mut still = Vec::new();
    for p in pending {
        let arrived = pods.iter().any(|pod| {
            pod.metadata.namespace.as_deref() == Some(p.namespace.as_str())
                && pod.metadata.name.as_deref() == Some(p.name.as_str())
                && pod
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(&p.key))
                    .is_some_and(|v| *v == p.allocation)
        });
        if arrived || p.since.elapsed() > PENDING_TTL {
            continue;
        }
        let vendor = profiles
            .iter()
            .position(|v| v.keys.devices_allocated == p.key)
            .and_then(|i| u16::try_from(i).ok())
            .unwrap_or(0);
        if let (Some(node), Ok(alloc)) = (
            state.nodes.get_mut(&p.node),
            PodAllocation::decode(&p.allocation),
        ) {
            for (slot, devices) in alloc.containers.iter().enumerate() {
                for d in devices {
                    if let Some(dev) = node.devices.iter_mut().find(|x| x.uuid == d.uuid) {
                        dev.grant(u64::from(d.mem_mib), d.cores);
                        // Counted against the namespace's quota too.
                        state.grants.push(ContainerGrant {
                            namespace: p.namespace.clone(),
                            pod: p.name.clone(),
                            container: slot,
                            node: p.node.clone(),
                            uuid: d.uuid.clone(),
                            memory_mib: u64::from(d.mem_mib),
                            cores: d.cores,
                            vendor,
                        });
                    }
                }
            }
        }
        still.push(p.clone());
    }
    still
}

/// The handshake stamps are the scheduler's local time; the controller's
/// image runs in UTC.
fn now_utc() -> chrono::NaiveDateTime {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    chrono::DateTime::from_timestamp(since.as_secs() as i64, since.subsec_nanos())
        .unwrap_or_default()
        .naive_utc()
}

pub struct KubeCluster {
    client: Client,
    /// The families placed; must be the list the server was given.
    profiles: Vec<VendorProfile>,
    /// When set, only sealed decisions count as usage.
    decision_key: Option<hami_api::seal::DecisionKey>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    quotas: Store<k8s_openapi::api::core::v1::ResourceQuota>,
    ready: AtomicBool,
    /// Bumped by every watch event; the state is rebuilt when it moved.
    generation: Arc<AtomicU64>,
    cached: Mutex<(u64, Arc<ClusterState>)>,
    pending: Arc<Mutex<Vec<PendingGrant>>>,
}

/// Keeps `writer`'s store in step with every `K` through a watch, bumping
/// `generation` on each change so the state knows to rebuild.
fn spawn_reflector<K>(api: Api<K>, writer: reflector::store::Writer<K>, generation: Arc<AtomicU64>)
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        // Every event, deletions included: counting only applied objects
        // left a deleted pod's devices in use until some unrelated change,
        // and a pod created meanwhile did not fit (the real cluster caught it).
        .inspect(move |_| {
            generation.fetch_add(1, Ordering::Relaxed);
        })
        .applied_objects();
    let kind = K::kind(&K::DynamicType::default()).to_lowercase();
    tokio::spawn(stream.for_each(move |r| {
        let kind = kind.clone();
        async move {
            if let Err(e) = r {
                tracing::warn!("{kind} watch: {e}");
            }
        }
    }));
}

impl KubeCluster {
    /// Starts the reflectors; the returned cluster is ready once both have
    /// listed everything once.
    pub fn start(client: Client) -> Arc<Self> {
        Self::start_with(client, VendorProfile::defaults())
    }

    /// [`KubeCluster::start`] for a given list of families.
    pub fn start_with(client: Client, profiles: Vec<VendorProfile>) -> Arc<Self> {
        Self::start_sealed(client, profiles, None)
    }

    /// [`KubeCluster::start_with`], counting only sealed decisions as usage
    /// when `key` is given (see [`ClusterState::rebuild_sealed`]).
    pub fn start_sealed(
        client: Client,
        profiles: Vec<VendorProfile>,
        key: Option<hami_api::seal::DecisionKey>,
    ) -> Arc<Self> {
        let generation = Arc::new(AtomicU64::new(1));
        let (nodes, node_writer) = reflector::store();
        let (pods, pod_writer) = reflector::store();
        let (quotas, quota_writer) = reflector::store();
        spawn_reflector(
            Api::<k8s_openapi::api::core::v1::ResourceQuota>::all(client.clone()),
            quota_writer,
            generation.clone(),
        );
        spawn_reflector(
            Api::<Node>::all(client.clone()),
            node_writer,
            generation.clone(),
        );
        spawn_reflector(
            Api::<Pod>::all(client.clone()),
            pod_writer,
            generation.clone(),
        );
        let me = Arc::new(Self {
            client,
            profiles,
            decision_key: key,
            nodes,
            pods,
            quotas,
            ready: AtomicBool::new(false),
            generation,
            cached: Mutex::new((0, Arc::new(ClusterState::default()))),
            pending: Arc::new(Mutex::new(Vec::new())),
        });
        let waiting = me.clone();
        tokio::spawn(async move {
            let (n, p, q) = (
                waiting.nodes.wait_until_ready(),
                waiting.pods.wait_until_ready(),
                waiting.quotas.wait_until_ready(),
            );
            if n.await.is_ok() && p.await.is_ok() && q.await.is_ok() {
                waiting.ready.store(true, Ordering::Release);
                tracing::info!("cluster view synced");
            }
        });
        me
    }
}

impl Cluster for KubeCluster {
    fn state(&self) -> Arc<ClusterState> {
        let generation = self.generation.load(Ordering::Relaxed);
        let mut cached = self.cached.lock().expect("state cache lock");
        let mut pending = self.pending.lock().expect("pending lock");
        if cached.0 == generation && pending.is_empty() {
            return cached.1.clone();
        }
        let pods = self.pods.state();
        let mut state = ClusterState::rebuild_sealed(
            &self.profiles,
            &self.nodes.state(),
            &pods,
            now_utc(),
            self.decision_key.as_ref(),
        )
        .with_quotas(&self.quotas.state());
        *pending = overlay(&mut state, &pods, &pending, &self.profiles);
        let state = Arc::new(state);
        *cached = (generation, state.clone());
        state
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn warn_pod(&self, namespace: &str, name: &str, uid: &str, reason: &str, message: String) {
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), namespace);
        let event = warning_event(namespace, name, uid, reason, &message, now_utc().and_utc());
        tokio::spawn(async move {
            if let Err(e) = events
                .create(&kube::api::PostParams::default(), &event)
                .await
            {
                tracing::warn!("recording event: {e}");
            }
        });
    }

    fn bind(
        &self,
        args: crate::extender::ExtenderBindingArgs,
        delivery: crate::pending::Delivery,
    ) -> BoxFuture<'static, Result<(), String>> {
        let client = self.client.clone();
        Box::pin(async move {
            let locks = KubeLockStore::new(client.clone());
            let now = || now_utc().and_utc();
            bind_pod(
                &client,
                &locks,
                &args,
                delivery,
                crate::node_lock::LockPolicy::default(),
                now,
            )
            .await
        })
    }

    fn create_claim_templates(
        &self,
        namespace: &str,
        templates: Vec<serde_json::Value>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &claim_template_resource());
        Box::pin(async move {
            for t in templates {
                let object: kube::api::DynamicObject =
                    serde_json::from_value(t).map_err(|e| e.to_string())?;
                match api.create(&kube::api::PostParams::default(), &object).await {
                    Ok(_) => {}
                    // Named by content: an existing one is the same template.
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        })
    }

    fn annotate(
        &self,
        namespace: &str,
        name: &str,
        annotations: BTreeMap<String, String>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        // Every family's decision key ends the same way (NVIDIA's is
        // `hami.io/vgpu-devices-allocated`).
        let (key, allocation) = annotations
            .iter()
            .find(|(k, _)| k.ends_with("-devices-allocated"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .unwrap_or_default();
        let pending = PendingGrant {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            node: annotations
                .get(keys::VGPU_NODE)
                .cloned()
                .unwrap_or_default(),
            key,
            allocation,
            since: std::time::Instant::now(),
        };
        let name = name.to_owned();
        let patch = annotation_patch(&annotations);
        // Recorded before the write so a filter racing this one already sees
        // it; a failed write takes it back.
        self.pending
            .lock()
            .expect("pending lock")
            .push(pending.clone());
        let pending_list = self.pending.clone();
        Box::pin(async move {
            let result = patch_annotations(&api, &name, &patch).await;
            if result.is_err() {
                pending_list
                    .lock()
                    .expect("pending lock")
                    .retain(|p| *p != pending);
            }
            result
        })
    }
}

/// `resource.k8s.io/v1` ResourceClaimTemplate, which k8s-openapi's
/// Kubernetes 1.33 types do not have.
pub fn claim_template_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("resource.k8s.io", "v1", "ResourceClaimTemplate"),
        "resourceclaimtemplates",
    )
}

/// Whether the cluster can take the DRA conversion: `resource.k8s.io/v1`
/// served with ResourceClaimTemplates (Kubernetes ≥ 1.34), and the
/// `DRAConsumableCapacity` feature on. Feature gates are not in discovery,
/// so the second is asked by a server-side dry-run create of a template
/// with a capacity request: an API server without the feature drops the
/// field from what it returns. `Err` says what is missing.
pub async fn dra_support(client: &Client, namespace: &str) -> Result<(), String> {
    let resources = client
        .list_api_group_resources("resource.k8s.io/v1")
        .await
        .map_err(|e| {
            format!("resource.k8s.io/v1 is not served (DRA needs Kubernetes 1.34 or later): {e}")
        })?;
    if !resources
        .resources
        .iter()
        .any(|r| r.name == "resourceclaimtemplates")
    {
        return Err("resource.k8s.io/v1 does not serve resourceclaimtemplates".into());
    }
    let probe = crate::admission::dra::template(
        namespace,
        &crate::admission::dra::template_spec(
            &crate::schedule::request::ContainerRequest {
                count: 1,
                memory: crate::schedule::request::MemoryRequest::Mib(1),
                cores: 1,
            },
            &crate::schedule::request::Selection::default(),
        ),
    );
    let object: kube::api::DynamicObject =
        serde_json::from_value(probe).map_err(|e| e.to_string())?;
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &claim_template_resource());
    let params = kube::api::PostParams {
        dry_run: true,
        ..kube::api::PostParams::default()
    };
    let back = api
        .create(&params, &object)
        .await
        .map_err(|e| format!("dry-run create of a ResourceClaimTemplate: {e}"))?;
    let kept = back.data["spec"]["spec"]["devices"]["requests"][0]["exactly"]
        .get("capacity")
        .is_some();
    if kept {
        Ok(())
    } else {
        Err("the API server dropped the capacity request: the DRAConsumableCapacity feature gate is off".into())
    }
}

/// The node lock on the Node object itself, through the API server.
pub struct KubeLockStore {
    nodes: Api<Node>,
    client: Client,
}

impl KubeLockStore {
    pub fn new(client: Client) -> Self {
        Self {
            nodes: Api::all(client.clone()),
            client,
        }
    }
}

fn api_error(e: kube::Error) -> crate::node_lock::LockError {
    use crate::node_lock::LockError;
    match &e {
        kube::Error::Api(status) if status.code == 409 => LockError::Conflict,
        _ => LockError::Api(e.to_string()),
    }
}

impl crate::node_lock::LockStore for KubeLockStore {
    fn read(
        &self,
        node: &str,
    ) -> BoxFuture<'_, Result<crate::node_lock::LockedNode, crate::node_lock::LockError>> {
        let node = node.to_owned();
        Box::pin(async move {
            let n = self.nodes.get(&node).await.map_err(|e| match &e {
                kube::Error::Api(s) if s.code == 404 => {
                    crate::node_lock::LockError::NotFound(node.clone())
                }
                _ => api_error(e),
            })?;
            Ok(crate::node_lock::LockedNode {
                resource_version: n.metadata.resource_version.clone().unwrap_or_default(),
                lock: n
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(keys::NODE_LOCK))
                    .cloned(),
            })
        })
    }

    /// A merge patch that names the resourceVersion it read: the API server
    /// applies it only if the node is unchanged, and answers 409 otherwise.
    fn write(
        &self,
        node: &str,
        resource_version: &str,
        lock: Option<String>,
    ) -> BoxFuture<'_, Result<(), crate::node_lock::LockError>> {
        let node = node.to_owned();
        let patch = serde_json::json!({"metadata": {
            "resourceVersion": resource_version,
            "annotations": { keys::NODE_LOCK: lock }
        }});
        Box::pin(async move {
            self.nodes
                .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
                .map_err(api_error)
        })
    }

    /// The holder still needs the lock unless its pod is gone or the node
    /// agent has answered (`bind-phase` success or failed).
    fn owner_needs_lock(
        &self,
        namespace: &str,
        pod: &str,
    ) -> BoxFuture<'_, Result<bool, crate::node_lock::LockError>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = pod.to_owned();
        Box::pin(async move {
            match pods.get_opt(&pod).await.map_err(api_error)? {
                None => Ok(false),
                Some(p) => {
                    let phase = p
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(keys::BIND_PHASE))
                        .and_then(|v| v.parse::<hami_api::BindPhase>().ok());
                    Ok(!matches!(
                        phase,
                        Some(hami_api::BindPhase::Success | hami_api::BindPhase::Failed)
                    ))
                }
            }
        })
    }
}

/// The event reasons HAMi's scheduler records after a bind.
pub const BINDING_SUCCEED: &str = "BindingSucceed";
pub const BINDING_FAILED: &str = "BindingFailed";

/// A core/v1 Warning event about a pod, from the hami scheduler.
pub fn warning_event(
    namespace: &str,
    pod: &str,
    uid: &str,
    reason: &str,
    message: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> k8s_openapi::api::core::v1::Event {
    pod_event("Warning", namespace, pod, uid, reason, message, at)
}

/// A core/v1 event (`Normal` or `Warning`) about a pod, from the hami scheduler.
pub fn pod_event(
    type_: &str,
    namespace: &str,
    pod: &str,
    uid: &str,
    reason: &str,
    message: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> k8s_openapi::api::core::v1::Event {
    use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    let stamp = k8s_openapi::jiff::Timestamp::from_second(at.timestamp())
        .ok()
        .map(Time);
    Event {
        metadata: ObjectMeta {
            // Unique per occurrence, as the API server requires.
            name: Some(format!(
                "{pod}.{:x}",
                at.timestamp_nanos_opt().unwrap_or_default()
            )),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.to_owned()),
            namespace: Some(namespace.to_owned()),
            uid: Some(uid.to_owned()).filter(|u| !u.is_empty()),
            ..ObjectReference::default()
        },
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        type_: Some(type_.to_owned()),
        source: Some(EventSource {
            component: Some("hami-scheduler".into()),
            host: None,
        }),
        first_timestamp: stamp.clone(),
        last_timestamp: stamp,
        count: Some(1),
        ..Event::default()
    }
}

/// `BindingSucceed` or `BindingFailed` on the pod, best effort: a lost
/// event changes nothing.
async fn record_bind_event(
    client: &Client,
    args: &crate::extender::ExtenderBindingArgs,
    result: &Result<(), String>,
    at: chrono::DateTime<chrono::Utc>,
) {
    let (ns, pod, node) = (&args.pod_namespace, &args.pod_name, &args.node);
    let (type_, reason, message) = match result {
        Ok(()) => (
            "Normal",
            BINDING_SUCCEED,
            format!("Successfully binding node [{node}] to {ns}/{pod}"),
        ),
        Err(e) => (
            "Warning",
            BINDING_FAILED,
            format!("Failed to bind {ns}/{pod} to node [{node}]: {e}"),
        ),
    };
    let event = pod_event(type_, ns, pod, &args.pod_uid, reason, &message, at);
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    if let Err(e) = events
        .create(&kube::api::PostParams::default(), &event)
        .await
    {
        tracing::warn!("recording {reason} event: {e}");
    }
}

/// `/bind` against the API server, for a pod whose devices a device plugin
/// delivers ([`Delivery::DevicePlugin`]):
/// 1. take the node lock;
/// 2. mark the pod `bind-phase=allocating` with its `bind-time`;
/// 3. create the pod's Binding to the node.
///
/// On success the lock stays held until the node agent answers (success or
/// failed in `bind-phase`), when the next binder may take it over; on any
/// failure the pod is marked `failed` and the lock is released at once.
///
/// The annotation hook answers no Allocate, so for its pods
/// ([`Delivery::Annotation`]) no lock is taken and the phase is written
/// `success` with the Binding: a lock nobody releases would stall every
/// device pod of the node for the lock's TTL. A pod with no devices
/// ([`Delivery::Nothing`]) gets the Binding alone.
pub async fn bind_pod(
    client: &Client,
    locks: &dyn crate::node_lock::LockStore,
    args: &crate::extender::ExtenderBindingArgs,
    delivery: Delivery,
    policy: crate::node_lock::LockPolicy,
    now: impl Fn() -> chrono::DateTime<chrono::Utc>,
) -> Result<(), String> {
    let (ns, pod, node) = (&args.pod_namespace, &args.pod_name, &args.node);
    let seed = args
        .pod_uid
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let locked = delivery == Delivery::DevicePlugin;
    if locked {
        if let Err(e) = crate::node_lock::acquire(locks, node, ns, pod, policy, &now, seed).await {
            let result = Err(format!("node lock: {e}"));
            record_bind_event(client, args, &result, now()).await;
            return result;
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let phase = |p: hami_api::BindPhase| {
        let mut a = BTreeMap::new();
        a.insert(keys::BIND_PHASE.to_owned(), p.as_str().to_owned());
        a
    };
    let first_phase = match delivery {
        Delivery::DevicePlugin => Some(hami_api::BindPhase::Allocating),
        Delivery::Annotation => Some(hami_api::BindPhase::Success),
        Delivery::Nothing => None,
    };
    let result = async {
        if let Some(p) = first_phase {
            let mut annotations = phase(p);
            annotations.insert(keys::BIND_TIME.to_owned(), now().timestamp().to_string());
            patch_annotations(&pods, pod, &annotation_patch(&annotations)).await?;
        }
        let binding = serde_json::json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod, "namespace": ns, "uid": args.pod_uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}
        });
        pods.create_subresource::<serde_json::Value, serde_json::Value>(
            "binding",
            pod,
            &kube::api::PostParams::default(),
            &binding,
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("binding pod {pod} to {node}: {e}"))
    }
    .await;
    if let Err(e) = &result {
        // Best effort: the pod is told, and the node is free for the next pod.
        if first_phase.is_some() {
            let _ = patch_annotations(
                &pods,
                pod,
                &annotation_patch(&phase(hami_api::BindPhase::Failed)),
            )
            .await;
        }
        if locked {
            let _ = crate::node_lock::release(locks, node, ns, pod).await;
        }
        tracing::warn!("bind of {ns}/{pod} to {node} failed: {e}");
    }
    record_bind_event(client, args, &result, now()).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_lock::{acquire, LockPolicy, LockStore};
    use hami_kube_mock::{block_on, failure, next, respond};
    use http_body_util::BodyExt;
    use serde_json::{json, Value};

    fn profiles() -> Vec<VendorProfile> {
        VendorProfile::defaults()
    }

    const REGISTER: &str =
        r#"[{"id":"GPU-a","count":10,"devmem":8192,"devcore":100,"type":"T4","health":true}]"#;

    fn state() -> ClusterState {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1",
            "annotations": {"hami.io/node-nvidia-register": REGISTER}}}))
        .unwrap();
        ClusterState::rebuild(&[node], &[] as &[Pod], chrono::NaiveDateTime::default())
    }

    fn grant(name: &str) -> PendingGrant {
        PendingGrant {
            namespace: "default".into(),
            name: name.into(),
            node: "n1".into(),
            key: keys::VGPU_DEVICES_ALLOCATED.into(),
            allocation: "GPU-a,T4,3000,30:;".into(),
            since: std::time::Instant::now(),
        }
    }

    #[test]
    fn pending_grants_count_until_the_watch_shows_them() {
        let mut s = state();
        let still = overlay(&mut s, &[], &[grant("p1"), grant("p2")], &profiles());
        assert_eq!(still.len(), 2);
        assert_eq!(s.nodes["n1"].devices[0].used_memory_mib, 6000);
        // p1's annotation has arrived through the reflector: it is no longer pending.
        let arrived: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p1", "namespace": "default",
            "annotations": {"hami.io/vgpu-devices-allocated": "GPU-a,T4,3000,30:;"}}}))
            .unwrap();
        let mut s = state();
        let still = overlay(
            &mut s,
            &[Arc::new(arrived)],
            &[grant("p1"), grant("p2")],
            &profiles(),
        );
        let names = |g: &[PendingGrant]| g.iter().map(|g| g.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&still), ["p2"]);
        assert_eq!(s.nodes["n1"].devices[0].used_memory_mib, 3000);
        // A write that never showed up (cut off by the deadline) stops
        // holding the devices after the TTL.
        let stale = PendingGrant {
            since: std::time::Instant::now()
                .checked_sub(PENDING_TTL + std::time::Duration::from_secs(1))
                .unwrap(),
            ..grant("p3")
        };
        let mut s = state();
        let still = overlay(&mut s, &[], &[stale, grant("p2")], &profiles());
        assert_eq!(names(&still), ["p2"]);
        assert_eq!(s.nodes["n1"].devices[0].used_memory_mib, 3000);
    }

    #[test]
    fn the_patch_is_a_merge_of_annotations_only() {
        let ann: BTreeMap<String, String> = [("hami.io/vgpu-node".to_owned(), "n1".to_owned())]
            .into_iter()
            .collect();
        assert_eq!(
            annotation_patch(&ann),
            json!({"metadata": {"annotations": {"hami.io/vgpu-node": "n1"}}})
        );
    }

    /// The exact API call, through a kube client whose transport is a
    /// scenario verifier: a PATCH of the pod with a merge patch.
    #[test]
    fn annotations_are_written_with_one_merge_patch() {
        block_on(async {
            let (client, mut handle) = hami_kube_mock::pair("default");
            let api: Api<Pod> = Api::namespaced(client, "team-a");
            let patch = json!({"metadata": {"annotations": {"hami.io/vgpu-node": "n1"}}});
            let server = tokio::spawn(async move {
                for (status, body) in [
                    (200, json!({"metadata": {"name": "p1"}})),
                    (
                        409,
                        failure(409, "Conflict", "the object has been modified"),
                    ),
                ] {
                    let (request, send) = handle.next_request().await.expect("a request");
                    assert_eq!(request.method(), http::Method::PATCH);
                    assert_eq!(request.uri().path(), "/api/v1/namespaces/team-a/pods/p1");
                    assert_eq!(
                        request.headers()["content-type"],
                        "application/merge-patch+json"
                    );
                    let sent: serde_json::Value = serde_json::from_slice(
                        &request.into_body().collect().await.unwrap().to_bytes(),
                    )
                    .unwrap();
                    assert_eq!(
                        sent,
                        json!({"metadata": {"annotations": {"hami.io/vgpu-node": "n1"}}})
                    );
                    respond(send, status, body);
                }
            });
            assert_eq!(patch_annotations(&api, "p1", &patch).await, Ok(()));
            let err = patch_annotations(&api, "p1", &patch).await.unwrap_err();
            assert!(err.contains("modified"), "{err}");
            server.await.unwrap();
        });
    }

    fn node(rv: &str, lock: Option<&str>) -> Value {
        let mut n = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "resourceVersion": rv}});
        if let Some(l) = lock {
            n["metadata"]["annotations"] = json!({"hami.io/mutex.lock": l});
        }
        n
    }

    /// The exact calls of a contended take: read, conditional write that
    /// loses (409), read again, ask whether the holder's pod still needs
    /// the lock (its node agent answered), conditional write that wins.
    #[test]
    fn a_contended_take_against_the_api_server() {
        block_on(async {
            let (client, mut handle) = hami_kube_mock::pair("default");
            let store = KubeLockStore::new(client);
            let server = tokio::spawn(async move {
                let (m, uri, _, send) = next(&mut handle).await;
                assert_eq!((m, uri.as_str()), (http::Method::GET, "/api/v1/nodes/n1"));
                respond(send, 200, node("10", None));

                let (m, uri, body, send) = next(&mut handle).await;
                assert_eq!(m, http::Method::PATCH);
                assert!(uri.starts_with("/api/v1/nodes/n1"), "{uri}");
                assert_eq!(body["metadata"]["resourceVersion"], "10");
                assert!(body["metadata"]["annotations"]["hami.io/mutex.lock"]
                    .as_str()
                    .unwrap()
                    .ends_with(",default,p2"));
                respond(
                    send,
                    409,
                    failure(409, "Conflict", "the object has been modified"),
                );

                let (_, _, _, send) = next(&mut handle).await;
                respond(
                    send,
                    200,
                    node("11", Some("2026-11-23T06:00:00Z,default,p1")),
                );

                let (m, uri, _, send) = next(&mut handle).await;
                assert_eq!(
                    (m, uri.as_str()),
                    (http::Method::GET, "/api/v1/namespaces/default/pods/p1")
                );
                respond(
                    send,
                    200,
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
                    "name": "p1", "namespace": "default", "annotations": {"hami.io/bind-phase": "success"}}}),
                );

                let (m, _, body, send) = next(&mut handle).await;
                assert_eq!(m, http::Method::PATCH);
                assert_eq!(body["metadata"]["resourceVersion"], "11");
                respond(
                    send,
                    200,
                    node("12", Some("2026-11-23T06:00:01Z,default,p2")),
                );
            });
            let now = || {
                chrono::DateTime::parse_from_rfc3339("2026-11-23T06:00:01Z")
                    .unwrap()
                    .with_timezone(&chrono::Utc)
            };
            let policy = LockPolicy {
                first_backoff: std::time::Duration::from_millis(1),
                ..LockPolicy::default()
            };
            acquire(&store, "n1", "default", "p2", policy, now, 7)
                .await
                .unwrap();
            server.await.unwrap();
        });
    }

    fn binding_args() -> crate::extender::ExtenderBindingArgs {
        crate::extender::ExtenderBindingArgs {
            pod_name: "ext-1".into(),
            pod_namespace: "default".into(),
            pod_uid: "5a53271d-20c3-4b39-b421-64490ff91216".into(),
            node: "n1".into(),
        }
    }

    fn at() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-11-23T06:00:01Z")
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    /// A bind, call by call: lock the node, mark the pod allocating with its
    /// bind time, create the Binding; the lock stays for the node agent.
    #[test]
    fn a_bind_takes_the_lock_marks_the_pod_and_binds() {
        block_on(async {
            let (client, mut handle) = hami_kube_mock::pair("default");
            let locks = KubeLockStore::new(client.clone());
            let server = tokio::spawn(async move {
                let (m, uri, _, send) = next(&mut handle).await;
                assert_eq!((m, uri.as_str()), (http::Method::GET, "/api/v1/nodes/n1"));
                respond(send, 200, node("5", None));
                let (m, _, body, send) = next(&mut handle).await;
                assert_eq!(m, http::Method::PATCH);
                assert_eq!(
                    body["metadata"]["annotations"]["hami.io/mutex.lock"],
                    "2026-11-23T06:00:01Z,default,ext-1"
                );
                respond(
                    send,
                    200,
                    node("6", Some("2026-11-23T06:00:01Z,default,ext-1")),
                );
                let (m, uri, body, send) = next(&mut handle).await;
                assert_eq!(m, http::Method::PATCH);
                assert!(
                    uri.starts_with("/api/v1/namespaces/default/pods/ext-1"),
                    "{uri}"
                );
                assert_eq!(
                    body,
                    json!({"metadata": {"annotations": {
                    "hami.io/bind-phase": "allocating", "hami.io/bind-time": "1795413601"}}})
                );
                respond(
                    send,
                    200,
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ext-1"}}),
                );
                let (m, uri, body, send) = next(&mut handle).await;
                assert_eq!(m, http::Method::POST);
                assert!(
                    uri.starts_with("/api/v1/namespaces/default/pods/ext-1/binding"),
                    "{uri}"
                );
                assert_eq!(
                    body["target"],
                    json!({"apiVersion": "v1", "kind": "Node", "name": "n1"})
                );
                assert_eq!(
                    body["metadata"]["uid"],
                    "5a53271d-20c3-4b39-b421-64490ff91216"
                );
                respond(
                    send,
                    201,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}),
                );
                let (m, uri, body, send) = next(&mut handle).await;
                assert_eq!(
                    (m, uri.as_str()),
                    (http::Method::POST, "/api/v1/namespaces/default/events?")
                );
                assert_eq!(
                    (body["type"].as_str(), body["reason"].as_str()),
                    (Some("Normal"), Some("BindingSucceed"))
                );
                assert_eq!(
                    body["message"],
                    "Successfully binding node [n1] to default/ext-1"
                );
                respond(send, 201, body);
            });
            bind_pod(
                &client,
                &locks,
                &binding_args(),
                Delivery::DevicePlugin,
                LockPolicy::default(),
                at,
            )
            .await
            .unwrap();
            server.await.unwrap();
        });
    }

    /// A pod the annotation hook serves: no node lock (nothing would ever
    /// release it), the phase is success, then the Binding.
    #[test]
    fn an_annotation_delivered_bind_takes_no_lock() {
        block_on(async {
            let (client, mut handle) = hami_kube_mock::pair("default");
            let locks = KubeLockStore::new(client.clone());
            let server = tokio::spawn(async move {
                let (m, uri, body, send) = next(&mut handle).await;
                assert_eq!(
                    m,
                    http::Method::PATCH,
                    "the first call is the pod's, not the node's"
                );
                assert!(
                    uri.starts_with("/api/v1/namespaces/default/pods/ext-1"),
                    "{uri}"
                );
                assert_eq!(
                    body,
                    json!({"metadata": {"annotations": {
                    "hami.io/bind-phase": "success", "hami.io/bind-time": "1795413601"}}})
                );
                respond(
                    send,
                    200,
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ext-1"}}),
                );
                let (m, uri, _, send) = next(&mut handle).await;
                assert_eq!(m, http::Method::POST);
                assert!(
                    uri.starts_with("/api/v1/namespaces/default/pods/ext-1/binding"),
                    "{uri}"
                );
                respond(
                    send,
                    201,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}),
                );
                let (_, uri, body, send) = next(&mut handle).await;
                assert!(
                    uri.starts_with("/api/v1/namespaces/default/events"),
                    "{uri}"
                );
                respond(send, 201, body);
            });
            bind_pod(
                &client,
                &locks,
                &binding_args(),
                Delivery::Annotation,
                LockPolicy::default(),
                at,
            )
            .await
            .unwrap();
            server.await.unwrap();
        });
    }

    /// The Binding is refused: the pod is marked failed and the lock released.
    #[test]
    fn a_failed_bind_marks_the_pod_and_frees_the_node() {
        block_on(async {
            let (client, mut handle) = hami_kube_mock::pair("default");
            let locks = KubeLockStore::new(client.clone());
            let server = tokio::spawn(async move {
                let (_, _, _, send) = next(&mut handle).await;
                respond(send, 200, node("5", None));
                let (_, _, _, send) = next(&mut handle).await;
                respond(
                    send,
                    200,
                    node("6", Some("2026-11-23T06:00:01Z,default,ext-1")),
                );
                let (_, _, _, send) = next(&mut handle).await;
                respond(
                    send,
                    200,
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ext-1"}}),
                );
                let (m, _, _, send) = next(&mut handle).await;
                assert_eq!(m, http::Method::POST);
                respond(
                    send,
                    409,
                    failure(409, "Conflict", "pod ext-1 is already assigned to node n2"),
                );
                let (m, _, body, send) = next(&mut handle).await;
                assert_eq!(m, http::Method::PATCH);
                assert_eq!(
                    body["metadata"]["annotations"]["hami.io/bind-phase"],
                    "failed"
                );
                respond(
                    send,
                    200,
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ext-1"}}),
                );
                let (m, uri, _, send) = next(&mut handle).await;
                assert_eq!((m, uri.as_str()), (http::Method::GET, "/api/v1/nodes/n1"));
                respond(
                    send,
                    200,
                    node("7", Some("2026-11-23T06:00:01Z,default,ext-1")),
                );
                let (m, _, body, send) = next(&mut handle).await;
                assert_eq!(m, http::Method::PATCH);
                assert_eq!(body["metadata"]["resourceVersion"], "7");
                assert!(
                    body["metadata"]["annotations"]["hami.io/mutex.lock"].is_null(),
                    "{body}"
                );
                respond(send, 200, node("8", None));
                let (m, _, body, send) = next(&mut handle).await;
                assert_eq!(m, http::Method::POST);
                assert_eq!(
                    (body["type"].as_str(), body["reason"].as_str()),
                    (Some("Warning"), Some("BindingFailed"))
                );
                assert!(
                    body["message"]
                        .as_str()
                        .unwrap()
                        .contains("already assigned to node n2"),
                    "{body}"
                );
                respond(send, 201, body);
            });
            let err = bind_pod(
                &client,
                &locks,
                &binding_args(),
                Delivery::DevicePlugin,
                LockPolicy::default(),
                at,
            )
            .await
            .unwrap_err();
            assert!(err.contains("already assigned"), "{err}");
            server.await.unwrap();
        });
    }

    #[test]
    fn filtering_failed_is_a_warning_on_the_pod() {
        let e = warning_event(
            "default",
            "ext-1",
            "u-1",
            "FilteringFailed",
            "2/2 CardInsufficientMemory",
            at(),
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v["involvedObject"],
            json!({"apiVersion": "v1", "kind": "Pod", "name": "ext-1", "namespace": "default", "uid": "u-1"})
        );
        assert_eq!(
            (v["type"].as_str(), v["reason"].as_str()),
            (Some("Warning"), Some("FilteringFailed"))
        );
        assert_eq!(v["message"], "2/2 CardInsufficientMemory");
        assert_eq!(v["source"]["component"], "hami-scheduler");
        assert!(v["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("ext-1."));
    }

    #[test]
    fn a_missing_node_and_a_missing_holder() {
        block_on(async {
            let (client, mut handle) = hami_kube_mock::pair("default");
            let store = KubeLockStore::new(client);
            let server = tokio::spawn(async move {
                let not_found = |what: &str| failure(404, "NotFound", &format!("{what} not found"));
                let (_, _, _, send) = next(&mut handle).await;
                respond(send, 404, not_found("nodes \"gone\""));
                let (_, _, _, send) = next(&mut handle).await;
                respond(send, 404, not_found("pods \"p1\""));
            });
            assert_eq!(
                store.read("gone").await,
                Err(crate::node_lock::LockError::NotFound("gone".into()))
            );
            assert_eq!(store.owner_needs_lock("default", "p1").await, Ok(false));
            server.await.unwrap();
        });
    }

    /// The DRA support probe, call by call, on three API servers: one
    /// without resource.k8s.io/v1, one with the feature, one that drops the
    /// capacity field (feature gate off).
    #[test]
    fn dra_support_is_asked_of_discovery_and_a_dry_run() {
        let discovery = json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "resource.k8s.io/v1",
            "resources": [{"name": "resourceclaimtemplates", "singularName": "resourceclaimtemplate",
                           "namespaced": true, "kind": "ResourceClaimTemplate", "verbs": ["create", "get"]}]});
        for (served, keeps_capacity, want) in [
            (false, false, Err("Kubernetes 1.34")),
            (true, true, Ok(())),
            (
                true,
                false,
                Err("DRAConsumableCapacity feature gate is off"),
            ),
        ] {
            let discovery = discovery.clone();
            block_on(async move {
                let (client, mut handle) = hami_kube_mock::pair("default");
                let server = tokio::spawn(async move {
                    let (m, uri, _, send) = next(&mut handle).await;
                    assert_eq!(
                        (m, uri.as_str()),
                        (http::Method::GET, "/apis/resource.k8s.io/v1")
                    );
                    if !served {
                        respond(
                            send,
                            404,
                            failure(
                                404,
                                "NotFound",
                                "the server could not find the requested resource",
                            ),
                        );
                        return;
                    }
                    respond(send, 200, discovery);
                    let (m, uri, mut body, send) = next(&mut handle).await;
                    assert_eq!(m, http::Method::POST);
                    assert_eq!(
                        uri,
                        "/apis/resource.k8s.io/v1/namespaces/kube-system/resourceclaimtemplates?&dryRun=All"
                    );
                    let exactly = &mut body["spec"]["spec"]["devices"]["requests"][0]["exactly"];
                    assert!(exactly.get("capacity").is_some());
                    if !keeps_capacity {
                        exactly.as_object_mut().unwrap().remove("capacity");
                    }
                    respond(send, 201, body);
                });
                let got = dra_support(&client, "kube-system").await;
                match (got, want) {
                    (Ok(()), Ok(())) => {}
                    (Err(e), Err(needle)) => assert!(e.contains(needle), "{e}"),
                    (got, want) => panic!("got {got:?}, want {want:?}"),
                }
                server.await.unwrap();
            });
        }
    }
}
