//! Annotation, label and environment-variable names shared with HAMi.
//!
//! These strings are the compatibility contract: a HAMi pod spec, node or
//! dashboard must keep working, so none of them may change spelling.

// ---- pod annotations written by the scheduler side -------------------------

/// NVIDIA allocation decided by the extender's filter (`uuid,type,mem,cores:` per device, `;` per container).
pub const VGPU_DEVICES_TO_ALLOCATE: &str = "hami.io/vgpu-devices-to-allocate";
/// NVIDIA allocation confirmed for the pod.
pub const VGPU_DEVICES_ALLOCATED: &str = "hami.io/vgpu-devices-allocated";
/// Node the extender chose.
pub const VGPU_NODE: &str = "hami.io/vgpu-node";
/// Unix time (seconds) of the filter decision.
pub const VGPU_TIME: &str = "hami.io/vgpu-time";
/// `allocating` | `success` | `failed`, see [`crate::BindPhase`].
pub const BIND_PHASE: &str = "hami.io/bind-phase";
/// Unix time (seconds) at which `/bind` started.
pub const BIND_TIME: &str = "hami.io/bind-time";

/// hami-rs extension: the controller's HMAC over the decision (pod UID,
/// node, allocation), checked by the node agent and by the controller's own
/// usage count; see `hami_api::seal`.
pub const DECISION_SEAL: &str = "hami.io/decision-seal";

/// Whether a pod annotation is the scheduler side's to write: a decision,
/// a bind phase, or a vendor's allocation. A pod author who could set one
/// could claim devices the scheduler never granted, so the admission webhook
/// refuses them from anyone but the controller and the node agent.
pub fn is_controller_owned(key: &str) -> bool {
    const EXACT: [&str; 8] = [
        VGPU_DEVICES_TO_ALLOCATE,
        VGPU_DEVICES_ALLOCATED,
        VGPU_NODE,
        VGPU_TIME,
        BIND_PHASE,
        BIND_TIME,
        CONTAINER_NAMES,
        DECISION_SEAL,
    ];
    if EXACT.contains(&key) {
        return true;
    }
    if let Some(rest) = key.strip_prefix("hami.io/") {
        return rest.ends_with("-devices-to-allocate") || rest.ends_with("-devices-allocated");
    }
    // The Ascend device plugin's runtime info, `huawei.com/<chip word>`
    // (`huawei.com/Ascend910B3`); `huawei.com/vnpu-mode` is the user's.
    key.strip_prefix("huawei.com/")
        .is_some_and(|word| word.starts_with("Ascend"))
}

/// The controller-owned annotations the decision seal covers: the
/// allocations and the slot order, written together by `/filter`. The node
/// is sealed as its own field; bind phase and times are written later.
pub fn is_sealed_decision_key(key: &str) -> bool {
    is_controller_owned(key)
        && ![VGPU_NODE, VGPU_TIME, BIND_PHASE, BIND_TIME, DECISION_SEAL].contains(&key)
}

// ---- pod annotations written by users --------------------------------------

pub const USE_GPU_TYPE: &str = "nvidia.com/use-gputype";
pub const NOUSE_GPU_TYPE: &str = "nvidia.com/nouse-gputype";
pub const USE_GPU_UUID: &str = "nvidia.com/use-gpuuuid";
pub const NOUSE_GPU_UUID: &str = "nvidia.com/nouse-gpuuuid";
pub const NUMA_BIND: &str = "nvidia.com/numa-bind";
pub const GPU_SCHEDULER_POLICY: &str = "hami.io/gpu-scheduler-policy";
pub const NODE_SCHEDULER_POLICY: &str = "hami.io/node-scheduler-policy";
pub const VASTAI_USE_VA: &str = "vastaitech.com/use-va";
pub const VASTAI_NOUSE_VA: &str = "vastaitech.com/nouse-va";
/// `huawei.com/vnpu-mode: hami-core` selects the software NPU split.
pub const ASCEND_VNPU_MODE: &str = "huawei.com/vnpu-mode";
pub const ASCEND_VNPU_MODE_HAMI_CORE: &str = "hami-core";
/// hami-rs extension, written by the controller beside the allocation: the
/// pod's container names in slot order (init containers first), comma-separated,
/// so a runtime hook that only knows its container's name can find its slot.
pub const CONTAINER_NAMES: &str = "hami.io/container-names";

