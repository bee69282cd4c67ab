//! The device plugin over real gRPC on unix sockets in a temp directory: a
//! fake kubelet's Registration service receives the registration, a tonic
//! client generated from the same protos calls ListAndWatch and Allocate,
//! and the kubelet "restarts" (its socket is recreated) to check that the
//! plugin registers again.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use hami_api::{BindPhase, ContainerDevice, PodAllocation};
use hami_node::device_plugin::api::device_plugin_client::DevicePluginClient;
use hami_node::device_plugin::api::device_plugin_server::DevicePluginServer;
use hami_node::device_plugin::api::registration_server::{Registration, RegistrationServer};
use hami_node::device_plugin::api::{
    AllocateRequest, ContainerAllocateRequest, Empty, RegisterRequest,
};
use hami_node::device_plugin::{replicas, PendingPod, Plugin, PluginDevice, PodSource};
use hami_node::kubelet::{self, KUBELET_SOCKET};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnixListenerStream;

struct FakeKubelet {
    seen: mpsc::UnboundedSender<RegisterRequest>,
}

#[tonic::async_trait]
impl Registration for FakeKubelet {
    async fn register(
        &self,
        request: tonic::Request<RegisterRequest>,
    ) -> Result<tonic::Response<Empty>, tonic::Status> {
        let _ = self.seen.send(request.into_inner());
        Ok(tonic::Response::new(Empty {}))
    }
}

fn start_kubelet(
    dir: &std::path::Path,
    seen: mpsc::UnboundedSender<RegisterRequest>,
) -> tokio::task::JoinHandle<()> {
    let path = dir.join(KUBELET_SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(FakeKubelet { seen }))
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await
            .unwrap();
    })
}

#[derive(Default)]
struct PodState {
    pending: Mutex<Vec<PendingPod>>,
    phases: Mutex<Vec<(String, BindPhase)>>,
}

/// The pods the API server would list, and the phases written back.
#[derive(Clone, Default)]
struct Pods(Arc<PodState>);

impl std::ops::Deref for Pods {
    type Target = PodState;
    fn deref(&self) -> &PodState {
        &self.0
    }
}

impl PodSource for Pods {
    fn pending(&self) -> BoxFuture<'static, Result<Vec<PendingPod>, String>> {
        let pods = self.pending.lock().unwrap().clone();
        Box::pin(async move { Ok(pods) })
    }
    fn set_phase(
        &self,
        namespace: &str,
        name: &str,
        phase: BindPhase,
    ) -> BoxFuture<'static, Result<(), String>> {
        self.phases
            .lock()
            .unwrap()
            .push((format!("{namespace}/{name}"), phase));
        Box::pin(async { Ok(()) })
    }
}

fn dev(uuid: &str, mib: u32) -> ContainerDevice {
    ContainerDevice {
        uuid: uuid.into(),
        device_type: "NVIDIA-Fake".into(),
        mem_mib: mib,
        cores: 30,
    }
}

fn pod(
    name: &str,
    bind_time: i64,
    slots: Vec<Vec<ContainerDevice>>,
    containers: &[&str],
) -> PendingPod {
    PendingPod {
        namespace: "default".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        bind_time,
        allocation: PodAllocation::new(slots),
        containers: containers.iter().map(|c| (*c).to_owned()).collect(),
    }
}

