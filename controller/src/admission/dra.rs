//! DRA conversion (HAMi-DRA style, Kubernetes ≥ 1.34, `resource.k8s.io/v1`):
//! a container's device-plugin-style request (`nvidia.com/gpu: 2`,
//! `gpumem: 3000`, `gpucores: 30`) becomes a ResourceClaimTemplate with one
//! `exactly` request of that many devices of the hami DeviceClass, asking
//! each device for `memory` (bytes) and `cores` of consumable capacity, with
//! CEL selectors from `use-gpuuuid`/`nouse-gpuuuid`/`use-gputype`/`nouse-gputype`.
//!
//! The pod references the template from `spec.resourceClaims` and the
//! container from `resources.claims`; the extended resources are removed.
//! Kubernetes then creates one ResourceClaim per pod from each template,
//! owned by the pod, so the claims are garbage-collected with it (no delete
//! webhook). Templates are named by a hash of their content and reused by
//! every pod asking the same.

use serde_json::{json, Value};

use super::json_patch::{pointer, PatchOp};
use crate::schedule::request::{ContainerRequest, MemoryRequest, Selection};

/// The DRA driver and DeviceClass the node agent publishes devices under.
pub const DRIVER: &str = "hami-core-gpu.project-hami.io";
pub const DEVICE_CLASS: &str = "hami-core-gpu.project-hami.io";

/// The DeviceClass to install (the chart ships it): every device of the
/// hami driver.
pub fn device_class() -> Value {
    json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": DEVICE_CLASS},
        "spec": {"selectors": [{"cel": {"expression": format!("device.driver == \"{DRIVER}\"")}}]}
    })
}

fn cel_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|i| serde_json::to_string(i).expect("a string serialises"))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// The CEL selectors for a pod's selection annotations. Types match as
/// HAMi matches them: case-insensitive substrings of the device type.
pub fn selectors(sel: &Selection) -> Vec<String> {
    let attr = |name: &str| format!("device.attributes[\"{DRIVER}\"].{name}");
    let mut out = Vec::new();
    if !sel.use_uuids.is_empty() {
        out.push(format!("{} in {}", attr("uuid"), cel_list(&sel.use_uuids)));
    }
    if !sel.nouse_uuids.is_empty() {
        out.push(format!(
            "!({} in {})",
            attr("uuid"),
            cel_list(&sel.nouse_uuids)
        ));
    }
    let contains = |t: &String| {
        format!(
            "{}.lowerAscii().contains({})",
            attr("type"),
            serde_json::to_string(&t.to_ascii_lowercase()).expect("a string serialises")
        )
    };
    if !sel.use_types.is_empty() {
        let any: Vec<String> = sel.use_types.iter().map(contains).collect();
        out.push(any.join(" || "));
    }
    for t in &sel.nouse_types {
        out.push(format!("!{}", contains(t)));
    }
    out
}

/// One container's template spec. Memory as a percentage cannot be asked
/// of consumable capacity (it is absolute): such requests keep the
/// extender path, see [`convertible`].
pub fn template_spec(req: &ContainerRequest, sel: &Selection) -> Value {
    let mut capacity = serde_json::Map::new();
    if let MemoryRequest::Mib(m) = req.memory {
        capacity.insert(
            "memory".into(),
            json!(format!("{}", m.saturating_mul(1 << 20))),
        );
    }
    if req.cores > 0 {
        capacity.insert("cores".into(), json!(req.cores.to_string()));
    }
    let mut exactly = json!({
        "deviceClassName": DEVICE_CLASS,
        "allocationMode": "ExactCount",
        "count": req.count,
    });
    let cel = selectors(sel);
    if !cel.is_empty() {
        exactly["selectors"] = cel
            .into_iter()
            .map(|e| json!({"cel": {"expression": e}}))
            .collect();
    }
    if !capacity.is_empty() {
        exactly["capacity"] = json!({ "requests": capacity });
    }
    json!({"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}})
}

/// Whether a request can be said in DRA terms.
pub fn convertible(req: &ContainerRequest) -> bool {
    !matches!(req.memory, MemoryRequest::Percent(p) if p != 100)
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The template object for `spec`, named by its content.
pub fn template(namespace: &str, spec: &Value) -> Value {
    let name = format!("hami-gpu-{:016x}", fnv(&spec.to_string()));
    json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "hami-controller"}
        },
        "spec": {"spec": spec}
    })
}

/// The pod-level claim name for a container: a DNS label (lowercase, at
/// most 63 characters), `hami-<container>` or `hami-init-<container>`.
pub fn claim_name(list: &str, container: &str) -> String {
    let prefix = if list == "initContainers" {
        "hami-init-"
    } else {
        "hami-"
    };
    let mut name: String = format!("{prefix}{container}")
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    while name.ends_with('-') {
        name.pop();
    }
    name
}

