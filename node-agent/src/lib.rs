//! `hami-node`, the node agent:
//! - [`register`]: device registration and the handshake (HAMi's annotations);
//! - [`device_plugin`], [`kubelet`], [`pod_source`]: the kubelet device plugin (v1beta1);
//! - [`dra`] and [`resource_slice`]: the DRA kubelet plugin and the node's ResourceSlice;
//! - [`monitor`] and [`metrics`]: every container's shared region, read-only,
//!   as Prometheus metrics;
//! - [`cleanup`]: deleted pods' specs and state removed;
//! - [`quota_guard`]: pods that run without the quota Allocate gives, deleted;
//! - [`doctor`]: the node's prerequisites as a table.
pub mod cleanup;
pub mod device_plugin;
pub mod doctor;
pub mod dra;
pub mod grpc_authority;
pub mod kubelet;
pub mod metrics;
pub mod monitor;
pub mod npu_arbiter;
pub mod pod_source;
pub mod quota_guard;
pub mod register;
pub mod resource_slice;
