//! The Kubernetes annotation path through containerd's CRI plugin, as kubelet
//! drives it: a private containerd 1.6 whose config was merged by
//! `hami-oci-hook install --runtime containerd` (pod_annotations passthrough
//! and the base runtime spec carrying the hook), an image imported from a
//! busybox rootfs, and CRI calls over the socket (RunPodSandbox with the
//! scheduler's allocation annotation on the pod, CreateContainer,
//! StartContainer). The fake-driver application in the container must be held
//! to the pod's allocation, which only reaches the hook through containerd
//! copying the pod annotation into the container's spec.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hami_testkit::containerd::{Containerd, CriSettings};
use hami_testkit::fake_gpu::FakeGpu;
use hami_testkit::need::{require, Need};
use hami_testkit::rootfs::Rootfs;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, Device, ImageSpec, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

const IMAGE: &str = "hami.local/busybox-fakegpu:test";
const GPU_UUID: &str = "GPU-c41d0000-0000-4000-8000-000000000002";

/// The hook binary: the static build when hack/test.sh made one, else the
/// workspace's debug build beside this test.
fn hook_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HAMI_OCI_HOOK_STATIC") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let hook = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("hami-oci-hook");
    assert!(
        hook.is_file(),
        "{} not built: run the whole workspace's tests (cargo test --workspace)",
        hook.display()
    );
    hook
}

async fn connect(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .unwrap()
}

/// The container's stdout from a CRI log file (`<time> <stream> <tag> <line>`).
fn cri_log_stdout(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(4, ' ');
            let (_, stream, _, text) = (parts.next()?, parts.next()?, parts.next()?, parts.next());
            (stream == "stdout").then(|| format!("{}\n", text.unwrap_or("")))
        })
        .collect()
}

