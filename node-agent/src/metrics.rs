//! The node agent's `/metrics`: per-container device memory and limits under
//! HAMi's vGPU monitor names (so its dashboards and HAMi-WebUI read them) and
//! the hami-rs contract names, plus what the monitor could not read.

use std::fmt::Write;

use crate::monitor::Report;

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family {
    name: &'static str,
    help: &'static str,
    rows: Vec<(String, f64)>,
}

/// The metrics text for `report`, read on `node`.
pub fn render(report: &Report, node: &str) -> String {
    let mut used = Vec::new();
    let mut limit = Vec::new();
    let mut hami_used = Vec::new();
    let mut hami_limit = Vec::new();
    let mut core_limit = Vec::new();
    let mut processes = Vec::new();
    let mut recoveries = Vec::new();
    for c in &report.containers {
        let o = &c.owner;
        let who = format!(
            "node=\"{}\",namespace=\"{}\",pod=\"{}\",container=\"{}\",allocation=\"{}\"",
            esc(node),
            esc(&o.namespace),
            esc(&o.pod),
            esc(&o.container),
            esc(&c.allocation)
        );
        processes.push((who.clone(), f64::from(c.snapshot.processes)));
        recoveries.push((who.clone(), c.snapshot.recoveries as f64));
        for i in 0..c.snapshot.used_bytes.len() {
            let (u, l, sm) = (
                c.snapshot.used_bytes[i],
                c.snapshot.limits.memory_bytes[i],
                c.snapshot.limits.sm_percent[i],
            );
            // A container's devices: those its owner lists, else those it has a
            // memory limit on or uses. The SM share alone says nothing: the
            // node side mirrors the first device's share to every index (as
            // CUDA_DEVICE_SM_LIMIT without a suffix applies to all).
            let listed = i < o.devices.len();
            if !listed && u == 0 && l == 0 {
                continue;
            }
            let uuid = o.devices.get(i).map(String::as_str).unwrap_or_default();
            let hami = format!(
                "ctrname=\"{}\",deviceuuid=\"{}\",podname=\"{}\",podnamespace=\"{}\",vdeviceid=\"{i}\"",
                esc(&o.container),
                esc(uuid),
                esc(&o.pod),
                esc(&o.namespace)
            );
            let ours = format!("{who},deviceidx=\"{i}\",deviceuuid=\"{}\"", esc(uuid));
            used.push((hami.clone(), u as f64));
            hami_used.push((ours.clone(), u as f64));
            if l > 0 {
                limit.push((hami, l as f64));
                hami_limit.push((ours.clone(), l as f64));
            }
            if sm > 0 {
                core_limit.push((ours, f64::from(sm) / 100.0));
            }
        }
    }
    let errors = report
        .errors
        .iter()
        .map(|(allocation, _)| {
            (
                format!("node=\"{}\",allocation=\"{}\"", esc(node), esc(allocation)),
                1.0,
            )
        })
        .collect();
    let families = [
        Family {
            name: "vGPU_device_memory_usage_in_bytes",
            help: "vGPU device usage (HAMi's name)",
            rows: used,
        },
        Family {
            name: "vGPU_device_memory_limit_in_bytes",
            help: "vGPU device limit (HAMi's name)",
            rows: limit,
        },
        Family {
            name: "hami_vgpu_memory_used_bytes",
            help: "Device memory a container's processes hold",
            rows: hami_used,
        },
        Family {
            name: "hami_vgpu_memory_limit_bytes",
            help: "A container's device memory limit",
            rows: hami_limit,
        },
        Family {
            name: "hami_vgpu_core_limit_ratio",
            help: "A container's compute share (0-1)",
            rows: core_limit,
        },
        Family {
            name: "hami_container_processes",
            help: "Processes holding a slot in the container's region",
            rows: processes,
        },
        Family {
            name: "hami_region_lock_recoveries",
            help: "Times the region lock was recovered from a dead owner",
            rows: recoveries,
        },
        Family {
            name: "hami_region_read_errors",
            help: "Regions the monitor could not read (1 each; see the log)",
            rows: errors,
        },
    ];
    let mut out = String::new();
    for f in &families {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} gauge", f.name);
        for (labels, v) in &f.rows {
            let _ = writeln!(out, "{}{{{labels}}} {v}", f.name);
        }
    }
    out
}

/// The whole `/metrics` page: the regions' families, then NVML's host
/// memory (`(index, uuid, bytes)`) and the containers' utilization from
/// NVML's process samples (by device UUID).
pub fn page(
    report: &Report,
    memory_used: &[(u32, String, u64)],
    samples: &std::collections::BTreeMap<String, Vec<(u32, u32)>>,
    node: &str,
) -> String {
    render(report, node)
        + &render_host(memory_used, node)
        + &render_utilization(report, samples, node)
}

