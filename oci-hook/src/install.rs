//! `hami-oci-hook install`: makes a container runtime run the hook.
//!
//! - podman and CRI-O: a `hooks.d` file per stage, matching the annotations
//!   that ask for hami-core (CRI-O reads CDI specs from /etc/cdi and
//!   /var/run/cdi by default, so nothing else is needed there);
//! - containerd 1.7 (config version 2) and 2.x (version 3): CDI on, the
//!   `hami.io/*` and `huawei.com/*` annotations passed from pod to container,
//!   and the hook in a `base_runtime_spec`.
//!
//! Existing configuration is merged into, never replaced: the user's keys,
//! comments and other runtimes stay as they were, and the previous file is
//! kept beside it as `<file>.hami-backup`. Running install twice changes nothing.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use thiserror::Error;
use toml_edit::{Array, DocumentMut, Item, Table};

use hami_cdi::builder::HOOK_ENV;

use crate::cli::HookArgs;

#[derive(Debug, Error)]
pub enum InstallError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

type Result<T> = std::result::Result<T, InstallError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> InstallError {
    let what = what.into();
    move |source| InstallError::Io { what, source }
}

fn bad(what: impl Into<String>) -> InstallError {
    InstallError::Config(what.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Runtime {
    Containerd,
    Crio,
    Podman,
}

#[derive(Args, Debug, Clone)]
pub struct InstallArgs {
    #[arg(long, value_enum)]
    pub runtime: Runtime,
    /// Print the files that would be written instead of writing them.
    #[arg(long)]
    pub dry_run: bool,
    /// The hook binary the runtime runs (default: this executable).
    #[arg(long)]
    pub hook_path: Option<PathBuf>,
    /// hooks.d directory (podman, CRI-O).
    #[arg(long, default_value = "/usr/share/containers/oci/hooks.d")]
    pub hooks_dir: PathBuf,
    /// containerd's config file.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    pub containerd_config: PathBuf,
    /// Where the base runtime spec with the hook is written (containerd).
    #[arg(long, default_value = "/etc/containerd/hami-base-spec.json")]
    pub base_spec: PathBuf,
    /// The containerd runtime handler to configure.
    #[arg(long, default_value = "runc")]
    pub runtime_name: String,
    /// CDI spec directories to enable (containerd).
    #[arg(long, value_delimiter = ',', default_value = "/etc/cdi,/var/run/cdi")]
    pub cdi_spec_dirs: Vec<String>,
    #[command(flatten)]
    pub hook: HookArgs,
}

/// Annotations passed from the pod to its containers (containerd globs).
pub const ANNOTATION_GLOBS: [&str; 2] = ["hami.io/*", "huawei.com/*"];
/// hooks.d: an annotation key that asks for hami-core (one regex, so the
/// hooks.d rule "every listed annotation must match" cannot bite).
pub const HOOKS_D_ANNOTATION: &str = r"^(hami\.io/([^/]+-devices-to-allocate|gpumem|gpucores|vnpu-core-memory|devices)|huawei\.com/vnpu-mode)$";

/// A file install would write, and its new contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub path: PathBuf,
    pub contents: String,
}

fn hook_path(args: &InstallArgs) -> Result<PathBuf> {
    match &args.hook_path {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe().map_err(io("finding this executable")),
    }
}

fn hook_argv(stage: &str, hook: &HookArgs) -> Vec<String> {
    let mut argv = vec!["hami-oci-hook".to_owned(), stage.to_owned()];
    argv.extend(hook.argv());
    argv
}

/// The hooks.d files (schema 1.0.0): createContainer injects, poststop cleans.
pub fn hooks_d(hook: &Path, args: &HookArgs, dir: &Path) -> Vec<Planned> {
    [
        ("createContainer", "hami-oci-hook.json"),
        ("poststop", "hami-oci-hook-poststop.json"),
    ]
    .into_iter()
    .map(|(stage, file)| {
        let doc = json!({
            "version": "1.0.0",
            "hook": {
                "path": hook,
                "args": hook_argv(stage, args),
                "env": [HOOK_ENV],
                "timeout": 10
            },
            "when": { "annotations": { HOOKS_D_ANNOTATION: ".*" } },
            "stages": [stage]
        });
        Planned {
            path: dir.join(file),
            contents: serde_json::to_string_pretty(&doc).expect("static JSON") + "\n",
        }
    })
    .collect()
}

fn table_mut<'a>(parent: &'a mut Table, key: &str) -> Result<&'a mut Table> {
    let item = parent.entry(key).or_insert_with(|| {
        let mut t = Table::new();
        t.set_implicit(true);
        Item::Table(t)
    });
    item.as_table_mut()
        .ok_or_else(|| bad(format!("containerd config: {key} is not a table")))
}

