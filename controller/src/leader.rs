//! Leader election through a coordination.k8s.io/v1 Lease, the way
//! client-go's leaderelection does it: the holder renews the Lease every
//! retry period; a replica takes it over only once the holder has missed its
//! lease duration; every write carries the resourceVersion it read, so two
//! replicas can never both win the same round.
//!
//! Only the leader answers `/filter` and `/bind` (see `server::Settings::leader`):
//! two replicas deciding at once would place pods on stale views of each
//! other's grants.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub identity: String,
    /// How long a holder that stopped renewing keeps the Lease.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long stops deciding, before
    /// another replica can take the Lease over (renew_deadline < lease_duration).
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(lease_name: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What to do with the Lease as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: write a fresh renew time.
    Renew,
    /// Nobody holds it, or the holder missed its lease: take it over.
    TakeOver,
    /// Someone else holds a live lease.
    Follow { holder: String },
}

pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::TakeOver;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    let expired = match &spec.renew_time {
        // A held lease that never renewed is as good as expired.
        None => true,
        Some(MicroTime(renewed)) => now.as_second() > renewed.as_second() + duration,
    };
    if expired {
        Decision::TakeOver
    } else {
        Decision::Follow {
            holder: holder.to_owned(),
        }
    }
}

/// Follow mode: this replica leads while the Lease is held, unexpired, by
/// an identity that is this replica's (kube-scheduler writes
/// `<hostname>_<uuid>`, and the hostname is the pod name). Used when the
/// extender runs beside kube-scheduler in one pod: the extender must decide
/// exactly when its own scheduler does, so it follows the scheduler's Lease
/// instead of holding one of its own.
pub fn follows(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else {
        return false;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    let mine = holder == me
        || holder
            .strip_prefix(me)
            .is_some_and(|rest| rest.starts_with('_'));
    mine && decide(Some(spec), "", now) != Decision::TakeOver
}

/// Runs follow mode forever, keeping `leader` up to date.
pub async fn follow(api: Api<Lease>, cfg: LeaderConfig, leader: Arc<AtomicBool>) {
    loop {
        let now_leading = match api.get_opt(&cfg.lease_name).await {
            Ok(lease) => follows(lease.and_then(|l| l.spec).as_ref(), &cfg.identity, now()),
            Err(e) => {
                tracing::warn!("reading lease {}: {e}", cfg.lease_name);
                false
            }
        };
        if leader.swap(now_leading, Ordering::AcqRel) != now_leading {
            tracing::info!(identity = %cfg.identity, leading = now_leading, "the scheduler's lease changed hands");
        }
        tokio::time::sleep(cfg.retry_period).await;
    }
}

fn spec_for(
    cfg: &LeaderConfig,
    now: Timestamp,
    acquired: Timestamp,
    transitions: i32,
) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(15)),
        acquire_time: Some(MicroTime(acquired)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// One round: read the Lease, then create, renew or take it over. `Ok(true)`
/// when this replica holds it afterwards; a lost race (409) is `Ok(false)`.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaderConfig,
    now: Timestamp,
) -> Result<bool, kube::Error> {
    let current = match api.get_opt(&cfg.lease_name).await? {
        Some(l) => l,
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.lease_name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec_for(cfg, now, now, 0)),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        }
    };
    let spec = current.spec.clone().unwrap_or_default();
    let (acquired, transitions) = match decide(current.spec.as_ref(), &cfg.identity, now) {
        Decision::Follow { .. } => return Ok(false),
        Decision::Renew => (
            spec.acquire_time.map_or(now, |t| t.0),
            spec.lease_transitions.unwrap_or(0),
        ),
        Decision::TakeOver => (now, spec.lease_transitions.unwrap_or(0).saturating_add(1)),
    };
    let lease = Lease {
        // Carries the resourceVersion read above: a concurrent writer makes
        // this replace fail with 409 instead of both believing they lead.
        metadata: current.metadata.clone(),
        spec: Some(spec_for(cfg, now, acquired, transitions)),
    };
    match api
        .replace(&cfg.lease_name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

fn now() -> Timestamp {
    Timestamp::now()
}

/// Runs the election forever, keeping `leader` up to date.
pub async fn run(api: Api<Lease>, cfg: LeaderConfig, leader: Arc<AtomicBool>) {
    let mut last_renewed: Option<std::time::Instant> = None;
    loop {
        match try_acquire_or_renew(&api, &cfg, now()).await {
            Ok(true) => {
                if !leader.swap(true, Ordering::AcqRel) {
                    tracing::info!(identity = %cfg.identity, "became the leader");
                }
                last_renewed = Some(std::time::Instant::now());
            }
            Ok(false) => {
                if leader.swap(false, Ordering::AcqRel) {
                    tracing::warn!(identity = %cfg.identity, "lost the lease");
                }
            }
            Err(e) => {
                tracing::warn!("lease {}: {e}", cfg.lease_name);
                // Keep deciding through a short API hiccup, never past the
                // renew deadline: by then another replica may take over.
                if last_renewed.is_none_or(|t| t.elapsed() > cfg.renew_deadline)
                    && leader.swap(false, Ordering::AcqRel)
                {
                    tracing::warn!(identity = %cfg.identity, "renew deadline passed; stepped down");
                }
            }
        }
        tokio::time::sleep(cfg.retry_period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hami_kube_mock::{failure, next, respond};
    use serde_json::{json, Value};

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_795_420_800 + second).unwrap()
    }

    fn spec(holder: &str, renewed: Option<i64>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()).filter(|h: &String| !h.is_empty()),
            lease_duration_seconds: Some(15),
            renew_time: renewed.map(|s| MicroTime(at(s))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn who_leads() {
        let other = |holder: &str| Decision::Follow {
            holder: holder.into(),
        };
        let cases = [
            (None, 0, Decision::TakeOver),
            (Some(spec("me", Some(0))), 5, Decision::Renew),
            (Some(spec("me", Some(0))), 500, Decision::Renew),
            (Some(spec("b", Some(0))), 15, other("b")),
            (Some(spec("b", Some(0))), 16, Decision::TakeOver),
            (Some(spec("b", None)), 0, Decision::TakeOver),
            (Some(spec("", Some(0))), 1, Decision::TakeOver),
        ];
        for (lease, now, want) in cases {
            assert_eq!(
                decide(lease.as_ref(), "me", at(now)),
                want,
                "{lease:?} at {now}"
            );
        }
    }

    #[test]
    fn following_the_schedulers_lease() {
        let held = |holder: &str, renewed: i64| spec(holder, Some(renewed));
        let cases = [
            (Some(held("hami-scheduler-7d9f-abc_3f2e-uuid", 0)), 5, true),
            (Some(held("hami-scheduler-7d9f-abc", 0)), 5, true),
            // Another pod whose name starts like ours is not us.
            (Some(held("hami-scheduler-7d9f-abcd_1", 0)), 5, false),
            (Some(held("other_1", 0)), 5, false),
            // Our scheduler stopped renewing: not leading any more.
            (Some(held("hami-scheduler-7d9f-abc_1", 0)), 16, false),
            (None, 0, false),
        ];
        for (lease, now, want) in cases {
            assert_eq!(
                follows(lease.as_ref(), "hami-scheduler-7d9f-abc", at(now)),
                want,
                "{lease:?} at {now}"
            );
        }
    }

    fn lease(holder: &str, rv: &str, renewed: &str, transitions: i32) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "hami-scheduler", "namespace": "kube-system", "resourceVersion": rv},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                        "renewTime": renewed, "acquireTime": renewed, "leaseTransitions": transitions}})
    }

    /// The exact calls of four rounds: create a missing Lease; follow a live
    /// holder; take over an expired one (resourceVersion carried,
    /// transitions + 1); lose the takeover race to a 409.
    #[test]
    fn the_calls_of_an_election() {
        hami_kube_mock::block_on(async {
            let (client, mut handle) = hami_kube_mock::pair("kube-system");
            let api: Api<Lease> = Api::namespaced(client, "kube-system");
            let cfg = LeaderConfig::new("hami-scheduler", "replica-a");
            let path = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
            let server = tokio::spawn(async move {
                // Round 1: no Lease yet.
                let (m, uri, _, send) = next(&mut handle).await;
                assert_eq!(
                    (m, uri),
                    (http::Method::GET, format!("{path}/hami-scheduler"))
                );
                respond(send, 404, failure(404, "NotFound", "leases not found"));
                let (m, uri, body, send) = next(&mut handle).await;
                assert_eq!((m, uri), (http::Method::POST, format!("{path}?")));
                assert_eq!(body["spec"]["holderIdentity"], "replica-a");
                assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
                assert_eq!(body["spec"]["leaseTransitions"], 0);
                respond(send, 201, body);
                // Round 2: replica-b renewed 5 s ago.
                let (m, _, _, send) = next(&mut handle).await;
                assert_eq!(m, http::Method::GET);
                respond(
                    send,
                    200,
                    lease("replica-b", "41", "2026-11-20T00:00:05.000000Z", 3),
                );
                // Round 3: replica-b went silent 60 s ago.
                let (_, _, _, send) = next(&mut handle).await;
                respond(
                    send,
                    200,
                    lease("replica-b", "42", "2026-11-19T23:59:10.000000Z", 3),
                );
                let (m, uri, body, send) = next(&mut handle).await;
                assert_eq!(
                    (m, uri),
                    (http::Method::PUT, format!("{path}/hami-scheduler?"))
                );
                assert_eq!(body["metadata"]["resourceVersion"], "42");
                assert_eq!(body["spec"]["holderIdentity"], "replica-a");
                assert_eq!(body["spec"]["leaseTransitions"], 4);
                respond(send, 200, body);
                // Round 4: expired again, but another replica wins the write.
                let (_, _, _, send) = next(&mut handle).await;
                respond(
                    send,
                    200,
                    lease("replica-c", "50", "2026-11-19T23:00:00.000000Z", 4),
                );
                let (m, _, _, send) = next(&mut handle).await;
                assert_eq!(m, http::Method::PUT);
                respond(
                    send,
                    409,
                    failure(409, "Conflict", "the object has been modified"),
                );
            });
            let now = Timestamp::from_second(1795132810).unwrap(); // 2026-11-20T00:00:10Z
            assert!(try_acquire_or_renew(&api, &cfg, now).await.unwrap());
            assert!(!try_acquire_or_renew(&api, &cfg, now).await.unwrap());
            assert!(try_acquire_or_renew(&api, &cfg, now).await.unwrap());
            assert!(!try_acquire_or_renew(&api, &cfg, now).await.unwrap());
            server.await.unwrap();
        });
    }
}