/// `hami_container_device_utilization_ratio`: each container's share of
/// each of its devices (0-1), summed over its processes' NVML samples
/// (`samples` by device UUID: `(pid, percent)`).
pub fn render_utilization(
    report: &Report,
    samples: &std::collections::BTreeMap<String, Vec<(u32, u32)>>,
    node: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP hami_container_device_utilization_ratio A container's share of a device's compute (0-1)"
    );
    let _ = writeln!(out, "# TYPE hami_container_device_utilization_ratio gauge");
    for c in &report.containers {
        let o = &c.owner;
        for (i, uuid) in o.devices.iter().enumerate() {
            let Some(device) = samples.get(uuid) else {
                continue;
            };
            let percent: u32 = device
                .iter()
                .filter(|(pid, _)| c.snapshot.pids.contains(pid))
                .map(|(_, p)| *p)
                .sum();
            let _ = writeln!(
                out,
                "hami_container_device_utilization_ratio{{node=\"{}\",namespace=\"{}\",pod=\"{}\",container=\"{}\",allocation=\"{}\",deviceidx=\"{i}\",deviceuuid=\"{}\"}} {}",
                esc(node),
                esc(&o.namespace),
                esc(&o.pod),
                esc(&o.container),
                esc(&c.allocation),
                esc(uuid),
                f64::from(percent.min(100)) / 100.0
            );
        }
    }
    out
}

/// `hami_host_gpu_memory_used_bytes`: each GPU's memory in use as the
/// driver reports it (every process, shared or not).
pub fn render_host(devices: &[(u32, String, u64)], node: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP hami_host_gpu_memory_used_bytes Device memory in use on the GPU (all processes)"
    );
    let _ = writeln!(out, "# TYPE hami_host_gpu_memory_used_bytes gauge");
    for (index, uuid, used) in devices {
        let _ = writeln!(
            out,
            "hami_host_gpu_memory_used_bytes{{node=\"{}\",deviceidx=\"{index}\",deviceuuid=\"{}\"}} {used}",
            esc(node),
            esc(uuid)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::{ContainerUsage, Owner};

    #[test]
    fn utilization_is_the_containers_processes_share() {
        let report = Report {
            containers: vec![ContainerUsage {
                allocation: "a".into(),
                owner: Owner {
                    namespace: "ns".into(),
                    pod: "p".into(),
                    container: "c".into(),
                    devices: vec!["GPU-0".into(), "GPU-1".into()],
                    pod_uid: String::new(),
                },
                snapshot: hami_region::snapshot::Snapshot {
                    limits: hami_region::layout::Limits::unlimited(),
                    used_bytes: [0; 16],
                    processes: 2,
                    launches: 0,
                    recoveries: 0,
                    pids: vec![100, 101],
                },
            }],
            errors: vec![],
        };
        let samples = [
            ("GPU-0".to_owned(), vec![(100, 20), (101, 15), (999, 60)]),
            ("GPU-1".to_owned(), vec![(999, 90)]),
        ]
        .into_iter()
        .collect();
        let text = render_utilization(&report, &samples, "n");
        // The page served at /metrics carries every family.
        let page = page(&report, &[(0, "GPU-0".into(), 7)], &samples, "n");
        for family in [
            "# TYPE hami_vgpu_memory_used_bytes gauge",
            "# TYPE hami_host_gpu_memory_used_bytes gauge",
            "# TYPE hami_container_device_utilization_ratio gauge",
        ] {
            assert!(page.contains(family), "{family}");
        }
        assert!(page.contains(&text));
        assert!(text.lines().any(|l| l == r#"hami_container_device_utilization_ratio{node="n",namespace="ns",pod="p",container="c",allocation="a",deviceidx="0",deviceuuid="GPU-0"} 0.35"#), "{text}");
        assert!(
            text.lines()
                .any(|l| l.ends_with(r#"deviceidx="1",deviceuuid="GPU-1"} 0"#)),
            "{text}"
        );
    }

    #[test]
    fn host_memory_lines() {
        let text = render_host(&[(1, "GPU-\"x".into(), 1 << 30)], "n1");
        assert!(text.contains("# TYPE hami_host_gpu_memory_used_bytes gauge"));
        assert!(text
            .lines()
            .any(|l| l == r#"hami_host_gpu_memory_used_bytes{node="n1",deviceidx="1",deviceuuid="GPU-\"x"} 1073741824"#));
    }
}
