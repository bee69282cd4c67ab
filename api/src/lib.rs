//! `hami-api`: the vocabulary every hami-rs component shares.
//!
//! Everything here is pure: no I/O, no clocks, no environment reads. Callers pass
//! in the current time or the raw string and get a typed value or an error that
//! names the offending field. Each codec is byte-compatible with the HAMi v2.9/v2.10
//! wire format, so an existing HAMi cluster's annotations decode unchanged.

pub mod allocation;
pub mod bind_phase;
pub mod handshake;
pub mod keys;
pub mod limits_file;
pub mod link_scores;
pub mod node_lock;
pub mod node_register;
pub mod policy;
pub mod quantity;
pub mod quota;
pub mod reasons;
pub mod resources;
#[cfg(feature = "seal")]
pub mod seal;

pub use allocation::{AllocationError, ContainerDevice, PodAllocation};
pub use bind_phase::BindPhase;
pub use handshake::{Handshake, HandshakeError};
pub use link_scores::{LinkScores, LinkScoresError};
pub use node_lock::{NodeLock, NodeLockError};
pub use node_register::{DeviceInfo, NodeRegisterError};
pub use policy::{GpuSchedulerPolicy, NodeSchedulerPolicy, PolicyError};
pub use quantity::{Quantity, QuantityError};
pub use quota::{MemoryQuota, Percent, QuotaError};
pub use reasons::{FailureReasons, ReasonsError};
pub use resources::{ResourceCatalog, ResourceKind, VendorResources};
