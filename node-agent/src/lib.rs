//! `hami-node`, the node agent. Built so far:
//! - [`register`]: device registration and the handshake (HAMi's annotations);
//! - [`monitor`] and [`metrics`]: every container's shared region, read-only,
//!   as Prometheus metrics;
//! - [`doctor`]: the node's prerequisites as a table.
//!
//! Not built yet: the kubelet device plugin and the DRA kubelet plugin.

pub mod doctor;
pub mod metrics;
pub mod monitor;
pub mod register;
