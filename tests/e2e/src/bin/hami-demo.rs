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
    // What the node agent's /metrics would show for these containers, read
    // the way the agent reads them (before the state is cleaned).
    let usage = hami_node::monitor::scan(&scenario.state_dir);
    let metrics = hami_node::metrics::render(&usage, "demo-node");
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
    println!("\nThe node agent's metrics for them (hami-node's monitor over the shared regions):");
    for line in metrics.lines().filter(|l| {
        l.starts_with("hami_vgpu_memory_used_bytes{")
            || l.starts_with("hami_vgpu_memory_limit_bytes{")
    }) {
        println!("  {line}");
    }
    println!("\nEach container saw only its quota through cuMemGetInfo and NVML, got exactly");
    println!("quota / 256 MiB allocations and then CUDA_ERROR_OUT_OF_MEMORY; the node agent's");
    println!("monitor read each container's usage and limit back from its shared region.");
    let mut problems = verify(&scenario.tenants, &observed, scenario.chunk);
    for (t, o) in scenario.tenants.iter().zip(&observed) {
        let seen = usage.containers.iter().find(|c| c.allocation == t.name);
        match seen {
            Some(c)
                if c.snapshot.used_bytes.iter().sum::<u64>() == o.region_used
                    && c.snapshot.limits.memory_bytes[0] == t.memory_bytes => {}
            Some(c) => problems.push(format!(
                "{}: the monitor read {} bytes used / {} limit, the region says {} / {}",
                t.name,
                c.snapshot.used_bytes.iter().sum::<u64>(),
                c.snapshot.limits.memory_bytes[0],
                o.region_used,
                t.memory_bytes
            )),
            None => problems.push(format!(
                "{}: the node agent's monitor did not find its region",
                t.name
            )),
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("demo check failed: {p}");
        }
        bail!("{} demo check(s) failed", problems.len());
    }
    println!("\ndemo: all checks passed");
    Ok(())
}
