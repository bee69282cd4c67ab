//! `/metrics`: the scheduler's view of allocations in Prometheus text format,
//! under the names HAMi's scheduler exports (so its Grafana dashboard and
//! HAMi-WebUI read them unchanged), plus the `hami_*_bytes` names of the
//! hami-rs contract for the two memory series.

use std::fmt::Write;

use crate::schedule::vendor::VendorProfile;
use crate::state::ClusterState;

const MIB: u64 = 1 << 20;

/// A label value with `\`, `"` and newlines escaped as the format requires.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    name: &'a str,
    help: &'a str,
    rows: Vec<(String, f64)>,
}

fn render_family(out: &mut String, f: &Family<'_>) {
    let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
    let _ = writeln!(out, "# TYPE {} gauge", f.name);
    for (labels, value) in &f.rows {
        let _ = writeln!(out, "{}{{{labels}}} {value}", f.name);
    }
}

/// `hami_resource_quota_limit` and `hami_resource_quota_used`, one row per
/// namespace and quota key (`limits.nvidia.com/gpumem` …); memory in MiB
/// and cores in percent, as the quota counts them.
fn quota_families<'a>(state: &ClusterState, profiles: &[VendorProfile]) -> [Family<'a>; 2] {
    let mut limits = Vec::new();
    let mut used = Vec::new();
    for (namespace, hard) in &state.quotas {
        let check = state.quota_check(namespace, profiles);
        for (key, value) in hard {
            let labels = format!("namespace=\"{}\",resource=\"{}\"", esc(namespace), esc(key));
            limits.push((labels.clone(), *value as f64));
            let in_use = profiles.iter().find_map(|p| {
                let u = check
                    .as_ref()?
                    .used
                    .get(p.name())
                    .copied()
                    .unwrap_or_default();
                let r = &p.resources;
                if r.resource_memory_name
                    .as_ref()
                    .is_some_and(|m| *key == format!("limits.{m}"))
                {
                    Some(u.memory_mib)
                } else if r
                    .resource_core_name
                    .as_ref()
                    .is_some_and(|c| *key == format!("limits.{c}"))
                {
                    Some(u.cores)
                } else {
                    None
                }
            });
            if let Some(v) = in_use {
                used.push((labels, v as f64));
            }
        }
    }
    [
        Family {
            name: "hami_resource_quota_limit",
            help: "Extended ResourceQuota hard limit (MiB for memory, percent for cores)",
            rows: limits,
        },
        Family {
            name: "hami_resource_quota_used",
            help: "Extended ResourceQuota in use by the namespace's pods",
            rows: used,
        },
    ]
}

