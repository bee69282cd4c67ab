//! Extended-resource names per vendor, with HAMi v2.10's chart defaults.
//!
//! Every name is configurable (HAMi's `hami-scheduler-device` ConfigMap uses the
//! same camelCase keys), so a cluster that renamed `nvidia.com/gpu` to, say,
//! `hami.io/vgpu` keeps working. [`ResourceCatalog::classify`] maps a resource
//! name from a pod spec to the vendor and the quantity it expresses.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What a resource quantity means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// Number of (shared) devices.
    Count,
    /// Device memory in MiB.
    Memory,
    /// Device memory as a percentage of the device.
    MemoryPercentage,
    /// Compute share in percent (100 = exclusive).
    Cores,
    /// Task priority (NVIDIA: 0 high, 1 low).
    Priority,
}

/// The resource names of one device family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VendorResources {
    /// The family or chip, e.g. `nvidia`, `Ascend910B3`, `BI-V150`.
    pub name: String,
    /// The word HAMi derives per-vendor annotation keys from, where it has one
    /// (`NVIDIA`, `Ascend910B3`, …); see [`crate::keys::VendorAnnotationKeys`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_word: Option<String>,
    pub resource_count_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_memory_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_memory_percentage_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_core_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_priority_name: Option<String>,
}

impl VendorResources {
    /// A vendor's resource names: device count, and optionally memory and cores.
    pub fn new(name: &str, count: &str, memory: Option<&str>, cores: Option<&str>) -> Self {
        Self {
            name: name.to_owned(),
            common_word: None,
            resource_count_name: count.to_owned(),
            resource_memory_name: memory.map(str::to_owned),
            resource_memory_percentage_name: None,
            resource_core_name: cores.map(str::to_owned),
            resource_priority_name: None,
        }
    }

    fn with_common_word(mut self, word: &str) -> Self {
        self.common_word = Some(word.to_owned());
        self
    }

    /// HAMi's NVIDIA defaults (`resourceName`, `resourceMem`, … in the chart).
    pub fn nvidia() -> Self {
        Self {
            resource_memory_percentage_name: Some("nvidia.com/gpumem-percentage".into()),
            resource_priority_name: Some("nvidia.com/priority".into()),
            ..Self::new(
                "nvidia",
                "nvidia.com/gpu",
                Some("nvidia.com/gpumem"),
                Some("nvidia.com/gpucores"),
            )
            .with_common_word("NVIDIA")
        }
    }

    /// An Ascend chip in HAMi's `vnpus` list: `huawei.com/<word>`, `-memory`, `-core`.
    pub fn ascend(common_word: &str) -> Self {
        let count = format!("huawei.com/{common_word}");
        Self::new(
            common_word,
            &count,
            Some(&format!("{count}-memory")),
            Some(&format!("{count}-core")),
        )
        .with_common_word(common_word)
    }

    fn iluvatar(chip: &str) -> Self {
        Self::new(
            chip,
            &format!("iluvatar.ai/{chip}-vgpu"),
            Some(&format!("iluvatar.ai/{chip}.vMem")),
            Some(&format!("iluvatar.ai/{chip}.vCore")),
        )
        .with_common_word(chip)
    }

