//! RFC 6902 JSON Patch operations, with RFC 6901 pointer escaping: a key
//! such as `nvidia.com/gpu` becomes `nvidia.com~1gpu` in a path.

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum PatchOp {
    Add { path: String, value: Value },
    Replace { path: String, value: Value },
    Remove { path: String },
}

/// One reference token: `~` → `~0`, then `/` → `~1` (in that order, so a
/// literal `~1` in a key survives).
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// A pointer from tokens: `pointer(&["metadata", "annotations", "a/b"])`
/// is `/metadata/annotations/a~1b`.
pub fn pointer(tokens: &[&str]) -> String {
    tokens.iter().map(|t| format!("/{}", escape(t))).collect()
}

/// Sets `object[tokens]` to `value`: `add` under a parent that exists,
/// creating missing parent maps (a pod without annotations gets the whole
/// map in one op, since `add` cannot create intermediate members).
pub fn set(object: &Value, tokens: &[&str], value: Value) -> PatchOp {
    let mut at = object;
    for (depth, token) in tokens.iter().enumerate() {
        let last = depth + 1 == tokens.len();
        // Arrays are indexed by number (`/spec/containers/0`); only maps
        // are ever created.
        let child = match at {
            Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
            other => other.get(token),
        };
        match child {
            Some(next) if !last && (next.is_object() || next.is_array()) => at = next,
            Some(_) if last => {
                return PatchOp::Replace {
                    path: pointer(tokens),
                    value,
                }
            }
            _ => {
                // Build the missing tail as nested objects.
                let mut built = value;
                for t in tokens[depth + 1..].iter().rev() {
                    built = serde_json::json!({ *t: built });
                }
                return PatchOp::Add {
                    path: pointer(&tokens[..=depth]),
                    value: built,
                };
            }
        }
    }
    unreachable!("set needs at least one token")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_are_escaped() {
        assert_eq!(escape("nvidia.com/gpu"), "nvidia.com~1gpu");
        assert_eq!(escape("a~1b"), "a~01b");
        assert_eq!(
            pointer(&["metadata", "annotations", "hami.io/vgpu-node"]),
            "/metadata/annotations/hami.io~1vgpu-node"
        );
    }

    #[test]
    fn set_creates_missing_maps_in_one_op() {
        let pod =
            json!({"metadata": {"name": "p"}, "spec": {"schedulerName": "default-scheduler"}});
        let op = set(&pod, &["metadata", "annotations", "a/b"], json!("v"));
        assert_eq!(
            serde_json::to_value(&op).unwrap(),
            json!({"op": "add", "path": "/metadata/annotations", "value": {"a/b": "v"}})
        );
        let op = set(&pod, &["spec", "schedulerName"], json!("hami-scheduler"));
        assert_eq!(
            serde_json::to_value(&op).unwrap(),
            json!({"op": "replace", "path": "/spec/schedulerName", "value": "hami-scheduler"})
        );
        let pod = json!({"spec": {"containers": [{"name": "c"}]}});
        let op = set(
            &pod,
            &["spec", "containers", "0", "resources", "limits", "x/y"],
            json!("1"),
        );
        assert_eq!(
            serde_json::to_value(&op).unwrap(),
            json!({"op": "add", "path": "/spec/containers/0/resources", "value": {"limits": {"x/y": "1"}}})
        );
        let with = json!({"metadata": {"annotations": {}}});
        let op = set(&with, &["metadata", "annotations", "a/b"], json!("v"));
        assert_eq!(
            serde_json::to_value(&op).unwrap(),
            json!({"op": "add", "path": "/metadata/annotations/a~1b", "value": "v"})
        );
    }
}
