//! Bind mounts made with the new mount API, so that no path inside the
//! container is ever resolved by `mount(2)`:
//! - the source is cloned into a detached tree while the hook is still in the
//!   host's view (`open_tree(OPEN_TREE_CLONE)`), and its flags are set there;
//! - the tree is then attached onto an `O_PATH` handle that [`crate::confine`]
//!   resolved inside the rootfs (`move_mount` with both paths empty).
//!
//! A detached tree can be attached in another mount namespace, which is what
//! the prestart stage needs after it has entered the container's.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A cloned, not yet attached, bind mount.
pub struct DetachedMount {
    tree: OwnedFd,
    source: PathBuf,
}

impl std::fmt::Debug for DetachedMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DetachedMount({})", self.source.display())
    }
}

/// How the attached mount behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountFlags {
    pub writable: bool,
    pub executable: bool,
}

impl DetachedMount {
    /// Clones `source` (a host path the hook's configuration names). With
    /// `follow_symlinks` false a symlink at `source` is refused (`ELOOP`-like
    /// failure) instead of cloning whatever it points at.
    pub fn clone_of(source: &Path, flags: MountFlags, follow_symlinks: bool) -> io::Result<Self> {
        let c = CString::new(source.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
        let nofollow = if follow_symlinks {
            0
        } else {
            libc::AT_SYMLINK_NOFOLLOW as u32
        };
        if !follow_symlinks && std::fs::symlink_metadata(source)?.file_type().is_symlink() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: is a symlink; host state is never followed",
                    source.display()
                ),
            ));
        }
        // SAFETY: open_tree with a C string; the fd is owned below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                c.as_ptr(),
                libc::OPEN_TREE_CLONE
                    | libc::OPEN_TREE_CLOEXEC
                    | libc::AT_RECURSIVE as u32
                    | nofollow,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("open_tree {}: {e}", source.display()),
            ));
        }
        // SAFETY: a fresh fd we own.
        let tree = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        let mut set = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
        if !flags.writable {
            set |= libc::MOUNT_ATTR_RDONLY;
        }
        if !flags.executable {
            set |= libc::MOUNT_ATTR_NOEXEC;
        }
        // SAFETY: mount_attr is plain integers.
        let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
        attr.attr_set = set;
        let empty = c"";
        // SAFETY: mount_setattr on the detached tree we own, with a sized attr.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
                &attr as *const libc::mount_attr,
                std::mem::size_of::<libc::mount_attr>(),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("mount_setattr {}: {e}", source.display()),
            ));
        }
        Ok(Self {
            tree,
            source: source.to_path_buf(),
        })
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Attaches the tree onto `target`, an `O_PATH` handle resolved in the rootfs.
    pub fn attach(self, target: &OwnedFd) -> io::Result<()> {
        let empty = c"";
        // SAFETY: move_mount between two fds with empty paths: nothing is resolved by name.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                self.tree.as_raw_fd(),
                empty.as_ptr(),
                target.as_raw_fd(),
                empty.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("move_mount {}: {e}", self.source.display()),
            ));
        }
        Ok(())
    }
}

/// Whether the mount holding `point` (an `O_PATH` handle) is shared: a mount
/// attached there would propagate to its peers, which may be on the host
/// (a `Bidirectional` volume, an `rshared` bind mount).
pub fn is_shared(point: &OwnedFd) -> io::Result<bool> {
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", point.as_raw_fd()))?;
    let mnt_id = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .map(str::trim)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "fdinfo has no mnt_id"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    shared_in_mountinfo(&mountinfo, mnt_id).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("mount {mnt_id} is not in /proc/self/mountinfo"),
        )
    })
}

/// Whether mount `mnt_id` in mountinfo text has a `shared:N` tag; `None`
/// when the mount is not listed.
pub fn shared_in_mountinfo(mountinfo: &str, mnt_id: &str) -> Option<bool> {
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        (fields.next() == Some(mnt_id)).then(|| {
            // Optional fields start at the 7th and end at "-".
            fields
                .skip(5)
                .take_while(|f| *f != "-")
                .any(|f| f.starts_with("shared:"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shared_tag_of_one_mount() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:5 / /dev rw master:2 - devtmpfs udev rw
24 22 0:6 / /vol rw shared:7 master:3 - tmpfs t rw
25 22 0:7 / /x\\040y rw - tmpfs t rw
";
        assert_eq!(shared_in_mountinfo(text, "22"), Some(true));
        assert_eq!(shared_in_mountinfo(text, "23"), Some(false));
        assert_eq!(shared_in_mountinfo(text, "24"), Some(true));
        assert_eq!(shared_in_mountinfo(text, "25"), Some(false));
        assert_eq!(shared_in_mountinfo(text, "2"), None);
    }
}
