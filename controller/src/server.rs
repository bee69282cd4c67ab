//! The extender's HTTP face: `POST /filter`, `POST /bind` (on loopback),
//! and, on their own address, `/metrics`, `/healthz`, `/readyz`.
//!
//! The cluster behind it is a trait: the production implementation watches
//! the API server (reflectors) and patches pods; tests give an in-memory one
//! that records every write.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::future::BoxFuture;
use hami_api::reasons::NODE_INSUFFICIENT_DEVICE;
use hami_api::{keys, GpuSchedulerPolicy, NodeSchedulerPolicy};

use crate::admission::mutate::{self, Facts, WebhookConfig};
use crate::admission::review::{self, AdmissionResponse, AdmissionReview};
use crate::extender::{
    ExtenderArgs, ExtenderBindingArgs, ExtenderBindingResult, ExtenderFilterResult, NodeList,
};
use crate::pending::{Delivery, PendingDecisions};
use crate::schedule::device::Node;
use crate::schedule::filter::{filter, Placing};
use crate::schedule::fit::PodFit;
use crate::schedule::pod::pod_request_any;
use crate::schedule::vendor::{Family, VendorProfile};
use crate::state::ClusterState;

/// What the extender needs from the cluster.
pub trait Cluster: Send + Sync + 'static {
    /// The current view (a cheap snapshot).
    fn state(&self) -> Arc<ClusterState>;
    /// Whether the view has synced since start: until then decisions would
    /// be made on partial usage, so `/readyz` says no and `/filter` refuses.
    fn ready(&self) -> bool;
    /// Binds the pod to the node (see [`crate::kube_cluster::bind_pod`]);
    /// `delivery` says whether a device plugin will answer the bind phase,
    /// and so whether the node lock is taken.
    fn bind(
        &self,
        args: ExtenderBindingArgs,
        delivery: Delivery,
    ) -> BoxFuture<'static, Result<(), String>>;
    /// Records a Warning event on the pod (best effort: a lost event never
    /// changes a scheduling decision).
    fn warn_pod(&self, namespace: &str, name: &str, uid: &str, reason: &str, message: String);
    /// Creates the ResourceClaimTemplates a DRA conversion references
    /// (one that already exists is fine: templates are named by content).
    fn create_claim_templates(
        &self,
        namespace: &str,
        templates: Vec<serde_json::Value>,
    ) -> BoxFuture<'static, Result<(), String>>;
    /// Merges `annotations` into the pod's.
    fn annotate(
        &self,
        namespace: &str,
        name: &str,
        annotations: BTreeMap<String, String>,
    ) -> BoxFuture<'static, Result<(), String>>;
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Larger request bodies get 413 and a JSON error.
    pub body_limit: usize,
    /// The device families placed; a device's `vendor` indexes this list,
    /// so it must be the list the cluster state was rebuilt with.
    pub profiles: Vec<VendorProfile>,
    pub node_policy: NodeSchedulerPolicy,
    pub gpu_policy: GpuSchedulerPolicy,
    /// Decide, but write nothing (simulation).
    pub dry_run: bool,
    /// A `/filter` or `/bind` still working after this gets a JSON error
    /// (504), well inside kube-scheduler's own extender timeout, so the
    /// scheduler hears why instead of timing out on its side.
    pub request_timeout: std::time::Duration,
    /// Set while this replica holds the leader Lease; `None` when leader
    /// election is off (a single replica). A replica that is not the leader
    /// answers `/filter` and `/bind` with 503 and is not ready.
    pub leader: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// What `/filter` decided, for `/bind` to check; shared by every router
    /// built from these settings.
    pub decisions: Arc<PendingDecisions>,
    /// Seals each decision written to a pod (see [`hami_api::seal`]).
    pub decision_key: Option<Arc<hami_api::seal::DecisionKey>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            body_limit: 1 << 20,
            profiles: VendorProfile::defaults(),
            node_policy: NodeSchedulerPolicy::Binpack,
            gpu_policy: GpuSchedulerPolicy::Binpack,
            dry_run: false,
            request_timeout: std::time::Duration::from_secs(10),
            leader: None,
            decisions: Arc::new(PendingDecisions::default()),
            decision_key: None,
        }
    }
}

