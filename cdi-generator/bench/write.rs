//! Cost of writing one allocation's spec.
//!
//! `cargo bench -p hami-cdi --bench write` times, per allocation:
//! - baseline: serialise the spec and `fs::write` it (no sync, no rename);
//! - hami-cdi: build the spec from allocation + inventory and write it
//!   atomically (temporary, fsync, rename, directory fsync);
//! - hami-cdi with state: the above plus the allocation's host state
//!   (preload file and a pre-created shared region).
//!
//! It prints p50 and p99 of each and their ratio to the baseline.

use std::collections::BTreeMap;
use std::time::Instant;

use hami_cdi::builder::{build, Allocation, Grant, Layout, DEFAULT_KIND};
use hami_cdi::discovery::{DiscoveredDevice, Inventory, NodeMapping, Vendor};
use hami_cdi::store::{self, SpecStore};

const ROUNDS: usize = 2000;

fn main() {
    let dir = tempfile::Builder::new()
        .prefix("hami-cdi-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let inventory = Inventory {
        vendor: Vendor::Nvidia,
        devices: (0..8)
            .map(|i| DiscoveredDevice {
                index: i,
                uuid: format!("GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d144{i}"),
                memory_bytes: 80 << 30,
                model: "NVIDIA H100 80GB HBM3".into(),
                nodes: vec![NodeMapping::same(&format!("/dev/nvidia{i}"))],
            })
            .collect(),
        shared_nodes: vec![
            NodeMapping::same("/dev/nvidiactl"),
            NodeMapping::same("/dev/nvidia-uvm"),
        ],
        env: BTreeMap::new(),
        mounts: vec![],
    };
    let layout = Layout {
        kind: DEFAULT_KIND.into(),
        library: "/usr/local/vgpu/libhami_core.so".into(),
        state_dir: dir.path().join("state"),
        hook: None,
    };
    let specs = SpecStore::new(dir.path().join("cdi"));
    std::fs::create_dir_all(&specs.dir).unwrap();
    let allocation = |n: usize| Allocation {
        name: format!("pod-{n}_ctr"),
        grants: vec![Grant {
            index: (n % 8) as u32,
            memory_bytes: Some(3000 << 20),
            cores: Some(30),
        }],
    };

    let mut baseline = Vec::with_capacity(ROUNDS);
    let mut atomic = Vec::with_capacity(ROUNDS);
    let mut with_state = Vec::with_capacity(ROUNDS);
    let template = build(&allocation(0), &inventory, &layout).unwrap();
    for n in 0..ROUNDS {
        // Interleaved, so disk and cache noise falls on all three alike.
        let t = Instant::now();
        let text = serde_json::to_string_pretty(&template).unwrap();
        std::fs::write(dir.path().join(format!("naive-{n}.json")), text).unwrap();
        baseline.push(t.elapsed().as_secs_f64() * 1e6);

        let a = allocation(n);
        let t = Instant::now();
        let spec = build(&a, &inventory, &layout).unwrap();
        specs.write(&spec).unwrap();
        atomic.push(t.elapsed().as_secs_f64() * 1e6);

        let a = allocation(ROUNDS + n);
        let t = Instant::now();
        let spec = build(&a, &inventory, &layout).unwrap();
        store::prepare_state(&a, &layout, &spec).unwrap();
        specs.write(&spec).unwrap();
        with_state.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p) as usize]
    };
    let (b50, b99) = (pct(&mut baseline, 0.5), pct(&mut baseline, 0.99));
    println!("hami-cdi: per-allocation spec cost ({ROUNDS} allocations, microseconds)\n");
    println!("| operation | p50 µs | p99 µs | p50 ratio | p99 ratio |");
    println!("|---|---:|---:|---:|---:|");
    println!("| baseline: serialise + fs::write (no sync) | {b50:.1} | {b99:.1} | 1.00 | 1.00 |");
    for (label, v) in [
        ("hami-cdi: build + atomic write", &mut atomic),
        ("hami-cdi: build + state + atomic write", &mut with_state),
    ] {
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        println!(
            "| {label} | {p50:.1} | {p99:.1} | {:.2} | {:.2} |",
            p50 / b50,
            p99 / b99
        );
    }
}
