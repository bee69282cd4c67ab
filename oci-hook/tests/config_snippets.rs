//! The reference snippets in containerd-config/ are exactly what
//! `hami-oci-hook install` writes for a node with the default paths
//! (UPDATE_GOLDEN=1 rewrites them). The snippets themselves are exercised by
//! the runtime tests: podman_hooks_dir.rs and containerd_base_spec.rs run the
//! same files, written by `install` into a test directory.

use std::path::{Path, PathBuf};

use clap::Parser;
use hami_oci_hook::install::{plan, InstallArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    install: InstallArgs,
}

fn snippets_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../containerd-config")
}

fn check(name: &str, contents: &str) {
    let path = snippets_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, contents).unwrap();
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        contents, golden,
        "{name} differs from what install writes (UPDATE_GOLDEN=1 rewrites it)"
    );
}

/// Plans an install against a config file holding `existing`.
fn planned(runtime: &str, existing: Option<&str>) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    if let Some(text) = existing {
        std::fs::write(&config, text).unwrap();
    }
    let args = Cli::parse_from([
        "x",
        "--runtime",
        runtime,
        "--hook-path",
        "/usr/local/bin/hami-oci-hook",
        "--containerd-config",
        config.to_str().unwrap(),
        "--base-spec",
        "/etc/containerd/hami-base-spec.json",
    ])
    .install;
    plan(&args)
        .unwrap()
        .into_iter()
        .map(|p| {
            let name = p.path.file_name().unwrap().to_string_lossy().into_owned();
            (name, p.contents)
        })
        .collect()
}

#[test]
fn hooks_d_snippets() {
    for runtime in ["podman", "crio"] {
        for (name, contents) in planned(runtime, None) {
            check(&format!("hooks.d/{name}"), &contents);
        }
    }
}

#[test]
fn containerd_snippets() {
    for (version, existing) in [("1.7", "version = 2\n"), ("2.x", "version = 3\n")] {
        for (name, contents) in planned("containerd", Some(existing)) {
            match name.as_str() {
                "config.toml" => check(&format!("containerd-{version}.toml"), &contents),
                _ => check(&name, &contents),
            }
        }
    }
}
