//! `/filter` then `/bind` over HTTP against the production cluster
//! (`KubeCluster`: reflectors, patches, node lock, Binding, events) whose
//! kube-rs client talks to a scenario verifier (tower-test) playing the API
//! server. The list and watch calls of the reflectors are answered; every
//! other call is recorded, and the test checks the exact sequence.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use hami_controller::kube_cluster::KubeCluster;
use hami_controller::server::{router, Cluster, Settings};
use hami_kube_mock::{respond, try_next, Handle, Responder};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/k8s")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const REGISTER: &str =
    r#"[{"id":"GPU-n2","count":10,"devmem":8192,"devcore":100,"type":"NVIDIA-T4","health":true}]"#;

fn node(rv: &str, lock: Option<&str>) -> Value {
    let mut ann = json!({"hami.io/node-nvidia-register": REGISTER});
    if let Some(l) = lock {
        ann["hami.io/mutex.lock"] = json!(l);
    }
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": "fake-node-2", "resourceVersion": rv, "annotations": ann}})
}

/// One recorded call: method, path (no query), body.
type Call = (String, String, Value);

/// Plays the API server until the client goes away.
async fn api_server(mut handle: Handle, calls: Arc<Mutex<Vec<Call>>>) {
    let mut watches: Vec<Responder> = Vec::new();
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ext-1", "namespace": "default", "uid": "5a53271d-20c3-4b39-b421-64490ff91216"},
        "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Pending"}});
    let mut node_rv = 10;
    while let Some((method, uri, body, send)) = try_next(&mut handle).await {
        let method = method.to_string();
        let uri: http::Uri = uri.parse().expect("a request URI");
        let path = uri.path().to_owned();
        let query = uri.query().unwrap_or_default().to_owned();
        if query.contains("watch=true") {
            // Watches stay open and quiet: nothing changes behind the test.
            watches.push(send);
            continue;
        }
        match (method.as_str(), path.as_str()) {
            ("GET", "/api/v1/nodes") => respond(
                send,
                200,
                json!({"apiVersion": "v1", "kind": "NodeList",
                        "metadata": {"resourceVersion": "100"}, "items": [node("10", None)]}),
            ),
            ("GET", "/api/v1/resourcequotas") => respond(
                send,
                200,
                json!({"apiVersion": "v1", "kind": "ResourceQuotaList",
                        "metadata": {"resourceVersion": "100"}, "items": []}),
            ),
            ("GET", "/api/v1/pods") => respond(
                send,
                200,
                json!({"apiVersion": "v1", "kind": "PodList",
                        "metadata": {"resourceVersion": "100"}, "items": [pod]}),
            ),
            _ => {
                calls
                    .lock()
                    .unwrap()
                    .push((method.clone(), path.clone(), body.clone()));
                let reply = match (method.as_str(), path.as_str()) {
                    ("GET", "/api/v1/nodes/fake-node-2") => node(&node_rv.to_string(), None),
                    ("PATCH", "/api/v1/nodes/fake-node-2") => {
                        node_rv += 1;
                        let lock = body["metadata"]["annotations"]["hami.io/mutex.lock"].as_str();
                        node(&node_rv.to_string(), lock)
                    }
                    ("PATCH", "/api/v1/namespaces/default/pods/ext-1") => pod.clone(),
                    ("POST", "/api/v1/namespaces/default/pods/ext-1/binding") => {
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201})
                    }
                    ("POST", "/api/v1/namespaces/default/events") => body.clone(),
                    other => panic!("unexpected call {other:?}"),
                };
                respond(send, 200, reply);
            }
        }
    }
}

async fn post(app: axum::Router, path: &str, body: &Value) -> (StatusCode, Value) {
    let res = app
        .oneshot(
            Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[test]
fn filter_then_bind_make_exactly_these_api_calls() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let (client, handle) = hami_kube_mock::pair("default");
            let calls = Arc::new(Mutex::new(Vec::new()));
            tokio::spawn(api_server(handle, calls.clone()));
            let cluster = KubeCluster::start(client);
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !cluster.ready() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "reflectors never synced"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let app = router(cluster.clone(), Settings::default());

            // The captured ExtenderArgs, its pod asking for one GPU share.
            let mut args = fixture("sample-extender-args.json");
            args["Pod"]["spec"]["containers"][0]["resources"]["limits"] =
                json!({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "3000"});
            let (status, reply) = post(app.clone(), "/filter", &args).await;
            assert_eq!(
                (status, reply["Error"].as_str()),
                (StatusCode::OK, Some("")),
                "{reply}"
            );
            let passed: Vec<&str> = reply["Nodes"]["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["metadata"]["name"].as_str().unwrap())
                .collect();
            assert_eq!(passed, ["fake-node-2"]);
            assert_eq!(
                reply["FailedNodes"]["fake-node-1"], "NodeInsufficientDevice",
                "fake-node-1 registers no device: {reply}"
            );
            // The grant holds at once, before any watch event shows it.
            assert_eq!(
                cluster.state().nodes["fake-node-2"].devices[0].used_memory_mib,
                3000
            );

            let (status, reply) =
                post(app, "/bind", &fixture("sample-extender-binding-args.json")).await;
            assert_eq!(
                (status, reply["Error"].as_str()),
                (StatusCode::OK, Some("")),
                "{reply}"
            );

            let calls = calls.lock().unwrap().clone();
            let summary: Vec<(&str, &str)> = calls
                .iter()
                .map(|(m, p, _)| (m.as_str(), p.as_str()))
                .collect();
            assert_eq!(
                summary,
                [
                    // /filter: the decision on the pod, one merge patch.
                    ("PATCH", "/api/v1/namespaces/default/pods/ext-1"),
                    // /bind: the node lock (read, conditional write) ...
                    ("GET", "/api/v1/nodes/fake-node-2"),
                    ("PATCH", "/api/v1/nodes/fake-node-2"),
                    // ... bind-phase allocating, the Binding, the event.
                    ("PATCH", "/api/v1/namespaces/default/pods/ext-1"),
                    ("POST", "/api/v1/namespaces/default/pods/ext-1/binding"),
                    ("POST", "/api/v1/namespaces/default/events"),
                ]
            );
            let decision = &calls[0].2["metadata"]["annotations"];
            assert_eq!(
                decision["hami.io/vgpu-devices-allocated"],
                "GPU-n2,NVIDIA-T4,3000,0:;"
            );
            assert_eq!(
                decision["hami.io/vgpu-devices-to-allocate"],
                "GPU-n2,NVIDIA-T4,3000,0:;"
            );
            assert_eq!(decision["hami.io/vgpu-node"], "fake-node-2");
            assert_eq!(calls[2].2["metadata"]["resourceVersion"], "10");
            assert!(calls[2].2["metadata"]["annotations"]["hami.io/mutex.lock"]
                .as_str()
                .unwrap()
                .ends_with(",default,ext-1"));
            assert_eq!(
                calls[3].2["metadata"]["annotations"]["hami.io/bind-phase"],
                "allocating"
            );
            assert_eq!(calls[4].2["target"]["name"], "fake-node-2");
            assert_eq!(
                calls[4].2["metadata"]["uid"],
                "5a53271d-20c3-4b39-b421-64490ff91216"
            );
            assert_eq!(calls[5].2["reason"], "BindingSucceed");
        });
}
