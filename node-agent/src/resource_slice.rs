//! The node's ResourceSlice (resource.k8s.io/v1) for the DRA driver: one
//! device per GPU with consumable `memory` (bytes) and `cores` (percent)
//! capacity and `allowMultipleAllocations`, so several claims can share a
//! device up to its capacity (DRAConsumableCapacity). Owned by the Node,
//! so it goes with it; rewritten only when the devices change.

use hami_api::DeviceInfo;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{json, Value};

use crate::dra::{device_name, DRIVER};

pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("resource.k8s.io", "v1", "ResourceSlice"),
        "resourceslices",
    )
}

pub fn slice_name(node: &str) -> String {
    format!("{node}-hami-core-gpu")
}

/// The slice for `devices` (registered, after scaling) on `node` (`uid`).
pub fn slice_for(node: &str, node_uid: &str, devices: &[DeviceInfo], generation: i64) -> Value {
    let devices: Vec<Value> = devices
        .iter()
        .filter(|d| d.health)
        .map(|d| {
            json!({
                "name": device_name(d.index),
                "attributes": {
                    "uuid": {"string": d.id},
                    "type": {"string": d.device_type},
                    "index": {"int": d.index},
                },
                "capacity": {
                    "memory": {"value": (u64::try_from(d.devmem).unwrap_or(0) << 20).to_string()},
                    "cores": {"value": d.devcore.max(0).to_string()},
                },
                "allowMultipleAllocations": true,
            })
        })
        .collect();
    json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {
            "name": slice_name(node),
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid, "controller": true}],
        },
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": generation, "resourceSliceCount": 1},
            "devices": devices,
        }
    })
}

/// Creates the slice, or replaces it when its devices changed (the pool's
/// generation goes up, as the API requires). Returns whether it wrote.
pub async fn publish(
    api: &Api<DynamicObject>,
    node: &str,
    node_uid: &str,
    devices: &[DeviceInfo],
) -> Result<bool, kube::Error> {
    let name = slice_name(node);
    match api.get_opt(&name).await? {
        None => {
            let object: DynamicObject =
                serde_json::from_value(slice_for(node, node_uid, devices, 1))
                    .expect("a slice is an object");
            api.create(&PostParams::default(), &object).await?;
            Ok(true)
        }
        Some(current) => {
            let generation = current.data["spec"]["pool"]["generation"]
                .as_i64()
                .unwrap_or(0);
            let same =
                slice_for(node, node_uid, devices, generation)["spec"] == current.data["spec"];
            if same {
                return Ok(false);
            }
            let mut object: DynamicObject =
                serde_json::from_value(slice_for(node, node_uid, devices, generation + 1))
                    .expect("a slice is an object");
            object.metadata.resource_version = current.metadata.resource_version.clone();
            api.replace(&name, &PostParams::default(), &object).await?;
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hami_kube_mock::{failure, next, respond};

    fn gpu(index: u32, healthy: bool) -> DeviceInfo {
        DeviceInfo {
            id: format!("GPU-{index}"),
            index,
            count: 10,
            devmem: 81920,
            devcore: 100,
            device_type: "NVIDIA-H100".into(),
            health: healthy,
            ..DeviceInfo::default()
        }
    }

    #[test]
    fn devices_carry_consumable_capacity() {
        let s = slice_for("n1", "u1", &[gpu(0, true), gpu(1, false)], 3);
        assert_eq!(
            s["spec"]["pool"],
            json!({"name": "n1", "generation": 3, "resourceSliceCount": 1})
        );
        let devices = s["spec"]["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 1, "unhealthy devices are not offered");
        assert_eq!(
            devices[0],
            json!({"name": "gpu-0",
                   "attributes": {"uuid": {"string": "GPU-0"}, "type": {"string": "NVIDIA-H100"}, "index": {"int": 0}},
                   "capacity": {"memory": {"value": "85899345920"}, "cores": {"value": "100"}},
                   "allowMultipleAllocations": true})
        );
        assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], "u1");
    }

    /// Create when missing; nothing when unchanged; replace with the next
    /// generation and the resourceVersion read when a device changed.
    #[test]
    fn the_calls_of_publishing() {
        hami_kube_mock::block_on(async {
            let (client, mut handle) = hami_kube_mock::pair("default");
            let api: Api<DynamicObject> = Api::all_with(client, &resource());
            let path = "/apis/resource.k8s.io/v1/resourceslices";
            let server = tokio::spawn(async move {
                let (m, uri, _, send) = next(&mut handle).await;
                assert_eq!(
                    (m, uri),
                    (http::Method::GET, format!("{path}/n1-hami-core-gpu"))
                );
                respond(send, 404, failure(404, "NotFound", "not found"));
                let (m, uri, body, send) = next(&mut handle).await;
                assert_eq!((m, uri), (http::Method::POST, format!("{path}?")));
                assert_eq!(body["spec"]["pool"]["generation"], 1);
                let mut stored = body.clone();
                stored["metadata"]["resourceVersion"] = json!("7");
                respond(send, 201, body);
                let (_, _, _, send) = next(&mut handle).await;
                respond(send, 200, stored.clone());
                let (_, _, _, send) = next(&mut handle).await;
                respond(send, 200, stored);
                let (m, uri, body, send) = next(&mut handle).await;
                assert_eq!(
                    (m, uri),
                    (http::Method::PUT, format!("{path}/n1-hami-core-gpu?"))
                );
                assert_eq!(body["metadata"]["resourceVersion"], "7");
                assert_eq!(body["spec"]["pool"]["generation"], 2);
                assert_eq!(body["spec"]["devices"].as_array().unwrap().len(), 1);
                respond(send, 200, body);
            });
            let two = [gpu(0, true), gpu(1, true)];
            assert!(publish(&api, "n1", "u1", &two).await.unwrap());
            assert!(!publish(&api, "n1", "u1", &two).await.unwrap());
            assert!(publish(&api, "n1", "u1", &[gpu(0, true), gpu(1, false)])
                .await
                .unwrap());
            server.await.unwrap();
        });
    }
}