impl Settings {
    fn is_leader(&self) -> bool {
        self.leader
            .as_ref()
            .is_none_or(|l| l.load(std::sync::atomic::Ordering::Acquire))
    }
}

/// The event reason HAMi's scheduler records when no node fits a pod.
pub const FILTERING_FAILED: &str = "FilteringFailed";

struct App {
    cluster: Arc<dyn Cluster>,
    settings: Settings,
}

pub fn router(cluster: Arc<dyn Cluster>, settings: Settings) -> Router {
    let limit = settings.body_limit;
    let app = Arc::new(App { cluster, settings });
    let decisions = Router::new()
        .route("/filter", post(filter_handler))
        .route("/bind", post(bind_handler))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard));
    Router::new()
        .merge(decisions)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

/// `/metrics`, `/healthz` and `/readyz`, served on their own address: the
/// extender's port listens on loopback for the kube-scheduler beside it,
/// while Prometheus and the kubelet's probes come from outside the pod.
pub fn metrics_router(cluster: Arc<dyn Cluster>, settings: Settings) -> Router {
    let app = Arc::new(App { cluster, settings });
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(app)
}

/// Leadership and the deadline for `/filter` and `/bind`. Both replies
/// (ExtenderFilterResult, ExtenderBindingResult) carry `Error`, so one JSON
/// shape tells kube-scheduler what went wrong for either.
async fn guard(
    State(app): State<Arc<App>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let refuse = |status: StatusCode, message: String| {
        (status, Json(serde_json::json!({ "Error": message }))).into_response()
    };
    if !app.settings.is_leader() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this hami-controller replica is not the leader".into(),
        );
    }
    let limit = app.settings.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!("a decision took longer than {limit:?}; answered with an error");
            refuse(
                StatusCode::GATEWAY_TIMEOUT,
                format!("no decision within {limit:?}; the scheduler may retry the pod"),
            )
        }
    }
}

/// A request body as `what`: an over-limit body keeps the rejection's status
/// (413), malformed JSON is a 400; either way with a message for `Error`.
fn decode<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
) -> Result<T, (StatusCode, String)> {
    let body = body.map_err(|r| (r.status(), format!("request body: {r}")))?;
    serde_json::from_slice(&body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("malformed {what}: {e}")))
}

async fn bind_handler(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let reply = |status: StatusCode, error: String| {
        (status, Json(ExtenderBindingResult { error })).into_response()
    };
    let args: ExtenderBindingArgs = match decode(body, "ExtenderBindingArgs") {
        Ok(a) => a,
        Err((status, message)) => return reply(status, message),
    };
    if app.settings.dry_run {
        return reply(StatusCode::OK, "dry run: not binding".into());
    }
    let (uid, node) = (args.pod_uid.clone(), args.node.clone());
    let delivery = match app.settings.decisions.take(&uid, &node) {
        Ok(d) => d,
        Err(refused) => {
            tracing::warn!(pod = %args.pod_name, namespace = %args.pod_namespace, "{refused}");
            return reply(StatusCode::OK, refused.to_string());
        }
    };
    match app.cluster.bind(args, delivery).await {
        Ok(()) => reply(StatusCode::OK, String::new()),
        Err(e) => {
            // The scheduler retries a failed bind with the same decision.
            app.settings.decisions.restore(&uid, &node, delivery);
            reply(StatusCode::OK, e)
        }
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = crate::metrics::render(&app.cluster.state(), &app.settings.profiles);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if !app.settings.is_leader() {
        (StatusCode::SERVICE_UNAVAILABLE, "not the leader").into_response()
    } else if app.cluster.ready() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "cluster view not synced").into_response()
    }
}

fn error(status: StatusCode, message: String) -> Response {
    let body = ExtenderFilterResult {
        error: message,
        ..ExtenderFilterResult::default()
    };
    (status, Json(body)).into_response()
}

/// The pod's policy annotation, or the default; a value that is not a
/// policy is the pod's error, not silently the default.
fn policy_from<T: std::str::FromStr>(
    annotations: Option<&BTreeMap<String, String>>,
    key: &str,
    default: T,
) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    match annotations.and_then(|a| a.get(key)) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|e| format!("annotation {key}: {e}")),
    }
}

