//! The controller's seal on a scheduling decision: HMAC-SHA256, keyed by a
//! secret only the controller and the node agents hold, over the pod's UID,
//! the chosen node, and each allocation annotation (key and value).
//!
//! Annotations are written through the API server, where a pod author may
//! write them too. A seal turns "this pod says it was given GPU-x" into "the
//! controller gave this very pod GPU-x on this node": the node agent answers
//! Allocate only for a sealed decision, and the controller counts only sealed
//! allocations as usage, whether or not the admission webhook is installed.

use std::path::Path;

use ring::hmac;
use thiserror::Error;

use crate::keys;

/// Shorter keys are guessable; the chart's key is 32 random bytes (hex).
pub const MIN_KEY_BYTES: usize = 32;
/// The seal's format version, part of what is signed.
const VERSION: &str = "hami-decision-v1";

#[derive(Debug, Error)]
pub enum SealError {
    #[error("decision key {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("decision key {path}: {len} bytes, at least {MIN_KEY_BYTES} are needed")]
    TooShort { path: String, len: usize },
}

/// The shared secret.
#[derive(Clone)]
pub struct DecisionKey(hmac::Key);

impl std::fmt::Debug for DecisionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DecisionKey(…)")
    }
}

impl DecisionKey {
    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The key file (a Secret's data, mounted), surrounding whitespace trimmed.
    pub fn from_file(path: &Path) -> Result<Self, SealError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| SealError::Read {
            path: name.clone(),
            source,
        })?;
        let secret = bytes.trim_ascii();
        if secret.len() < MIN_KEY_BYTES {
            return Err(SealError::TooShort {
                path: name,
                len: secret.len(),
            });
        }
        Ok(Self::new(secret))
    }

    /// The seal of a decision: `allocations` are the (annotation key,
    /// value) pairs of the decision, in any order.
    pub fn seal(&self, pod_uid: &str, node: &str, allocations: &[(&str, &str)]) -> String {
        let tag = hmac::sign(&self.0, &message(pod_uid, node, allocations));
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `seal` is this key's seal of the decision (constant time).
    pub fn verify(
        &self,
        seal: &str,
        pod_uid: &str,
        node: &str,
        allocations: &[(&str, &str)],
    ) -> bool {
        let Some(tag) = from_hex(seal) else {
            return false;
        };
        hmac::verify(&self.0, &message(pod_uid, node, allocations), &tag).is_ok()
    }
}

impl DecisionKey {
    /// The seal of the decision written in `annotations` (the pod's, or the
    /// ones about to be written) for `pod_uid` on `node`.
    pub fn seal_annotations(
        &self,
        pod_uid: &str,
        node: &str,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> String {
        self.seal(pod_uid, node, &decision_pairs(annotations))
    }

    /// Checks a pod's own annotations: its decision must carry this key's
    /// seal for its UID and its `hami.io/vgpu-node`.
    pub fn check_pod(
        &self,
        pod_uid: &str,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), String> {
        let seal = annotations.get(keys::DECISION_SEAL).ok_or_else(|| {
            format!(
                "no {} annotation: not a decision of this scheduler",
                keys::DECISION_SEAL
            )
        })?;
        let node = annotations.get(keys::VGPU_NODE).map_or("", String::as_str);
        if self.verify(seal, pod_uid, node, &decision_pairs(annotations)) {
            Ok(())
        } else {
            Err(format!(
                "{} does not match the pod's UID, node and allocation: the decision was not made (or was changed) outside this scheduler",
                keys::DECISION_SEAL
            ))
        }
    }
}

fn decision_pairs(annotations: &std::collections::BTreeMap<String, String>) -> Vec<(&str, &str)> {
    annotations
        .iter()
        .filter(|(k, _)| keys::is_sealed_decision_key(k))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Length-prefixed fields, so no two decisions sign the same bytes.
fn message(pod_uid: &str, node: &str, allocations: &[(&str, &str)]) -> Vec<u8> {
    let mut sorted = allocations.to_vec();
    sorted.sort_unstable();
    let mut out = Vec::new();
    let mut field = |s: &str| {
        out.extend_from_slice(&(s.len() as u64).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    field(VERSION);
    field(pod_uid);
    field(node);
    for (k, v) in sorted {
        field(k);
        field(v);
    }
    out
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOC: (&str, &str) = ("hami.io/vgpu-devices-to-allocate", "GPU-a,NVIDIA,3000,30:;");

    #[test]
    fn a_seal_holds_for_exactly_its_decision() {
        let key = DecisionKey::new(&[7; 32]);
        let seal = key.seal("uid-1", "node-a", &[ALLOC]);
        assert_eq!(seal.len(), 64);
        assert!(key.verify(&seal, "uid-1", "node-a", &[ALLOC]));
        // Another pod, node, device or key: not sealed.
        assert!(!key.verify(&seal, "uid-2", "node-a", &[ALLOC]));
        assert!(!key.verify(&seal, "uid-1", "node-b", &[ALLOC]));
        let bigger = (ALLOC.0, "GPU-a,NVIDIA,80000,100:;");
        assert!(!key.verify(&seal, "uid-1", "node-a", &[bigger]));
        assert!(!DecisionKey::new(&[8; 32]).verify(&seal, "uid-1", "node-a", &[ALLOC]));
        // Field boundaries are part of what is signed.
        assert!(!key.verify(&seal, "uid-1node-a", "", &[ALLOC]));
        for garbage in ["", "zz", &seal[..62], &"0".repeat(64)] {
            assert!(
                !key.verify(garbage, "uid-1", "node-a", &[ALLOC]),
                "{garbage}"
            );
        }
        // The order the annotations are read in does not matter.
        let other = ("hami.io/vgpu-devices-allocated", ALLOC.1);
        let two = key.seal("u", "n", &[ALLOC, other]);
        assert!(key.verify(&two, "u", "n", &[other, ALLOC]));
    }

    #[test]
    fn a_pods_annotations_are_checked_as_a_whole() {
        let key = DecisionKey::new(&[7; 32]);
        let mut ann: std::collections::BTreeMap<String, String> = [
            (ALLOC.0, ALLOC.1),
            ("hami.io/vgpu-devices-allocated", ALLOC.1),
            ("hami.io/container-names", "app"),
            ("hami.io/vgpu-node", "node-a"),
            ("nvidia.com/use-gputype", "A100"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let seal = key.seal_annotations("uid-1", "node-a", &ann);
        let err = key.check_pod("uid-1", &ann).unwrap_err();
        assert!(err.contains("no hami.io/decision-seal"), "{err}");
        ann.insert(keys::DECISION_SEAL.into(), seal);
        key.check_pod("uid-1", &ann).unwrap();
        // Written later by /bind and the node agent: not sealed.
        ann.insert(keys::BIND_PHASE.into(), "success".into());
        ann.insert(keys::BIND_TIME.into(), "0".into());
        key.check_pod("uid-1", &ann).unwrap();
        assert!(key.check_pod("uid-2", &ann).is_err());
        ann.insert(
            "hami.io/vgpu-devices-allocated".into(),
            "GPU-b,NVIDIA,3000,30:;".into(),
        );
        assert!(key.check_pod("uid-1", &ann).is_err());
    }

    #[test]
    fn key_files_must_hold_enough_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(
            DecisionKey::from_file(&path),
            Err(SealError::TooShort { len: 5, .. })
        ));
        std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        assert!(DecisionKey::from_file(&path).is_ok());
        assert!(DecisionKey::from_file(&dir.path().join("missing")).is_err());
    }
}
