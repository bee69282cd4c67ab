//! `hami-cdi`: CDI specs for podman users without Kubernetes.
//!
//! ```text
//! hami-cdi generate --device 0 --memory 3000m --cores 30 --name job1
//! podman run --device hami.io/vgpu=job1 …
//! hami-cdi list
//! hami-cdi remove job1
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hami_api::quota::{MemoryQuota, Percent};
use hami_cdi::builder::{self, DEFAULT_KIND};
use hami_cdi::discovery;
use hami_cdi::store::{self, SpecStore};
use hami_cdi::{Allocation, Grant, Layout};

#[derive(Parser)]
#[command(
    name = "hami-cdi",
    version,
    about = "Per-allocation CDI specs for sharing GPUs and NPUs with hami-core"
)]
struct Cli {
    /// Directory the container runtime reads CDI specs from.
    #[arg(long, global = true, default_value = "/var/run/cdi")]
    spec_dir: PathBuf,
    /// Host directory for each allocation's shared region and preload file.
    #[arg(long, global = true, default_value = "/var/run/hami/vgpu")]
    state_dir: PathBuf,
    /// CDI kind (vendor/class).
    #[arg(long, global = true, default_value = DEFAULT_KIND)]
    kind: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a spec for one allocation and print the --device to use.
    Generate {
        /// Device indexes, comma-separated (e.g. 0 or 0,1).
        #[arg(long, value_delimiter = ',', required = true)]
        device: Vec<u32>,
        /// Memory quota per device: 3000m, 4g, or a number of MiB.
        #[arg(long)]
        memory: Option<String>,
        /// Compute share per device, percent (1-100).
        #[arg(long)]
        cores: Option<String>,
        /// Name of the allocation: the CDI device name.
        #[arg(long)]
        name: String,
        /// nvidia, ascend or mock.
        #[arg(long, default_value = "nvidia")]
        vendor: String,
        /// Inventory file for --vendor mock.
        #[arg(long)]
        inventory: Option<PathBuf>,
        /// Host path of libhami_core.so.
        #[arg(long, default_value = "/usr/local/vgpu/libhami_core.so")]
        library: PathBuf,
        /// Add hami-oci-hook (this path) as a createContainer hook.
        #[arg(long)]
        hook: Option<PathBuf>,
        /// Where device nodes are looked up.
        #[arg(long, default_value = "/dev")]
        dev: PathBuf,
    },
    /// Show the specs of this kind, their quotas and the usage in their shared regions.
    List,
    /// Remove allocations' specs and state.
    Remove {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let store = SpecStore::new(&cli.spec_dir);
    match cli.command {
        Command::Generate {
            device,
            memory,
            cores,
            name,
            vendor,
            inventory,
            library,
            hook,
            dev,
        } => {
            let memory_bytes = memory
                .map(|m| MemoryQuota::parse_mib_default(&m).map(|q| q.bytes()))
                .transpose()
                .context("--memory")?;
            let cores = cores
                .map(|c| Percent::parse(&c, "--cores").map(|p| p.get()))
                .transpose()?
                .filter(|c| *c != 100);
            let discovery = discovery::for_vendor(&vendor, &dev, inventory.as_deref())
                .map_err(|e| anyhow::anyhow!("--vendor: {e}"))?;
            let inventory = discovery.inventory()?;
            if !library.is_file() {
                bail!(
                    "--library {}: no such file (build it with cargo build --release -p hami-core)",
                    library.display()
                );
            }
            // The runtime resolves hostPath from its own working directory.
            let library = library
                .canonicalize()
                .with_context(|| format!("--library {}", library.display()))?;
            let allocation = Allocation {
                name,
                grants: device
                    .into_iter()
                    .map(|index| Grant {
                        index,
                        memory_bytes,
                        cores,
                    })
                    .collect(),
            };
            let layout = Layout {
                kind: cli.kind,
                library,
                state_dir: cli.state_dir,
                hook,
            };
            // Build first: a bad request leaves nothing behind.
            let spec = builder::build(&allocation, &inventory, &layout)?;
            // Containers may be running on an existing allocation's region.
            if store.path_of(&layout.kind, &allocation.name).exists()
                || layout.allocation_dir(&allocation.name).exists()
            {
                bail!(
                    "allocation {} already exists; remove it first with: hami-cdi remove {}",
                    allocation.name,
                    allocation.name
                );
            }
            store::prepare_state(&allocation, &layout, &spec)?;
            let path = match store.write(&spec) {
                Ok(p) => p,
                Err(e) => {
                    let _ = store::remove_state(&layout, &allocation.name);
                    return Err(e.into());
                }
            };
            println!("wrote {}", path.display());
            println!(
                "use: podman run --device {}={} ...",
                layout.kind, allocation.name
            );
        }
        Command::List => {
            let (specs, broken) = store.list(&cli.kind)?;
            let layout = Layout {
                kind: cli.kind.clone(),
                library: PathBuf::new(),
                state_dir: cli.state_dir,
                hook: None,
            };
            println!(
                "{:<24} {:<8} {:<10} {:<6} {:>12}  SPEC",
                "NAME", "DEVICES", "MEMORY", "CORES", "USED"
            );
            for s in specs {
                let env = &s.spec.devices[0].container_edits.env;
                let get = |prefix: &str| {
                    env.iter()
                        .find_map(|e| e.strip_prefix(prefix))
                        .unwrap_or("-")
                        .to_owned()
                };
                let devices = env
                    .iter()
                    .filter(|e| e.starts_with("CUDA_DEVICE_MEMORY_LIMIT_"))
                    .count();
                let used = store::usage(&layout, &s.name)
                    .map(|u| MemoryQuota::from_bytes(u.iter().sum()).to_string())
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<24} {:<8} {:<10} {:<6} {:>12}  {}",
                    s.name,
                    devices.max(1),
                    get("CUDA_DEVICE_MEMORY_LIMIT_0="),
                    get("CUDA_DEVICE_SM_LIMIT="),
                    used,
                    s.path.display()
                );
            }
            for b in broken {
                eprintln!("warning: {b}");
            }
        }
        Command::Remove { names } => {
            let layout = Layout {
                kind: cli.kind.clone(),
                library: PathBuf::new(),
                state_dir: cli.state_dir,
                hook: None,
            };
            let mut missing = Vec::new();
            for name in names {
                let spec = store.remove(&cli.kind, &name)?;
                let state = store::remove_state(&layout, &name)?;
                if spec || state {
                    println!("removed {name}");
                } else {
                    missing.push(name);
                }
            }
            if !missing.is_empty() {
                bail!("no allocation named {}", missing.join(", "));
            }
        }
    }
    Ok(())
}