/// The `FilteringFailed` event on the pod (not on a dry run).
fn filtering_failed(app: &App, args: &ExtenderArgs, message: String) {
    if app.settings.dry_run {
        return;
    }
    let meta = &args.pod.metadata;
    app.cluster.warn_pod(
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default(),
        meta.uid.as_deref().unwrap_or_default(),
        FILTERING_FAILED,
        message,
    );
}

async fn filter_handler(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let args: ExtenderArgs = match decode(body, "ExtenderArgs") {
        Ok(a) => a,
        Err((status, message)) => return error(status, message),
    };
    let candidates = args.candidate_names();
    let (vendor, request) = match pod_request_any(&args.pod, &app.settings.profiles) {
        Ok(Some(r)) => r,
        // Not ours: every candidate passes untouched, and may be bound to.
        Ok(None) => {
            if !app.settings.dry_run {
                let uid = args.pod.metadata.uid.as_deref().unwrap_or_default();
                app.settings
                    .decisions
                    .record(uid, candidates.iter().cloned(), Delivery::Nothing);
            }
            return Json(reply(&args, &candidates, BTreeMap::new())).into_response();
        }
        Err(e) => return error(StatusCode::OK, e.to_string()),
    };
    let profile = &app.settings.profiles[usize::from(vendor)];
    // The webhook's privilege denial, again: a pod from a namespace without
    // the webhook, or admitted before it was installed, gets no shared device.
    let asking: Vec<&k8s_openapi::api::core::v1::Container> = args
        .pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
        .filter(|c| mutate::asks_for_shared(c, &app.settings.profiles))
        .collect();
    if let Some(why) = crate::admission::privilege::escape(&args.pod, &asking) {
        let message = crate::admission::privilege::denial(&why);
        filtering_failed(&app, &args, message.clone());
        return error(StatusCode::OK, message);
    }
    if !app.cluster.ready() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller's cluster view has not synced yet".into(),
        );
    }
    let state = app.cluster.state();
    let mut failed = BTreeMap::new();
    let mut known: Vec<(&String, &Node)> = Vec::new();
    for name in &candidates {
        match state.nodes.get(name) {
            Some(n) => known.push((name, n)),
            None => {
                failed.insert(name.clone(), NODE_INSUFFICIENT_DEVICE.to_owned());
            }
        }
    }
    let annotations = args.pod.metadata.annotations.as_ref();
    let policies = policy_from(
        annotations,
        keys::NODE_SCHEDULER_POLICY,
        app.settings.node_policy,
    )
    .and_then(|n| {
        policy_from(
            annotations,
            keys::GPU_SCHEDULER_POLICY,
            app.settings.gpu_policy,
        )
        .map(|g| (n, g))
    });
    let (node_policy, gpu_policy) = match policies {
        Ok(p) => p,
        Err(e) => return error(StatusCode::OK, e),
    };
    let nodes: Vec<&Node> = known.iter().map(|(_, n)| *n).collect();
    let namespace = args.pod.metadata.namespace.as_deref().unwrap_or("default");
    let quota = state.quota_check(namespace, &app.settings.profiles);
    let placing = Placing {
        profile,
        vendor,
        node_policy,
        gpu_policy,
        quota: quota.as_ref(),
    };
    let outcome = filter(&nodes, &request, &placing);
    for (i, reason) in &outcome.failed {
        failed.insert(known[*i].0.clone(), (*reason).to_owned());
    }
    let Some(chosen) = outcome.chosen else {
        let mut reasons = hami_api::FailureReasons::new(candidates.len());
        for reason in failed.values() {
            reasons.add(reason);
        }
        filtering_failed(&app, &args, reasons.encode());
        return Json(reply(&args, &[], failed)).into_response();
    };
    // The scheduler gets exactly one node, the one the devices were chosen on;
    // the other fitting nodes are simply not returned.
    let node_name = known[chosen.node].0.clone();
    let decision = match decision(profile, &chosen.fit, nodes[chosen.node], &request) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::OK, format!("encoding the decision: {e}")),
    };
    if !app.settings.dry_run {
        let pod = &args.pod;
        let containers: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .map(|c| c.name.clone())
            .collect();
        let mut write = decision;
        write.insert(keys::VGPU_NODE.to_owned(), node_name.clone());
        write.insert(keys::CONTAINER_NAMES.to_owned(), containers.join(","));
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        if let Some(key) = &app.settings.decision_key {
            let seal = key.seal_annotations(uid, &node_name, &write);
            write.insert(keys::DECISION_SEAL.to_owned(), seal);
        }
        let result = app
            .cluster
            .annotate(
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or_default(),
                write,
            )
            .await;
        if let Err(e) = result {
            return error(
                StatusCode::OK,
                format!("writing the decision to the pod: {e}"),
            );
        }
        let delivery = if request.hami_core {
            Delivery::Annotation
        } else {
            Delivery::DevicePlugin
        };
        app.settings
            .decisions
            .record(uid, [node_name.clone()], delivery);
        tracing::info!(
            pod = %pod.metadata.name.as_deref().unwrap_or_default(),
            namespace = %pod.metadata.namespace.as_deref().unwrap_or("default"),
            node = %node_name,
            "placed; waiting for /bind"
        );
    }
    Json(reply(&args, &[node_name], failed)).into_response()
}

