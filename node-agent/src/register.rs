//! Node registration: the discovered devices in HAMi's register annotation
//! (split count, memory and cores after scaling, `NVIDIA-<model>`, NUMA,
//! health, mode), the handshake answered, and a patch only when something
//! the scheduler reads would change.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, FixedOffset};
use hami_api::{keys, node_register, DeviceInfo, Handshake, LinkScores};
use hami_cdi::discovery::{Inventory, Vendor};

#[derive(Debug, Clone, PartialEq)]
pub struct RegisterConfig {
    /// `devicePlugin.deviceSplitCount`: containers per device.
    pub split_count: u32,
    /// `deviceMemoryScaling`: above 1 oversubscribes memory.
    pub memory_scaling: f64,
    /// `deviceCoreScaling`.
    pub core_scaling: f64,
    /// The node allows Ascend hami-core mode (`hami-vnpu-core`).
    pub vnpu_core: bool,
    /// Keys for the family: register and handshake annotation names.
    pub register_key: String,
    pub handshake_key: String,
    /// Where the host's `/dev` is (device nodes named `/dev/...` are looked
    /// up there for health).
    pub dev_root: std::path::PathBuf,
}

impl Default for RegisterConfig {
    fn default() -> Self {
        Self {
            split_count: 10,
            memory_scaling: 1.0,
            core_scaling: 1.0,
            vnpu_core: false,
            register_key: keys::NODE_NVIDIA_REGISTER.into(),
            handshake_key: keys::NODE_NVIDIA_HANDSHAKE.into(),
            dev_root: "/dev".into(),
        }
    }
}

fn scaled(value: u64, factor: f64) -> i32 {
    let v = (value as f64 * factor).floor();
    if v.is_finite() && v > 0.0 {
        v.min(f64::from(i32::MAX)) as i32
    } else {
        0
    }
}

/// HAMi's device type: NVIDIA devices (and the mock, which presents as
/// one) are `NVIDIA-<model>`; Ascend keeps its chip name.
fn device_type(vendor: Vendor, model: &str) -> String {
    match vendor {
        Vendor::Ascend => model.to_owned(),
        Vendor::Nvidia | Vendor::Mock if model.starts_with("NVIDIA-") => model.to_owned(),
        Vendor::Nvidia | Vendor::Mock => format!("NVIDIA-{model}"),
    }
}

/// The pair scores of `infos` from a score matrix by device index (NVML's
/// order), as the annotation carries them: by UUID.
pub fn link_scores(infos: &[DeviceInfo], matrix: &[Vec<u32>]) -> LinkScores {
    let mut pairs = Vec::new();
    for a in infos {
        for b in infos {
            if a.index < b.index {
                let s = matrix
                    .get(a.index as usize)
                    .and_then(|row| row.get(b.index as usize))
                    .copied()
                    .unwrap_or(0);
                pairs.push((a.id.as_str(), b.id.as_str(), s));
            }
        }
    }
    LinkScores::from_pairs(pairs)
}

/// A device is healthy while every device node it needs is there.
fn healthy(inv: &Inventory, index: u32, dev_root: &Path) -> bool {
    inv.device(index).is_some_and(|d| {
        d.nodes
            .iter()
            .all(|n| match (&n.host_path, n.path.strip_prefix("/dev/")) {
                (Some(host), _) => Path::new(host).exists(),
                (None, Some(rest)) => dev_root.join(rest).exists(),
                (None, None) => Path::new(&n.path).exists(),
            })
    })
}

pub fn device_infos(inv: &Inventory, cfg: &RegisterConfig) -> Vec<DeviceInfo> {
    inv.devices
        .iter()
        .map(|d| DeviceInfo {
            id: d.uuid.clone(),
            index: d.index,
            count: i32::try_from(cfg.split_count).unwrap_or(i32::MAX),
            devmem: scaled(d.memory_bytes >> 20, cfg.memory_scaling),
            devcore: scaled(100, cfg.core_scaling),
            device_type: device_type(inv.vendor, &d.model),
            numa: 0,
            mode: node_register::DEFAULT_MODE.to_owned(),
            health: healthy(inv, d.index, &cfg.dev_root),
            ..DeviceInfo::default()
        })
        .collect()
}

