//! The limits file: the quota environment written by the node side into a
//! file that the OCI hook mounts read-only at [`LIMITS_FILE_IN_CONTAINER`].
//!
//! A hook runs after the runtime has fixed the container's environment, so it
//! cannot set `CUDA_DEVICE_MEMORY_LIMIT_0` and friends. It writes them here
//! instead, and hami-core reads them with precedence over the process
//! environment for every key the node decides ([`is_node_decided`]): an image
//! whose `ENV` sets `CUDA_DISABLE_CONTROL=true` or a larger limit changes nothing.
//!
//! Format: one `KEY=VALUE` per line, `#` comments and blank lines ignored.
//! Anything else is an error naming the line, never skipped.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::keys;

/// Where the hook mounts the file inside a container.
pub const LIMITS_FILE_IN_CONTAINER: &str = "/usr/local/vgpu/limits.env";
/// The file is a handful of lines; anything larger is not one of ours.
pub const MAX_LIMITS_FILE_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LimitsFileError {
    #[error("limits file is larger than {MAX_LIMITS_FILE_BYTES} bytes")]
    TooLarge,
    #[error("limits file line {line}: {reason}: {text:?}")]
    Line {
        line: usize,
        reason: &'static str,
        text: String,
    },
    #[error("cannot write {key:?} to a limits file: {reason}")]
    Unwritable { key: String, reason: &'static str },
}

/// Keys whose value belongs to the node, not to the image.
pub fn is_node_decided(key: &str) -> bool {
    matches!(
        key,
        keys::ENV_MEMORY_LIMIT
            | keys::ENV_SM_LIMIT
            | keys::ENV_SHARED_CACHE
            | keys::ENV_CORE_POLICY
            | keys::ENV_DISABLE_CONTROL
            | keys::ENV_NPU_MEM_QUOTA
            | keys::ENV_CONTEXT_LOCK
            | keys::ENV_NPU_SCHEDULE
            | keys::ENV_NPU_DEVICE_IDS
    ) || indexed(key, keys::ENV_MEMORY_LIMIT)
        || indexed(key, keys::ENV_SM_LIMIT)
}

fn indexed(key: &str, base: &str) -> bool {
    key.strip_prefix(base)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn valid_key(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Parses the file's text.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, LimitsFileError> {
    if text.len() > MAX_LIMITS_FILE_BYTES {
        return Err(LimitsFileError::TooLarge);
    }
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason| LimitsFileError::Line {
            line: i + 1,
            reason,
            text: raw.to_owned(),
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE"))?;
        if !valid_key(key) {
            return Err(bad("the key is not an environment variable name"));
        }
        if out.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(bad("the key appears twice"));
        }
    }
    Ok(out)
}

/// Renders entries in the file format, with a header naming the writer.
pub fn render<'a>(
    writer: &str,
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<String, LimitsFileError> {
    let mut out = format!("# written by {writer}; read by hami-core. Do not edit.\n");
    for (key, value) in entries {
        if !valid_key(key) {
            return Err(LimitsFileError::Unwritable {
                key: key.to_owned(),
                reason: "not an environment variable name",
            });
        }
        if value.contains(['\n', '\r']) || value.trim() != value {
            return Err(LimitsFileError::Unwritable {
                key: key.to_owned(),
                reason: "the value has a line break or surrounding blanks",
            });
        }
        out.push_str(key);
        out.push('=');
        out.push_str(value);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_comments() {
        let text = render(
            "test",
            [
                ("CUDA_DEVICE_MEMORY_LIMIT_0", "3000m"),
                ("CUDA_DEVICE_SM_LIMIT", "30"),
            ],
        )
        .unwrap();
        assert!(text.starts_with("# written by test"));
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed["CUDA_DEVICE_MEMORY_LIMIT_0"], "3000m");
        assert_eq!(parsed["CUDA_DEVICE_SM_LIMIT"], "30");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parse("\n  # c\nA=\n").unwrap()["A"], "");
    }

    #[test]
    fn malformed_lines_are_named() {
        for (text, needle) in [
            ("CUDA_DEVICE_SM_LIMIT 30", "line 1: expected KEY=VALUE"),
            ("A=1\nlower=1", "line 2: the key is not"),
            ("A=1\nA=2", "line 2: the key appears twice"),
            ("=1", "the key is not"),
            ("1A=1", "the key is not"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} -> {err}");
        }
        assert_eq!(
            parse(&"A=1\n".repeat(MAX_LIMITS_FILE_BYTES)),
            Err(LimitsFileError::TooLarge)
        );
        assert!(render("t", [("A", "1\nCUDA_DISABLE_CONTROL=true")]).is_err());
        assert!(render("t", [("a", "1")]).is_err());
    }

    #[test]
    fn node_decided_keys() {
        for k in [
            "CUDA_DEVICE_MEMORY_LIMIT",
            "CUDA_DEVICE_MEMORY_LIMIT_15",
            "CUDA_DEVICE_SM_LIMIT_0",
            "CUDA_DISABLE_CONTROL",
            "CUDA_DEVICE_MEMORY_SHARED_CACHE",
            "NPU_MEM_QUOTA",
        ] {
            assert!(is_node_decided(k), "{k}");
        }
        for k in [
            "LIBCUDA_LOG_LEVEL",
            "CUDA_TASK_PRIORITY",
            "CUDA_DEVICE_MEMORY_LIMIT_",
            "CUDA_DEVICE_MEMORY_LIMIT_X",
            "PATH",
        ] {
            assert!(!is_node_decided(k), "{k}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,300}") {
            let _ = parse(&text);
        }

        #[test]
        fn rendered_entries_parse_back(
            entries in proptest::collection::btree_map("[A-Z_][A-Z0-9_]{0,20}", "[!-~]([ -~]{0,20}[!-~])?", 0..8)
        ) {
            let text = render("p", entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
            prop_assert_eq!(parse(&text).unwrap(), entries);
        }
    }
}
