//! Reading a file that a container may have replaced, from a privileged
//! process on the host (the node agent, `hami-cdi list`).
//!
//! A region directory is mounted writable into its container, so whatever
//! sits at `vgpu.cache` may be a FIFO (a plain open blocks every scrape for
//! ever), a symlink to `/dev/zero` or a sparse file of terabytes (a plain
//! read exhausts memory), or a symlink out to any host file. So the file is
//! opened by the kernel beneath a directory the node owns, with no symlink
//! anywhere on the way, without blocking; it must be a regular file; and
//! exactly as many bytes are read as are expected, never more.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// How large the file must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Exactly(u64),
    AtMost(u64),
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Opens `relative` beneath the directory `root` with `flags` (plus
/// `O_NOFOLLOW | O_CLOEXEC`), the kernel refusing any symlink on the way.
fn open_beneath(root: &Path, relative: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a plain relative path", relative.display()),
        ));
    }
    let c_root = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: open of a C string; the fd is owned below.
    let dir = unsafe {
        libc::open(
            c_root.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    let c_rel = CString::new(relative.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: open_how is plain integers; all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a valid dirfd, C string and open_how of the right size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c_rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ELOOP) => {
                invalid(format!("{}: a symlink is on the way", relative.display()))
            }
            _ => e,
        });
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// The identity (device, inode) of the regular file at `relative` beneath
/// `root`, found without opening it for reading (a FIFO does not block) and
/// without following any symlink.
pub fn identity_beneath(root: &Path, relative: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::from(open_beneath(root, relative, libc::O_PATH)?);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(invalid(format!(
            "{}: not a regular file",
            relative.display()
        )));
    }
    Ok((meta.dev(), meta.ino()))
}

/// Reads `relative` beneath the directory `root`.
pub fn read_beneath(root: &Path, relative: &Path, size: Size) -> io::Result<Vec<u8>> {
    let fd = open_beneath(
        root,
        relative,
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
    )?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(invalid(format!(
            "{}: not a regular file",
            relative.display()
        )));
    }
    let len = meta.len();
    let want = match size {
        Size::Exactly(n) if len != n => {
            return Err(invalid(format!(
                "{}: {}{len} bytes, expected exactly {n}",
                relative.display(),
                if len < n { "truncated: " } else { "" }
            )))
        }
        Size::AtMost(n) if len > n => {
            return Err(invalid(format!(
                "{}: {len} bytes, more than {n}",
                relative.display()
            )))
        }
        _ => len,
    };
    let mut buf = Vec::with_capacity(want as usize);
    // Bounded even if the file grows between fstat and read.
    file.take(want).read_to_end(&mut buf)?;
    if (buf.len() as u64) != want {
        return Err(invalid(format!(
            "{}: shrank while being read",
            relative.display()
        )));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn only_regular_files_of_the_expected_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("a")).unwrap();
        std::fs::write(root.join("a/f"), b"12345").unwrap();
        let read = |rel: &str, size| read_beneath(root, Path::new(rel), size);
        assert_eq!(read("a/f", Size::Exactly(5)).unwrap(), b"12345");
        assert_eq!(read("a/f", Size::AtMost(64)).unwrap(), b"12345");
        assert!(read("a/f", Size::Exactly(6)).is_err());
        assert!(read("a/f", Size::AtMost(4)).is_err());

        // A symlink at the name, or on the way, to a host file or /dev/zero.
        std::os::unix::fs::symlink("/dev/zero", root.join("a/zero")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        for rel in ["a/zero", "etc/hostname"] {
            let err = read(rel, Size::AtMost(1 << 30)).unwrap_err().to_string();
            assert!(err.contains("symlink"), "{rel}: {err}");
        }
        assert!(read("../x", Size::AtMost(1)).is_err());
        assert!(read("/etc/hostname", Size::AtMost(1)).is_err());

        // A FIFO no one writes: refused at once, not waited on.
        let fifo = CString::new(root.join("a/fifo").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
        let started = Instant::now();
        let err = read("a/fifo", Size::AtMost(1 << 20))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));

        // A sparse file claiming a terabyte: refused by its size, not read.
        let sparse = std::fs::File::create(root.join("a/sparse")).unwrap();
        sparse.set_len(1 << 40).unwrap();
        let err = read("a/sparse", Size::Exactly(4096))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected exactly 4096"), "{err}");
    }
}
