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

/// Who may write what.
#[derive(Debug, Clone, Copy, Default)]
pub struct Writers<'a> {
    /// May write every controller-owned key (the controller).
    pub trusted: &'a [String],
    /// The node agents' account: each may touch only its own node and the
    /// pods on it, and of the controller-owned keys only the bind phase.
    pub node_agent: Option<&'a str>,
}

/// What one admission request is.
pub struct Write<'a> {
    pub operation: &'a str,
    /// `Pod` or `Node`.
    pub kind: &'a str,
    pub user: &'a str,
    /// The node of the pod whose token sent it, if the API server says.
    pub user_node: Option<&'a str>,
    pub object: Option<&'a Value>,
    pub old: Option<&'a Value>,
}

/// `Err(message)` when the writer may not make this change.
pub fn check_write(w: &Write<'_>, writers: &Writers<'_>) -> Result<(), String> {
    if !matches!(w.operation, "CREATE" | "UPDATE") {
        return Ok(());
    }
    if writers.node_agent == Some(w.user) {
        return check_node_agent(w);
    }
    if w.kind != "Pod" {
        return Ok(());
    }
    check(w.operation, w.user, w.object, w.old, writers.trusted)
}

/// A node agent's credentials are on its node: stolen from there, they must
/// not reach any other node or its pods.
fn check_node_agent(w: &Write<'_>) -> Result<(), String> {
    // Clusters before 1.30 do not say which node a token belongs to; there
    // RBAC alone limits the agent.
    let Some(own) = w.user_node else {
        return Ok(());
    };
    let at = |p: &str| w.object.and_then(|o| o.pointer(p)).and_then(Value::as_str);
    let (target, what) = match w.kind {
        "Node" => (at("/metadata/name"), "node"),
        "Pod" => (at("/spec/nodeName"), "pod's node"),
        _ => return Ok(()),
    };
    if target != Some(own) {
        return Err(format!(
            "hami-controller: the node agent of {own} may not write to another {what} ({})",
            target.unwrap_or("none")
        ));
    }
    if w.kind == "Pod" {
        let old = if w.operation == "CREATE" { None } else { w.old };
        let changed: Vec<&str> = changed_keys(w.object, old)
            .into_iter()
            .filter(|k| *k != keys::BIND_PHASE)
            .collect();
        if !changed.is_empty() {
            return Err(format!(
                "hami-controller: the node agent writes only {} on pods, not {}",
                keys::BIND_PHASE,
                changed.join(", ")
            ));
        }
    }
    Ok(())
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

    /// A node agent's token, stolen on node-a, used against node-b.
    #[test]
    fn a_node_agent_writes_only_its_own_node_and_its_pods() {
        const AGENT: &str = "system:serviceaccount:hami:hami-node";
        let trusted = [CONTROLLER.to_owned()];
        let writers = Writers {
            trusted: &trusted,
            node_agent: Some(AGENT),
        };
        let write = |kind, object: &Value, old: Option<&Value>, node| {
            check_write(
                &Write {
                    operation: "UPDATE",
                    kind,
                    user: AGENT,
                    user_node: node,
                    object: Some(object),
                    old,
                },
                &writers,
            )
        };
        let node = |name: &str| json!({"metadata": {"name": name, "annotations": {"hami.io/node-nvidia-register": "[]"}}});
        assert!(write("Node", &node("node-a"), None, Some("node-a")).is_ok());
        let err = write("Node", &node("node-b"), None, Some("node-a")).unwrap_err();
        assert!(err.contains("another node (node-b)"), "{err}");
        let decided = json!({"metadata": {"annotations": {"hami.io/bind-phase": "allocating", "hami.io/vgpu-node": "node-a"}},
                             "spec": {"nodeName": "node-a"}});
        let mut success = decided.clone();
        success["metadata"]["annotations"]["hami.io/bind-phase"] = json!("success");
        assert!(write("Pod", &success, Some(&decided), Some("node-a")).is_ok());
        let mut elsewhere = success.clone();
        elsewhere["spec"]["nodeName"] = json!("node-b");
        let mut elsewhere_old = decided.clone();
        elsewhere_old["spec"]["nodeName"] = json!("node-b");
        assert!(write("Pod", &elsewhere, Some(&elsewhere_old), Some("node-a")).is_err());
        // Bind phase only: not the decision itself.
        let mut moved = success.clone();
        moved["metadata"]["annotations"]["hami.io/vgpu-node"] = json!("node-c");
        let err = write("Pod", &moved, Some(&decided), Some("node-a")).unwrap_err();
        assert!(err.contains("hami.io/vgpu-node"), "{err}");
        // Without the API server's node name (before 1.30): RBAC decides.
        assert!(write("Node", &node("node-b"), None, None).is_ok());
        // The controller and tenants are judged as before.
        let w = Write {
            operation: "UPDATE",
            kind: "Pod",
            user: "alice",
            user_node: None,
            object: Some(&moved),
            old: Some(&decided),
        };
        assert!(check_write(&w, &writers).is_err());
    }
}
