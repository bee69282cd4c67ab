//! HAMi's extended ResourceQuota: `spec.hard` keys `limits.<memory resource>`
//! (MiB) and `limits.<cores resource>` (percent) per namespace, e.g.
//! `limits.nvidia.com/gpumem: 6000`. A container's use is per device times
//! its device count (2 GPUs × 3000 MiB = 6000); a pod's is the larger of its
//! largest init container and the sum of its app containers, as Kubernetes
//! counts effective requests.
//!
//! The webhook checks what it can know (MiB requests); a percentage of
//! device memory is only known once a device is chosen, so the filter
//! checks again with the fitted grants.

use std::collections::BTreeMap;

use hami_api::Quantity;
use k8s_openapi::api::core::v1::ResourceQuota;
use thiserror::Error;

use crate::schedule::fit::PodFit;
use crate::schedule::request::{ContainerRequest, MemoryRequest, PodRequest};
use crate::schedule::vendor::VendorProfile;

/// Device memory and compute a pod takes from its namespace's quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory_mib: u64,
    pub cores: u64,
}

impl Usage {
    fn max(self, o: Self) -> Self {
        Self {
            memory_mib: self.memory_mib.max(o.memory_mib),
            cores: self.cores.max(o.cores),
        }
    }

    fn plus(self, o: Self) -> Self {
        Self {
            memory_mib: self.memory_mib.saturating_add(o.memory_mib),
            cores: self.cores.saturating_add(o.cores),
        }
    }
}

fn container_usage(r: &ContainerRequest) -> Usage {
    let count = u64::from(r.count);
    Usage {
        // A percentage resolves on the chosen device: the filter counts it.
        memory_mib: match r.memory {
            MemoryRequest::Mib(m) => m.saturating_mul(count),
            MemoryRequest::Percent(_) => 0,
        },
        cores: u64::from(r.cores.min(100)).saturating_mul(count),
    }
}

fn combine(init: impl Iterator<Item = Usage>, app: impl Iterator<Item = Usage>) -> Usage {
    let peak = init.fold(Usage::default(), Usage::max);
    let sum = app.fold(Usage::default(), Usage::plus);
    peak.max(sum)
}

/// What the pod's requests take, as far as known before scheduling.
pub fn pod_usage(request: &PodRequest) -> Usage {
    combine(
        request.init.iter().flatten().map(container_usage),
        request.app.iter().flatten().map(container_usage),
    )
}

/// What a fitted pod takes, percentages resolved on its devices.
pub fn fit_usage(fit: &PodFit) -> Usage {
    let slot = |grants: &Vec<crate::schedule::fit::Grant>| {
        grants.iter().fold(Usage::default(), |u, g| {
            u.plus(Usage {
                memory_mib: g.memory_mib,
                cores: u64::from(g.cores),
            })
        })
    };
    combine(
        fit.slots[..fit.init_slots].iter().map(slot),
        fit.slots[fit.init_slots..].iter().map(slot),
    )
}

