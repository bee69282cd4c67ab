//! What devices a node has and which files a container needs to use them.
//! One trait, three sources: NVIDIA (`/dev/nvidiaN`, plus NVML by dlopen when
//! present), Ascend (`/dev/davinciN`), and a mock inventory file for nodes
//! without hardware (the demo and the tests).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::spec::Mount;

#[derive(Debug, Error)]
pub enum DiscoveryError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mock inventory {path}: {reason}")]
    Inventory { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Nvidia,
    Ascend,
    /// A fake device from an inventory file; presented to the container like an NVIDIA GPU.
    Mock,
}

impl Vendor {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "nvidia" => Some(Self::Nvidia),
            "ascend" => Some(Self::Ascend),
            "mock" => Some(Self::Mock),
            _ => None,
        }
    }
}

/// A device file a container needs: where it appears inside, and its host path if different.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMapping {
    pub path: String,
    pub host_path: Option<String>,
}

impl NodeMapping {
    pub fn same(path: &str) -> Self {
        Self {
            path: path.to_owned(),
            host_path: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredDevice {
    pub index: u32,
    pub uuid: String,
    /// Device memory in bytes; 0 when unknown (no NVML).
    pub memory_bytes: u64,
    pub model: String,
    pub nodes: Vec<NodeMapping>,
}

/// Everything a vendor contributes to a container besides per-device quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub vendor: Vendor,
    pub devices: Vec<DiscoveredDevice>,
    /// Control nodes every container of this vendor needs (`/dev/nvidiactl`, …).
    pub shared_nodes: Vec<NodeMapping>,
    /// Extra environment (the mock driver's settings).
    pub env: BTreeMap<String, String>,
    pub mounts: Vec<Mount>,
}

impl Inventory {
    pub fn device(&self, index: u32) -> Option<&DiscoveredDevice> {
        self.devices.iter().find(|d| d.index == index)
    }
}

pub trait Discovery {
    fn inventory(&self) -> Result<Inventory, DiscoveryError>;
}

/// The discovery for a vendor name as given on a command line (`nvidia`,
/// `ascend`, `mock`); device nodes are looked up under `dev`, and `mock`
/// needs its inventory file.
pub fn for_vendor(
    vendor: &str,
    dev: &Path,
    inventory: Option<&Path>,
) -> Result<Box<dyn Discovery>, String> {
    match Vendor::parse(vendor) {
        Some(Vendor::Nvidia) => Ok(Box::new(NvidiaDiscovery { dev: dev.into() })),
        Some(Vendor::Ascend) => Ok(Box::new(AscendDiscovery { dev: dev.into() })),
        Some(Vendor::Mock) => match inventory {
            Some(path) => Ok(Box::new(MockDiscovery { path: path.into() })),
            None => Err("vendor mock needs an inventory file (--inventory FILE)".into()),
        },
        None => Err(format!(
            "vendor {vendor:?}: expected nvidia, ascend or mock"
        )),
    }
}

/// Numbered device files `<prefix>N` under `dev`, sorted by N.
fn numbered_nodes(dev: &Path, prefix: &str) -> Result<Vec<u32>, DiscoveryError> {
    let entries = match std::fs::read_dir(dev) {
        Ok(e) => e,
        Err(source) => {
            return Err(DiscoveryError::Read {
                path: dev.to_path_buf(),
                source,
            })
        }
    };
    let mut found: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix(prefix)?.parse().ok())
        .collect();
    found.sort_unstable();
    Ok(found)
}

fn existing(dev: &Path, names: &[&str]) -> Vec<NodeMapping> {
    names
        .iter()
        .filter(|n| dev.join(n).exists())
        .map(|n| NodeMapping::same(&format!("/dev/{n}")))
        .collect()
}

pub struct NvidiaDiscovery {
    pub dev: PathBuf,
}

impl Discovery for NvidiaDiscovery {
    fn inventory(&self) -> Result<Inventory, DiscoveryError> {
        let nvml = crate::nvml::Nvml::open();
        let devices = numbered_nodes(&self.dev, "nvidia")?
            .into_iter()
            .map(|index| {
                let info = nvml.as_ref().and_then(|n| n.device(index));
                DiscoveredDevice {
                    index,
                    uuid: info
                        .as_ref()
                        .map_or_else(|| format!("GPU-index-{index}"), |i| i.uuid.clone()),
                    memory_bytes: info.as_ref().map_or(0, |i| i.memory_bytes),
                    model: info.map_or_else(|| "NVIDIA".into(), |i| i.name),
                    nodes: vec![NodeMapping::same(&format!("/dev/nvidia{index}"))],
                }
            })
            .collect();
        Ok(Inventory {
            vendor: Vendor::Nvidia,
            devices,
            shared_nodes: existing(
                &self.dev,
                &[
                    "nvidiactl",
                    "nvidia-uvm",
                    "nvidia-uvm-tools",
                    "nvidia-modeset",
                ],
            ),
            env: BTreeMap::new(),
            mounts: Vec::new(),
        })
    }
}

pub struct AscendDiscovery {
    pub dev: PathBuf,
}

impl Discovery for AscendDiscovery {
    fn inventory(&self) -> Result<Inventory, DiscoveryError> {
        let devices = numbered_nodes(&self.dev, "davinci")?
            .into_iter()
            .map(|index| DiscoveredDevice {
                index,
                uuid: format!("Ascend-{index}"),
                memory_bytes: 0,
                model: "Ascend".into(),
                nodes: vec![NodeMapping::same(&format!("/dev/davinci{index}"))],
            })
            .collect();
        Ok(Inventory {
            vendor: Vendor::Ascend,
            devices,
            shared_nodes: existing(&self.dev, &["davinci_manager", "devmm_svm", "hisi_hdc"]),
            env: BTreeMap::new(),
            mounts: Vec::new(),
        })
    }
}

/// The mock inventory file (JSON):
///
/// ```json
/// { "devices": [ { "index": 0, "uuid": "GPU-…", "memoryMiB": 8192,
///                  "model": "Fake H100", "hostNode": "/dev/null" } ],
///   "env": { "FAKE_CUDA_STATE": "/run/hami/fake-gpu/state" },
///   "mounts": [ { "hostPath": "/var/lib/hami/fake-gpu", "containerPath": "/run/hami/fake-gpu" } ] }
/// ```
///
/// Each device appears in the container as `/dev/nvidiaN`, backed by `hostNode`.
pub struct MockDiscovery {
    pub path: PathBuf,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MockFile {
    devices: Vec<MockDevice>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    mounts: Vec<MockMount>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MockDevice {
    index: u32,
    uuid: String,
    #[serde(rename = "memoryMiB")]
    memory_mib: u64,
    #[serde(default = "default_model")]
    model: String,
    #[serde(default = "default_host_node")]
    host_node: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MockMount {
    host_path: String,
    container_path: String,
}

fn default_model() -> String {
    "Fake GPU".into()
}

fn default_host_node() -> String {
    "/dev/null".into()
}

impl Discovery for MockDiscovery {
    fn inventory(&self) -> Result<Inventory, DiscoveryError> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| DiscoveryError::Read {
            path: self.path.clone(),
            source,
        })?;
        let bad = |reason: String| DiscoveryError::Inventory {
            path: self.path.clone(),
            reason,
        };
        let file: MockFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut seen = std::collections::BTreeSet::new();
        let devices = file
            .devices
            .into_iter()
            .map(|d| {
                if !seen.insert(d.index) {
                    return Err(bad(format!("device index {} appears twice", d.index)));
                }
                let memory_bytes = d
                    .memory_mib
                    .checked_mul(1 << 20)
                    .ok_or_else(|| bad(format!("device {}: memoryMiB overflows", d.index)))?;
                Ok(DiscoveredDevice {
                    index: d.index,
                    uuid: d.uuid,
                    memory_bytes,
                    model: d.model,
                    nodes: vec![NodeMapping {
                        path: format!("/dev/nvidia{}", d.index),
                        host_path: Some(d.host_node),
                    }],
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Inventory {
            vendor: Vendor::Mock,
            devices,
            shared_nodes: Vec::new(),
            env: file.env,
            mounts: file
                .mounts
                .into_iter()
                .map(|m| Mount {
                    host_path: m.host_path,
                    container_path: m.container_path,
                    mount_type: None,
                    options: vec!["rbind".into(), "rw".into()],
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_and_ascend_nodes_are_found_by_name() {
        let dev = tempfile::tempdir().unwrap();
        for f in [
            "nvidia0",
            "nvidia1",
            "nvidiactl",
            "nvidia-uvm",
            "nvidia-caps",
            "davinci3",
            "davinci_manager",
        ] {
            std::fs::write(dev.path().join(f), "").unwrap();
        }
        let nv = NvidiaDiscovery {
            dev: dev.path().into(),
        }
        .inventory()
        .unwrap();
        assert_eq!(
            nv.devices.iter().map(|d| d.index).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(
            nv.shared_nodes
                .iter()
                .map(|n| n.path.as_str())
                .collect::<Vec<_>>(),
            vec!["/dev/nvidiactl", "/dev/nvidia-uvm"]
        );
        let asc = AscendDiscovery {
            dev: dev.path().into(),
        }
        .inventory()
        .unwrap();
        assert_eq!(asc.devices[0].nodes[0].path, "/dev/davinci3");
        assert_eq!(asc.shared_nodes[0].path, "/dev/davinci_manager");
    }

    #[test]
    fn mock_inventory_parses_and_rejects_junk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inv.json");
        std::fs::write(
            &path,
            r#"{"devices":[{"index":0,"uuid":"GPU-fake-0","memoryMiB":8192}],"env":{"FAKE_CUDA_TOTAL_MEMORY":"8g"}}"#,
        )
        .unwrap();
        let inv = MockDiscovery { path: path.clone() }.inventory().unwrap();
        assert_eq!(inv.devices[0].memory_bytes, 8 << 30);
        assert_eq!(
            inv.devices[0].nodes[0].host_path.as_deref(),
            Some("/dev/null")
        );
        for junk in [
            "{",
            r#"{"devices":[{"index":0,"uuid":"a","memoryMiB":1,"colour":"red"}]}"#,
            r#"{"devices":[{"index":0,"uuid":"a","memoryMiB":1},{"index":0,"uuid":"b","memoryMiB":1}]}"#,
            r#"{"devices":[{"index":0,"uuid":"a","memoryMiB":-1}]}"#,
        ] {
            std::fs::write(&path, junk).unwrap();
            let err = MockDiscovery { path: path.clone() }
                .inventory()
                .unwrap_err()
                .to_string();
            assert!(err.contains("inv.json"), "{err}");
        }
    }
}