pub fn render(state: &ClusterState, profiles: &[VendorProfile]) -> String {
    let device_labels = |node: &str, idx: u32, uuid: &str| {
        format!(
            "deviceidx=\"{idx}\",deviceuuid=\"{}\",nodeid=\"{}\",zone=\"vGPU\"",
            esc(uuid),
            esc(node)
        )
    };
    let mut families: Vec<Family<'_>> = Vec::new();
    let mut per_device = |name, help, value: &dyn Fn(&crate::schedule::device::Device) -> f64| {
        let rows = state
            .nodes
            .values()
            .flat_map(|n| {
                n.devices
                    .iter()
                    .map(|d| (device_labels(&n.name, d.index, &d.uuid), value(d)))
            })
            .collect();
        families.push(Family { name, help, rows });
    };
    per_device(
        "GPUDeviceCoreLimit",
        "Device core limit for a certain GPU",
        &|d| f64::from(d.cores),
    );
    per_device(
        "GPUDeviceMemoryLimit",
        "Device memory limit for a certain GPU (bytes)",
        &|d| (d.memory_mib * MIB) as f64,
    );
    per_device(
        "GPUDeviceCoreAllocated",
        "Device core allocated for a certain GPU",
        &|d| f64::from(d.used_cores),
    );
    per_device(
        "GPUDeviceSharedNum",
        "Number of containers sharing this GPU",
        &|d| f64::from(d.tasks),
    );
    // HAMi labels its memory-allocated series with the cores in use as well.
    let memory_rows: Vec<(String, f64)> = state
        .nodes
        .values()
        .flat_map(|n| {
            n.devices.iter().map(|d| {
                (
                    format!(
                        "devicecores=\"{}\",{}",
                        d.used_cores,
                        device_labels(&n.name, d.index, &d.uuid)
                    ),
                    (d.used_memory_mib * MIB) as f64,
                )
            })
        })
        .collect();
    families.push(Family {
        name: "GPUDeviceMemoryAllocated",
        help: "Device memory allocated for a certain GPU (bytes)",
        rows: memory_rows.clone(),
    });
    families.push(Family {
        name: "hami_gpu_memory_allocated_bytes",
        help: "Device memory allocated for a certain GPU",
        rows: memory_rows,
    });
    let container_rows =
        |value: &dyn Fn(&crate::state::ContainerGrant) -> f64| -> Vec<(String, f64)> {
            state
            .grants
            .iter()
            .map(|g| {
                (
                    format!(
                        "containeridx=\"{}\",deviceuuid=\"{}\",nodename=\"{}\",podname=\"{}\",podnamespace=\"{}\",zone=\"vGPU\"",
                        g.container,
                        esc(&g.uuid),
                        esc(&g.node),
                        esc(&g.pod),
                        esc(&g.namespace)
                    ),
                    value(g),
                )
            })
            .collect()
        };
    families.push(Family {
        name: "vGPUCoreAllocated",
        help: "vGPU core allocated from a container",
        rows: container_rows(&|g| f64::from(g.cores)),
    });
    families.push(Family {
        name: "vGPUMemoryAllocated",
        help: "vGPU memory allocated from a container (bytes)",
        rows: container_rows(&|g| (g.memory_mib * MIB) as f64),
    });
    families.push(Family {
        name: "hami_vgpu_memory_allocated_bytes",
        help: "vGPU memory allocated from a container",
        rows: container_rows(&|g| (g.memory_mib * MIB) as f64),
    });
    families.extend(quota_families(state, profiles));
    let mut out = String::new();
    for f in &families {
        render_family(&mut out, f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::json;

    #[test]
    fn allocations_render_under_hami_names() {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1", "annotations": {
            "hami.io/node-nvidia-register":
                r#"[{"id":"GPU-a","count":10,"devmem":8192,"devcore":100,"type":"T4","health":true}]"#}}}))
        .unwrap();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p\"1", "namespace": "default", "annotations": {
                "hami.io/vgpu-node": "n1", "hami.io/vgpu-devices-allocated": "GPU-a,T4,3000,30:;"}},
            "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running"}}))
        .unwrap();
        let quota: k8s_openapi::api::core::v1::ResourceQuota = serde_json::from_value(json!({
            "metadata": {"name": "gpu", "namespace": "default"},
            "spec": {"hard": {"limits.nvidia.com/gpumem": "6000", "limits.nvidia.com/gpucores": "100"}}}))
        .unwrap();
        let state = ClusterState::rebuild(&[node], &[pod], chrono::NaiveDateTime::default())
            .with_quotas(&[quota]);
        let text = render(&state, &VendorProfile::defaults());
        for line in [
            "# TYPE GPUDeviceMemoryLimit gauge",
            r#"GPUDeviceMemoryLimit{deviceidx="0",deviceuuid="GPU-a",nodeid="n1",zone="vGPU"} 8589934592"#,
            r#"GPUDeviceCoreAllocated{deviceidx="0",deviceuuid="GPU-a",nodeid="n1",zone="vGPU"} 30"#,
            r#"GPUDeviceMemoryAllocated{devicecores="30",deviceidx="0",deviceuuid="GPU-a",nodeid="n1",zone="vGPU"} 3145728000"#,
            r#"hami_gpu_memory_allocated_bytes{devicecores="30",deviceidx="0",deviceuuid="GPU-a",nodeid="n1",zone="vGPU"} 3145728000"#,
            r#"GPUDeviceSharedNum{deviceidx="0",deviceuuid="GPU-a",nodeid="n1",zone="vGPU"} 1"#,
            r#"vGPUMemoryAllocated{containeridx="0",deviceuuid="GPU-a",nodename="n1",podname="p\"1",podnamespace="default",zone="vGPU"} 3145728000"#,
            r#"hami_vgpu_memory_allocated_bytes{containeridx="0",deviceuuid="GPU-a",nodename="n1",podname="p\"1",podnamespace="default",zone="vGPU"} 3145728000"#,
            r#"vGPUCoreAllocated{containeridx="0",deviceuuid="GPU-a",nodename="n1",podname="p\"1",podnamespace="default",zone="vGPU"} 30"#,
            r#"hami_resource_quota_limit{namespace="default",resource="limits.nvidia.com/gpumem"} 6000"#,
            r#"hami_resource_quota_used{namespace="default",resource="limits.nvidia.com/gpumem"} 3000"#,
            r#"hami_resource_quota_used{namespace="default",resource="limits.nvidia.com/gpucores"} 30"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
