//! Runs a command to completion with a deadline, killing its whole process group
//! when the deadline passes, so a hung runtime cannot hang the test suite.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{KitError, Result};

/// Default deadline for one runtime invocation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Spawns `cmd` in its own process group, captures stdout and stderr, and waits at most `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let described = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(KitError::io(format!("spawn `{described}`")))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(KitError::io(format!("wait `{described}`")))?
        {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // Negative pid: the whole group, so runtime helpers (conmon, shims) die too.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(KitError::Timeout {
            command: described,
            seconds: timeout.as_secs(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }),
    }
}

/// Like [`run_with_timeout`], but a non-zero exit is an error carrying stderr.
pub fn run_checked(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let described = describe(cmd);
    let out = run_with_timeout(cmd, timeout)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(KitError::Failed {
            command: described,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Mount points under `dir` in this process's mount table, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let base = dir.to_string_lossy().into_owned();
    let mut targets: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&base))
        .map(str::to_owned)
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    targets
}

/// Lazily unmounts whatever a runtime left mounted under `dir`.
pub fn unmount_under(dir: &Path) {
    for t in mounts_under(dir) {
        let _ = Command::new("umount").arg("-l").arg(t).status();
    }
}

/// Starts `cmd` and returns once it has printed a line `ready` (the fake
/// GPU's test apps do, once their setup is done); its output is drained
/// from then on so it never blocks on a full pipe. Panics, with what it
/// printed, when it exits first.
pub fn spawn_until_ready(cmd: &mut Command) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawning the test process");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap_or_default();
        seen.push_str(&line);
        seen.push('\n');
        if line == "ready" {
            std::thread::spawn(move || lines.for_each(drop));
            return child;
        }
    }
    let status = child.wait();
    panic!("the process exited ({status:?}) before ready:\n{seen}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            DEFAULT_TIMEOUT,
        )
        .unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status.code(), Some(3));
        let err = run_checked(
            Command::new("sh").args(["-c", "echo boom >&2; exit 1"]),
            DEFAULT_TIMEOUT,
        )
        .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
    }

    #[test]
    fn kills_the_whole_group_on_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("grandchild-survived");
        // The grandchild would write the marker after 2 s unless the group kill reaches it.
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let started = Instant::now();
        let err = run_with_timeout(
            Command::new("sh").args(["-c", &script]),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(matches!(err, KitError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "grandchild outlived the timeout kill");
    }
}
