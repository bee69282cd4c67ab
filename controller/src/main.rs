//! `hami-controller`: Scheduler extender, admission webhook and quota for hami-rs.
//!
//! Not implemented yet: the work is tracked in the controller issue. The binary exists so
//! the workspace layout, packaging and CI are in place; it refuses to run rather
//! than pretend to work.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "hami-controller",
    version,
    about = "Scheduler extender, admission webhook and quota for hami-rs. (not implemented yet)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    Cli::parse();
    anyhow::bail!("hami-controller is not implemented yet (see the controller issue)")
}
