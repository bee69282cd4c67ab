//! `hami-node`, the node agent. Built so far:
//! - [`register`]: device registration and the handshake (HAMi's annotations);
//! - [`monitor`] and [`metrics`]: every container's shared region, read-only,
//!   as Prometheus metrics;
//! - [`doctor`]: the node's prerequisites as a table.
//!
//! - [`device_plugin`] and [`kubelet`]: the kubelet device plugin (v1beta1).
//!
//! Not built yet: the DRA kubelet plugin.

pub mod device_plugin;
pub mod doctor;
pub mod dra;
pub mod kubelet;
pub mod metrics;
pub mod monitor;
pub mod pod_source;
pub mod register;
pub mod resource_slice;
