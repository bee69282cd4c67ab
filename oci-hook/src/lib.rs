//! `hami-oci-hook`: the OCI runtime hook that injects hami-core into annotated
//! containers. Not functional yet (tracked in the oci-hook issue); what exists
//! is the foundation every write of the hook must go through:
//! - [`confine`]: filesystem access confined to the container rootfs;
//! - [`state`]: the OCI State from stdin and the bundle's config.json, size-capped.

pub mod confine;
pub mod state;
