//! Kubernetes resource quantities (`resource.Quantity`) as they appear in pod specs.
//!
//! HAMi reads `nvidia.com/gpumem: 3000` with `Quantity.Value()`, which rounds up to
//! an integer. Extended resources reach us as the strings the API server stores,
//! so this follows apimachinery's grammar:
//! `[+-]digits[.digits](Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|e<int>|E<int>)?`.

use std::fmt;

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuantityError {
    #[error("quantity {value:?}: {reason}")]
    Invalid { value: String, reason: &'static str },
    #[error("quantity {value:?} does not fit in 64 bits")]
    Overflow { value: String },
}

/// A parsed quantity, kept exact as `mantissa × 10^exp10 × 2^exp2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    negative: bool,
    mantissa: u128,
    exp10: i32,
    exp2: u32,
}

impl Quantity {
    pub fn parse(value: &str) -> Result<Self, QuantityError> {
        let invalid = |reason| QuantityError::Invalid {
            value: value.to_owned(),
            reason,
        };
        let (negative, rest) = match value.as_bytes().first() {
            None => return Err(invalid("empty")),
            Some(b'-') => (true, &value[1..]),
            Some(b'+') => (false, &value[1..]),
            Some(_) => (false, value),
        };
        let number_end = rest
            .bytes()
            .position(|b| !(b.is_ascii_digit() || b == b'.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_end);
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid("no digits"));
        }
        if frac_part.contains('.') {
            return Err(invalid("more than one decimal point"));
        }
        let mut mantissa: u128 = 0;
        let mut significant = 0usize;
        for b in int_part.bytes().chain(frac_part.bytes()) {
            if mantissa == 0 && b == b'0' {
                continue;
            }
            significant += 1;
            // apimachinery itself caps precision; 38 digits is beyond any real quantity.
            if significant > 38 {
                return Err(QuantityError::Overflow {
                    value: value.to_owned(),
                });
            }
            mantissa = mantissa * 10 + u128::from(b - b'0');
        }
        let frac_len = i32::try_from(frac_part.len()).map_err(|_| invalid("too many digits"))?;
        let (suffix_exp10, exp2) = match suffix {
            "" => (0, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            s if s.starts_with(['e', 'E']) => {
                let exp = &s[1..];
                let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                if digits.is_empty()
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                    || digits.len() > 4
                {
                    return Err(invalid("bad decimal exponent"));
                }
                (
                    exp.parse::<i32>()
                        .map_err(|_| invalid("bad decimal exponent"))?,
                    0,
                )
            }
            _ => return Err(invalid("unknown suffix")),
        };
        Ok(Self {
            negative,
            mantissa,
            exp10: suffix_exp10 - frac_len,
            exp2,
        })
    }

    /// `Quantity.Value()`: the integer value, rounded up (away from zero for positives).
    pub fn value_ceil(&self) -> Result<i64, QuantityError> {
        self.scaled_ceil(0)
    }

    /// `Quantity.MilliValue()`, rounded up.
    pub fn milli_value_ceil(&self) -> Result<i64, QuantityError> {
        self.scaled_ceil(3)
    }

    /// The value as a non-negative whole number, for counts and MiB (`nvidia.com/gpu: 2`).
    pub fn to_u64_ceil(&self) -> Result<u64, QuantityError> {
        let v = self.value_ceil()?;
        u64::try_from(v).map_err(|_| QuantityError::Invalid {
            value: self.to_string(),
            reason: "negative values are not allowed for device resources",
        })
    }

    fn scaled_ceil(&self, extra_exp10: i32) -> Result<i64, QuantityError> {
        let overflow = || QuantityError::Overflow {
            value: self.to_string(),
        };
        let exp10 = self.exp10 + extra_exp10;
        let mut numerator = self
            .mantissa
            .checked_shl(self.exp2)
            .filter(|v| v >> self.exp2 == self.mantissa);
        let magnitude = if exp10 >= 0 {
            let scale = 10u128.checked_pow(exp10 as u32).ok_or_else(overflow)?;
            numerator = numerator.and_then(|n| n.checked_mul(scale));
            numerator.ok_or_else(overflow)?
        } else {
            let n = numerator.ok_or_else(overflow)?;
            match 10u128.checked_pow(exp10.unsigned_abs()) {
                Some(div) => {
                    let q = n / div;
                    // Round up for positives; toward zero for negatives, like apimachinery's ceil.
                    if n % div != 0 && !self.negative {
                        q + 1
                    } else {
                        q
                    }
                }
                None => u128::from(n != 0 && !self.negative),
            }
        };
        let magnitude = i64::try_from(magnitude).map_err(|_| overflow())?;
        Ok(if self.negative { -magnitude } else { magnitude })
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.negative { "-" } else { "" };
        match self.exp2 {
            0 => write!(f, "{sign}{}e{}", self.mantissa, self.exp10),
            _ => write!(f, "{sign}{}e{}*2^{}", self.mantissa, self.exp10, self.exp2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value(s: &str) -> i64 {
        Quantity::parse(s).unwrap().value_ceil().unwrap()
    }

    #[test]
    fn values_like_apimachinery() {
        assert_eq!(value("3000"), 3000);
        assert_eq!(value("3k"), 3000);
        assert_eq!(value("1Ki"), 1024);
        assert_eq!(value("64Mi"), 64 << 20);
        assert_eq!(value("4Gi"), 4 << 30);
        assert_eq!(value("1.5"), 2);
        assert_eq!(value("100m"), 1);
        assert_eq!(value("1e3"), 1000);
        assert_eq!(value("1E3"), 1000);
        assert_eq!(value("0.5Gi"), 1 << 29);
        assert_eq!(value("+7"), 7);
        assert_eq!(value("-7"), -7);
        assert_eq!(value(".5"), 1);
        assert_eq!(value("0"), 0);
        assert_eq!(
            Quantity::parse("100m").unwrap().milli_value_ceil().unwrap(),
            100
        );
        assert_eq!(
            Quantity::parse("1.5").unwrap().milli_value_ceil().unwrap(),
            1500
        );
        assert_eq!(
            Quantity::parse("1n").unwrap().milli_value_ceil().unwrap(),
            1
        );
    }

    #[test]
    fn every_quantity_in_the_captured_fixtures_parses() {
        // Real request bodies from a kube-scheduler / kube-apiserver (shared/fixtures/k8s).
        for fixture in [
            include_str!("../../tests/fixtures/k8s/sample-extender-args.json"),
            include_str!("../../tests/fixtures/k8s/sample-admission-review-mutate.json"),
        ] {
            let doc: serde_json::Value = serde_json::from_str(fixture).unwrap();
            let mut seen = 0;
            visit_resources(&doc, &mut |q| {
                Quantity::parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
                seen += 1;
            });
            assert!(seen > 0, "fixture has no resource quantities");
        }
    }

    fn visit_resources(v: &serde_json::Value, f: &mut dyn FnMut(&str)) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map {
                    if k == "requests" || k == "limits" {
                        if let Some(obj) = child.as_object() {
                            obj.values().filter_map(|q| q.as_str()).for_each(&mut *f);
                        }
                    }
                    visit_resources(child, f);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| visit_resources(i, f)),
            _ => {}
        }
    }

    #[test]
    fn rejects_junk() {
        for junk in [
            "", "-", "Gi", "1.2.3", "4gb", "4 Gi", "1e", "1e+", "1x", "1Gib", "..", "1e99999",
        ] {
            assert!(Quantity::parse(junk).is_err(), "{junk:?} parsed");
        }
        assert!(Quantity::parse("9Ei").unwrap().value_ceil().is_err());
        assert!(Quantity::parse("1e30").unwrap().value_ceil().is_err());
        assert!(Quantity::parse("-1").unwrap().to_u64_ceil().is_err());
    }

    proptest! {
        #[test]
        fn never_panics(s in "[-+0-9.eEkKMGTPinum]{0,12}") {
            if let Ok(q) = Quantity::parse(&s) {
                let _ = q.value_ceil();
                let _ = q.milli_value_ceil();
            }
        }

        #[test]
        fn integers_round_trip(n in 0i64..=i64::MAX) {
            prop_assert_eq!(value(&n.to_string()), n);
        }
    }
}
