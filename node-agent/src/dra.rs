//! The DRA kubelet plugin for the driver `hami-core-gpu.project-hami.io`
//! (dra v1 and v1beta1 services, plugin registration v1).
//!
//! NodePrepareResources reads the claim's allocation from the API server
//! (the devices of this driver, with the `memory` and `cores` capacity the
//! scheduler consumed on each), writes the claim's CDI spec and state with
//! hami-cdi, and returns the CDI device IDs. It is idempotent: a prepared
//! claim is answered from the checkpoint, which is written to disk after
//! every change, so a restarted agent answers the same without asking the
//! API server. NodeUnprepareResources removes the spec, state and entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use hami_api::Quantity;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::device_plugin::{DeviceQuota, SpecWriter};
use crate::monitor::Owner;

pub mod v1 {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
}
pub mod v1beta1 {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");
}
pub mod registration {
    tonic::include_proto!("pluginregistration");
}

/// The driver every converted claim's DeviceClass selects.
pub const DRIVER: &str = "hami-core-gpu.project-hami.io";
/// The gRPC services kubelet may call, as plugin registration names them.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["v1.DRAPlugin", "v1beta1.DRAPlugin"];

/// A device's name in the ResourceSlice: `gpu-<index>`.
pub fn device_name(index: u32) -> String {
    format!("gpu-{index}")
}

/// Reads ResourceClaims (resource.k8s.io/v1) as JSON.
pub trait ClaimSource: Send + Sync + 'static {
    fn get(&self, namespace: &str, name: &str) -> BoxFuture<'static, Result<Value, String>>;
}

/// ResourceClaims from the API server.
pub struct KubeClaims(pub kube::Client);

