//! Host directories the hook writes as root (its state and its log).
//!
//! Whoever can write such a directory, or any directory above it, can swap
//! its contents for a symlink and make root write where they choose, or
//! rewrite a container's limits file and lift its quota. So the hook only
//! uses a directory that root owns and that nobody else can write, all the
//! way up (a sticky directory such as `/tmp` is allowed above it: others
//! cannot rename what root put there).

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

/// Creates `dir` (mode 0755) if it is missing, then checks it and every
/// directory above it.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    if !dir.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: the hook's directories must be absolute", dir.display()),
        ));
    }
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?,
        Err(e) => return Err(e),
    }
    check_dir(dir)
}

/// Checks an existing directory and its ancestors.
pub fn check_dir(dir: &Path) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() };
    let refuse = |path: &Path, why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: {why}; the hook will not write there", path.display()),
        ))
    };
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return refuse(dir, "is a symlink".into());
    }
    if !meta.is_dir() {
        return refuse(dir, "is not a directory".into());
    }
    for (i, path) in dir.ancestors().enumerate() {
        let meta = std::fs::metadata(path)?;
        if meta.uid() != root {
            return refuse(path, format!("is owned by uid {}, not root", meta.uid()));
        }
        let writable_by_others = meta.mode() & 0o022 != 0;
        let sticky = meta.mode() & 0o1000 != 0;
        if writable_by_others && (i == 0 || !sticky) {
            return refuse(
                path,
                format!(
                    "is writable by group or others (mode {:o})",
                    meta.mode() & 0o7777
                ),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn creates_a_private_directory() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b/state");
        ensure_dir(&state).unwrap();
        let mode = std::fs::metadata(&state).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o755, "{mode:o}");
    }

    #[test]
    fn refuses_writable_symlinked_or_foreign_directories() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        chmod(&state, 0o777);
        let err = ensure_dir(&state).unwrap_err().to_string();
        assert!(err.contains("writable by group or others"), "{err}");
        // A sticky, world-writable directory is no better as the state dir itself.
        chmod(&state, 0o1777);
        assert!(ensure_dir(&state).is_err());
        chmod(&state, 0o755);
        ensure_dir(&state).unwrap();
        // A writable parent lets anyone rename the state dir away.
        chmod(dir.path(), 0o777);
        let err = ensure_dir(&state).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        chmod(dir.path(), 0o700);

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&state, &link).unwrap();
        let err = ensure_dir(&link).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");

        let owned = dir.path().join("owned");
        std::fs::create_dir(&owned).unwrap();
        std::os::unix::fs::chown(&owned, Some(1000), Some(1000)).unwrap();
        let err = ensure_dir(&owned).unwrap_err().to_string();
        assert!(err.contains("uid 1000"), "{err}");
    }
}
