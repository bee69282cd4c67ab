//! The mock vendor end to end through the node agent: hami-node's device
//! plugin answers a real gRPC Allocate for a pod the scheduler decided on,
//! hami-cdi writes the spec into /var/run/cdi, real podman runs the fake
//! GPU's cuda_app with the CDI device the response names, and the container
//! sees exactly its quota; the agent's monitor then reads the container's
//! region under the pod's name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use hami_api::{BindPhase, ContainerDevice, PodAllocation};
use hami_cdi::builder::{Layout, DEFAULT_KIND};
use hami_cdi::discovery::{Discovery, MockDiscovery};
use hami_cdi::store::SpecStore;
use hami_node::device_plugin::api::device_plugin_client::DevicePluginClient;
use hami_node::device_plugin::api::{AllocateRequest, ContainerAllocateRequest};
use hami_node::device_plugin::{PendingPod, Plugin, PodSource, SpecWriter};
use hami_node::{kubelet, monitor};
use hami_testkit::fake_gpu::FakeGpu;
use hami_testkit::need::require;
use hami_testkit::podman::Podman;
use hami_testkit::rootfs::Rootfs;

const MIB: u64 = 1 << 20;
const UUID: &str = "GPU-fa4e0000-0000-4000-8000-00000000a9e7";

struct OnePod {
    pod: PendingPod,
    phases: Mutex<Vec<BindPhase>>,
}

struct Source(Arc<OnePod>);

impl PodSource for Source {
    fn pending(&self) -> BoxFuture<'static, Result<Vec<PendingPod>, String>> {
        let pods = vec![self.0.pod.clone()];
        Box::pin(async move { Ok(pods) })
    }
    fn set_phase(
        &self,
        _: &str,
        _: &str,
        phase: BindPhase,
    ) -> BoxFuture<'static, Result<(), String>> {
        self.0.phases.lock().unwrap().push(phase);
        Box::pin(async { Ok(()) })
    }
}

