//! Skip-or-fail policy for tests that need root or real runtime binaries.
//!
//! Locally a missing runtime skips the test with a message on stderr (written to
//! the real stderr, which the test harness does not capture). Under
//! `HAMI_TEST_REQUIRE_RUNTIMES=1`, which `hack/test.sh` and so CI set, a missing
//! prerequisite fails the test instead: CI must never pass by skipping.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Set to `1` to turn every skip into a failure.
pub const REQUIRE_ENV: &str = "HAMI_TEST_REQUIRE_RUNTIMES";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Effective uid 0 (mounts, cgroups, runtimes).
    Root,
    /// An executable on `PATH`.
    Binary(&'static str),
}

impl Need {
    fn missing(&self) -> Option<String> {
        match self {
            Need::Root => (unsafe { libc::geteuid() } != 0).then(|| "root privileges".to_owned()),
            Need::Binary(name) => find_binary(name)
                .is_none()
                .then(|| format!("`{name}` on PATH")),
        }
    }
}

/// The absolute path of `name` on `PATH`, if it is there and executable.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn strict() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// Returns true when every need is met. Otherwise prints a visible SKIP line and
/// returns false, or panics under [`REQUIRE_ENV`].
pub fn require(test: &str, needs: &[Need]) -> bool {
    let missing: Vec<String> = needs.iter().filter_map(Need::missing).collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!("SKIP {test}: needs {}", missing.join(", "));
    assert!(!strict(), "{message} ({REQUIRE_ENV}=1 forbids skipping)");
    let _ = writeln!(std::io::stderr(), "{message}");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_not_nonsense() {
        assert!(find_binary("sh").is_some());
        assert!(find_binary("hami-no-such-binary-xyz").is_none());
        assert!(Need::Binary("hami-no-such-binary-xyz").missing().is_some());
    }
}
