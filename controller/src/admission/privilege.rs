//! Pods whose limits cannot hold: a container that can reach every device
//! on the node, or the host's processes, is not confined by a per-container
//! quota, so sharing a device with it is refused. Checked by the webhook at
//! admission and again by `/filter` (a namespace without the webhook, or a
//! pod admitted before it was installed, still gets no shared device).

use k8s_openapi::api::core::v1::{Container, Pod};

/// Capabilities that open every device or raw I/O to the container.
const DEVICE_CAPABILITIES: [&str; 3] = ["SYS_ADMIN", "SYS_RAWIO", "ALL"];

fn capability_name(c: &str) -> String {
    c.trim()
        .to_ascii_uppercase()
        .trim_start_matches("CAP_")
        .to_owned()
}

/// Why `container` escapes its limits, if it does.
fn container_escape(c: &Container) -> Option<String> {
    let sc = c.security_context.as_ref();
    if sc.and_then(|s| s.privileged).unwrap_or(false) {
        return Some(format!(
            "container {} is privileged: a privileged container sees every device on the node",
            c.name
        ));
    }
    let added = sc
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|caps| caps.add.as_ref());
    if let Some(cap) = added
        .into_iter()
        .flatten()
        .find(|cap| DEVICE_CAPABILITIES.contains(&capability_name(cap).as_str()))
    {
        return Some(format!(
            "container {} adds capability {cap}, which reaches devices past their limits",
            c.name
        ));
    }
    if let Some(d) = c.volume_devices.iter().flatten().next() {
        return Some(format!(
            "container {} maps the raw block device {} ({})",
            c.name, d.device_path, d.name
        ));
    }
    None
}

/// Why a pod that asks for shared devices must not get them, if it must not:
/// `sharing` names the containers that ask.
pub fn escape(pod: &Pod, sharing: &[&Container]) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    for c in sharing {
        if let Some(why) = container_escape(c) {
            return Some(why);
        }
    }
    if spec.host_pid == Some(true) {
        return Some("the pod uses hostPID: it can reach the host's GPU processes".into());
    }
    for v in spec.volumes.iter().flatten() {
        let Some(path) = v.host_path.as_ref().map(|h| h.path.trim_end_matches('/')) else {
            continue;
        };
        if path.is_empty() || path == "/dev" || path.starts_with("/dev/") {
            let shown = if path.is_empty() { "/" } else { path };
            return Some(format!(
                "volume {} mounts the host's {shown}: the node's device nodes",
                v.name
            ));
        }
    }
    None
}

/// The denial message for an [`escape`].
pub fn denial(why: &str) -> String {
    format!(
        "hami-controller: {why}, so its memory and compute limits cannot hold; drop it or ask for no shared device"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    fn why(spec: Value) -> Option<String> {
        let p = pod(spec);
        let sharing: Vec<&Container> = p.spec.as_ref().unwrap().containers.iter().collect();
        escape(&p, &sharing)
    }

    #[test]
    fn every_way_past_the_device_limits_is_named() {
        let c = |extra: Value| {
            let mut c = json!({"name": "c"});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            json!({"containers": [c]})
        };
        assert_eq!(why(c(json!({}))), None);
        let cases = [
            (
                c(json!({"securityContext": {"privileged": true}})),
                "privileged",
            ),
            (
                c(json!({"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}})),
                "SYS_ADMIN",
            ),
            (
                c(json!({"securityContext": {"capabilities": {"add": ["CAP_SYS_RAWIO"]}}})),
                "CAP_SYS_RAWIO",
            ),
            (
                c(json!({"securityContext": {"capabilities": {"add": ["all"]}}})),
                "all",
            ),
            (
                c(json!({"volumeDevices": [{"name": "disk", "devicePath": "/dev/xvda"}]})),
                "/dev/xvda",
            ),
        ];
        for (spec, needle) in cases {
            let got = why(spec.clone()).unwrap_or_else(|| panic!("{spec}"));
            assert!(got.contains(needle), "{spec}: {got}");
        }
        // Harmless capabilities stay allowed.
        assert_eq!(
            why(c(
                json!({"securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}}})
            )),
            None
        );
        let mut host_pid = c(json!({}));
        host_pid["hostPID"] = json!(true);
        assert!(why(host_pid).unwrap().contains("hostPID"));
        for path in ["/dev", "/dev/", "/dev/nvidia0", "/"] {
            let mut spec = c(json!({}));
            spec["volumes"] = json!([{"name": "v", "hostPath": {"path": path}}]);
            assert!(why(spec).is_some(), "{path}");
        }
        let mut data = c(json!({}));
        data["volumes"] = json!([{"name": "v", "hostPath": {"path": "/data/devices"}}]);
        assert_eq!(why(data), None);
    }
}