/// The annotations to patch onto a node whose annotations are `current`,
/// for the devices `infos`; empty when nothing would change. The handshake
/// is answered when the scheduler asks (`Requesting_`), when it has given
/// the node up (`Deleted_`), or when there is none or it is unreadable.
pub fn reconcile(
    current: &BTreeMap<String, String>,
    infos: &[DeviceInfo],
    scores: Option<&LinkScores>,
    cfg: &RegisterConfig,
    now: DateTime<FixedOffset>,
) -> BTreeMap<String, String> {
    let mut patch = BTreeMap::new();
    if let Some(scores) = scores {
        let same = current
            .get(keys::NODE_NVIDIA_SCORE)
            .and_then(|v| LinkScores::decode(v).ok())
            .is_some_and(|old| old == *scores);
        if !same {
            patch.insert(keys::NODE_NVIDIA_SCORE.to_owned(), scores.encode());
        }
    }
    let register = node_register::encode(infos);
    let unchanged = current
        .get(&cfg.register_key)
        .and_then(|v| node_register::decode(v).ok())
        .is_some_and(|old| old == infos);
    if !unchanged {
        patch.insert(cfg.register_key.clone(), register);
    }
    let answered = current
        .get(&cfg.handshake_key)
        .and_then(|v| Handshake::decode(v).ok())
        .is_some_and(|h| matches!(h, Handshake::Reported(_)));
    if !answered || !unchanged {
        patch.insert(cfg.handshake_key.clone(), Handshake::Reported(now).encode());
    }
    let vnpu = cfg.vnpu_core.to_string();
    if current.get(keys::NODE_HAMI_VNPU_CORE) != Some(&vnpu)
        && (cfg.vnpu_core || current.contains_key(keys::NODE_HAMI_VNPU_CORE))
    {
        patch.insert(keys::NODE_HAMI_VNPU_CORE.to_owned(), vnpu);
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use hami_cdi::discovery::{DiscoveredDevice, NodeMapping};

    fn inventory() -> Inventory {
        Inventory {
            vendor: Vendor::Mock,
            devices: vec![
                DiscoveredDevice {
                    index: 0,
                    uuid: "GPU-fake-0".into(),
                    memory_bytes: 8192 << 20,
                    model: "Fake H100".into(),
                    nodes: vec![NodeMapping::same("/dev/null")],
                },
                DiscoveredDevice {
                    index: 1,
                    uuid: "GPU-fake-1".into(),
                    memory_bytes: 8192 << 20,
                    model: "NVIDIA-A10".into(),
                    nodes: vec![NodeMapping::same("/dev/hami-test-gone")],
                },
            ],
            shared_nodes: vec![],
            env: BTreeMap::new(),
            mounts: vec![],
        }
    }

    fn now() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2026-11-23T08:00:00+00:00").unwrap()
    }

    #[test]
    fn devices_are_registered_as_hami_reads_them() {
        let cfg = RegisterConfig {
            split_count: 4,
            memory_scaling: 1.5,
            ..RegisterConfig::default()
        };
        let infos = device_infos(&inventory(), &cfg);
        assert_eq!(
            node_register::encode(&infos),
            r#"[{"id":"GPU-fake-0","count":4,"devmem":12288,"devcore":100,"type":"NVIDIA-Fake H100","mode":"hami-core","health":true},{"id":"GPU-fake-1","index":1,"count":4,"devmem":12288,"devcore":100,"type":"NVIDIA-A10","mode":"hami-core"}]"#
        );
        // The missing device node makes device 1 unhealthy (omitempty drops false).
        assert!(infos[0].health && !infos[1].health);
        assert_eq!(scaled(100, f64::NAN), 0);
    }

    #[test]
    fn link_scores_are_written_once_and_by_uuid() {
        let cfg = RegisterConfig::default();
        let infos = device_infos(&inventory(), &cfg);
        let matrix = vec![vec![0, 1250], vec![1250, 0]];
        let scores = link_scores(&infos, &matrix);
        assert_eq!(scores.score("GPU-fake-0", "GPU-fake-1"), 1250);
        let p = reconcile(&BTreeMap::new(), &infos, Some(&scores), &cfg, now());
        let written = p[keys::NODE_NVIDIA_SCORE].clone();
        assert_eq!(LinkScores::decode(&written).unwrap(), scores);
        let mut current = p.clone();
        current.insert(
            keys::NODE_NVIDIA_HANDSHAKE.into(),
            Handshake::Reported(now()).encode(),
        );
        assert!(reconcile(&current, &infos, Some(&scores), &cfg, now()).is_empty());
        let changed = link_scores(&infos, &[vec![0, 10], vec![10, 0]]);
        assert_eq!(
            reconcile(&current, &infos, Some(&changed), &cfg, now())
                .keys()
                .collect::<Vec<_>>(),
            [keys::NODE_NVIDIA_SCORE]
        );
    }

    #[test]
    fn patches_only_what_changed() {
        let cfg = RegisterConfig::default();
        let infos = device_infos(&inventory(), &cfg);
        let register = node_register::encode(&infos);
        let reported = Handshake::Reported(now()).encode();
        let ann = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let reg = keys::NODE_NVIDIA_REGISTER;
        let hs = keys::NODE_NVIDIA_HANDSHAKE;
        // A fresh node: everything.
        let p = reconcile(&ann(&[]), &infos, None, &cfg, now());
        assert_eq!(p.keys().collect::<Vec<_>>(), [hs, reg]);
        assert_eq!(p[hs], "Reported 2026-11-23 08:00:00 +0000 +0000");
        // Registered and answered: nothing.
        assert!(reconcile(
            &ann(&[(reg, &register), (hs, &reported)]),
            &infos,
            None,
            &cfg,
            now()
        )
        .is_empty());
        // The scheduler asks: only the answer.
        let asked = ann(&[(reg, &register), (hs, "Requesting_2026-11-23 07:59:50")]);
        assert_eq!(
            reconcile(&asked, &infos, None, &cfg, now())
                .keys()
                .collect::<Vec<_>>(),
            [hs]
        );
        // Given up on, or garbled: answered again.
        for h in ["Deleted_2026-11-23 07:00:00", "whenever"] {
            let p = reconcile(
                &ann(&[(reg, &register), (hs, h)]),
                &infos,
                None,
                &cfg,
                now(),
            );
            assert_eq!(p.keys().collect::<Vec<_>>(), [hs], "{h}");
        }
        // A device turned unhealthy: the register changes.
        let mut sick = infos.clone();
        sick[0].health = false;
        let p = reconcile(
            &ann(&[(reg, &register), (hs, &reported)]),
            &sick,
            None,
            &cfg,
            now(),
        );
        assert!(p.contains_key(reg));
        // hami-vnpu-core is written when on, and corrected when it was on.
        let vnpu = RegisterConfig {
            vnpu_core: true,
            ..RegisterConfig::default()
        };
        let p = reconcile(
            &ann(&[(reg, &register), (hs, &reported)]),
            &infos,
            None,
            &vnpu,
            now(),
        );
        assert_eq!(
            p.get(keys::NODE_HAMI_VNPU_CORE).map(String::as_str),
            Some("true")
        );
        let was_on = ann(&[
            (reg, &register),
            (hs, &reported),
            (keys::NODE_HAMI_VNPU_CORE, "true"),
        ]);
        assert_eq!(
            reconcile(&was_on, &infos, None, &cfg, now())[keys::NODE_HAMI_VNPU_CORE],
            "false"
        );
    }
}

