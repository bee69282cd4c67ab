//! The DRA kubelet plugin over real gRPC on unix sockets: kubelet's plugin
//! watcher side asks the registration socket what the plugin is, then calls
//! NodePrepareResources / NodeUnprepareResources on both API versions. The
//! claims come from an in-memory API; the checkpoint is checked to make a
//! restarted plugin answer the same without asking again.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use hami_node::dra::registration::registration_client::RegistrationClient;
use hami_node::dra::registration::InfoRequest;
use hami_node::dra::{v1, v1beta1, ClaimSource, DraDriver, DRIVER};
use hami_node::kubelet::connect;
use serde_json::{json, Value};

#[derive(Default)]
struct Claims {
    objects: Mutex<BTreeMap<String, Value>>,
    reads: Mutex<usize>,
}

struct Shared(Arc<Claims>);

impl ClaimSource for Shared {
    fn get(&self, namespace: &str, name: &str) -> BoxFuture<'static, Result<Value, String>> {
        *self.0.reads.lock().unwrap() += 1;
        let found = self
            .0
            .objects
            .lock()
            .unwrap()
            .get(&format!("{namespace}/{name}"))
            .cloned();
        Box::pin(async move { found.ok_or_else(|| "not found".to_owned()) })
    }
}

fn claim(uid: &str, device: &str, memory: &str, cores: &str) -> Value {
    json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
    "metadata": {"name": "train-gpu", "namespace": "team", "uid": uid},
    "status": {"allocation": {"devices": {"results": [
        {"request": "gpu", "driver": DRIVER, "pool": "node-1", "device": device,
         "consumedCapacity": {"memory": memory, "cores": cores}},
        {"request": "nic", "driver": "other.example.com", "pool": "node-1", "device": "eth0"}
    ]}}}})
}

fn writer(work: &std::path::Path) -> Arc<hami_node::device_plugin::SpecWriter> {
    common::mock_writer(work)
}

#[test]
fn prepare_and_unprepare_over_grpc_with_a_checkpoint() {
    common::runtime().block_on(async {
        let work = tempfile::tempdir().unwrap();
        let claims = Arc::new(Claims::default());
        claims.objects.lock().unwrap().insert(
            "team/train-gpu".into(),
            claim("uid-1", "gpu-1", "3000Mi", "30"),
        );
        let checkpoint = work.path().join("dra-checkpoint.json");
        let driver = Arc::new(
            DraDriver::new(
                Arc::new(Shared(claims.clone())),
                writer(work.path()),
                checkpoint.clone(),
            )
            .unwrap(),
        );
        let plugins = work.path().join("plugins");
        let registry = work.path().join("plugins_registry");
        let server = hami_node::dra::serve(driver, &plugins, &registry).unwrap();

        // Kubelet's plugin watcher finds the registration socket.
        let reg = connect(&registry.join(format!("{DRIVER}-reg.sock")))
            .await
            .unwrap();
        let info = RegistrationClient::new(reg)
            .get_info(InfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (info.r#type.as_str(), info.name.as_str()),
            ("DRAPlugin", DRIVER)
        );
        let dra_sock = plugins.join(DRIVER).join("dra.sock");
        assert_eq!(info.endpoint, dra_sock.display().to_string());
        assert_eq!(
            info.supported_versions,
            ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
        );

        let channel = connect(&dra_sock).await.unwrap();
        let mut v1c = v1::dra_plugin_client::DraPluginClient::new(channel.clone());
        let the_claim = || v1::Claim {
            namespace: "team".into(),
            uid: "uid-1".into(),
            name: "train-gpu".into(),
        };
        let prepared = v1c
            .node_prepare_resources(v1::NodePrepareResourcesRequest {
                claims: vec![the_claim()],
            })
            .await
            .unwrap()
            .into_inner();
        let answer = &prepared.claims["uid-1"];
        assert_eq!(answer.error, "");
        assert_eq!(answer.devices.len(), 1, "only this driver's device");
        let d = &answer.devices[0];
        assert_eq!(
            (
                d.request_names.clone(),
                d.pool_name.as_str(),
                d.device_name.as_str()
            ),
            (vec!["gpu".to_owned()], "node-1", "gpu-1")
        );
        assert_eq!(d.cdi_device_ids, ["hami.io/vgpu=claim-uid-1"]);
        let spec: Value = serde_json::from_str(
            &std::fs::read_to_string(work.path().join("cdi/hami.io-vgpu_claim-uid-1.json"))
                .unwrap(),
        )
        .unwrap();
        let env: Vec<&str> = spec["devices"][0]["containerEdits"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(env.contains(&"CUDA_DEVICE_MEMORY_LIMIT_0=3000m"), "{env:?}");
        assert!(env.contains(&"CUDA_DEVICE_SM_LIMIT_0=30"), "{env:?}");
        assert_eq!(*claims.reads.lock().unwrap(), 1);

        // Idempotent: asked again (even with the claim gone from the API),
        // the same answer, from the checkpoint.
        claims.objects.lock().unwrap().clear();
        let again = v1c
            .node_prepare_resources(v1::NodePrepareResourcesRequest {
                claims: vec![the_claim()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.claims["uid-1"], *answer);
        assert_eq!(*claims.reads.lock().unwrap(), 1);

        // A restarted plugin reads the checkpoint and answers the same.
        server.abort();
        let restarted = DraDriver::new(
            Arc::new(Shared(claims.clone())),
            writer(work.path()),
            checkpoint.clone(),
        )
        .unwrap();
        let devices = restarted
            .prepare("team", "train-gpu", "uid-1")
            .await
            .unwrap();
        assert_eq!(devices[0].cdi_ids, ["hami.io/vgpu=claim-uid-1"]);
        assert_eq!(*claims.reads.lock().unwrap(), 1);
        let server = hami_node::dra::serve(Arc::new(restarted), &plugins, &registry).unwrap();

        // An unknown claim is an error in its entry, not a failed call.
        let channel = connect(&dra_sock).await.unwrap();
        let mut beta = v1beta1::dra_plugin_client::DraPluginClient::new(channel);
        let missing = beta
            .node_prepare_resources(v1beta1::NodePrepareResourcesRequest {
                claims: vec![v1beta1::Claim {
                    namespace: "team".into(),
                    uid: "uid-2".into(),
                    name: "gone".into(),
                }],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(missing.claims["uid-2"].error, "not found");

        // Unprepare (v1beta1): spec, state and checkpoint entry go; twice is fine.
        for _ in 0..2 {
            let out = beta
                .node_unprepare_resources(v1beta1::NodeUnprepareResourcesRequest {
                    claims: vec![v1beta1::Claim {
                        namespace: "team".into(),
                        uid: "uid-1".into(),
                        name: "train-gpu".into(),
                    }],
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(out.claims["uid-1"].error, "");
        }
        assert!(!work
            .path()
            .join("cdi/hami.io-vgpu_claim-uid-1.json")
            .exists());
        assert!(!work.path().join("state/claim-uid-1").exists());
        let saved: Value =
            serde_json::from_str(&std::fs::read_to_string(&checkpoint).unwrap()).unwrap();
        assert_eq!(saved["claims"], json!({}));

        // A damaged checkpoint stops the plugin instead of forgetting claims.
        std::fs::write(&checkpoint, "{not json").unwrap();
        let e = DraDriver::new(Arc::new(Shared(claims)), writer(work.path()), checkpoint)
            .err()
            .unwrap();
        assert!(e.contains("checkpoint"), "{e}");
        server.abort();
    });
}
