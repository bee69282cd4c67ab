//! `hami-node`: the node agent.
//!
//! ```text
//! hami-node run --node-name $(NODE_NAME) [--vendor nvidia|ascend|mock] …
//! hami-node doctor [--runtime containerd]
//! ```
//!
//! `run` registers the node's devices (HAMi's register and handshake
//! annotations, patched only on change), serves the kubelet device plugin
//! (Allocate writes each container's CDI spec and state with hami-cdi), and
//! serves the usage monitor's metrics. The DRA plugin is not built yet:
//! `run` says so at start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{ArgAction, Args, Parser, Subcommand};
use hami_node::device_plugin::{self, replicas, Plugin, PluginDevice, SpecWriter};
use hami_node::doctor::{self, DoctorConfig, Outcome};
use hami_node::pod_source::KubePods;
use hami_node::register::{device_infos, register_once, RegisterConfig};
use hami_node::{kubelet, metrics, monitor};

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
        #[command(flatten)]
        source: DeviceSource,
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
        /// The scheduler whose pods Allocate answers (repeat for several).
        #[arg(long = "scheduler-name", default_value = "hami-scheduler")]
        scheduler_names: Vec<String>,
        /// The controller's decision key (its Secret, mounted): Allocate then
        /// answers only decisions the controller sealed for that very pod.
        #[arg(long)]
        decision_key_file: Option<PathBuf>,
        /// Return CDI device names from Allocate (the classic env, mounts and
        /// devices are returned either way, for runtimes without CDI).
        #[arg(long, default_value_t = true, action = ArgAction::Set)]
        cdi: bool,
        /// Where Allocate writes the CDI specs.
        #[arg(long, default_value = "/var/run/cdi")]
        cdi_dir: PathBuf,
        /// Host path of libhami_core.so, for the specs.
        #[arg(long, default_value = "/usr/local/vgpu/libhami_core.so")]
        library: PathBuf,
        /// kubelet's device-plugin directory (kubelet.sock lives there).
        #[arg(long, default_value = "/var/lib/kubelet/device-plugins")]
        device_plugin_path: PathBuf,
        /// Serve the DRA kubelet plugin and publish the node's ResourceSlice.
        #[arg(long, default_value_t = false, action = ArgAction::Set)]
        dra: bool,
        /// kubelet's plugin directory (the DRA socket goes in <dir>/<driver>/).
        #[arg(long, default_value = "/var/lib/kubelet/plugins")]
        dra_plugin_path: PathBuf,
        /// kubelet's plugin watcher directory.
        #[arg(long, default_value = "/var/lib/kubelet/plugins_registry")]
        plugins_registry_path: PathBuf,
        /// Where each container's state and shared region live.
        #[arg(long, default_value = "/var/run/hami/vgpu")]
        region_dir: PathBuf,
        /// Serve the NPU arbiter (Ascend time-slicing) at
        /// <region-dir>/.arbiter/npu.sock. On by default on Ascend nodes.
        #[arg(long, action = ArgAction::Set)]
        npu_arbiter: Option<bool>,
        #[arg(long, default_value = "0.0.0.0:9394")]
        metrics_bind_address: std::net::SocketAddr,
        /// Seconds between registration rounds.
        #[arg(long, default_value_t = 30)]
        register_interval: u64,
    },
    /// Print what `run` would register (the node annotations, as JSON) and
    /// the devices' memory in use, then exit.
    Discover {
        #[command(flatten)]
        source: DeviceSource,
        #[arg(long, default_value_t = 10)]
        device_split_count: u32,
    },
    /// Serve only the NPU arbiter: the time-slicing of Ascend NPUs for nodes
    /// without Kubernetes (podman with the hook or CDI specs).
    NpuArbiter {
        /// The state directory the hook or hami-cdi writes allocations to.
        #[arg(long, default_value = "/var/run/hami/vgpu")]
        region_dir: PathBuf,
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

/// Where the node's devices are found.
#[derive(Args, Debug, Clone)]
struct DeviceSource {
    /// nvidia, ascend or mock.
    #[arg(long, default_value = "nvidia")]
    vendor: String,
    /// Inventory file for --vendor mock.
    #[arg(long)]
    inventory: Option<PathBuf>,
    #[arg(long, default_value = "/dev")]
    dev: PathBuf,
}

impl DeviceSource {
    fn discover(&self) -> Result<hami_cdi::discovery::Inventory, String> {
        hami_cdi::discovery::for_vendor(&self.vendor, &self.dev, self.inventory.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|d| d.inventory().map_err(|e| e.to_string()))
    }

    /// NVLink/PCIe pair scores from NVML (NVIDIA nodes whose driver has the
    /// topology calls), for topology-aware scheduling.
    fn link_scores(&self, infos: &[hami_api::DeviceInfo]) -> Option<hami_api::LinkScores> {
        if self.vendor != "nvidia" {
            return None;
        }
        let count = infos.iter().map(|i| i.index + 1).max()?;
        let matrix = hami_cdi::nvml::Nvml::open()?.link_scores(count)?;
        Some(hami_node::register::link_scores(infos, &matrix))
    }

    /// What NVML says of each GPU now: memory in use (every process) and
    /// the process samples `(pid, percent)` since this process's previous
    /// call; empty off NVIDIA or without a loadable driver. One driver load
    /// and one discovery serve both.
    fn nvml_readings(&self) -> NvmlReadings {
        let mut out = NvmlReadings::default();
        if self.vendor != "nvidia" {
            return out;
        }
        let (Some(nvml), Ok(inv)) = (hami_cdi::nvml::Nvml::open(), self.discover()) else {
            return out;
        };
        for d in &inv.devices {
            if let Some(used) = nvml.memory_used(d.index) {
                out.memory_used.push((d.index, d.uuid.clone(), used));
            }
            if let Some(samples) = nvml.process_utilization(d.index) {
                out.samples.insert(d.uuid.clone(), samples);
            }
        }
        out
    }
}

#[derive(Debug, Default)]
struct NvmlReadings {
    /// `(index, uuid, bytes)`.
    memory_used: Vec<(u32, String, u64)>,
    /// Process samples by device UUID.
    samples: std::collections::BTreeMap<String, Vec<(u32, u32)>>,
}

struct Agent {
    node: String,
    dra: bool,
    resource: String,
    cdi: bool,
    cdi_dir: PathBuf,
    library: PathBuf,
    device_plugin_path: PathBuf,
    source: DeviceSource,
    config: RegisterConfig,
    region_dir: PathBuf,
    interval: Duration,
}

fn now() -> chrono::DateTime<chrono::FixedOffset> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    chrono::DateTime::from_timestamp(since.as_secs() as i64, since.subsec_nanos())
        .unwrap_or_default()
        .fixed_offset()
}

