//! `hami-controller`: scheduler extender, admission webhook and quota for hami-rs.
//!
//! ```text
//! hami-controller simulate --nodes openb_node_list_gpu_node.csv --pods openb_pod_list_default.csv …
//! hami-controller serve [--listen 127.0.0.1:8888] [--metrics-listen :9395] [--dry-run] …
//! ```
//!
//! `serve` runs the extender's `/filter` and `/bind` (with `/metrics`,
//! `/healthz`, `/readyz`) against the cluster in the kubeconfig or the pod's
//! service account, deciding only while it holds the leader Lease, and the
//! admission webhook (`/webhook`) over TLS on every replica.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hami_api::{GpuSchedulerPolicy, NodeSchedulerPolicy};
use hami_controller::admission::mutate::WebhookConfig;
use hami_controller::admission::tls::{server_config, TlsListener};
use hami_controller::decision_key::ensure_decision_key;
use hami_controller::kube_cluster::{dra_support, KubeCluster};
use hami_controller::leader::LeaderConfig;
use hami_controller::server::{metrics_router, router, webhook_router, Settings};
use hami_controller::simulate::openb::{read_nodes, read_pods};
use hami_controller::simulate::{Policy, Simulation};

#[derive(Parser)]
#[command(
    name = "hami-controller",
    version,
    about = "Scheduler extender, admission webhook and quota for hami-rs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at startup: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Replay an openb trace through the scheduler's fit and score code and
    /// report the unallocated GPU share when arrivals reach 100% of capacity.
    Simulate {
        /// The node list (openb_node_list_gpu_node.csv).
        #[arg(long)]
        nodes: PathBuf,
        /// One or more pod lists; one table each.
        #[arg(long, required = true, num_args = 1..)]
        pods: Vec<PathBuf>,
        /// First and last seed, inclusive.
        #[arg(long, default_value_t = 42)]
        first_seed: u64,
        #[arg(long, default_value_t = 51)]
        last_seed: u64,
    },
    /// Serve the scheduler extender's /filter, /bind, /healthz and /readyz.
    Serve {
        /// The extender's /filter and /bind. Loopback: the kube-scheduler
        /// that calls it runs in the same pod, and nobody else may bind pods.
        #[arg(long, default_value = "127.0.0.1:8888", value_parser = parse_listen)]
        listen: std::net::SocketAddr,
        /// /metrics, /healthz and /readyz (HAMi's scheduler.metricsBindAddress;
        /// ":9395" means every address).
        #[arg(long, alias = "metrics-bind-address", default_value = ":9395", value_parser = parse_listen)]
        metrics_listen: std::net::SocketAddr,
        /// Larger request bodies get 413.
        #[arg(long, default_value_t = 1 << 20)]
        body_limit: usize,
        /// binpack or spread, for pods without hami.io/node-scheduler-policy.
        #[arg(long, default_value = "binpack")]
        node_policy: NodeSchedulerPolicy,
        /// binpack, spread or topology-aware, for pods without hami.io/gpu-scheduler-policy.
        #[arg(long, default_value = "binpack")]
        gpu_policy: GpuSchedulerPolicy,
        /// Decide, but write nothing to the pods.
        #[arg(long)]
        dry_run: bool,
        /// A /filter or /bind not done after this many milliseconds gets a
        /// JSON error (kube-scheduler's own extender timeout is 30 s by default).
        #[arg(long, default_value_t = 10_000)]
        request_timeout_ms: u64,
        /// Elect a leader through a Lease; only the leader decides. Turn off
        /// only for a single replica.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        leader_elect: bool,
        #[arg(long, default_value = "hami-scheduler")]
        lease_name: String,
        /// Do not hold a Lease: lead while the co-located kube-scheduler
        /// holds --lease-name (its identity starts with this pod's name), so
        /// the extender decides exactly when its scheduler does.
        #[arg(long)]
        follow_scheduler_lease: bool,
        /// The Lease's namespace (the chart passes the pod's).
        #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
        lease_namespace: String,
        /// This replica's identity in the Lease (the chart passes the pod name).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// The admission webhook's HTTPS address (served with --tls-cert and --tls-key).
        #[arg(long, default_value = "0.0.0.0:9443", value_parser = parse_listen)]
        webhook_listen: std::net::SocketAddr,
        /// PEM certificate chain for the webhook; reloaded when the file changes.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// The scheduler pods that share devices are sent to.
        #[arg(long, default_value = "hami-scheduler")]
        scheduler_name: String,
        /// A user (service account, as `system:serviceaccount:NS:NAME`) that
        /// may write the scheduler's annotations on pods: this controller's
        /// and the node agent's. Repeat for each; nobody else may.
        #[arg(long = "trusted-user")]
        trusted_users: Vec<String>,
        /// The node agents' service account: it may write bind-phase on the
        /// pods of its own node and annotations on that node only.
        #[arg(long)]
        node_agent_user: Option<String>,
        /// Seal every decision with the key in this Secret (created in the
        /// Lease namespace when missing); the node agents mount it and
        /// answer Allocate only for sealed decisions, and only sealed
        /// allocations count as usage. Off when not given.
        #[arg(long)]
        decision_key_secret: Option<String>,
        /// The decision key from a file instead (tests, non-Kubernetes setups).
        #[arg(long, conflicts_with = "decision_key_secret")]
        decision_key_file: Option<PathBuf>,
        /// runtimeClassName set on such pods that have none.
        #[arg(long)]
        runtime_class: Option<String>,
        /// GPU_CORE_UTILIZATION_POLICY injected into NVIDIA containers (default, force, disable).
        #[arg(long)]
        core_policy: Option<String>,
        /// Convert NVIDIA requests to DRA ResourceClaims, when the cluster
        /// supports it (checked at start; otherwise the extender path stays).
        #[arg(long)]
        dra: bool,
    },
}

