//! The mutating webhook's decision for one pod: untouched, patched, or
//! denied with a message the user sees in `kubectl`.
//!
//! Pure: the cluster facts it needs (the largest device per family, the
//! namespace's quota room) are passed in.

use std::collections::BTreeMap;

use hami_api::keys;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use super::dra::{self, Conversion};
use super::json_patch::{set, PatchOp};
use super::quota::{pod_usage, QuotaCheck};
use crate::schedule::pod::pod_request_any;
use crate::schedule::request::MemoryRequest;
use crate::schedule::vendor::VendorProfile;

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// HAMi's default: `hami-scheduler`.
    pub scheduler_name: String,
    /// Set on pods that have none, when configured.
    pub runtime_class: Option<String>,
    /// `GPU_CORE_UTILIZATION_POLICY` injected into NVIDIA containers
    /// (`default`, `force`, `disable`), when configured.
    pub core_policy: Option<String>,
    pub profiles: Vec<VendorProfile>,
    /// Convert NVIDIA requests to DRA ResourceClaims (only when the cluster
    /// serves resource.k8s.io/v1 with consumable capacity; see `dra_support`).
    pub dra: bool,
    /// Users (the controller's and node agent's service accounts) allowed
    /// to write controller-owned annotations (see [`super::owned`]).
    pub trusted_users: Vec<String>,
    /// The node agents' service account (see [`super::owned::Writers`]).
    pub node_agent_user: Option<String>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            scheduler_name: "hami-scheduler".into(),
            runtime_class: None,
            core_policy: None,
            profiles: VendorProfile::defaults(),
            dra: false,
            trusted_users: Vec::new(),
            node_agent_user: None,
        }
    }
}

/// What the webhook knows of the cluster.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The largest registered device memory (MiB) per family name; a family
    /// with no registered device is absent (no check: nodes may still be
    /// joining).
    pub largest_memory_mib: BTreeMap<String, u64>,
    /// The pod's namespace quota, if any.
    pub quota: Option<QuotaCheck>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Untouched,
    Mutate(Vec<PatchOp>),
    /// Patched to DRA claims; the templates must exist before the pod is admitted.
    Convert(Conversion),
    Deny(String),
}

/// Whether `c` names any resource a family manages.
pub(crate) fn asks_for_shared(c: &Container, profiles: &[VendorProfile]) -> bool {
    let names = |r: &Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| {
        r.as_ref()
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let Some(res) = &c.resources else {
        return false;
    };
    names(&res.limits)
        .iter()
        .chain(names(&res.requests).iter())
        .any(|n| {
            profiles.iter().any(|p| {
                let r = &p.resources;
                *n == r.resource_count_name
                    || [
                        &r.resource_memory_name,
                        &r.resource_memory_percentage_name,
                        &r.resource_core_name,
                        &r.resource_priority_name,
                    ]
                    .iter()
                    .any(|x| x.as_deref() == Some(n.as_str()))
            })
        })
}

/// Applies `op` to `doc`, so later ops are computed against the patched
/// object (two defaults in one missing `limits` map must not both create it).
fn apply(doc: &mut Value, op: &PatchOp) {
    let (path, value) = match op {
        PatchOp::Add { path, value } | PatchOp::Replace { path, value } => (path, value.clone()),
        PatchOp::Remove { .. } => return,
    };
    let tokens: Vec<String> = path
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let mut at = doc;
    for t in &tokens[..tokens.len() - 1] {
        at = match at {
            Value::Array(a) => &mut a[t.parse::<usize>().expect("array index")],
            other => other.get_mut(t.as_str()).expect("parent exists"),
        };
    }
    let last = tokens.last().expect("non-empty path");
    match at {
        Value::Array(a) if last == "-" => a.push(value),
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        _ => {}
    }
}

struct Patcher {
    doc: Value,
    ops: Vec<PatchOp>,
}

impl Patcher {
    fn set(&mut self, tokens: &[&str], value: Value) {
        let op = set(&self.doc, tokens, value);
        apply(&mut self.doc, &op);
        self.ops.push(op);
    }

    fn push_env(&mut self, list: &str, index: usize, name: &str, value: &str) {
        let i = index.to_string();
        let entry = json!({"name": name, "value": value});
        let has_env = self.doc["spec"][list][index]["env"].is_array();
        let op = if has_env {
            PatchOp::Add {
                path: super::json_patch::pointer(&["spec", list, &i, "env", "-"]),
                value: entry,
            }
        } else {
            PatchOp::Add {
                path: super::json_patch::pointer(&["spec", list, &i, "env"]),
                value: json!([entry]),
            }
        };
        apply(&mut self.doc, &op);
        self.ops.push(op);
    }
}

fn limit_or_request<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    let res = c.resources.as_ref()?;
    res.limits
        .as_ref()
        .and_then(|l| l.get(name))
        .or_else(|| res.requests.as_ref().and_then(|r| r.get(name)))
        .map(|q| q.0.as_str())
}

