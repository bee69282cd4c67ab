//! The node agent's monitor on regions that real processes wrote: the fake
//! GPU's cuda_app runs with libhami_core.so preloaded (real LD_PRELOAD),
//! allocates through the interposer, and holds its memory while the monitor
//! reads the state directory as the node agent does. A truncated region
//! beside it is reported, and does not stop the good one from being read.

use std::path::Path;
use std::process::{Child, Command};

use hami_node::{metrics, monitor};
use hami_testkit::need::require;
use hami_testkit::process::spawn_until_ready;

const MIB: u64 = 1 << 20;

fn tenant(
    gpu: &hami_testkit::fake_gpu::FakeGpu,
    library: &Path,
    region: &Path,
    allocations: usize,
) -> Child {
    std::fs::create_dir_all(region.parent().unwrap()).unwrap();
    let mut cmd = Command::new(gpu.app());
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LD_LIBRARY_PATH", &gpu.dir)
        .env("LD_PRELOAD", library)
        .env("FAKE_CUDA_TOTAL_MEMORY", "8g")
        .env("CUDA_DEVICE_MEMORY_LIMIT", "1000m")
        .env("CUDA_DEVICE_SM_LIMIT", "30")
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", region);
    for _ in 0..allocations {
        cmd.args(["alloc", "104857600"]);
    }
    spawn_until_ready(cmd.args(["ready", "pause"]))
}

#[test]
fn the_monitor_reads_what_hami_core_processes_account() {
    if !require(
        "the_monitor_reads_what_hami_core_processes_account",
        &hami_testkit::fake_gpu::NEEDS,
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let gpu = hami_testkit::fake_gpu::FakeGpu::build(&work.path().join("gpu")).unwrap();
    let library = hami_testkit::test_library();
    let state = work.path().join("state");
    let region = |alloc: &str| state.join(alloc).join("region").join("vgpu.cache");

    // Two processes of one container (one region), one of another.
    let mut held = vec![
        tenant(&gpu, &library, &region("ctr-aaa"), 3),
        tenant(&gpu, &library, &region("ctr-aaa"), 2),
        tenant(&gpu, &library, &region("ctr-bbb"), 1),
    ];
    std::fs::write(
        state.join("ctr-aaa").join("owner.json"),
        r#"{"namespace":"team","pod":"train-0","container":"main","devices":["GPU-fake-0"]}"#,
    )
    .unwrap();
    // A container whose region was cut short.
    let torn = region("ctr-ccc");
    std::fs::create_dir_all(torn.parent().unwrap()).unwrap();
    std::fs::write(&torn, &std::fs::read(region("ctr-bbb")).unwrap()[..5000]).unwrap();
    // State of the node, not an allocation.
    std::fs::create_dir_all(state.join(".lock")).unwrap();

    let report = monitor::scan(&state);
    for c in &mut held {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let names: Vec<&str> = report
        .containers
        .iter()
        .map(|c| c.allocation.as_str())
        .collect();
    assert_eq!(names, ["ctr-aaa", "ctr-bbb"]);
    let a = &report.containers[0];
    assert_eq!(
        a.snapshot.used_bytes[0],
        500 * MIB,
        "3 + 2 allocations of 100 MiB"
    );
    assert_eq!(a.snapshot.limits.memory_bytes[0], 1000 * MIB);
    assert_eq!(a.snapshot.limits.sm_percent[0], 30);
    assert_eq!(a.snapshot.processes, 2);
    assert_eq!(
        (a.owner.namespace.as_str(), a.owner.pod.as_str()),
        ("team", "train-0")
    );
    assert_eq!(report.containers[1].snapshot.used_bytes[0], 100 * MIB);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert_eq!(report.errors[0].0, "ctr-ccc");
    assert!(
        report.errors[0].1.contains("truncated"),
        "{:?}",
        report.errors
    );

    let text = metrics::render(&report, "node-1");
    for line in [
        r#"hami_vgpu_memory_used_bytes{node="node-1",namespace="team",pod="train-0",container="main",allocation="ctr-aaa",deviceidx="0",deviceuuid="GPU-fake-0"} 524288000"#,
        r#"hami_vgpu_memory_limit_bytes{node="node-1",namespace="team",pod="train-0",container="main",allocation="ctr-aaa",deviceidx="0",deviceuuid="GPU-fake-0"} 1048576000"#,
        r#"vGPU_device_memory_usage_in_bytes{ctrname="main",deviceuuid="GPU-fake-0",podname="train-0",podnamespace="team",vdeviceid="0"} 524288000"#,
        r#"hami_vgpu_core_limit_ratio{node="node-1",namespace="team",pod="train-0",container="main",allocation="ctr-aaa",deviceidx="0",deviceuuid="GPU-fake-0"} 0.3"#,
        r#"hami_container_processes{node="node-1",namespace="team",pod="train-0",container="main",allocation="ctr-aaa"} 2"#,
        r#"hami_vgpu_memory_used_bytes{node="node-1",namespace="",pod="",container="",allocation="ctr-bbb",deviceidx="0",deviceuuid=""} 104857600"#,
        r#"hami_region_read_errors{node="node-1",allocation="ctr-ccc"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing:\n{line}\nin:\n{text}"
        );
    }
}
