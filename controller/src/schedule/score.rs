//! Node scores for the pod-level policies (`hami.io/node-scheduler-policy`):
//! higher is better, always finite, in 0..=10.

use hami_api::NodeSchedulerPolicy;

use super::device::Node;

/// The score of a node once the pod is on it (`after`).
pub fn node_score(after: &Node, policy: NodeSchedulerPolicy) -> f64 {
    score_for_load(after.load(), policy)
}

/// The score of a node whose load (0..=1) would be `load`.
pub fn score_for_load(load: f64, policy: NodeSchedulerPolicy) -> f64 {
    let score = match policy {
        NodeSchedulerPolicy::Binpack => load * 10.0,
        NodeSchedulerPolicy::Spread => (1.0 - load) * 10.0,
    };
    if score.is_finite() {
        score.clamp(0.0, 10.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::device::Device;

    fn node(loads: &[u32]) -> Node {
        Node {
            name: "n".into(),
            devices: loads
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let mut d = Device::new(format!("GPU-{i}"), i as u32, "T", 100);
                    if *l > 0 {
                        d.grant(u64::from(*l), *l);
                    }
                    d
                })
                .collect(),
            topology: Default::default(),
        }
    }

    #[test]
    fn binpack_prefers_full_nodes_and_spread_empty_ones() {
        let (full, empty) = (node(&[90, 80]), node(&[10, 0]));
        assert!(
            node_score(&full, NodeSchedulerPolicy::Binpack)
                > node_score(&empty, NodeSchedulerPolicy::Binpack)
        );
        assert!(
            node_score(&full, NodeSchedulerPolicy::Spread)
                < node_score(&empty, NodeSchedulerPolicy::Spread)
        );
    }

    #[test]
    fn degenerate_nodes_score_zero_not_nan() {
        let mut n = node(&[0]);
        n.devices[0].memory_mib = 0;
        n.devices[0].cores = 0;
        for p in [NodeSchedulerPolicy::Binpack, NodeSchedulerPolicy::Spread] {
            let s = node_score(&n, p);
            assert!(s.is_finite() && (0.0..=10.0).contains(&s));
        }
        let none = Node::new("x", vec![]);
        assert_eq!(node_score(&none, NodeSchedulerPolicy::Binpack), 0.0);
    }
}