struct Election {
    lease_name: String,
    lease_namespace: String,
    identity: String,
    follow: bool,
}

fn read(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn simulate(
    nodes: &PathBuf,
    pod_files: &[PathBuf],
    seeds: std::ops::RangeInclusive<u64>,
) -> Result<()> {
    let node_rows = read_nodes(&nodes.display().to_string(), &read(nodes)?)?;
    if seeds.is_empty() {
        bail!("no seeds: --first-seed is after --last-seed");
    }
    for file in pod_files {
        let pods = read_pods(&file.display().to_string(), &read(file)?)?;
        let sim = Simulation::new(&node_rows, &pods);
        println!(
            "\n{}: {} nodes, {} GPUs, {} pods; seeds {}-{}",
            file.file_name().unwrap_or_default().to_string_lossy(),
            node_rows.len(),
            sim.capacity(),
            pods.len(),
            seeds.start(),
            seeds.end()
        );
        println!(
            "| {:<20} | {:>16} | {:>8} | {:>8} | {:>12} | {:>9} |",
            "policy", "unallocated GPU %", "min", "max", "failed pods", "seconds"
        );
        println!(
            "|{:-<22}|{:->18}|{:->10}|{:->10}|{:->14}|{:->11}|",
            "", "", "", "", "", ""
        );
        for policy in Policy::ALL {
            let start = Instant::now();
            let runs: Vec<_> = seeds.clone().map(|s| sim.run(policy, s)).collect();
            let pct: Vec<f64> = runs.iter().map(|r| r.unallocated_percent).collect();
            let mean = pct.iter().sum::<f64>() / pct.len() as f64;
            let failed = runs.iter().map(|r| r.failed_pods as f64).sum::<f64>() / runs.len() as f64;
            println!(
                "| {:<20} | {:>16.2} | {:>8.2} | {:>8.2} | {:>12.1} | {:>9.1} |",
                policy.name(),
                mean,
                pct.iter().copied().fold(f64::INFINITY, f64::min),
                pct.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                failed,
                start.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// `host:port`, or Go's `:port` for every address.
fn parse_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.to_owned(),
    };
    full.parse()
        .map_err(|e| format!("{text:?} is not an address (host:port or :port): {e}"))
}

struct Webhook {
    listen: std::net::SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    config: WebhookConfig,
    /// Where the DRA support probe runs its dry-run create.
    namespace: String,
}

/// Where the decision key comes from.
struct DecisionKeySource {
    secret: Option<String>,
    file: Option<PathBuf>,
    namespace: String,
}

async fn serve(
    listen: std::net::SocketAddr,
    metrics_listen: std::net::SocketAddr,
    decision_key: DecisionKeySource,
    mut settings: Settings,
    election: Option<Election>,
    webhook: Option<Webhook>,
) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server (kubeconfig or in-cluster service account)")?;
    if let Some(e) = election {
        let leader = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        settings.leader = Some(leader.clone());
        let api = kube::Api::namespaced(client.clone(), &e.lease_namespace);
        let cfg = LeaderConfig::new(e.lease_name, e.identity);
        if e.follow {
            tokio::spawn(hami_controller::leader::follow(api, cfg, leader));
        } else {
            tokio::spawn(hami_controller::leader::run(api, cfg, leader));
        }
    }
    let key = match (&decision_key.secret, &decision_key.file) {
        (Some(name), _) => Some(
            ensure_decision_key(&client, &decision_key.namespace, name)
                .await
                .map_err(anyhow::Error::msg)
                .context("the decision key")?,
        ),
        (None, Some(path)) => Some(hami_api::seal::DecisionKey::from_file(path)?),
        (None, None) => {
            tracing::warn!("no --decision-key-secret: decisions are not sealed, and every allocation annotation counts as usage");
            None
        }
    };
    settings.decision_key = key.clone().map(std::sync::Arc::new);
    let cluster = KubeCluster::start_sealed(client.clone(), settings.profiles.clone(), key);
    if let Some(mut w) = webhook {
        if w.config.dra {
            match dra_support(&client, &w.namespace).await {
                Ok(()) => tracing::info!("DRA conversion on: pods get ResourceClaims"),
                Err(e) => {
                    tracing::warn!("DRA conversion asked for but not possible here: {e}; pods keep the scheduler-extender path");
                    w.config.dra = false;
                }
            }
        }
        let tls = server_config(&w.cert, &w.key).context("loading the webhook certificate")?;
        let tcp = tokio::net::TcpListener::bind(w.listen)
            .await
            .with_context(|| format!("listening on {}", w.listen))?;
        let listener = TlsListener::new(tcp, tls)?;
        let app = webhook_router(cluster.clone(), w.config, settings.body_limit);
        tracing::info!(listen = %w.listen, "serving the admission webhook over TLS");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("webhook server: {e}");
            }
        });
    } else {
        tracing::warn!("no --tls-cert/--tls-key: the admission webhook is not served");
    }
    let metrics = tokio::net::TcpListener::bind(metrics_listen)
        .await
        .with_context(|| format!("listening on {metrics_listen}"))?;
    let metrics_app = metrics_router(cluster.clone(), settings.clone());
    tracing::info!(listen = %metrics_listen, "serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(metrics, metrics_app).await {
            tracing::error!("metrics server: {e}");
        }
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    if !listen.ip().is_loopback() {
        tracing::warn!(%listen, "the extender listens beyond loopback: anyone who reaches it can ask for pods to be filtered; binds are still only for this controller's own decisions");
    }
    tracing::info!(%listen, dry_run = settings.dry_run, "serving the scheduler extender");
    axum::serve(listener, router(cluster, settings))
        .await
        .context("serving")
}

