//! A Kubernetes pod's device requests, read the way HAMi reads them: each
//! container's limits (requests where a limit is absent) for one vendor's
//! resource names, and the pod's selection annotations.

use std::collections::BTreeMap;

use hami_api::{keys, Quantity, ResourceKind};
use k8s_openapi::api::core::v1::{Container, Pod};
use thiserror::Error;

use super::request::{ContainerRequest, MemoryRequest, PodRequest, Selection};
use super::vendor::{Family, VendorProfile};

/// NeuronCores per device assumed when a core request spans devices (Inf2,
/// Trn1 and Trn2 have two; HAMi assumes the same until it has seen a node).
pub const NEURON_CORES_PER_DEVICE: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PodRequestError {
    #[error("container {container}: {resource} = {value:?}: {reason}")]
    Resource {
        container: String,
        resource: String,
        value: String,
        reason: String,
    },
    #[error("the pod asks for devices of two families, {first} and {second}; hami-rs places one family per pod")]
    TwoFamilies { first: String, second: String },
}

fn amount(container: &Container, name: &str) -> Result<Option<i64>, PodRequestError> {
    let Some(resources) = &container.resources else {
        return Ok(None);
    };
    let value = resources
        .limits
        .as_ref()
        .and_then(|l| l.get(name))
        .or_else(|| resources.requests.as_ref().and_then(|r| r.get(name)));
    let Some(q) = value else {
        return Ok(None);
    };
    let bad = |reason: String| PodRequestError::Resource {
        container: container.name.clone(),
        resource: name.to_owned(),
        value: q.0.clone(),
        reason,
    };
    let v = Quantity::parse(&q.0)
        .and_then(|q| q.value_ceil())
        .map_err(|e| bad(e.to_string()))?;
    if v < 0 {
        return Err(bad("negative".into()));
    }
    Ok(Some(v))
}

fn container_request(
    c: &Container,
    profile: &VendorProfile,
) -> Result<Option<ContainerRequest>, PodRequestError> {
    let vendor = &profile.resources;
    let get = |kind: ResourceKind| -> Result<Option<i64>, PodRequestError> {
        let name = match kind {
            ResourceKind::Count => Some(&vendor.resource_count_name),
            ResourceKind::Memory => vendor.resource_memory_name.as_ref(),
            ResourceKind::MemoryPercentage => vendor.resource_memory_percentage_name.as_ref(),
            ResourceKind::Cores => vendor.resource_core_name.as_ref(),
            ResourceKind::Priority => vendor.resource_priority_name.as_ref(),
        };
        match name {
            Some(n) => amount(c, n),
            None => Ok(None),
        }
    };
    let (count, memory, percent, cores) = (
        get(ResourceKind::Count)?,
        get(ResourceKind::Memory)?,
        get(ResourceKind::MemoryPercentage)?,
        get(ResourceKind::Cores)?,
    );
    if count.is_none() && memory.is_none() && percent.is_none() && cores.is_none() {
        return Ok(None);
    }
    let bad = |resource: &Option<String>, value: i64, reason: &str| PodRequestError::Resource {
        container: c.name.clone(),
        resource: resource.clone().unwrap_or_default(),
        value: value.to_string(),
        reason: reason.into(),
    };
    if profile.family == Family::AwsNeuron {
        // Whole devices, or NeuronCores: a few on one device, or whole
        // devices' worth.
        let clamp = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
        let (count, cores) = match (count, cores) {
            (Some(0), _) => return Ok(None),
            (Some(n), _) => (clamp(n), u32::MAX),
            (None, Some(0)) | (None, None) => return Ok(None),
            (None, Some(n)) if n <= i64::from(NEURON_CORES_PER_DEVICE) => (1, clamp(n)),
            (None, Some(n)) if n % i64::from(NEURON_CORES_PER_DEVICE) == 0 => (
                clamp(n / i64::from(NEURON_CORES_PER_DEVICE)),
                NEURON_CORES_PER_DEVICE,
            ),
            (None, Some(n)) => {
                return Err(bad(
                    &vendor.resource_core_name,
                    n,
                    "NeuronCores spanning devices must fill them: 1, 2 or a multiple of 2",
                ))
            }
        };
        return Ok(Some(ContainerRequest {
            count,
            memory: MemoryRequest::Mib(0),
            cores,
        }));
    }
    let over_100 = |kind: ResourceKind, v: i64| -> Result<u32, PodRequestError> {
        if v > 100 {
            let name = match kind {
                ResourceKind::Cores => vendor.resource_core_name.clone(),
                _ => vendor.resource_memory_percentage_name.clone(),
            };
            return Err(PodRequestError::Resource {
                container: c.name.clone(),
                resource: name.unwrap_or_default(),
                value: v.to_string(),
                reason: "a percentage over 100".into(),
            });
        }
        Ok(v as u32)
    };
    // A share without a count asks for one device.
    let mut count = count.map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX));
    if count == 0 {
        return Ok(None);
    }
    if let Family::Ascend(chip) = &profile.family {
        if chip.modules_of_two && count > 1 && count % 2 != 0 {
            return Err(bad(
                &Some(vendor.resource_count_name.clone()),
                i64::from(count),
                "Ascend910C NPUs come in modules of two: ask for 1 or an even number",
            ));
        }
        // A whole 910C NPU is a whole module (HAMi's minimum unit); a share
        // of one NPU stays one.
        if chip.modules_of_two
            && count == 1
            && memory.is_none()
            && percent.is_none()
            && cores.is_none()
        {
            count = 2;
        }
    }
    let memory = match (memory, percent) {
        (Some(m), _) => MemoryRequest::Mib(m as u64),
        (None, Some(p)) => MemoryRequest::Percent(over_100(ResourceKind::MemoryPercentage, p)?),
        // HAMi's default (defaultMem 0): the whole device's memory.
        (None, None) => MemoryRequest::Percent(100),
    };
    let cores = match cores {
        Some(v) => over_100(ResourceKind::Cores, v)?,
        None => 0,
    };
    Ok(Some(ContainerRequest {
        count,
        memory,
        cores,
    }))
}

