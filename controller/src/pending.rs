//! The decisions `/filter` made and `/bind` has not yet carried out.
//!
//! `/bind` creates a Binding with the controller's own rights, so it must not
//! be a way for anyone who can reach the port to place any pod anywhere: a
//! bind is carried out only for a pod UID this controller filtered, onto the
//! node it chose for it (or, for a pod it passed through untouched, one of
//! the nodes it passed). A decision is used once and expires.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// kube-scheduler binds within seconds of filtering; far longer than that,
/// the pod has been re-filtered or deleted.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// More pending pods than any scheduler queue holds; beyond it the oldest go.
const MAX_PENDING: usize = 100_000;

/// Who hands the decided devices to the pod's containers, which decides
/// what `/bind` must wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// kubelet's Allocate on a device plugin, which answers `bind-phase`:
    /// the node lock is held until it does.
    DevicePlugin,
    /// The annotation hook, at container creation (Ascend `vnpu-mode:
    /// hami-core`): no Allocate will ever answer, so no node lock is taken
    /// and the bind phase is `success` as the pod is bound.
    Annotation,
    /// No devices (a pod passed through untouched): a plain Binding.
    Nothing,
}

#[derive(Debug)]
struct Pending {
    nodes: BTreeSet<String>,
    delivery: Delivery,
    at: Instant,
}

#[derive(Debug)]
pub struct PendingDecisions {
    ttl: Duration,
    by_uid: Mutex<HashMap<String, Pending>>,
}

impl Default for PendingDecisions {
    fn default() -> Self {
        Self::new(DEFAULT_TTL)
    }
}

/// Why a bind was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindRefused {
    #[error("pod UID {0:?}: this controller made no scheduling decision for it (or it expired); refusing to bind")]
    NoDecision(String),
    #[error("pod UID {uid:?}: this controller chose {chosen}, not {asked}; refusing to bind")]
    OtherNode {
        uid: String,
        chosen: String,
        asked: String,
    },
}

impl PendingDecisions {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            by_uid: Mutex::new(HashMap::new()),
        }
    }

    /// Records that `uid` may be bound to one of `nodes` (replacing an
    /// earlier decision for it: the scheduler filtered it again).
    pub fn record(&self, uid: &str, nodes: impl IntoIterator<Item = String>, delivery: Delivery) {
        if uid.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut map = self.by_uid.lock().expect("not poisoned");
        if map.len() >= MAX_PENDING {
            map.retain(|_, p| now.duration_since(p.at) < self.ttl);
            if map.len() >= MAX_PENDING {
                if let Some(oldest) = map.iter().min_by_key(|(_, p)| p.at).map(|(k, _)| k.clone()) {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(
            uid.to_owned(),
            Pending {
                nodes: nodes.into_iter().collect(),
                delivery,
                at: now,
            },
        );
    }

    /// Takes the decision for `uid` if it allows `node`, with how its devices
    /// are delivered; a refused bind leaves the decision in place
    /// (kube-scheduler may retry it).
    pub fn take(&self, uid: &str, node: &str) -> Result<Delivery, BindRefused> {
        let now = Instant::now();
        let mut map = self.by_uid.lock().expect("not poisoned");
        let Some(p) = map.get(uid) else {
            return Err(BindRefused::NoDecision(uid.to_owned()));
        };
        if now.duration_since(p.at) >= self.ttl {
            map.remove(uid);
            return Err(BindRefused::NoDecision(uid.to_owned()));
        }
        if !p.nodes.contains(node) {
            return Err(BindRefused::OtherNode {
                uid: uid.to_owned(),
                chosen: p.nodes.iter().cloned().collect::<Vec<_>>().join(", "),
                asked: node.to_owned(),
            });
        }
        let delivery = p.delivery;
        map.remove(uid);
        Ok(delivery)
    }

    /// Puts a taken decision back after a bind that failed on the API side.
    pub fn restore(&self, uid: &str, node: &str, delivery: Delivery) {
        self.record(uid, [node.to_owned()], delivery);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_binds_once_and_only_where_it_was_made() {
        let d = PendingDecisions::default();
        assert_eq!(
            d.take("u1", "n1"),
            Err(BindRefused::NoDecision("u1".into()))
        );
        d.record("u1", ["n1".to_owned()], Delivery::DevicePlugin);
        assert!(matches!(
            d.take("u1", "n2"),
            Err(BindRefused::OtherNode { .. })
        ));
        assert_eq!(d.take("u1", "n1"), Ok(Delivery::DevicePlugin));
        assert!(d.take("u1", "n1").is_err(), "used once");
        d.record("", ["n1".to_owned()], Delivery::DevicePlugin);
        assert!(d.take("", "n1").is_err(), "no UID, no decision");
    }

    #[test]
    fn decisions_expire() {
        let d = PendingDecisions::new(Duration::from_millis(0));
        d.record("u1", ["n1".to_owned()], Delivery::DevicePlugin);
        assert!(d.take("u1", "n1").is_err());
    }
}
