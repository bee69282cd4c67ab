//! Serving the device plugin on a unix socket in kubelet's device-plugin
//! directory and registering it with kubelet; registering again whenever
//! kubelet restarts (it recreates `kubelet.sock` and removes the plugins'
//! sockets), as kubelet expects of every device plugin.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::{Endpoint, Uri};

use crate::device_plugin::api::device_plugin_server::DevicePluginServer;
use crate::device_plugin::api::registration_client::RegistrationClient;
use crate::device_plugin::api::{DevicePluginOptions, RegisterRequest};
use crate::device_plugin::{Plugin, API_VERSION};

pub const KUBELET_SOCKET: &str = "kubelet.sock";

/// A gRPC channel over a unix socket.
pub async fn connect(socket: &Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let socket = socket.to_owned();
    Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
}

pub async fn register(dir: &Path, endpoint: &str, resource: &str) -> Result<(), String> {
    let kubelet = dir.join(KUBELET_SOCKET);
    let channel = connect(&kubelet)
        .await
        .map_err(|e| format!("connecting to {}: {e}", kubelet.display()))?;
    RegistrationClient::new(channel)
        .register(RegisterRequest {
            version: API_VERSION.into(),
            endpoint: endpoint.into(),
            resource_name: resource.into(),
            options: Some(DevicePluginOptions::default()),
        })
        .await
        .map_err(|e| format!("kubelet refused the registration of {resource}: {e}"))?;
    Ok(())
}

/// Serves `plugin` on `<dir>/<endpoint>` (replacing a stale socket), through
/// the relay that lets kubelet before 1.26 in ([`crate::grpc_authority`]).
pub fn serve(
    plugin: Arc<Plugin>,
    dir: &Path,
    endpoint: &str,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let path = dir.join(endpoint);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    Ok(tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(DevicePluginServer::from_arc(plugin))
            .serve_with_incoming(crate::grpc_authority::incoming(listener))
            .await;
        if let Err(e) = result {
            tracing::warn!("device plugin server: {e}");
        }
    }))
}

fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Serves and registers `plugin` for `resource`, and does both again when
/// kubelet comes back with a new socket or our socket disappears. Runs
/// until the task is dropped.
pub async fn run(
    plugin: Arc<Plugin>,
    dir: PathBuf,
    endpoint: String,
    resource: String,
    poll: Duration,
) {
    let kubelet = dir.join(KUBELET_SOCKET);
    let ours = dir.join(&endpoint);
    let mut registered_with: Option<u64> = None;
    let mut server: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let current = inode(&kubelet);
        let socket_gone = !ours.exists();
        if current.is_some() && (current != registered_with || socket_gone) {
            if let Some(s) = server.take() {
                s.abort();
            }
            match serve(plugin.clone(), &dir, &endpoint) {
                Ok(s) => {
                    server = Some(s);
                    match register(&dir, &endpoint, &resource).await {
                        Ok(()) => {
                            tracing::info!(%resource, "registered with kubelet");
                            registered_with = current;
                        }
                        Err(e) => tracing::warn!("{e}; retrying"),
                    }
                }
                Err(e) => tracing::warn!("serving {}: {e}", ours.display()),
            }
        }
        tokio::time::sleep(poll).await;
    }
}