fn main() -> Result<()> {
    // Feature unification can give rustls both ring and aws-lc-rs (a test
    // build of the workspace does), and then it picks none and the kube
    // client panics: name the provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Simulate {
            nodes,
            pods,
            first_seed,
            last_seed,
        } => simulate(&nodes, &pods, first_seed..=last_seed),
        Command::Serve {
            listen,
            metrics_listen,
            body_limit,
            node_policy,
            gpu_policy,
            dry_run,
            request_timeout_ms,
            leader_elect,
            lease_name,
            follow_scheduler_lease,
            lease_namespace,
            identity,
            webhook_listen,
            tls_cert,
            tls_key,
            scheduler_name,
            trusted_users,
            node_agent_user,
            decision_key_secret,
            decision_key_file,
            runtime_class,
            core_policy,
            dra,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            let settings = Settings {
                body_limit,
                node_policy,
                gpu_policy,
                dry_run,
                request_timeout: std::time::Duration::from_millis(request_timeout_ms),
                ..Settings::default()
            };
            let election = if leader_elect {
                let identity = match identity {
                    Some(i) => i,
                    None => std::fs::read_to_string("/etc/hostname")
                        .map(|h| h.trim().to_owned())
                        .context("no --identity and no /etc/hostname for the leader Lease")?,
                };
                Some(Election {
                    lease_name,
                    lease_namespace: lease_namespace.clone(),
                    identity,
                    follow: follow_scheduler_lease,
                })
            } else {
                None
            };
            let decision_key = DecisionKeySource {
                secret: decision_key_secret,
                file: decision_key_file,
                namespace: lease_namespace.clone(),
            };
            let webhook = tls_cert.zip(tls_key).map(|(cert, key)| Webhook {
                listen: webhook_listen,
                cert,
                key,
                config: WebhookConfig {
                    scheduler_name,
                    runtime_class,
                    core_policy,
                    profiles: settings.profiles.clone(),
                    dra,
                    trusted_users,
                    node_agent_user,
                },
                namespace: lease_namespace,
            });
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(
                    listen,
                    metrics_listen,
                    decision_key,
                    settings,
                    election,
                    webhook,
                ))
        }
    }
}
