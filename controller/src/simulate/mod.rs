//! `hami-controller simulate`: replays the openb trace through the same fit
//! and score code the extender runs, with no API server, following the FGD
//! paper's procedure:
//! - no departures;
//! - pods shuffled with a seed, then inflated by resampling until the
//!   requested GPU reaches 130% of the cluster's;
//! - one pod at a time, no retry;
//! - the metric is the unallocated share of GPU capacity at the moment the
//!   arrived requests reach 100% of it.
//!
//! A pod's `gpu_milli` becomes both its compute share (`gpu_milli / 10`
//! percent, rounded up) and its memory share (the same percentage of the
//! device's memory). Node CPU and memory are honoured as kube-scheduler would.

pub mod openb;

use hami_api::NodeSchedulerPolicy;

use crate::schedule::device::{Device, Node};
use crate::schedule::fit::{fit_container, reject, DeviceOrder, FitContext, Grant};
use crate::schedule::fragmentation::{FragmentationCache, TaskSample, Workload};
use crate::schedule::request::{ContainerRequest, MemoryRequest, Selection};
use crate::schedule::score::score_for_load;
use openb::{NodeRow, PodRow};

/// How many containers may share a GPU in the simulation: the trace has
/// shares down to a few percent, so HAMi's default of 10 would bind first.
pub const SIMULATED_SPLIT: u32 = 100;
/// Arrivals are inflated to this multiple of the cluster's GPU capacity.
pub const INFLATION: f64 = 1.3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Node binpack + device binpack (HAMi's defaults).
    Binpack,
    /// Node spread + device spread.
    Spread,
    /// Least growth of expected fragmentation (FGD), ties to binpack.
    Fragmentation,
}

impl Policy {
    pub const ALL: [Policy; 3] = [Policy::Binpack, Policy::Spread, Policy::Fragmentation];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Binpack => "binpack",
            Policy::Spread => "spread",
            Policy::Fragmentation => "fragmentation-aware",
        }
    }
}

/// Deterministic and tiny: SplitMix64, so a seed means the same order on
/// every machine and with every dependency version.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// GPU memory by openb model code, in MiB; undisclosed codes get 32 GiB.
/// Only the shares matter to the metric: requests are percentages.
pub fn model_memory_mib(model: &str) -> u64 {
    match model {
        "P100" | "T4" | "V100M16" => 16 << 10,
        "A10" => 24 << 10,
        _ => 32 << 10,
    }
}

struct SimNode {
    node: Node,
    cpu_free: u64,
    memory_free: u64,
}

fn request_of(pod: &PodRow) -> Option<ContainerRequest> {
    (pod.num_gpu > 0).then(|| {
        let percent = pod.gpu_milli.div_ceil(10).clamp(1, 100);
        ContainerRequest {
            count: pod.num_gpu,
            memory: MemoryRequest::Percent(percent),
            cores: percent,
        }
    })
}

fn free_shares(node: &Node) -> Vec<u32> {
    node.devices.iter().map(Device::free_cores).collect()
}

/// What one run saw when arrivals reached 100% of capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// Unallocated GPU capacity, percent of the cluster's.
    pub unallocated_percent: f64,
    pub arrived_pods: usize,
    pub failed_pods: usize,
}

/// Candidate placement of one pod.
struct Candidate {
    node: usize,
    grants: Vec<Grant>,
    /// Lower is better.
    cost: f64,
}

pub struct Simulation<'a> {
    nodes: &'a [NodeRow],
    pods: &'a [PodRow],
    workload: Workload,
}

impl<'a> Simulation<'a> {
    pub fn new(nodes: &'a [NodeRow], pods: &'a [PodRow]) -> Self {
        let workload = Workload::from_tasks(pods.iter().filter_map(|p| {
            request_of(p).map(|r| TaskSample {
                count: r.count,
                cores: r.cores,
                cpu_milli: p.cpu_milli,
                memory_mib: p.memory_mib,
                models: &p.gpu_spec,
            })
        }));
        Self {
            nodes,
            pods,
            workload,
        }
    }

    pub fn capacity(&self) -> f64 {
        self.nodes.iter().map(|n| f64::from(n.gpus)).sum()
    }

    fn cluster(&self) -> Vec<SimNode> {
        self.nodes
            .iter()
            .map(|n| SimNode {
                node: Node {
                    name: n.name.clone(),
                    devices: (0..n.gpus)
                        .map(|i| Device {
                            split: SIMULATED_SPLIT,
                            ..Device::new(
                                format!("{}-gpu{i}", n.name),
                                i,
                                n.model.clone(),
                                model_memory_mib(&n.model),
                            )
                        })
                        .collect(),
                    topology: Default::default(),
                },
                cpu_free: n.cpu_milli,
                memory_free: n.memory_mib,
            })
            .collect()
    }

