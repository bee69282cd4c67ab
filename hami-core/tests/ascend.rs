//! The Ascend front end in real processes: the fake CANN runtime and
//! AscendCL, an app that dlopens them like a CANN application, and
//! libhami_core.so under a real LD_PRELOAD.

mod support;

use support::{field, needs, npu_app, rcs, run};

const GIB: &str = "1073741824";
const OOM: i32 = 207_001;

fn sixteen_then_oom() -> Vec<i32> {
    let mut v = vec![0; 16];
    v.push(OOM);
    v
}

#[test]
fn a_16384_mb_quota_on_a_64_gb_npu_holds_on_both_layers() {
    if !needs("a_16384_mb_quota_on_a_64_gb_npu_holds_on_both_layers") {
        return;
    }
    for op in ["acl-alloc", "rt-alloc", "physical"] {
        let mut cmd = npu_app();
        cmd.env("NPU_MEM_QUOTA", "16384").args(["info", "rt-info"]);
        for _ in 0..17 {
            cmd.args([op, GIB]);
        }
        let (out, _) = run(&mut cmd);
        assert_eq!(rcs(&out, op), sixteen_then_oom(), "{op}:\n{out}");
        assert_eq!(field(&out, "info", "total"), 16 << 30, "{out}");
        assert_eq!(field(&out, "rt-info", "total"), 16 << 30, "{out}");
    }
    // Without a quota the device's own 64 GiB show through.
    let (out, _) = run(npu_app().args(["info"]));
    assert_eq!(field(&out, "info", "total"), 64 << 30, "{out}");
}

/// aclrtMalloc reaches rtMalloc underneath; the allocation must count once.
#[test]
fn an_acl_allocation_is_counted_exactly_once() {
    if !needs("an_acl_allocation_is_counted_exactly_once") {
        return;
    }
    let (out, _) = run(npu_app().env("NPU_MEM_QUOTA", "16384").args([
        "acl-alloc",
        "8589934592",
        "rt-alloc",
        "8589934592",
        "rt-alloc",
        "1",
        "info",
        "free-all",
        "acl-until-oom",
        GIB,
    ]));
    assert_eq!(rcs(&out, "acl-alloc"), vec![0], "{out}");
    assert_eq!(rcs(&out, "rt-alloc"), vec![0, OOM], "{out}");
    assert_eq!(field(&out, "info", "free"), 0, "{out}");
    assert_eq!(field(&out, "acl-until-oom", "count"), 16, "{out}");
    // aclrtMallocAlign32 takes 32 bytes more than the rounded size: after
    // 1048512 + 32 of a 1 MiB quota, 32 bytes are left and 1 byte needs 64.
    let (out, _) = run(npu_app().env("NPU_MEM_QUOTA", "1").args([
        "acl-align32",
        "1048512",
        "acl-align32",
        "1",
    ]));
    assert_eq!(rcs(&out, "acl-align32"), vec![0, OOM], "{out}");
}

#[test]
fn two_processes_share_one_npu_quota() {
    if !needs("two_processes_share_one_npu_quota") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let region = dir.path().join("vgpu.cache");
    let mut first = npu_app();
    first
        .env("NPU_MEM_QUOTA", "16384")
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region);
    for _ in 0..10 {
        first.args(["acl-alloc", GIB]);
    }
    let (out, _) = run(&mut first);
    assert_eq!(rcs(&out, "acl-alloc"), vec![0; 10], "{out}");
    // The first process exited without freeing: its 10 GiB stay charged until
    // someone needs them, then come back because it is gone.
    let (out, _) = run(npu_app()
        .env("NPU_MEM_QUOTA", "16384")
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region)
        .args(["info", "rt-until-oom", GIB]));
    assert_eq!(field(&out, "info", "free"), 6 << 30, "{out}");
    assert_eq!(field(&out, "rt-until-oom", "count"), 16, "{out}");
}

#[test]
fn an_invalid_npu_quota_fails_closed() {
    if !needs("an_invalid_npu_quota_fails_closed") {
        return;
    }
    for value in ["16GB", "-1", "1.5"] {
        let (out, err) =
            run(npu_app()
                .env("NPU_MEM_QUOTA", value)
                .args(["acl-alloc", "1", "rt-alloc", "1"]));
        assert_eq!(rcs(&out, "acl-alloc"), vec![OOM], "{value}: {out}");
        assert_eq!(rcs(&out, "rt-alloc"), vec![OOM], "{value}: {out}");
        assert!(
            err.contains("NPU_MEM_QUOTA") && err.contains(value),
            "{err}"
        );
    }
}

/// Per-second shares from `npu_app saturate` (the fake device's own books).
fn shares(out: &str) -> Vec<f64> {
    out.lines()
        .filter(|l| l.starts_with("util "))
        .map(|l| l.rsplit("percent=").next().unwrap().parse().unwrap())
        .collect()
}

/// A node with one shared fake NPU and the node agent's arbiter.
struct Node {
    dir: tempfile::TempDir,
    arbiter: hami_node::npu_arbiter::Arbiter,
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let arbiter = hami_node::npu_arbiter::start(dir.path()).unwrap();
        Node { dir, arbiter }
    }

    /// A container as the node prepares it: its own allocation directory
    /// with a region and the node's limits file, which is where the arbiter
    /// takes its share from.
    fn container(&self, name: &str, share: u32, policy: &str) -> std::process::Command {
        let alloc = self.dir.path().join(name);
        std::fs::create_dir_all(alloc.join("region")).unwrap();
        std::fs::write(
            alloc.join("limits.env"),
            format!("CUDA_DEVICE_SM_LIMIT={share}\nHAMI_CORE_NPU_DEVICE_IDS=0\n"),
        )
        .unwrap();
        let mut c = npu_app();
        c.env("FAKE_CUDA_STATE", self.dir.path().join("npu"))
            .env("HAMI_CORE_NPU_SCHEDULE", self.arbiter.socket())
            .env(
                "CUDA_DEVICE_MEMORY_SHARED_CACHE",
                alloc.join("region/vgpu.cache"),
            )
            .env("CUDA_DEVICE_SM_LIMIT", share.to_string())
            .env("GPU_CORE_UTILIZATION_POLICY", policy);
        c
    }
}

