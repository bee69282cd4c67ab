//! A container scene for the hook's runtime tests: a busybox rootfs with the
//! fake GPU driver and application, a mock inventory, and the hook wired into
//! a bundle with the options a node would give it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hami_testkit::bundle::OciBundle;
use hami_testkit::fake_gpu::FakeGpu;
use hami_testkit::need::Need;
use hami_testkit::oci::OciRuntime;
use hami_testkit::rootfs::Rootfs;

pub const HOOK: &str = env!("CARGO_BIN_EXE_hami-oci-hook");
pub use hami_cdi::builder::HOOK_ENV;
/// Set by hack/test.sh to the statically linked build (hack/build-static-hook.sh).
pub const STATIC_HOOK_ENV: &str = "HAMI_OCI_HOOK_STATIC";
pub const GPU_UUID: &str = "GPU-0c1d0000-0000-4000-8000-000000000001";
pub const CHUNK: u64 = 256 << 20;

pub fn needs(runtime: OciRuntime) -> Vec<Need> {
    runtime
        .needs()
        .iter()
        .chain(hami_testkit::fake_gpu::NEEDS.iter())
        .copied()
        .collect()
}

/// The fake GPU, built once per test binary.
pub fn fake_gpu() -> &'static FakeGpu {
    static GPU: OnceLock<FakeGpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("hami-hook-fakegpu-")
            .tempdir()
            .unwrap()
            .keep();
        FakeGpu::build(&dir).unwrap()
    })
}

pub struct Scene {
    pub work: tempfile::TempDir,
    pub rootfs: Rootfs,
    pub inventory: PathBuf,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub library: PathBuf,
}

impl Scene {
    /// One 8 GiB mock GPU whose node in the container is a copy of `host_node`.
    pub fn new(host_node: &str) -> Self {
        let work = tempfile::Builder::new()
            .prefix("hami-hook-")
            .tempdir()
            .unwrap();
        let rootfs = Rootfs::busybox(&work.path().join("rootfs")).unwrap();
        fake_gpu().install(&rootfs).unwrap();
        let library = hami_testkit::test_library();
        rootfs.add_shared_libraries_of(&library).unwrap();
        let inventory = work.path().join("inventory.json");
        std::fs::write(
            &inventory,
            serde_json::json!({"devices": [{"index": 0, "uuid": GPU_UUID, "memoryMiB": 8192,
                                             "hostNode": host_node}]})
            .to_string(),
        )
        .unwrap();
        Self {
            state_dir: work.path().join("state"),
            log_dir: work.path().join("log"),
            rootfs,
            inventory,
            library,
            work,
        }
    }

    pub fn hook_args(&self, stage: &str) -> Vec<String> {
        let mut args = vec!["hami-oci-hook".to_owned(), stage.to_owned()];
        for (flag, value) in [
            ("--vendor", Path::new("mock")),
            ("--inventory", &self.inventory),
            ("--library", &self.library),
            ("--state-dir", &self.state_dir),
            ("--log-dir", &self.log_dir),
        ] {
            args.push(flag.to_owned());
            args.push(value.display().to_string());
        }
        args
    }

    /// A bundle running `script` with sh, the hook at `stage` and at poststop,
    /// configured as `hami-oci-hook install` does (an explicit environment).
    pub fn bundle(&self, name: &str, stage: &str, script: &str) -> OciBundle {
        self.bundle_with_hook(name, stage, script, Path::new(HOOK), &[HOOK_ENV])
    }

    pub fn bundle_with_hook(
        &self,
        name: &str,
        stage: &str,
        script: &str,
        hook: &Path,
        env: &[&str],
    ) -> OciBundle {
        let mut bundle = OciBundle::new(
            &self.work.path().join(name),
            self.rootfs.path(),
            &["/bin/sh", "-c", script],
        );
        for s in [stage, "poststop"] {
            let args = self.hook_args(s);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            bundle.hook(s, hook, &args, env);
        }
        bundle
    }

    pub fn allocation_dir(&self, container_id: &str) -> PathBuf {
        self.state_dir.join(format!("ctr-{container_id}"))
    }
}

/// What the probe script prints, read back.
pub const PROBE: &str = "cat /etc/ld.so.preload; echo ---; ls -ln /dev/nvidia0; echo ---; \
     cat /usr/local/vgpu/limits.env; echo ---; grep /usr/local/vgpu /proc/self/mountinfo; echo ---; \
     /usr/bin/cuda_app info alloc-until-oom 268435456";

pub use hami_testkit::field;
