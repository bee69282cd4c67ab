//! `hami-node`, the node agent. Built so far:
//! - [`register`]: device registration and the handshake (HAMi's annotations);
//! - [`monitor`] and [`metrics`]: every container's shared region, read-only,
//!   as Prometheus metrics;
//! - [`doctor`]: the node's prerequisites as a table.
//!
//! - [`device_plugin`] and [`kubelet`]: the kubelet device plugin (v1beta1).
//!
//! - [`dra`] and [`resource_slice`]: the DRA kubelet plugin and the node's ResourceSlice;
//! - [`cleanup`]: deleted pods' specs and state removed.

pub mod cleanup;
pub mod device_plugin;
pub mod doctor;
pub mod dra;
pub mod kubelet;
pub mod metrics;
pub mod monitor;
pub mod pod_source;
pub mod register;
pub mod resource_slice;