/// The conversion of one pod: the patch and the templates it references.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversion {
    pub ops: Vec<PatchOp>,
    pub templates: Vec<Value>,
}

/// Converts the containers `(list, index, name, request)` of `object`,
/// removing `resource_names` from their limits and requests.
pub fn convert(
    object: &Value,
    namespace: &str,
    containers: &[(&str, usize, &str, ContainerRequest)],
    selection: &Selection,
    resource_names: &[&str],
) -> Conversion {
    let mut ops = Vec::new();
    let mut templates: Vec<Value> = Vec::new();
    let mut pod_claims: Vec<Value> = Vec::new();
    for (list, index, name, req) in containers {
        let t = template(namespace, &template_spec(req, selection));
        let claim = claim_name(list, name);
        let i = index.to_string();
        let container = &object["spec"][*list][*index];
        for section in ["limits", "requests"] {
            for r in resource_names {
                if container["resources"][section].get(*r).is_some() {
                    ops.push(PatchOp::Remove {
                        path: pointer(&["spec", list, &i, "resources", section, r]),
                    });
                }
            }
        }
        let entry = json!({"name": claim});
        ops.push(if container["resources"]["claims"].is_array() {
            PatchOp::Add {
                path: pointer(&["spec", list, &i, "resources", "claims", "-"]),
                value: entry,
            }
        } else if container["resources"].is_object() {
            PatchOp::Add {
                path: pointer(&["spec", list, &i, "resources", "claims"]),
                value: json!([entry]),
            }
        } else {
            PatchOp::Add {
                path: pointer(&["spec", list, &i, "resources"]),
                value: json!({"claims": [entry]}),
            }
        });
        pod_claims.push(json!({
            "name": claim,
            "resourceClaimTemplateName": t["metadata"]["name"],
        }));
        if !templates.contains(&t) {
            templates.push(t);
        }
    }
    if !pod_claims.is_empty() {
        if object["spec"]["resourceClaims"].is_array() {
            for c in pod_claims {
                ops.push(PatchOp::Add {
                    path: "/spec/resourceClaims/-".into(),
                    value: c,
                });
            }
        } else {
            ops.push(PatchOp::Add {
                path: "/spec/resourceClaims".into(),
                value: Value::Array(pod_claims),
            });
        }
    }
    Conversion { ops, templates }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_names_are_dns_labels() {
        assert_eq!(claim_name("containers", "main"), "hami-main");
        assert_eq!(claim_name("initContainers", "Warm_Up"), "hami-init-warm-up");
        let long = claim_name("containers", &"x".repeat(100));
        assert_eq!(long.len(), 63);
    }

    #[test]
    fn selectors_follow_the_annotations() {
        let sel = Selection {
            use_uuids: vec!["GPU-a".into(), "GPU-b".into()],
            nouse_uuids: vec!["GPU-\"x".into()],
            use_types: vec!["A100".into(), "h100".into()],
            nouse_types: vec!["PCIE".into()],
            numa_bind: false,
        };
        let d = "device.attributes[\"hami-core-gpu.project-hami.io\"]";
        assert_eq!(
            selectors(&sel),
            vec![
                format!("{d}.uuid in [\"GPU-a\", \"GPU-b\"]"),
                format!("!({d}.uuid in [\"GPU-\\\"x\"])"),
                format!("{d}.type.lowerAscii().contains(\"a100\") || {d}.type.lowerAscii().contains(\"h100\")"),
                format!("!{d}.type.lowerAscii().contains(\"pcie\")"),
            ]
        );
        assert!(selectors(&Selection::default()).is_empty());
    }

    #[test]
    fn a_request_becomes_an_exact_count_with_capacity() {
        let req = ContainerRequest {
            count: 2,
            memory: MemoryRequest::Mib(3000),
            cores: 30,
        };
        assert_eq!(
            template_spec(&req, &Selection::default()),
            json!({"devices": {"requests": [{"name": "gpu", "exactly": {
                "deviceClassName": "hami-core-gpu.project-hami.io",
                "allocationMode": "ExactCount", "count": 2,
                "capacity": {"requests": {"memory": "3145728000", "cores": "30"}}}}]}})
        );
        let whole = ContainerRequest {
            count: 1,
            memory: MemoryRequest::Percent(100),
            cores: 0,
        };
        assert!(convertible(&whole));
        assert!(
            template_spec(&whole, &Selection::default())["devices"]["requests"][0]["exactly"]
                .get("capacity")
                .is_none()
        );
        assert!(!convertible(&ContainerRequest {
            memory: MemoryRequest::Percent(50),
            ..whole
        }));
        // Same content, same name: templates are shared.
        let a = template("ns", &template_spec(&req, &Selection::default()));
        let b = template("ns", &template_spec(&req, &Selection::default()));
        assert_eq!(a["metadata"]["name"], b["metadata"]["name"]);
        assert!(a["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("hami-gpu-"));
    }
}
