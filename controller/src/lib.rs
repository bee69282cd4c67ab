//! `hami-controller`: the scheduler extender, admission webhook and quota.
//! Built so far:
//! - [`extender`]: the kube-scheduler extender wire types;
//! - [`schedule`]: the I/O-free scheduling core (devices, requests, fit,
//!   scores, fragmentation-aware placement);
//! - [`simulate`]: the trace simulator that replays openb through it;
//! - [`state`]: the cluster view rebuilt from node and pod annotations;
//! - [`server`]: the extender's HTTP endpoints over a [`server::Cluster`];
//! - [`kube_cluster`]: that cluster behind a real API server (reflectors, patches);
//! - [`node_lock`]: the per-node bind lock over any optimistic-concurrency store;
//! - [`metrics`]: allocations in Prometheus text format under HAMi's names.
//! - [`leader`]: leader election through a Lease; only the leader decides.

pub mod admission;
pub mod decision_key;
pub mod extender;
pub mod kube_cluster;
pub mod leader;
pub mod metrics;
pub mod node_lock;
pub mod pending;
pub mod schedule;
pub mod server;
pub mod simulate;
pub mod state;