impl ClaimSource for KubeClaims {
    fn get(&self, namespace: &str, name: &str) -> BoxFuture<'static, Result<Value, String>> {
        let ar = kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("resource.k8s.io", "v1", "ResourceClaim"),
            "resourceclaims",
        );
        let api: kube::Api<kube::api::DynamicObject> =
            kube::Api::namespaced_with(self.0.clone(), namespace, &ar);
        let name = name.to_owned();
        Box::pin(async move {
            let claim = api
                .get(&name)
                .await
                .map_err(|e| format!("reading claim {name}: {e}"))?;
            serde_json::to_value(&claim).map_err(|e| e.to_string())
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedDevice {
    pub request: String,
    pub pool: String,
    pub device: String,
    pub cdi_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedClaim {
    pub namespace: String,
    pub name: String,
    /// The hami-cdi allocation (spec and state) made for it.
    pub allocation: String,
    pub devices: Vec<PreparedDevice>,
}

/// Prepared claims by UID, as kept on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub claims: BTreeMap<String, PreparedClaim>,
}

impl Checkpoint {
    /// A missing file is an empty checkpoint; an unreadable one is an error
    /// (starting empty would forget prepared claims and leak their state).
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("checkpoint {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("checkpoint {}: {e}", path.display())),
        }
    }

    /// Written to a temporary file and renamed: a crash leaves the old or
    /// the new checkpoint, never half of one.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

pub struct DraDriver {
    pub claims: Arc<dyn ClaimSource>,
    pub writer: Arc<SpecWriter>,
    pub checkpoint_path: PathBuf,
    pub state: tokio::sync::Mutex<Checkpoint>,
}

fn quantity(v: &Value) -> Result<u64, String> {
    match v {
        Value::Null => Ok(0),
        Value::String(s) => Quantity::parse(s)
            .and_then(|q| q.value_ceil())
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|e| format!("capacity {s:?}: {e}")),
        other => Err(format!("capacity {other} is not a quantity")),
    }
}

impl DraDriver {
    pub fn new(
        claims: Arc<dyn ClaimSource>,
        writer: Arc<SpecWriter>,
        checkpoint_path: PathBuf,
    ) -> Result<Self, String> {
        let state = Checkpoint::load(&checkpoint_path)?;
        Ok(Self {
            claims,
            writer,
            checkpoint_path,
            state: tokio::sync::Mutex::new(state),
        })
    }

    pub async fn prepare(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<Vec<PreparedDevice>, String> {
        let mut state = self.state.lock().await;
        if let Some(done) = state.claims.get(uid) {
            return Ok(done.devices.clone());
        }
        let claim = self.claims.get(namespace, name).await?;
        if claim["metadata"]["uid"].as_str() != Some(uid) {
            return Err(format!("claim {namespace}/{name} is not {uid} any more"));
        }
        let results: Vec<&Value> = claim["status"]["allocation"]["devices"]["results"]
            .as_array()
            .map(|r| r.iter().filter(|r| r["driver"] == DRIVER).collect())
            .unwrap_or_default();
        let mut quotas = Vec::new();
        let mut devices = Vec::new();
        let allocation = format!("claim-{uid}");
        for r in &results {
            let device = r["device"].as_str().unwrap_or_default();
            let index: u32 = device
                .strip_prefix("gpu-")
                .and_then(|i| i.parse().ok())
                .ok_or_else(|| format!("device {device:?} is not one of this driver's"))?;
            let found = self
                .writer
                .inventory
                .device(index)
                .ok_or_else(|| format!("device {device} is not on this node"))?;
            let consumed = &r["consumedCapacity"];
            quotas.push(DeviceQuota {
                uuid: found.uuid.clone(),
                memory_bytes: quantity(&consumed["memory"])?,
                cores: u32::try_from(quantity(&consumed["cores"])?).unwrap_or(100),
            });
            devices.push(PreparedDevice {
                request: r["request"].as_str().unwrap_or_default().to_owned(),
                pool: r["pool"].as_str().unwrap_or_default().to_owned(),
                device: device.to_owned(),
                cdi_ids: vec![self.writer.cdi_id(&allocation)],
            });
        }
        if !quotas.is_empty() {
            let owner = Owner {
                namespace: namespace.to_owned(),
                pod: String::new(),
                container: name.to_owned(),
                devices: quotas.iter().map(|q| q.uuid.clone()).collect(),
                pod_uid: String::new(),
            };
            self.writer.prepare(&allocation, &quotas, &owner)?;
        }
        state.claims.insert(
            uid.to_owned(),
            PreparedClaim {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                allocation,
                devices: devices.clone(),
            },
        );
        state.save(&self.checkpoint_path)?;
        Ok(devices)
    }

    pub async fn unprepare(&self, uid: &str) -> Result<(), String> {
        let mut state = self.state.lock().await;
        if let Some(claim) = state.claims.get(uid) {
            self.writer.remove(&claim.allocation)?;
            state.claims.remove(uid);
            state.save(&self.checkpoint_path)?;
        }
        Ok(())
    }
}

/// Both API versions share the implementation: the messages are the same.
macro_rules! dra_service {
    ($version:ident) => {
        #[tonic::async_trait]
        impl $version::dra_plugin_server::DraPlugin for Arc<DraDriver> {
            async fn node_prepare_resources(
                &self,
                request: Request<$version::NodePrepareResourcesRequest>,
            ) -> Result<Response<$version::NodePrepareResourcesResponse>, Status> {
                let mut claims = std::collections::HashMap::new();
                for c in request.into_inner().claims {
                    let answer = match self.prepare(&c.namespace, &c.name, &c.uid).await {
                        Ok(devices) => $version::NodePrepareResourceResponse {
                            devices: devices
                                .into_iter()
                                .map(|d| $version::Device {
                                    request_names: vec![d.request],
                                    pool_name: d.pool,
                                    device_name: d.device,
                                    cdi_device_ids: d.cdi_ids,
                                })
                                .collect(),
                            error: String::new(),
                        },
                        Err(error) => $version::NodePrepareResourceResponse {
                            devices: vec![],
                            error,
                        },
                    };
                    claims.insert(c.uid, answer);
                }
                Ok(Response::new($version::NodePrepareResourcesResponse {
                    claims,
                }))
            }

            async fn node_unprepare_resources(
                &self,
                request: Request<$version::NodeUnprepareResourcesRequest>,
            ) -> Result<Response<$version::NodeUnprepareResourcesResponse>, Status> {
                let mut claims = std::collections::HashMap::new();
                for c in request.into_inner().claims {
                    let error = self.unprepare(&c.uid).await.err().unwrap_or_default();
                    claims.insert(c.uid, $version::NodeUnprepareResourceResponse { error });
                }
                Ok(Response::new($version::NodeUnprepareResourcesResponse {
                    claims,
                }))
            }
        }
    };
}

dra_service!(v1);
dra_service!(v1beta1);

/// Answers kubelet's plugin watcher: what this plugin is and where it listens.
pub struct PluginRegistration {
    pub endpoint: PathBuf,
}

#[tonic::async_trait]
impl registration::registration_server::Registration for PluginRegistration {
    async fn get_info(
        &self,
        _: Request<registration::InfoRequest>,
    ) -> Result<Response<registration::PluginInfo>, Status> {
        Ok(Response::new(registration::PluginInfo {
            r#type: "DRAPlugin".into(),
            name: DRIVER.into(),
            endpoint: self.endpoint.display().to_string(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<registration::RegistrationStatus>,
    ) -> Result<Response<registration::RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!("kubelet registered the DRA plugin");
        } else {
            tracing::warn!("kubelet refused the DRA plugin: {}", status.error);
        }
        Ok(Response::new(registration::RegistrationStatusResponse {}))
    }
}

/// Serves the DRA services on `<plugins_dir>/<driver>/dra.sock` and the
/// registration on `<registry_dir>/<driver>-reg.sock`.
pub fn serve(
    driver: Arc<DraDriver>,
    plugins_dir: &Path,
    registry_dir: &Path,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let dir = plugins_dir.join(DRIVER);
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(registry_dir)?;
    let dra_sock = dir.join("dra.sock");
    let reg_sock = registry_dir.join(format!("{DRIVER}-reg.sock"));
    for s in [&dra_sock, &reg_sock] {
        let _ = std::fs::remove_file(s);
    }
    let dra = tokio::net::UnixListener::bind(&dra_sock)?;
    let reg = tokio::net::UnixListener::bind(&reg_sock)?;
    let registration = PluginRegistration { endpoint: dra_sock };
    Ok(tokio::spawn(async move {
        let dra_server = tonic::transport::Server::builder()
            .add_service(v1::dra_plugin_server::DraPluginServer::new(driver.clone()))
            .add_service(v1beta1::dra_plugin_server::DraPluginServer::new(driver))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(dra));
        let reg_server = tonic::transport::Server::builder()
            .add_service(registration::registration_server::RegistrationServer::new(
                registration,
            ))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(reg));
        let (a, b) = tokio::join!(dra_server, reg_server);
        for r in [a, b] {
            if let Err(e) = r {
                tracing::warn!("DRA plugin server: {e}");
            }
        }
    }))
}
