//! The local demo's scenario, shared by the `hami-demo` binary (README command 1)
//! and the end-to-end test that checks it: two podman containers share one
//! fake 8 GiB GPU through CDI specs written by hami-cdi, each with its own
//! memory quota and compute share enforced by hami-core.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread;

use hami_cdi::builder::{self, Allocation, Grant, Layout, DEFAULT_KIND};
use hami_cdi::discovery::{Discovery, MockDiscovery};
use hami_cdi::store::{self, SpecStore};
use hami_testkit::fake_gpu::FakeGpu;
use hami_testkit::podman::Podman;
use hami_testkit::rootfs::Rootfs;
pub use hami_testkit::{field, find_library};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// podman 4.3 reads CDI specs only from here and /etc/cdi.
pub const SPEC_DIR: &str = "/var/run/cdi";

/// One container of the scenario.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    pub memory_bytes: u64,
    pub cores: u8,
    /// The fake device names this container's processes pid + offset, as a
    /// host does a container's (each container has its own pid namespace).
    pub pid_offset: u32,
}

/// What one container saw.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub cuda_total: u64,
    pub nvml_total: u64,
    pub allocations: u64,
    pub oom_code: i32,
    pub region_used: u64,
    /// Mean device share after the first second, percent.
    pub share: f64,
    pub output: String,
}

pub struct Scenario {
    pub work: PathBuf,
    pub state_dir: PathBuf,
    pub library: PathBuf,
    pub tenants: Vec<Tenant>,
    /// Allocation size used to run each container out of memory.
    pub chunk: u64,
    pub saturate_seconds: u32,
    /// Turn on hami-core's info logging and keep each container's stderr.
    pub debug: bool,
}

impl Scenario {
    /// The demo's two tenants: 2 GiB at 30% and 4 GiB at 60% of one 8 GiB GPU.
    pub fn demo(work: &Path, state_dir: &Path, library: &Path, prefix: &str) -> Self {
        let tenant = |suffix: &str, gib: u64, cores: u8, pid_offset: u32| Tenant {
            name: format!("{prefix}-{suffix}"),
            memory_bytes: gib * GIB,
            cores,
            pid_offset,
        };
        Self {
            work: work.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            library: library.to_path_buf(),
            tenants: vec![tenant("a", 2, 30, 100_000), tenant("b", 4, 60, 200_000)],
            chunk: 256 * MIB,
            saturate_seconds: 4,
            debug: false,
        }
    }

    fn layout(&self) -> Layout {
        Layout {
            kind: DEFAULT_KIND.into(),
            library: self.library.clone(),
            state_dir: self.state_dir.clone(),
            hook: None,
        }
    }

    /// Removes this scenario's specs and state (also from an interrupted earlier run).
    pub fn clean(&self) {
        let layout = self.layout();
        let specs = SpecStore::new(SPEC_DIR);
        for t in &self.tenants {
            let _ = specs.remove(DEFAULT_KIND, &t.name);
            let _ = store::remove_state(&layout, &t.name);
        }
        let _ = std::fs::remove_dir_all(self.state_dir.join("fake-gpu"));
    }

    /// Builds the image, writes the specs, runs the containers side by side.
    pub fn run(&self) -> anyhow::Result<Vec<Observed>> {
        self.clean();
        let gpu = FakeGpu::build(&self.work.join("fake-gpu"))?;
        let rootfs = Rootfs::busybox(&self.work.join("rootfs"))?;
        gpu.install(&rootfs)?;
        rootfs.add_shared_libraries_of(&self.library)?;

        // The mock GPU: one 8 GiB device whose state file is shared by both containers.
        let fake_state = self.state_dir.join("fake-gpu");
        std::fs::create_dir_all(&fake_state)?;
        let inventory_path = self.work.join("inventory.json");
        std::fs::write(
            &inventory_path,
            serde_json::json!({
                "devices": [{"index": 0, "uuid": "GPU-fa4e0000-0000-4000-8000-000000000000",
                             "memoryMiB": 8192, "model": "Fake H100"}],
                "env": {"FAKE_CUDA_STATE": "/run/hami/fake-gpu/state", "FAKE_CUDA_TOTAL_MEMORY": "8g"},
                "mounts": [{"hostPath": fake_state, "containerPath": "/run/hami/fake-gpu"}],
            })
            .to_string(),
        )?;
        let inventory = MockDiscovery {
            path: inventory_path,
        }
        .inventory()?;
        let layout = self.layout();
        let specs = SpecStore::new(SPEC_DIR);
        for t in &self.tenants {
            let allocation = Allocation {
                name: t.name.clone(),
                grants: vec![Grant {
                    index: 0,
                    memory_bytes: Some(t.memory_bytes),
                    cores: Some(t.cores),
                }],
            };
            let spec = builder::build(&allocation, &inventory, &layout)?;
            store::prepare_state(&allocation, &layout, &spec)?;
            specs.write(&spec)?;
        }

        let podman = Podman::new()?;
        let rootfs_arg = rootfs.path().to_string_lossy().into_owned();
        let chunk = self.chunk.to_string();
        let seconds = self.saturate_seconds.to_string();
        let outputs: Vec<anyhow::Result<String>> = thread::scope(|s| {
            let runs: Vec<_> = self
                .tenants
                .iter()
                .map(|t| {
                    let (podman, rootfs_arg, chunk, seconds) =
                        (&podman, &rootfs_arg, &chunk, &seconds);
                    s.spawn(move || -> anyhow::Result<String> {
                        let device = format!("{DEFAULT_KIND}={}", t.name);
                        let offset = format!("FAKE_CUDA_PID_OFFSET={}", t.pid_offset);
                        let log = format!("LIBCUDA_LOG_LEVEL={}", if self.debug { 3 } else { 1 });
                        let out = podman.run(&[
                            "--device",
                            &device,
                            "--env",
                            &offset,
                            "--env",
                            &log,
                            "--rootfs",
                            rootfs_arg,
                            "/usr/bin/cuda_app",
                            "info",
                            "nvml-info",
                            "alloc-until-oom",
                            chunk,
                            "saturate",
                            "kernel",
                            seconds,
                            "1320",
                        ])?;
                        let mut stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                        if self.debug {
                            stdout.push_str(&String::from_utf8_lossy(&out.stderr));
                        }
                        anyhow::ensure!(
                            out.status.success(),
                            "container {} failed: {stdout}{}",
                            t.name,
                            String::from_utf8_lossy(&out.stderr)
                        );
                        Ok(stdout)
                    })
                })
                .collect();
            runs.into_iter()
                .map(|r| r.join().expect("container thread"))
                .collect()
        });

        let mut observed = Vec::new();
        for (t, out) in self.tenants.iter().zip(outputs) {
            let out = out?;
            let shares: Vec<f64> = out
                .lines()
                .filter(|l| l.starts_with("util "))
                .filter_map(|l| l.rsplit("percent=").next()?.parse().ok())
                .collect();
            let steady = shares.get(1..).unwrap_or_default();
            observed.push(Observed {
                cuda_total: field(&out, "info", "total").unwrap_or(0),
                nvml_total: field(&out, "nvml-info", "total").unwrap_or(0),
                allocations: field(&out, "alloc-until-oom", "count").unwrap_or(0),
                oom_code: field(&out, "alloc-until-oom", "rc").unwrap_or(0) as i32,
                region_used: store::usage(&layout, &t.name).map_or(0, |u| u.iter().sum()),
                share: if steady.is_empty() {
                    0.0
                } else {
                    steady.iter().sum::<f64>() / steady.len() as f64
                },
                output: out,
            });
        }
        drop(podman);
        Ok(observed)
    }
}

