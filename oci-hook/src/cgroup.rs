//! Allowing injected device nodes in the container's cgroup v1 `devices`
//! controller. The runtime configured it from config.json, which does not
//! list devices the hook adds; without this the nodes exist but cannot be
//! opened. cgroup v2 has no such file (the runtime's eBPF program decides), so
//! there the device must already be allowed by the spec (the CDI path).

use std::io;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allowed(PathBuf),
    /// The process is in the root devices cgroup, which allows everything.
    RootCgroup,
    /// No v1 devices controller on this host.
    NoDevicesController,
}

/// The v1 devices cgroup of `/proc/<pid>/cgroup` text, if any.
pub fn devices_cgroup(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "devices")
            .then_some(path)
    })
}

/// One `devices.allow` rule: `c 195:0 rwm`.
pub fn rule(kind: libc::mode_t, rdev: libc::dev_t) -> String {
    let t = if kind == libc::S_IFBLK { 'b' } else { 'c' };
    format!("{t} {}:{} rwm", libc::major(rdev), libc::minor(rdev))
}

/// Writes `rules` into the devices cgroup of `pid` (or of this process).
pub fn allow(cgroup_root: &Path, pid: Option<i32>, rules: &[String]) -> io::Result<Outcome> {
    let who = pid.map_or_else(|| "self".to_owned(), |p| p.to_string());
    let text = std::fs::read_to_string(format!("/proc/{who}/cgroup"))?;
    let Some(path) = devices_cgroup(&text) else {
        return Ok(Outcome::NoDevicesController);
    };
    let relative = Path::new(path);
    if relative
        .components()
        .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("devices cgroup path {path:?} is not canonical"),
        ));
    }
    let relative = relative.strip_prefix("/").unwrap_or(relative);
    if relative.as_os_str().is_empty() {
        return Ok(Outcome::RootCgroup);
    }
    let dir = cgroup_root.join("devices").join(relative);
    let allow = dir.join("devices.allow");
    for r in rules {
        std::fs::write(&allow, r)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {r}: {e}", allow.display())))?;
    }
    Ok(Outcome::Allowed(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_devices_line() {
        let text = "12:pids:/x\n5:devices:/kubepods/pod1/abc\n0::/\n";
        assert_eq!(devices_cgroup(text), Some("/kubepods/pod1/abc"));
        assert_eq!(devices_cgroup("3:cpu,devices:/a:b\n"), Some("/a:b"));
        assert_eq!(devices_cgroup("0::/only-v2\n"), None);
    }

    #[test]
    fn rules_name_type_and_numbers() {
        assert_eq!(rule(libc::S_IFCHR, libc::makedev(195, 1)), "c 195:1 rwm");
        assert_eq!(rule(libc::S_IFBLK, libc::makedev(7, 0)), "b 7:0 rwm");
    }
}
