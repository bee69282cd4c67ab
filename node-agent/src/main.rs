//! `hami-node`: Node agent: device discovery, kubelet device plugin, DRA plugin and usage metrics.
//!
//! Not implemented yet: the work is tracked in the node-agent issue. The binary exists so
//! the workspace layout, packaging and CI are in place; it refuses to run rather
//! than pretend to work.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "hami-node",
    version,
    about = "Node agent: device discovery, kubelet device plugin, DRA plugin and usage metrics. (not implemented yet)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    Cli::parse();
    anyhow::bail!("hami-node is not implemented yet (see the node-agent issue)")
}
