//! The per-node lock `/bind` takes (`hami.io/mutex.lock` on the Node,
//! `RFC3339,namespace,pod`), over any store with optimistic concurrency.
//!
//! - A write names the resourceVersion it read; a concurrent writer makes
//!   it fail with a conflict, and the taker reads again (no lost updates).
//! - Contention backs off exponentially with jitter, up to a deadline.
//! - A lock older than its TTL, or held by a pod that no longer needs it
//!   (gone, or bound already), is taken over: a crashed binder never wedges
//!   a node.
//! - Release clears the lock only if the releaser still holds it.
//!
//! The lock is meant to be released when the node agent confirms the
//! allocation (`bind-phase` success or failed), not held through kubelet's
//! admission of the pod: that keeps the critical section to the binding
//! itself (controller/README.md).

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use hami_api::NodeLock;
use thiserror::Error;

use crate::simulate::SplitMix64;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LockError {
    /// The node changed since it was read.
    #[error("conflict")]
    Conflict,
    #[error("node {0} not found")]
    NotFound(String),
    #[error("API: {0}")]
    Api(String),
    #[error("node {node} is locked by {holder}; gave up after {waited:?}")]
    Timeout {
        node: String,
        holder: String,
        waited: Duration,
    },
}

/// What the store holds for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedNode {
    pub resource_version: String,
    /// The raw annotation value, if any.
    pub lock: Option<String>,
}

/// Where the lock lives: the Node object through the API server, or memory.
pub trait LockStore: Send + Sync {
    fn read(&self, node: &str) -> BoxFuture<'_, Result<LockedNode, LockError>>;
    /// Sets (`Some`) or clears (`None`) the lock if the node is still at
    /// `resource_version`; [`LockError::Conflict`] otherwise.
    fn write(
        &self,
        node: &str,
        resource_version: &str,
        lock: Option<String>,
    ) -> BoxFuture<'_, Result<(), LockError>>;
    /// Whether the pod that holds a lock still needs it.
    fn owner_needs_lock(
        &self,
        namespace: &str,
        pod: &str,
    ) -> BoxFuture<'_, Result<bool, LockError>>;
}

#[derive(Debug, Clone, Copy)]
pub struct LockPolicy {
    /// A lock older than this is taken over (HAMi: 5 minutes).
    pub ttl: Duration,
    /// How long to keep trying before giving up.
    pub deadline: Duration,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for LockPolicy {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            deadline: Duration::from_secs(10),
            first_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(500),
        }
    }
}

/// Takes `node`'s lock for pod `namespace/pod`. `now` is the wall clock
/// (lock stamps are wall-clock times); `seed` varies the jitter per caller.
pub async fn acquire(
    store: &dyn LockStore,
    node: &str,
    namespace: &str,
    pod: &str,
    policy: LockPolicy,
    now: impl Fn() -> DateTime<Utc>,
    seed: u64,
) -> Result<(), LockError> {
    let started = std::time::Instant::now();
    let mut rng = SplitMix64::new(seed);
    let mut backoff = policy.first_backoff;
    let ttl = chrono::Duration::from_std(policy.ttl).unwrap_or(chrono::Duration::MAX);
    let mut holder = String::new();
    loop {
        let current = store.read(node).await?;
        let free = match current.lock.as_deref() {
            None | Some("") => true,
            Some(value) => match NodeLock::decode(value) {
                // Ours already (a retried bind): nothing to take.
                Ok(l) if l.is_owned_by(namespace, pod) => return Ok(()),
                Ok(l) if l.is_expired(now(), ttl) => true,
                Ok(l) => match &l.owner {
                    Some(o) => !store.owner_needs_lock(&o.namespace, &o.name).await?,
                    // A bare timestamp has no owner to ask: only expiry frees it.
                    None => false,
                },
                // Garbage in the annotation protects nothing.
                Err(_) => true,
            },
        };
        if free {
            let value = NodeLock::new(now(), namespace, pod).encode();
            match store
                .write(node, &current.resource_version, Some(value))
                .await
            {
                Ok(()) => return Ok(()),
                Err(LockError::Conflict) => {}
                Err(e) => return Err(e),
            }
        } else {
            holder = current.lock.unwrap_or_default();
        }
        if started.elapsed() >= policy.deadline {
            return Err(LockError::Timeout {
                node: node.to_owned(),
                holder,
                waited: started.elapsed(),
            });
        }
        // Full jitter: a herd of binders spreads out instead of retrying in step.
        let jittered = backoff.mul_f64((rng.next_u64() % 1000) as f64 / 1000.0);
        tokio::time::sleep(jittered.max(Duration::from_millis(1))).await;
        backoff = (backoff * 2).min(policy.max_backoff);
    }
}

