//! Generated specs against golden files (UPDATE_GOLDEN=1 rewrites them), and
//! every golden spec against the CDI project's own Rust implementation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hami_cdi::builder::{build, Allocation, Grant, Layout, DEFAULT_KIND};
use hami_cdi::discovery::{DiscoveredDevice, Inventory, NodeMapping, Vendor};
use hami_cdi::spec::Mount;

const GIB: u64 = 1 << 30;

fn layout(hook: bool) -> Layout {
    Layout {
        kind: DEFAULT_KIND.into(),
        library: "/usr/local/lib/hami/libhami_core.so".into(),
        state_dir: "/var/run/hami/vgpu".into(),
        hook: hook.then(|| PathBuf::from("/usr/local/bin/hami-oci-hook")),
    }
}

fn device(index: u32, uuid: &str, node: NodeMapping) -> DiscoveredDevice {
    DiscoveredDevice {
        index,
        uuid: uuid.into(),
        memory_bytes: 80 * GIB,
        model: "NVIDIA H100 80GB HBM3".into(),
        nodes: vec![node],
    }
}

fn nvidia() -> Inventory {
    Inventory {
        vendor: Vendor::Nvidia,
        devices: (0..2)
            .map(|i| {
                device(
                    i,
                    &format!("GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d144{i}"),
                    NodeMapping::same(&format!("/dev/nvidia{i}")),
                )
            })
            .collect(),
        shared_nodes: vec![
            NodeMapping::same("/dev/nvidiactl"),
            NodeMapping::same("/dev/nvidia-uvm"),
        ],
        env: BTreeMap::new(),
        mounts: vec![],
    }
}

fn mock() -> Inventory {
    Inventory {
        vendor: Vendor::Mock,
        devices: vec![DiscoveredDevice {
            memory_bytes: 8 * GIB,
            ..device(
                0,
                "GPU-fa4e0000-0000-4000-8000-000000000000",
                NodeMapping {
                    path: "/dev/nvidia0".into(),
                    host_path: Some("/dev/null".into()),
                },
            )
        }],
        shared_nodes: vec![],
        env: BTreeMap::from([("FAKE_CUDA_STATE".into(), "/run/hami/fake-gpu/state".into())]),
        mounts: vec![Mount {
            host_path: "/var/lib/hami/fake-gpu".into(),
            container_path: "/run/hami/fake-gpu".into(),
            mount_type: None,
            options: vec!["rbind".into(), "rw".into()],
        }],
    }
}

fn ascend() -> Inventory {
    Inventory {
        vendor: Vendor::Ascend,
        devices: vec![DiscoveredDevice {
            memory_bytes: 64 * GIB,
            model: "Ascend910B3".into(),
            ..device(0, "Ascend-0", NodeMapping::same("/dev/davinci0"))
        }],
        shared_nodes: ["davinci_manager", "devmm_svm", "hisi_hdc"]
            .map(|n| NodeMapping::same(&format!("/dev/{n}")))
            .to_vec(),
        env: BTreeMap::new(),
        mounts: vec![],
    }
}

fn grant(index: u32, gib: Option<u64>, cores: Option<u8>) -> Grant {
    Grant {
        index,
        memory_bytes: gib.map(|g| g * GIB),
        cores,
    }
}

/// (golden file, allocation, inventory, with hook)
fn cases() -> Vec<(&'static str, Allocation, Inventory, bool)> {
    let alloc = |name: &str, grants| Allocation {
        name: name.into(),
        grants,
    };
    vec![
        (
            "mock-2g-30.json",
            alloc("job1", vec![grant(0, Some(2), Some(30))]),
            mock(),
            false,
        ),
        (
            "nvidia-two-gpus.json",
            alloc(
                "train",
                vec![grant(0, Some(3), Some(50)), grant(1, Some(3), Some(50))],
            ),
            nvidia(),
            false,
        ),
        (
            "nvidia-whole-with-hook.json",
            alloc("infer", vec![grant(1, None, None)]),
            nvidia(),
            true,
        ),
        (
            "ascend-16g.json",
            alloc("npu-job", vec![grant(0, Some(16), Some(25))]),
            ascend(),
            false,
        ),
    ]
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn specs_match_the_golden_files() {
    for (file, alloc, inv, hook) in cases() {
        let spec = build(&alloc, &inv, &layout(hook)).unwrap();
        let text = serde_json::to_string_pretty(&spec).unwrap() + "\n";
        let path = golden_dir().join(file);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        assert_eq!(text, want, "{file} differs from its golden file");
    }
}

/// The CDI project's implementation accepts every golden spec and agrees on the
/// minimum version, and none needs more than podman 4.3's 0.5.0.
#[test]
fn the_cdi_reference_implementation_accepts_the_golden_specs() {
    let mut seen = 0;
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let ours: serde_json::Value = serde_json::from_str(&text).unwrap();
        let declared = ours["cdiVersion"].as_str().unwrap().to_owned();

        container_device_interface::spec::read_spec(&path, 0)
            .unwrap_or_else(|e| panic!("{} rejected by the CDI crate: {e:#}", path.display()));
        let theirs: container_device_interface::specs::config::Spec =
            serde_json::from_str(&text).unwrap();
        let minimum =
            container_device_interface::version::minimum_required_version(&theirs).unwrap();
        assert_eq!(minimum.to_string(), declared, "{}", path.display());
        assert!(
            ["0.3.0", "0.4.0", "0.5.0"].contains(&declared.as_str()),
            "{}: cdiVersion {declared} is more than podman 4.3 accepts",
            path.display()
        );
        seen += 1;
    }
    assert_eq!(seen, cases().len());
}
