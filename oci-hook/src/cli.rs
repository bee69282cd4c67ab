//! The hook's node options, shared by the hook stages and by `install`, which
//! writes them into the runtime's hook configuration.

use std::path::PathBuf;

use clap::Args;

use crate::hook::HookConfig;

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct HookArgs {
    /// nvidia, ascend or mock.
    #[arg(long, default_value = "nvidia")]
    pub vendor: String,
    /// Inventory file for --vendor mock.
    #[arg(long)]
    pub inventory: Option<PathBuf>,
    /// Where the host's device nodes are.
    #[arg(long, default_value = "/dev")]
    pub dev: PathBuf,
    /// Host path of libhami_core.so.
    #[arg(long, default_value = "/usr/local/vgpu/libhami_core.so")]
    pub library: PathBuf,
    /// Host directory for each container's limits file and shared region.
    #[arg(long, default_value = "/var/run/hami/vgpu")]
    pub state_dir: PathBuf,
    /// Directory of the hook's log file (oci-hook.log); logs also go to stderr.
    #[arg(long, default_value = "/var/log/hami")]
    pub log_dir: PathBuf,
    /// Where the cgroup v1 hierarchies are mounted.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
}

impl HookArgs {
    pub fn config(&self) -> HookConfig {
        HookConfig {
            vendor: self.vendor.clone(),
            inventory: self.inventory.clone(),
            dev: self.dev.clone(),
            library: self.library.clone(),
            state_dir: self.state_dir.clone(),
            cgroup_root: self.cgroup_root.clone(),
        }
    }

    /// The arguments that reproduce these options, for a hook's `args`.
    pub fn argv(&self) -> Vec<String> {
        let mut out = vec!["--vendor".to_owned(), self.vendor.clone()];
        if let Some(i) = &self.inventory {
            out.extend(["--inventory".to_owned(), i.display().to_string()]);
        }
        for (flag, path) in [
            ("--dev", &self.dev),
            ("--library", &self.library),
            ("--state-dir", &self.state_dir),
            ("--log-dir", &self.log_dir),
            ("--cgroup-root", &self.cgroup_root),
        ] {
            out.extend([flag.to_owned(), path.display().to_string()]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: HookArgs,
    }

    #[test]
    fn argv_parses_back_to_the_same_options() {
        let original = Wrapper::parse_from([
            "x",
            "--vendor",
            "mock",
            "--inventory",
            "/etc/hami/inventory.json",
            "--state-dir",
            "/run/x",
        ])
        .args;
        let again =
            Wrapper::parse_from(std::iter::once("x".to_owned()).chain(original.argv())).args;
        assert_eq!(original, again);
    }
}