/// One round against the API server: read the node, patch what changed.
/// Returns whether a patch was sent.
pub async fn register_once(
    nodes: &kube::Api<k8s_openapi::api::core::v1::Node>,
    node: &str,
    infos: &[DeviceInfo],
    scores: Option<&LinkScores>,
    cfg: &RegisterConfig,
    now: DateTime<FixedOffset>,
) -> Result<bool, kube::Error> {
    let current = nodes.get(node).await?;
    let annotations = current.metadata.annotations.unwrap_or_default();
    let patch = reconcile(&annotations, infos, scores, cfg, now);
    if patch.is_empty() {
        return Ok(false);
    }
    let body = serde_json::json!({"metadata": {"annotations": patch}});
    nodes
        .patch(
            node,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&body),
        )
        .await?;
    Ok(true)
}

#[cfg(test)]
mod api_tests {
    use super::*;
    use hami_kube_mock::{next, respond};
    use serde_json::{json, Value};

    /// Three rounds, call by call: a new node is registered and answered;
    /// an unchanged one is only read; a Requesting_ stamp gets exactly the
    /// handshake answer.
    #[test]
    fn the_calls_of_three_rounds() {
        hami_kube_mock::block_on(async {
            let (client, mut handle) = hami_kube_mock::pair("default");
            let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
            let cfg = RegisterConfig::default();
            let infos = vec![DeviceInfo {
                id: "GPU-a".into(),
                count: 10,
                devmem: 8192,
                devcore: 100,
                device_type: "NVIDIA-T4".into(),
                mode: "hami-core".into(),
                health: true,
                ..DeviceInfo::default()
            }];
            let register = node_register::encode(&infos);
            let now = DateTime::parse_from_rfc3339("2026-11-23T08:00:00+00:00").unwrap();
            let reported = Handshake::Reported(now).encode();
            let node = |ann: Value| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "annotations": ann}});
            let (reg2, rep2) = (register.clone(), reported.clone());
            let server = tokio::spawn(async move {
                let (m, uri, _, send) = next(&mut handle).await;
                assert_eq!((m, uri.as_str()), (http::Method::GET, "/api/v1/nodes/n1"));
                respond(send, 200, node(json!({})));
                let (m, uri, body, send) = next(&mut handle).await;
                assert_eq!(m, http::Method::PATCH);
                assert!(uri.starts_with("/api/v1/nodes/n1?"), "{uri}");
                assert_eq!(
                    body,
                    json!({"metadata": {"annotations": {
                            "hami.io/node-handshake": rep2, "hami.io/node-nvidia-register": reg2}}})
                );
                respond(send, 200, node(body["metadata"]["annotations"].clone()));
                // Round 2: the node shows both; only a read.
                let (m, _, _, send) = next(&mut handle).await;
                assert_eq!(m, http::Method::GET);
                respond(
                    send,
                    200,
                    node(
                        json!({"hami.io/node-handshake": rep2, "hami.io/node-nvidia-register": reg2}),
                    ),
                );
                // Round 3: the scheduler asks.
                let (_, _, _, send) = next(&mut handle).await;
                respond(
                    send,
                    200,
                    node(
                        json!({"hami.io/node-handshake": "Requesting_2026-11-23 07:59:59", "hami.io/node-nvidia-register": reg2}),
                    ),
                );
                let (m, _, body, send) = next(&mut handle).await;
                assert_eq!(m, http::Method::PATCH);
                assert_eq!(
                    body,
                    json!({"metadata": {"annotations": {"hami.io/node-handshake": rep2}}})
                );
                respond(send, 200, node(json!({})));
            });
            assert!(register_once(&nodes, "n1", &infos, None, &cfg, now)
                .await
                .unwrap());
            assert!(!register_once(&nodes, "n1", &infos, None, &cfg, now)
                .await
                .unwrap());
            assert!(register_once(&nodes, "n1", &infos, None, &cfg, now)
                .await
                .unwrap());
            server.await.unwrap();
            let _ = (register, reported);
        });
    }
}