/// One NPU's entry in `huawei.com/<word>`: field names, order and
/// `omitempty` as HAMi's Ascend device plugin expects them.
#[derive(serde::Serialize)]
struct AscendRuntimeInfo<'a> {
    #[serde(rename = "UUID")]
    uuid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    temp: Option<&'a str>,
    #[serde(skip_serializing_if = "is_zero_u64")]
    memory: u64,
    #[serde(skip_serializing_if = "is_zero_u32")]
    core: u32,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// The decision's annotations in `profile`'s keys (HAMi's encoding); for
/// Ascend also `huawei.com/<word>`, the vNPU each NPU is cut into (template
/// names), or the raw quota in `hami-core` mode, as HAMi's Ascend device
/// plugin reads it.
fn decision(
    profile: &VendorProfile,
    fit: &PodFit,
    node: &Node,
    request: &crate::schedule::request::PodRequest,
) -> Result<BTreeMap<String, String>, hami_api::AllocationError> {
    let allocation = fit.allocation(node).encode()?;
    let mut out = BTreeMap::from([
        (profile.keys.devices_to_allocate.clone(), allocation.clone()),
        (profile.keys.devices_allocated.clone(), allocation),
    ]);
    if let (Family::Ascend(_), Some(word)) = (&profile.family, &profile.resources.common_word) {
        let runtime: Vec<AscendRuntimeInfo> = fit
            .slots
            .iter()
            .flatten()
            .map(|g| {
                let uuid = node.devices[g.device].uuid.as_str();
                if request.hami_core {
                    AscendRuntimeInfo {
                        uuid,
                        temp: None,
                        memory: g.memory_mib,
                        core: g.cores,
                    }
                } else {
                    AscendRuntimeInfo {
                        uuid,
                        temp: profile.template_name(g.template),
                        memory: 0,
                        core: 0,
                    }
                }
            })
            .collect();
        out.insert(
            format!("huawei.com/{word}"),
            serde_json::to_string(&runtime).expect("runtime info serialises"),
        );
    }
    Ok(out)
}

struct WebhookApp {
    cluster: Arc<dyn Cluster>,
    config: WebhookConfig,
}

/// The admission webhook's routes: `POST /webhook` (AdmissionReview v1) and
/// `/healthz`. Served on every replica, leader or not: admission must not
/// stop while a new leader is elected. Serve it over TLS (`admission::tls`).
pub fn webhook_router(
    cluster: Arc<dyn Cluster>,
    config: WebhookConfig,
    body_limit: usize,
) -> Router {
    Router::new()
        .route("/webhook", post(webhook_handler))
        .route("/validate", post(validate_handler))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(Arc::new(WebhookApp { cluster, config }))
}

/// An AdmissionReview v1 with its request, or the error reply.
// Built once per review and returned at once: boxing it buys nothing.
#[allow(clippy::result_large_err)]
fn admission_request(
    body: Result<Bytes, BytesRejection>,
) -> Result<review::AdmissionRequest, Response> {
    let fail = |status: StatusCode, message: String| {
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    };
    let review: AdmissionReview = match decode(body, "AdmissionReview") {
        Ok(r) => r,
        Err((status, message)) => return Err(fail(status, message)),
    };
    if review.api_version != review::API_VERSION || review.kind != "AdmissionReview" {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!(
                "expected {} AdmissionReview, got {} {}",
                review::API_VERSION,
                review.api_version,
                review.kind
            ),
        ));
    }
    review.request.ok_or_else(|| {
        fail(
            StatusCode::BAD_REQUEST,
            "AdmissionReview without a request".into(),
        )
    })
}

