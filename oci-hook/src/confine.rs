//! Filesystem access confined to a container's rootfs.
//!
//! The hook runs as root on the host and writes into an image it does not
//! trust. Every path is resolved by the kernel with `openat2(RESOLVE_IN_ROOT)`
//! against a handle on the rootfs: absolute symlinks and `..` are clamped to
//! the rootfs as if it were `/`, so no symlink in the image can lead a write
//! onto the host (the class of CVE-2024-0132, CVE-2025-23266/23267).
//! Files are created beside their final name and renamed over it, which
//! replaces a symlink planted there instead of following it.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// A handle on a container's rootfs.
pub struct RootFs {
    dir: OwnedFd,
    path: PathBuf,
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// The components of a path inside the rootfs; `..`, and anything else that
/// is not a plain name, is refused rather than interpreted.
fn components(inside: &Path) -> io::Result<Vec<&OsStr>> {
    inside
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: only plain names are allowed inside the rootfs",
                    inside.display()
                ),
            )),
        })
        .collect()
}

impl RootFs {
    /// Opens the rootfs directory itself (the runtime's bundle says where).
    pub fn open(path: &Path) -> io::Result<Self> {
        let c = cstr(path.as_os_str())?;
        // SAFETY: open with a C string; the fd is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: a fresh fd we own.
            dir: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `openat2` of `inside` with the rootfs as `/`.
    pub fn open_in(
        &self,
        inside: &Path,
        flags: libc::c_int,
        mode: libc::mode_t,
    ) -> io::Result<OwnedFd> {
        let parts = components(inside)?;
        let rel: PathBuf = if parts.is_empty() {
            PathBuf::from(".")
        } else {
            parts.iter().collect()
        };
        let c = cstr(rel.as_os_str())?;
        // open_how is non-exhaustive in libc: start zeroed, then fill it in.
        // SAFETY: open_how is plain integers; all-zero is valid.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC) as u64;
        how.mode = if flags & libc::O_CREAT != 0 {
            u64::from(mode)
        } else {
            0
        };
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: openat2 with a valid dirfd, C string and open_how of the right size.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.dir.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
    }

    /// Creates `inside` and its parents as directories, each created in a
    /// parent already resolved inside the rootfs; returns the directory.
    pub fn mkdir_all(&self, inside: &Path, mode: libc::mode_t) -> io::Result<OwnedFd> {
        let parts = components(inside)?;
        let mut dir = self.open_in(Path::new("."), libc::O_PATH | libc::O_DIRECTORY, 0)?;
        let mut sofar = PathBuf::new();
        for part in parts {
            sofar.push(part);
            let name = cstr(part)?;
            // SAFETY: mkdirat in a directory fd we resolved, with a single-component name.
            let rc = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) };
            if rc != 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EEXIST) {
                    return Err(err);
                }
            }
            // Whatever is there now (a directory, or a symlink the image planted)
            // is resolved inside the rootfs.
            dir = self
                .open_in(&sofar, libc::O_PATH | libc::O_DIRECTORY, 0)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "/{}: not a directory inside the container rootfs: {e}",
                            sofar.display()
                        ),
                    )
                })?;
        }
        Ok(dir)
    }

    /// Writes `contents` to `inside`, replacing (never following) whatever is
    /// there, through a temporary in the same directory and a rename.
    pub fn write_file(&self, inside: &Path, contents: &[u8], mode: libc::mode_t) -> io::Result<()> {
        let (dir, name) = self.parent_and_name(inside)?;
        let tmp = CString::new(format!(".hami-hook-{}", std::process::id())).expect("no NUL");
        // SAFETY: openat in a resolved directory; O_EXCL|O_NOFOLLOW never reuse or follow anything.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                tmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                libc::c_uint::from(mode),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let written = (|| {
            use std::io::Write;
            (&file).write_all(contents)?;
            file.sync_all()
        })();
        // SAFETY: renameat within one resolved directory; replaces the name itself.
        let renamed = written.and_then(|()| {
            if unsafe {
                libc::renameat(
                    dir.as_raw_fd(),
                    tmp.as_ptr(),
                    dir.as_raw_fd(),
                    name.as_ptr(),
                )
            } == 0
            {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
        if renamed.is_err() {
            // SAFETY: removing our own temporary.
            unsafe { libc::unlinkat(dir.as_raw_fd(), tmp.as_ptr(), 0) };
        }
        renamed
    }
}

/// What is at a name, not following a symlink there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Missing,
    Symlink,
    Directory,
    File,
    Device {
        kind: libc::mode_t,
        rdev: libc::dev_t,
    },
    Other,
}

fn entry_at(dir: &OwnedFd, name: &CString) -> io::Result<Entry> {
    // SAFETY: stat is plain data; fstatat in a resolved directory without following.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOENT) => Ok(Entry::Missing),
            _ => Err(err),
        };
    }
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFLNK => Entry::Symlink,
        libc::S_IFDIR => Entry::Directory,
        libc::S_IFREG => Entry::File,
        kind @ (libc::S_IFCHR | libc::S_IFBLK) => Entry::Device {
            kind,
            rdev: st.st_rdev,
        },
        _ => Entry::Other,
    })
}

