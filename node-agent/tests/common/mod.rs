//! What the node agent's gRPC tests share: a runtime whose server tasks run
//! beside the test's client, and a spec writer over two mock 8 GiB GPUs
//! (`GPU-fake-0`, `GPU-fake-1`), with state in `<work>/state` and specs in
//! `<work>/cdi`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use hami_cdi::builder::{Layout, DEFAULT_KIND};
use hami_cdi::discovery::{DiscoveredDevice, Inventory, NodeMapping, Vendor};
use hami_cdi::store::SpecStore;
use hami_node::device_plugin::SpecWriter;

pub fn mock_writer(work: &Path) -> Arc<SpecWriter> {
    Arc::new(SpecWriter {
        inventory: Inventory {
            vendor: Vendor::Mock,
            devices: (0..2)
                .map(|i| DiscoveredDevice {
                    index: i,
                    uuid: format!("GPU-fake-{i}"),
                    memory_bytes: 8192 << 20,
                    model: "Fake".into(),
                    nodes: vec![NodeMapping::same("/dev/null")],
                })
                .collect(),
            shared_nodes: vec![],
            env: BTreeMap::new(),
            mounts: vec![],
        },
        layout: Layout {
            kind: DEFAULT_KIND.into(),
            library: work.join("libhami_core.so"),
            state_dir: work.join("state"),
            hook: None,
        },
        store: SpecStore::new(work.join("cdi")),
    })
}

/// Two workers: the gRPC servers the test spawns answer while it awaits.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
