//! `hami-cdi`: Per-allocation CDI spec generator for hami-rs.
//!
//! Not implemented yet: the work is tracked in the cdi-generator issue. The binary exists so
//! the workspace layout, packaging and CI are in place; it refuses to run rather
//! than pretend to work.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "hami-cdi",
    version,
    about = "Per-allocation CDI spec generator for hami-rs. (not implemented yet)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    Cli::parse();
    anyhow::bail!("hami-cdi is not implemented yet (see the cdi-generator issue)")
}