// ---- direct annotations (podman and other runtimes without a scheduler) -----

/// Memory quota per device: `3000m`, `4g`, or a bare number of MiB.
pub const DIRECT_GPU_MEMORY: &str = "hami.io/gpumem";
/// Compute share per device, percent.
pub const DIRECT_GPU_CORES: &str = "hami.io/gpucores";
/// Ascend hami-core mode memory quota per NPU, in MiB (or `4g`).
pub const DIRECT_VNPU_CORE_MEMORY: &str = "hami.io/vnpu-core-memory";
/// Which devices: comma-separated indexes or UUIDs; device 0 when absent.
pub const DIRECT_DEVICES: &str = "hami.io/devices";

// ---- annotations container runtimes add -------------------------------------

pub const CRI_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const CRIO_CONTAINER_NAME: &str = "io.kubernetes.container.name";
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
/// The value both CRI implementations give the pod's sandbox (pause) container.
pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";

// ---- node annotations -------------------------------------------------------

/// Per-node lock taken by `/bind`; value is `RFC3339,namespace,pod` ([`crate::NodeLock`]).
pub const NODE_LOCK: &str = "hami.io/mutex.lock";
pub const NODE_NVIDIA_REGISTER: &str = "hami.io/node-nvidia-register";
pub const NODE_NVIDIA_HANDSHAKE: &str = "hami.io/node-handshake";
/// Devices an operator has taken out of scheduling (comma-separated UUIDs).
pub const DEVICE_CORDON: &str = "hami.io/device-cordon";
/// GPU pair link scores for topology-aware placement ([`crate::LinkScores`]).
pub const NODE_NVIDIA_SCORE: &str = "hami.io/node-nvidia-score";
/// `"true"` on an Ascend node whose NPUs may be shared in `hami-core` mode
/// (raw MiB quotas enforced by the interposer instead of vNPU templates).
pub const NODE_HAMI_VNPU_CORE: &str = "hami-vnpu-core";
/// Vastai keeps its own register and handshake names.
pub const NODE_VASTAI_REGISTER: &str = "hami.io/node-va-register";
pub const NODE_VASTAI_HANDSHAKE: &str = "hami.io/node-handshake-va";
/// The cloud instance type; AWS Neuron placement differs on `inf*` (a ring).
pub const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";

// ---- labels -----------------------------------------------------------------

/// `hami.io/webhook: ignore` on a namespace or pod opts out of the webhook.
pub const WEBHOOK_IGNORE_LABEL: &str = "hami.io/webhook";
pub const WEBHOOK_IGNORE_VALUE: &str = "ignore";

// ---- container environment read by hami-core ---------------------------------

pub const ENV_MEMORY_LIMIT: &str = "CUDA_DEVICE_MEMORY_LIMIT";
pub const ENV_SM_LIMIT: &str = "CUDA_DEVICE_SM_LIMIT";
pub const ENV_SHARED_CACHE: &str = "CUDA_DEVICE_MEMORY_SHARED_CACHE";
pub const ENV_CORE_POLICY: &str = "GPU_CORE_UTILIZATION_POLICY";
pub const ENV_TASK_PRIORITY: &str = "CUDA_TASK_PRIORITY";
pub const ENV_LOG_LEVEL: &str = "LIBCUDA_LOG_LEVEL";
pub const ENV_DISABLE_CONTROL: &str = "CUDA_DISABLE_CONTROL";
pub const ENV_NPU_MEM_QUOTA: &str = "NPU_MEM_QUOTA";
/// hami-rs extension: a lock file shared by every container on the node, which
/// hami-core holds while creating a CUDA context so that it can tell its own
/// host pid from the others' in NVML's process list.
pub const ENV_CONTEXT_LOCK: &str = "HAMI_CORE_CONTEXT_LOCK";
/// hami-rs extension: the node agent's NPU arbiter socket, through which
/// containers time-slice an Ascend NPU by their shares.
pub const ENV_NPU_SCHEDULE: &str = "HAMI_CORE_NPU_SCHEDULE";
/// hami-rs extension, in the limits file: the physical NPU behind each
/// container-local device index (comma-separated), so the arbiter slices
/// the containers that really share a chip.
pub const ENV_NPU_DEVICE_IDS: &str = "HAMI_CORE_NPU_DEVICE_IDS";
pub const ENV_NPU_PRIORITY: &str = "NPU_PRIORITY";

