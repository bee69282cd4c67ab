//! `hami-oci-hook`: the OCI runtime hook that injects hami-core into annotated
//! containers.
//! - [`request`]: what the annotations ask for (pure; fails closed);
//! - [`state`]: the OCI State from stdin and the bundle's config.json, size-capped;
//! - [`confine`]: filesystem access confined to the container rootfs.

pub mod confine;
pub mod request;
pub mod state;
