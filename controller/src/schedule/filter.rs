//! The extender's decision for one pod over candidate nodes, side-effect
//! free: every node is fitted and scored, the best one wins, and every other
//! node's reason is kept for `FailedNodes` and the `FilteringFailed` event.

use std::borrow::Borrow;

use hami_api::{reasons, FailureReasons, GpuSchedulerPolicy, NodeSchedulerPolicy};

use super::device::Node;
use super::fit::{fit_pod, DeviceOrder, FitContext, PodFit};
use super::request::PodRequest;
use super::score::score_for_load;
use super::vendor::VendorProfile;
use crate::admission::quota::{fit_usage, QuotaCheck};

#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    /// Index into the candidate nodes.
    pub node: usize,
    pub score: f64,
    pub fit: PodFit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FilterOutcome {
    pub chosen: Option<Chosen>,
    /// Nodes that cannot take the pod, with HAMi's reason.
    pub failed: Vec<(usize, &'static str)>,
}

impl FilterOutcome {
    /// `"2/4 CardInsufficientMemory, 1/4 CardTypeMismatch"` over `total` nodes.
    pub fn reasons(&self, total: usize) -> FailureReasons {
        let mut r = FailureReasons::new(total);
        for (_, reason) in &self.failed {
            r.add(reason);
        }
        r
    }
}

pub fn device_order(policy: GpuSchedulerPolicy) -> DeviceOrder {
    match policy {
        GpuSchedulerPolicy::Spread => DeviceOrder::Spread,
        // Topology-aware packs, then lays multi-device requests out by links.
        GpuSchedulerPolicy::Binpack | GpuSchedulerPolicy::TopologyAware => DeviceOrder::Binpack,
    }
}

/// What one pod is placed as: its family and the policies that rank nodes
/// and devices.
#[derive(Debug, Clone, Copy)]
pub struct Placing<'a> {
    pub profile: &'a VendorProfile,
    pub vendor: u16,
    pub node_policy: NodeSchedulerPolicy,
    pub gpu_policy: GpuSchedulerPolicy,
    /// The pod's namespace quota: a node where the fitted grants (with
    /// percentages resolved on its devices) would exceed it fails with
    /// `ResourceQuotaNotFit`.
    pub quota: Option<&'a QuotaCheck>,
}

impl Placing<'_> {
    pub fn nvidia(
        node_policy: NodeSchedulerPolicy,
        gpu_policy: GpuSchedulerPolicy,
    ) -> Placing<'static> {
        let ctx = FitContext::nvidia(DeviceOrder::Binpack);
        Placing {
            profile: ctx.profile,
            vendor: 0,
            node_policy,
            gpu_policy,
            quota: None,
        }
    }

    fn fit_context(&self) -> FitContext<'_> {
        FitContext {
            profile: self.profile,
            vendor: self.vendor,
            order: device_order(self.gpu_policy),
            topology_aware: self.gpu_policy == GpuSchedulerPolicy::TopologyAware,
            hami_core: false,
        }
    }
}

