//! The in-memory cluster the HTTP tests run the extender and the webhook
//! against: a state rebuilt from Node, Pod and ResourceQuota JSON, and a
//! record of every write, bind and event.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use hami_controller::server::Cluster;
use hami_controller::state::ClusterState;
use serde_json::Value;

pub type Write = (String, String, BTreeMap<String, String>);

pub struct FakeCluster {
    pub state: Arc<ClusterState>,
    pub ready: bool,
    pub fail_writes: bool,
    /// Writes never finish (an API server that stopped answering).
    pub stall_writes: bool,
    pub writes: Mutex<Vec<Write>>,
    pub binds: Mutex<Vec<hami_controller::extender::ExtenderBindingArgs>>,
    /// What each bind was told delivers the pod's devices.
    pub deliveries: Mutex<Vec<hami_controller::pending::Delivery>>,
    pub events: Mutex<Vec<String>>,
    /// ResourceClaimTemplates created, with their namespace.
    pub templates: Mutex<Vec<(String, Value)>>,
}

impl Cluster for FakeCluster {
    fn state(&self) -> Arc<ClusterState> {
        self.state.clone()
    }
    fn ready(&self) -> bool {
        self.ready
    }
    fn bind(
        &self,
        args: hami_controller::extender::ExtenderBindingArgs,
        delivery: hami_controller::pending::Delivery,
    ) -> BoxFuture<'static, Result<(), String>> {
        let fail = self.fail_writes;
        self.binds.lock().unwrap().push(args);
        self.deliveries.lock().unwrap().push(delivery);
        Box::pin(async move {
            if fail {
                Err("node lock: node n1 is locked by someone".into())
            } else {
                Ok(())
            }
        })
    }
    fn warn_pod(&self, namespace: &str, name: &str, uid: &str, reason: &str, message: String) {
        self.events
            .lock()
            .unwrap()
            .push(format!("{namespace}/{name}/{uid} {reason}: {message}"));
    }
    fn create_claim_templates(
        &self,
        namespace: &str,
        templates: Vec<Value>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let fail = self.fail_writes;
        if !fail {
            self.templates
                .lock()
                .unwrap()
                .extend(templates.into_iter().map(|t| (namespace.to_owned(), t)));
        }
        Box::pin(async move {
            if fail {
                Err("the API server said no".into())
            } else {
                Ok(())
            }
        })
    }
    fn annotate(
        &self,
        namespace: &str,
        name: &str,
        annotations: BTreeMap<String, String>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let fail = self.fail_writes;
        if self.stall_writes {
            return Box::pin(futures_util::future::pending());
        }
        if !fail {
            self.writes
                .lock()
                .unwrap()
                .push((namespace.into(), name.into(), annotations));
        }
        Box::pin(async move {
            if fail {
                Err("the API server said no".into())
            } else {
                Ok(())
            }
        })
    }
}

/// A captured fixture from `../shared/fixtures/k8s/`.
pub fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/k8s")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A synced cluster of these Node and Pod objects (as JSON).
pub fn cluster_of(
    nodes: &[Value],
    pods: &[Value],
    ready: bool,
    fail_writes: bool,
) -> Arc<FakeCluster> {
    cluster_with_quotas(nodes, pods, &[], ready, fail_writes)
}

/// [`cluster_of`] with the namespaces' ResourceQuotas.
pub fn cluster_with_quotas(
    nodes: &[Value],
    pods: &[Value],
    quotas: &[Value],
    ready: bool,
    fail_writes: bool,
) -> Arc<FakeCluster> {
    let nodes: Vec<k8s_openapi::api::core::v1::Node> = nodes
        .iter()
        .map(|n| serde_json::from_value(n.clone()).unwrap())
        .collect();
    let pods: Vec<k8s_openapi::api::core::v1::Pod> = pods
        .iter()
        .map(|p| serde_json::from_value(p.clone()).unwrap())
        .collect();
    let quotas: Vec<k8s_openapi::api::core::v1::ResourceQuota> = quotas
        .iter()
        .map(|q| serde_json::from_value(q.clone()).unwrap())
        .collect();
    let state = ClusterState::rebuild(
        &nodes,
        &pods,
        chrono::NaiveDate::from_ymd_opt(2026, 11, 23)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap(),
    )
    .with_quotas(&quotas);
    Arc::new(FakeCluster {
        state: Arc::new(state),
        ready,
        fail_writes,
        stall_writes: false,
        writes: Mutex::new(Vec::new()),
        binds: Mutex::new(Vec::new()),
        deliveries: Mutex::new(Vec::new()),
        events: Mutex::new(Vec::new()),
        templates: Mutex::new(Vec::new()),
    })
}
