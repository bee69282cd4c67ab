//! `hami-node discover` on an NVIDIA node made of the project's fake driver
//! (libnvidia-ml.so.1 found through the real dynamic loader) and a /dev tree:
//! the register annotation with the driver's names and memory, and the
//! NVLink/PCIe pair scores HAMi's topology-aware policy reads.

use std::process::Command;

use hami_api::{node_register, LinkScores};
use hami_testkit::need::require;
use serde_json::Value;

#[test]
fn an_nvidia_node_is_registered_with_its_link_scores() {
    if !require(
        "an_nvidia_node_is_registered_with_its_link_scores",
        &hami_testkit::fake_gpu::NEEDS,
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let gpu = hami_testkit::fake_gpu::FakeGpu::build(&work.path().join("gpu")).unwrap();
    let dev = work.path().join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    for n in ["nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl"] {
        std::fs::write(dev.join(n), "").unwrap();
    }
    // A process keeping GPU 0 busy on the same fake driver state.
    let state = work.path().join("fake-state");
    let mut busy = Command::new(gpu.app())
        .args(["saturate", "kernel", "3", "1320"])
        .env("LD_LIBRARY_PATH", &gpu.dir)
        .env("FAKE_CUDA_DEVICE_COUNT", "4")
        .env("FAKE_CUDA_TOTAL_MEMORY", "80g")
        .env("FAKE_CUDA_STATE", &state)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = Command::new(env!("CARGO_BIN_EXE_hami-node"))
        .args([
            "discover",
            "--vendor",
            "nvidia",
            "--device-split-count",
            "4",
            "--dev",
        ])
        .arg(&dev)
        .env("LD_LIBRARY_PATH", &gpu.dir)
        .env("FAKE_CUDA_DEVICE_COUNT", "4")
        .env("FAKE_CUDA_TOTAL_MEMORY", "80g")
        .env("FAKE_CUDA_STATE", &state)
        // GPUs 0-1: one PCIe switch and 12 NVLinks; 2-3: several switches and 4.
        .env("FAKE_NVML_TOPOLOGY", "0-1:10:12;2-3:20:4")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let ann = &v["annotations"];
    let devices =
        node_register::decode(ann["hami.io/node-nvidia-register"].as_str().unwrap()).unwrap();
    assert_eq!(devices.len(), 4);
    assert_eq!(devices[0].device_type, "NVIDIA-NVIDIA Fake H100 80GB HBM3");
    assert_eq!(
        (devices[0].devmem, devices[0].count, devices[0].devcore),
        (81920, 4, 100)
    );
    assert!(devices.iter().all(|d| d.health));
    let scores = LinkScores::decode(ann["hami.io/node-nvidia-score"].as_str().unwrap()).unwrap();
    let id = |i: usize| devices[i].id.as_str();
    assert_eq!(scores.score(id(0), id(1)), 50 + 12 * 100);
    assert_eq!(scores.score(id(2), id(3)), 40 + 4 * 100);
    assert_eq!(scores.score(id(0), id(2)), 10, "across CPUs, no NVLink");
    assert_eq!(scores.score(id(1), id(3)), 10);
    assert!(ann["hami.io/node-handshake"]
        .as_str()
        .unwrap()
        .starts_with("Reported "));
    let _ = busy.wait();
    assert!(v["memoryUsedBytes"][id(0)].is_u64(), "{v}");
    // The busy process shows in GPU 0's samples with a real share.
    let samples = v["processUtilization"][id(0)].as_array().unwrap();
    let mine = samples
        .iter()
        .find(|s| s[0] == busy.id())
        .unwrap_or_else(|| panic!("no sample of pid {} in {samples:?}", busy.id()));
    assert!(mine[1].as_u64().unwrap() > 10, "{mine}");
}
