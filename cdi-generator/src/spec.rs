//! CDI spec wire types, hand-written with the field names of the CDI
//! specification (github.com/cncf-tags/container-device-interface, SPEC.md),
//! and the smallest `cdiVersion` a spec's fields need.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    /// `vendor/class`, e.g. `hami.io/vgpu`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub devices: Vec<Device>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_edits: Option<ContainerEdits>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    /// Path inside the container.
    pub path: String,
    /// Path on the host, when it differs (CDI 0.5.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub node_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    /// CDI 0.4.0.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub mount_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    /// `createRuntime`, `createContainer`, `startContainer`, `prestart`, `poststart`, `poststop`.
    pub hook_name: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}

impl ContainerEdits {
    pub fn merge(&mut self, other: ContainerEdits) {
        self.env.extend(other.env);
        self.device_nodes.extend(other.device_nodes);
        self.hooks.extend(other.hooks);
        self.mounts.extend(other.mounts);
    }

    fn all(spec: &Spec) -> impl Iterator<Item = &ContainerEdits> {
        spec.devices
            .iter()
            .map(|d| &d.container_edits)
            .chain(spec.container_edits.as_ref())
    }
}

/// The lowest `cdiVersion` that has every field `spec` uses, by the rules of
/// the CDI specification's version history. Runtimes reject versions newer
/// than they know (podman 4.3 stops at 0.5.0), so we never declare more.
pub fn minimum_version(spec: &Spec) -> &'static str {
    let annotated =
        !spec.annotations.is_empty() || spec.devices.iter().any(|d| !d.annotations.is_empty());
    let dotted_class = spec
        .kind
        .split_once('/')
        .is_some_and(|(_, class)| class.contains('.'));
    if annotated || dotted_class {
        return "0.6.0";
    }
    let digit_first = spec
        .devices
        .iter()
        .any(|d| !d.name.chars().next().is_some_and(char::is_alphabetic));
    let host_paths = ContainerEdits::all(spec)
        .flat_map(|e| &e.device_nodes)
        .any(|n| n.host_path.as_deref().is_some_and(|p| !p.is_empty()));
    if digit_first || host_paths {
        return "0.5.0";
    }
    let typed_mounts = ContainerEdits::all(spec)
        .flat_map(|e| &e.mounts)
        .any(|m| m.mount_type.as_deref().is_some_and(|t| !t.is_empty()));
    if typed_mounts {
        return "0.4.0";
    }
    "0.3.0"
}

/// `vendor/class` per the CDI name rules: vendor a domain-like name, class an identifier.
pub fn valid_kind(kind: &str) -> bool {
    let Some((vendor, class)) = kind.split_once('/') else {
        return false;
    };
    let label = |s: &str| {
        !s.is_empty()
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    };
    label(vendor) && label(class) && vendor.contains('.')
}

/// A device name: letters, digits, `_`, `-`, `.` and `:`, starting with a letter
/// (a digit first would need cdiVersion 0.5.0 for nothing).
pub fn valid_device_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(edits: ContainerEdits) -> Spec {
        Spec {
            cdi_version: String::new(),
            kind: "hami.io/vgpu".into(),
            annotations: BTreeMap::new(),
            devices: vec![Device {
                name: "job1".into(),
                annotations: BTreeMap::new(),
                container_edits: edits,
            }],
            container_edits: None,
        }
    }

    #[test]
    fn version_follows_the_fields_used() {
        assert_eq!(minimum_version(&spec(ContainerEdits::default())), "0.3.0");
        let mut e = ContainerEdits::default();
        e.mounts.push(Mount {
            host_path: "/a".into(),
            container_path: "/b".into(),
            mount_type: Some("bind".into()),
            options: vec![],
        });
        assert_eq!(minimum_version(&spec(e.clone())), "0.4.0");
        e.device_nodes.push(DeviceNode {
            path: "/dev/nvidia0".into(),
            host_path: Some("/dev/null".into()),
            ..DeviceNode::default()
        });
        assert_eq!(minimum_version(&spec(e.clone())), "0.5.0");
        let mut s = spec(e);
        s.annotations.insert("a".into(), "b".into());
        assert_eq!(minimum_version(&s), "0.6.0");
    }

    #[test]
    fn names_and_kinds() {
        assert!(valid_kind("hami.io/vgpu"));
        assert!(!valid_kind("hami/vgpu"));
        assert!(!valid_kind("hami.io"));
        assert!(!valid_kind("hami.io/"));
        assert!(valid_device_name("job1"));
        assert!(valid_device_name("pod-uid_ctr.0"));
        assert!(!valid_device_name("1job"));
        assert!(!valid_device_name("job 1"));
        assert!(!valid_device_name("job/1"));
        assert!(!valid_device_name(""));
    }
}
