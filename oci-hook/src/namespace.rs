//! Entering a container's mount namespace (the prestart stage runs in the
//! runtime's). Done with `setns(2)` on `/proc/<pid>/ns/mnt` in this process:
//! no `nsenter` binary is run, from the host or from the image.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

fn ns_identity(pid: &str) -> io::Result<(u64, u64)> {
    let meta = std::fs::metadata(format!("/proc/{pid}/ns/mnt"))?;
    Ok((meta.dev(), meta.ino()))
}

/// Whether `pid` lives in this process's mount namespace.
pub fn shares_mount_ns_with(pid: i32) -> io::Result<bool> {
    Ok(ns_identity(&pid.to_string())? == ns_identity("self")?)
}

/// Joins `pid`'s mount namespace. The process must be single-threaded
/// (the kernel refuses otherwise), which the hook is.
pub fn enter_mount_ns(pid: i32) -> io::Result<()> {
    let ns: OwnedFd = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))?.into();
    // SAFETY: setns with an fd we own.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The old working directory belongs to the namespace we left.
    std::env::set_current_dir("/")?;
    Ok(())
}
