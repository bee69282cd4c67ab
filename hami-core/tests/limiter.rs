//! The compute-share limiter in real processes on the fake GPU. Each run gets
//! its own fake device (a state file), so runs in parallel do not share a GPU
//! unless a test means them to. The app reports the share it got each second
//! from the fake device's own books, not from NVML, which the limiter reads.

mod support;

use std::path::Path;
use std::process::Command;
use std::thread;

use support::{app, needs};

/// Seconds of warm-up the controller may use before accuracy is judged.
const SETTLE: usize = 2;

/// Per-second shares a `saturate` run printed.
fn shares(stdout: &str) -> Vec<f64> {
    stdout
        .lines()
        .filter(|l| l.starts_with("util "))
        .map(|l| l.rsplit("percent=").next().unwrap().parse().unwrap())
        .collect()
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    (mean, var.sqrt())
}

/// `cuda_app saturate kind seconds blocks` on a private fake device, returning per-second shares.
fn saturate(state: &Path, env: &[(&str, &str)], kind: &str, seconds: u32, blocks: u32) -> Vec<f64> {
    let mut cmd: Command = app("procaddress");
    cmd.env("FAKE_CUDA_STATE", state)
        .env_remove("CUDA_DEVICE_MEMORY_LIMIT");
    cmd.envs(env.iter().copied());
    cmd.args(["saturate", kind, &seconds.to_string(), &blocks.to_string()]);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = shares(&stdout);
    assert_eq!(s.len(), seconds as usize, "{stdout}");
    s
}

fn assert_holds(label: &str, limit: f64, per_second: &[f64]) {
    let steady = &per_second[SETTLE..];
    let (mean, std) = mean_std(steady);
    assert!(
        (mean - limit).abs() <= 3.0 && std <= 5.0,
        "{label}: limit {limit}, got mean {mean:.2} std {std:.2} over {steady:?} (all {per_second:?})"
    );
}

#[test]
fn shares_of_10_30_50_80_hold_within_3_points() {
    if !needs("shares_of_10_30_50_80_hold_within_3_points") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    thread::scope(|s| {
        for limit in [10u32, 30, 50, 80] {
            let state = dir.path().join(format!("gpu-{limit}"));
            s.spawn(move || {
                let limit_s = limit.to_string();
                let env = [
                    ("CUDA_DEVICE_SM_LIMIT", limit_s.as_str()),
                    ("GPU_CORE_UTILIZATION_POLICY", "force"),
                ];
                let got = saturate(&state, &env, "kernel", 5, 1320);
                assert_holds(&format!("SM limit {limit}"), f64::from(limit), &got);
            });
        }
    });
}

/// The same share on GPUs of 16 and 528 SMs, with kernels 100x apart in
/// length, and through every launch entry point.
#[test]
fn the_share_does_not_depend_on_gpu_size_kernel_length_or_launch_kind() {
    if !needs("the_share_does_not_depend_on_gpu_size_kernel_length_or_launch_kind") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    /// (label, extra environment, launch kind, blocks per launch)
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
        u32,
    );
    let cases: &[Case] = &[
        ("16 SMs", &[("FAKE_CUDA_SM_COUNT", "16")], "kernel", 1320),
        ("528 SMs", &[("FAKE_CUDA_SM_COUNT", "528")], "kernel", 1320),
        ("long kernels", &[], "kernel", 132_000),
        ("cuLaunchKernelEx", &[], "ex", 1320),
        ("cooperative", &[], "coop", 1320),
        ("cuGraphLaunch", &[], "graph", 0),
        ("per-thread stream", &[("APP_PTDS", "1")], "kernel", 1320),
        // The driver names processes by host pids, as it does for a container's.
        (
            "host pids differ",
            &[("FAKE_CUDA_PID_OFFSET", "100000")],
            "kernel",
            1320,
        ),
    ];
    thread::scope(|s| {
        for (i, (label, extra, kind, blocks)) in cases.iter().enumerate() {
            let state = dir.path().join(format!("gpu-{i}"));
            s.spawn(move || {
                let mut env = vec![
                    ("CUDA_DEVICE_SM_LIMIT", "30"),
                    ("GPU_CORE_UTILIZATION_POLICY", "force"),
                ];
                env.extend_from_slice(extra);
                let got = saturate(&state, &env, kind, 5, *blocks);
                assert_holds(label, 30.0, &got);
            });
        }
    });
}

/// Two processes of one container (one shared region) split one 40% share.
#[test]
fn processes_of_one_container_share_one_limit() {
    if !needs("processes_of_one_container_share_one_limit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("gpu");
    let region = dir.path().join("vgpu.cache");
    let region_s = region.to_string_lossy().into_owned();
    let env = [
        ("CUDA_DEVICE_SM_LIMIT", "40"),
        ("GPU_CORE_UTILIZATION_POLICY", "force"),
        ("CUDA_DEVICE_MEMORY_SHARED_CACHE", region_s.as_str()),
    ];
    let (a, b) = thread::scope(|s| {
        let a = s.spawn(|| saturate(&state, &env, "kernel", 6, 1320));
        let b = s.spawn(|| saturate(&state, &env, "kernel", 6, 1320));
        (a.join().unwrap(), b.join().unwrap())
    });
    let combined: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    // One more second to settle: each process first sees only its own work.
    let steady = &combined[SETTLE + 1..];
    let (mean, std) = mean_std(steady);
    assert!(
        (mean - 40.0).abs() <= 3.0 && std <= 5.0,
        "combined mean {mean:.2} std {std:.2}: {a:?} + {b:?}"
    );
}

#[test]
fn policies_disable_and_default_alone_do_not_throttle() {
    if !needs("policies_disable_and_default_alone_do_not_throttle") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    thread::scope(|s| {
        for policy in ["disable", "default"] {
            let state = dir.path().join(policy);
            s.spawn(move || {
                let env = [
                    ("CUDA_DEVICE_SM_LIMIT", "20"),
                    ("GPU_CORE_UTILIZATION_POLICY", policy),
                ];
                let got = saturate(&state, &env, "kernel", 3, 1320);
                let (mean, _) = mean_std(&got[1..]);
                assert!(
                    mean > 95.0,
                    "{policy}: alone on the device it should run free, got {got:?}"
                );
            });
        }
    });
}

/// Under the default policy, another tenant on the device brings the share back.
#[test]
fn default_policy_throttles_when_the_device_is_shared() {
    if !needs("default_policy_throttles_when_the_device_is_shared") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("gpu");
    let (limited, _other) = thread::scope(|s| {
        let limited = s.spawn(|| {
            let env = [
                ("CUDA_DEVICE_SM_LIMIT", "30"),
                ("GPU_CORE_UTILIZATION_POLICY", "default"),
            ];
            saturate(&state, &env, "kernel", 6, 1320)
        });
        // Another container's process: no limit, its own (absent) region.
        let other = s.spawn(|| saturate(&state, &[], "kernel", 6, 1320));
        (limited.join().unwrap(), other.join().unwrap())
    });
    let (mean, std) = mean_std(&limited[SETTLE + 1..]);
    assert!(
        (mean - 30.0).abs() <= 3.0 && std <= 5.0,
        "default policy next to another tenant: mean {mean:.2} std {std:.2} {limited:?}"
    );
}