fn field(out: &str, prefix: &str, key: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {out}"));
    let at = line.find(&format!("{key}=")).unwrap() + key.len() + 1;
    line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn an_allocate_runs_under_podman_with_its_quota() {
    let needs: Vec<_> = hami_testkit::podman::NEEDS
        .iter()
        .chain(hami_testkit::fake_gpu::NEEDS.iter())
        .copied()
        .collect();
    if !require("an_allocate_runs_under_podman_with_its_quota", &needs) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let library = hami_testkit::test_library();
    let gpu = FakeGpu::build(&work.path().join("fake-gpu")).unwrap();
    let rootfs = Rootfs::busybox(&work.path().join("rootfs")).unwrap();
    gpu.install(&rootfs).unwrap();
    rootfs.add_shared_libraries_of(&library).unwrap();
    let fake_state = work.path().join("fake-gpu-state");
    std::fs::create_dir_all(&fake_state).unwrap();
    let inventory_path = work.path().join("inventory.json");
    std::fs::write(
        &inventory_path,
        serde_json::json!({
            "devices": [{"index": 0, "uuid": UUID, "memoryMiB": 8192, "model": "Fake H100"}],
            "env": {"FAKE_CUDA_STATE": "/run/hami/fake-gpu/state", "FAKE_CUDA_TOTAL_MEMORY": "8g"},
            "mounts": [{"hostPath": fake_state, "containerPath": "/run/hami/fake-gpu"}],
        })
        .to_string(),
    )
    .unwrap();
    let inventory = MockDiscovery {
        path: inventory_path,
    }
    .inventory()
    .unwrap();
    let state = work.path().join("state");
    let writer = Arc::new(SpecWriter {
        inventory,
        layout: Layout {
            kind: DEFAULT_KIND.into(),
            library: library.clone(),
            state_dir: state.clone(),
            hook: None,
        },
        store: SpecStore::new(hami_e2e::SPEC_DIR),
    });
    // A name unique to this run: the spec goes to the shared /var/run/cdi.
    let pod_name = format!("agent-e2e-{}", std::process::id());
    let pod = Arc::new(OnePod {
        pod: PendingPod {
            namespace: "team".into(),
            name: pod_name.clone(),
            uid: "uid-e2e".into(),
            bind_time: 1,
            allocation: PodAllocation::new(vec![vec![ContainerDevice {
                uuid: UUID.into(),
                device_type: "NVIDIA-Fake H100".into(),
                mem_mib: 1000,
                cores: 0,
            }]]),
            containers: vec!["main".into()],
        },
        phases: Mutex::new(Vec::new()),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sockets = work.path().join("device-plugins");
    std::fs::create_dir_all(&sockets).unwrap();
    let response = runtime.block_on(async {
        let (_tx, rx) = tokio::sync::watch::channel(Vec::new());
        let plugin = Arc::new(Plugin {
            devices: rx,
            pods: Arc::new(Source(pod.clone())),
            writer: writer.clone(),
            cdi: true,
            taken: Mutex::new(HashMap::new()),
        });
        let _server = kubelet::serve(plugin, &sockets, "hami-mock.sock").unwrap();
        let channel = kubelet::connect(&sockets.join("hami-mock.sock"))
            .await
            .unwrap();
        DevicePluginClient::new(channel)
            .allocate(AllocateRequest {
                container_requests: vec![ContainerAllocateRequest {
                    devices_ids: vec![format!("{UUID}::3")],
                }],
            })
            .await
            .unwrap()
            .into_inner()
    });
    let allocation = format!("team_{pod_name}_main");
    let device = response.container_responses[0].cdi_devices[0].name.clone();
    assert_eq!(device, format!("hami.io/vgpu={allocation}"));
    assert_eq!(*pod.phases.lock().unwrap(), [BindPhase::Success]);

    let podman = Podman::new().unwrap();
    let rootfs_arg = rootfs.path().to_string_lossy().into_owned();
    let out = podman.run(&[
        "--device",
        &device,
        "--rootfs",
        &rootfs_arg,
        "/usr/bin/cuda_app",
        "info",
        "alloc-until-oom",
        "104857600",
    ]);
    let report = monitor::scan(&state);
    // The image or pod environment tries to lift the quota: CDI pins
    // CUDA_DISABLE_CONTROL and the mounted limits file outranks the env.
    let lifted_env = podman.run(&[
        "--device",
        &device,
        "--env",
        "CUDA_DISABLE_CONTROL=true",
        "--env",
        "CUDA_DEVICE_MEMORY_LIMIT_0=8g",
        "--rootfs",
        &rootfs_arg,
        "/usr/bin/cuda_app",
        "alloc-until-oom",
        "104857600",
    ]);
    // The container rewrites its region (0666, mounted writable) with a
    // larger limit and a valid checksum: hami-core fails closed.
    let region = state.join(&allocation).join("region").join("vgpu.cache");
    std::fs::remove_file(&region).unwrap();
    let mut lifted = hami_region::layout::Limits::unlimited();
    lifted.memory_bytes[0] = 8 << 30;
    drop(hami_region::Region::open_or_create(&region, &lifted).unwrap());
    let lifted_region = podman.run(&[
        "--device",
        &device,
        "--rootfs",
        &rootfs_arg,
        "/usr/bin/cuda_app",
        "alloc-until-oom",
        "104857600",
    ]);
    let _ = writer.remove(&allocation);
    drop(podman);
    let lifted_env = String::from_utf8_lossy(&lifted_env.unwrap().stdout).into_owned();
    assert_eq!(
        field(&lifted_env, "alloc-until-oom", "count"),
        10,
        "{lifted_env}"
    );
    let lifted_region = String::from_utf8_lossy(&lifted_region.unwrap().stdout).into_owned();
    assert_eq!(
        field(&lifted_region, "alloc-until-oom", "count"),
        0,
        "a tampered region must refuse everything: {lifted_region}"
    );
    let out = out.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(field(&stdout, "info", "total"), 1000 * MIB, "{stdout}");
    assert_eq!(field(&stdout, "alloc-until-oom", "count"), 10, "{stdout}");
    assert_eq!(
        field(&stdout, "alloc-until-oom", "rc"),
        2,
        "CUDA_ERROR_OUT_OF_MEMORY: {stdout}"
    );
    let seen = report
        .containers
        .iter()
        .find(|c| c.allocation == allocation)
        .expect("the monitor sees the container");
    assert_eq!(
        (seen.owner.namespace.as_str(), seen.owner.pod.as_str()),
        ("team", pod_name.as_str())
    );
    assert_eq!(seen.snapshot.limits.memory_bytes[0], 1000 * MIB);
    // One device in the metrics, though the region mirrors the SM share to
    // every index (the owner lists one device).
    let text = hami_node::metrics::render(&report, "n");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("hami_vgpu_memory_used_bytes{") && l.contains(&allocation))
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0].contains(&format!("deviceuuid=\"{UUID}\"")),
        "{rows:?}"
    );
}