/// `CUDA_DEVICE_MEMORY_LIMIT_<i>`: the per-device form HAMi's device plugin writes.
pub fn env_memory_limit_for(device_index: usize) -> String {
    format!("{ENV_MEMORY_LIMIT}_{device_index}")
}

/// `CUDA_DEVICE_SM_LIMIT_<i>`.
pub fn env_sm_limit_for(device_index: usize) -> String {
    format!("{ENV_SM_LIMIT}_{device_index}")
}

/// The four per-vendor annotation keys HAMi derives from a device's common word.
///
/// NVIDIA keeps its historical names; every other vendor uses
/// `hami.io/<word>-devices-to-allocate` and friends (for Ascend the word is the
/// chip's common word, e.g. `Ascend910B3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorAnnotationKeys {
    pub devices_to_allocate: String,
    pub devices_allocated: String,
    pub node_register: String,
    pub node_handshake: String,
}

impl VendorAnnotationKeys {
    pub fn nvidia() -> Self {
        Self {
            devices_to_allocate: VGPU_DEVICES_TO_ALLOCATE.to_owned(),
            devices_allocated: VGPU_DEVICES_ALLOCATED.to_owned(),
            node_register: NODE_NVIDIA_REGISTER.to_owned(),
            node_handshake: NODE_NVIDIA_HANDSHAKE.to_owned(),
        }
    }

    /// Vastai: allocation keys from its common word, its own node keys.
    pub fn vastai() -> Self {
        Self {
            node_register: NODE_VASTAI_REGISTER.to_owned(),
            node_handshake: NODE_VASTAI_HANDSHAKE.to_owned(),
            ..Self::for_common_word("Vastai")
        }
    }

    pub fn for_common_word(word: &str) -> Self {
        Self {
            devices_to_allocate: format!("hami.io/{word}-devices-to-allocate"),
            devices_allocated: format!("hami.io/{word}-devices-allocated"),
            node_register: format!("hami.io/node-register-{word}"),
            node_handshake: format!("hami.io/node-handshake-{word}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_device_env_names_match_hami_device_plugin() {
        assert_eq!(env_memory_limit_for(0), "CUDA_DEVICE_MEMORY_LIMIT_0");
        assert_eq!(env_sm_limit_for(3), "CUDA_DEVICE_SM_LIMIT_3");
    }

    #[test]
    fn ascend_keys_follow_common_word() {
        let keys = VendorAnnotationKeys::for_common_word("Ascend910A");
        assert_eq!(
            keys.devices_to_allocate,
            "hami.io/Ascend910A-devices-to-allocate"
        );
        assert_eq!(
            keys.devices_allocated,
            "hami.io/Ascend910A-devices-allocated"
        );
        assert_eq!(keys.node_register, "hami.io/node-register-Ascend910A");
        assert_eq!(keys.node_handshake, "hami.io/node-handshake-Ascend910A");
    }
}

#[cfg(test)]
mod owned_tests {
    use super::*;

    #[test]
    fn decisions_are_controller_owned_and_requests_are_not() {
        for owned in [
            VGPU_DEVICES_TO_ALLOCATE,
            BIND_PHASE,
            "hami.io/Ascend910B3-devices-to-allocate",
            "hami.io/vastai-devices-allocated",
            "huawei.com/Ascend910B3",
            DECISION_SEAL,
        ] {
            assert!(is_controller_owned(owned), "{owned}");
        }
        for user in [
            ASCEND_VNPU_MODE,
            USE_GPU_TYPE,
            GPU_SCHEDULER_POLICY,
            DIRECT_GPU_MEMORY,
            "example.com/x",
        ] {
            assert!(!is_controller_owned(user), "{user}");
        }
    }
}
