//! A Kubernetes pod's device requests, read the way HAMi reads them: each
//! container's limits (requests where a limit is absent) for one vendor's
//! resource names, and the pod's selection annotations.

use std::collections::BTreeMap;

use hami_api::{Quantity, ResourceKind, VendorResources};
use k8s_openapi::api::core::v1::{Container, Pod};
use thiserror::Error;

use super::request::{ContainerRequest, MemoryRequest, PodRequest, Selection};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PodRequestError {
    #[error("container {container}: {resource} = {value:?}: {reason}")]
    Resource {
        container: String,
        resource: String,
        value: String,
        reason: String,
    },
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
    vendor: &VendorResources,
) -> Result<Option<ContainerRequest>, PodRequestError> {
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
    let count = count.map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX));
    if count == 0 {
        return Ok(None);
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

/// The pod's requests for `vendor`'s devices.
pub fn pod_request(pod: &Pod, vendor: &VendorResources) -> Result<PodRequest, PodRequestError> {
    let spec = pod.spec.as_ref();
    let slots =
        |cs: Option<&Vec<Container>>| -> Result<Vec<Option<ContainerRequest>>, PodRequestError> {
            cs.map(|cs| cs.iter().map(|c| container_request(c, vendor)).collect())
                .unwrap_or_else(|| Ok(Vec::new()))
        };
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    Ok(PodRequest {
        init: slots(spec.and_then(|s| s.init_containers.as_ref()))?,
        app: slots(spec.map(|s| &s.containers))?,
        selection: Selection::from_annotations(annotations),
    })
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
        let r = pod_request(&p, &VendorResources::nvidia()).unwrap();
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
        let r = pod_request(&args.pod, &VendorResources::nvidia()).unwrap();
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
            let err = pod_request(&p, &VendorResources::nvidia())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle) && err.contains("container c"), "{err}");
        }
    }
}