#[test]
fn register_list_allocate_and_register_again_after_a_kubelet_restart() {
    common::runtime().block_on(async {
        let work = tempfile::tempdir().unwrap();
        let plugins = work.path().join("device-plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let (seen, mut registrations) = mpsc::unbounded_channel();
        let kubelet_task = start_kubelet(&plugins, seen.clone());

        let cdi = work.path().join("cdi");
        let writer = common::mock_writer(work.path());
        let devices: Vec<PluginDevice> = (0..2)
            .map(|i| PluginDevice {
                uuid: format!("GPU-fake-{i}"),
                numa: 0,
                healthy: true,
            })
            .collect();
        let (_devices_tx, devices_rx) = tokio::sync::watch::channel(replicas(&devices, 4));
        let pods = Pods::default();
        // Two pending pods (an expired lock let both through): "late"
        // asks 1 device in one container; "early" has two containers,
        // 2 devices then 1, and an empty sidecar slot between.
        *pods.pending.lock().unwrap() = vec![
            pod("late", 200, vec![vec![dev("GPU-fake-1", 500)]], &["c"]),
            pod(
                "early",
                100,
                vec![
                    vec![dev("GPU-fake-0", 1000), dev("GPU-fake-1", 1000)],
                    vec![],
                    vec![dev("GPU-fake-0", 2000)],
                ],
                &["train", "sidecar", "eval"],
            ),
        ];
        let plugin = Arc::new(Plugin {
            devices: devices_rx,
            pods: Arc::new(pods.clone()),
            writer,
            cdi: true,
            taken: Mutex::new(HashMap::new()),
        });
        let agent = tokio::spawn(kubelet::run(
            plugin,
            plugins.clone(),
            "hami-nvidia.sock".into(),
            "nvidia.com/gpu".into(),
            Duration::from_millis(50),
        ));

        let first = tokio::time::timeout(Duration::from_secs(10), registrations.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                first.version.as_str(),
                first.endpoint.as_str(),
                first.resource_name.as_str()
            ),
            ("v1beta1", "hami-nvidia.sock", "nvidia.com/gpu")
        );

        let channel = kubelet::connect(&plugins.join("hami-nvidia.sock"))
            .await
            .unwrap();
        let mut client = DevicePluginClient::new(channel);
        let mut stream = client.list_and_watch(Empty {}).await.unwrap().into_inner();
        let listed = stream.next().await.unwrap().unwrap();
        assert_eq!(listed.devices.len(), 8, "2 devices x split 4");
        assert_eq!(listed.devices[0].id, "GPU-fake-0::0");
        assert!(listed.devices.iter().all(|d| d.health == "Healthy"));

        let allocate = |n: usize| AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: (0..n)
                    .map(|i| format!("whatever-kubelet-picked-{i}"))
                    .collect(),
            }],
        };
        // 1 device: "early" goes first (bind-time) but its next slot wants 2,
        // so this is "late"'s container.
        let r = client.allocate(allocate(1)).await.unwrap().into_inner();
        let c = &r.container_responses[0];
        assert_eq!(c.cdi_devices[0].name, "hami.io/vgpu=default_late_c");
        assert_eq!(
            c.envs.get("CUDA_DEVICE_MEMORY_LIMIT_0").map(String::as_str),
            Some("500m"),
            "{:?}",
            c.envs
        );
        assert!(
            cdi.join("hami.io-vgpu_default_late_c.json").exists()
                || std::fs::read_dir(&cdi).unwrap().count() == 1
        );
        // Then "early": 2 devices for "train", 1 for "eval" (the sidecar is skipped).
        let r = client.allocate(allocate(2)).await.unwrap().into_inner();
        assert_eq!(
            r.container_responses[0].cdi_devices[0].name,
            "hami.io/vgpu=default_early_train"
        );
        let r = client.allocate(allocate(1)).await.unwrap().into_inner();
        assert_eq!(
            r.container_responses[0].cdi_devices[0].name,
            "hami.io/vgpu=default_early_eval"
        );
        // Nothing left to match: a clear error, never another pod's devices.
        let e = client.allocate(allocate(1)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            *pods.phases.lock().unwrap(),
            [
                ("default/late".to_owned(), BindPhase::Success),
                ("default/early".to_owned(), BindPhase::Success)
            ]
        );
        let mut specs: Vec<String> = std::fs::read_dir(&cdi)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        specs.sort();
        assert_eq!(
            specs,
            [
                "hami.io-vgpu_default_early_eval.json",
                "hami.io-vgpu_default_early_train.json",
                "hami.io-vgpu_default_late_c.json"
            ]
        );
        // The monitor can tell whose region this is.
        let owner =
            std::fs::read_to_string(work.path().join("state/default_early_train/owner.json"))
                .unwrap();
        assert!(owner.contains("\"GPU-fake-1\""), "{owner}");

        // kubelet restarts: a new socket, and the plugin's socket wiped.
        kubelet_task.abort();
        std::fs::remove_file(plugins.join(KUBELET_SOCKET)).unwrap();
        std::fs::remove_file(plugins.join("hami-nvidia.sock")).unwrap();
        let _again = start_kubelet(&plugins, seen);
        let second = tokio::time::timeout(Duration::from_secs(10), registrations.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.resource_name, "nvidia.com/gpu");
        assert!(
            plugins.join("hami-nvidia.sock").exists(),
            "the plugin serves again"
        );
        agent.abort();
    });
}

