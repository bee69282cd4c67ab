//! The project's fake GPU (hami-core/fake-drivers): builds the fake
//! libcuda.so.1 / libnvidia-ml.so.1 and the test applications, and installs
//! them into a container rootfs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::need::Need;
use crate::process::{run_checked, DEFAULT_TIMEOUT};
use crate::rootfs::Rootfs;
use crate::Result;

pub const NEEDS: [Need; 2] = [Need::Binary("gcc"), Need::Binary("bash")];

/// Where the fake driver libraries go inside a rootfs (a default loader path).
pub const LIBDIR_IN_ROOTFS: &str = "/usr/lib/x86_64-linux-gnu";

/// A built fake GPU: libraries and apps in one directory.
#[derive(Debug, Clone)]
pub struct FakeGpu {
    pub dir: PathBuf,
}

impl FakeGpu {
    /// Builds everything into `out` with hami-core/fake-drivers/build.sh.
    pub fn build(out: &Path) -> Result<Self> {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hami-core/fake-drivers/build.sh");
        run_checked(
            Command::new("bash").arg(script).arg(out).arg("--apps"),
            DEFAULT_TIMEOUT,
        )?;
        Ok(Self {
            dir: out.to_path_buf(),
        })
    }

    pub fn app(&self) -> PathBuf {
        self.dir.join("cuda_app")
    }

    /// Puts the fake CANN runtime (`libascendcl.so`, `libruntime.so`) and
    /// `npu_app` (at /usr/bin/npu_app) into a rootfs.
    pub fn install_npu(&self, rootfs: &Rootfs) -> Result<()> {
        rootfs.add_binary(&self.dir.join("npu_app"), "/usr/bin/npu_app")?;
        for lib in ["libascendcl.so", "libruntime.so"] {
            rootfs.copy_in(&self.dir.join(lib), &format!("{LIBDIR_IN_ROOTFS}/{lib}"))?;
        }
        Ok(())
    }

    /// Puts the fake driver and `cuda_app` (at /usr/bin/cuda_app) into a rootfs.
    pub fn install(&self, rootfs: &Rootfs) -> Result<()> {
        rootfs.add_binary(&self.app(), "/usr/bin/cuda_app")?;
        for lib in ["libcuda.so.1", "libnvidia-ml.so.1"] {
            rootfs.copy_in(&self.dir.join(lib), &format!("{LIBDIR_IN_ROOTFS}/{lib}"))?;
        }
        Ok(())
    }
}
