//! Helpers shared by hami-core's integration tests: the fake driver and test
//! app built once per test binary, and parsing of the app's output.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use hami_testkit::need::{require, Need};

pub const MIB: u64 = 1 << 20;
pub const HUNDRED_MIB: &str = "104857600";

pub struct Fixture {
    /// Fake libcuda.so.1 / libnvidia-ml.so.1 and the cuda_app binaries.
    pub dir: PathBuf,
    pub gpu: hami_testkit::fake_gpu::FakeGpu,
    pub preload: PathBuf,
}

pub fn needs(test: &str) -> bool {
    require(test, &[Need::Binary("gcc"), Need::Binary("bash")])
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // Under target/tmp, so repeated runs do not litter the system temp dir.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("fake-cuda-{}", std::process::id()));
        let gpu = hami_testkit::fake_gpu::FakeGpu::build(&dir).unwrap();
        Fixture {
            dir: gpu.dir.clone(),
            gpu,
            preload: preload_library(),
        }
    })
}

/// The cdylib cargo built for this test run. It lives beside the test binary in
/// target/<profile>/deps/; the copy in target/<profile>/ is only refreshed by
/// `cargo build`, so under `cargo test` it can be stale or missing.
pub fn preload_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let lib = exe.parent().unwrap().join("libhami_core.so");
    assert!(lib.is_file(), "{} not built", lib.display());
    lib
}

/// The test app with hami-core preloaded, a 1000 MiB limit and a clean CUDA environment.
pub fn app(resolve: &str) -> Command {
    let fx = fixture();
    let binary = if resolve == "direct" {
        "cuda_app_direct"
    } else {
        "cuda_app"
    };
    let mut c = preloaded(fx, binary);
    c.env("FAKE_CUDA_TOTAL_MEMORY", "8g")
        .env("CUDA_DEVICE_MEMORY_LIMIT", "1000m");
    if resolve != "direct" {
        c.env("APP_RESOLVE", resolve);
    }
    c
}

pub fn run(cmd: &mut Command) -> (String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    );
    assert!(status.success(), "app failed ({status}):\n{out}\n{err}");
    (out, err)
}

/// The `rc=` of every output line that starts with `op `.
pub fn rcs(stdout: &str, op: &str) -> Vec<i32> {
    stdout
        .lines()
        .filter(|l| l.starts_with(&format!("{op} ")))
        .map(|l| l.rsplit("rc=").next().unwrap().trim().parse().unwrap())
        .collect()
}

/// `key=<number>` from the first line starting with `prefix`.
pub fn field(stdout: &str, prefix: &str, key: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {stdout}"));
    let start = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len()
        + 1;
    line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The AscendCL test app with hami-core preloaded and a clean environment.
pub fn npu_app() -> Command {
    preloaded(fixture(), "npu_app")
}

/// One of the fixture's apps with hami-core preloaded, the fake drivers on the
/// library path, and none of the test process's own quota or fake-driver settings.
fn preloaded(fx: &Fixture, binary: &str) -> Command {
    let mut c = Command::new(fx.dir.join(binary));
    for (k, _) in std::env::vars() {
        let quota = ["CUDA_", "NPU_", "FAKE_", "APP_", "HAMI_CORE_", "GPU_CORE_"]
            .iter()
            .any(|p| k.starts_with(p));
        if quota || k == "LD_PRELOAD" {
            c.env_remove(k);
        }
    }
    c.env("LD_LIBRARY_PATH", &fx.dir)
        .env("LD_PRELOAD", &fx.preload);
    c
}