/// An agent restarted after the first container of a pod was allocated
/// must not hand that slot out again; a pod re-created under the same name
/// (a new UID) is a new pod.
#[test]
fn a_restarted_plugin_remembers_what_it_allocated() {
    common::runtime().block_on(async {
        let work = tempfile::tempdir().unwrap();
        let sockets = work.path().join("sockets");
        std::fs::create_dir_all(&sockets).unwrap();
        let writer = common::mock_writer(work.path());
        let pods = Pods::default();
        *pods.pending.lock().unwrap() = vec![pod(
            "train",
            100,
            vec![vec![dev("GPU-fake-0", 1000)], vec![dev("GPU-fake-1", 1000)]],
            &["a", "b"],
        )];
        let (_tx, rx) = tokio::sync::watch::channel(Vec::new());
        let serve = |name: &str| {
            let plugin = Arc::new(Plugin {
                devices: rx.clone(),
                pods: Arc::new(pods.clone()),
                writer: writer.clone(),
                cdi: true,
                taken: Mutex::new(HashMap::new()),
            });
            kubelet::serve(plugin, &sockets, name).unwrap()
        };
        let one = AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec!["x".into()],
            }],
        };
        let _first = serve("first.sock");
        let mut c =
            DevicePluginClient::new(kubelet::connect(&sockets.join("first.sock")).await.unwrap());
        let r = c.allocate(one.clone()).await.unwrap().into_inner();
        assert_eq!(
            r.container_responses[0].cdi_devices[0].name,
            "hami.io/vgpu=default_train_a"
        );
        // Restart: a fresh plugin with nothing in memory.
        let _second = serve("second.sock");
        let mut c = DevicePluginClient::new(
            kubelet::connect(&sockets.join("second.sock"))
                .await
                .unwrap(),
        );
        let r = c.allocate(one.clone()).await.unwrap().into_inner();
        assert_eq!(
            r.container_responses[0].cdi_devices[0].name, "hami.io/vgpu=default_train_b",
            "slot a was done before the restart"
        );
        assert_eq!(
            *pods.phases.lock().unwrap(),
            [("default/train".to_owned(), BindPhase::Success)]
        );
        // The pod is deleted and re-created with the same name.
        pods.pending.lock().unwrap()[0].uid = "uid-train-2".into();
        let _third = serve("third.sock");
        let mut c =
            DevicePluginClient::new(kubelet::connect(&sockets.join("third.sock")).await.unwrap());
        let r = c.allocate(one).await.unwrap().into_inner();
        assert_eq!(
            r.container_responses[0].cdi_devices[0].name,
            "hami.io/vgpu=default_train_a"
        );
    });
}

/// What kubelet before 1.26 sends: grpc-go dialing the bare socket path puts
/// that path in `:authority`. Returns the response's header fields (headers
/// and trailers), or the RST_STREAM error code if the server reset the call.
async fn call_as_old_kubelet(socket: &std::path::Path) -> Result<Vec<(String, String)>, u32> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    let authority = socket.to_str().unwrap().as_bytes();
    let mut encoder = loona_hpack::Encoder::new();
    let block = encoder.encode([
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", b"/v1beta1.DevicePlugin/GetDevicePluginOptions"),
        (b":authority", authority),
        (b"content-type", b"application/grpc"),
        (b"user-agent", b"grpc-go/1.27.1"),
        (b"te", b"trailers"),
    ]);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, b""));
    out.extend(frame(0x1, 0x4, 1, &block));
    out.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]));
    let mut conn = tokio::net::UnixStream::connect(socket).await.unwrap();
    conn.write_all(&out).await.unwrap();
    let mut decoder = loona_hpack::Decoder::new();
    let mut fields = Vec::new();
    loop {
        let mut header = [0u8; 9];
        conn.read_exact(&mut header).await.unwrap();
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).await.unwrap();
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
        match (header[3], stream) {
            (0x4, 0) if header[4] & 0x1 == 0 => {
                conn.write_all(&frame(0x4, 0x1, 0, b"")).await.unwrap()
            }
            (0x3, 1) => return Err(u32::from_be_bytes(payload[..4].try_into().unwrap())),
            (0x1, 1) => {
                for (n, v) in decoder.decode(&payload).unwrap() {
                    fields.push((String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()));
                }
                if header[4] & 0x1 != 0 {
                    return Ok(fields);
                }
            }
            _ => {}
        }
    }
}

#[test]
fn a_kubelet_before_1_26_dialing_the_bare_socket_path_is_served() {
    common::runtime().block_on(async {
        let work = tempfile::tempdir().unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(Vec::new());
        let plugin = Arc::new(Plugin {
            devices: rx,
            pods: Arc::new(Pods::default()),
            writer: common::mock_writer(work.path()),
            cdi: true,
            taken: Mutex::new(HashMap::new()),
        });
        // Plain tonic on the socket: h2 resets the call (PROTOCOL_ERROR = 1),
        // which is what kubelet 1.20 got before the relay.
        let bare = work.path().join("bare.sock");
        let listener = tokio::net::UnixListener::bind(&bare).unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(DevicePluginServer::from_arc(plugin.clone()))
            .serve_with_incoming(UnixListenerStream::new(listener));
        let bare_task = tokio::spawn(server);
        assert_eq!(call_as_old_kubelet(&bare).await, Err(1));
        bare_task.abort();

        let _served = kubelet::serve(plugin, work.path(), "hami-nvidia.sock").unwrap();
        let fields = call_as_old_kubelet(&work.path().join("hami-nvidia.sock"))
            .await
            .expect("the relay lets the call through");
        assert!(
            fields.contains(&(":status".into(), "200".into())),
            "{fields:?}"
        );
        assert!(
            fields.contains(&("grpc-status".into(), "0".into())),
            "{fields:?}"
        );
    });
}
