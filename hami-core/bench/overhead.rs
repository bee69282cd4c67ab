//! What hami-core adds to driver calls, measured on the fake driver.
//!
//! `cargo bench -p hami-core --bench overhead` builds the fake driver and
//! `bench_app` (linked directly against libcuda.so.1), then runs each operation
//! natively and under LD_PRELOAD of the release libhami_core.so, interleaving
//! the configurations round by round so machine noise hits all of them alike.
//! It prints the median of each and the difference and ratio to native.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROUNDS: usize = 9;

struct Config {
    name: &'static str,
    preload: bool,
    env: &'static [(&'static str, &'static str)],
}

const CONFIGS: &[Config] = &[
    Config {
        name: "native",
        preload: false,
        env: &[],
    },
    Config {
        name: "hami-core, no limit",
        preload: true,
        env: &[],
    },
    Config {
        name: "hami-core, 8g limit",
        preload: true,
        env: &[("CUDA_DEVICE_MEMORY_LIMIT", "8g")],
    },
    Config {
        name: "hami-core, 50% SM limit",
        preload: true,
        env: &[
            ("CUDA_DEVICE_SM_LIMIT", "50"),
            ("GPU_CORE_UTILIZATION_POLICY", "force"),
        ],
    },
];

fn main() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-fake-cuda");
    hami_testkit::fake_gpu::FakeGpu::build(&dir).expect("build the fake GPU");
    let preload = release_cdylib();

    // The fake's launches are no-ops here: what remains is the call itself and
    // what hami-core wraps around it. Nothing runs, so a configured limit never
    // binds and its row shows the bare cost of the launch path.
    type Operation = (
        &'static str,
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
    );
    let operations: &[Operation] = &[
        (
            "cuMemAlloc_v2 + cuMemFree_v2 (4 KiB)",
            &["alloc", "2000000", "4096"],
            &[],
        ),
        (
            "cuLaunchKernel",
            &["launch", "5000000"],
            &[("FAKE_CUDA_LAUNCH_NOOP", "1")],
        ),
    ];
    println!(
        "hami-core overhead on the fake driver ({ROUNDS} interleaved rounds, median ns per call)\n"
    );
    println!("| operation | configuration | ns | added ns | ratio |");
    println!("|---|---|---:|---:|---:|");
    for (label, args, op_env) in operations {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); CONFIGS.len()];
        for _ in 0..ROUNDS {
            for (i, config) in CONFIGS.iter().enumerate() {
                samples[i].push(run_once(&dir, &preload, config, args, op_env));
            }
        }
        let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
        for (config, m) in CONFIGS.iter().zip(&medians) {
            println!(
                "| {label} | {} | {m:.1} | {:+.1} | {:.2} |",
                config.name,
                m - medians[0],
                m / medians[0]
            );
        }
    }
}

fn run_once(
    dir: &Path,
    preload: &Path,
    config: &Config,
    args: &[&str],
    op_env: &[(&str, &str)],
) -> f64 {
    let mut cmd = Command::new(dir.join("bench_app"));
    cmd.args(args)
        .env("LD_LIBRARY_PATH", dir)
        .env_remove("LD_PRELOAD");
    for (k, _) in std::env::vars() {
        if k.starts_with("CUDA_") {
            cmd.env_remove(k);
        }
    }
    if config.preload {
        cmd.env("LD_PRELOAD", preload);
    }
    cmd.envs(config.env.iter().copied());
    cmd.envs(op_env.iter().copied());
    let out = cmd.output().expect("run bench_app");
    assert!(
        out.status.success(),
        "bench_app: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a number")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The release cdylib cargo built for this bench, beside it in target/release/deps.
fn release_cdylib() -> PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    let lib = exe.parent().expect("deps dir").join("libhami_core.so");
    assert!(lib.is_file(), "{} not built", lib.display());
    lib
}
