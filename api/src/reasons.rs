//! Filter failure reasons: the tags HAMi puts in `FailedNodes` and
//! `FilteringFailed` events, aggregated as `"2/4 CardInsufficientMemory, 1/4 CardTypeMismatch"`
//! (count of devices that failed for that reason / devices considered).
//!
//! HAMi builds the string from a Go map, so its order is random. Ours is
//! deterministic: most frequent first, then by name.

use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;

pub const CARD_TYPE_MISMATCH: &str = "CardTypeMismatch";
pub const CARD_UUID_MISMATCH: &str = "CardUuidMismatch";
pub const CARD_TIME_SLICING_EXHAUSTED: &str = "CardTimeSlicingExhausted";
pub const CARD_COMPUTE_UNITS_EXHAUSTED: &str = "CardComputeUnitsExhausted";
pub const CARD_INSUFFICIENT_MEMORY: &str = "CardInsufficientMemory";
pub const CARD_INSUFFICIENT_CORE: &str = "CardInsufficientCore";
pub const CARD_NOT_HEALTH: &str = "CardNotHealth";
pub const NUMA_NOT_FIT: &str = "NumaNotFit";
pub const EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT: &str = "ExclusiveDeviceAllocateConflict";
pub const CARD_NOT_FOUND_CUSTOM_FILTER_RULE: &str = "CardNotFoundCustomFilterRule";
pub const NODE_INSUFFICIENT_DEVICE: &str = "NodeInsufficientDevice";
pub const ALLOCATED_CARDS_INSUFFICIENT_REQUEST: &str = "AllocatedCardsInsufficientRequest";
pub const NODE_UNFIT_POD: &str = "NodeUnfitPod";
pub const NODE_FIT_POD: &str = "NodeFitPod";
pub const RESOURCE_QUOTA_NOT_FIT: &str = "ResourceQuotaNotFit";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReasonsError {
    #[error("failure reasons, entry {entry} {text:?}: expected `<count>/<total> <Reason>`")]
    Syntax { entry: usize, text: String },
    #[error("failure reasons, entry {entry} {text:?}: total {found} differs from {expected} in the first entry")]
    MixedTotals {
        entry: usize,
        text: String,
        expected: usize,
        found: usize,
    },
    #[error("failure reasons, entry {entry} {text:?}: count exceeds total")]
    CountOverTotal { entry: usize, text: String },
    #[error("failure reasons, entry {entry}: reason {reason:?} appears twice")]
    Duplicate { entry: usize, reason: String },
}

/// Reason tag → number of devices that failed for it, out of `total` devices considered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureReasons {
    pub total: usize,
    pub counts: BTreeMap<String, usize>,
}

impl FailureReasons {
    pub fn new(total: usize) -> Self {
        Self {
            total,
            counts: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, reason: &str) {
        *self.counts.entry(reason.to_owned()).or_default() += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn encode(&self) -> String {
        self.to_string()
    }

    pub fn decode(value: &str) -> Result<Self, ReasonsError> {
        let mut out = Self::default();
        if value.is_empty() {
            return Ok(out);
        }
        for (entry, text) in value.split(", ").enumerate() {
            let syntax = || ReasonsError::Syntax {
                entry,
                text: text.to_owned(),
            };
            let (fraction, reason) = text.split_once(' ').ok_or_else(syntax)?;
            let (count, total) = fraction.split_once('/').ok_or_else(syntax)?;
            let number = |s: &str| {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                s.parse::<usize>().ok()
            };
            let (Some(count), Some(total)) = (number(count), number(total)) else {
                return Err(syntax());
            };
            if reason.is_empty() || !reason.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(syntax());
            }
            if entry == 0 {
                out.total = total;
            } else if total != out.total {
                return Err(ReasonsError::MixedTotals {
                    entry,
                    text: text.to_owned(),
                    expected: out.total,
                    found: total,
                });
            }
            if count > total {
                return Err(ReasonsError::CountOverTotal {
                    entry,
                    text: text.to_owned(),
                });
            }
            if out.counts.insert(reason.to_owned(), count).is_some() {
                return Err(ReasonsError::Duplicate {
                    entry,
                    reason: reason.to_owned(),
                });
            }
        }
        Ok(out)
    }
}

impl fmt::Display for FailureReasons {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut entries: Vec<(&String, &usize)> = self.counts.iter().collect();
        entries.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        for (i, (reason, count)) in entries.into_iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{count}/{} {reason}", self.total)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn aggregates_like_the_architecture_example() {
        let mut r = FailureReasons::new(4);
        r.add(CARD_TYPE_MISMATCH);
        r.add(CARD_INSUFFICIENT_MEMORY);
        r.add(CARD_INSUFFICIENT_MEMORY);
        assert_eq!(
            r.encode(),
            "2/4 CardInsufficientMemory, 1/4 CardTypeMismatch"
        );
        assert_eq!(FailureReasons::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn ties_break_by_name_so_events_are_stable() {
        let mut r = FailureReasons::new(2);
        r.add(NUMA_NOT_FIT);
        r.add(CARD_UUID_MISMATCH);
        assert_eq!(r.encode(), "1/2 CardUuidMismatch, 1/2 NumaNotFit");
    }

    #[test]
    fn malformed_values_are_named() {
        for (input, needle) in [
            ("2/4", "entry 0"),
            ("2/4 ", "entry 0"),
            ("x/4 CardInsufficientMemory", "entry 0"),
            ("2/4 CardInsufficientMemory, 1/3 NumaNotFit", "entry 1"),
            ("5/4 CardInsufficientMemory", "exceeds"),
            ("1/4 NumaNotFit, 1/4 NumaNotFit", "twice"),
            ("1/4 Numa Not Fit", "entry 0"),
            ("1/4 NumaNotFit,1/4 CardTypeMismatch", "entry 0"),
            ("-1/4 NumaNotFit", "entry 0"),
        ] {
            let err = FailureReasons::decode(input).expect_err(input).to_string();
            assert!(err.contains(needle), "{input:?} -> {err}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(total in 1usize..64, reasons in prop::collection::btree_map("[A-Z][A-Za-z]{0,30}", 1usize..64, 1..6)) {
            let counts = reasons.into_iter().map(|(k, v)| (k, v.min(total))).collect();
            let r = FailureReasons { total, counts };
            prop_assert_eq!(FailureReasons::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn decoder_never_panics(s in ".{0,60}") {
            let _ = FailureReasons::decode(&s);
        }
    }
}
