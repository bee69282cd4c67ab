//! Helm's `semverCompare` and Chart.yaml `kubeVersion` checks: constraint
//! strings such as `>=1.28-0` or `>= 1.19, < 1.22` against a version such as
//! `v1.20.2` (what the API server reports as `.Capabilities.KubeVersion`).
//!
//! The rules are those of the semver library Helm uses: `,` or spaces join
//! terms that must all hold, `||` joins alternatives, a missing minor or
//! patch is 0, and a pre-release version (`1.28.0-gke.1`) satisfies a term
//! only if the term's own version has a pre-release part (hence the `-0`
//! charts write to admit every build of a version).

use std::cmp::Ordering;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    core: (u64, u64, u64),
    pre: Option<String>,
}

fn parse_version(text: &str) -> Result<Version, String> {
    let t = text.trim();
    let t = t.strip_prefix('v').unwrap_or(t);
    let t = t.split('+').next().unwrap_or_default();
    let (core, pre) = match t.split_once('-') {
        Some((c, p)) => (c, Some(p.to_owned())),
        None => (t, None),
    };
    let mut parts = core.split('.');
    let mut next = |what: &str, required: bool| -> Result<u64, String> {
        match parts.next() {
            None if !required => Ok(0),
            None => Err(format!("version {text:?} has no {what}")),
            Some(p) => p
                .parse()
                .map_err(|_| format!("version {text:?}: {what} {p:?} is not a number")),
        }
    };
    let core = (
        next("major", true)?,
        next("minor", false)?,
        next("patch", false)?,
    );
    if parts.next().is_some() {
        return Err(format!("version {text:?} has more than three numbers"));
    }
    Ok(Version { core, pre })
}

fn compare(a: &Version, b: &Version) -> Ordering {
    a.core.cmp(&b.core).then_with(|| match (&a.pre, &b.pre) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => x.cmp(y),
    })
}

fn term_holds(term: &str, version: &Version) -> Result<bool, String> {
    let ops = [">=", "<=", "!=", ">", "<", "="];
    let (op, rest) = ops
        .iter()
        .find_map(|op| term.strip_prefix(op).map(|r| (*op, r)))
        .unwrap_or(("=", term));
    let wanted = parse_version(rest)?;
    if version.pre.is_some() && wanted.pre.is_none() {
        return Ok(false);
    }
    let order = compare(version, &wanted);
    Ok(match op {
        ">=" => order != Ordering::Less,
        "<=" => order != Ordering::Greater,
        ">" => order == Ordering::Greater,
        "<" => order == Ordering::Less,
        "!=" => order != Ordering::Equal,
        _ => order == Ordering::Equal,
    })
}

/// Whether `version` satisfies `constraint`; an error for either one that
/// does not parse (Helm fails the render then, too).
pub fn satisfies(constraint: &str, version: &str) -> Result<bool, String> {
    let version = parse_version(version)?;
    for alternative in constraint.split("||") {
        // `>= 1.19` is one term: glue each operator to its version first.
        let mut glued = alternative.replace(',', " ");
        for op in [">=", "<=", "!=", ">", "<", "="] {
            glued = glued.replace(&format!("{op} "), op);
        }
        let terms: Vec<&str> = glued.split_whitespace().collect();
        if terms.is_empty() {
            return Err(format!("empty constraint {constraint:?}"));
        }
        let mut all = true;
        for t in terms {
            all &= term_holds(t, &version)?;
        }
        if all {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helm_style_constraints() {
        assert!(satisfies(">=1.28-0", "v1.28.0").unwrap());
        assert!(satisfies(">=1.28-0", "v1.30.2-gke.1").unwrap());
        assert!(
            !satisfies(">=1.28", "v1.30.2-gke.1").unwrap(),
            "no -0: pre-releases excluded"
        );
        assert!(!satisfies(">=1.28-0", "v1.20.2").unwrap());
        assert!(satisfies(">= 1.19-0, < 1.22-0", "v1.20.2").unwrap());
        assert!(!satisfies(">= 1.19-0, < 1.22-0", "v1.22.0").unwrap());
        assert!(satisfies("<1.19-0 || >=1.34-0", "1.34.1").unwrap());
        assert!(satisfies(">=1.18.0-0", "v1.18.20").unwrap());
        assert!(satisfies("1.20.2", "v1.20.2").unwrap());
    }

    #[test]
    fn nonsense_is_an_error() {
        assert!(satisfies(">=banana", "v1.20.2").is_err());
        assert!(satisfies(">=1.2", "vx").is_err());
        assert!(satisfies("", "v1.20.2").is_err());
    }
}
