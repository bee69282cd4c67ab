//! Quota strings: device-memory limits and percentages.
//!
//! HAMi-core reads `CUDA_DEVICE_MEMORY_LIMIT=3000m` with `strtoul` and looks at the
//! last character for a unit. That turns `4Gi` into 4 *bytes* and `1.5g` into 1 byte
//! without a word. Here the grammar is strict: ASCII digits, then at most one unit
//! letter, nothing else. Anything else is an error naming the input.

use std::fmt;

use thiserror::Error;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuotaError {
    #[error("{what}: empty value")]
    Empty { what: &'static str },
    #[error("{what}: {value:?} is not a quota; expected digits with an optional k, m or g suffix (binary units), e.g. 3000m or 4g; {hint}")]
    Syntax {
        what: &'static str,
        value: String,
        hint: &'static str,
    },
    #[error("{what}: {value:?} overflows 64-bit bytes")]
    Overflow { what: &'static str, value: String },
    #[error("{what}: {value:?} is not a percentage; expected a whole number 0-100")]
    Percent { what: &'static str, value: String },
}

/// How to read a memory quota that has no unit letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareUnit {
    /// HAMi-core's env contract: `CUDA_DEVICE_MEMORY_LIMIT=1073741824` is bytes.
    Bytes,
    /// Scheduler resources and the `hami-cdi --memory` flag: `3000` is MiB.
    Mebibytes,
}

/// A device-memory quota, held in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemoryQuota {
    bytes: u64,
}

impl MemoryQuota {
    pub const fn from_bytes(bytes: u64) -> Self {
        Self { bytes }
    }

    pub const fn from_mib(mib: u64) -> Option<Self> {
        match mib.checked_mul(MIB) {
            Some(bytes) => Some(Self { bytes }),
            None => None,
        }
    }

    pub const fn bytes(self) -> u64 {
        self.bytes
    }

    /// Whole MiB, rounded down (HAMi's annotations carry MiB).
    pub const fn mib(self) -> u64 {
        self.bytes / MIB
    }

    /// Parses the `CUDA_DEVICE_MEMORY_LIMIT` form: a bare number is bytes.
    pub fn parse_env(value: &str) -> Result<Self, QuotaError> {
        Self::parse(value, BareUnit::Bytes, "memory limit")
    }

    /// Parses a quota where a bare number means MiB (`--memory 3000`).
    pub fn parse_mib_default(value: &str) -> Result<Self, QuotaError> {
        Self::parse(value, BareUnit::Mebibytes, "memory quota")
    }

    /// `what` names the setting in the error, e.g. `CUDA_DEVICE_MEMORY_LIMIT_0`.
    pub fn parse(value: &str, bare: BareUnit, what: &'static str) -> Result<Self, QuotaError> {
        if value.is_empty() {
            return Err(QuotaError::Empty { what });
        }
        let syntax = |hint| QuotaError::Syntax {
            what,
            value: value.to_owned(),
            hint,
        };
        let (digits, unit) = match value.as_bytes()[value.len() - 1] {
            b'k' | b'K' => (&value[..value.len() - 1], KIB),
            b'm' | b'M' => (&value[..value.len() - 1], MIB),
            b'g' | b'G' => (&value[..value.len() - 1], GIB),
            b'0'..=b'9' => (
                value,
                match bare {
                    BareUnit::Bytes => 1,
                    BareUnit::Mebibytes => MIB,
                },
            ),
            b'i' | b'I' => {
                return Err(syntax(
                    "Kubernetes suffixes such as Gi are not accepted here, write 4g",
                ))
            }
            b'b' | b'B' => return Err(syntax("write 4g, not 4gb")),
            _ => return Err(syntax("unknown unit")),
        };
        if digits.is_empty() {
            return Err(syntax("the number is missing"));
        }
        if let Some(bad) = digits.bytes().find(|b| !b.is_ascii_digit()) {
            let hint = match bad {
                b'.' | b',' => "fractions are not accepted, use a smaller unit",
                b'-' => "negative values are not accepted",
                b'+' => "write the number without a sign",
                b' ' | b'\t' | b'\n' => "remove the whitespace",
                _ => "only digits may precede the unit",
            };
            return Err(syntax(hint));
        }
        let overflow = || QuotaError::Overflow {
            what,
            value: value.to_owned(),
        };
        let number: u64 = digits.parse().map_err(|_| overflow())?;
        let bytes = number.checked_mul(unit).ok_or_else(overflow)?;
        Ok(Self { bytes })
    }

    /// The env form HAMi's device plugin writes: the largest exact unit, lower case.
    pub fn to_env_string(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for MemoryQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bytes;
        if b != 0 && b % GIB == 0 {
            write!(f, "{}g", b / GIB)
        } else if b != 0 && b % MIB == 0 {
            write!(f, "{}m", b / MIB)
        } else if b != 0 && b % KIB == 0 {
            write!(f, "{}k", b / KIB)
        } else {
            write!(f, "{b}")
        }
    }
}

/// A whole percentage 0-100: `nvidia.com/gpucores`, `gpumem-percentage`, `CUDA_DEVICE_SM_LIMIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(u8);

impl Percent {
    pub const FULL: Percent = Percent(100);

    pub fn new(value: u8) -> Option<Self> {
        (value <= 100).then_some(Self(value))
    }

    pub fn get(self) -> u8 {
        self.0
    }

    /// Accepts `30` and `30%`; rejects signs, fractions, whitespace and values over 100.
    pub fn parse(value: &str, what: &'static str) -> Result<Self, QuotaError> {
        if value.is_empty() {
            return Err(QuotaError::Empty { what });
        }
        let digits = value.strip_suffix('%').unwrap_or(value);
        let bad = || QuotaError::Percent {
            what,
            value: value.to_owned(),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 3 {
            return Err(bad());
        }
        let n: u16 = digits.parse().map_err(|_| bad())?;
        u8::try_from(n).ok().and_then(Self::new).ok_or_else(bad)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_forms_hami_users_write() {
        let env = |s| MemoryQuota::parse_env(s).unwrap().bytes();
        assert_eq!(env("3000m"), 3000 * MIB);
        assert_eq!(env("3000M"), 3000 * MIB);
        assert_eq!(env("4g"), 4 * GIB);
        assert_eq!(env("4G"), 4 * GIB);
        assert_eq!(env("512k"), 512 * KIB);
        assert_eq!(env("1073741824"), GIB);
        assert_eq!(env("0"), 0);
        let mib = |s| MemoryQuota::parse_mib_default(s).unwrap().mib();
        assert_eq!(mib("3000"), 3000);
        assert_eq!(mib("3000m"), 3000);
        assert_eq!(mib("4g"), 4096);
    }

    #[test]
    fn rejects_what_strtoul_would_silently_truncate() {
        for junk in [
            "4Gi",
            "4gi",
            "1.5g",
            "1,5g",
            "-1",
            "-1g",
            "+4g",
            "4gb",
            "4 g",
            " 4g",
            "4g ",
            "g",
            "m",
            "0x10",
            "4t",
            "four",
            "4g4",
            "\u{0664}g",
            "",
        ] {
            let err = MemoryQuota::parse_env(junk).expect_err(junk);
            let text = err.to_string();
            assert!(text.contains("memory limit"), "{junk}: {text}");
        }
        let hint = MemoryQuota::parse_env("4Gi").unwrap_err().to_string();
        assert!(hint.contains("Gi are not accepted"), "{hint}");
        let hint = MemoryQuota::parse_env("1.5g").unwrap_err().to_string();
        assert!(hint.contains("fractions"), "{hint}");
        let hint = MemoryQuota::parse_env("-1").unwrap_err().to_string();
        assert!(hint.contains("negative"), "{hint}");
    }

    #[test]
    fn rejects_overflow() {
        assert!(matches!(
            MemoryQuota::parse_env("18446744073709551616"),
            Err(QuotaError::Overflow { .. })
        ));
        assert!(matches!(
            MemoryQuota::parse_env("17179869184g"),
            Err(QuotaError::Overflow { .. })
        ));
        assert_eq!(
            MemoryQuota::parse_env("18446744073709551615")
                .unwrap()
                .bytes(),
            u64::MAX
        );
    }

    #[test]
    fn display_uses_largest_exact_unit() {
        assert_eq!(MemoryQuota::from_mib(3000).unwrap().to_string(), "3000m");
        assert_eq!(MemoryQuota::from_mib(4096).unwrap().to_string(), "4g");
        assert_eq!(MemoryQuota::from_bytes(1536).to_string(), "1536");
        assert_eq!(MemoryQuota::from_bytes(2048).to_string(), "2k");
        assert_eq!(MemoryQuota::from_bytes(0).to_string(), "0");
    }

    #[test]
    fn percent_bounds() {
        assert_eq!(Percent::parse("30", "cores").unwrap().get(), 30);
        assert_eq!(Percent::parse("30%", "cores").unwrap().get(), 30);
        assert_eq!(Percent::parse("0", "cores").unwrap().get(), 0);
        assert_eq!(Percent::parse("100", "cores").unwrap(), Percent::FULL);
        for junk in [
            "101",
            "-1",
            "1.5",
            "",
            "%",
            "50%%",
            " 5",
            "0100",
            "99999999999",
        ] {
            let err = Percent::parse(junk, "nvidia.com/gpucores").expect_err(junk);
            assert!(err.to_string().contains("nvidia.com/gpucores"), "{err}");
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(bytes in any::<u64>()) {
            let q = MemoryQuota::from_bytes(bytes);
            prop_assert_eq!(MemoryQuota::parse_env(&q.to_string()).unwrap(), q);
        }

        #[test]
        fn arbitrary_input_never_panics(s in ".{0,24}") {
            let _ = MemoryQuota::parse_env(&s);
            let _ = MemoryQuota::parse_mib_default(&s);
            let _ = Percent::parse(&s, "x");
        }

        #[test]
        fn percent_round_trips(p in 0u8..=100) {
            let v = Percent::new(p).unwrap();
            prop_assert_eq!(Percent::parse(&v.to_string(), "x").unwrap(), v);
        }
    }
}
