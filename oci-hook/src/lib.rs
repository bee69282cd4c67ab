//! `hami-oci-hook`: the OCI runtime hook that injects hami-core into annotated
//! containers.
//! - [`request`]: what the annotations ask for (pure; fails closed);
//! - [`state`]: the OCI State from stdin and the bundle's config.json, size-capped;
//! - [`hook`]: one invocation, from the State to an injected container;
//! - [`inject`], [`mount`], [`confine`]: the injection, confined to the rootfs;
//! - [`namespace`], [`cgroup`]: entering the container, allowing its devices;
//! - [`trusted`]: the host directories the hook may write;
//! - [`install`]: runtime configuration; [`fuzz`]: the fuzzing entry point.

pub mod cgroup;
pub mod cli;
pub mod confine;
pub mod fuzz;
pub mod hook;
pub mod inject;
pub mod install;
pub mod mount;
pub mod namespace;
pub mod request;
pub mod state;
pub mod trusted;
