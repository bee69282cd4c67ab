//! `POST /filter` over HTTP, on the body kube-scheduler really sent (the
//! captured ExtenderArgs, given GPU limits), against an in-memory cluster
//! that records every annotation write.

mod common;

use hami_controller::pending::Delivery;

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{cluster_of, FakeCluster};
use hami_controller::server::{metrics_router, router, Settings};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

fn fixture() -> Value {
    common::fixture("sample-extender-args.json")
}

/// The captured body, with the pod asking for one GPU with 3000 MiB at 30%.
fn gpu_args() -> Value {
    let mut args = fixture();
    args["Pod"]["spec"]["containers"][0]["resources"]["limits"] = json!({
        "nvidia.com/gpu": "1", "nvidia.com/gpumem": "3000", "nvidia.com/gpucores": "30"
    });
    args
}

const REGISTER: &str =
    r#"[{"id":"GPU-1","count":10,"devmem":8192,"devcore":100,"type":"NVIDIA-T4","health":true}]"#;

/// fake-node-1 already has 6000 MiB of its GPU taken; fake-node-2 is empty.
fn cluster(ready: bool, fail_writes: bool) -> Arc<FakeCluster> {
    let node = |name: &str| -> Value {
        json!({"metadata": {"name": name, "annotations": {
            "hami.io/node-nvidia-register": REGISTER.replace("GPU-1", &format!("GPU-{name}"))}}})
    };
    let busy = json!({
        "metadata": {"name": "busy", "namespace": "default", "annotations": {
            "hami.io/vgpu-node": "fake-node-1",
            "hami.io/vgpu-devices-allocated": "GPU-fake-node-1,NVIDIA-T4,6000,50:;"}},
        "spec": {"containers": [{"name": "c"}]},
        "status": {"phase": "Running"}
    });
    cluster_of(
        &[node("fake-node-1"), node("fake-node-2")],
        &[busy],
        ready,
        fail_writes,
    )
}

async fn post(cluster: Arc<FakeCluster>, settings: Settings, body: Vec<u8>) -> (StatusCode, Value) {
    post_to("/filter", cluster, settings, body).await
}

