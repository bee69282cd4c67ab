//! The per-node lock value (`hami.io/mutex.lock`): `RFC3339,namespace,pod`.
//!
//! HAMi releases a lock only when its value ends with `,namespace,pod` of the
//! releasing pod, and treats a bare timestamp (written by old versions, or when no
//! pod was known) as an ownerless lock that only expiry can clear.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NodeLockError {
    #[error("node lock {value:?}: field `time`: {reason}")]
    Time { value: String, reason: String },
    #[error("node lock {value:?}: expected `RFC3339,namespace,pod`, found {found} comma-separated parts")]
    Parts { value: String, found: usize },
    #[error("node lock {value:?}: field `{field}` is empty")]
    EmptyOwner { value: String, field: &'static str },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLock {
    /// Second precision, as Go's `time.RFC3339` layout writes it.
    pub locked_at: DateTime<Utc>,
    pub owner: Option<PodRef>,
}

impl NodeLock {
    pub fn new(locked_at: DateTime<Utc>, namespace: &str, name: &str) -> Self {
        Self {
            locked_at: truncate_to_seconds(locked_at),
            owner: Some(PodRef {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
        }
    }

    pub fn decode(value: &str) -> Result<Self, NodeLockError> {
        let parts: Vec<&str> = value.split(',').collect();
        let time = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| NodeLockError::Time {
                    value: value.to_owned(),
                    reason: format!("{text:?} is not an RFC3339 timestamp ({e})"),
                })
        };
        match parts[..] {
            [ts] => Ok(Self {
                locked_at: time(ts)?,
                owner: None,
            }),
            [ts, namespace, name] => {
                for (field, v) in [("namespace", namespace), ("pod", name)] {
                    if v.is_empty() {
                        return Err(NodeLockError::EmptyOwner {
                            value: value.to_owned(),
                            field,
                        });
                    }
                }
                Ok(Self {
                    locked_at: time(ts)?,
                    owner: Some(PodRef {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                    }),
                })
            }
            _ => Err(NodeLockError::Parts {
                value: value.to_owned(),
                found: parts.len(),
            }),
        }
    }

    pub fn encode(&self) -> String {
        self.to_string()
    }

    pub fn is_owned_by(&self, namespace: &str, name: &str) -> bool {
        self.owner
            .as_ref()
            .is_some_and(|o| o.namespace == namespace && o.name == name)
    }

    /// True once the lock is older than `ttl` at `now`; the caller supplies the clock.
    pub fn is_expired(&self, now: DateTime<Utc>, ttl: chrono::Duration) -> bool {
        now.signed_duration_since(self.locked_at) > ttl
    }
}

fn truncate_to_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

impl fmt::Display for NodeLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ts = self.locked_at.to_rfc3339_opts(SecondsFormat::Secs, true);
        match &self.owner {
            Some(o) => write!(f, "{ts},{},{}", o.namespace, o.name),
            None => f.write_str(&ts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_hami_values() {
        let lock = NodeLock::decode("2026-11-22T23:41:33Z,default,ext-1").unwrap();
        assert!(lock.is_owned_by("default", "ext-1"));
        assert!(!lock.is_owned_by("default", "ext-2"));
        assert_eq!(lock.locked_at.timestamp(), 1795390893);
        assert_eq!(lock.encode(), "2026-11-22T23:41:33Z,default,ext-1");

        // Go formats local time with an offset; we normalise to UTC on encode.
        let lock = NodeLock::decode("2026-11-23T07:41:33+08:00,ns,p").unwrap();
        assert_eq!(lock.encode(), "2026-11-22T23:41:33Z,ns,p");

        let bare = NodeLock::decode("2026-11-22T23:41:33Z").unwrap();
        assert_eq!(bare.owner, None);
        assert!(!bare.is_owned_by("default", "ext-1"));
    }

    #[test]
    fn expiry_uses_callers_clock() {
        let lock = NodeLock::decode("2026-11-22T23:41:33Z,ns,p").unwrap();
        let ttl = chrono::Duration::minutes(5);
        assert!(!lock.is_expired(lock.locked_at + chrono::Duration::minutes(5), ttl));
        assert!(lock.is_expired(lock.locked_at + chrono::Duration::seconds(301), ttl));
    }

    #[test]
    fn malformed_values_name_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("", "`time`"),
            ("yesterday,ns,p", "`time`"),
            ("2026-11-22 23:41:33,ns,p", "`time`"),
            ("2026-11-22T23:41:33Z,ns", "found 2"),
            ("2026-11-22T23:41:33Z,ns,p,extra", "found 4"),
            ("2026-11-22T23:41:33Z,,p", "`namespace`"),
            ("2026-11-22T23:41:33Z,ns,", "`pod`"),
        ];
        for (input, needle) in cases {
            let err = NodeLock::decode(input).expect_err(input).to_string();
            assert!(err.contains(needle), "{input:?} -> {err}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(secs in 0i64..4_102_444_800, ns in "[a-z0-9-]{1,63}", name in "[a-z0-9.-]{1,80}", owned in any::<bool>()) {
            let t = DateTime::from_timestamp(secs, 0).unwrap();
            let lock = if owned { NodeLock::new(t, &ns, &name) } else { NodeLock { locked_at: t, owner: None } };
            prop_assert_eq!(NodeLock::decode(&lock.encode()).unwrap(), lock);
        }

        #[test]
        fn decoder_never_panics(s in ".{0,60}") {
            let _ = NodeLock::decode(&s);
        }
    }
}
