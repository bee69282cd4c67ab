//! hami-rs on a real Kubernetes node: Debian's Kubernetes 1.20 (apiserver,
//! controller-manager, kube-scheduler, kubelet) on a private containerd 1.6,
//! brought up by hack/cluster.sh. hami-controller (extender and webhook over
//! TLS) and hami-node (mock vendor, two 8 GiB fake GPUs) run as host
//! processes under their own users, bound to the chart's ClusterRoles.
//!
//! HAMi's own example pod specs run with only the image and the command
//! replaced: the webhook sends them to hami-scheduler, the extender filters
//! and binds, kubelet calls Allocate over the device plugin socket (grpc-go
//! with the bare socket path as authority), and the application in the
//! container sees exactly its quota through CUDA.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hami_testkit::fake_gpu::FakeGpu;
use hami_testkit::kube::{kube_bin, ClusterOptions, KubeCluster};
use hami_testkit::need::require;
use hami_testkit::rootfs::Rootfs;
use serde_json::{json, Value};

const IMAGE: &str = "hami.local/e2e:test";
const NODE: &str = "hami-e2e";
const GPU: [&str; 2] = [
    "GPU-e2e00000-0000-4000-8000-000000000000",
    "GPU-e2e00000-0000-4000-8000-000000000001",
];
const EXTENDER: &str = "127.0.0.1:8888";
const CONTROLLER_METRICS: &str = "127.0.0.1:19395";
const WEBHOOK: &str = "127.0.0.1:9443";
const NODE_METRICS: &str = "127.0.0.1:19394";
const MIB: u64 = 1 << 20;

fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        bin.is_file(),
        "{} not built: run the whole workspace's tests",
        bin.display()
    );
    bin
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(rel)
}

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/hami")
}

