//! `hami-node doctor`: what a node needs for hami-rs, checked and printed as
//! a table. Everything is looked up under a root (`/` on a node; a fake tree
//! in tests), and nothing is changed.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Works without it, but something an operator expects is missing.
    Warn,
    Fail,
}

impl Outcome {
    fn word(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct DoctorConfig {
    pub root: PathBuf,
    /// nvidia, ascend or mock.
    pub vendor: String,
    /// containerd, crio or podman.
    pub runtime: String,
    pub lib_dir: PathBuf,
    pub region_dir: PathBuf,
}

impl Default for DoctorConfig {
    fn default() -> Self {
        Self {
            root: "/".into(),
            vendor: "nvidia".into(),
            runtime: "containerd".into(),
            lib_dir: "/usr/local/vgpu".into(),
            region_dir: "/var/run/hami/vgpu".into(),
        }
    }
}

const LIB_DIRS: [&str; 5] = [
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "usr/lib64",
    "usr/lib",
    "usr/local/nvidia/lib64",
];

impl DoctorConfig {
    fn at(&self, path: impl AsRef<Path>) -> PathBuf {
        self.root
            .join(path.as_ref().strip_prefix("/").unwrap_or(path.as_ref()))
    }

    fn find_library(&self, name: &str) -> Option<PathBuf> {
        LIB_DIRS
            .iter()
            .map(|d| self.at(d).join(name))
            .find(|p| p.exists())
    }
}

fn check(name: &'static str, outcome: Outcome, detail: impl Into<String>) -> Check {
    Check {
        name,
        outcome,
        detail: detail.into(),
    }
}

fn numbered(dir: &Path, prefix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix(prefix))
                        .is_some_and(|rest| {
                            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
                        })
                })
                .count()
        })
        .unwrap_or(0)
}

fn driver_checks(cfg: &DoctorConfig) -> Vec<Check> {
    let dev = cfg.at("/dev");
    match cfg.vendor.as_str() {
        "mock" => vec![check(
            "driver libraries",
            Outcome::Ok,
            "mock vendor: none needed",
        )],
        "ascend" => {
            let hal = [
                "usr/local/Ascend/driver/lib64/driver/libascend_hal.so",
                "usr/local/Ascend/driver/lib64/libascend_hal.so",
            ]
            .iter()
            .map(|p| cfg.at(p))
            .find(|p| p.exists());
            let n = numbered(&dev, "davinci");
            vec![
                match hal {
                    Some(p) => check("driver libraries", Outcome::Ok, p.display().to_string()),
                    None => check(
                        "driver libraries",
                        Outcome::Fail,
                        "libascend_hal.so not found under /usr/local/Ascend/driver",
                    ),
                },
                if n > 0 && dev.join("davinci_manager").exists() {
                    check(
                        "device nodes",
                        Outcome::Ok,
                        format!("{n} × /dev/davinciN, /dev/davinci_manager"),
                    )
                } else {
                    check(
                        "device nodes",
                        Outcome::Fail,
                        format!("{n} × /dev/davinciN; /dev/davinci_manager needed too"),
                    )
                },
            ]
        }
        _ => {
            let libs: Vec<String> = ["libcuda.so.1", "libnvidia-ml.so.1"]
                .iter()
                .filter(|l| cfg.find_library(l).is_none())
                .map(|l| (*l).to_owned())
                .collect();
            let n = numbered(&dev, "nvidia");
            vec![
                if libs.is_empty() {
                    check(
                        "driver libraries",
                        Outcome::Ok,
                        "libcuda.so.1, libnvidia-ml.so.1",
                    )
                } else {
                    check(
                        "driver libraries",
                        Outcome::Fail,
                        format!("missing {}", libs.join(", ")),
                    )
                },
                if n > 0 && dev.join("nvidiactl").exists() {
                    check(
                        "device nodes",
                        Outcome::Ok,
                        format!("{n} × /dev/nvidiaN, /dev/nvidiactl"),
                    )
                } else {
                    check(
                        "device nodes",
                        Outcome::Fail,
                        format!("{n} × /dev/nvidiaN; /dev/nvidiactl needed too"),
                    )
                },
            ]
        }
    }
}

