//! Putting an injection into a container, in two steps:
//! - [`prepare`] runs in the host's view: it clones the mount sources into
//!   detached trees and reads the device numbers of the host's nodes;
//! - [`Prepared::apply`] runs where the rootfs is (after entering the
//!   container's mount namespace, for prestart) and touches nothing but paths
//!   that [`RootFs`] resolved inside it.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::confine::RootFs;
use crate::mount::{DetachedMount, MountFlags};

/// `/etc/ld.so.preload` is a few lines; a larger one is not a preload list.
const MAX_PRELOAD_BYTES: usize = 64 << 10;
pub const PRELOAD_FILE: &str = "/etc/ld.so.preload";

#[derive(Debug, Error)]
pub enum InjectError {
    #[error("mount source {source_path}: {error}")]
    Source {
        source_path: PathBuf,
        error: io::Error,
    },
    #[error("device {host}: {reason}")]
    Device { host: PathBuf, reason: String },
    #[error("{target} in the container: {error}")]
    Target { target: String, error: io::Error },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub source: PathBuf,
    pub target: String,
    pub flags: MountFlags,
    /// False for the hook's own state: a symlink there was planted, not configured.
    pub follow_source_symlinks: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    /// Path inside the container.
    pub target: String,
    /// The host node whose type, numbers and permissions it copies.
    pub host: PathBuf,
}

/// Everything one container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub mounts: Vec<MountPlan>,
    pub devices: Vec<DevicePlan>,
    /// The line to add to `/etc/ld.so.preload`.
    pub preload: String,
}

#[derive(Debug)]
pub struct PreparedDevice {
    pub target: String,
    pub kind: libc::mode_t,
    pub rdev: libc::dev_t,
    pub perm: libc::mode_t,
}

#[derive(Debug)]
pub struct Prepared {
    mounts: Vec<(MountPlan, DetachedMount)>,
    pub devices: Vec<PreparedDevice>,
    preload: String,
}

pub fn prepare(plan: &Plan) -> Result<Prepared, InjectError> {
    let mut mounts = Vec::new();
    for m in &plan.mounts {
        let tree = DetachedMount::clone_of(&m.source, m.flags, m.follow_source_symlinks).map_err(
            |error| InjectError::Source {
                source_path: m.source.clone(),
                error,
            },
        )?;
        mounts.push((m.clone(), tree));
    }
    let mut devices = Vec::new();
    for d in &plan.devices {
        let bad = |reason: String| InjectError::Device {
            host: d.host.clone(),
            reason,
        };
        let meta = std::fs::metadata(&d.host).map_err(|e| bad(e.to_string()))?;
        let kind = if meta.file_type().is_char_device() {
            libc::S_IFCHR
        } else if meta.file_type().is_block_device() {
            libc::S_IFBLK
        } else {
            return Err(bad("not a device node".into()));
        };
        devices.push(PreparedDevice {
            target: d.target.clone(),
            kind,
            rdev: meta.rdev(),
            perm: meta.mode() & 0o777,
        });
    }
    Ok(Prepared {
        mounts,
        devices,
        preload: plan.preload.clone(),
    })
}

/// The entries of a preload list exactly as glibc's loader reads it: split on
/// the bytes space, tab, newline and colon, nothing else. Other "blanks"
/// (`\r`, `\v`, `\f`, NBSP, U+3000) are part of a name, so a line that looks
/// like ours but ends in `\r` names a file that does not exist and the loader
/// preloads nothing.
pub fn preload_entries(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|b| matches!(b, b' ' | b'\t' | b'\n' | b':'))
        .filter(|e| !e.is_empty())
}

/// The preload list with `line` added once, keeping the image's entries.
/// Ours goes first: the loader binds symbols in list order, so a library the
/// image preloads before us (even libc itself) would otherwise take `dlsym`
/// and the driver entry points, and the quota would silently not apply.
pub fn preload_with(existing: Option<&[u8]>, line: &str) -> Option<Vec<u8>> {
    let existing = existing.unwrap_or_default();
    let ours = line.as_bytes();
    if preload_entries(existing).next() == Some(ours) {
        return None;
    }
    let mut out = format!("{line}\n").into_bytes();
    for entry in preload_entries(existing).filter(|e| *e != ours) {
        out.extend_from_slice(entry);
        out.push(b'\n');
    }
    Some(out)
}