/// Adds `values` to the string array at `key`, keeping what is there.
fn union_array(table: &mut Table, key: &str, values: &[String]) -> Result<()> {
    let item = table
        .entry(key)
        .or_insert_with(|| Item::Value(Array::new().into()));
    let array = item
        .as_array_mut()
        .ok_or_else(|| bad(format!("containerd config: {key} is not an array")))?;
    for v in values {
        if !array.iter().any(|e| e.as_str() == Some(v)) {
            array.push(v.as_str());
        }
    }
    Ok(())
}

/// The containerd config with CDI, annotation passthrough and the base spec
/// set; returns it and the base spec the runtime had before (if any).
pub fn merge_containerd(existing: &str, args: &InstallArgs) -> Result<(String, Option<PathBuf>)> {
    let mut doc: DocumentMut = existing
        .parse()
        .map_err(|e| bad(format!("containerd config is not TOML: {e}")))?;
    let version = match doc.get("version").map(|v| v.as_integer()) {
        None => {
            if !existing.trim().is_empty() {
                return Err(bad(
                    "containerd config has no `version`: version 1 configs are not supported; \
                     migrate with `containerd config migrate`",
                ));
            }
            doc["version"] = toml_edit::value(2);
            2
        }
        Some(Some(v @ (2 | 3))) => v,
        Some(other) => {
            return Err(bad(format!(
                "containerd config version {other:?} is not supported (2 or 3)"
            )))
        }
    };
    let plugin = if version == 3 {
        "io.containerd.cri.v1.runtime"
    } else {
        "io.containerd.grpc.v1.cri"
    };
    let plugins = table_mut(doc.as_table_mut(), "plugins")?;
    let cri = table_mut(plugins, plugin)?;
    cri["enable_cdi"] = toml_edit::value(true);
    union_array(cri, "cdi_spec_dirs", &args.cdi_spec_dirs)?;
    let runtimes = table_mut(table_mut(cri, "containerd")?, "runtimes")?;
    let runtime = table_mut(runtimes, &args.runtime_name)?;
    if !runtime.contains_key("runtime_type") {
        runtime["runtime_type"] = toml_edit::value("io.containerd.runc.v2");
    }
    let globs: Vec<String> = ANNOTATION_GLOBS.iter().map(|s| s.to_string()).collect();
    union_array(runtime, "pod_annotations", &globs)?;
    union_array(runtime, "container_annotations", &globs)?;
    let ours = args.base_spec.display().to_string();
    let previous = runtime
        .get("base_runtime_spec")
        .and_then(|v| v.as_str())
        .filter(|p| !p.is_empty() && *p != ours)
        .map(PathBuf::from);
    runtime["base_runtime_spec"] = toml_edit::value(ours);
    Ok((doc.to_string(), previous))
}

