//! A minimal container root filesystem: static busybox for a shell, plus the
//! host's dynamic loader and C runtime so dynamically linked programs, and with
//! them `LD_PRELOAD`, work inside. A static busybox alone ignores preloading.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::process::{run_checked, DEFAULT_TIMEOUT};
use crate::{KitError, Result};

/// Applets linked into `/bin`; enough for the shell scripts tests run.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "env", "ls", "mkdir", "rm", "sleep", "test", "true", "false", "grep",
    "head", "wc", "id", "stat", "readlink", "mount", "touch", "printf", "kill",
];

#[derive(Debug)]
pub struct Rootfs {
    dir: PathBuf,
}

impl Rootfs {
    /// Builds the rootfs in `dir` (created if missing).
    pub fn busybox(dir: &Path) -> Result<Self> {
        let rootfs = Self {
            dir: dir.to_path_buf(),
        };
        for d in [
            "bin", "dev", "proc", "sys", "tmp", "etc", "run", "usr/bin", "usr/lib", "var/tmp",
        ] {
            let p = dir.join(d);
            fs::create_dir_all(&p).map_err(KitError::io(format!("create {}", p.display())))?;
        }
        let busybox = host_busybox()?;
        rootfs.copy_in(&busybox, "/bin/busybox")?;
        for applet in APPLETS {
            let link = dir.join("bin").join(applet);
            if !link.exists() {
                symlink("busybox", &link)
                    .map_err(KitError::io(format!("link {}", link.display())))?;
            }
        }
        // The test binary itself links the loader, libc, libm and libgcc_s: exactly
        // the runtime our C test programs and the Rust cdylibs need.
        let me = std::env::current_exe().map_err(KitError::io("locate the running test binary"))?;
        rootfs.add_shared_libraries_of(&me)?;
        rootfs.write(
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )?;
        rootfs.write("/etc/group", "root:x:0:\nnogroup:x:65534:\n")?;
        Ok(rootfs)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The host path of `inside` (an absolute path in the container), refusing `..`.
    pub fn host_path(&self, inside: &str) -> Result<PathBuf> {
        let rel = Path::new(inside);
        let mut out = self.dir.clone();
        for c in rel.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(part) => out.push(part),
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(KitError::OutsideRootfs(rel.to_path_buf()));
                }
            }
        }
        Ok(out)
    }

    /// Copies a host file to `inside`, following host symlinks, keeping permissions.
    pub fn copy_in(&self, host: &Path, inside: &str) -> Result<PathBuf> {
        let dest = self.host_path(inside)?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .map_err(KitError::io(format!("create {}", parent.display())))?;
        }
        fs::copy(host, &dest).map_err(KitError::io(format!(
            "copy {} to {}",
            host.display(),
            dest.display()
        )))?;
        Ok(dest)
    }

    pub fn write(&self, inside: &str, contents: &str) -> Result<PathBuf> {
        let dest = self.host_path(inside)?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .map_err(KitError::io(format!("create {}", parent.display())))?;
        }
        fs::write(&dest, contents).map_err(KitError::io(format!("write {}", dest.display())))?;
        Ok(dest)
    }

    /// Copies a host executable or library to `inside`, plus every shared library it needs.
    pub fn add_binary(&self, host: &Path, inside: &str) -> Result<PathBuf> {
        let dest = self.copy_in(host, inside)?;
        self.add_shared_libraries_of(host)?;
        Ok(dest)
    }

    /// Copies the libraries `ldd` reports for `elf` to the same paths inside.
    pub fn add_shared_libraries_of(&self, elf: &Path) -> Result<()> {
        for lib in shared_libraries(elf)? {
            let inside = lib.to_string_lossy().into_owned();
            if !self.host_path(&inside)?.exists() {
                self.copy_in(&lib, &inside)?;
            }
        }
        Ok(())
    }
}

fn host_busybox() -> Result<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| crate::need::find_binary("busybox"))
        .ok_or_else(|| KitError::HostMissing {
            what: "busybox".into(),
            detail: "install busybox-static".into(),
        })
}

/// Absolute paths of the shared objects `elf` loads, the dynamic loader included.
pub fn shared_libraries(elf: &Path) -> Result<Vec<PathBuf>> {
    let out = run_checked(Command::new("ldd").arg(elf), DEFAULT_TIMEOUT)?;
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`.
            let target = match line.split_once("=>") {
                Some((_, rhs)) => rhs.trim(),
                None => line,
            };
            let path = target.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n\tlibmissing.so => not found\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn host_path_refuses_parent_components() {
        let r = Rootfs {
            dir: PathBuf::from("/tmp/r"),
        };
        assert_eq!(
            r.host_path("/usr/lib/x.so").unwrap(),
            PathBuf::from("/tmp/r/usr/lib/x.so")
        );
        assert!(r.host_path("/usr/../../etc/passwd").is_err());
    }

    #[test]
    fn builds_a_rootfs_with_loader_and_libc() {
        if !crate::need::require(
            "builds_a_rootfs_with_loader_and_libc",
            &[crate::need::Need::Binary("ldd")],
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let r = Rootfs::busybox(dir.path()).unwrap();
        assert!(r.path().join("bin/busybox").is_file());
        assert!(r.path().join("bin/sh").is_symlink());
        let libs = shared_libraries(&std::env::current_exe().unwrap()).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        for lib in libs {
            assert!(
                r.host_path(&lib.to_string_lossy()).unwrap().is_file(),
                "{} missing",
                lib.display()
            );
        }
    }
}
