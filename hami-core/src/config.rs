//! The container's limits, read once from the environment HAMi's device plugin
//! (or our CDI spec / OCI hook) sets.
//!
//! Unlike HAMi-core, a value that does not parse is an error, and an error makes
//! the library fail closed: allocations are refused, never left unlimited.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hami_api::keys;
use hami_api::limits_file::{self, LIMITS_FILE_IN_CONTAINER};
use hami_api::quota::{MemoryQuota, Percent};
use thiserror::Error;

/// Devices one container can be limited on (`CUDA_DEVICE_MEMORY_LIMIT_0` … `_15`).
pub use hami_region::MAX_DEVICES;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("{var}={value:?}: {reason}")]
    Invalid {
        var: String,
        value: String,
        reason: String,
    },
}

/// Reads the limits file if there is one; a file that exists but cannot be
/// read or parsed is an error (fail closed), never ignored.
pub fn read_limits_file(path: &Path) -> Result<Option<BTreeMap<String, String>>, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        var: path.display().to_string(),
        value: String::new(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(invalid(e.to_string())),
    };
    limits_file::parse(&text)
        .map(Some)
        .map_err(|e| invalid(e.to_string()))
}

/// The limits the file names per device, as `cfg` parsed them.
pub fn pinned_limits(cfg: &Config, file: &BTreeMap<String, String>) -> PinnedLimits {
    let mut pinned = PinnedLimits::default();
    for i in 0..MAX_DEVICES {
        if file.contains_key(&keys::env_memory_limit_for(i)) {
            pinned.memory_bytes[i] = Some(cfg.memory_limit[i].unwrap_or(0));
        }
        if file.contains_key(&keys::env_sm_limit_for(i)) {
            pinned.sm_percent[i] = Some(cfg.sm_limit[i].map_or(0, u32::from));
        }
    }
    pinned
}