    fn names(&self) -> impl Iterator<Item = (&str, ResourceKind)> {
        [
            (Some(&self.resource_count_name), ResourceKind::Count),
            (self.resource_memory_name.as_ref(), ResourceKind::Memory),
            (
                self.resource_memory_percentage_name.as_ref(),
                ResourceKind::MemoryPercentage,
            ),
            (self.resource_core_name.as_ref(), ResourceKind::Cores),
            (self.resource_priority_name.as_ref(), ResourceKind::Priority),
        ]
        .into_iter()
        .filter_map(|(name, kind)| name.map(|n| (n.as_str(), kind)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CatalogError {
    #[error("resource name {name:?} is claimed by both {first} and {second}")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    #[error("vendor {vendor}: resource name {name:?} is not a valid extended resource name (domain/name)")]
    Invalid { vendor: String, name: String },
}

/// All device families the scheduler knows about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceCatalog {
    pub vendors: Vec<VendorResources>,
}

impl ResourceCatalog {
    /// HAMi v2.10 chart defaults for every supported vendor.
    pub fn hami_defaults() -> Self {
        let n = VendorResources::new;
        let mut vendors = vec![
            VendorResources::nvidia(),
            n(
                "cambricon",
                "cambricon.com/vmlu",
                Some("cambricon.com/mlu.smlu.vmemory"),
                Some("cambricon.com/mlu.smlu.vcore"),
            ),
            n(
                "hygon",
                "hygon.com/hcunum",
                Some("hygon.com/hcumem"),
                Some("hygon.com/hcucores"),
            ),
            n(
                "metax",
                "metax-tech.com/sgpu",
                Some("metax-tech.com/vmemory"),
                Some("metax-tech.com/vcore"),
            ),
            n("metax-gpu", "metax-tech.com/gpu", None, None),
            n(
                "enflame",
                "enflame.com/drs-gcu",
                Some("enflame.com/gcu-memory"),
                Some("enflame.com/gcu-core"),
            ),
            n("enflame-gcu", "enflame.com/gcu", None, None),
            n(
                "mthreads",
                "mthreads.com/vgpu",
                Some("mthreads.com/sgpu-memory"),
                Some("mthreads.com/sgpu-core"),
            ),
            n("kunlun", "kunlunxin.com/xpu", None, None),
            n(
                "kunlun-vxpu",
                "kunlunxin.com/vxpu",
                Some("kunlunxin.com/vxpu-memory"),
                None,
            ),
            n(
                "awsneuron",
                "aws.amazon.com/neuron",
                None,
                Some("aws.amazon.com/neuroncore"),
            ),
            n(
                "amd",
                "amd.com/gpu",
                Some("amd.com/gpumem"),
                Some("amd.com/gpucores"),
            ),
            n("vastai", "vastaitech.com/va", None, None),
            n("biren", "birentech.com/gpu", None, None),
        ];
        vendors.extend(["MR-V100", "MR-V50", "BI-V150", "BI-V100"].map(VendorResources::iluvatar));
        vendors.extend(
            [
                "Ascend910A",
                "Ascend910B2",
                "Ascend910B3",
                "Ascend910B4-1",
                "Ascend910B4",
                "Ascend310P",
                "Ascend910C",
            ]
            .map(VendorResources::ascend),
        );
        Self { vendors }
    }

    /// Which vendor and quantity a pod-spec resource name stands for.
    pub fn classify(&self, resource: &str) -> Option<(&VendorResources, ResourceKind)> {
        self.vendors.iter().find_map(|v| {
            v.names()
                .find(|(n, _)| *n == resource)
                .map(|(_, kind)| (v, kind))
        })
    }

    pub fn vendor(&self, name: &str) -> Option<&VendorResources> {
        self.vendors.iter().find(|v| v.name == name)
    }

    /// Checks a user-supplied catalog: each name well formed and owned by one vendor.
    pub fn validate(&self) -> Result<(), CatalogError> {
        let mut seen: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
        for v in &self.vendors {
            for (name, _) in v.names() {
                if !is_extended_resource_name(name) {
                    return Err(CatalogError::Invalid {
                        vendor: v.name.clone(),
                        name: name.to_owned(),
                    });
                }
                if let Some(first) = seen.insert(name, &v.name) {
                    return Err(CatalogError::Duplicate {
                        name: name.to_owned(),
                        first: first.to_owned(),
                        second: v.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// `domain/name` with a DNS-subdomain domain and a qualified-name part, as kubelet requires.
fn is_extended_resource_name(name: &str) -> bool {
    let Some((domain, local)) = name.split_once('/') else {
        return false;
    };
    let domain_ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let local_ok = !local.is_empty()
        && local.len() <= 63
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && local.as_bytes()[0].is_ascii_alphanumeric()
        && local.as_bytes()[local.len() - 1].is_ascii_alphanumeric();
    domain_ok && local_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_defaults_match_hami() {
        let c = ResourceCatalog::hami_defaults();
        let check = |name, kind| {
            let (v, k) = c.classify(name).unwrap_or_else(|| panic!("{name} unknown"));
            assert_eq!((v.name.as_str(), k), ("nvidia", kind), "{name}");
        };
        check("nvidia.com/gpu", ResourceKind::Count);
        check("nvidia.com/gpumem", ResourceKind::Memory);
        check(
            "nvidia.com/gpumem-percentage",
            ResourceKind::MemoryPercentage,
        );
        check("nvidia.com/gpucores", ResourceKind::Cores);
        check("nvidia.com/priority", ResourceKind::Priority);
        assert_eq!(c.classify("cpu"), None);
        assert_eq!(c.classify("nvidia.com/gpu-extra"), None);
    }

    #[test]
    fn ascend_and_other_vendors_classify() {
        let c = ResourceCatalog::hami_defaults();
        let (v, k) = c.classify("huawei.com/Ascend910B3-memory").unwrap();
        assert_eq!((v.name.as_str(), k), ("Ascend910B3", ResourceKind::Memory));
        assert_eq!(v.common_word.as_deref(), Some("Ascend910B3"));
        let (v, k) = c.classify("huawei.com/Ascend910B3-core").unwrap();
        assert_eq!((v.name.as_str(), k), ("Ascend910B3", ResourceKind::Cores));
        for (name, vendor) in [
            ("aws.amazon.com/neuroncore", "awsneuron"),
            ("vastaitech.com/va", "vastai"),
            ("cambricon.com/vmlu", "cambricon"),
            ("hygon.com/hcumem", "hygon"),
            ("metax-tech.com/sgpu", "metax"),
            ("enflame.com/gcu-core", "enflame"),
            ("kunlunxin.com/vxpu-memory", "kunlun-vxpu"),
            ("iluvatar.ai/BI-V150.vMem", "BI-V150"),
            ("mthreads.com/sgpu-core", "mthreads"),
        ] {
            assert_eq!(
                c.classify(name).map(|(v, _)| v.name.as_str()),
                Some(vendor),
                "{name}"
            );
        }
    }

    #[test]
    fn defaults_are_valid_and_unambiguous() {
        ResourceCatalog::hami_defaults().validate().unwrap();
    }

    #[test]
    fn renamed_resources_work_and_conflicts_are_caught() {
        let mut c = ResourceCatalog::hami_defaults();
        c.vendors[0].resource_count_name = "hami.io/vgpu".into();
        assert_eq!(c.classify("hami.io/vgpu").unwrap().1, ResourceKind::Count);
        assert_eq!(c.classify("nvidia.com/gpu"), None);

        c.vendors[1].resource_count_name = "hami.io/vgpu".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("claimed by both nvidia and cambricon"),
            "{err}"
        );

        let mut c = ResourceCatalog::hami_defaults();
        c.vendors[0].resource_memory_name = Some("gpumem".into());
        assert!(c.validate().unwrap_err().to_string().contains("\"gpumem\""));
    }

    #[test]
    fn config_uses_hami_key_names() {
        let yaml_like = r#"{"name":"nvidia","resourceCountName":"nvidia.com/gpu","resourceMemoryName":"nvidia.com/gpumem","resourceCoreName":"nvidia.com/gpucores"}"#;
        let v: VendorResources = serde_json::from_str(yaml_like).unwrap();
        assert_eq!(v.resource_core_name.as_deref(), Some("nvidia.com/gpucores"));
        assert_eq!(v.resource_priority_name, None);
    }
}
