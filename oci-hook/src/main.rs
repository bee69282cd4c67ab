//! `hami-oci-hook`: OCI runtime hook that injects hami-core into annotated containers.
//!
//! Not implemented yet: the work is tracked in the oci-hook issue. The binary exists so
//! the workspace layout, packaging and CI are in place; it refuses to run rather
//! than pretend to work.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "hami-oci-hook",
    version,
    about = "OCI runtime hook that injects hami-core into annotated containers. (not implemented yet)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    Cli::parse();
    anyhow::bail!("hami-oci-hook is not implemented yet (see the oci-hook issue)")
}
