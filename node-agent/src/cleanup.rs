//! Removing what deleted pods leave behind: the device plugin's allocations
//! (`owner.json` names their pod) whose pod is gone or finished lose their
//! CDI spec, state and region. Allocations without an owner (the OCI hook's
//! `ctr-<id>`, cleaned by its poststop stage) and DRA claims (cleaned by
//! NodeUnprepareResources) are left alone.

use std::path::Path;

use futures_util::future::BoxFuture;

use crate::device_plugin::SpecWriter;
use crate::monitor::Owner;

/// Whether a pod still needs its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// Exists and has not finished.
    Live,
    /// Deleted, or Succeeded/Failed.
    Gone,
}

pub trait PodLookup: Send + Sync {
    fn state(&self, namespace: &str, name: &str) -> BoxFuture<'static, Result<PodState, String>>;
}

/// Removes the allocations of gone pods under the writer's state directory;
/// returns their names. A lookup error keeps the allocation (it is retried
/// on the next sweep: removing a live pod's region would break it).
pub async fn sweep(writer: &SpecWriter, pods: &dyn PodLookup) -> Vec<String> {
    let dir = &writer.layout.state_dir;
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && !n.starts_with("claim-") && !n.starts_with("ctr-"))
        .collect();
    names.sort();
    for name in names {
        let Some(owner) = read_owner(&dir.join(&name)) else {
            continue;
        };
        if owner.pod.is_empty() {
            continue;
        }
        match pods.state(&owner.namespace, &owner.pod).await {
            Ok(PodState::Gone) => match writer.remove(&name) {
                Ok(()) => removed.push(name),
                Err(e) => tracing::warn!("removing allocation {name}: {e}"),
            },
            Ok(PodState::Live) => {}
            Err(e) => tracing::warn!("allocation {name}: {e}; kept"),
        }
    }
    removed
}

fn read_owner(dir: &Path) -> Option<Owner> {
    crate::monitor::read_owner_if_any(dir).ok().flatten()
}

/// Pods from the API server: 404 or a finished phase is gone.
pub struct KubePodLookup(pub kube::Client);

impl PodLookup for KubePodLookup {
    fn state(&self, namespace: &str, name: &str) -> BoxFuture<'static, Result<PodState, String>> {
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(self.0.clone(), namespace);
        let name = name.to_owned();
        Box::pin(async move {
            match api.get_opt(&name).await {
                Ok(None) => Ok(PodState::Gone),
                Ok(Some(p)) => {
                    let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
                    Ok(if phase == "Succeeded" || phase == "Failed" {
                        PodState::Gone
                    } else {
                        PodState::Live
                    })
                }
                Err(e) => Err(format!("reading pod {name}: {e}")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_plugin::DeviceQuota;
    use hami_cdi::builder::{Layout, DEFAULT_KIND};
    use hami_cdi::discovery::{DiscoveredDevice, Inventory, NodeMapping, Vendor};
    use hami_cdi::store::SpecStore;
    use std::collections::BTreeMap;

    struct Lookup(BTreeMap<String, Result<PodState, String>>);

    impl PodLookup for Lookup {
        fn state(
            &self,
            namespace: &str,
            name: &str,
        ) -> BoxFuture<'static, Result<PodState, String>> {
            let r = self
                .0
                .get(&format!("{namespace}/{name}"))
                .cloned()
                .unwrap_or(Ok(PodState::Gone));
            Box::pin(async move { r })
        }
    }

    #[test]
    fn gone_pods_lose_their_specs_and_state() {
        let work = tempfile::tempdir().unwrap();
        let writer = SpecWriter {
            inventory: Inventory {
                vendor: Vendor::Mock,
                devices: vec![DiscoveredDevice {
                    index: 0,
                    uuid: "GPU-0".into(),
                    memory_bytes: 8 << 30,
                    model: "Fake".into(),
                    nodes: vec![NodeMapping::same("/dev/null")],
                }],
                shared_nodes: vec![],
                env: BTreeMap::new(),
                mounts: vec![],
            },
            layout: Layout {
                kind: DEFAULT_KIND.into(),
                library: work.path().join("lib.so"),
                state_dir: work.path().join("state"),
                hook: None,
            },
            store: SpecStore::new(work.path().join("cdi")),
        };
        let quota = [DeviceQuota {
            uuid: "GPU-0".into(),
            memory_bytes: 1 << 30,
            cores: 0,
        }];
        for (name, pod) in [
            ("ns_live_c", "live"),
            ("ns_done_c", "done"),
            ("ns_unsure_c", "unsure"),
            ("ns_deleted_c", "deleted"),
        ] {
            let owner = Owner {
                namespace: "ns".into(),
                pod: pod.into(),
                container: "c".into(),
                devices: vec!["GPU-0".into()],
                pod_uid: String::new(),
            };
            writer.prepare(name, &quota, &owner).unwrap();
        }
        // The hook's and DRA's allocations are not ours to sweep.
        for other in ["ctr-abc", "claim-uid"] {
            std::fs::create_dir_all(work.path().join("state").join(other)).unwrap();
        }
        let lookup = Lookup(
            [
                ("ns/live".to_owned(), Ok(PodState::Live)),
                ("ns/done".to_owned(), Ok(PodState::Gone)),
                (
                    "ns/unsure".to_owned(),
                    Err("API server unreachable".to_owned()),
                ),
            ]
            .into_iter()
            .collect(),
        );
        let removed = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(sweep(&writer, &lookup));
        assert_eq!(removed, ["ns_deleted_c", "ns_done_c"]);
        let left: Vec<String> = {
            let mut v: Vec<String> = std::fs::read_dir(work.path().join("state"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect();
            v.sort();
            v
        };
        assert_eq!(left, ["claim-uid", "ctr-abc", "ns_live_c", "ns_unsure_c"]);
        assert!(!work.path().join("cdi/hami.io-vgpu_ns_done_c.json").exists());
        assert!(work.path().join("cdi/hami.io-vgpu_ns_live_c.json").exists());
    }
}