impl Prepared {
    /// Applies everything inside `root`; returns what was done, for the log.
    pub fn apply(self, root: &RootFs) -> Result<Vec<String>, InjectError> {
        let target_error = |target: &str| {
            let target = target.to_owned();
            move |error| InjectError::Target { target, error }
        };
        let mut done = Vec::new();
        for (plan, tree) in self.mounts {
            let inside = Path::new(&plan.target);
            let is_dir = plan.source.is_dir();
            let point = if is_dir {
                root.mount_point_dir(inside)
            } else {
                root.mount_point_file(inside)
            }
            .map_err(target_error(&plan.target))?;
            let shared = crate::mount::is_shared(&point).map_err(target_error(&plan.target))?;
            if shared {
                return Err(InjectError::Target {
                    target: plan.target.clone(),
                    error: io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "it is on a shared mount: a mount there would propagate out of the \
                         container (a Bidirectional or rshared volume)",
                    ),
                });
            }
            tree.attach(&point).map_err(target_error(&plan.target))?;
            done.push(format!(
                "mounted {} at {} ({})",
                plan.source.display(),
                plan.target,
                if plan.flags.writable { "rw" } else { "ro" }
            ));
        }
        for d in self.devices {
            root.make_device(Path::new(&d.target), d.kind, d.rdev, d.perm)
                .map_err(target_error(&d.target))?;
            done.push(format!(
                "device {} ({}:{})",
                d.target,
                libc::major(d.rdev),
                libc::minor(d.rdev)
            ));
        }
        let preload = Path::new(PRELOAD_FILE);
        let existing = root
            .read_file(preload, MAX_PRELOAD_BYTES)
            .map_err(target_error(PRELOAD_FILE))?;
        match preload_with(existing.as_deref(), &self.preload) {
            Some(contents) => {
                root.write_file(preload, &contents, 0o644)
                    .map_err(target_error(PRELOAD_FILE))?;
                done.push(format!(
                    "{PRELOAD_FILE}: {} first ({} entries before)",
                    self.preload,
                    existing
                        .as_deref()
                        .map_or(0, |e| preload_entries(e).count())
                ));
            }
            None => done.push(format!(
                "{PRELOAD_FILE}: already lists {} first",
                self.preload
            )),
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_goes_first_once_and_keeps_the_image_entries() {
        let line = "/usr/local/vgpu/libhami_core.so";
        assert_eq!(
            preload_with(None, line).unwrap(),
            format!("{line}\n").into_bytes()
        );
        let image = b"/usr/lib/libjemalloc.so /usr/lib/libx.so";
        let merged = preload_with(Some(image), line).unwrap();
        assert_eq!(
            String::from_utf8(merged.clone()).unwrap(),
            format!("{line}\n/usr/lib/libjemalloc.so\n/usr/lib/libx.so\n")
        );
        assert_eq!(preload_with(Some(&merged), line), None);
        // Listed, but behind another library: moved to the front.
        let behind = format!("a.so {line}");
        assert_eq!(
            preload_with(Some(behind.as_bytes()), line).unwrap(),
            format!("{line}\na.so\n").into_bytes()
        );
        // Colons separate entries too, as glibc reads them.
        assert_eq!(
            preload_with(Some(format!("{line}:b.so").as_bytes()), line),
            None
        );
    }

    /// Look-alikes that Unicode calls whitespace but glibc does not: each
    /// must be seen as a different name, so ours is still put first.
    #[test]
    fn preload_lookalikes_do_not_count_as_ours() {
        let line = "/usr/local/vgpu/libhami_core.so";
        for lookalike in [
            format!("{line}\r\n"),
            format!("\r{line}\n"),
            format!("{line}\x0b\n"),
            format!("{line}\x0c\n"),
            format!("{line}\u{a0}\n"),
            format!("{line}\u{3000}\n"),
        ] {
            let merged = preload_with(Some(lookalike.as_bytes()), line)
                .unwrap_or_else(|| panic!("{lookalike:?} was taken for ours"));
            let first = preload_entries(&merged).next().unwrap();
            assert_eq!(first, line.as_bytes(), "{lookalike:?}");
            // The image's odd entry is kept, byte for byte, after ours.
            assert_eq!(preload_entries(&merged).count(), 2, "{lookalike:?}");
        }
    }
}
