//! The node handshake value (`hami.io/node-handshake`, `hami.io/node-handshake-<word>`).
//!
//! The scheduler writes `Requesting_<2006-01-02 15:04:05>` (Go `time.DateTime`, the
//! scheduler's local time) and the node side answers `Reported <Go time.String()>`,
//! e.g. `Reported 2026-11-23 01:56:48.123456789 +0000 UTC m=+12.5`. When the node
//! side goes away the scheduler marks it `Deleted_<time.DateTime>`. A node that
//! leaves a `Requesting_` stamp unanswered for 60 s is treated as gone.

use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDateTime};
use thiserror::Error;

const DATETIME: &str = "%Y-%m-%d %H:%M:%S";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    #[error(
        "handshake {value:?}: expected `Requesting_<time>`, `Reported <time>` or `Deleted_<time>`"
    )]
    UnknownState { value: String },
    #[error("handshake {value:?}: field `time`: {reason}")]
    Time { value: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// The scheduler asks the node agent to prove it is alive.
    Requesting(NaiveDateTime),
    /// The node agent's answer; Go's `time.String()` carries the offset.
    Reported(DateTime<FixedOffset>),
    /// The scheduler gave up on the node and cleaned its devices.
    Deleted(NaiveDateTime),
}

impl Handshake {
    pub fn decode(value: &str) -> Result<Self, HandshakeError> {
        let time_err = |text: &str, e: chrono::ParseError| HandshakeError::Time {
            value: value.to_owned(),
            reason: format!("{text:?}: {e}"),
        };
        let naive = |text: &str| {
            NaiveDateTime::parse_from_str(text, DATETIME).map_err(|e| time_err(text, e))
        };
        if let Some(ts) = value.strip_prefix("Requesting_") {
            return naive(ts).map(Self::Requesting);
        }
        if let Some(ts) = value.strip_prefix("Deleted_") {
            return naive(ts).map(Self::Deleted);
        }
        if let Some(ts) = value.strip_prefix("Reported ") {
            // Go appends the zone abbreviation and, for wall clocks, a monotonic
            // reading (`m=+1.2`); neither changes the instant, so stop after the offset.
            let (parsed, _rest) = DateTime::parse_and_remainder(ts, "%Y-%m-%d %H:%M:%S%.f %z")
                .map_err(|e| time_err(ts, e))?;
            return Ok(Self::Reported(parsed));
        }
        Err(HandshakeError::UnknownState {
            value: value.to_owned(),
        })
    }

    pub fn encode(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Requesting(t) => write!(f, "Requesting_{}", t.format(DATETIME)),
            Self::Deleted(t) => write!(f, "Deleted_{}", t.format(DATETIME)),
            // Go's layout `2006-01-02 15:04:05.999999999 -0700 MST`; we have no zone
            // abbreviation, and Go itself prints the offset there when it has none.
            Self::Reported(t) => write!(f, "Reported {}", t.format("%Y-%m-%d %H:%M:%S%.f %z %z")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_what_hami_writes() {
        let h = Handshake::decode("Requesting_2026-11-23 01:56:48").unwrap();
        assert_eq!(h.encode(), "Requesting_2026-11-23 01:56:48");

        let h = Handshake::decode("Reported 2026-11-23 01:56:48.123456789 +0000 UTC m=+12.503")
            .unwrap();
        let Handshake::Reported(t) = h else {
            panic!("{h:?}")
        };
        assert_eq!(t.timestamp(), 1795399008);
        assert_eq!(t.timestamp_subsec_nanos(), 123_456_789);

        let h = Handshake::decode("Reported 2026-11-23 09:56:48 +0800 CST").unwrap();
        let Handshake::Reported(t) = h else {
            panic!("{h:?}")
        };
        assert_eq!(t.timestamp(), 1795399008);

        assert!(matches!(
            Handshake::decode("Deleted_2026-11-23 01:56:48").unwrap(),
            Handshake::Deleted(_)
        ));
    }

    #[test]
    fn malformed_values_are_named() {
        for (input, needle) in [
            ("", "expected `Requesting_"),
            ("Reported", "expected `Requesting_"),
            ("Requesting_", "`time`"),
            ("Requesting_2026.11.23 01:56:48", "`time`"),
            ("Reported yesterday", "`time`"),
            ("Deleted_2026-13-01 00:00:00", "`time`"),
        ] {
            let err = Handshake::decode(input).expect_err(input).to_string();
            assert!(err.contains(needle), "{input:?} -> {err}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(secs in 0i64..4_102_444_800, nanos in 0u32..1_000_000_000, offset_min in -720i32..=840, kind in 0u8..3) {
            let utc = DateTime::from_timestamp(secs, nanos).unwrap();
            let h = match kind {
                0 => Handshake::Requesting(DateTime::from_timestamp(secs, 0).unwrap().naive_utc()),
                1 => Handshake::Deleted(DateTime::from_timestamp(secs, 0).unwrap().naive_utc()),
                _ => Handshake::Reported(utc.with_timezone(&FixedOffset::east_opt(offset_min * 60).unwrap())),
            };
            prop_assert_eq!(Handshake::decode(&h.encode()).unwrap(), h);
        }

        #[test]
        fn decoder_never_panics(s in ".{0,60}") {
            let _ = Handshake::decode(&s);
        }
    }
}
