//! Compute-share accuracy on the fake GPU.
//!
//! `cargo bench -p hami-core --bench limiter` runs the test app's `saturate`
//! (launching as fast as it is allowed) under the release libhami_core.so at
//! SM limits 10/30/50/80, on fake GPUs of 16 and 132 SMs, for 12 s each, and
//! reports the mean and per-second standard deviation of the share it got
//! after a 2 s warm-up, measured from the fake device's own books. The same
//! program without the preload is the baseline: it takes the whole device.

use std::path::Path;
use std::process::Command;

const SECONDS: usize = 12;
const SETTLE: usize = 2;

fn main() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-fake-cuda");
    hami_testkit::fake_gpu::FakeGpu::build(&dir).expect("build the fake GPU");
    let exe = std::env::current_exe().expect("bench path");
    let preload = exe.parent().expect("deps dir").join("libhami_core.so");

    println!(
        "hami-core compute share on the fake GPU ({SECONDS} s runs, first {SETTLE} s discarded)\n"
    );
    println!("| SMs | SM limit | mean share | error | std dev per second |");
    println!("|---:|---:|---:|---:|---:|");
    for sms in ["16", "132"] {
        let runs: Vec<(Option<u32>, std::thread::JoinHandle<Vec<f64>>)> =
            [None, Some(10), Some(30), Some(50), Some(80)]
                .into_iter()
                .map(|limit| {
                    let (dir, preload) = (dir.clone(), preload.clone());
                    let state = dir.join(format!("bench-state-{sms}-{}", limit.unwrap_or(0)));
                    let _ = std::fs::remove_file(&state);
                    (
                        limit,
                        std::thread::spawn(move || saturate(&dir, &preload, &state, sms, limit)),
                    )
                })
                .collect();
        for (limit, run) in runs {
            let shares = run.join().expect("run");
            let steady = &shares[SETTLE..];
            let mean = steady.iter().sum::<f64>() / steady.len() as f64;
            let std = (steady.iter().map(|x| (x - mean).powi(2)).sum::<f64>()
                / steady.len() as f64)
                .sqrt();
            let (label, error) = match limit {
                Some(l) => (l.to_string(), format!("{:+.2}", mean - f64::from(l))),
                None => ("none (no preload)".into(), "".into()),
            };
            println!("| {sms} | {label} | {mean:.2} | {error} | {std:.2} |");
        }
    }
}

fn saturate(dir: &Path, preload: &Path, state: &Path, sms: &str, limit: Option<u32>) -> Vec<f64> {
    let mut cmd = Command::new(dir.join("cuda_app"));
    cmd.env("LD_LIBRARY_PATH", dir)
        .env("FAKE_CUDA_STATE", state)
        .env("FAKE_CUDA_SM_COUNT", sms)
        .env_remove("LD_PRELOAD")
        .args(["saturate", "kernel", &SECONDS.to_string(), "1320"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("CUDA_") {
            cmd.env_remove(k);
        }
    }
    if let Some(l) = limit {
        cmd.env("LD_PRELOAD", preload)
            .env("CUDA_DEVICE_SM_LIMIT", l.to_string())
            .env("GPU_CORE_UTILIZATION_POLICY", "force");
    }
    let out = cmd.output().expect("run cuda_app");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cuda_app: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| l.starts_with("util "))
        .map(|l| {
            l.rsplit("percent=")
                .next()
                .expect("percent")
                .parse()
                .expect("number")
        })
        .collect()
}
