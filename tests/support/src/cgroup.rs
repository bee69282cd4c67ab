//! A cgroup parent private to one test, and its teardown.
//!
//! Every container a test starts goes under `/<unique parent>/…`, so teardown
//! knows exactly which cgroups and processes are its own: it kills the PIDs
//! listed in those cgroups and removes the directories, deepest first, in every
//! v1 controller hierarchy and in the unified one. Nothing else is touched.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug)]
pub struct CgroupParent {
    name: String,
}

impl CgroupParent {
    pub fn new() -> Self {
        Self {
            name: crate::unique_name("hami-testkit"),
        }
    }

    /// The path runtimes take (`cgroupsPath`, `--cgroup-parent`), e.g. `/hami-testkit-12-0-…`.
    pub fn path(&self) -> String {
        format!("/{}", self.name)
    }

    /// `cgroupsPath` for one container under this parent.
    pub fn child(&self, id: &str) -> String {
        format!("/{}/{id}", self.name)
    }

    /// The directories this parent occupies, one per hierarchy where it exists.
    pub fn existing_dirs(&self) -> Vec<PathBuf> {
        hierarchies()
            .into_iter()
            .map(|h| h.join(&self.name))
            .filter(|p| p.is_dir())
            .collect()
    }

    /// Kills every process left in this parent's cgroups and removes them.
    pub fn cleanup(&self) {
        for top in self.existing_dirs() {
            let mut dirs = Vec::new();
            collect_dirs(&top, &mut dirs);
            // Children before parents: rmdir fails on a cgroup with sub-cgroups.
            for dir in dirs.iter().rev() {
                kill_members(dir);
                remove_with_retry(dir);
            }
        }
    }
}

impl Default for CgroupParent {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn hierarchies() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(CGROUP_ROOT) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.is_symlink())
        .collect();
    // A pure v2 host mounts the unified hierarchy at the root itself.
    if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
        out.push(PathBuf::from(CGROUP_ROOT));
    }
    out
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let p = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&p, out);
            }
        }
    }
}

fn kill_members(dir: &Path) {
    let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs
        .lines()
        .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
    {
        if pid > 1 {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn remove_with_retry(dir: &Path) {
    // Killed members leave the cgroup asynchronously; give them a moment.
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => {
                kill_members(dir);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    eprintln!("hami-testkit: could not remove cgroup {}", dir.display());
}