/// The validating webhook: controller-owned annotations stay the
/// controller's (see [`crate::admission::owned`]).
async fn validate_handler(
    State(app): State<Arc<WebhookApp>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request = match admission_request(body) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let user_node = request
        .user_info
        .extra
        .get(review::NODE_NAME_EXTRA)
        .and_then(|v| v.first())
        .map(String::as_str);
    let verdict = crate::admission::owned::check_write(
        &crate::admission::owned::Write {
            operation: &request.operation,
            kind: &request.kind.kind,
            user: &request.user_info.username,
            user_node,
            object: request.object.as_ref(),
            old: request.old_object.as_ref(),
        },
        &crate::admission::owned::Writers {
            trusted: &app.config.trusted_users,
            node_agent: app.config.node_agent_user.as_deref(),
        },
    );
    let response = match verdict {
        Ok(()) => AdmissionResponse::allow(&request.uid, &[]),
        Err(message) => {
            tracing::warn!(user = %request.user_info.username, namespace = ?request.namespace, name = ?request.name, "{message}");
            AdmissionResponse::deny(&request.uid, message)
        }
    };
    Json(response.into_review()).into_response()
}

async fn webhook_handler(
    State(app): State<Arc<WebhookApp>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request = match admission_request(body) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let untouched = AdmissionResponse::allow(&request.uid, &[]);
    let object = match (
        &request.object,
        request.kind.kind.as_str(),
        request.operation.as_str(),
    ) {
        (Some(o), "Pod", "CREATE") => o,
        // Not a pod being created: nothing of ours.
        _ => return Json(untouched.into_review()).into_response(),
    };
    // The checks that need the cluster (device sizes, quota) use what the
    // view holds; before it has synced they are skipped here, and /filter,
    // which refuses to decide until then, checks the quota again.
    let facts = if app.cluster.ready() {
        let state = app.cluster.state();
        Facts {
            largest_memory_mib: state.largest_memory_mib(&app.config.profiles),
            quota: state.quota_check(
                request.namespace.as_deref().unwrap_or("default"),
                &app.config.profiles,
            ),
        }
    } else {
        Facts::default()
    };
    let response = match mutate::review(object, &app.config, &facts) {
        mutate::Verdict::Untouched => untouched,
        mutate::Verdict::Mutate(ops) => AdmissionResponse::allow(&request.uid, &ops),
        mutate::Verdict::Convert(conversion) => {
            // A dry-run admission must have no side effects.
            let created = if request.dry_run == Some(true) {
                Ok(())
            } else {
                let namespace = request.namespace.as_deref().unwrap_or("default");
                app.cluster
                    .create_claim_templates(namespace, conversion.templates)
                    .await
            };
            match created {
                Ok(()) => AdmissionResponse::allow(&request.uid, &conversion.ops),
                Err(e) => AdmissionResponse::deny(
                    &request.uid,
                    format!("hami-controller: creating the pod's ResourceClaimTemplate: {e}"),
                ),
            }
        }
        mutate::Verdict::Deny(message) => AdmissionResponse::deny(&request.uid, message),
    };
    Json(response.into_review()).into_response()
}

/// The reply in the form kube-scheduler asked in: node names, or node objects.
fn reply(
    args: &ExtenderArgs,
    passed: &[String],
    failed: BTreeMap<String, String>,
) -> ExtenderFilterResult {
    let (nodes, node_names) = match &args.nodes {
        Some(list) if args.node_names.is_none() => (
            Some(NodeList {
                metadata: list.metadata.clone(),
                items: list
                    .items
                    .iter()
                    .filter(|n| n.metadata.name.as_ref().is_some_and(|m| passed.contains(m)))
                    .cloned()
                    .collect(),
            }),
            None,
        ),
        _ => (None, Some(passed.to_vec())),
    };
    ExtenderFilterResult {
        nodes,
        node_names,
        failed_nodes: failed,
        ..ExtenderFilterResult::default()
    }
}
