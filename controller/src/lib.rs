//! `hami-controller`: the scheduler extender, admission webhook and quota.
//! Built so far:
//! - [`schedule`]: the I/O-free scheduling core (devices, requests, fit,
//!   scores, fragmentation-aware placement);
//! - [`simulate`]: the trace simulator that replays openb through it.

pub mod schedule;
pub mod simulate;