/// The timing tests take turns: six saturating processes on two cores would
/// measure CPU starvation, not the slicer.
fn timing_turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

/// 13200 blocks = 100 µs kernels: few enough launches that a busy CPU still keeps the NPU fed.
const BLOCKS: &str = "13200";

fn steady_mean(v: &[f64]) -> f64 {
    let s = &v[1..];
    s.iter().sum::<f64>() / s.len() as f64
}

#[test]
fn three_containers_at_50_30_20_get_their_shares() {
    if !needs("three_containers_at_50_30_20_get_their_shares") {
        return;
    }
    let _turn = timing_turn();
    let node = Node::new();
    let results: Vec<(u32, Vec<f64>)> = std::thread::scope(|s| {
        let runs: Vec<_> = [50u32, 30, 20]
            .into_iter()
            .map(|share| {
                let node = &node;
                s.spawn(move || {
                    let (out, _) = run(node
                        .container(&format!("c{share}"), share, "force")
                        .args(["saturate", "flag", "5", BLOCKS]));
                    (share, shares(&out))
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for (share, got) in &results {
        let mean = steady_mean(got);
        let std = (got[1..].iter().map(|x| (x - mean).powi(2)).sum::<f64>()
            / (got.len() - 1) as f64)
            .sqrt();
        assert!(
            (mean - f64::from(*share)).abs() <= 3.0 && std <= 5.0,
            "{share}%: mean {mean:.2} std {std:.2}; all: {results:?}"
        );
    }
}

/// A peer SIGKILLed mid-run holds nothing the others wait on: they finish on
/// time, and once its heartbeat expires its time goes to them in proportion
/// (50:30 of the whole NPU: 62.5% and 37.5%).
#[test]
fn a_killed_peer_does_not_stall_the_others() {
    if !needs("a_killed_peer_does_not_stall_the_others") {
        return;
    }
    let _turn = timing_turn();
    let node = Node::new();
    let mut victim = node
        .container("victim", 20, "force")
        .args(["saturate", "model", "30", "0"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let results: Vec<(u32, Vec<f64>)> = std::thread::scope(|s| {
        let runs: Vec<_> = [50u32, 30]
            .into_iter()
            .map(|share| {
                let node = &node;
                s.spawn(move || {
                    let started = std::time::Instant::now();
                    let (out, _) = run(node
                        .container(&format!("c{share}"), share, "force")
                        .args(["saturate", "handle", "5", BLOCKS]));
                    assert!(
                        started.elapsed() < std::time::Duration::from_secs(10),
                        "{share}% stalled"
                    );
                    (share, shares(&out))
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        victim.kill().unwrap();
        victim.wait().unwrap();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for (share, got) in results {
        assert_eq!(got.len(), 5, "{share}%: {got:?}");
        assert!(
            got.iter().all(|s| *s > 5.0),
            "{share}%: a second with (almost) no work: {got:?}"
        );
    }
}

#[test]
fn without_a_schedule_default_runs_free_and_force_refuses() {
    if !needs("without_a_schedule_default_runs_free_and_force_refuses") {
        return;
    }
    let _turn = timing_turn();
    let node = Node::new();
    let mut free = node.container("a", 30, "default");
    free.env_remove("HAMI_CORE_NPU_SCHEDULE");
    let (out, err) = run(free.args(["saturate", "flag", "2", BLOCKS]));
    assert!(steady_mean(&shares(&out)) > 95.0, "{out}");
    assert!(err.contains("NOT enforced"), "{err}");

    let mut refused = node.container("b", 30, "force");
    refused.env_remove("HAMI_CORE_NPU_SCHEDULE");
    let (out, err) = run(refused.args(["saturate", "flag", "2", BLOCKS]));
    assert!(out.contains("saturate rc=507899"), "{out}");
    assert!(err.contains("refusing launches"), "{err}");
}

/// Time-slicing divides time between tenants; a container alone runs free.
#[test]
fn alone_on_the_npu_a_container_runs_free() {
    if !needs("alone_on_the_npu_a_container_runs_free") {
        return;
    }
    let _turn = timing_turn();
    for (policy, kind) in [("default", "aicpu"), ("force", "aicpu-ex")] {
        let node = Node::new();
        let (out, _) = run(node
            .container("a", 30, policy)
            .args(["saturate", kind, "3", BLOCKS]));
        assert!(steady_mean(&shares(&out)) > 95.0, "{policy}: {out}");
    }
}

/// A process whose region is no allocation of this node (a container that
/// pointed its region elsewhere to escape its share) gets no window: under
/// `force` its launches are refused.
#[test]
fn a_container_the_node_does_not_know_gets_no_window() {
    if !needs("a_container_the_node_does_not_know_gets_no_window") {
        return;
    }
    let _turn = timing_turn();
    let node = Node::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let mut stranger = node.container("s", 30, "force");
    stranger.env(
        "CUDA_DEVICE_MEMORY_SHARED_CACHE",
        elsewhere.path().join("vgpu.cache"),
    );
    let (out, err) = run(stranger.args(["saturate", "flag", "1", BLOCKS]));
    assert!(out.contains("saturate rc=507899"), "{out}");
    assert!(
        err.contains("no allocation of this node") && err.contains("refusing launches"),
        "{err}"
    );
}
