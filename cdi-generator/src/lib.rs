//! `hami-cdi`: builds per-allocation CDI specs.
//!
//! Not implemented yet (tracked in the cdi-generator issue).