fn has_env(c: &Container, name: &str) -> bool {
    c.env.iter().flatten().any(|e| e.name == name)
}

/// The webhook's decision for `object` (the pod as the API server sent it).
pub fn review(object: &Value, config: &WebhookConfig, facts: &Facts) -> Verdict {
    let pod: Pod = match serde_json::from_value(object.clone()) {
        Ok(p) => p,
        Err(e) => return Verdict::Deny(format!("hami-controller: the object is not a Pod: {e}")),
    };
    let Some(spec) = &pod.spec else {
        return Verdict::Untouched;
    };
    let lists: [(&str, &[Container]); 2] = [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
        ("containers", &spec.containers),
    ];
    let sharing: Vec<(&str, usize, &Container)> = lists
        .iter()
        .flat_map(|(list, cs)| {
            cs.iter()
                .enumerate()
                .filter(|(_, c)| asks_for_shared(c, &config.profiles))
                .map(move |(i, c)| (*list, i, c))
        })
        .collect();
    // The opt-out is the namespace's (the webhook's namespaceSelector), never
    // a label the pod's author sets on the pod.
    if sharing.is_empty() {
        return Verdict::Untouched;
    }
    if let Some(node) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Verdict::Deny(format!(
            "hami-controller: spec.nodeName is already {node}: a pod that shares devices must be placed by {} (it picks the devices); remove spec.nodeName and use a nodeSelector",
            config.scheduler_name
        ));
    }
    let asking: Vec<&Container> = sharing.iter().map(|(_, _, c)| *c).collect();
    if let Some(why) = super::privilege::escape(&pod, &asking) {
        return Verdict::Deny(super::privilege::denial(&why));
    }
    let (vendor, request) = match pod_request_any(&pod, &config.profiles) {
        Ok(Some(r)) => r,
        Ok(None) => return Verdict::Untouched,
        Err(e) => return Verdict::Deny(format!("hami-controller: {e}")),
    };
    let profile = &config.profiles[usize::from(vendor)];
    if let Some(largest) = facts.largest_memory_mib.get(profile.name()) {
        let slots = request.init.iter().chain(&request.app);
        let names = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .map(|c| c.name.as_str());
        for (name, r) in names.zip(slots) {
            if let Some(MemoryRequest::Mib(m)) = r.map(|r| r.memory) {
                if m > *largest {
                    return Verdict::Deny(format!(
                        "hami-controller: container {name} asks for {m} MiB of device memory, more than any registered {} device has ({largest} MiB)",
                        profile.name()
                    ));
                }
            }
        }
    }
    if let Some(quota) = &facts.quota {
        if let Err(e) = quota.admit(&pod_usage(&request), profile) {
            return Verdict::Deny(format!("hami-controller: {e}"));
        }
    }

    if config.dra && profile.name() == "nvidia" {
        let slots: Vec<_> = request.init.iter().chain(&request.app).collect();
        let all_containers: Vec<(&str, usize, &Container)> = lists
            .iter()
            .flat_map(|(list, cs)| cs.iter().enumerate().map(move |(i, c)| (*list, i, c)))
            .collect();
        let asked: Vec<(
            &str,
            usize,
            &str,
            crate::schedule::request::ContainerRequest,
        )> = all_containers
            .iter()
            .zip(&slots)
            .filter_map(|((list, i, c), r)| r.map(|r| (*list, *i, c.name.as_str(), r)))
            .collect();
        // A percentage of memory is not a capacity request: such pods keep
        // the extender path.
        if asked.iter().all(|(_, _, _, r)| dra::convertible(r)) {
            let r = &profile.resources;
            let names: Vec<&str> = [
                Some(&r.resource_count_name),
                r.resource_memory_name.as_ref(),
                r.resource_memory_percentage_name.as_ref(),
                r.resource_core_name.as_ref(),
            ]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            return Verdict::Convert(dra::convert(
                object,
                namespace,
                &asked,
                &request.selection,
                &names,
            ));
        }
    }

    let mut p = Patcher {
        doc: object.clone(),
        ops: Vec::new(),
    };
    let current = spec.scheduler_name.as_deref().unwrap_or_default();
    if current.is_empty() || current == "default-scheduler" {
        p.set(&["spec", "schedulerName"], json!(config.scheduler_name));
    }
    if let (Some(rc), None) = (&config.runtime_class, &spec.runtime_class_name) {
        p.set(&["spec", "runtimeClassName"], json!(rc));
    }
    let mut defaults = Vec::new();
    if profile.name() == "nvidia" {
        let r = &profile.resources;
        let core_name = r.resource_core_name.clone().unwrap_or_default();
        let mem_name = r.resource_memory_name.clone().unwrap_or_default();
        let pct_name = r
            .resource_memory_percentage_name
            .clone()
            .unwrap_or_default();
        let priority_name = r.resource_priority_name.clone().unwrap_or_default();
        for (list, i, c) in &sharing {
            let idx = i.to_string();
            fn with<'a>(list: &'a str, idx: &'a str, key: &'a str) -> [&'a str; 6] {
                ["spec", list, idx, "resources", "limits", key]
            }
            let count = limit_or_request(c, &r.resource_count_name);
            let memory = limit_or_request(c, &mem_name);
            let percent = limit_or_request(c, &pct_name);
            let cores = limit_or_request(c, &core_name);
            if count.is_none() {
                p.set(&with(list, &idx, &r.resource_count_name), json!("1"));
                defaults.push(format!("{}: {}=1", c.name, r.resource_count_name));
            }
            // The whole device's memory without a compute share is exclusive
            // use: say so, so no share is ever scheduled beside it.
            let whole = memory.is_none() && percent.is_none_or(|v| v == "100");
            if whole && cores.is_none() {
                p.set(&with(list, &idx, &core_name), json!("100"));
                defaults.push(format!("{}: {core_name}=100", c.name));
            }
            if let Some(prio) = limit_or_request(c, &priority_name) {
                if !has_env(c, keys::ENV_TASK_PRIORITY) {
                    p.push_env(list, *i, keys::ENV_TASK_PRIORITY, prio);
                }
            }
            if let Some(policy) = &config.core_policy {
                if !has_env(c, keys::ENV_CORE_POLICY) {
                    p.push_env(list, *i, keys::ENV_CORE_POLICY, policy);
                }
            }
        }
    }
    if !defaults.is_empty() {
        // Recorded on the pod, so an operator can see why its spec differs
        // from what was applied.
        p.set(
            &["metadata", "annotations", WEBHOOK_DEFAULTS],
            json!(defaults.join(", ")),
        );
    }
    if p.ops.is_empty() {
        Verdict::Untouched
    } else {
        Verdict::Mutate(p.ops)
    }
}

