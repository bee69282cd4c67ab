//! `libhami_core.so`: the interposer loaded with `LD_PRELOAD`.
//!
//! Not implemented yet: the CUDA/NVML front end is tracked in the hami-core NVIDIA
//! issue and the Ascend front end in its own issue. This crate currently exports
//! no symbols, so preloading it changes nothing; it must not be deployed as if it
//! enforced quotas.