/// Registers the devices every interval, and feeds their health to the
/// device plugin's ListAndWatch.
async fn registration(
    agent: Arc<Agent>,
    client: kube::Client,
    devices: tokio::sync::watch::Sender<Vec<device_plugin::api::Device>>,
) {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let slices: kube::Api<kube::api::DynamicObject> =
        kube::Api::all_with(client, &hami_node::resource_slice::resource());
    // The Node's UID owns the ResourceSlice; it does not change, so it is
    // read once (retried until the read works).
    let mut node_uid: Option<String> = None;
    loop {
        match agent.source.discover() {
            Ok(inv) => {
                let infos = device_infos(&inv, &agent.config);
                if agent.dra && node_uid.is_none() {
                    node_uid = nodes
                        .get(&agent.node)
                        .await
                        .ok()
                        .and_then(|n| n.metadata.uid);
                }
                if let (true, Some(uid)) = (agent.dra, &node_uid) {
                    match hami_node::resource_slice::publish(&slices, &agent.node, uid, &infos)
                        .await
                    {
                        Ok(true) => tracing::info!("ResourceSlice updated"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!("publishing the ResourceSlice: {e}"),
                    }
                }
                let plugin_devices: Vec<PluginDevice> = infos
                    .iter()
                    .map(|i| PluginDevice {
                        uuid: i.id.clone(),
                        numa: i64::from(i.numa),
                        healthy: i.health,
                    })
                    .collect();
                devices.send_replace(replicas(&plugin_devices, agent.config.split_count));
                let scores = agent.source.link_scores(&infos);
                match register_once(
                    &nodes,
                    &agent.node,
                    &infos,
                    scores.as_ref(),
                    &agent.config,
                    now(),
                )
                .await
                {
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

/// Every interval: removes deleted pods' allocations, and deletes the pods
/// of this node that run without the quota kubelet's Allocate would have
/// given them ([`hami_node::quota_guard`]).
async fn cleanup(writer: Arc<SpecWriter>, client: kube::Client, node: String, interval: Duration) {
    let lookup = hami_node::cleanup::KubePodLookup(client.clone());
    let stopper = hami_node::quota_guard::KubeStopper(client.clone());
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(client);
    let on_node = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
    loop {
        for name in hami_node::cleanup::sweep(&writer, &lookup).await {
            tracing::info!(allocation = %name, "removed a deleted pod's spec and state");
        }
        match pods.list(&on_node).await {
            Ok(list) => {
                let allocated = |pending: &hami_node::device_plugin::PendingPod| {
                    !writer.allocated_slots(pending).is_empty()
                };
                hami_node::quota_guard::enforce(&list.items, allocated, &stopper).await;
            }
            Err(e) => tracing::warn!("listing this node's pods for the quota guard: {e}"),
        }
        tokio::time::sleep(interval).await;
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
                        let nvml = tokio::task::spawn_blocking({
                            let agent = agent.clone();
                            move || agent.source.nvml_readings()
                        })
                        .await
                        .unwrap_or_default();
                        metrics::page(&report, &nvml.memory_used, &nvml.samples, &agent.node)
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
    // Feature unification can give rustls both ring and aws-lc-rs (a test
    // build of the workspace does), and then it picks none and the kube
    // client panics: name the provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Discover {
            source,
            device_split_count,
        } => {
            let config = RegisterConfig {
                split_count: device_split_count,
                dev_root: source.dev.clone(),
                ..RegisterConfig::default()
            };
            let inv = source.discover().map_err(anyhow::Error::msg)?;
            let infos = device_infos(&inv, &config);
            let scores = source.link_scores(&infos);
            let annotations = hami_node::register::reconcile(
                &Default::default(),
                &infos,
                scores.as_ref(),
                &config,
                now(),
            );
            // NVML samples are shares since this process's previous call:
            // take a baseline, then the share over the next half second.
            let _ = source.nvml_readings();
            std::thread::sleep(Duration::from_millis(500));
            let nvml = source.nvml_readings();
            let used: std::collections::BTreeMap<String, u64> = nvml
                .memory_used
                .into_iter()
                .map(|(_, uuid, u)| (uuid, u))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "annotations": annotations,
                    "memoryUsedBytes": used,
                    "processUtilization": nvml.samples,
                }))?
            );
            Ok(())
        }
        Command::NpuArbiter { region_dir } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            let _arbiter =
                hami_node::npu_arbiter::start(&region_dir).context("starting the NPU arbiter")?;
            loop {
                std::thread::park();
            }
        }
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
            source,
            device_split_count,
            device_memory_scaling,
            device_core_scaling,
            hami_vnpu_core,
            resource_name,
            scheduler_names,
            decision_key_file,
            cdi,
            cdi_dir,
            library,
            device_plugin_path,
            dra,
            dra_plugin_path,
            plugins_registry_path,
            region_dir,
            npu_arbiter,
            metrics_bind_address,
            register_interval,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            // Held for the process's life. On an Ascend node a share nobody
            // arbitrates is a share not enforced, so failing to serve it stops
            // the agent.
            let _arbiter = if npu_arbiter.unwrap_or(source.vendor == "ascend") {
                Some(
                    hami_node::npu_arbiter::start(&region_dir)
                        .context("starting the NPU arbiter")?,
                )
            } else {
                None
            };
            let agent = Arc::new(Agent {
                node: node_name,
                dra,
                resource: resource_name,
                cdi,
                cdi_dir,
                library,
                device_plugin_path,
                config: RegisterConfig {
                    split_count: device_split_count,
                    memory_scaling: device_memory_scaling,
                    core_scaling: device_core_scaling,
                    vnpu_core: hami_vnpu_core,
                    dev_root: source.dev.clone(),
                    ..RegisterConfig::default()
                },
                source,
                region_dir,
                interval: Duration::from_secs(register_interval.max(1)),
            });
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(async move {
                    let client = kube::Client::try_default()
                        .await
                        .context("connecting to the API server (kubeconfig or service account)")?;
                    let inventory = agent
                        .source
                        .discover()
                        .map_err(anyhow::Error::msg)
                        .context("device discovery")?;
                    let client_for_dra = client.clone();
                    // One writer: device plugin and DRA specs share the CDI
                    // directory and the state directory.
                    let writer = Arc::new(SpecWriter {
                        inventory,
                        layout: hami_cdi::builder::Layout {
                            kind: hami_cdi::builder::DEFAULT_KIND.into(),
                            library: agent.library.clone(),
                            state_dir: agent.region_dir.clone(),
                            hook: None,
                        },
                        store: hami_cdi::store::SpecStore::new(&agent.cdi_dir),
                    });
                    let (devices, devices_rx) = tokio::sync::watch::channel(Vec::new());
                    let plugin = Arc::new(Plugin {
                        devices: devices_rx,
                        pods: Arc::new(KubePods {
                            pods: kube::Api::all(client.clone()),
                            client: client.clone(),
                            node: agent.node.clone(),
                            trust: hami_node::pod_source::Trust {
                                resource: agent.resource.clone(),
                                scheduler_names,
                                decision_key: None,
                            },
                            decision_key_file,
                        }),
                        writer: writer.clone(),
                        cdi: agent.cdi,
                        taken: std::sync::Mutex::new(Default::default()),
                    });
                    tokio::spawn(registration(agent.clone(), client, devices));
                    let endpoint = format!("hami-{}.sock", agent.source.vendor);
                    tokio::spawn(kubelet::run(
                        plugin,
                        agent.device_plugin_path.clone(),
                        endpoint,
                        agent.resource.clone(),
                        Duration::from_secs(1),
                    ));
                    tokio::spawn(cleanup(
                        writer.clone(),
                        client_for_dra.clone(),
                        agent.node.clone(),
                        agent.interval,
                    ));
                    let _dra = if agent.dra {
                        let driver = hami_node::dra::DraDriver::new(
                            Arc::new(hami_node::dra::KubeClaims(client_for_dra.clone())),
                            writer,
                            agent.region_dir.join("dra-checkpoint.json"),
                        )
                        .map_err(anyhow::Error::msg)?;
                        Some(hami_node::dra::serve(
                            Arc::new(driver),
                            &dra_plugin_path,
                            &plugins_registry_path,
                        )?)
                    } else {
                        None
                    };
                    serve_metrics(agent, metrics_bind_address).await
                })
        }
    }
}