/// containerd's default Linux spec (what `ctr oci spec` prints), the base
/// the hook is added to when the runtime had no base spec of its own.
pub fn default_runtime_spec() -> Value {
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ]);
    json!({
        "ociVersion": "1.1.0",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "cgroupsPath": "/default",
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/sys/devices/virtual/powercap", "/proc/scsi"
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// `spec` with the hook at createContainer and poststop; an earlier entry of
/// this hook (same path) is replaced, other hooks are kept.
pub fn with_hooks(mut spec: Value, hook: &Path, args: &HookArgs) -> Result<Value> {
    let obj = spec
        .as_object_mut()
        .ok_or_else(|| bad("base runtime spec is not a JSON object"))?;
    let hooks = obj
        .entry("hooks")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| bad("base runtime spec: hooks is not an object"))?;
    let path = hook.display().to_string();
    for stage in ["createContainer", "poststop"] {
        let list = hooks
            .entry(stage)
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .ok_or_else(|| bad(format!("base runtime spec: hooks.{stage} is not a list")))?;
        list.retain(|h| h.get("path").and_then(Value::as_str) != Some(path.as_str()));
        list.push(
            json!({"path": path, "args": hook_argv(stage, args), "env": [HOOK_ENV], "timeout": 10}),
        );
    }
    Ok(spec)
}

/// Everything install would write for `args`.
pub fn plan(args: &InstallArgs) -> Result<Vec<Planned>> {
    let hook = hook_path(args)?;
    match args.runtime {
        Runtime::Podman | Runtime::Crio => Ok(hooks_d(&hook, &args.hook, &args.hooks_dir)),
        Runtime::Containerd => {
            let existing = match std::fs::read_to_string(&args.containerd_config) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => {
                    return Err(io(format!("reading {}", args.containerd_config.display()))(
                        e,
                    ))
                }
            };
            let (config, previous) = merge_containerd(&existing, args)?;
            let base = match previous.as_deref().or(Some(args.base_spec.as_path())) {
                Some(p) if p.exists() => {
                    let text = std::fs::read_to_string(p)
                        .map_err(io(format!("reading {}", p.display())))?;
                    serde_json::from_str(&text)
                        .map_err(|e| bad(format!("{} is not JSON: {e}", p.display())))?
                }
                _ => default_runtime_spec(),
            };
            let spec = with_hooks(base, &hook, &args.hook)?;
            Ok(vec![
                Planned {
                    path: args.base_spec.clone(),
                    contents: serde_json::to_string_pretty(&spec).expect("a JSON value") + "\n",
                },
                Planned {
                    path: args.containerd_config.clone(),
                    contents: config,
                },
            ])
        }
    }
}

/// Writes `planned`, keeping the previous contents as `<file>.hami-backup`;
/// returns whether anything changed.
pub fn write(planned: &Planned) -> Result<bool> {
    let path = &planned.path;
    let old = std::fs::read_to_string(path).ok();
    if old.as_deref() == Some(planned.contents.as_str()) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    if let Some(old) = old {
        let mut backup = path.as_os_str().to_owned();
        backup.push(".hami-backup");
        std::fs::write(&backup, old).map_err(io(format!("backing up {}", path.display())))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".hami-tmp");
    std::fs::write(&tmp, &planned.contents).map_err(io(format!("writing {tmp:?}")))?;
    std::fs::rename(&tmp, path).map_err(io(format!("replacing {}", path.display())))?;
    Ok(true)
}

pub fn run(args: &InstallArgs) -> Result<()> {
    let planned = plan(args)?;
    for p in &planned {
        if args.dry_run {
            println!("# {}\n{}", p.path.display(), p.contents);
        } else if write(p)? {
            println!("wrote {}", p.path.display());
        } else {
            println!("unchanged {}", p.path.display());
        }
    }
    if !args.dry_run && args.runtime == Runtime::Containerd {
        println!("restart containerd to apply: systemctl restart containerd");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        install: InstallArgs,
    }

    fn args(extra: &[&str]) -> InstallArgs {
        let mut argv = vec![
            "x",
            "--runtime",
            "containerd",
            "--hook-path",
            "/opt/hami/hami-oci-hook",
        ];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).install
    }

    const USER_17: &str = r#"# my cluster's settings
version = 2
root = "/data/containerd"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.local/pause:3.9"
  cdi_spec_dirs = ["/opt/cdi"]

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  pod_annotations = ["io.katacontainers.*"]

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
  runtime_type = "io.containerd.kata.v2"