fn unlink_at(dir: &OwnedFd, name: &CString) -> io::Result<()> {
    // SAFETY: unlinkat of a single name in a resolved directory (never a directory).
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn open_at_nofollow(dir: &OwnedFd, name: &CString, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: openat of a single name in a resolved directory, never following a symlink.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The (device, inode) of an open file, to tell whether two opens are one directory.
pub fn identity(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    // SAFETY: fstat on an fd we own into plain data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.st_dev, st.st_ino))
}

impl RootFs {
    /// The directory that will hold `inside` (created, resolved in the rootfs)
    /// and the final name, which is never resolved through a symlink.
    fn parent_and_name(&self, inside: &Path) -> io::Result<(OwnedFd, CString)> {
        let parts = components(inside)?;
        let Some((name, parents)) = parts.split_last() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no file name"));
        };
        let parent: PathBuf = parents.iter().collect();
        Ok((self.mkdir_all(&parent, 0o755)?, cstr(name)?))
    }

    pub fn handle(&self) -> &OwnedFd {
        &self.dir
    }

    /// The contents of a regular file at `inside`, or `None` when there is
    /// none; a symlink at the final name counts as none (it will be replaced).
    pub fn read_file(&self, inside: &Path, limit: usize) -> io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        use std::os::unix::fs::FileTypeExt;
        let (dir, name) = self.parent_and_name(inside)?;
        // Opened first and checked on the descriptor, so the image cannot
        // swap the name between a check and the open; O_NONBLOCK and
        // O_NOCTTY keep a FIFO or a terminal planted there from blocking or
        // adopting the hook.
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
        let fd = match open_at_nofollow(&dir, &name, flags) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            // A symlink at the final name will be replaced, not followed.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
            Err(e) => return Err(e),
        };
        let file = std::fs::File::from(fd);
        let kind = file.metadata()?.file_type();
        if !kind.is_file() {
            let found = if kind.is_dir() {
                "a directory"
            } else if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_char_device() || kind.is_block_device() {
                "a device"
            } else {
                "not a regular file"
            };
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: expected a file, found {found}", inside.display()),
            ));
        }
        let mut buf = Vec::new();
        file.take(limit as u64 + 1).read_to_end(&mut buf)?;
        if buf.len() > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: larger than {limit} bytes", inside.display()),
            ));
        }
        Ok(Some(buf))
    }

    /// A regular file at `inside` to mount onto: an existing file is kept, a
    /// symlink or nothing is replaced by an empty file. Returns an `O_PATH`
    /// handle on the file itself.
    pub fn mount_point_file(&self, inside: &Path) -> io::Result<OwnedFd> {
        let (dir, name) = self.parent_and_name(inside)?;
        match entry_at(&dir, &name)? {
            Entry::File => {}
            Entry::Missing | Entry::Symlink => self.write_file(inside, b"", 0o644)?,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{}: expected a file, found {other:?}", inside.display()),
                ))
            }
        }
        let fd = open_at_nofollow(&dir, &name, libc::O_PATH)?;
        Ok(fd)
    }

    /// A directory at `inside` to mount onto; an `O_PATH` handle on it.
    pub fn mount_point_dir(&self, inside: &Path) -> io::Result<OwnedFd> {
        let (dir, name) = self.parent_and_name(inside)?;
        match entry_at(&dir, &name)? {
            Entry::Directory => {}
            Entry::Missing => {
                // SAFETY: mkdirat of a single name in a resolved directory.
                if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Entry::Symlink => {
                unlink_at(&dir, &name)?;
                // SAFETY: as above.
                if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{}: expected a directory, found {other:?}",
                        inside.display()
                    ),
                ))
            }
        }
        open_at_nofollow(&dir, &name, libc::O_PATH | libc::O_DIRECTORY)
    }

    /// A device node at `inside` with the host's type and number; whatever
    /// else is at the name (a planted symlink, a file) is replaced. mknod
    /// honours the umask, which is lifted for the call so `perm` is exact.
    pub fn make_device(
        &self,
        inside: &Path,
        kind: libc::mode_t,
        rdev: libc::dev_t,
        perm: libc::mode_t,
    ) -> io::Result<()> {
        let (dir, name) = self.parent_and_name(inside)?;
        match entry_at(&dir, &name)? {
            Entry::Device { kind: k, rdev: r } if k == kind && r == rdev => return Ok(()),
            Entry::Missing => {}
            Entry::Directory => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{}: a directory is in the way", inside.display()),
                ))
            }
            _ => unlink_at(&dir, &name)?,
        }
        // The node gets the host node's permissions exactly: the hook's umask
        // (022) is lifted for this one call. The hook is single-threaded.
        // SAFETY: umask and mknodat of a single name in a resolved directory.
        let rc = unsafe {
            let old = libc::umask(0);
            let rc = libc::mknodat(dir.as_raw_fd(), name.as_ptr(), kind | perm, rdev);
            libc::umask(old);
            rc
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake host directory with a file the hook must never touch, and a rootfs.
    struct Scene {
        _dir: tempfile::TempDir,
        host: PathBuf,
        rootfs: PathBuf,
    }

    fn scene() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host");
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(host.join("etc")).unwrap();
        std::fs::write(host.join("etc/ld.so.preload"), "host original\n").unwrap();
        std::fs::write(host.join("victim"), "host original\n").unwrap();
        std::fs::create_dir_all(&rootfs).unwrap();
        Scene {
            _dir: dir,
            host,
            rootfs,
        }
    }

    fn host_untouched(s: &Scene) {
        let listing: Vec<_> = walk(&s.host);
        assert_eq!(
            listing,
            vec!["etc", "etc/ld.so.preload", "victim"],
            "host tree changed"
        );
        for f in ["etc/ld.so.preload", "victim"] {
            assert_eq!(
                std::fs::read_to_string(s.host.join(f)).unwrap(),
                "host original\n",
                "{f} changed"
            );
        }
    }

    fn walk(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        fn go(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
                if e.file_type().unwrap().is_dir() {
                    go(base, &p, out);
                }
            }
        }
        go(dir, dir, &mut out);
        out.sort();
        out
    }

    /// Writes the preload file, then checks the host and where the content went.
    fn attempt(s: &Scene, inside: &str) -> io::Result<()> {
        let root = RootFs::open(&s.rootfs).unwrap();
        let result = root.write_file(
            Path::new(inside),
            b"/usr/local/vgpu/libhami_core.so\n",
            0o644,
        );
        host_untouched(s);
        result
    }

    #[test]
    fn plain_rootfs_gets_the_file() {
        let s = scene();
        attempt(&s, "/etc/ld.so.preload").unwrap();
        assert_eq!(
            std::fs::read_to_string(s.rootfs.join("etc/ld.so.preload")).unwrap(),
            "/usr/local/vgpu/libhami_core.so\n"
        );
    }

    #[test]
    fn an_absolute_symlink_at_the_file_is_replaced_not_followed() {
        let s = scene();
        std::fs::create_dir(s.rootfs.join("etc")).unwrap();
        symlink(s.host.join("victim"), s.rootfs.join("etc/ld.so.preload")).unwrap();
        attempt(&s, "/etc/ld.so.preload").unwrap();
        let meta = std::fs::symlink_metadata(s.rootfs.join("etc/ld.so.preload")).unwrap();
        assert!(
            meta.is_file(),
            "the planted symlink must be replaced by a file"
        );
    }

    #[test]
    fn a_relative_dotdot_symlink_at_the_file_is_replaced() {
        let s = scene();
        std::fs::create_dir(s.rootfs.join("etc")).unwrap();
        symlink(
            "../../../../../../../../host/victim",
            s.rootfs.join("etc/ld.so.preload"),
        )
        .unwrap();
        attempt(&s, "/etc/ld.so.preload").unwrap();
    }

    #[test]
    fn a_parent_symlinked_to_the_host_is_confined_or_refused() {
        for target in ["ABS", "../../../../../host/etc", "/../../host/etc"] {
            let s = scene();
            let target = if target == "ABS" {
                s.host.join("etc")
            } else {
                PathBuf::from(target)
            };
            symlink(&target, s.rootfs.join("etc")).unwrap();
            // Either it lands inside the rootfs or it fails; the host is checked either way.
            let _ = attempt(&s, "/etc/ld.so.preload");
        }
    }

    #[test]
    fn a_deep_parent_symlink_is_confined() {
        let s = scene();
        std::fs::create_dir_all(s.rootfs.join("usr")).unwrap();
        symlink(&s.host, s.rootfs.join("usr/local")).unwrap();
        let _ = attempt(&s, "/usr/local/vgpu/ld.so.preload");
        assert!(!s.host.join("vgpu").exists());
    }

    #[test]
    fn read_file_takes_only_regular_files_without_blocking() {
        let s = scene();
        let root = RootFs::open(&s.rootfs).unwrap();
        std::fs::create_dir(s.rootfs.join("etc")).unwrap();
        let preload = s.rootfs.join("etc/ld.so.preload");
        let read = || root.read_file(Path::new("/etc/ld.so.preload"), 64);
        assert_eq!(read().unwrap(), None);
        std::fs::write(&preload, "a.so\n").unwrap();
        assert_eq!(read().unwrap().unwrap(), b"a.so\n");
        std::fs::remove_file(&preload).unwrap();
        // A FIFO would block a plain open for ever (no writer ever comes).
        let c = CString::new(preload.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = read().unwrap_err().to_string();
        assert!(err.contains("FIFO"), "{err}");
        std::fs::remove_file(&preload).unwrap();
        symlink("/dev/zero", &preload).unwrap();
        assert_eq!(read().unwrap(), None, "a symlink is never followed");
        std::fs::remove_file(&preload).unwrap();
        std::fs::write(&preload, vec![b'x'; 65]).unwrap();
        assert!(read().unwrap_err().to_string().contains("larger than 64"));
    }

    #[test]
    fn dotdot_in_the_requested_path_is_refused() {
        let s = scene();
        let err = attempt(&s, "/etc/../../host/victim").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