/// The annotation listing the defaults the webhook filled in.
pub const WEBHOOK_DEFAULTS: &str = "hami.io/webhook-defaults";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::quota::{QuotaCheck, Usage};

    /// The captured AdmissionReview's pod, with `limits` on its container.
    fn pod_with(limits: Value) -> Value {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/fixtures/k8s/sample-admission-review-mutate.json"),
        )
        .unwrap();
        let review: Value = serde_json::from_str(&text).unwrap();
        let mut pod = review["request"]["object"].clone();
        pod["spec"]["containers"][0]["resources"]["limits"] = limits;
        pod
    }

    /// Applies the ops with an independent RFC 6902 implementation.
    fn patched(pod: &Value, ops: &[PatchOp]) -> Value {
        let patch: json_patch::Patch =
            serde_json::from_value(serde_json::to_value(ops).unwrap()).unwrap();
        let mut doc = pod.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        doc
    }

    fn mutate(pod: &Value, config: &WebhookConfig, facts: &Facts) -> Value {
        match review(pod, config, facts) {
            Verdict::Mutate(ops) => patched(pod, &ops),
            other => panic!("expected a patch, got {other:?}"),
        }
    }

    #[test]
    fn a_gpu_share_is_sent_to_hami_with_its_defaults() {
        let pod = pod_with(json!({"nvidia.com/gpumem": "3000", "nvidia.com/priority": "1"}));
        let config = WebhookConfig {
            runtime_class: Some("nvidia".into()),
            core_policy: Some("force".into()),
            ..WebhookConfig::default()
        };
        let out = mutate(&pod, &config, &Facts::default());
        assert_eq!(out["spec"]["schedulerName"], "hami-scheduler");
        assert_eq!(out["spec"]["runtimeClassName"], "nvidia");
        let c = &out["spec"]["containers"][0];
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
        assert!(
            c["resources"]["limits"]
                .get("nvidia.com/gpucores")
                .is_none(),
            "a share stays a share"
        );
        assert_eq!(
            c["env"],
            json!([{"name": "CUDA_TASK_PRIORITY", "value": "1"},
                   {"name": "GPU_CORE_UTILIZATION_POLICY", "value": "force"}])
        );
        assert_eq!(
            out["metadata"]["annotations"][WEBHOOK_DEFAULTS],
            "c: nvidia.com/gpu=1"
        );
        // Everything else is as the API server sent it.
        let mut back = out.clone();
        back["spec"]["schedulerName"] = pod["spec"]["schedulerName"].clone();
        back["spec"]
            .as_object_mut()
            .unwrap()
            .remove("runtimeClassName");
        back["spec"]["containers"][0]["resources"]["limits"] =
            pod["spec"]["containers"][0]["resources"]["limits"].clone();
        back["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("env");
        back["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove(WEBHOOK_DEFAULTS);
        assert_eq!(back, pod);
    }

    #[test]
    fn whole_gpus_are_exclusive_and_missing_maps_are_created() {
        let mut pod = pod_with(json!({"nvidia.com/gpu": "2"}));
        pod["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        pod["spec"]["containers"][0]["env"] = json!([{"name": "CUDA_TASK_PRIORITY", "value": "0"}]);
        let out = mutate(&pod, &WebhookConfig::default(), &Facts::default());
        let limits = &out["spec"]["containers"][0]["resources"]["limits"];
        assert_eq!(
            (
                limits["nvidia.com/gpu"].as_str(),
                limits["nvidia.com/gpucores"].as_str()
            ),
            (Some("2"), Some("100"))
        );
        assert_eq!(
            out["metadata"]["annotations"],
            json!({"hami.io/webhook-defaults": "c: nvidia.com/gpucores=100"})
        );
        // The user's own env is never overwritten.
        assert_eq!(
            out["spec"]["containers"][0]["env"],
            json!([{"name": "CUDA_TASK_PRIORITY", "value": "0"}])
        );
        // The patch escapes the resource's `/` (~1) and adds the whole
        // annotations map in one op.
        let Verdict::Mutate(ops) = review(&pod, &WebhookConfig::default(), &Facts::default())
        else {
            panic!()
        };
        let paths: Vec<String> = ops
            .iter()
            .map(|o| {
                serde_json::to_value(o).unwrap()["path"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            paths,
            [
                "/spec/schedulerName",
                "/spec/containers/0/resources/limits/nvidia.com~1gpucores",
                "/metadata/annotations"
            ]
        );
    }

    #[test]
    fn init_containers_and_other_families_are_seen() {
        let mut pod = pod_with(json!({"cpu": "1"}));
        pod["spec"]["initContainers"] = json!([{"name": "warm", "image": "x",
            "resources": {"limits": {"huawei.com/Ascend910B3": "1", "huawei.com/Ascend910B3-memory": "8000"}}}]);
        let out = mutate(&pod, &WebhookConfig::default(), &Facts::default());
        assert_eq!(out["spec"]["schedulerName"], "hami-scheduler");
        // NVIDIA defaults are NVIDIA's only.
        assert!(out["spec"]["initContainers"][0]["resources"]["limits"]
            .get("nvidia.com/gpucores")
            .is_none());
    }

    #[test]
    fn dra_mode_turns_requests_into_claims() {
        let mut pod = pod_with(
            json!({"nvidia.com/gpu": "2", "nvidia.com/gpumem": "3000", "nvidia.com/gpucores": "30"}),
        );
        pod["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = json!("2");
        pod["metadata"]["annotations"]["nvidia.com/use-gpuuuid"] = json!("GPU-a,GPU-b");
        let config = WebhookConfig {
            dra: true,
            ..WebhookConfig::default()
        };
        let Verdict::Convert(c) = review(&pod, &config, &Facts::default()) else {
            panic!("expected a conversion")
        };
        assert_eq!(c.templates.len(), 1);
        let t = &c.templates[0];
        assert_eq!(t["kind"], "ResourceClaimTemplate");
        assert_eq!(t["metadata"]["namespace"], "default");
        let exactly = &t["spec"]["spec"]["devices"]["requests"][0]["exactly"];
        assert_eq!(exactly["count"], 2);
        assert_eq!(
            exactly["capacity"]["requests"],
            json!({"memory": "3145728000", "cores": "30"})
        );
        assert_eq!(
            exactly["selectors"][0]["cel"]["expression"],
            "device.attributes[\"hami-core-gpu.project-hami.io\"].uuid in [\"GPU-a\", \"GPU-b\"]"
        );
        let out = patched(&pod, &c.ops);
        let res = &out["spec"]["containers"][0]["resources"];
        assert_eq!(res["limits"], json!({}), "the extended resources are gone");
        assert_eq!(res["requests"], json!({"cpu": "100m", "memory": "64Mi"}));
        assert_eq!(res["claims"], json!([{"name": "hami-c"}]));
        assert_eq!(
            out["spec"]["resourceClaims"],
            json!([{"name": "hami-c", "resourceClaimTemplateName": t["metadata"]["name"]}])
        );
        // The default scheduler allocates claims: schedulerName is untouched.
        assert_eq!(out["spec"]["schedulerName"], pod["spec"]["schedulerName"]);
        // A percentage of memory keeps the extender path.
        let pct = pod_with(json!({"nvidia.com/gpumem-percentage": "50"}));
        assert!(matches!(
            review(&pct, &config, &Facts::default()),
            Verdict::Mutate(_)
        ));
    }

    #[test]
    fn other_pods_are_left_alone() {
        let config = WebhookConfig::default();
        assert_eq!(
            review(&pod_with(json!({"cpu": "1"})), &config, &Facts::default()),
            Verdict::Untouched
        );
        // A pod's own opt-out label no longer skips the checks.
        let mut labelled = pod_with(json!({"nvidia.com/gpu": "1"}));
        labelled["metadata"]["labels"] = json!({"hami.io/webhook": "ignore"});
        labelled["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
        assert!(matches!(
            review(&labelled, &config, &Facts::default()),
            Verdict::Deny(_)
        ));
        // Already aimed at hami with everything set: nothing to patch.
        let mut done = pod_with(json!({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "100"}));
        done["spec"]["schedulerName"] = json!("hami-scheduler");
        assert_eq!(
            review(&done, &config, &Facts::default()),
            Verdict::Untouched
        );
    }

    #[test]
    fn denials_say_why() {
        let config = WebhookConfig::default();
        let none = Facts::default();
        let deny = |pod: &Value, facts: &Facts| match review(pod, &config, facts) {
            Verdict::Deny(m) => m,
            other => panic!("expected a denial, got {other:?}"),
        };
        let mut privileged = pod_with(json!({"nvidia.com/gpumem": "1000"}));
        privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
        assert!(deny(&privileged, &none).contains("container c is privileged"));
        let mut placed = pod_with(json!({"nvidia.com/gpu": "1"}));
        placed["spec"]["nodeName"] = json!("node-7");
        assert!(deny(&placed, &none).contains("spec.nodeName is already node-7"));
        for (limits, needle) in [
            (json!({"nvidia.com/gpucores": "101"}), "over 100"),
            (json!({"nvidia.com/gpumem-percentage": "150"}), "over 100"),
            (json!({"nvidia.com/gpumem": "-5"}), "negative"),
            (
                json!({"nvidia.com/gpu": "1", "huawei.com/Ascend910B3": "1"}),
                "two families",
            ),
        ] {
            let m = deny(&pod_with(limits.clone()), &none);
            assert!(m.contains(needle), "{limits}: {m}");
        }
        let facts = Facts {
            largest_memory_mib: [("nvidia".to_owned(), 81920)].into(),
            ..Facts::default()
        };
        assert!(deny(&pod_with(json!({"nvidia.com/gpumem": "90000"})), &facts)
            .contains("90000 MiB of device memory, more than any registered nvidia device has (81920 MiB)"));
        assert!(matches!(
            review(
                &pod_with(json!({"nvidia.com/gpumem": "81920"})),
                &config,
                &facts
            ),
            Verdict::Mutate(_)
        ));
        let quota = Facts {
            quota: Some(QuotaCheck {
                namespace: "default".into(),
                hard: [("limits.nvidia.com/gpumem".to_owned(), 6000)].into(),
                used: [(
                    "nvidia".to_owned(),
                    Usage {
                        memory_mib: 1000,
                        cores: 0,
                    },
                )]
                .into(),
            }),
            ..Facts::default()
        };
        // 2 GPUs x 3000 MiB = 6000 on top of 1000 used.
        let m = deny(
            &pod_with(json!({"nvidia.com/gpu": "2", "nvidia.com/gpumem": "3000"})),
            &quota,
        );
        assert!(m.contains("1000 used + 6000 asked > 6000"), "{m}");
        assert!(matches!(
            review(
                &pod_with(json!({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "5000"})),
                &config,
                &quota
            ),
            Verdict::Mutate(_)
        ));
    }
}