/// Fits `pod` on every node and picks the best by the node policy (ties go
/// to the earlier node, so the outcome does not depend on hash order). Nodes
/// may be owned or borrowed from the cluster view: nothing is copied.
pub fn filter<N: Borrow<Node>>(nodes: &[N], pod: &PodRequest, placing: &Placing) -> FilterOutcome {
    let ctx = placing.fit_context();
    let node_policy = placing.node_policy;
    let mut chosen: Option<Chosen> = None;
    let mut failed = Vec::new();
    for (i, node) in nodes.iter().map(Borrow::borrow).enumerate() {
        match fit_pod(node, pod, &ctx) {
            Ok(fit)
                if placing
                    .quota
                    .is_some_and(|q| q.admit(&fit_usage(&fit), placing.profile).is_err()) =>
            {
                failed.push((i, reasons::RESOURCE_QUOTA_NOT_FIT));
            }
            Ok(fit) => {
                let score = score_for_load(
                    node.load_of(Some(placing.vendor), &fit.lasting()),
                    node_policy,
                );
                if chosen.as_ref().is_none_or(|c| score > c.score) {
                    chosen = Some(Chosen {
                        node: i,
                        score,
                        fit,
                    });
                }
            }
            Err(reason) => failed.push((i, reason)),
        }
    }
    FilterOutcome { chosen, failed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::device::Device;
    use crate::schedule::request::{ContainerRequest, MemoryRequest};

    fn node(name: &str, used: &[u64]) -> Node {
        Node {
            name: name.into(),
            devices: used
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    let mut d = Device::new(format!("{name}-{i}"), i as u32, "NVIDIA-A100", 10_000);
                    if *u > 0 {
                        d.grant(*u, 0);
                    }
                    d
                })
                .collect(),
            topology: Default::default(),
        }
    }

    fn pod(mib: u64) -> PodRequest {
        PodRequest {
            app: vec![Some(ContainerRequest {
                count: 1,
                memory: MemoryRequest::Mib(mib),
                cores: 10,
            })],
            ..PodRequest::default()
        }
    }

    #[test]
    fn picks_by_policy_and_names_the_rest() {
        let nodes = vec![
            node("empty", &[0, 0]),
            node("busy", &[6000, 6000]),
            node("full", &[9500, 9500]),
        ];
        let p = pod(3000);
        let b = filter(
            &nodes,
            &p,
            &Placing::nvidia(NodeSchedulerPolicy::Binpack, GpuSchedulerPolicy::Binpack),
        );
        assert_eq!(b.chosen.as_ref().unwrap().node, 1);
        assert_eq!(
            b.failed,
            vec![(2, hami_api::reasons::CARD_INSUFFICIENT_MEMORY)]
        );
        assert_eq!(b.reasons(3).encode(), "1/3 CardInsufficientMemory");
        let s = filter(
            &nodes,
            &p,
            &Placing::nvidia(NodeSchedulerPolicy::Spread, GpuSchedulerPolicy::Binpack),
        );
        assert_eq!(s.chosen.unwrap().node, 0);
        let none = filter(
            &nodes,
            &pod(20_000),
            &Placing::nvidia(NodeSchedulerPolicy::Binpack, GpuSchedulerPolicy::Spread),
        );
        assert!(none.chosen.is_none());
        assert_eq!(none.reasons(3).encode(), "3/3 CardInsufficientMemory");
    }

    #[test]
    fn a_node_whose_devices_would_break_the_quota_fails() {
        use crate::admission::quota::Usage;
        // Two nodes, one with 10 GB devices, one with 40 GB: 50 % of a
        // device resolves to 5000 or 20000 MiB.
        let mut big = node("big", &[0]);
        big.devices[0].memory_mib = 40_000;
        let nodes = vec![node("small", &[0]), big];
        let pct = PodRequest {
            app: vec![Some(ContainerRequest {
                count: 1,
                memory: MemoryRequest::Percent(50),
                cores: 0,
            })],
            ..PodRequest::default()
        };
        let quota = QuotaCheck {
            namespace: "team".into(),
            hard: [("limits.nvidia.com/gpumem".to_owned(), 12_000)].into(),
            used: [(
                "nvidia".to_owned(),
                Usage {
                    memory_mib: 2000,
                    cores: 0,
                },
            )]
            .into(),
        };
        let placing = Placing {
            quota: Some(&quota),
            ..Placing::nvidia(NodeSchedulerPolicy::Spread, GpuSchedulerPolicy::Binpack)
        };
        let out = filter(&nodes, &pct, &placing);
        assert_eq!(out.chosen.unwrap().node, 0);
        assert_eq!(
            out.failed,
            vec![(1, hami_api::reasons::RESOURCE_QUOTA_NOT_FIT)]
        );
    }

    #[test]
    fn the_decision_is_in_hami_encoding() {
        let nodes = vec![node("a", &[0])];
        let out = filter(
            &nodes,
            &pod(3000),
            &Placing::nvidia(NodeSchedulerPolicy::Binpack, GpuSchedulerPolicy::Binpack),
        );
        let c = out.chosen.unwrap();
        assert_eq!(
            c.fit.allocation(&nodes[c.node]).encode().unwrap(),
            "a-0,NVIDIA-A100,3000,10:;"
        );
    }
}