/// With a limits file, the node decides its keys: the environment is not
/// consulted for them, so an image cannot lift a quota the node set.
pub fn layered(
    file: Option<&BTreeMap<String, String>>,
    key: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    match file {
        Some(f) if limits_file::is_node_decided(key) => f.get(key).cloned(),
        Some(f) => f.get(key).cloned().or_else(|| env(key)),
        None => env(key),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CorePolicy {
    /// Throttle only while other tasks share the device (HAMi's default).
    #[default]
    Default,
    /// Always throttle to the share.
    Force,
    /// Never throttle.
    Disable,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// Bytes per device; `None` = no limit (unset or 0, as in HAMi).
    pub memory_limit: [Option<u64>; MAX_DEVICES],
    /// Percent per device; `None` = no limit (unset, 0 or 100).
    pub sm_limit: [Option<u8>; MAX_DEVICES],
    pub shared_cache: Option<PathBuf>,
    /// Node-wide lock held around context creation (`HAMI_CORE_CONTEXT_LOCK`).
    pub context_lock: Option<PathBuf>,
    /// The node agent's NPU arbiter socket (`HAMI_CORE_NPU_SCHEDULE`).
    pub npu_schedule: Option<PathBuf>,
    pub core_policy: CorePolicy,
    pub task_priority: Option<i32>,
    pub log_level: u8,
    /// `CUDA_DISABLE_CONTROL=true`: pass everything through untouched.
    pub disabled: bool,
    /// The per-device limits the node's read-only limits file names
    /// (`CUDA_DEVICE_MEMORY_LIMIT_<i>`, `CUDA_DEVICE_SM_LIMIT_<i>`): the
    /// shared region, which the container can write, must agree with them.
    pub pinned: Option<PinnedLimits>,
}

/// Limits the node pinned, per device; `None` where the file names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PinnedLimits {
    pub memory_bytes: [Option<u64>; MAX_DEVICES],
    pub sm_percent: [Option<u32>; MAX_DEVICES],
}

impl Config {
    /// The process environment, overridden by the node's limits file when the
    /// OCI hook mounted one (see [`hami_api::limits_file`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        let file = read_limits_file(Path::new(LIMITS_FILE_IN_CONTAINER))?;
        let mut cfg = Self::from_lookup(|k| layered(file.as_ref(), k, |k| std::env::var(k).ok()))?;
        cfg.pinned = file.as_ref().map(|f| pinned_limits(&cfg, f));
        Ok(cfg)
    }

    /// Reads through `get` so tests need not touch the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let invalid = |var: &str, value: &str, reason: String| ConfigError::Invalid {
            var: var.to_owned(),
            value: value.to_owned(),
            reason,
        };
        let mut cfg = Config {
            log_level: crate::log::WARN,
            ..Config::default()
        };
        if let Some(v) = get(keys::ENV_LOG_LEVEL) {
            cfg.log_level = v
                .parse()
                .map_err(|_| invalid(keys::ENV_LOG_LEVEL, &v, "expected a number 0-4".into()))?;
        }
        if let Some(v) = get(keys::ENV_DISABLE_CONTROL) {
            cfg.disabled = match v.as_str() {
                "true" | "1" => true,
                "false" | "0" | "" => false,
                _ => {
                    return Err(invalid(
                        keys::ENV_DISABLE_CONTROL,
                        &v,
                        "expected true or false".into(),
                    ))
                }
            };
        }

        let memory = |var: &str| -> Result<Option<u64>, ConfigError> {
            match get(var) {
                None => Ok(None),
                Some(v) => {
                    let q =
                        MemoryQuota::parse_env(&v).map_err(|e| invalid(var, &v, e.to_string()))?;
                    Ok((q.bytes() != 0).then_some(q.bytes()))
                }
            }
        };
        // Precedence: a limit in the shared region (written by the node side)
        // over CUDA_DEVICE_MEMORY_LIMIT_<i> over CUDA_DEVICE_MEMORY_LIMIT over
        // the Ascend device plugin's NPU_MEM_QUOTA (MiB).
        let npu = match get(keys::ENV_NPU_MEM_QUOTA) {
            None => None,
            Some(v) => {
                let q =
                    MemoryQuota::parse(&v, hami_api::quota::BareUnit::Mebibytes, "NPU_MEM_QUOTA")
                        .map_err(|e| invalid(keys::ENV_NPU_MEM_QUOTA, &v, e.to_string()))?;
                (q.bytes() != 0).then_some(q.bytes())
            }
        };
        let all = memory(keys::ENV_MEMORY_LIMIT)?.or(npu);
        for (i, slot) in cfg.memory_limit.iter_mut().enumerate() {
            *slot = memory(&keys::env_memory_limit_for(i))?.or(all);
        }

        let percent = |var: &str| -> Result<Option<u8>, ConfigError> {
            match get(var) {
                None => Ok(None),
                Some(v) => {
                    let p = Percent::parse(&v, "compute limit")
                        .map_err(|e| invalid(var, &v, e.to_string()))?;
                    Ok((p.get() != 0 && p.get() != 100).then_some(p.get()))
                }
            }
        };
        let all = percent(keys::ENV_SM_LIMIT)?;
        for (i, slot) in cfg.sm_limit.iter_mut().enumerate() {
            *slot = percent(&keys::env_sm_limit_for(i))?.or(all);
        }

        cfg.shared_cache = get(keys::ENV_SHARED_CACHE)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        cfg.context_lock = get(keys::ENV_CONTEXT_LOCK)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        cfg.npu_schedule = get(keys::ENV_NPU_SCHEDULE)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        if let Some(v) = get(keys::ENV_CORE_POLICY) {
            cfg.core_policy = match v.as_str() {
                "default" | "" => CorePolicy::Default,
                "force" => CorePolicy::Force,
                "disable" => CorePolicy::Disable,
                _ => {
                    return Err(invalid(
                        keys::ENV_CORE_POLICY,
                        &v,
                        "expected default, force or disable".into(),
                    ))
                }
            };
        }
        if let Some(v) = get(keys::ENV_NPU_PRIORITY) {
            cfg.task_priority =
                Some(v.parse().map_err(|_| {
                    invalid(keys::ENV_NPU_PRIORITY, &v, "expected an integer".into())
                })?);
        }
        if let Some(v) = get(keys::ENV_TASK_PRIORITY) {
            cfg.task_priority =
                Some(v.parse().map_err(|_| {
                    invalid(keys::ENV_TASK_PRIORITY, &v, "expected an integer".into())
                })?);
        }
        Ok(cfg)
    }

    pub fn has_memory_limit(&self) -> bool {
        self.memory_limit.iter().any(Option::is_some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| env.get(k).cloned())
    }

    #[test]
    fn reads_hami_device_plugin_env() {
        let c = cfg(&[
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "3000m"),
            ("CUDA_DEVICE_MEMORY_LIMIT_1", "4g"),
            ("CUDA_DEVICE_SM_LIMIT", "30"),
            (
                "CUDA_DEVICE_MEMORY_SHARED_CACHE",
                "/usr/local/vgpu/abc.cache",
            ),
            ("GPU_CORE_UTILIZATION_POLICY", "force"),
            ("CUDA_TASK_PRIORITY", "1"),
        ])
        .unwrap();
        assert_eq!(c.memory_limit[0], Some(3000 << 20));
        assert_eq!(c.memory_limit[1], Some(4 << 30));
        assert_eq!(c.memory_limit[2], None);
        assert_eq!(c.sm_limit[5], Some(30));
        assert_eq!(c.core_policy, CorePolicy::Force);
        assert_eq!(c.task_priority, Some(1));
        assert_eq!(
            c.shared_cache.as_deref(),
            Some(std::path::Path::new("/usr/local/vgpu/abc.cache"))
        );
    }

    #[test]
    fn global_limit_applies_where_no_per_device_one() {
        let c = cfg(&[
            ("CUDA_DEVICE_MEMORY_LIMIT", "1g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_2", "2g"),
        ])
        .unwrap();
        assert_eq!(c.memory_limit[0], Some(1 << 30));
        assert_eq!(c.memory_limit[2], Some(2 << 30));
        assert!(cfg(&[("CUDA_DEVICE_MEMORY_LIMIT", "0")])
            .unwrap()
            .memory_limit
            .iter()
            .all(Option::is_none));
        assert_eq!(
            cfg(&[("CUDA_DEVICE_SM_LIMIT", "100")]).unwrap().sm_limit[0],
            None
        );
    }

    #[test]
    fn npu_quota_is_mib_and_yields_to_cuda_limits() {
        let c = cfg(&[("NPU_MEM_QUOTA", "16384")]).unwrap();
        assert_eq!(c.memory_limit[0], Some(16 << 30));
        assert_eq!(c.memory_limit[7], Some(16 << 30));
        let c = cfg(&[
            ("NPU_MEM_QUOTA", "16384"),
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "1g"),
        ])
        .unwrap();
        assert_eq!(c.memory_limit[0], Some(1 << 30));
        assert_eq!(c.memory_limit[1], Some(16 << 30));
        assert_eq!(
            cfg(&[("NPU_PRIORITY", "1")]).unwrap().task_priority,
            Some(1)
        );
    }

    #[test]
    fn the_limits_file_outranks_the_image_environment() {
        let file: BTreeMap<String, String> = [
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "1g"),
            ("LIBCUDA_LOG_LEVEL", "3"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let image: HashMap<&str, &str> = [
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "80g"),
            ("CUDA_DEVICE_MEMORY_LIMIT", "80g"),
            ("CUDA_DISABLE_CONTROL", "true"),
            ("CUDA_TASK_PRIORITY", "1"),
            ("LIBCUDA_LOG_LEVEL", "0"),
        ]
        .into_iter()
        .collect();
        let env = |k: &str| image.get(k).map(|v| v.to_string());
        let c = Config::from_lookup(|k| layered(Some(&file), k, env)).unwrap();
        assert_eq!(c.memory_limit[0], Some(1 << 30));
        assert_eq!(
            c.memory_limit[1], None,
            "the image's global limit is not the node's"
        );
        assert!(!c.disabled);
        assert_eq!(
            c.task_priority,
            Some(1),
            "not a node key: the image may set it"
        );
        assert_eq!(c.log_level, 3);
        // Without a file the environment is all there is.
        let c = Config::from_lookup(|k| layered(None, k, env)).unwrap();
        assert!(c.disabled);
    }

    #[test]
    fn an_unreadable_or_garbled_limits_file_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.env");
        assert_eq!(read_limits_file(&path).unwrap(), None);
        std::fs::write(&path, "CUDA_DEVICE_MEMORY_LIMIT_0 1g\n").unwrap();
        let err = read_limits_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("limits.env") && err.contains("line 1"),
            "{err}"
        );
        std::fs::create_dir(dir.path().join("dir")).unwrap();
        assert!(read_limits_file(&dir.path().join("dir")).is_err());
    }

    #[test]
    fn garbage_is_an_error_naming_the_variable() {
        for (var, value) in [
            ("CUDA_DEVICE_MEMORY_LIMIT", "4Gi"),
            ("CUDA_DEVICE_MEMORY_LIMIT_3", "1.5g"),
            ("CUDA_DEVICE_SM_LIMIT", "150"),
            ("CUDA_DEVICE_SM_LIMIT_0", "-5"),
            ("GPU_CORE_UTILIZATION_POLICY", "sometimes"),
            ("CUDA_TASK_PRIORITY", "high"),
            ("LIBCUDA_LOG_LEVEL", "verbose"),
            ("CUDA_DISABLE_CONTROL", "yes please"),
            ("NPU_MEM_QUOTA", "16GB"),
            ("NPU_PRIORITY", "urgent"),
        ] {
            let err = cfg(&[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(var) && err.contains(value), "{err}");
        }
    }
}
