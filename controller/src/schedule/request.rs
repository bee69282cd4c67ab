//! What one pod asks of a node's devices.

use std::collections::BTreeMap;

use hami_api::keys;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryRequest {
    /// `nvidia.com/gpumem`.
    Mib(u64),
    /// `nvidia.com/gpumem-percentage` (also the default: 100 = the whole device).
    Percent(u32),
}

impl MemoryRequest {
    /// MiB on a device of `device_mib`.
    pub fn on(self, device_mib: u64) -> u64 {
        match self {
            Self::Mib(m) => m,
            Self::Percent(p) => device_mib.saturating_mul(u64::from(p)) / 100,
        }
    }
}

/// One container's device request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerRequest {
    /// Devices (`nvidia.com/gpu`).
    pub count: u32,
    pub memory: MemoryRequest,
    /// Percent of each device (`nvidia.com/gpucores`); 100 is exclusive use.
    pub cores: u32,
}

impl ContainerRequest {
    pub fn exclusive(&self) -> bool {
        self.cores >= 100
    }
}

/// Which devices a pod accepts (its selection annotations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub use_types: Vec<String>,
    pub nouse_types: Vec<String>,
    pub use_uuids: Vec<String>,
    pub nouse_uuids: Vec<String>,
    /// All of a container's devices on one NUMA node.
    pub numa_bind: bool,
}

fn list(value: Option<&String>) -> Vec<String> {
    value
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Case-insensitive substring test, allocation-free (HAMi's type matching).
pub fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

impl Selection {
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Self {
        Self {
            use_types: list(annotations.get(keys::USE_GPU_TYPE)),
            nouse_types: list(annotations.get(keys::NOUSE_GPU_TYPE)),
            use_uuids: list(annotations.get(keys::USE_GPU_UUID)),
            nouse_uuids: list(annotations.get(keys::NOUSE_GPU_UUID)),
            numa_bind: annotations
                .get(keys::NUMA_BIND)
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        }
    }

    /// HAMi matches types by case-insensitive substring (`A100` selects
    /// `NVIDIA-NVIDIA A100-SXM4-80GB`).
    pub fn type_allowed(&self, kind: &str) -> bool {
        // Called for every device of every node on each filter: no allocation.
        let hit = |list: &[String]| list.iter().any(|t| contains_ignore_case(kind, t));
        (self.use_types.is_empty() || hit(&self.use_types)) && !hit(&self.nouse_types)
    }

    pub fn uuid_allowed(&self, uuid: &str) -> bool {
        (self.use_uuids.is_empty() || self.use_uuids.iter().any(|u| u == uuid))
            && !self.nouse_uuids.iter().any(|u| u == uuid)
    }
}

/// A pod's device requests, one slot per container: init containers first,
/// `None` for a container that asks for no device (the slot keeps indexes aligned).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRequest {
    pub init: Vec<Option<ContainerRequest>>,
    pub app: Vec<Option<ContainerRequest>>,
    pub selection: Selection,
    /// Ascend `huawei.com/vnpu-mode: hami-core`: raw MiB quotas enforced by
    /// the interposer, on nodes that advertise it, instead of vNPU templates.
    pub hami_core: bool,
}

impl PodRequest {
    pub fn asks_for_devices(&self) -> bool {
        self.init.iter().chain(&self.app).any(Option::is_some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_requests_resolve_per_device() {
        assert_eq!(MemoryRequest::Mib(3000).on(81920), 3000);
        assert_eq!(MemoryRequest::Percent(50).on(81920), 40960);
        assert_eq!(MemoryRequest::Percent(100).on(0), 0);
    }

    #[test]
    fn selection_follows_hami_matching() {
        let ann: BTreeMap<String, String> = [
            ("nvidia.com/use-gputype", "a100, H100"),
            ("nvidia.com/nouse-gputype", "PCIE"),
            ("nvidia.com/nouse-gpuuuid", "GPU-bad"),
            ("nvidia.com/numa-bind", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let s = Selection::from_annotations(&ann);
        assert!(s.type_allowed("NVIDIA-NVIDIA A100-SXM4-80GB"));
        assert!(!s.type_allowed("NVIDIA-NVIDIA A100-PCIE-40GB"));
        assert!(!s.type_allowed("NVIDIA-Tesla V100"));
        assert!(s.uuid_allowed("GPU-good") && !s.uuid_allowed("GPU-bad"));
        assert!(s.numa_bind);
        assert!(Selection::default().type_allowed("anything"));
    }
}
