//! Filter latency per pod on a synthetic 5,000-node × 8-GPU cluster.
//!
//! `cargo bench -p hami-controller --bench filter` fits and scores every pod
//! against all 5,000 nodes (40,000 devices), the way `/filter` does when
//! kube-scheduler passes the whole cluster, and applies each decision so the
//! cluster fills up as the run goes. Pods are a mix: a fifth of a GPU, half a
//! GPU, two GPUs, eight whole GPUs. The baseline, in the same run, is the
//! cheapest scan any filter must do: count each node's devices with enough
//! free memory, no scoring, no allocation.
//!
//! Prints p50/p99 per pod, pods per second and the ratio to the baseline.

use std::time::{Duration, Instant};

use hami_api::{GpuSchedulerPolicy, NodeSchedulerPolicy};
use hami_controller::schedule::device::{Device, Node};
use hami_controller::schedule::filter::{filter, Placing};
use hami_controller::schedule::request::{ContainerRequest, MemoryRequest, PodRequest};
use hami_controller::simulate::SplitMix64;

const NODES: usize = 5000;
const GPUS: u32 = 8;
const PODS: usize = 2000;

fn cluster(rng: &mut SplitMix64) -> Vec<Node> {
    (0..NODES)
        .map(|n| Node {
            name: format!("node-{n:04}"),
            devices: (0..GPUS)
                .map(|i| {
                    // A third of the devices already carry a share.
                    let used = if rng.below(3) == 0 {
                        10 * rng.below(8) as u32
                    } else {
                        0
                    };
                    let mut d = Device {
                        numa: (i / 4) as i32,
                        ..Device::new(
                            format!("GPU-{n:04}-{i}"),
                            i,
                            "NVIDIA-NVIDIA A100-SXM4-80GB",
                            81920,
                        )
                    };
                    if used > 0 {
                        d.grant(u64::from(used) * 819, used);
                    }
                    d
                })
                .collect(),
            topology: Default::default(),
        })
        .collect()
}

fn pod(kind: usize) -> PodRequest {
    let (count, memory, cores) = match kind {
        0 => (1, MemoryRequest::Mib(16384), 20),
        1 => (1, MemoryRequest::Percent(50), 50),
        2 => (2, MemoryRequest::Mib(40960), 50),
        _ => (8, MemoryRequest::Percent(100), 100),
    };
    PodRequest {
        app: vec![Some(ContainerRequest {
            count,
            memory,
            cores,
        })],
        ..PodRequest::default()
    }
}

/// The lower bound: one pass over every device of every node, no scoring,
/// nothing built; returns how many nodes have enough devices with room.
fn baseline(nodes: &[Node], pod: &PodRequest) -> usize {
    let req = pod.app[0].as_ref().unwrap();
    nodes
        .iter()
        .filter(|n| {
            n.devices
                .iter()
                .filter(|d| d.free_memory_mib() >= req.memory.on(d.memory_mib))
                .count()
                >= req.count as usize
        })
        .count()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let mut rng = SplitMix64::new(42);
    let mut nodes = cluster(&mut rng);
    let pods: Vec<PodRequest> = (0..PODS).map(|i| pod(i % 4)).collect();

    let mut base = Vec::with_capacity(PODS);
    let mut hits = 0;
    for p in &pods {
        let start = Instant::now();
        hits += std::hint::black_box(baseline(&nodes, p));
        base.push(start.elapsed());
    }

    let mut full = Vec::with_capacity(PODS);
    let mut placed = 0;
    let placing = Placing::nvidia(NodeSchedulerPolicy::Binpack, GpuSchedulerPolicy::Binpack);
    let run = Instant::now();
    for p in &pods {
        let start = Instant::now();
        let out = filter(&nodes, p, &placing);
        full.push(start.elapsed());
        if let Some(c) = out.chosen {
            c.fit.apply(&mut nodes[c.node]);
            placed += 1;
        }
    }
    let total = run.elapsed();

    let (b50, b99) = (percentile(&mut base, 0.5), percentile(&mut base, 0.99));
    let (f50, f99) = (percentile(&mut full, 0.5), percentile(&mut full, 0.99));
    println!(
        "\nfilter over {NODES} nodes x {GPUS} GPUs, {PODS} pods (placed {placed}; baseline saw {hits} fitting nodes in all)"
    );
    println!("| configuration | p50 ms | p99 ms | pods/s | p50 ratio | p99 ratio |");
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |name: &str, p50: Duration, p99: Duration, per_sec: f64| {
        println!(
            "| {name} | {:.3} | {:.3} | {:.0} | {:.2} | {:.2} |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            per_sec,
            p50.as_secs_f64() / b50.as_secs_f64(),
            p99.as_secs_f64() / b99.as_secs_f64()
        );
    };
    let base_total: Duration = base.iter().sum();
    row(
        "baseline: count nodes with room, no scoring",
        b50,
        b99,
        PODS as f64 / base_total.as_secs_f64(),
    );
    row(
        "filter: fit + score every node, binpack",
        f50,
        f99,
        PODS as f64 / total.as_secs_f64(),
    );
}