fn runtime_checks(cfg: &DoctorConfig) -> Vec<Check> {
    let mut out = Vec::new();
    let hook = cfg.at(&cfg.lib_dir).join("hami-oci-hook");
    let library = cfg.at(&cfg.lib_dir).join("libhami_core.so");
    out.push(if library.exists() {
        check("interposer", Outcome::Ok, library.display().to_string())
    } else {
        check(
            "interposer",
            Outcome::Fail,
            format!(
                "{} missing (the DaemonSet's install step puts it there)",
                library.display()
            ),
        )
    });
    match cfg.runtime.as_str() {
        "containerd" => {
            let config = cfg.at("/etc/containerd/config.toml");
            let text = std::fs::read_to_string(&config).unwrap_or_default();
            let cdi = text.lines().any(|l| {
                let l: String = l.chars().filter(|c| !c.is_whitespace()).collect();
                l == "enable_cdi=true"
            });
            out.push(if cdi {
                check(
                    "runtime CDI",
                    Outcome::Ok,
                    format!("enable_cdi = true in {}", config.display()),
                )
            } else {
                check(
                    "runtime CDI",
                    Outcome::Fail,
                    format!("enable_cdi = true not in {}", config.display()),
                )
            });
            let base = cfg.at("/etc/containerd/hami-base-spec.json");
            out.push(if text.contains("hami-base-spec.json") && base.exists() && hook.exists() {
                check("runtime hook", Outcome::Ok, "base_runtime_spec with the hami hook")
            } else {
                check("runtime hook", Outcome::Warn, "hook not installed: annotation-only pods (Ascend hami-core mode) will not be injected; run hami-oci-hook install --runtime containerd")
            });
        }
        _ => {
            let hooks = cfg.at("/usr/share/containers/oci/hooks.d");
            let installed = std::fs::read_dir(&hooks)
                .map(|e| {
                    e.flatten()
                        .any(|f| f.file_name().to_string_lossy().contains("hami"))
                })
                .unwrap_or(false);
            out.push(if installed && hook.exists() {
                check(
                    "runtime hook",
                    Outcome::Ok,
                    format!("hami hooks in {}", hooks.display()),
                )
            } else {
                check(
                    "runtime hook",
                    Outcome::Warn,
                    format!("no hami hook in {}", hooks.display()),
                )
            });
        }
    }
    for dir in ["/etc/cdi", "/var/run/cdi"] {
        let p = cfg.at(dir);
        out.push(if p.is_dir() {
            check("CDI directory", Outcome::Ok, p.display().to_string())
        } else {
            check(
                "CDI directory",
                Outcome::Fail,
                format!("{} missing", p.display()),
            )
        });
    }
    let regions = cfg.at(&cfg.region_dir);
    out.push(if regions.is_dir() {
        check(
            "region directory",
            Outcome::Ok,
            regions.display().to_string(),
        )
    } else {
        check(
            "region directory",
            Outcome::Warn,
            format!(
                "{} missing (created on first allocation)",
                regions.display()
            ),
        )
    });
    out
}

fn kubelet_checks(cfg: &DoctorConfig) -> Vec<Check> {
    use std::os::unix::fs::FileTypeExt;
    let sock = cfg.at("/var/lib/kubelet/device-plugins/kubelet.sock");
    let is_socket = std::fs::metadata(&sock).is_ok_and(|m| m.file_type().is_socket());
    vec![if is_socket {
        check("kubelet socket", Outcome::Ok, sock.display().to_string())
    } else {
        check(
            "kubelet socket",
            Outcome::Warn,
            format!(
                "{} is not a socket (not a Kubernetes node, or kubelet is down)",
                sock.display()
            ),
        )
    }]
}

pub fn run(cfg: &DoctorConfig) -> Vec<Check> {
    let mut all = driver_checks(cfg);
    all.extend(runtime_checks(cfg));
    all.extend(kubelet_checks(cfg));
    all
}

/// The table, one row per check.
pub fn table(checks: &[Check]) -> String {
    let mut out = String::from("| check | result | detail |\n|---|---|---|\n");
    for c in checks {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            c.name,
            c.outcome.word(),
            c.detail.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, path: &str) {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "").unwrap();
    }

    fn outcomes(checks: &[Check]) -> Vec<(&'static str, Outcome)> {
        checks.iter().map(|c| (c.name, c.outcome)).collect()
    }

    #[test]
    fn an_empty_node_fails_and_says_what_is_missing() {
        let root = tempfile::tempdir().unwrap();
        let cfg = DoctorConfig {
            root: root.path().into(),
            ..DoctorConfig::default()
        };
        let checks = run(&cfg);
        let table = table(&checks);
        assert!(checks.iter().any(|c| c.outcome == Outcome::Fail));
        assert!(
            table.contains("| driver libraries | FAIL | missing libcuda.so.1, libnvidia-ml.so.1 |"),
            "{table}"
        );
        assert!(table.contains("| kubelet socket | WARN |"), "{table}");
    }

    #[test]
    fn a_prepared_node_passes() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for f in [
            "usr/lib/x86_64-linux-gnu/libcuda.so.1",
            "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
            "dev/nvidia0",
            "dev/nvidia1",
            "dev/nvidiactl",
            "usr/local/vgpu/libhami_core.so",
            "usr/local/vgpu/hami-oci-hook",
            "etc/containerd/hami-base-spec.json",
        ] {
            touch(r, f);
        }
        std::fs::write(
            r.join("etc/containerd/config.toml"),
            "[plugins.\"io.containerd.grpc.v1.cri\"]\n  enable_cdi = true\n  base_runtime_spec = \"/etc/containerd/hami-base-spec.json\"\n",
        )
        .unwrap();
        for d in [
            "etc/cdi",
            "var/run/cdi",
            "var/run/hami/vgpu",
            "var/lib/kubelet/device-plugins",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        let sock = r.join("var/lib/kubelet/device-plugins/kubelet.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let cfg = DoctorConfig {
            root: r.into(),
            ..DoctorConfig::default()
        };
        let checks = run(&cfg);
        assert!(
            checks.iter().all(|c| c.outcome == Outcome::Ok),
            "{}",
            table(&checks)
        );
        assert_eq!(
            outcomes(&checks)[..2],
            [
                ("driver libraries", Outcome::Ok),
                ("device nodes", Outcome::Ok)
            ]
        );
        assert!(table(&checks).contains("2 × /dev/nvidiaN"));
    }
}