async fn post_to(
    path: &str,
    cluster: Arc<FakeCluster>,
    settings: Settings,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let app = router(cluster, settings);
    let res = app
        .oneshot(
            Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
    (status, value)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn node_names(reply: &Value) -> Vec<String> {
    reply["Nodes"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_gpu_pod_gets_one_node_and_its_decision_is_written() {
    runtime().block_on(async {
        let c = cluster(true, false);
        let body = serde_json::to_vec(&gpu_args()).unwrap();
        let (status, reply) = post(c.clone(), Settings::default(), body).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(reply["Error"], "", "{reply}");
        // 6000 + 3000 MiB does not fit fake-node-1's 8192: the empty node is
        // the one, and the reply carries exactly that node.
        assert_eq!(node_names(&reply), vec!["fake-node-2"], "{reply}");
        assert_eq!(
            reply["FailedNodes"]["fake-node-1"], "CardInsufficientMemory",
            "{reply}"
        );
        assert!(
            reply["NodeNames"].is_null(),
            "asked with Nodes, answered with Nodes"
        );
        let writes = c.writes.lock().unwrap();
        assert_eq!(writes.len(), 1);
        let (ns, name, ann) = &writes[0];
        assert_eq!((ns.as_str(), name.as_str()), ("default", "ext-1"));
        assert_eq!(
            ann["hami.io/vgpu-devices-to-allocate"],
            "GPU-fake-node-2,NVIDIA-T4,3000,30:;"
        );
        assert_eq!(
            ann["hami.io/vgpu-devices-allocated"],
            ann["hami.io/vgpu-devices-to-allocate"]
        );
        assert_eq!(ann["hami.io/vgpu-node"], "fake-node-2");
        assert_eq!(ann["hami.io/container-names"], "c");
    });
}

/// With a decision key, the written decision carries a seal that holds for
/// exactly this pod, node and allocation (what the node agent checks).
#[test]
fn sealed_decisions_verify_for_their_pod_only() {
    runtime().block_on(async {
        let key = hami_api::seal::DecisionKey::new(&[9; 32]);
        let settings = Settings {
            decision_key: Some(Arc::new(key.clone())),
            ..Settings::default()
        };
        let c = cluster(true, false);
        let body = serde_json::to_vec(&gpu_args()).unwrap();
        let (_, reply) = post(c.clone(), settings, body).await;
        assert_eq!(reply["Error"], "", "{reply}");
        let (_, _, ann) = c.writes.lock().unwrap()[0].clone();
        let uid = gpu_args()["Pod"]["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_owned();
        key.check_pod(&uid, &ann).unwrap();
        assert!(key.check_pod("another-pod", &ann).is_err());
        let mut moved = ann.clone();
        moved.insert("hami.io/vgpu-node".into(), "fake-node-1".into());
        assert!(key.check_pod(&uid, &moved).is_err());
        // Without a key nothing is sealed (and nothing else changes).
        let c = cluster(true, false);
        let body = serde_json::to_vec(&gpu_args()).unwrap();
        post(c.clone(), Settings::default(), body).await;
        assert!(!c.writes.lock().unwrap()[0]
            .2
            .contains_key("hami.io/decision-seal"));
    });
}

/// A privileged (or hostPID, or /dev-mounting) pod that skipped the webhook
/// is still refused by /filter, with nothing written.
#[test]
fn filter_refuses_pods_whose_limits_cannot_hold() {
    runtime().block_on(async {
        for (field, value) in [
            (
                "/Pod/spec/containers/0/securityContext",
                json!({"privileged": true}),
            ),
            (
                "/Pod/spec/containers/0/securityContext",
                json!({"capabilities": {"add": ["SYS_ADMIN"]}}),
            ),
            ("/Pod/spec/hostPID", json!(true)),
            (
                "/Pod/spec/volumes",
                json!([{"name": "dev", "hostPath": {"path": "/dev"}}]),
            ),
        ] {
            let mut args = gpu_args();
            let (parent, key) = field.rsplit_once('/').unwrap();
            args.pointer_mut(parent).unwrap()[key] = value.clone();
            let c = cluster(true, false);
            let (status, reply) = post(
                c.clone(),
                Settings::default(),
                args.to_string().into_bytes(),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            assert!(
                reply["Error"]
                    .as_str()
                    .unwrap()
                    .contains("limits cannot hold"),
                "{value}: {reply}"
            );
            assert!(c.writes.lock().unwrap().is_empty(), "{value}");
        }
    });
}

#[test]
fn binpack_prefers_the_busier_node_when_both_fit() {
    runtime().block_on(async {
        let c = cluster(true, false);
        let mut args = gpu_args();
        args["Pod"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpumem"] =
            json!("1000");
        let (_, reply) = post(
            c.clone(),
            Settings::default(),
            serde_json::to_vec(&args).unwrap(),
        )
        .await;
        assert_eq!(node_names(&reply), vec!["fake-node-1"], "{reply}");
        args["Pod"]["metadata"]["annotations"]["hami.io/node-scheduler-policy"] = json!("spread");
        let (_, reply) = post(c, Settings::default(), serde_json::to_vec(&args).unwrap()).await;
        assert_eq!(node_names(&reply), vec!["fake-node-2"], "{reply}");
    });
}

#[test]
fn a_pod_no_node_can_take_gets_a_filtering_failed_event() {
    runtime().block_on(async {
        let c = cluster(true, false);
        let mut args = gpu_args();
        args["Pod"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpumem"] = json!("9000");
        let (_, reply) = post(c.clone(), Settings::default(), serde_json::to_vec(&args).unwrap()).await;
        assert!(node_names(&reply).is_empty(), "{reply}");
        assert_eq!(reply["FailedNodes"]["fake-node-2"], "CardInsufficientMemory");
        let events = c.events.lock().unwrap().clone();
        assert_eq!(
            events,
            vec!["default/ext-1/5a53271d-20c3-4b39-b421-64490ff91216 FilteringFailed: 2/2 CardInsufficientMemory"]
        );
        assert!(c.writes.lock().unwrap().is_empty());
    });
}

#[test]
fn a_pod_without_device_requests_passes_untouched() {
    runtime().block_on(async {
        let c = cluster(false, false);
        let (status, reply) = post(
            c.clone(),
            Settings::default(),
            serde_json::to_vec(&fixture()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            node_names(&reply),
            vec!["fake-node-1", "fake-node-2"],
            "{reply}"
        );
        assert!(c.writes.lock().unwrap().is_empty());
    });
}

#[test]
fn dry_run_decides_without_writing() {
    runtime().block_on(async {
        let c = cluster(true, false);
        let settings = Settings {
            dry_run: true,
            ..Settings::default()
        };
        let (_, reply) = post(
            c.clone(),
            settings,
            serde_json::to_vec(&gpu_args()).unwrap(),
        )
        .await;
        assert_eq!(node_names(&reply), vec!["fake-node-2"]);
        assert!(c.writes.lock().unwrap().is_empty());
    });
}

#[test]
fn bad_requests_get_a_json_error() {
    runtime().block_on(async {
        let settings = || Settings {
            body_limit: 64 << 10,
            ..Settings::default()
        };
        let (status, reply) = post(cluster(true, false), settings(), b"{\"Pod\": [".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            reply["Error"]
                .as_str()
                .unwrap()
                .contains("malformed ExtenderArgs"),
            "{reply}"
        );

        let mut huge = gpu_args();
        huge["Pod"]["metadata"]["annotations"]["padding"] = json!("x".repeat(128 << 10));
        let (status, reply) = post(
            cluster(true, false),
            settings(),
            serde_json::to_vec(&huge).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            reply["Error"].as_str().unwrap().contains("request body"),
            "{reply}"
        );

        let mut bad_policy = gpu_args();
        bad_policy["Pod"]["metadata"]["annotations"]["hami.io/gpu-scheduler-policy"] =
            json!("fastest");
        let c = cluster(true, false);
        let (_, reply) = post(
            c.clone(),
            settings(),
            serde_json::to_vec(&bad_policy).unwrap(),
        )
        .await;
        assert!(
            reply["Error"]
                .as_str()
                .unwrap()
                .contains("hami.io/gpu-scheduler-policy"),
            "{reply}"
        );
        assert!(c.writes.lock().unwrap().is_empty());

        let mut bad_quantity = gpu_args();
        bad_quantity["Pod"]["spec"]["containers"][0]["resources"]["limits"]
            ["nvidia.com/gpucores"] = json!("300");
        let (_, reply) = post(
            cluster(true, false),
            settings(),
            serde_json::to_vec(&bad_quantity).unwrap(),
        )
        .await;
        assert!(
            reply["Error"].as_str().unwrap().contains("over 100"),
            "{reply}"
        );
    });
}

#[test]
fn no_decision_before_sync_or_when_the_write_fails() {
    runtime().block_on(async {
        let body = serde_json::to_vec(&gpu_args()).unwrap();
        let (status, reply) = post(cluster(false, false), Settings::default(), body.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            reply["Error"].as_str().unwrap().contains("not synced"),
            "{reply}"
        );
        let (_, reply) = post(cluster(true, true), Settings::default(), body).await;
        assert!(
            reply["Error"]
                .as_str()
                .unwrap()
                .contains("the API server said no"),
            "{reply}"
        );
        assert!(
            reply["Nodes"].is_null(),
            "no node without a recorded decision"
        );
    });
}

#[test]
fn bind_takes_the_captured_body_and_reports_errors_in_json() {
    runtime().block_on(async {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/k8s/sample-extender-binding-args.json");
        let body = std::fs::read(path).unwrap();
        // The captured bind is for the captured pod (ext-1) on fake-node-2:
        // spread sends it there, the emptier node.
        let settings = Settings {
            node_policy: hami_api::NodeSchedulerPolicy::Spread,
            ..Settings::default()
        };
        let c = cluster(true, false);
        let (_, filtered) = post(
            c.clone(),
            settings.clone(),
            gpu_args().to_string().into_bytes(),
        )
        .await;
        assert_eq!(node_names(&filtered), ["fake-node-2"], "{filtered}");
        let (status, reply) = post_to("/bind", c.clone(), settings.clone(), body.clone()).await;
        assert_eq!(
            (status, reply.clone()),
            (StatusCode::OK, json!({"Error": ""}))
        );
        let binds = c.binds.lock().unwrap().clone();
        assert_eq!(binds.len(), 1);
        assert_eq!(
            (binds[0].pod_name.as_str(), binds[0].node.as_str()),
            ("ext-1", "fake-node-2")
        );
        // A decision binds once.
        let (_, reply) = post_to("/bind", c.clone(), settings.clone(), body.clone()).await;
        assert!(
            reply["Error"]
                .as_str()
                .unwrap()
                .contains("no scheduling decision"),
            "{reply}"
        );

        // A failed bind keeps the decision for the scheduler's retry.
        let failing = cluster(true, true);
        let settings = Settings {
            node_policy: hami_api::NodeSchedulerPolicy::Spread,
            ..Settings::default()
        };
        settings.decisions.record(
            "5a53271d-20c3-4b39-b421-64490ff91216",
            ["fake-node-2".to_owned()],
            hami_controller::pending::Delivery::DevicePlugin,
        );
        for _ in 0..2 {
            let (_, reply) =
                post_to("/bind", failing.clone(), settings.clone(), body.clone()).await;
            assert!(
                reply["Error"].as_str().unwrap().contains("node lock"),
                "{reply}"
            );
        }

        let (status, reply) = post_to(
            "/bind",
            cluster(true, false),
            Settings::default(),
            b"{}".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            reply["Error"]
                .as_str()
                .unwrap()
                .contains("malformed ExtenderBindingArgs"),
            "{reply}"
        );

        let dry = Settings {
            dry_run: true,
            ..Settings::default()
        };
        let c = cluster(true, false);
        let (_, reply) = post_to("/bind", c.clone(), dry, body).await;
        assert!(
            reply["Error"].as_str().unwrap().contains("dry run"),
            "{reply}"
        );
        assert!(c.binds.lock().unwrap().is_empty());
    });
}

/// Anyone who could reach the extender could bind any pending pod to any
/// node: a bind is carried out only for this controller's own decision.
#[test]
fn bind_refuses_what_this_controller_did_not_decide() {
    runtime().block_on(async {
        let c = cluster(true, false);
        let settings = Settings::default();
        let bind = |uid: &str, node: &str| {
            json!({"PodName": "victim", "PodNamespace": "team-b", "PodUID": uid, "Node": node})
                .to_string()
                .into_bytes()
        };
        // Never filtered: refused.
        let (_, reply) = post_to(
            "/bind",
            c.clone(),
            settings.clone(),
            bind("victim-uid", "fake-node-1"),
        )
        .await;
        assert!(
            reply["Error"]
                .as_str()
                .unwrap()
                .contains("no scheduling decision"),
            "{reply}"
        );
        // Filtered onto one node, asked onto the other: refused.
        let (_, filtered) = post(
            c.clone(),
            settings.clone(),
            gpu_args().to_string().into_bytes(),
        )
        .await;
        let chosen = node_names(&filtered).remove(0);
        let other = if chosen == "fake-node-1" {
            "fake-node-2"
        } else {
            "fake-node-1"
        };
        let uid = "5a53271d-20c3-4b39-b421-64490ff91216";
        let (_, reply) = post_to("/bind", c.clone(), settings.clone(), bind(uid, other)).await;
        let error = reply["Error"].as_str().unwrap();
        assert!(error.contains(&format!("chose {chosen}")), "{reply}");
        assert!(c.binds.lock().unwrap().is_empty(), "nothing was bound");
        // The decision itself still binds.
        let (_, reply) = post_to("/bind", c.clone(), settings.clone(), bind(uid, &chosen)).await;
        assert_eq!(reply, json!({"Error": ""}));
        // A pod passed through untouched may be bound to a node it was passed.
        let mut plain = fixture();
        plain["Pod"]["metadata"]["uid"] = json!("plain-uid");
        let (_, passed) = post(c.clone(), settings.clone(), plain.to_string().into_bytes()).await;
        let passed = node_names(&passed);
        assert!(passed.len() > 1, "{passed:?}");
        let (_, reply) = post_to(
            "/bind",
            c.clone(),
            settings.clone(),
            bind("plain-uid", &passed[1]),
        )
        .await;
        assert_eq!(reply, json!({"Error": ""}));
        // The GPU pod waits for the device plugin; the plain one for nothing.
        assert_eq!(
            *c.deliveries.lock().unwrap(),
            [Delivery::DevicePlugin, Delivery::Nothing]
        );
        let (_, reply) = post_to(
            "/bind",
            c.clone(),
            settings.clone(),
            bind("plain-uid", "elsewhere"),
        )
        .await;
        assert!(
            reply["Error"]
                .as_str()
                .unwrap()
                .contains("no scheduling decision"),
            "{reply}"
        );
    });
}

#[test]
fn metrics_show_the_busy_device_under_hami_names() {
    runtime().block_on(async {
        let app = metrics_router(cluster(true, false), Settings::default());
        let res = app
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
        let text = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        let line = r#"GPUDeviceMemoryAllocated{devicecores="50",deviceidx="0",deviceuuid="GPU-fake-node-1",nodeid="fake-node-1",zone="vGPU"} 6291456000"#;
        assert!(text.lines().any(|l| l == line), "{text}");
        assert!(text.contains(r#"podname="busy""#), "{text}");
    });
}

/// Two NPU nodes: fake-node-1 with vNPU templates only, fake-node-2 also
/// allowing `hami-core` mode; fake-node-2 has 4 NVIDIA GPUs with NVLink
/// between 2 and 3 only.
fn mixed_cluster() -> Arc<FakeCluster> {
    let npus = |name: &str| {
        json!([
            {"id": format!("{name}-npu0"), "count": 4, "devmem": 65536, "devcore": 100, "type": "Ascend910B3", "health": true},
            {"id": format!("{name}-npu1"), "index": 1, "count": 4, "devmem": 65536, "devcore": 100, "type": "Ascend910B3", "health": true}
        ])
        .to_string()
    };
    let gpus: Vec<Value> = (0..4)
        .map(|i| json!({"id": format!("GPU-{i}"), "index": i, "count": 10, "devmem": 81920, "devcore": 100, "type": "NVIDIA-H100", "health": true}))
        .collect();
    let links = hami_api::LinkScores::from_pairs([
        ("GPU-0", "GPU-1", 10),
        ("GPU-0", "GPU-2", 10),
        ("GPU-0", "GPU-3", 10),
        ("GPU-1", "GPU-2", 10),
        ("GPU-1", "GPU-3", 10),
        ("GPU-2", "GPU-3", 1800),
    ]);
    cluster_of(
        &[
            json!({"metadata": {"name": "fake-node-1", "annotations": {
                "hami.io/node-register-Ascend910B3": npus("fake-node-1")}}}),
            json!({"metadata": {"name": "fake-node-2", "annotations": {
                "hami.io/node-register-Ascend910B3": npus("fake-node-2"),
                "hami-vnpu-core": "true",
                "hami.io/node-nvidia-register": Value::Array(gpus).to_string(),
                "hami.io/node-nvidia-score": links.encode()}}}),
        ],
        &[],
        true,
        false,
    )
}

fn args_with(limits: Value, annotations: Value) -> Vec<u8> {
    let mut args = fixture();
    args["Pod"]["spec"]["containers"][0]["resources"]["limits"] = limits;
    for (k, v) in annotations.as_object().unwrap() {
        args["Pod"]["metadata"]["annotations"][k] = v.clone();
    }
    serde_json::to_vec(&args).unwrap()
}

#[test]
fn ascend_pods_get_a_template_or_raw_memory_under_their_own_keys() {
    runtime().block_on(async {
        // Template mode: 10000 MiB rounds up to vir05_1c_16g (16384 MiB, 5 of
        // 20 AI cores); spread puts it on the first node with the emptiest NPU.
        let c = mixed_cluster();
        let body = args_with(
            json!({"huawei.com/Ascend910B3": "1", "huawei.com/Ascend910B3-memory": "10000"}),
            json!({"hami.io/node-scheduler-policy": "spread"}),
        );
        let (status, reply) = post(c.clone(), Settings::default(), body).await;
        assert_eq!(
            (status, reply["Error"].as_str()),
            (StatusCode::OK, Some("")),
            "{reply}"
        );
        assert_eq!(node_names(&reply), vec!["fake-node-1"], "{reply}");
        let ann = c.writes.lock().unwrap()[0].2.clone();
        assert_eq!(
            ann["hami.io/Ascend910B3-devices-allocated"],
            "fake-node-1-npu0,Ascend910B3,16384,25:;"
        );
        assert_eq!(
            ann["hami.io/Ascend910B3-devices-to-allocate"],
            ann["hami.io/Ascend910B3-devices-allocated"]
        );
        assert_eq!(
            ann["huawei.com/Ascend910B3"],
            r#"[{"UUID":"fake-node-1-npu0","temp":"vir05_1c_16g"}]"#
        );
        assert!(!ann.contains_key("hami.io/vgpu-devices-allocated"));

        // hami-core mode: raw MiB, and only the node that allows it.
        let c = mixed_cluster();
        let body = args_with(
            json!({"huawei.com/Ascend910B3": "1", "huawei.com/Ascend910B3-memory": "10000",
                   "huawei.com/Ascend910B3-core": "30"}),
            json!({"huawei.com/vnpu-mode": "hami-core"}),
        );
        let settings = Settings::default();
        let (_, reply) = post(c.clone(), settings.clone(), body).await;
        assert_eq!(node_names(&reply), vec!["fake-node-2"], "{reply}");
        assert_eq!(
            reply["FailedNodes"]["fake-node-1"], "NodeUnfitPod",
            "{reply}"
        );
        assert_eq!(
            c.writes.lock().unwrap()[0].2["huawei.com/Ascend910B3"],
            r#"[{"UUID":"fake-node-2-npu0","memory":10000,"core":30}]"#
        );
        // The annotation hook delivers hami-core NPUs and answers no
        // Allocate: the bind must not wait for one (no node lock).
        let bind = json!({"PodName": "ext-1", "PodNamespace": "default",
            "PodUID": "5a53271d-20c3-4b39-b421-64490ff91216", "Node": "fake-node-2"});
        let (_, reply) = post_to("/bind", c.clone(), settings, bind.to_string().into_bytes()).await;
        assert_eq!(reply, json!({"Error": ""}));
        assert_eq!(*c.deliveries.lock().unwrap(), [Delivery::Annotation]);
    });
}

#[test]
fn topology_aware_pods_get_the_nvlinked_pair() {
    runtime().block_on(async {
        let c = mixed_cluster();
        let body = args_with(
            json!({"nvidia.com/gpu": "2", "nvidia.com/gpumem": "1000"}),
            json!({"hami.io/gpu-scheduler-policy": "topology-aware"}),
        );
        let (_, reply) = post(c.clone(), Settings::default(), body).await;
        assert_eq!(node_names(&reply), vec!["fake-node-2"], "{reply}");
        // fake-node-1 has no NVIDIA devices at all.
        assert_eq!(
            reply["FailedNodes"]["fake-node-1"],
            "NodeInsufficientDevice"
        );
        assert_eq!(
            c.writes.lock().unwrap()[0].2["hami.io/vgpu-devices-allocated"],
            "GPU-2,NVIDIA-H100,1000,0:GPU-3,NVIDIA-H100,1000,0:;"
        );
        // Binpack alone takes the first two.
        let c = mixed_cluster();
        let body = args_with(
            json!({"nvidia.com/gpu": "2", "nvidia.com/gpumem": "1000"}),
            json!({}),
        );
        post(c.clone(), Settings::default(), body).await;
        assert_eq!(
            c.writes.lock().unwrap()[0].2["hami.io/vgpu-devices-allocated"],
            "GPU-0,NVIDIA-H100,1000,0:GPU-1,NVIDIA-H100,1000,0:;"
        );
    });
}

#[test]
fn a_pod_asking_for_two_families_is_refused() {
    runtime().block_on(async {
        let c = mixed_cluster();
        let body = args_with(
            json!({"nvidia.com/gpu": "1", "huawei.com/Ascend910B3": "1"}),
            json!({}),
        );
        let (status, reply) = post(c.clone(), Settings::default(), body).await;
        assert_eq!(status, StatusCode::OK);
        let e = reply["Error"].as_str().unwrap();
        assert!(e.contains("nvidia") && e.contains("Ascend910B3"), "{e}");
        assert!(c.writes.lock().unwrap().is_empty());
    });
}

#[test]
fn a_stalled_decision_gets_an_error_before_the_scheduler_gives_up() {
    runtime().block_on(async {
        let c = cluster(true, false);
        let stalled = Arc::new(FakeCluster {
            state: c.state.clone(),
            ready: true,
            fail_writes: false,
            stall_writes: true,
            writes: Mutex::new(Vec::new()),
            binds: Mutex::new(Vec::new()),
            deliveries: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            templates: Mutex::new(Vec::new()),
        });
        let settings = Settings {
            request_timeout: std::time::Duration::from_millis(200),
            ..Settings::default()
        };
        let body = serde_json::to_vec(&gpu_args()).unwrap();
        let started = std::time::Instant::now();
        let (status, reply) = post(stalled, settings, body).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{reply}");
        assert!(
            reply["Error"]
                .as_str()
                .unwrap()
                .contains("no decision within"),
            "{reply}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    });
}

#[test]
fn only_the_leader_decides() {
    runtime().block_on(async {
        let leader = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let settings = Settings {
            leader: Some(leader.clone()),
            ..Settings::default()
        };
        let c = cluster(true, false);
        let body = serde_json::to_vec(&gpu_args()).unwrap();
        let (status, reply) = post(c.clone(), settings.clone(), body.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(reply["Error"].as_str().unwrap().contains("not the leader"));
        let (status, _) = post_to("/bind", c.clone(), settings.clone(), b"{}".to_vec()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(c.writes.lock().unwrap().is_empty() && c.binds.lock().unwrap().is_empty());
        let ready = router(c.clone(), settings.clone())
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        // Elected: the same replica now decides.
        leader.store(true, std::sync::atomic::Ordering::Release);
        let (status, reply) = post(c.clone(), settings, body).await;
        assert_eq!(
            (status, reply["Error"].as_str()),
            (StatusCode::OK, Some(""))
        );
        assert_eq!(c.writes.lock().unwrap().len(), 1);
    });
}
