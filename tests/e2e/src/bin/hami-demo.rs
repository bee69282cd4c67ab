//! `hami-demo`: the local demo (README command 1, via hack/demo.sh).
//!
//! Two podman containers share one fake 8 GiB GPU: hami-cdi writes a CDI spec
//! for each (2 GiB at 30%, 4 GiB at 60%), podman injects it with
//! `--device hami.io/vgpu=<name>`, and hami-core, preloaded through
//! /etc/ld.so.preload, enforces the quotas. The table shows what each
//! container saw; the demo fails if any claim does not hold.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use hami_e2e::{find_library, report, verify, Scenario};

#[derive(Parser)]
#[command(
    name = "hami-demo",
    about = "Two containers share one fake GPU with different quotas"
)]
struct Args {
    /// libhami_core.so to inject (default: the one built beside this binary).
    #[arg(long)]
    library: Option<PathBuf>,
    /// Host directory for the allocations' state.
    #[arg(long, default_value = "/var/run/hami/demo")]
    state_dir: PathBuf,
    /// Keep the specs and state afterwards, to inspect them.
    #[arg(long)]
    keep: bool,
    /// Show hami-core's log and each container's full output.
    #[arg(long)]
    debug: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let exe = std::env::current_exe()?;
    let library = match args.library {
        Some(l) => l,
        None => find_library(&exe)
            .context("libhami_core.so not found beside hami-demo; build hami-core first")?,
    }
    .canonicalize()?;
    if std::process::Command::new("nvidia-smi")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("note: nvidia-smi works here, but the real-GPU variant of the demo is not written yet; using the fake GPU");
    }
    let work = tempfile::Builder::new().prefix("hami-demo-").tempdir()?;
    let mut scenario = Scenario::demo(work.path(), &args.state_dir, &library, "hami-demo");
    scenario.debug = args.debug;
    println!("hami-rs local demo: two podman containers share one fake 8 GiB GPU");
    println!("  library: {}", library.display());
    for t in &scenario.tenants {
        println!(
            "  hami-cdi spec {}/hami.io-vgpu_{}.json: {} MiB, {}% compute",
            hami_e2e::SPEC_DIR,
            t.name,
            t.memory_bytes >> 20,
            t.cores
        );
    }
    println!("running both containers side by side...\n");
    let result = scenario.run();
    if !args.keep {
        scenario.clean();
    }
    let observed = result?;
    if args.debug {
        for (t, o) in scenario.tenants.iter().zip(&observed) {
            println!("---- {} ----\n{}", t.name, o.output);
        }
    }
    print!("{}", report(&scenario.tenants, &observed, scenario.chunk));
    println!("\nEach container saw only its quota through cuMemGetInfo and NVML, got exactly");
    println!("quota / 256 MiB allocations and then CUDA_ERROR_OUT_OF_MEMORY; the host read");
    println!("each container's usage back from its shared region. The node agent's metrics");
    println!(
        "endpoint is not built yet (node-agent issue), so usage is read from the regions directly."
    );
    let problems = verify(&scenario.tenants, &observed, scenario.chunk);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("demo check failed: {p}");
        }
        bail!("{} demo check(s) failed", problems.len());
    }
    println!("\ndemo: all checks passed");
    Ok(())
}
