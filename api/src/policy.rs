//! Scheduling policies chosen per pod (`hami.io/node-scheduler-policy`,
//! `hami.io/gpu-scheduler-policy`) or cluster-wide in the chart values.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{what} {value:?}: expected one of {expected}")]
pub struct PolicyError {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// How to rank candidate nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NodeSchedulerPolicy {
    /// Fill the busiest node first (HAMi's chart default).
    #[default]
    Binpack,
    Spread,
}

/// How to rank devices inside the chosen node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GpuSchedulerPolicy {
    Binpack,
    /// Least-used device first (HAMi's chart default).
    #[default]
    Spread,
    /// NVLink/PCIe link-matrix best fit.
    TopologyAware,
}

impl NodeSchedulerPolicy {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Binpack => "binpack",
            Self::Spread => "spread",
        }
    }
}

impl GpuSchedulerPolicy {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Binpack => "binpack",
            Self::Spread => "spread",
            Self::TopologyAware => "topology-aware",
        }
    }
}

impl FromStr for NodeSchedulerPolicy {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "binpack" => Ok(Self::Binpack),
            "spread" => Ok(Self::Spread),
            other => Err(PolicyError {
                what: "node scheduler policy",
                value: other.to_owned(),
                expected: "binpack, spread",
            }),
        }
    }
}

impl FromStr for GpuSchedulerPolicy {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "binpack" => Ok(Self::Binpack),
            "spread" => Ok(Self::Spread),
            "topology-aware" => Ok(Self::TopologyAware),
            other => Err(PolicyError {
                what: "gpu scheduler policy",
                value: other.to_owned(),
                expected: "binpack, spread, topology-aware",
            }),
        }
    }
}

impl fmt::Display for NodeSchedulerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for GpuSchedulerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trip_and_errors() {
        for p in [
            GpuSchedulerPolicy::Binpack,
            GpuSchedulerPolicy::Spread,
            GpuSchedulerPolicy::TopologyAware,
        ] {
            assert_eq!(p.as_str().parse::<GpuSchedulerPolicy>().unwrap(), p);
        }
        for p in [NodeSchedulerPolicy::Binpack, NodeSchedulerPolicy::Spread] {
            assert_eq!(p.as_str().parse::<NodeSchedulerPolicy>().unwrap(), p);
        }
        let err = "topology-aware".parse::<NodeSchedulerPolicy>().unwrap_err();
        assert!(err.to_string().contains("binpack, spread"), "{err}");
        assert!("Binpack".parse::<GpuSchedulerPolicy>().is_err());
        assert_eq!(NodeSchedulerPolicy::default(), NodeSchedulerPolicy::Binpack);
        assert_eq!(GpuSchedulerPolicy::default(), GpuSchedulerPolicy::Spread);
    }
}
