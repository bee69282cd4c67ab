//! `hami-controller`: the scheduler extender, admission webhook and quota.
//! Built so far:
//! - [`extender`]: the kube-scheduler extender wire types;
//! - [`schedule`]: the I/O-free scheduling core (devices, requests, fit,
//!   scores, fragmentation-aware placement);
//! - [`simulate`]: the trace simulator that replays openb through it;
//! - [`state`]: the cluster view rebuilt from node and pod annotations.

pub mod extender;
pub mod schedule;
pub mod simulate;
pub mod state;
