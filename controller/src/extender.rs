//! The kube-scheduler extender wire format, hand-written to match
//! `k8s.io/kube-scheduler/extender/v1`: Go structs without JSON tags, so the
//! fields are PascalCase, and nil pointers travel as `null`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use serde::{Deserialize, Serialize};

/// `v1.NodeList` as the extender API embeds it: without `apiVersion`/`kind`
/// (Go leaves the embedded TypeMeta empty), which k8s-openapi's list requires.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeList {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default)]
    pub items: Vec<Node>,
}

/// Body of `POST /filter` (and `/prioritize`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderArgs {
    pub pod: Pod,
    /// The candidate nodes, when the extender is not `nodeCacheCapable`.
    #[serde(default)]
    pub nodes: Option<NodeList>,
    /// The candidate node names, when it is.
    #[serde(default)]
    pub node_names: Option<Vec<String>>,
}

impl ExtenderArgs {
    /// Candidate node names, from whichever form kube-scheduler sent.
    pub fn candidate_names(&self) -> Vec<String> {
        match (&self.node_names, &self.nodes) {
            (Some(names), _) => names.clone(),
            (None, Some(list)) => list
                .items
                .iter()
                .filter_map(|n| n.metadata.name.clone())
                .collect(),
            (None, None) => Vec::new(),
        }
    }
}

/// Reply to `/filter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderFilterResult {
    pub nodes: Option<NodeList>,
    pub node_names: Option<Vec<String>>,
    /// Node → reason; kube-scheduler may retry these after preemption.
    #[serde(default)]
    pub failed_nodes: BTreeMap<String, String>,
    /// Node → reason; preemption cannot help these.
    #[serde(default)]
    pub failed_and_unresolvable_nodes: BTreeMap<String, String>,
    #[serde(default)]
    pub error: String,
}

/// Body of `POST /bind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtenderBindingArgs {
    #[serde(rename = "PodName")]
    pub pod_name: String,
    #[serde(rename = "PodNamespace")]
    pub pod_namespace: String,
    #[serde(rename = "PodUID")]
    pub pod_uid: String,
    #[serde(rename = "Node")]
    pub node: String,
}

/// Reply to `/bind`: an empty `Error` is success.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderBindingResult {
    #[serde(default)]
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/k8s")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn extender_args_from_kube_scheduler_round_trip() {
        let text = fixture("sample-extender-args.json");
        let args: ExtenderArgs = serde_json::from_str(&text).unwrap();
        assert_eq!(args.pod.metadata.name.as_deref(), Some("ext-1"));
        let names = args.candidate_names();
        assert!(!names.is_empty(), "the fixture carries its candidate nodes");
        // Every field kube-scheduler sent survives decoding and re-encoding.
        // Two differences are only of form: Go writes zero times as null
        // where k8s-openapi omits them, and k8s-openapi stamps apiVersion and
        // kind on each object where the extender API leaves TypeMeta empty.
        let original = without_nulls(serde_json::from_str(&text).unwrap());
        let mut again = without_nulls(serde_json::to_value(&args).unwrap());
        let strip = |v: &mut Value| {
            let o = v.as_object_mut().unwrap();
            assert!(o.remove("apiVersion").is_some() && o.remove("kind").is_some());
        };
        strip(&mut again["Pod"]);
        for node in again["Nodes"]["items"].as_array_mut().unwrap() {
            strip(node);
        }
        assert_eq!(again, original);
    }

    fn without_nulls(v: Value) -> Value {
        match v {
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k, without_nulls(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
            other => other,
        }
    }

    #[test]
    fn binding_args_round_trip_byte_for_byte() {
        let text = fixture("sample-extender-binding-args.json");
        let args: ExtenderBindingArgs = serde_json::from_str(&text).unwrap();
        assert_eq!(args.node, "fake-node-2");
        assert_eq!(args.pod_uid, "5a53271d-20c3-4b39-b421-64490ff91216");
        assert_eq!(serde_json::to_string(&args).unwrap(), text.trim_end());
    }

    #[test]
    fn results_use_the_go_field_names() {
        let mut r = ExtenderFilterResult {
            node_names: Some(vec!["n1".into()]),
            ..ExtenderFilterResult::default()
        };
        r.failed_nodes
            .insert("n2".into(), "1/2 CardInsufficientMemory".into());
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"Nodes":null,"NodeNames":["n1"],"FailedNodes":{"n2":"1/2 CardInsufficientMemory"},"FailedAndUnresolvableNodes":{},"Error":""}"#
        );
        let bind = ExtenderBindingResult::default();
        assert_eq!(serde_json::to_string(&bind).unwrap(), r#"{"Error":""}"#);
        // What kube-scheduler's Go client accepts back: nulls for nil maps too.
        let go: ExtenderFilterResult = serde_json::from_str(
            r#"{"Nodes":null,"NodeNames":null,"FailedNodes":{},"FailedAndUnresolvableNodes":{},"Error":"boom"}"#,
        )
        .unwrap();
        assert_eq!(go.error, "boom");
    }
}