/// The test image: busybox, the fake driver and its apps, and the loader and
/// libc hami-core needs; also the sandbox (pause) image.
fn import_image(cluster: &KubeCluster, work: &Path) {
    let rootfs = Rootfs::busybox(&work.join("rootfs")).unwrap();
    let gpu = FakeGpu::build(&work.join("fake-gpu")).unwrap();
    gpu.install(&rootfs).unwrap();
    gpu.install_npu(&rootfs).unwrap();
    rootfs
        .add_shared_libraries_of(&hami_testkit::test_library())
        .unwrap();
    let archive =
        hami_testkit::oci_image::archive(rootfs.path(), IMAGE, &["/bin/sleep", "3600"], work)
            .unwrap();
    let out = hami_testkit::process::run_with_timeout(
        Command::new("ctr")
            .arg("--address")
            .arg(cluster.containerd_socket())
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(&archive),
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "ctr import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// HAMi's example, as a user would apply it to this cluster: its image and
/// command replaced, nothing else.
fn hami_example(name: &str, pod_name: &str, script: &str) -> Value {
    let text = std::fs::read_to_string(fixture(&format!("hami/examples/nvidia/{name}"))).unwrap();
    let mut pod: Value = serde_yaml::from_str(&text).unwrap();
    pod["metadata"]["name"] = json!(pod_name);
    let c = &mut pod["spec"]["containers"][0];
    c["image"] = json!(IMAGE);
    c["command"] = json!(["/bin/sh", "-c", script]);
    pod
}

/// The fake driver's quota report: the line `prefix ... key=N`.
fn field(text: &str, prefix: &str, key: &str) -> Option<u64> {
    hami_testkit::field(text, prefix, key)
}

fn pod_logs(cluster: &KubeCluster, pod: &str) -> String {
    let out = cluster.kubectl(&["logs", pod]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the pod's log has the fake app's allocation report.
fn wait_for_report(cluster: &KubeCluster, pod: &str) -> String {
    cluster.wait(
        &format!("{pod}'s allocation report"),
        Duration::from_secs(90),
        || {
            let logs = pod_logs(cluster, pod);
            logs.contains("alloc-until-oom").then_some(logs)
        },
    )
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

fn base64_file(path: &Path) -> String {
    let out = Command::new("base64")
        .arg("-w0")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// The version the cluster reports, as Helm would see it.
const KUBE_VERSION: &str = "v1.20.2";

/// charts/hami rendered for this cluster's version, as
/// `helm template --kube-version` would.
fn chart_docs() -> Vec<Value> {
    let rendered = hami_chart::render_for(
        &chart_dir(),
        &json!({}),
        "hami",
        "hami-system",
        KUBE_VERSION,
    )
    .unwrap();
    hami_chart::documents(&rendered)
        .unwrap()
        .into_iter()
        .map(|(_, d)| d)
        .collect()
}

/// hami-scheduler's configuration: the chart's ConfigMap, as the
/// kube-scheduler container of its Deployment reads it.
fn chart_scheduler_config(docs: &[Value], work: &Path) -> PathBuf {
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "hami-scheduler-config")
        .expect("the scheduler ConfigMap");
    let path = work.join("scheduler-config.yaml");
    std::fs::write(&path, cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    path
}

/// Everything the chart installs but its workloads (they need images) and
/// its webhooks (see [`apply_chart_webhooks`]), through the real API server:
/// RBAC, with the host processes' users added to the bindings of the
/// service accounts they stand in for, the scheduler ConfigMap, Services
/// and NetworkPolicy.
fn apply_chart_objects(cluster: &KubeCluster, docs: &[Value]) {
    cluster.apply(
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "hami-system"}}),
    );
    let stands_in = |sa: &str| match sa {
        "hami-scheduler" => Some("hami-controller"),
        "hami-node" => Some("hami-node"),
        _ => None,
    };
    for doc in docs {
        let mut doc = doc.clone();
        match doc["kind"].as_str().unwrap_or_default() {
            "ClusterRole" | "Role" | "ServiceAccount" | "ConfigMap" | "Service"
            | "NetworkPolicy" => cluster.apply(&doc),
            "ClusterRoleBinding" | "RoleBinding" => {
                let users: Vec<Value> = doc["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s["name"].as_str().and_then(stands_in))
                    .map(|u| json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": u}))
                    .collect();
                if let Some(subjects) = doc["subjects"].as_array_mut() {
                    subjects.extend(users);
                }
                cluster.apply(&doc);
            }
            _ => {}
        }
    }
}

/// The chart's two webhook configurations, as rendered for this version
/// (no matchConditions before 1.28), pointed at the host process instead of
/// the Service: the mutating one sends pods that ask for shared devices to
/// hami-scheduler; the validating one keeps the scheduler's annotations to
/// the controller and the node agent.
fn apply_chart_webhooks(cluster: &KubeCluster, docs: &[Value]) {
    let ca = base64_file(&cluster.pki("ca.crt"));
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        let mut doc = docs
            .iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("the chart renders a {kind}"))
            .clone();
        for hook in doc["webhooks"].as_array_mut().unwrap() {
            let path = hook["clientConfig"]["service"]["path"]
                .as_str()
                .unwrap()
                .to_owned();
            hook["clientConfig"] =
                json!({"url": format!("https://{WEBHOOK}{path}"), "caBundle": ca});
        }
        cluster.apply(&doc);
    }
}

fn start_controller(cluster: &mut KubeCluster) {
    let mut c = Command::new(workspace_binary("hami-controller"));
    c.env("KUBECONFIG", cluster.kubeconfig("hami-controller"))
        .env("RUST_LOG", "info")
        .args(["serve", "--leader-elect", "false"])
        .args(["--listen", EXTENDER, "--metrics-listen", CONTROLLER_METRICS])
        .args(["--webhook-listen", WEBHOOK])
        .arg("--tls-cert")
        .arg(cluster.pki("webhook.crt"))
        .arg("--tls-key")
        .arg(cluster.pki("webhook.key"))
        .args([
            "--trusted-user",
            "hami-controller",
            "--trusted-user",
            "hami-node",
        ])
        .args(["--node-agent-user", "hami-node"])
        .args([
            "--decision-key-secret",
            "hami-decision-key",
            "--lease-namespace",
            "hami-system",
        ]);
    cluster.spawn("hami-controller", &mut c);
    cluster.wait("hami-controller ready", Duration::from_secs(60), || {
        http_get(CONTROLLER_METRICS, "/readyz")
            .contains("200 OK")
            .then_some(())
    });
}

fn start_node_agent(cluster: &mut KubeCluster, work: &Path) {
    let inventory = work.join("inventory.json");
    let devices: Vec<Value> = GPU
        .iter()
        .enumerate()
        .map(|(i, uuid)| json!({"index": i, "uuid": uuid, "memoryMiB": 8192, "model": "Fake H100", "hostNode": "/dev/null"}))
        .collect();
    std::fs::write(&inventory, json!({ "devices": devices }).to_string()).unwrap();
    // The agent reads the decision key the controller created, as the
    // DaemonSet mounts its Secret.
    let key_file = work.join("decision-key");
    cluster.wait("the decision key Secret", Duration::from_secs(30), || {
        let secret = cluster.get(&["-n", "hami-system", "secret", "hami-decision-key"])?;
        let (_, value) = secret["data"].as_object()?.iter().next()?;
        let out = Command::new("base64")
            .arg("-d")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()?
                    .write_all(value.as_str()?.as_bytes())
                    .ok()?;
                child.wait_with_output().ok()
            })?;
        std::fs::write(&key_file, out.stdout).ok()
    });
    let mut c = Command::new(workspace_binary("hami-node"));
    c.env("KUBECONFIG", cluster.kubeconfig("hami-node"))
        .env("RUST_LOG", "info")
        .args(["run", "--node-name", NODE, "--vendor", "mock"])
        .arg("--inventory")
        .arg(&inventory)
        // containerd 1.6 has no CDI: Allocate's env, mounts and devices do it.
        .args(["--cdi", "false"])
        .arg("--cdi-dir")
        .arg(work.join("cdi"))
        .arg("--library")
        .arg(hami_testkit::test_library())
        .arg("--region-dir")
        .arg(work.join("regions"))
        .arg("--decision-key-file")
        .arg(&key_file)
        .args([
            "--metrics-bind-address",
            NODE_METRICS,
            "--register-interval",
            "2",
        ]);
    cluster.spawn("hami-node", &mut c);
}

fn allocatable_gpus(cluster: &KubeCluster) -> Option<u64> {
    let node = cluster.get(&["node", NODE])?;
    node["status"]["allocatable"]["nvidia.com/gpu"]
        .as_str()?
        .parse()
        .ok()
}

fn pod_phase(cluster: &KubeCluster, pod: &str) -> Option<String> {
    let p = cluster.get(&["pod", pod])?;
    Some(p["status"]["phase"].as_str()?.to_owned())
}

/// The pods this test creates run a fake CUDA app: its device memory report,
/// then 256 MiB allocations until the quota refuses one; then they stay up.
const REPORT: &str = "/usr/bin/cuda_app info alloc-until-oom 268435456; sleep 3600";

#[test]
fn hami_on_a_real_kubernetes_node() {
    if !require("hami_on_a_real_kubernetes_node", &hami_testkit::kube::NEEDS) {
        return;
    }
    let Some(bin) = kube_bin() else {
        assert!(
            std::env::var(hami_testkit::need::REQUIRE_ENV).as_deref() != Ok("1"),
            "HAMI_KUBE_BIN does not name the Kubernetes binaries (hack/test.sh sets it)"
        );
        eprintln!(
            "SKIP hami_on_a_real_kubernetes_node: set HAMI_KUBE_BIN (hack/cluster/build-kube.sh)"
        );
        return;
    };
    let work = tempfile::Builder::new()
        .prefix("hami-kube-")
        .tempdir()
        .unwrap();
    // HAMI_KEEP_CLUSTER leaves the cluster and its files for a look.
    let w = &if std::env::var_os("HAMI_KEEP_CLUSTER").is_some() {
        work.keep()
    } else {
        work.path().to_owned()
    };
    let docs = chart_docs();
    let scheduler_config = chart_scheduler_config(&docs, w);
    let options = ClusterOptions {
        scheduler_config: Some(&scheduler_config),
        ..ClusterOptions::default()
    };
    let mut cluster = KubeCluster::up(&w.join("cluster"), &bin, &options).unwrap();
    import_image(&cluster, w);
    apply_chart_objects(&cluster, &docs);
    start_controller(&mut cluster);
    apply_chart_webhooks(&cluster, &docs);
    start_node_agent(&mut cluster, w);

    // 1. Registration: 2 GPUs x split 10 reach kubelet through the device plugin.
    cluster.wait(
        "nvidia.com/gpu on the node",
        Duration::from_secs(60),
        || (allocatable_gpus(&cluster)? == 20).then_some(()),
    );

    // 2. HAMi's default_use.yaml: 1 GPU, 3000 MiB, 30% cores.
    cluster.apply(&hami_example("default_use.yaml", "gpu-pod", REPORT));
    let logs = wait_for_report(&cluster, "gpu-pod");
    assert_eq!(field(&logs, "info", "total"), Some(3000 * MIB), "{logs}");
    assert_eq!(
        field(&logs, "alloc-until-oom", "count"),
        Some(3000 / 256),
        "{logs}"
    );
    assert_eq!(
        field(&logs, "alloc-until-oom", "rc"),
        Some(2),
        "CUDA_ERROR_OUT_OF_MEMORY: {logs}"
    );
    let pod = cluster.get(&["pod", "gpu-pod"]).unwrap();
    assert_eq!(
        pod["spec"]["schedulerName"], "hami-scheduler",
        "the webhook set it"
    );
    assert_eq!(pod["spec"]["nodeName"], NODE);
    assert_eq!(
        pod["metadata"]["annotations"]["hami.io/bind-phase"],
        "success"
    );

    // 3. HAMi's use_memory_fraction.yaml beside it: 2 GPUs at 50% each, so one
    // GPU is shared by both pods with different quotas.
    cluster.apply(&hami_example(
        "use_memory_fraction.yaml",
        "gpu-pod-fraction",
        REPORT,
    ));
    let logs = wait_for_report(&cluster, "gpu-pod-fraction");
    assert_eq!(field(&logs, "info", "total"), Some(4096 * MIB), "{logs}");
    assert_eq!(
        field(&logs, "alloc-until-oom", "count"),
        Some(4096 / 256),
        "{logs}"
    );
    let fraction = cluster.get(&["pod", "gpu-pod-fraction"]).unwrap();
    let decision = fraction["metadata"]["annotations"]["hami.io/vgpu-devices-allocated"]
        .as_str()
        .unwrap()
        .to_owned();
    for uuid in GPU {
        assert!(
            decision.contains(&format!("{uuid},NVIDIA-Fake H100,4096,30")),
            "{decision}"
        );
    }
    let metrics = cluster.wait(
        "both pods in the node agent's metrics",
        Duration::from_secs(30),
        || {
            let m = http_get(NODE_METRICS, "/metrics");
            (m.contains("podname=\"gpu-pod\"") && m.contains("podname=\"gpu-pod-fraction\""))
                .then_some(m)
        },
    );
    assert!(
        metrics.contains("vGPU_device_memory_limit_in_bytes"),
        "{metrics}"
    );
    let allocated = http_get(CONTROLLER_METRICS, "/metrics");
    assert!(
        allocated.contains("podname=\"gpu-pod\"")
            && allocated.contains("podname=\"gpu-pod-fraction\""),
        "{allocated}"
    );

    // 4. More memory than any GPU has: the webhook refuses it at once.
    let mut impossible = hami_example("default_use.yaml", "gpu-pod-impossible", REPORT);
    impossible["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpumem"] = json!(9000);
    let out = cluster.kubectl_as(
        "admin",
        &["create", "-f", "-"],
        Some(&impossible.to_string()),
    );
    let refusal = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && refusal.contains("more than any registered nvidia device has"),
        "{refusal}"
    );
    // More than any GPU has free now (1096 and 4096 MiB): Pending, with the
    // extender's reason.
    let mut big = hami_example("default_use.yaml", "gpu-pod-too-big", REPORT);
    big["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpumem"] = json!(7000);
    cluster.apply(&big);
    let event = cluster.wait(
        "FilteringFailed for the oversized pod",
        Duration::from_secs(60),
        || {
            let events = cluster.get(&[
                "events",
                "--field-selector",
                "involvedObject.name=gpu-pod-too-big",
            ])?;
            events["items"]
                .as_array()?
                .iter()
                .filter_map(|e| e["message"].as_str())
                .find(|m| m.contains("CardInsufficientMemory"))
                .map(str::to_owned)
        },
    );
    assert!(event.contains("1/1"), "{event}");
    assert_eq!(
        pod_phase(&cluster, "gpu-pod-too-big").as_deref(),
        Some("Pending")
    );

    // 5. Deleting a pod frees its devices and its region; the next pod gets
    // its whole quota, not the dead pod's usage.
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    let out = cluster.kubectl(&["delete", "pod", "gpu-pod", "--grace-period", "1", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let regions = w.join("regions");
    cluster.wait(
        "the deleted pod's region removed",
        Duration::from_secs(60),
        || {
            let left: Vec<String> = std::fs::read_dir(&regions)
                .ok()?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("gpu-pod_") || n.contains(&uid))
                .collect();
            left.is_empty().then_some(())
        },
    );
    cluster.apply(&hami_example("default_use.yaml", "gpu-pod-again", REPORT));
    let logs = wait_for_report(&cluster, "gpu-pod-again");
    assert_eq!(field(&logs, "info", "total"), Some(3000 * MIB), "{logs}");
    assert_eq!(
        field(&logs, "alloc-until-oom", "count"),
        Some(3000 / 256),
        "{logs}"
    );

    // 6. Fail closed: a pod with a decision that kubelet runs without ever
    // calling Allocate (as it does when the resource is missing from the
    // node) would see the whole GPU; the node agent deletes it. It is made
    // the way the controller makes one, minus the device request: created
    // unscheduled, annotated and bound by the controller's user.
    escaped_pod_is_deleted(&cluster);

    // 7. kubelet restarts: nothing is double-allocated, nothing leaks.
    kubelet_restart(&mut cluster, w);
}

/// The pods that hold an allocation on disk (their `owner.json`), sorted.
fn allocated_pods(regions: &Path) -> Vec<String> {
    let mut pods: Vec<String> = std::fs::read_dir(regions)
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .filter_map(|e| std::fs::read(e.path().join("owner.json")).ok())
                .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
                .filter_map(|o| o["pod"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    pods.sort();
    pods
}

/// Running pods that asked for GPUs, sorted.
fn running_gpu_pods(cluster: &KubeCluster) -> Vec<String> {
    let Some(list) = cluster.get(&["pods"]) else {
        return Vec::new();
    };
    let mut pods: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["status"]["phase"] == "Running")
        .filter(|p| p.to_string().contains("nvidia.com/gpu"))
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    pods.sort();
    pods
}

/// What is allocated on disk is exactly what runs.
fn wait_allocations_match(cluster: &KubeCluster, regions: &Path, when: &str) {
    cluster.wait(
        &format!("allocations on disk = running GPU pods ({when})"),
        Duration::from_secs(60),
        || {
            let running = running_gpu_pods(cluster);
            (allocated_pods(regions) == running).then_some(())
        },
    );
}

fn registrations(cluster: &KubeCluster) -> usize {
    cluster
        .daemon_log("hami-node")
        .matches("registered with kubelet")
        .count()
}

fn kubelet_restart(cluster: &mut KubeCluster, w: &Path) {
    let regions = w.join("regions");
    let out = cluster.kubectl(&[
        "delete",
        "pod",
        "gpu-pod-too-big",
        "--grace-period",
        "1",
        "--wait",
    ]);
    assert!(out.status.success());
    wait_allocations_match(cluster, &regions, "before");
    let before = allocated_pods(&regions);
    assert_eq!(before.len(), 2, "{before:?}");

    // kubelet restarts: the plugin registers again, the running pods keep
    // their allocations, and a new pod is allocated as before.
    let registered = registrations(cluster);
    cluster.restart_component("kubelet");
    cluster.wait(
        "the device plugin registered with the new kubelet",
        Duration::from_secs(60),
        || (registrations(cluster) > registered).then_some(()),
    );
    cluster.wait(
        "nvidia.com/gpu allocatable again",
        Duration::from_secs(60),
        || (allocatable_gpus(cluster) == Some(20)).then_some(()),
    );
    cluster.apply(&hami_example(
        "default_use.yaml",
        "after-kubelet-restart",
        REPORT,
    ));
    let logs = wait_for_report(cluster, "after-kubelet-restart");
    assert_eq!(field(&logs, "info", "total"), Some(3000 * MIB), "{logs}");
    wait_allocations_match(cluster, &regions, "after the kubelet restart");
    assert_eq!(allocated_pods(&regions).len(), 3);
}

fn escaped_pod_is_deleted(cluster: &KubeCluster) {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "escaped", "namespace": "default"},
        "spec": {"schedulerName": "nobody", "containers": [{"name": "app", "image": IMAGE,
            "command": ["/bin/sh", "-c", "/usr/bin/cuda_app info; sleep 3600"]}]}
    });
    cluster.apply(&pod);
    let decision = format!("{},NVIDIA-Fake H100,1000,10:;", GPU[1]);
    let annotate = cluster.kubectl_as(
        "hami-controller",
        &[
            "annotate",
            "pod",
            "escaped",
            "hami.io/bind-phase=allocating",
            &format!("hami.io/vgpu-devices-to-allocate={decision}"),
            &format!("hami.io/vgpu-devices-allocated={decision}"),
            &format!("hami.io/vgpu-node={NODE}"),
        ],
        None,
    );
    assert!(
        annotate.status.success(),
        "{}",
        String::from_utf8_lossy(&annotate.stderr)
    );
    let binding = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "escaped", "namespace": "default"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": NODE}});
    let bind = cluster.kubectl_as(
        "hami-controller",
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/pods/escaped/binding",
            "-f",
            "-",
        ],
        Some(&binding.to_string()),
    );
    assert!(
        bind.status.success(),
        "{}",
        String::from_utf8_lossy(&bind.stderr)
    );
    cluster.wait("the escaped pod deleted", Duration::from_secs(60), || {
        cluster.get(&["pod", "escaped"]).is_none().then_some(())
    });
    let events = cluster
        .get(&[
            "events",
            "--field-selector",
            "involvedObject.name=escaped,reason=QuotaNotApplied",
        ])
        .unwrap();
    let message = events["items"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("never called Allocate"), "{events}");
}
