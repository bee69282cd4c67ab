//! `libhami_core.so`: the interposer loaded with `LD_PRELOAD`.
//!
//! It enforces per-container device-memory limits for CUDA applications that
//! do not know it is there. The pieces, each in its own module:
//! - [`config`]: the limits from the container environment (fail closed on garbage);
//! - [`region`]: the shared accounting region every process of the container maps;
//! - [`engine`]: reserve-before-allocate accounting and pointer tracking;
//! - [`cuda`]: the exported driver entry points, `cuGetProcAddress` and the `dlsym` override;
//! - [`nvml`]: NVML memory queries that show the quota;
//! - [`limiter`]: the compute share, a closed loop on kernel launches fed by NVML;
//! - [`ascend`]: the same memory quota in front of CANN's runtime and AscendCL;
//! - [`slicer`]: weighted time-slicing of an NPU between containers, arbitrated by the node agent.

pub mod ascend;
pub mod config;
pub mod cuda;
pub mod engine;
pub mod limiter;
pub mod log;
pub mod nvml;
pub mod slicer;
/// The shared accounting region (its own crate, so the node side can read it
/// without linking the interposer).
pub use hami_region as region;
