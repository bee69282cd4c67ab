//! The scheduling core, free of I/O: devices and their usage, what a pod
//! asks for, fitting a pod onto a node, and the policies that rank the
//! placements. The extender and the simulator both run exactly this code.

pub mod device;
pub mod filter;
pub mod fit;
pub mod fragmentation;
pub mod placement;
pub mod pod;
pub mod request;
pub mod score;
pub mod vendor;
