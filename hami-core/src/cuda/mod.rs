//! CUDA driver API front end: exported hooks, the `dlsym` override, and the
//! real driver behind them.

pub mod abi;
pub mod context;
pub mod dlsym;
pub mod hooks;
pub mod real;
