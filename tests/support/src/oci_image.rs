//! An OCI image archive made from a rootfs directory, for runtimes that only
//! run images (containerd's CRI plugin): one uncompressed layer, a config with
//! the given command, and an index naming the image, as `ctr images import`
//! reads it. No registry is involved.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::process::{run_checked, DEFAULT_TIMEOUT};
use crate::{KitError, Result};

/// `sha256:<hex>` and the size of a file.
fn digest(path: &Path) -> Result<(String, u64)> {
    let out = run_checked(Command::new("sha256sum").arg(path), DEFAULT_TIMEOUT)?;
    let hex = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    let size = fs::metadata(path)
        .map_err(KitError::io(format!("stat {}", path.display())))?
        .len();
    Ok((format!("sha256:{hex}"), size))
}

/// Stores `path` as a blob of the layout in `dir`; returns its descriptor parts.
fn add_blob(dir: &Path, path: &Path) -> Result<(String, u64)> {
    let (digest, size) = digest(path)?;
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(KitError::io("create blobs"))?;
    let hex = digest.trim_start_matches("sha256:");
    fs::rename(path, blobs.join(hex)).map_err(KitError::io("move blob"))?;
    Ok((digest, size))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    fs::write(path, value.to_string()).map_err(KitError::io(format!("write {}", path.display())))
}

/// Writes `<work>/image.tar`: the image `name` (e.g. `hami.local/busybox:test`)
/// whose single layer is `rootfs` and whose command is `cmd`.
pub fn archive(rootfs: &Path, name: &str, cmd: &[&str], work: &Path) -> Result<PathBuf> {
    let layout = work.join("oci-layout-dir");
    fs::create_dir_all(&layout).map_err(KitError::io("create layout"))?;
    let layer = work.join("layer.tar");
    run_checked(
        Command::new("tar")
            .args(["--numeric-owner", "-C"])
            .arg(rootfs)
            .arg("-cf")
            .arg(&layer)
            .arg("."),
        DEFAULT_TIMEOUT,
    )?;
    let (layer_digest, layer_size) = add_blob(&layout, &layer)?;
    let config = work.join("config.json");
    write_json(
        &config,
        &json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
        }),
    )?;
    let (config_digest, config_size) = add_blob(&layout, &config)?;
    let manifest = work.join("manifest.json");
    write_json(
        &manifest,
        &json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": layer_size}]
        }),
    )?;
    let (manifest_digest, manifest_size) = add_blob(&layout, &manifest)?;
    write_json(
        &layout.join("index.json"),
        &json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": manifest_digest, "size": manifest_size,
                           "annotations": {"io.containerd.image.name": name,
                                           "org.opencontainers.image.ref.name": name}}]
        }),
    )?;
    write_json(
        &layout.join("oci-layout"),
        &json!({"imageLayoutVersion": "1.0.0"}),
    )?;
    let out = work.join("image.tar");
    run_checked(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&out)
            .arg("."),
        DEFAULT_TIMEOUT,
    )?;
    Ok(out)
}