impl Scenario {
    /// Runs `args` in a container with `tenant`'s CDI device (after [`Scenario::run`],
    /// before [`Scenario::clean`]) and returns its stdout.
    pub fn probe(&self, tenant: &Tenant, args: &[&str]) -> anyhow::Result<String> {
        let podman = Podman::new()?;
        let device = format!("{DEFAULT_KIND}={}", tenant.name);
        let rootfs = self.work.join("rootfs").to_string_lossy().into_owned();
        let mut all = vec!["--device", device.as_str(), "--rootfs", rootfs.as_str()];
        all.extend_from_slice(args);
        let out = podman.run(&all)?;
        anyhow::ensure!(
            out.status.success(),
            "probe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The table the demo prints.
pub fn report(tenants: &[Tenant], observed: &[Observed], chunk: u64) -> String {
    let mib = |b: u64| format!("{} MiB", b / MIB);
    let mut rows = vec![[
        "container".to_owned(),
        "memory quota".into(),
        "compute share".into(),
        "cuMemGetInfo total".into(),
        "NVML total".into(),
        format!("{} MiB allocations", chunk / MIB),
        "next allocation".into(),
        "usage in region".into(),
        "measured share".into(),
    ]];
    for (t, o) in tenants.iter().zip(observed) {
        rows.push([
            t.name.clone(),
            mib(t.memory_bytes),
            format!("{}%", t.cores),
            mib(o.cuda_total),
            mib(o.nvml_total),
            o.allocations.to_string(),
            match o.oom_code {
                2 => "2 CUDA_ERROR_OUT_OF_MEMORY".into(),
                c => format!("{c} (expected 2)"),
            },
            mib(o.region_used),
            format!("{:.1}%", o.share),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        text.push_str(&format!("| {} |\n", cells.join(" | ")));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            text.push_str(&format!("|-{}-|\n", rule.join("-|-")));
        }
    }
    text
}

/// Checks the demo's claims; the problems found, if any.
pub fn verify(tenants: &[Tenant], observed: &[Observed], chunk: u64) -> Vec<String> {
    let mut problems = Vec::new();
    for (t, o) in tenants.iter().zip(observed) {
        let name = &t.name;
        if o.cuda_total != t.memory_bytes {
            problems.push(format!(
                "{name}: cuMemGetInfo total {} != quota {}",
                o.cuda_total, t.memory_bytes
            ));
        }
        if o.nvml_total != t.memory_bytes {
            problems.push(format!(
                "{name}: NVML total {} != quota {}",
                o.nvml_total, t.memory_bytes
            ));
        }
        if o.allocations != t.memory_bytes / chunk {
            problems.push(format!(
                "{name}: {} allocations fit, expected {}",
                o.allocations,
                t.memory_bytes / chunk
            ));
        }
        if o.oom_code != 2 {
            problems.push(format!(
                "{name}: allocation past the quota returned {}, expected 2",
                o.oom_code
            ));
        }
        if o.region_used != t.memory_bytes {
            problems.push(format!(
                "{name}: region shows {} bytes used, expected {}",
                o.region_used, t.memory_bytes
            ));
        }
        if (o.share - f64::from(t.cores)).abs() > 5.0 {
            problems.push(format!(
                "{name}: measured share {:.1}% for a {}% limit",
                o.share, t.cores
            ));
        }
    }
    problems
}

/// Reads a map of stray env that would disturb the scenario.
pub fn disturbing_env() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("CUDA_") || k == "LD_PRELOAD")
        .collect()
}