    /// The arrival order for `seed`: the trace shuffled, then resampled until
    /// the requests reach [`INFLATION`] times the capacity.
    pub fn arrivals(&self, seed: u64) -> Vec<&'a PodRow> {
        let mut rng = SplitMix64::new(seed);
        let mut order: Vec<&PodRow> = self.pods.iter().collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let target = self.capacity() * INFLATION;
        let mut requested: f64 = order.iter().map(|p| p.gpu_request()).sum();
        let any_gpu = self.pods.iter().any(|p| p.gpu_request() > 0.0);
        while any_gpu && requested < target {
            let p = &self.pods[rng.below(self.pods.len())];
            requested += p.gpu_request();
            order.push(p);
        }
        order
    }

    fn candidates(
        &self,
        cluster: &[SimNode],
        pod: &PodRow,
        policy: Policy,
        cache: &mut FragmentationCache,
    ) -> Vec<Candidate> {
        let req = request_of(pod);
        let selection = Selection {
            use_types: pod.gpu_spec.clone(),
            ..Selection::default()
        };
        let order = match policy {
            Policy::Spread => DeviceOrder::Spread,
            _ => DeviceOrder::Binpack,
        };
        let mut out = Vec::new();
        for (i, n) in cluster.iter().enumerate() {
            if n.cpu_free < pod.cpu_milli || n.memory_free < pod.memory_mib {
                continue;
            }
            // The device choices to weigh on this node.
            let choices: Vec<Vec<Grant>> = match (&req, policy) {
                (None, _) => vec![Vec::new()],
                (Some(r), Policy::Fragmentation) if r.count == 1 => n
                    .node
                    .devices
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| reject(d, r, &selection).is_none())
                    .map(|(d, dev)| {
                        vec![Grant {
                            device: d,
                            memory_mib: r.memory.on(dev.memory_mib),
                            cores: r.cores,
                            template: None,
                        }]
                    })
                    .collect(),
                (Some(r), _) => match fit_container(
                    &n.node.devices,
                    &n.node.topology,
                    r,
                    &selection,
                    &FitContext::nvidia(order),
                ) {
                    Ok(g) => vec![g],
                    Err(_) => continue,
                },
            };
            // What every choice on this node is weighed against (the same for
            // all of them): the node's free shares and fragmentation now, and
            // which task kinds its CPU and memory still fit once the pod is on.
            let baseline = (policy == Policy::Fragmentation).then(|| {
                let model = self.nodes[i].model.as_str();
                let free = free_shares(&n.node);
                let fit_before = self.workload.fit_mask(n.cpu_free, n.memory_free, model);
                let before = cache.get(&self.workload, &free, fit_before);
                let fit_after = self.workload.fit_mask(
                    n.cpu_free - pod.cpu_milli,
                    n.memory_free - pod.memory_mib,
                    model,
                );
                (free, before, fit_after)
            });
            for grants in choices {
                let extra: Vec<(usize, u64, u32)> = grants
                    .iter()
                    .map(|g| (g.device, g.memory_mib, g.cores))
                    .collect();
                let load = n.node.load_with(&extra);
                let cost = match policy {
                    Policy::Binpack => -score_for_load(load, NodeSchedulerPolicy::Binpack),
                    Policy::Spread => -score_for_load(load, NodeSchedulerPolicy::Spread),
                    Policy::Fragmentation => {
                        let (free, before, fit_after) =
                            baseline.as_ref().expect("computed for this policy");
                        let mut free_after = free.clone();
                        for g in &grants {
                            free_after[g.device] = free_after[g.device].saturating_sub(g.cores);
                        }
                        let grown = cache.get(&self.workload, &free_after, *fit_after);
                        // Ties (equal growth) go to the fuller node, as binpack would.
                        (grown - before) * 100.0
                            - score_for_load(load, NodeSchedulerPolicy::Binpack) / 100.0
                    }
                };
                out.push(Candidate {
                    node: i,
                    grants,
                    cost,
                });
            }
        }
        out
    }

    /// Places `pod` at its cheapest candidate (ties to the earlier node) and
    /// records it there; false when no node can take it.
    fn place(
        &self,
        cluster: &mut [SimNode],
        pod: &PodRow,
        policy: Policy,
        cache: &mut FragmentationCache,
    ) -> bool {
        let best = self
            .candidates(cluster, pod, policy, cache)
            .into_iter()
            .min_by(|a, b| a.cost.total_cmp(&b.cost).then(a.node.cmp(&b.node)));
        let Some(c) = best else {
            return false;
        };
        let node = &mut cluster[c.node];
        node.cpu_free -= pod.cpu_milli;
        node.memory_free -= pod.memory_mib;
        for g in &c.grants {
            node.node.devices[g.device].grant(g.memory_mib, g.cores);
        }
        true
    }

    /// One run: arrivals for `seed`, placed by `policy`.
    pub fn run(&self, policy: Policy, seed: u64) -> RunResult {
        let capacity = self.capacity();
        let mut cluster = self.cluster();
        let mut cache = FragmentationCache::default();
        let (mut requested, mut allocated) = (0.0, 0.0);
        let mut failed = 0;
        let arrivals = self.arrivals(seed);
        for (n, pod) in arrivals.iter().enumerate() {
            requested += pod.gpu_request();
            if self.place(&mut cluster, pod, policy, &mut cache) {
                allocated += pod.gpu_request();
            } else {
                failed += 1;
            }
            if requested >= capacity {
                return RunResult {
                    unallocated_percent: (capacity - allocated) / capacity * 100.0,
                    arrived_pods: n + 1,
                    failed_pods: failed,
                };
            }
        }
        RunResult {
            unallocated_percent: (capacity - allocated) / capacity.max(f64::MIN_POSITIVE) * 100.0,
            arrived_pods: arrivals.len(),
            failed_pods: failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize, gpus: u32) -> Vec<NodeRow> {
        (0..n)
            .map(|i| NodeRow {
                name: format!("n{i}"),
                cpu_milli: 64_000,
                memory_mib: 256 << 10,
                gpus,
                model: "V100M32".into(),
            })
            .collect()
    }

    fn pod(num_gpu: u32, gpu_milli: u32) -> PodRow {
        PodRow {
            name: "p".into(),
            cpu_milli: 1000,
            memory_mib: 1024,
            num_gpu,
            gpu_milli,
            gpu_spec: vec![],
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let ns = nodes(4, 2);
        let ps: Vec<PodRow> = [300, 500, 700, 1000].iter().map(|m| pod(1, *m)).collect();
        let sim = Simulation::new(&ns, &ps);
        for policy in Policy::ALL {
            assert_eq!(sim.run(policy, 42), sim.run(policy, 42));
        }
        let a = sim.arrivals(42);
        let requested: f64 = a.iter().map(|p| p.gpu_request()).sum();
        assert!(requested >= 8.0 * INFLATION, "{requested}");
    }

    #[test]
    fn fragmentation_awareness_keeps_whole_gpus_for_whole_gpu_tasks() {
        // Two 1-GPU nodes. Half-GPU tasks then a whole-GPU task: packing the
        // halves onto one GPU leaves the other whole.
        let ns = nodes(2, 1);
        let ps = vec![pod(1, 500), pod(1, 1000)];
        let sim = Simulation::new(&ns, &ps);
        let mut cluster = sim.cluster();
        let mut cache = FragmentationCache::default();
        for p in [&ps[0], &ps[0]] {
            assert!(sim.place(&mut cluster, p, Policy::Fragmentation, &mut cache));
        }
        let whole = sim.candidates(&cluster, &ps[1], Policy::Fragmentation, &mut cache);
        assert_eq!(whole.len(), 1, "one GPU is still whole");
        // Spread puts the halves on different GPUs and the whole task cannot run.
        let mut spread = sim.cluster();
        for p in [&ps[0], &ps[0]] {
            assert!(sim.place(&mut spread, p, Policy::Spread, &mut cache));
        }
        assert!(sim
            .candidates(&spread, &ps[1], Policy::Spread, &mut cache)
            .is_empty());
    }

    #[test]
    fn model_constraints_and_cpu_are_honoured() {
        let mut ns = nodes(2, 1);
        ns[1].model = "T4".into();
        ns[0].cpu_milli = 500;
        let mut p = pod(1, 500);
        p.gpu_spec = vec!["V100M32".into()];
        let sim = Simulation::new(&ns, std::slice::from_ref(&p));
        let mut cache = FragmentationCache::default();
        // Node 0 has the model but not the CPU; node 1 the CPU but not the model.
        for policy in Policy::ALL {
            assert!(sim
                .candidates(&sim.cluster(), &p, policy, &mut cache)
                .is_empty());
        }
    }
}
