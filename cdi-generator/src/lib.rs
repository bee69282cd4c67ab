//! `hami-cdi`: turns an allocation into a CDI spec, so that a container
//! runtime injects everything a container needs to share an accelerator: the
//! quota environment, the device nodes, the preload library and the shared
//! region. Used by the node agent (device plugin and DRA plugin) and, through
//! the `hami-cdi` CLI, by podman users without Kubernetes.

pub mod builder;
pub mod discovery;
pub mod nvml;
pub mod spec;
pub mod store;

pub use builder::{build, Allocation, BuildError, Grant, Layout};
pub use discovery::{Discovery, Inventory, Vendor};
pub use spec::Spec;
pub use store::SpecStore;