/// The pod's requests for `profile`'s devices.
pub fn pod_request(pod: &Pod, profile: &VendorProfile) -> Result<PodRequest, PodRequestError> {
    let spec = pod.spec.as_ref();
    let slots =
        |cs: Option<&Vec<Container>>| -> Result<Vec<Option<ContainerRequest>>, PodRequestError> {
            cs.map(|cs| cs.iter().map(|c| container_request(c, profile)).collect())
                .unwrap_or_else(|| Ok(Vec::new()))
        };
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    Ok(PodRequest {
        init: slots(spec.and_then(|s| s.init_containers.as_ref()))?,
        app: slots(spec.map(|s| &s.containers))?,
        selection: Selection::from_annotations(annotations),
        hami_core: matches!(profile.family, Family::Ascend(_))
            && annotations.get(keys::ASCEND_VNPU_MODE).map(String::as_str)
                == Some(keys::ASCEND_VNPU_MODE_HAMI_CORE),
    })
}

/// The one family `pod` asks devices of, with its requests; `None` for a
/// pod that asks for none. A pod asking for two families is refused: one
/// decision annotation, one node lock, one family per pod.
pub fn pod_request_any(
    pod: &Pod,
    profiles: &[VendorProfile],
) -> Result<Option<(u16, PodRequest)>, PodRequestError> {
    let mut found: Option<(u16, PodRequest)> = None;
    for (i, profile) in profiles.iter().enumerate() {
        let request = pod_request(pod, profile)?;
        if !request.asks_for_devices() {
            continue;
        }
        if let Some((first, _)) = &found {
            return Err(PodRequestError::TwoFamilies {
                first: profiles[usize::from(*first)].name().to_owned(),
                second: profile.name().to_owned(),
            });
        }
        found = Some((u16::try_from(i).unwrap_or(u16::MAX), request));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: serde_json::Value, init: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": {"nvidia.com/use-gputype": "A100"}},
            "spec": {"containers": containers, "initContainers": init}
        }))
        .unwrap()
    }

    #[test]
    fn reads_hami_resources_from_limits() {
        let p = pod(
            json!([
                {"name": "a", "resources": {"limits": {"nvidia.com/gpu": "2", "nvidia.com/gpumem": "3000", "nvidia.com/gpucores": "30"}}},
                {"name": "sidecar", "resources": {"limits": {"cpu": "1"}}},
                {"name": "b", "resources": {"requests": {"nvidia.com/gpumem-percentage": "50"}}}
            ]),
            json!([{"name": "init", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]),
        );
        let r = pod_request(&p, &VendorProfile::nvidia()).unwrap();
        assert_eq!(
            r.init,
            vec![Some(ContainerRequest {
                count: 1,
                memory: MemoryRequest::Percent(100),
                cores: 0
            })]
        );
        assert_eq!(
            r.app[0],
            Some(ContainerRequest {
                count: 2,
                memory: MemoryRequest::Mib(3000),
                cores: 30
            })
        );
        assert_eq!(r.app[1], None, "the sidecar keeps its slot");
        assert_eq!(
            r.app[2],
            Some(ContainerRequest {
                count: 1,
                memory: MemoryRequest::Percent(50),
                cores: 0
            })
        );
        assert_eq!(r.selection.use_types, vec!["A100"]);
        assert!(r.asks_for_devices());
    }

    #[test]
    fn the_captured_pod_asks_for_nothing() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/fixtures/k8s/sample-extender-args.json"),
        )
        .unwrap();
        let args: crate::extender::ExtenderArgs = serde_json::from_str(&text).unwrap();
        let r = pod_request(&args.pod, &VendorProfile::nvidia()).unwrap();
        assert_eq!(r.app, vec![None]);
        assert!(!r.asks_for_devices());
    }

    #[test]
    fn bad_quantities_are_named() {
        for (limits, needle) in [
            (json!({"nvidia.com/gpumem": "lots"}), "nvidia.com/gpumem"),
            (json!({"nvidia.com/gpucores": "150"}), "over 100"),
            (
                json!({"nvidia.com/gpumem-percentage": "101"}),
                "nvidia.com/gpumem-percentage",
            ),
            (json!({"nvidia.com/gpu": "-1"}), "negative"),
        ] {
            let p = pod(
                json!([{"name": "c", "resources": {"limits": limits}}]),
                json!([]),
            );
            let err = pod_request(&p, &VendorProfile::nvidia())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle) && err.contains("container c"), "{err}");
        }
    }

    fn profile(name: &str) -> VendorProfile {
        VendorProfile::defaults()
            .into_iter()
            .find(|p| p.name() == name)
            .unwrap()
    }

    fn one(limits: serde_json::Value, annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": annotations},
            "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]}
        }))
        .unwrap()
    }

    #[test]
    fn vendor_specific_requests() {
        let neuron = profile("awsneuron");
        let ask = |limits: serde_json::Value, p: &VendorProfile| {
            pod_request(&one(limits, json!({})), p).map(|r| r.app[0])
        };
        let whole = |count| ContainerRequest {
            count,
            memory: MemoryRequest::Mib(0),
            cores: u32::MAX,
        };
        let cores = |count, cores| ContainerRequest {
            count,
            memory: MemoryRequest::Mib(0),
            cores,
        };
        assert_eq!(
            ask(json!({"aws.amazon.com/neuron": "4"}), &neuron),
            Ok(Some(whole(4)))
        );
        assert_eq!(
            ask(json!({"aws.amazon.com/neuroncore": "1"}), &neuron),
            Ok(Some(cores(1, 1)))
        );
        assert_eq!(
            ask(json!({"aws.amazon.com/neuroncore": "8"}), &neuron),
            Ok(Some(cores(4, 2)))
        );
        let odd = ask(json!({"aws.amazon.com/neuroncore": "3"}), &neuron).unwrap_err();
        assert!(odd.to_string().contains("multiple of 2"), "{odd}");

        let c = profile("Ascend910C");
        // A whole 910C NPU is a module of two; a share of one stays one.
        assert_eq!(
            ask(json!({"huawei.com/Ascend910C": "1"}), &c)
                .unwrap()
                .unwrap()
                .count,
            2
        );
        assert_eq!(
            ask(
                json!({"huawei.com/Ascend910C": "1", "huawei.com/Ascend910C-memory": "8000"}),
                &c
            )
            .unwrap()
            .unwrap()
            .count,
            1
        );
        let three = ask(json!({"huawei.com/Ascend910C": "3"}), &c).unwrap_err();
        assert!(three.to_string().contains("even number"), "{three}");

        let b3 = profile("Ascend910B3");
        let mode = |v: &str| {
            pod_request(
                &one(
                    json!({"huawei.com/Ascend910B3": "1"}),
                    json!({"huawei.com/vnpu-mode": v}),
                ),
                &b3,
            )
            .unwrap()
            .hami_core
        };
        assert!(mode("hami-core") && !mode("templates"));
    }

    #[test]
    fn one_family_per_pod() {
        let profiles = VendorProfile::defaults();
        let p = one(json!({"huawei.com/Ascend910B3": "1"}), json!({}));
        let (vendor, r) = pod_request_any(&p, &profiles).unwrap().unwrap();
        assert_eq!(profiles[usize::from(vendor)].name(), "Ascend910B3");
        assert!(r.asks_for_devices());
        let none = one(json!({"cpu": "1"}), json!({}));
        assert_eq!(pod_request_any(&none, &profiles).unwrap(), None);
        let two = one(
            json!({"nvidia.com/gpu": "1", "vastaitech.com/va": "1"}),
            json!({}),
        );
        let e = pod_request_any(&two, &profiles).unwrap_err().to_string();
        assert!(e.contains("nvidia and vastai"), "{e}");
    }
}
