//! What a container asked for, from its annotations alone (no I/O).
//!
//! Two forms are read:
//! - the scheduler's allocation, `hami.io/vgpu-devices-to-allocate` (or a
//!   vendor's `hami.io/<word>-devices-to-allocate`), one slot per container;
//!   the container is found by the name its CRI runtime annotates;
//! - the direct form a podman user writes: `hami.io/gpumem`, `hami.io/gpucores`,
//!   `hami.io/vnpu-core-memory`, `hami.io/devices`.
//!
//! Anything that asked for hami-core but cannot be read exactly is an error:
//! the hook then fails container creation rather than start it unlimited.

use std::collections::BTreeMap;

use hami_api::keys;
use hami_api::quota::{BareUnit, MemoryQuota, Percent};
use hami_api::PodAllocation;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("annotation {key}: {reason}")]
    Annotation { key: String, reason: String },
    #[error("{0}")]
    Inconsistent(String),
}

/// A device by its place on the node or by UUID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceRef {
    Index(u32),
    Uuid(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRequest {
    pub device: DeviceRef,
    /// Bytes; `None` = the whole device.
    pub memory_bytes: Option<u64>,
    /// Percent; `None` = unthrottled.
    pub cores: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No hami annotation at all: the hook does nothing.
    NotRequested,
    /// The pod uses hami, but this container gets nothing (the sandbox, or an
    /// empty slot); the reason is logged.
    NothingForThisContainer(String),
    Inject(Vec<DeviceRequest>),
}

const ALLOCATE_SUFFIX: &str = "-devices-to-allocate";

/// More devices than any node has: a longer list is an attack on the hook's
/// CPU time (each entry is checked against the others), not a request.
pub const MAX_DEVICES_PER_CONTAINER: usize = 64;

/// Whether a CRI runtime (containerd, CRI-O) created this container, i.e. a
/// kubelet asked for it. Those runtimes always set these annotations and a pod
/// author cannot remove them, so a pod cannot pass for a podman container.
pub fn is_kubernetes(annotations: &BTreeMap<String, String>) -> bool {
    [
        keys::CRI_CONTAINER_TYPE,
        keys::CRIO_CONTAINER_TYPE,
        keys::CRI_CONTAINER_NAME,
        keys::CRIO_CONTAINER_NAME,
    ]
    .iter()
    .any(|k| annotations.contains_key(*k))
}

fn is_allocation_key(key: &str) -> bool {
    key == keys::VGPU_DEVICES_TO_ALLOCATE
        || key
            .strip_prefix("hami.io/")
            .and_then(|k| k.strip_suffix(ALLOCATE_SUFFIX))
            .is_some_and(|word| !word.is_empty() && !word.contains('/'))
}

const DIRECT_KEYS: [&str; 4] = [
    keys::DIRECT_GPU_MEMORY,
    keys::DIRECT_GPU_CORES,
    keys::DIRECT_VNPU_CORE_MEMORY,
    keys::DIRECT_DEVICES,
];

/// True when any annotation asks for hami-core; the hook's fast path.
pub fn is_requested(annotations: &BTreeMap<String, String>) -> bool {
    annotations.keys().any(|k| {
        is_allocation_key(k) || DIRECT_KEYS.contains(&k.as_str()) || k == keys::ASCEND_VNPU_MODE
    })
}

fn annotation_error(key: &str, reason: impl Into<String>) -> RequestError {
    RequestError::Annotation {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Decides what this container gets.
pub fn decide(annotations: &BTreeMap<String, String>) -> Result<Decision, RequestError> {
    if !is_requested(annotations) {
        return Ok(Decision::NotRequested);
    }
    let get = |k: &str| annotations.get(k).map(String::as_str);
    if let Some(mode) = get(keys::ASCEND_VNPU_MODE) {
        if mode != keys::ASCEND_VNPU_MODE_HAMI_CORE {
            // Another vNPU mode (templates) is the Ascend device plugin's business.
            let only_mode = !annotations
                .keys()
                .any(|k| is_allocation_key(k) || DIRECT_KEYS.contains(&k.as_str()));
            if only_mode {
                return Ok(Decision::NotRequested);
            }
        }
    }
    let container_type = get(keys::CRI_CONTAINER_TYPE).or(get(keys::CRIO_CONTAINER_TYPE));
    if container_type == Some(keys::CONTAINER_TYPE_SANDBOX) {
        return Ok(Decision::NothingForThisContainer(
            "the pod sandbox container".into(),
        ));
    }
    let allocations: Vec<(&String, &String)> = annotations
        .iter()
        .filter(|(k, _)| is_allocation_key(k))
        .collect();
    // On Kubernetes only the scheduler grants devices: the direct form would
    // let a pod author name any device and quota by hand.
    let kubernetes = is_kubernetes(annotations);
    let direct = !kubernetes && DIRECT_KEYS.iter().any(|k| annotations.contains_key(*k));
    if kubernetes
        && allocations.is_empty()
        && get(keys::ASCEND_VNPU_MODE) != Some(keys::ASCEND_VNPU_MODE_HAMI_CORE)
    {
        return Ok(Decision::NotRequested);
    }
    match (allocations.is_empty(), direct) {
        (false, true) => Err(RequestError::Inconsistent(format!(
            "both a scheduler allocation ({}) and direct quota annotations ({}) are set; use one",
            allocations[0].0,
            DIRECT_KEYS
                .iter()
                .filter(|k| annotations.contains_key(**k))
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        (false, false) => from_allocations(annotations, &allocations),
        (true, true) => from_direct(annotations),
        (true, false) => Err(RequestError::Inconsistent(format!(
            "{}={} asks for hami-core but no quota is given: set {} (or let the scheduler write {})",
            keys::ASCEND_VNPU_MODE,
            get(keys::ASCEND_VNPU_MODE).unwrap_or_default(),
            keys::DIRECT_VNPU_CORE_MEMORY,
            keys::VGPU_DEVICES_TO_ALLOCATE
        ))),
    }
}

/// The slot of the container these annotations describe.
fn slot_index(annotations: &BTreeMap<String, String>, slots: usize) -> Result<usize, RequestError> {
    let name = annotations
        .get(keys::CRI_CONTAINER_NAME)
        .or_else(|| annotations.get(keys::CRIO_CONTAINER_NAME));
    let Some(order) = annotations.get(keys::CONTAINER_NAMES) else {
        if slots == 1 {
            return Ok(0);
        }
        return Err(RequestError::Inconsistent(format!(
            "the allocation has {slots} container slots and no {} annotation to tell which one is container {}",
            keys::CONTAINER_NAMES,
            name.map_or("(unnamed)", String::as_str)
        )));
    };
    let names: Vec<&str> = order.split(',').map(str::trim).collect();
    if names.len() != slots {
        return Err(annotation_error(
            keys::CONTAINER_NAMES,
            format!(
                "names {} containers but the allocation has {slots} slots",
                names.len()
            ),
        ));
    }
    let Some(name) = name else {
        return Err(RequestError::Inconsistent(format!(
            "the container has neither {} nor {}; cannot find its slot",
            keys::CRI_CONTAINER_NAME,
            keys::CRIO_CONTAINER_NAME
        )));
    };
    let mut found = names.iter().enumerate().filter(|(_, n)| *n == name);
    match (found.next(), found.next()) {
        (Some((i, _)), None) => Ok(i),
        (None, _) => Err(annotation_error(
            keys::CONTAINER_NAMES,
            format!("container {name} is not listed in {order:?}"),
        )),
        (Some(_), Some(_)) => Err(annotation_error(
            keys::CONTAINER_NAMES,
            format!("container {name} is listed twice in {order:?}"),
        )),
    }
}

fn from_allocations(
    annotations: &BTreeMap<String, String>,
    allocations: &[(&String, &String)],
) -> Result<Decision, RequestError> {
    let mut devices = Vec::new();
    let mut slot = None;
    for (key, value) in allocations {
        let decoded =
            PodAllocation::decode(value).map_err(|e| annotation_error(key, e.to_string()))?;
        if decoded.is_empty() {
            return Err(annotation_error(key, "no container slots"));
        }
        let index = slot_index(annotations, decoded.containers.len())?;
        slot = Some(index);
        for d in decoded.container(index) {
            if d.uuid.is_empty() {
                return Err(annotation_error(key, "a device has an empty UUID"));
            }
            if d.cores > 100 {
                return Err(annotation_error(
                    key,
                    format!("device {}: cores {} is over 100", d.uuid, d.cores),
                ));
            }
            devices.push(DeviceRequest {
                device: DeviceRef::Uuid(d.uuid.clone()),
                memory_bytes: (d.mem_mib != 0).then(|| u64::from(d.mem_mib) << 20),
                cores: u8::try_from(d.cores).ok().filter(|c| *c != 0 && *c != 100),
            });
        }
    }
    check_distinct(&devices)?;
    if devices.is_empty() {
        return Ok(Decision::NothingForThisContainer(format!(
            "slot {} of the allocation is empty",
            slot.unwrap_or_default()
        )));
    }
    Ok(Decision::Inject(devices))
}

fn from_direct(annotations: &BTreeMap<String, String>) -> Result<Decision, RequestError> {
    let get = |k: &str| annotations.get(k).map(String::as_str);
    let gpu_memory = get(keys::DIRECT_GPU_MEMORY);
    let npu_memory = get(keys::DIRECT_VNPU_CORE_MEMORY);
    if gpu_memory.is_some() && npu_memory.is_some() {
        return Err(RequestError::Inconsistent(format!(
            "both {} and {} are set; use the one for this node's devices",
            keys::DIRECT_GPU_MEMORY,
            keys::DIRECT_VNPU_CORE_MEMORY
        )));
    }
    let memory_bytes = match (gpu_memory, npu_memory) {
        (Some(v), _) => Some((keys::DIRECT_GPU_MEMORY, v)),
        (_, Some(v)) => Some((keys::DIRECT_VNPU_CORE_MEMORY, v)),
        _ => None,
    }
    .map(|(key, v)| {
        MemoryQuota::parse(v, BareUnit::Mebibytes, "memory quota")
            .map_err(|e| annotation_error(key, e.to_string()))
            .and_then(|q| match q.bytes() {
                0 => Err(annotation_error(key, "a quota of 0 limits nothing")),
                b => Ok(b),
            })
    })
    .transpose()?;
    let cores = get(keys::DIRECT_GPU_CORES)
        .map(|v| {
            Percent::parse(v, "compute share")
                .map_err(|e| annotation_error(keys::DIRECT_GPU_CORES, e.to_string()))
        })
        .transpose()?
        .map(Percent::get)
        .filter(|c| *c != 0 && *c != 100);
    let devices: Vec<DeviceRef> = match get(keys::DIRECT_DEVICES) {
        None => vec![DeviceRef::Index(0)],
        Some(list) => list
            .split(',')
            .map(|d| parse_device_ref(d.trim()))
            .collect::<Result<_, _>>()?,
    };
    let requests: Vec<DeviceRequest> = devices
        .into_iter()
        .map(|device| DeviceRequest {
            device,
            memory_bytes,
            cores,
        })
        .collect();
    check_distinct(&requests)?;
    Ok(Decision::Inject(requests))
}

fn parse_device_ref(text: &str) -> Result<DeviceRef, RequestError> {
    if text.is_empty() {
        return Err(annotation_error(keys::DIRECT_DEVICES, "an empty entry"));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map(DeviceRef::Index).map_err(|_| {
            annotation_error(keys::DIRECT_DEVICES, format!("index {text} is too large"))
        });
    }
    if text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Ok(DeviceRef::Uuid(text.to_owned()));
    }
    Err(annotation_error(
        keys::DIRECT_DEVICES,
        format!("{text:?} is neither a device index nor a UUID"),
    ))
}

fn check_distinct(requests: &[DeviceRequest]) -> Result<(), RequestError> {
    if requests.len() > MAX_DEVICES_PER_CONTAINER {
        return Err(RequestError::Inconsistent(format!(
            "{} devices requested for one container; at most {MAX_DEVICES_PER_CONTAINER} are accepted",
            requests.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(requests.len());
    for r in requests {
        if !seen.insert(&r.device) {
            return Err(RequestError::Inconsistent(format!(
                "device {:?} is requested twice",
                r.device
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn inject(pairs: &[(&str, &str)]) -> Vec<DeviceRequest> {
        match decide(&ann(pairs)).unwrap() {
            Decision::Inject(d) => d,
            other => panic!("{pairs:?} -> {other:?}"),
        }
    }

    const TWO_SLOTS: &str = "GPU-a,NVIDIA,3000,30:;GPU-b,NVIDIA,1024,0:GPU-c,NVIDIA,2048,100:";

    #[test]
    fn unannotated_and_foreign_annotations_are_not_ours() {
        assert_eq!(decide(&ann(&[])).unwrap(), Decision::NotRequested);
        assert_eq!(
            decide(&ann(&[
                ("io.kubernetes.cri.container-name", "app"),
                ("hami.io/bind-phase", "success"),
                ("hami.io/vgpu-node", "n1"),
            ]))
            .unwrap(),
            Decision::NotRequested
        );
        assert_eq!(
            decide(&ann(&[("huawei.com/vnpu-mode", "template")])).unwrap(),
            Decision::NotRequested
        );
    }

    #[test]
    fn kubernetes_containers_ignore_the_direct_form() {
        // A pod author's hand-written quota and device list: podman-only.
        for cri in [
            "io.kubernetes.cri.container-type",
            "io.kubernetes.cri-o.ContainerType",
        ] {
            let forged = ann(&[
                (cri, "container"),
                ("hami.io/devices", "0,1"),
                ("hami.io/gpumem", "1g"),
            ]);
            assert_eq!(decide(&forged).unwrap(), Decision::NotRequested, "{cri}");
            // hami-core mode still needs the scheduler's allocation: fail closed.
            let mut mode = forged.clone();
            mode.insert("huawei.com/vnpu-mode".into(), "hami-core".into());
            let err = decide(&mode).unwrap_err().to_string();
            assert!(err.contains("no quota is given"), "{err}");
        }
        // The same annotations under podman still work.
        assert_eq!(inject(&[("hami.io/gpumem", "1g")]).len(), 1);
    }

    #[test]
    fn long_device_lists_are_refused_quickly() {
        let list: Vec<String> = (0..30_000).map(|i| i.to_string()).collect();
        let err = decide(&ann(&[("hami.io/devices", &list.join(","))]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 64"), "{err}");
        let slot: String = (0..30_000)
            .map(|i| format!("GPU-{i},NVIDIA,1,0:"))
            .collect();
        let err = decide(&ann(&[(
            "hami.io/vgpu-devices-to-allocate",
            &format!("{slot};"),
        )]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("at most 64"), "{err}");
        let twice = inject(&[(
            "hami.io/devices",
            &(0..64).map(|i| i.to_string()).collect::<Vec<_>>().join(","),
        )]);
        assert_eq!(twice.len(), 64);
    }

    #[test]
    fn a_single_slot_allocation_needs_no_names() {
        let d = inject(&[("hami.io/vgpu-devices-to-allocate", "GPU-a,NVIDIA,3000,30:;")]);
        // "…:;" is one container with a trailing separator in HAMi's encoding.
        assert_eq!(
            d,
            vec![DeviceRequest {
                device: DeviceRef::Uuid("GPU-a".into()),
                memory_bytes: Some(3000 << 20),
                cores: Some(30),
            }]
        );
    }

    #[test]
    fn the_container_name_picks_the_slot() {
        let base = [
            ("hami.io/vgpu-devices-to-allocate", TWO_SLOTS),
            ("hami.io/container-names", "init,app"),
        ];
        let app = inject(&[
            base[0],
            base[1],
            ("io.kubernetes.cri.container-name", "app"),
        ]);
        assert_eq!(app.len(), 2);
        assert_eq!(app[0].device, DeviceRef::Uuid("GPU-b".into()));
        assert_eq!(app[0].cores, None, "0 cores is unthrottled");
        assert_eq!(app[1].cores, None, "100 cores is the whole device");
        let init = inject(&[base[0], base[1], ("io.kubernetes.container.name", "init")]);
        assert_eq!(init[0].memory_bytes, Some(3000 << 20));
    }

    #[test]
    fn empty_slots_and_sandboxes_get_nothing() {
        let d = decide(&ann(&[
            ("hami.io/vgpu-devices-to-allocate", ";GPU-a,NVIDIA,1000,0:"),
            ("hami.io/container-names", "sidecar,app"),
            ("io.kubernetes.cri.container-name", "sidecar"),
        ]))
        .unwrap();
        assert!(matches!(d, Decision::NothingForThisContainer(ref r) if r.contains("slot 0")));
        let d = decide(&ann(&[
            ("hami.io/vgpu-devices-to-allocate", TWO_SLOTS),
            ("io.kubernetes.cri.container-type", "sandbox"),
        ]))
        .unwrap();
        assert!(matches!(d, Decision::NothingForThisContainer(_)));
    }

    #[test]
    fn vendor_allocation_keys_are_read() {
        let d = inject(&[
            ("huawei.com/vnpu-mode", "hami-core"),
            (
                "hami.io/Ascend910B3-devices-to-allocate",
                "npu-uuid-1,Ascend910B3,16384,0:",
            ),
        ]);
        assert_eq!(d[0].memory_bytes, Some(16 << 30));
    }

    #[test]
    fn direct_annotations() {
        let d = inject(&[("hami.io/gpumem", "3000m"), ("hami.io/gpucores", "30")]);
        assert_eq!(
            d,
            vec![DeviceRequest {
                device: DeviceRef::Index(0),
                memory_bytes: Some(3000 << 20),
                cores: Some(30)
            }]
        );
        let d = inject(&[("hami.io/gpumem", "2048"), ("hami.io/devices", "1, GPU-x")]);
        assert_eq!(d[0].device, DeviceRef::Index(1));
        assert_eq!(d[1].device, DeviceRef::Uuid("GPU-x".into()));
        assert_eq!(d[1].memory_bytes, Some(2 << 30));
        let d = inject(&[
            ("huawei.com/vnpu-mode", "hami-core"),
            ("hami.io/vnpu-core-memory", "4096"),
        ]);
        assert_eq!(d[0].memory_bytes, Some(4 << 30));
    }

    #[test]
    fn malformed_or_inconsistent_requests_fail_closed() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("hami.io/gpumem", "4Gi")], "hami.io/gpumem"),
            (&[("hami.io/gpumem", "0")], "limits nothing"),
            (&[("hami.io/gpumem", "")], "hami.io/gpumem"),
            (&[("hami.io/gpucores", "150")], "hami.io/gpucores"),
            (&[("hami.io/gpucores", "thirty")], "hami.io/gpucores"),
            (&[("hami.io/devices", "0,0")], "twice"),
            (&[("hami.io/devices", "0,,1")], "empty entry"),
            (&[("hami.io/devices", "../x")], "neither"),
            (&[("hami.io/devices", "99999999999")], "too large"),
            (
                &[("hami.io/gpumem", "1g"), ("hami.io/vnpu-core-memory", "1g")],
                "both",
            ),
            (&[("huawei.com/vnpu-mode", "hami-core")], "no quota"),
            (
                &[
                    ("hami.io/vgpu-devices-to-allocate", "GPU-a,NVIDIA,1,0:"),
                    ("hami.io/gpumem", "1g"),
                ],
                "use one",
            ),
            (
                &[("hami.io/vgpu-devices-to-allocate", "GPU-a,NVIDIA,x,0:")],
                "hami.io/vgpu-devices-to-allocate",
            ),
            (
                &[("hami.io/vgpu-devices-to-allocate", "GPU-a,NVIDIA,1,101:")],
                "over 100",
            ),
            (
                &[("hami.io/vgpu-devices-to-allocate", TWO_SLOTS)],
                "2 container slots",
            ),
            (
                &[
                    ("hami.io/vgpu-devices-to-allocate", TWO_SLOTS),
                    ("hami.io/container-names", "a,b"),
                    ("io.kubernetes.cri.container-name", "c"),
                ],
                "not listed",
            ),
            (
                &[
                    ("hami.io/vgpu-devices-to-allocate", TWO_SLOTS),
                    ("hami.io/container-names", "a,b,c"),
                    ("io.kubernetes.cri.container-name", "a"),
                ],
                "3 containers",
            ),
            (
                &[
                    ("hami.io/vgpu-devices-to-allocate", TWO_SLOTS),
                    ("hami.io/container-names", "a,a"),
                    ("io.kubernetes.cri.container-name", "a"),
                ],
                "twice",
            ),
            (
                &[
                    ("hami.io/vgpu-devices-to-allocate", TWO_SLOTS),
                    ("hami.io/container-names", "a,b"),
                ],
                "neither",
            ),
            (
                &[(
                    "hami.io/vgpu-devices-to-allocate",
                    "GPU-a,NVIDIA,1,0:GPU-a,NVIDIA,1,0:",
                )],
                "twice",
            ),
        ];
        for (pairs, needle) in cases {
            let err = decide(&ann(pairs)).unwrap_err().to_string();
            assert!(err.contains(needle), "{pairs:?} -> {err}");
        }
    }

    proptest! {
        #[test]
        fn decide_never_panics(
            pairs in proptest::collection::btree_map(
                prop_oneof![
                    Just("hami.io/vgpu-devices-to-allocate".to_string()),
                    Just("hami.io/container-names".to_string()),
                    Just("io.kubernetes.cri.container-name".to_string()),
                    Just("hami.io/gpumem".to_string()),
                    Just("hami.io/gpucores".to_string()),
                    Just("hami.io/devices".to_string()),
                    Just("huawei.com/vnpu-mode".to_string()),
                    "\\PC{0,20}",
                ],
                "[ -~]{0,40}",
                0..6,
            )
        ) {
            let _ = decide(&pairs);
        }
    }
}
