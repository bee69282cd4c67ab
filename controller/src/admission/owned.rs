//! The validating check on pods (`/validate`): the annotations the scheduler
//! side writes (decisions, bind phases, vendor allocations; see
//! [`hami_api::keys::is_controller_owned`]) may be set, changed or removed
//! only by the controller and the node agent. Anyone else who can create or
//! patch a pod could otherwise hand it devices the scheduler never granted,
//! or make the controller count a forged allocation as usage.

use std::collections::BTreeMap;

use hami_api::keys;
use serde_json::Value;

fn annotations(object: Option<&Value>) -> BTreeMap<&str, &Value> {
    object
        .and_then(|o| o.pointer("/metadata/annotations"))
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.as_str(), v)).collect())
        .unwrap_or_default()
}

/// The controller-owned keys that `object` sets, changes or drops relative
/// to `old` (none for a CREATE), sorted.
pub fn changed_keys<'a>(object: Option<&'a Value>, old: Option<&'a Value>) -> Vec<&'a str> {
    let new = annotations(object);
    let old = annotations(old);
    let mut changed: Vec<&str> = new
        .keys()
        .chain(old.keys())
        .copied()
        .filter(|k| keys::is_controller_owned(k))
        .filter(|k| new.get(k) != old.get(k))
        .collect();
    changed.sort_unstable();
    changed.dedup();
    changed
}

/// `Err(message)` when `user` may not make this change.
pub fn check(
    operation: &str,
    user: &str,
    object: Option<&Value>,
    old: Option<&Value>,
    trusted_users: &[String],
) -> Result<(), String> {
    if !matches!(operation, "CREATE" | "UPDATE") || trusted_users.iter().any(|t| t == user) {
        return Ok(());
    }
    let changed = changed_keys(object, if operation == "CREATE" { None } else { old });
    if changed.is_empty() {
        return Ok(());
    }
    Err(format!(
        "hami-controller: {} {} written by the scheduler and the node agent only ({user} may not set, change or remove them)",
        changed.join(", "),
        if changed.len() == 1 { "is" } else { "are" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(annotations: Value) -> Value {
        json!({"metadata": {"name": "p", "annotations": annotations}})
    }

    const CONTROLLER: &str = "system:serviceaccount:hami:hami-scheduler";

    #[test]
    fn tenants_cannot_forge_or_edit_decisions() {
        let trusted = [CONTROLLER.to_owned()];
        let forged = pod(json!({
            "hami.io/vgpu-devices-to-allocate": "GPU-x,NVIDIA,80000,100:;",
            "hami.io/vgpu-node": "gpu-1",
            "hami.io/bind-time": "0",
            "nvidia.com/use-gputype": "A100"
        }));
        let err = check("CREATE", "alice", Some(&forged), None, &trusted).unwrap_err();
        assert!(
            err.contains(
                "hami.io/bind-time, hami.io/vgpu-devices-to-allocate, hami.io/vgpu-node are"
            ),
            "{err}"
        );
        assert!(check("CREATE", CONTROLLER, Some(&forged), None, &trusted).is_ok());
        // User-owned annotations are the user's.
        let own = pod(
            json!({"nvidia.com/use-gputype": "A100", "hami.io/gpu-scheduler-policy": "spread"}),
        );
        assert!(check("CREATE", "alice", Some(&own), None, &trusted).is_ok());
        // On UPDATE only a change counts: labels and unrelated keys are free.
        let decided =
            pod(json!({"hami.io/vgpu-node": "gpu-1", "hami.io/bind-phase": "allocating"}));
        let relabelled = pod(
            json!({"hami.io/vgpu-node": "gpu-1", "hami.io/bind-phase": "allocating", "note": "x"}),
        );
        assert!(check(
            "UPDATE",
            "alice",
            Some(&relabelled),
            Some(&decided),
            &trusted
        )
        .is_ok());
        let edited = pod(json!({"hami.io/vgpu-node": "gpu-2", "hami.io/bind-phase": "allocating"}));
        assert!(check("UPDATE", "alice", Some(&edited), Some(&decided), &trusted).is_err());
        let dropped = pod(json!({"hami.io/vgpu-node": "gpu-1"}));
        let err = check("UPDATE", "alice", Some(&dropped), Some(&decided), &trusted).unwrap_err();
        assert!(err.contains("hami.io/bind-phase is"), "{err}");
        assert!(check(
            "UPDATE",
            CONTROLLER,
            Some(&edited),
            Some(&decided),
            &trusted
        )
        .is_ok());
        assert!(check("DELETE", "alice", None, Some(&decided), &trusted).is_ok());
    }
}
