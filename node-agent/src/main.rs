//! `hami-node`: the node agent.
//!
//! ```text
//! hami-node run --node-name $(NODE_NAME) [--vendor nvidia|ascend|mock] …
//! hami-node doctor [--runtime containerd]
//! ```
//!
//! `run` registers the node's devices (HAMi's register and handshake
//! annotations, patched only on change) and serves the usage monitor's
//! metrics. The kubelet device plugin and DRA plugin are not built yet:
//! `run` says so at start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{ArgAction, Parser, Subcommand};
use hami_node::doctor::{self, DoctorConfig, Outcome};
use hami_node::register::{device_infos, register_once, RegisterConfig};
use hami_node::{metrics, monitor};

#[derive(Parser)]
#[command(name = "hami-node", version, about = "hami-rs node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at startup: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Register the node's devices and serve the usage metrics.
    Run {
        #[arg(long, env = "NODE_NAME")]
        node_name: String,
        /// nvidia, ascend or mock.
        #[arg(long, default_value = "nvidia")]
        vendor: String,
        /// Inventory file for --vendor mock.
        #[arg(long)]
        inventory: Option<PathBuf>,
        #[arg(long, default_value = "/dev")]
        dev: PathBuf,
        #[arg(long, default_value_t = 10)]
        device_split_count: u32,
        #[arg(long, default_value_t = 1.0)]
        device_memory_scaling: f64,
        #[arg(long, default_value_t = 1.0)]
        device_core_scaling: f64,
        /// Allow Ascend hami-core mode on this node.
        #[arg(long, default_value_t = false, action = ArgAction::Set)]
        hami_vnpu_core: bool,
        /// The resource the device plugin will advertise (kept for the chart).
        #[arg(long, default_value = "nvidia.com/gpu")]
        resource_name: String,
        /// Write CDI specs at Allocate (kept for the chart; the device plugin is not built yet).
        #[arg(long, default_value_t = true, action = ArgAction::Set)]
        cdi: bool,
        /// Serve the DRA kubelet plugin (not built yet).
        #[arg(long, default_value_t = false, action = ArgAction::Set)]
        dra: bool,
        /// Where each container's state and shared region live.
        #[arg(long, default_value = "/var/run/hami/vgpu")]
        region_dir: PathBuf,
        #[arg(long, default_value = "0.0.0.0:9394")]
        metrics_bind_address: std::net::SocketAddr,
        /// Seconds between registration rounds.
        #[arg(long, default_value_t = 30)]
        register_interval: u64,
    },
    /// Check the node's prerequisites and print a table; exit 1 on a failure.
    Doctor {
        #[arg(long, default_value = "/")]
        root: PathBuf,
        #[arg(long, default_value = "nvidia")]
        vendor: String,
        #[arg(long, default_value = "containerd")]
        runtime: String,
        #[arg(long, default_value = "/usr/local/vgpu")]
        lib_dir: PathBuf,
        #[arg(long, default_value = "/var/run/hami/vgpu")]
        region_dir: PathBuf,
    },
}

struct Agent {
    node: String,
    vendor: String,
    inventory: Option<PathBuf>,
    dev: PathBuf,
    config: RegisterConfig,
    region_dir: PathBuf,
    interval: Duration,
}

async fn registration(agent: Arc<Agent>) {
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("no API server (kubeconfig or service account): {e}; not registering");
            return;
        }
    };
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    loop {
        let inventory =
            hami_cdi::discovery::for_vendor(&agent.vendor, &agent.dev, agent.inventory.as_deref())
                .map_err(|e| e.to_string())
                .and_then(|d| d.inventory().map_err(|e| e.to_string()));
        match inventory {
            Ok(inv) => {
                let infos = device_infos(&inv, &agent.config);
                let since = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let now =
                    chrono::DateTime::from_timestamp(since.as_secs() as i64, since.subsec_nanos())
                        .unwrap_or_default()
                        .fixed_offset();
                match register_once(&nodes, &agent.node, &infos, &agent.config, now).await {
                    Ok(true) => tracing::info!(devices = infos.len(), "node annotations updated"),
                    Ok(false) => tracing::debug!("node annotations unchanged"),
                    Err(e) => tracing::warn!("registering node {}: {e}", agent.node),
                }
            }
            Err(e) => tracing::warn!("device discovery: {e}"),
        }
        tokio::time::sleep(agent.interval).await;
    }
}

async fn serve_metrics(agent: Arc<Agent>, listen: std::net::SocketAddr) -> Result<()> {
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get({
                let agent = agent.clone();
                move || {
                    let agent = agent.clone();
                    async move {
                        let report = tokio::task::spawn_blocking({
                            let dir = agent.region_dir.clone();
                            move || monitor::scan(&dir)
                        })
                        .await
                        .unwrap_or_default();
                        for (allocation, e) in &report.errors {
                            tracing::warn!(allocation, "region not read: {e}");
                        }
                        metrics::render(&report, &agent.node)
                    }
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    tracing::info!(%listen, "serving metrics");
    axum::serve(listener, app).await.context("serving metrics")
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Doctor {
            root,
            vendor,
            runtime,
            lib_dir,
            region_dir,
        } => {
            let checks = doctor::run(&DoctorConfig {
                root,
                vendor,
                runtime,
                lib_dir,
                region_dir,
            });
            print!("{}", doctor::table(&checks));
            if checks.iter().any(|c| c.outcome == Outcome::Fail) {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Run {
            node_name,
            vendor,
            inventory,
            dev,
            device_split_count,
            device_memory_scaling,
            device_core_scaling,
            hami_vnpu_core,
            resource_name,
            cdi,
            dra,
            region_dir,
            metrics_bind_address,
            register_interval,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            tracing::warn!(
                %resource_name, cdi, dra,
                "the kubelet device plugin and the DRA plugin are not built yet: this agent registers devices and serves usage metrics only"
            );
            let agent = Arc::new(Agent {
                node: node_name,
                vendor,
                inventory,
                dev,
                config: RegisterConfig {
                    split_count: device_split_count,
                    memory_scaling: device_memory_scaling,
                    core_scaling: device_core_scaling,
                    vnpu_core: hami_vnpu_core,
                    ..RegisterConfig::default()
                },
                region_dir,
                interval: Duration::from_secs(register_interval.max(1)),
            });
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(async move {
                    tokio::spawn(registration(agent.clone()));
                    serve_metrics(agent, metrics_bind_address).await
                })
        }
    }
}