"#;

    #[test]
    fn containerd_17_merge_keeps_the_users_settings() {
        let (merged, previous) = merge_containerd(USER_17, &args(&[])).unwrap();
        assert_eq!(previous, None);
        let doc: DocumentMut = merged.parse().unwrap();
        let cri = &doc["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(
            cri["sandbox_image"].as_str(),
            Some("registry.local/pause:3.9")
        );
        assert_eq!(cri["enable_cdi"].as_bool(), Some(true));
        let dirs: Vec<_> = cri["cdi_spec_dirs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(dirs, ["/opt/cdi", "/etc/cdi", "/var/run/cdi"]);
        let runc = &cri["containerd"]["runtimes"]["runc"];
        let pod: Vec<_> = runc["pod_annotations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(pod, ["io.katacontainers.*", "hami.io/*", "huawei.com/*"]);
        assert_eq!(
            runc["base_runtime_spec"].as_str(),
            Some("/etc/containerd/hami-base-spec.json")
        );
        assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(true));
        assert!(cri["containerd"]["runtimes"]["kata"].is_table());
        assert!(merged.starts_with("# my cluster's settings"), "{merged}");
        // A second install is a no-op.
        let (again, _) = merge_containerd(&merged, &args(&[])).unwrap();
        assert_eq!(again, merged);
    }

    #[test]
    fn containerd_2_uses_the_new_plugin_and_an_empty_config_gets_version_2() {
        let (merged, _) = merge_containerd("version = 3\n", &args(&[])).unwrap();
        let doc: DocumentMut = merged.parse().unwrap();
        let runtime = &doc["plugins"]["io.containerd.cri.v1.runtime"];
        assert_eq!(runtime["enable_cdi"].as_bool(), Some(true));
        assert!(runtime["containerd"]["runtimes"]["runc"]["base_runtime_spec"].is_str());
        let (fresh, _) = merge_containerd("", &args(&[])).unwrap();
        assert!(fresh.contains("version = 2"), "{fresh}");
        for bad_config in [
            "root = \"/x\"\n",
            "version = 1\n",
            "version = \"2\"\n",
            "[[",
        ] {
            assert!(
                merge_containerd(bad_config, &args(&[])).is_err(),
                "{bad_config}"
            );
        }
    }

    #[test]
    fn an_existing_base_spec_is_reported_and_hooks_are_not_doubled() {
        let user = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\nbase_runtime_spec = \"/etc/mine.json\"\n";
        let (_, previous) = merge_containerd(user, &args(&[])).unwrap();
        assert_eq!(previous, Some(PathBuf::from("/etc/mine.json")));
        let a = args(&["--vendor", "ascend"]);
        let mut spec = default_runtime_spec();
        spec["hooks"] = json!({"createContainer": [{"path": "/usr/bin/other-hook"}]});
        let once = with_hooks(spec, Path::new("/opt/hami/hami-oci-hook"), &a.hook).unwrap();
        let twice =
            with_hooks(once.clone(), Path::new("/opt/hami/hami-oci-hook"), &a.hook).unwrap();
        assert_eq!(once, twice);
        let create = once["hooks"]["createContainer"].as_array().unwrap();
        assert_eq!(create.len(), 2, "the user's hook is kept");
        assert_eq!(create[1]["args"][1], "createContainer");
        assert!(create[1]["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "ascend"));
        assert_eq!(once["hooks"]["poststop"][0]["args"][1], "poststop");
    }

    #[test]
    fn hooks_d_files_match_only_requesting_annotations() {
        let files = hooks_d(
            Path::new("/opt/hami/hami-oci-hook"),
            &args(&[]).hook,
            Path::new("/etc/containers/oci/hooks.d"),
        );
        assert_eq!(files.len(), 2);
        let doc: Value = serde_json::from_str(&files[0].contents).unwrap();
        assert_eq!(doc["stages"], json!(["createContainer"]));
        assert_eq!(
            doc["hook"]["env"],
            json!([HOOK_ENV]),
            "an explicit environment, never the container's"
        );
        let when = doc["when"]["annotations"].as_object().unwrap();
        assert_eq!(when.len(), 1);
        // The key regex accepts exactly the annotations the hook acts on.
        let pattern = when.keys().next().unwrap();
        assert_eq!(pattern, HOOKS_D_ANNOTATION);
    }

    #[test]
    fn write_keeps_a_backup_and_reports_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "version = 2\n").unwrap();
        let p = Planned {
            path: path.clone(),
            contents: "version = 2\n# new\n".into(),
        };
        assert!(write(&p).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("config.toml.hami-backup")).unwrap(),
            "version = 2\n"
        );
        assert!(!write(&p).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), p.contents);
    }
}
