//! `hami-oci-hook`: OCI runtime hook that injects hami-core into annotated containers.
//!
//! ```text
//! hami-oci-hook createContainer [--vendor nvidia] [--library …] [--state-dir …]  < state.json
//! hami-oci-hook prestart …                                                       < state.json
//! hami-oci-hook poststop …                                                       < state.json
//! hami-oci-hook install --runtime containerd|crio|podman [--dry-run]
//! ```

use std::fs::OpenOptions;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use hami_oci_hook::cli::HookArgs;
use hami_oci_hook::hook::{self, Outcome, Stage};
use hami_oci_hook::{install, request, state, trusted};
use tracing_subscriber::fmt::writer::MakeWriterExt;

#[derive(Parser)]
#[command(
    name = "hami-oci-hook",
    version,
    about = "OCI runtime hook that injects hami-core into containers annotated for it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inject at createContainer (in the container's mount namespace, before pivot_root).
    #[command(name = "createContainer")]
    CreateContainer(HookArgs),
    /// Inject at prestart (enters the container's mount namespace).
    #[command(name = "prestart")]
    Prestart(HookArgs),
    /// Remove the container's limits file and shared region.
    #[command(name = "poststop")]
    Poststop(HookArgs),
    /// Configure a container runtime to run this hook.
    Install(install::InstallArgs),
}

/// The hook runs as root on the host with whatever the runtime handed it.
/// Nothing from there is used: the environment (`LD_PRELOAD`, `PATH`, …) is
/// dropped before anything else, the working directory (some runtimes start
/// hooks inside the bundle) is left, and the umask is set to 022 whatever the
/// runtime had: nothing the hook creates on the host is writable by others
/// unless the hook sets that mode explicitly (the shared region).
///
/// Returns the dynamic-loader variables that were set. The hook's own
/// configuration never sets them, so they came from the container (a runtime
/// starting the hook without an explicit `env`); by the time main runs, the
/// loader has already honoured them, so the statically linked build
/// (hack/build-static-hook.sh) is the one to install on nodes.
fn scrub_process() -> Vec<String> {
    let mut loader_vars = Vec::new();
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LD_") {
            loader_vars.push(key.to_string_lossy().into_owned());
        }
        std::env::remove_var(key);
    }
    let _ = std::env::set_current_dir("/");
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o022) };
    loader_vars
}

/// The log goes to stderr always, and to `dir/oci-hook.log` when `dir` is
/// root's alone: the file is opened without following a symlink (a node user
/// could otherwise aim root's appends at any file) and created 0640.
fn init_logging(dir: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = trusted::ensure_dir(dir).and_then(|()| {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(dir.join("oci-hook.log"))?;
        if !f.metadata()?.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "oci-hook.log is not a regular file",
            ));
        }
        Ok(f)
    });
    let builder = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false)
        .with_max_level(tracing::Level::INFO);
    match file {
        Ok(f) => {
            builder.with_writer(std::io::stderr.and(Arc::new(f))).init();
            None
        }
        Err(e) => {
            builder.with_writer(std::io::stderr).init();
            Some(format!("log file under {}: {e}", dir.display()))
        }
    }
}

fn run_stage(stage: Stage, args: HookArgs, loader_vars: &[String]) -> ExitCode {
    let state = state::read_state(std::io::stdin().lock());
    let state = match state {
        Ok(s) => s,
        Err(e) => {
            // Without the State it is unknown whether a quota was asked for: fail closed.
            eprintln!("hami-oci-hook: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The fast path for every container that is not ours: no log, no file
    // opened. Runtimes that leave annotations out of the State fall through
    // to the full read of config.json.
    if !state.annotations.is_empty() && !request::is_requested(&state.annotations) {
        return ExitCode::SUCCESS;
    }
    let log_problem = init_logging(&args.log_dir);
    let span = tracing::info_span!("hook", container = %state.id);
    let _enter = span.enter();
    if let Some(p) = log_problem {
        tracing::warn!("{p}");
    }
    // A static build has no loader for these to act on; a dynamic one already
    // ran whatever they named.
    let dynamic = !cfg!(target_feature = "crt-static");
    if dynamic && !loader_vars.is_empty() && stage != Stage::Poststop {
        tracing::error!(
            "refusing to start the container: the hook was started with the container's \
             environment ({}); give the hook an explicit env in the runtime configuration \
             (hami-oci-hook install does)",
            loader_vars.join(", ")
        );
        return ExitCode::FAILURE;
    }
    let cfg = args.config();
    match hook::run(stage, &cfg, &state) {
        Ok(Outcome::NotRequested) => ExitCode::SUCCESS,
        Ok(Outcome::Skipped(reason)) => {
            tracing::info!("nothing to inject: {reason}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Injected { name, done }) => {
            for d in &done {
                tracing::info!("{d}");
            }
            tracing::info!(stage = ?stage, "injected hami-core ({name})");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Removed { name, existed }) => {
            tracing::info!("removed {name} (existed: {existed})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(stage = ?stage, "refusing to start the container: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let loader_vars = scrub_process();
    let cli = Cli::parse();
    match cli.command {
        Command::CreateContainer(a) => run_stage(Stage::CreateContainer, a, &loader_vars),
        Command::Prestart(a) => run_stage(Stage::Prestart, a, &loader_vars),
        Command::Poststop(a) => run_stage(Stage::Poststop, a, &loader_vars),
        Command::Install(a) => match install::run(&a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hami-oci-hook install: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