#[test]
fn kubelet_style_pod_gets_its_allocation_through_containerd_cri() {
    let needs: Vec<Need> = hami_testkit::containerd::NEEDS
        .iter()
        .chain(hami_testkit::fake_gpu::NEEDS.iter())
        .chain([Need::Binary("tar"), Need::Binary("sha256sum")].iter())
        .copied()
        .collect();
    if !require(
        "kubelet_style_pod_gets_its_allocation_through_containerd_cri",
        &needs,
    ) {
        return;
    }
    let work = tempfile::Builder::new()
        .prefix("hami-cri-")
        .tempdir()
        .unwrap();
    let w = work.path();

    // The image: busybox, the fake driver and app, the loader for hami-core.
    let rootfs = Rootfs::busybox(&w.join("rootfs")).unwrap();
    let gpu = FakeGpu::build(&w.join("fake-gpu")).unwrap();
    gpu.install(&rootfs).unwrap();
    let library = hami_testkit::test_library();
    rootfs.add_shared_libraries_of(&library).unwrap();
    let archive =
        hami_testkit::oci_image::archive(rootfs.path(), IMAGE, &["/bin/sleep", "3600"], w).unwrap();

    // The node: a mock inventory, and containerd's config merged by install.
    let inventory = w.join("inventory.json");
    std::fs::write(
        &inventory,
        format!(r#"{{"devices":[{{"index":0,"uuid":"{GPU_UUID}","memoryMiB":8192,"hostNode":"/dev/null"}}]}}"#),
    )
    .unwrap();
    let mut containerd = Containerd::prepare().unwrap();
    let config = containerd.dir().join("config.toml");
    std::fs::write(
        &config,
        containerd.base_config(Some(&CriSettings {
            sandbox_image: IMAGE,
        })),
    )
    .unwrap();
    let hook = hook_binary();
    let log_dir = w.join("hook-log");
    let state_dir = w.join("hook-state");
    let install = Command::new(&hook)
        .args(["install", "--runtime", "containerd", "--vendor", "mock"])
        .arg("--hook-path")
        .arg(&hook)
        .arg("--containerd-config")
        .arg(&config)
        .arg("--base-spec")
        .arg(w.join("hami-base-spec.json"))
        .arg("--inventory")
        .arg(&inventory)
        .arg("--library")
        .arg(&library)
        .arg("--state-dir")
        .arg(&state_dir)
        .arg("--log-dir")
        .arg(&log_dir)
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );
    containerd.launch(&config).unwrap();
    let import = hami_testkit::process::run_checked(
        containerd
            .ctr_in("k8s.io")
            .args(["images", "import", "--no-unpack=false"])
            .arg(&archive),
        Duration::from_secs(120),
    );
    if let Err(e) = import {
        panic!("{e}\n{}", containerd.log());
    }

    let pod_logs = w.join("pod-logs");
    std::fs::create_dir_all(&pod_logs).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(async {
        let mut cri = RuntimeServiceClient::new(connect(&containerd.socket()).await);
        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "gpu-pod".into(),
                uid: "0f0e0d0c-0000-4000-8000-000000000001".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            // Host-network pods share the node's UTS namespace: no hostname of their own.
            hostname: String::new(),
            log_directory: pod_logs.display().to_string(),
            annotations: [
                (
                    "hami.io/vgpu-devices-to-allocate".to_owned(),
                    format!("{GPU_UUID},NVIDIA,1024,30:;"),
                ),
                ("hami.io/vgpu-node".to_owned(), "node-a".to_owned()),
            ]
            .into_iter()
            .collect(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: containerd.cgroups().path(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sandbox = cri
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox_config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .map_err(|e| format!("RunPodSandbox: {e}"))?
            .into_inner()
            .pod_sandbox_id;
        let container = cri
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: "app".into(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: IMAGE.into(),
                        ..Default::default()
                    }),
                    command: vec!["/bin/sh".into(), "-c".into()],
                    args: vec![
                        "head -1 /etc/ld.so.preload; /usr/bin/cuda_app info alloc-until-oom 268435456"
                            .into(),
                    ],
                    log_path: "app.log".into(),
                    // What the device plugin's Allocate answers: the node of
                    // the allocated device. The hook adds no device on
                    // Kubernetes; it only checks this one is granted.
                    devices: vec![Device {
                        container_path: "/dev/nvidia0".into(),
                        host_path: "/dev/null".into(),
                        permissions: "rwm".into(),
                    }],
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox_config),
            })
            .await
            .map_err(|e| format!("CreateContainer: {e}"))?
            .into_inner()
            .container_id;
        cri.start_container(StartContainerRequest {
            container_id: container.clone(),
        })
        .await
        .map_err(|e| format!("StartContainer: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let exit_code = loop {
            let status = cri
                .container_status(ContainerStatusRequest {
                    container_id: container.clone(),
                    verbose: false,
                })
                .await
                .map_err(|e| format!("ContainerStatus: {e}"))?
                .into_inner()
                .status
                .ok_or("no status")?;
            if status.state == ContainerState::ContainerExited as i32 {
                break status.exit_code;
            }
            if Instant::now() > deadline {
                return Err("the container did not exit within 60 s".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Read before the sandbox goes: removing it may take the logs along.
        let stdout = cri_log_stdout(&pod_logs.join("app.log"));
        let _ = cri
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: sandbox.clone(),
            })
            .await;
        let _ = cri
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: sandbox,
            })
            .await;
        Ok::<_, String>((container, exit_code, stdout))
    });
    let hook_log = std::fs::read_to_string(log_dir.join("oci-hook.log")).unwrap_or_default();
    let (container, exit_code, stdout) =
        outcome.unwrap_or_else(|e| panic!("{e}\nhook log:\n{hook_log}\n{}", containerd.log()));
    assert_eq!(exit_code, 0, "{stdout}\n{hook_log}");
    assert!(
        stdout.starts_with("/usr/local/vgpu/libhami_core.so\n"),
        "{stdout:?}"
    );
    assert_eq!(
        hami_testkit::field(&stdout, "info", "total"),
        Some(1 << 30),
        "{stdout}\n{hook_log}"
    );
    assert_eq!(
        hami_testkit::field(&stdout, "alloc-until-oom", "count"),
        Some(4),
        "{stdout}"
    );
    // Injected once, into the app container; the sandbox (pause) container
    // ran the same hook from the same base spec and got nothing.
    let injected: Vec<&str> = hook_log
        .lines()
        .filter(|l| l.contains("injected hami-core"))
        .collect();
    assert_eq!(injected.len(), 1, "{hook_log}");
    assert!(injected[0].contains(&container), "{hook_log}");
}
