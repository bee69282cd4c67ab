//! Builds the C test programs (fake applications, preload probes) with the
//! host's gcc, the way a CUDA application would be built: dynamically linked.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::need::Need;
use crate::process::{run_checked, DEFAULT_TIMEOUT};
use crate::{KitError, Result};

pub const NEEDS: [Need; 1] = [Need::Binary("gcc")];

/// What to build from one C source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifact {
    Executable,
    SharedLibrary,
}

/// Compiles `source` (C text) into `out` with `extra_args` (e.g. `-ldl`).
pub fn compile(
    source: &str,
    out: &Path,
    artifact: Artifact,
    extra_args: &[&str],
) -> Result<PathBuf> {
    let src = out.with_extension("c");
    fs::write(&src, source).map_err(KitError::io(format!("write {}", src.display())))?;
    let mut cmd = Command::new("gcc");
    cmd.args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(out)
        .arg(&src);
    if artifact == Artifact::SharedLibrary {
        cmd.args(["-shared", "-fPIC"]);
    }
    cmd.args(extra_args);
    run_checked(&mut cmd, DEFAULT_TIMEOUT)?;
    Ok(out.to_path_buf())
}