/// The `spec.hard` entries of a namespace's ResourceQuotas, the smallest
/// where several quotas name the same key (each must hold).
pub fn hard_limits(quotas: &[&ResourceQuota]) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for q in quotas {
        for (key, value) in q.spec.iter().flat_map(|s| s.hard.iter().flatten()) {
            if !key.starts_with("limits.") {
                continue;
            }
            let Ok(v) = Quantity::parse(&value.0).and_then(|q| q.value_ceil()) else {
                continue;
            };
            let v = u64::try_from(v).unwrap_or(0);
            out.entry(key.clone())
                .and_modify(|old| *old = (*old).min(v))
                .or_insert(v);
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuotaError {
    #[error("namespace {namespace} quota {key}: {used} used + {asked} asked > {hard}")]
    Exceeded {
        namespace: String,
        key: String,
        used: u64,
        asked: u64,
        hard: u64,
    },
}

/// One namespace's room for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaCheck {
    pub namespace: String,
    /// `spec.hard` keys (`limits.nvidia.com/gpumem` …) and values.
    pub hard: BTreeMap<String, u64>,
    /// What the namespace's live pods hold, per family name.
    pub used: BTreeMap<String, Usage>,
}

impl QuotaCheck {
    /// Whether `asked` fits next to what the namespace holds of `profile`'s devices.
    pub fn admit(&self, asked: &Usage, profile: &VendorProfile) -> Result<(), QuotaError> {
        let used = self.used.get(profile.name()).copied().unwrap_or_default();
        let r = &profile.resources;
        let checks = [
            (&r.resource_memory_name, used.memory_mib, asked.memory_mib),
            (&r.resource_core_name, used.cores, asked.cores),
        ];
        for (name, used, asked) in checks {
            let Some(name) = name else { continue };
            let key = format!("limits.{name}");
            if let Some(hard) = self.hard.get(&key) {
                if used.saturating_add(asked) > *hard {
                    return Err(QuotaError::Exceeded {
                        namespace: self.namespace.clone(),
                        key,
                        used,
                        asked,
                        hard: *hard,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::fit::Grant;
    use serde_json::json;

    fn req(count: u32, memory: MemoryRequest, cores: u32) -> Option<ContainerRequest> {
        Some(ContainerRequest {
            count,
            memory,
            cores,
        })
    }

    #[test]
    fn usage_multiplies_by_devices_and_takes_the_init_peak() {
        let mib = MemoryRequest::Mib;
        let pod = PodRequest {
            init: vec![req(1, mib(9000), 50), None, req(2, mib(1000), 10)],
            app: vec![req(2, mib(3000), 30), None, req(1, mib(500), 0)],
            ..PodRequest::default()
        };
        // init peak: max(9000, 2000) MiB, max(50, 20) cores;
        // app sum: 6000 + 500 MiB, 60 cores.
        assert_eq!(
            pod_usage(&pod),
            Usage {
                memory_mib: 9000,
                cores: 60
            }
        );
        let pct = PodRequest {
            app: vec![req(1, MemoryRequest::Percent(50), 100)],
            ..PodRequest::default()
        };
        assert_eq!(
            pod_usage(&pct),
            Usage {
                memory_mib: 0,
                cores: 100
            }
        );
        let g = |memory_mib, cores| Grant {
            device: 0,
            memory_mib,
            cores,
            template: None,
        };
        let fit = PodFit {
            slots: vec![vec![g(4000, 10)], vec![g(40960, 50), g(40960, 50)]],
            init_slots: 1,
        };
        assert_eq!(
            fit_usage(&fit),
            Usage {
                memory_mib: 81920,
                cores: 100
            }
        );
    }

    #[test]
    fn the_smallest_hard_limit_holds() {
        let q = |hard: serde_json::Value| -> ResourceQuota {
            serde_json::from_value(json!({"metadata": {"name": "q"}, "spec": {"hard": hard}}))
                .unwrap()
        };
        let a = q(
            json!({"limits.nvidia.com/gpumem": "6000", "limits.nvidia.com/gpucores": "200", "pods": "10"}),
        );
        let b = q(json!({"limits.nvidia.com/gpumem": "8k"}));
        let hard = hard_limits(&[&a, &b]);
        assert_eq!(hard.get("limits.nvidia.com/gpumem"), Some(&6000));
        assert_eq!(hard.get("limits.nvidia.com/gpucores"), Some(&200));
        assert!(!hard.contains_key("pods"));
        let check = QuotaCheck {
            namespace: "team".into(),
            hard,
            used: [(
                "nvidia".to_owned(),
                Usage {
                    memory_mib: 3000,
                    cores: 100,
                },
            )]
            .into(),
        };
        let nvidia = VendorProfile::nvidia();
        assert!(check
            .admit(
                &Usage {
                    memory_mib: 3000,
                    cores: 100
                },
                &nvidia
            )
            .is_ok());
        let e = check
            .admit(
                &Usage {
                    memory_mib: 3001,
                    cores: 0,
                },
                &nvidia,
            )
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "namespace team quota limits.nvidia.com/gpumem: 3000 used + 3001 asked > 6000"
        );
        let e = check
            .admit(
                &Usage {
                    memory_mib: 0,
                    cores: 101,
                },
                &nvidia,
            )
            .unwrap_err();
        assert!(e.to_string().contains("gpucores"), "{e}");
    }
}