/// Clears `node`'s lock if pod `namespace/pod` holds it; a lock someone else
/// took over (after expiry) is left alone.
pub async fn release(
    store: &dyn LockStore,
    node: &str,
    namespace: &str,
    pod: &str,
) -> Result<bool, LockError> {
    loop {
        let current = store.read(node).await?;
        let ours = current
            .lock
            .as_deref()
            .and_then(|v| NodeLock::decode(v).ok())
            .is_some_and(|l| l.is_owned_by(namespace, pod));
        if !ours {
            return Ok(false);
        }
        match store.write(node, &current.resource_version, None).await {
            Ok(()) => return Ok(true),
            Err(LockError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// An in-memory store with the API server's optimistic concurrency, for
/// tests and the simulator.
#[derive(Debug, Default)]
pub struct MemoryLockStore {
    nodes: std::sync::Mutex<std::collections::HashMap<String, (u64, Option<String>)>>,
    /// Pods that hold or held a lock and still need it.
    pub live_owners: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

impl MemoryLockStore {
    pub fn with_nodes(names: &[&str]) -> Self {
        let store = Self::default();
        {
            let mut nodes = store.nodes.lock().expect("lock store");
            for n in names {
                nodes.insert((*n).to_owned(), (1, None));
            }
        }
        store
    }

    pub fn set_raw(&self, node: &str, lock: Option<String>) {
        let mut nodes = self.nodes.lock().expect("lock store");
        let entry = nodes.entry(node.to_owned()).or_insert((0, None));
        entry.0 += 1;
        entry.1 = lock;
    }

    pub fn raw(&self, node: &str) -> Option<String> {
        self.nodes
            .lock()
            .expect("lock store")
            .get(node)
            .and_then(|e| e.1.clone())
    }
}

impl LockStore for MemoryLockStore {
    fn read(&self, node: &str) -> BoxFuture<'_, Result<LockedNode, LockError>> {
        let r = self
            .nodes
            .lock()
            .expect("lock store")
            .get(node)
            .map(|(rv, lock)| LockedNode {
                resource_version: rv.to_string(),
                lock: lock.clone(),
            })
            .ok_or_else(|| LockError::NotFound(node.to_owned()));
        Box::pin(async move {
            // A round trip: other binders run between this read and the write
            // that follows it, as they would against an API server.
            tokio::task::yield_now().await;
            r
        })
    }

    fn write(
        &self,
        node: &str,
        resource_version: &str,
        lock: Option<String>,
    ) -> BoxFuture<'_, Result<(), LockError>> {
        let mut nodes = self.nodes.lock().expect("lock store");
        let r = match nodes.get_mut(node) {
            None => Err(LockError::NotFound(node.to_owned())),
            Some(entry) if entry.0.to_string() != resource_version => Err(LockError::Conflict),
            Some(entry) => {
                entry.0 += 1;
                entry.1 = lock;
                Ok(())
            }
        };
        Box::pin(async move { r })
    }

    fn owner_needs_lock(
        &self,
        namespace: &str,
        pod: &str,
    ) -> BoxFuture<'_, Result<bool, LockError>> {
        let alive = self
            .live_owners
            .lock()
            .expect("owners")
            .contains(&(namespace.to_owned(), pod.to_owned()));
        Box::pin(async move { Ok(alive) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn fixed_now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn quick() -> LockPolicy {
        LockPolicy {
            deadline: Duration::from_millis(200),
            ..LockPolicy::default()
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn take_hold_release() {
        rt().block_on(async {
            let s = MemoryLockStore::with_nodes(&["n1"]);
            acquire(&s, "n1", "default", "a", quick(), fixed_now, 1).await.unwrap();
            assert_eq!(s.raw("n1").as_deref(), Some("2026-11-23T06:00:00Z,default,a"));
            // Taking it again as the holder is a no-op (a retried bind).
            acquire(&s, "n1", "default", "a", quick(), fixed_now, 1).await.unwrap();
            // Someone else waits, then gives up naming the holder.
            s.live_owners.lock().unwrap().insert(("default".into(), "a".into()));
            let err = acquire(&s, "n1", "default", "b", quick(), fixed_now, 2).await.unwrap_err();
            assert!(matches!(err, LockError::Timeout { ref holder, .. } if holder.ends_with(",default,a")), "{err}");
            // Only the holder releases.
            assert!(!release(&s, "n1", "default", "b").await.unwrap());
            assert!(release(&s, "n1", "default", "a").await.unwrap());
            assert_eq!(s.raw("n1"), None);
            assert!(matches!(
                acquire(&s, "nope", "default", "a", quick(), fixed_now, 1).await,
                Err(LockError::NotFound(_))
            ));
        });
    }

    #[test]
    fn expired_dead_and_garbled_locks_are_taken_over() {
        rt().block_on(async {
            let s = MemoryLockStore::with_nodes(&["n1"]);
            for stale in [
                "2026-11-23T05:50:00Z,default,crashed", // older than 5 minutes
                "2026-11-23T05:59:59Z,default,gone",    // fresh, but its pod is gone
                "not a lock",
            ] {
                s.set_raw("n1", Some(stale.into()));
                acquire(&s, "n1", "default", "new", quick(), fixed_now, 3)
                    .await
                    .unwrap();
                assert!(s.raw("n1").unwrap().ends_with(",default,new"), "{stale}");
            }
            // A fresh bare timestamp has no owner to ask: it holds until it expires.
            s.set_raw("n1", Some("2026-11-23T05:59:59Z".into()));
            assert!(acquire(&s, "n1", "default", "new", quick(), fixed_now, 3)
                .await
                .is_err());
        });
    }

    /// 50 binders on one node at once: each gets the lock exactly when no one
    /// else holds it, and all of them get it eventually.
    #[test]
    fn fifty_concurrent_binds_are_mutually_exclusive() {
        rt().block_on(async {
            let store = Arc::new(MemoryLockStore::with_nodes(&["n1"]));
            let inside = Arc::new(AtomicUsize::new(0));
            let max_inside = Arc::new(AtomicUsize::new(0));
            let policy = LockPolicy {
                deadline: Duration::from_secs(20),
                first_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(20),
                ..LockPolicy::default()
            };
            let tasks: Vec<_> = (0..50)
                .map(|i| {
                    let (store, inside, max_inside) =
                        (store.clone(), inside.clone(), max_inside.clone());
                    tokio::spawn(async move {
                        let pod = format!("p{i}");
                        store
                            .live_owners
                            .lock()
                            .unwrap()
                            .insert(("default".into(), pod.clone()));
                        acquire(&*store, "n1", "default", &pod, policy, fixed_now, i)
                            .await
                            .unwrap();
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        max_inside.fetch_max(n, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        inside.fetch_sub(1, Ordering::SeqCst);
                        assert!(release(&*store, "n1", "default", &pod).await.unwrap());
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(
                max_inside.load(Ordering::SeqCst),
                1,
                "two binders held the lock at once"
            );
            assert_eq!(store.raw("n1"), None);
        });
    }
}
