//! `hami.io/bind-phase`: where a pod is between `/bind` and kubelet's `Allocate`.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("bind phase {0:?}: expected allocating, success or failed")]
pub struct BindPhaseError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindPhase {
    /// `/bind` took the node lock; the node agent has not answered yet.
    Allocating,
    /// The node agent wrote the container's spec; the node lock can go.
    Success,
    /// The node agent could not serve the allocation; the node lock can go.
    Failed,
}

impl BindPhase {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allocating => "allocating",
            Self::Success => "success",
            Self::Failed => "failed",
        }
    }

    /// Allocation finished one way or the other.
    pub const fn is_terminal(self) -> bool {
        !matches!(self, Self::Allocating)
    }
}

impl FromStr for BindPhase {
    type Err = BindPhaseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allocating" => Ok(Self::Allocating),
            "success" => Ok(Self::Success),
            "failed" => Ok(Self::Failed),
            other => Err(BindPhaseError(other.to_owned())),
        }
    }
}

impl fmt::Display for BindPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_other_spellings() {
        for p in [BindPhase::Allocating, BindPhase::Success, BindPhase::Failed] {
            assert_eq!(p.as_str().parse::<BindPhase>().unwrap(), p);
        }
        for junk in ["", "Success", "succeeded", " allocating"] {
            let err = junk.parse::<BindPhase>().unwrap_err();
            assert!(err.to_string().contains("expected allocating"), "{err}");
        }
        assert!(!BindPhase::Allocating.is_terminal());
        assert!(BindPhase::Failed.is_terminal());
    }
}
