//! What the hook adds to starting a container.
//!
//! `cargo bench -p hami-oci-hook --bench latency` (as root, with runc) times:
//! - the hook process alone on an unannotated State (its fast path), against
//!   `/bin/true` fed the same stdin: the cost of any hook at all;
//! - `runc run` of a busybox container that runs `/bin/true`:
//!   - without a hook (the baseline), and with `/bin/true` as the hooks
//!     (what runc itself spends on running two hooks),
//!   - with the hook at createContainer, unannotated container,
//!   - with the hook at createContainer, annotated (a 1g quota: discovery,
//!     shared region, limits file, four mounts, one device node, the preload
//!     list), and the same at prestart (which also enters the namespace),
//!     each with the poststop hook that removes the state again.
//!
//! Configurations are interleaved round by round so that drift on a busy
//! machine hits them alike. Prints p50 and p90 and the ratio to the baseline.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hami_testkit::bundle::OciBundle;
use hami_testkit::need::require;
use hami_testkit::oci::{OciRuntime, OciSandbox};
use hami_testkit::rootfs::Rootfs;

const HOOK: &str = env!("CARGO_BIN_EXE_hami-oci-hook");
const HOOK_ONLY_ROUNDS: usize = 400;
const RUN_ROUNDS: usize = 120;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn feed(program: &str, args: &[&str], stdin: &[u8]) -> Duration {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // /bin/true may exit before reading: a broken pipe is expected there.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let status = child.wait().unwrap();
    let took = start.elapsed();
    assert!(status.success(), "{program} failed");
    took
}

/// A row of the container table: name, the hook binary and its stage (none:
/// no hook), and whether the container is annotated.
type Config = (&'static str, Option<(&'static str, &'static str)>, bool);

struct Row {
    name: String,
    mean: Duration,
    p50: Duration,
    p90: Duration,
}

impl Row {
    fn of(name: &str, samples: &mut [Duration]) -> Self {
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        Self {
            name: name.into(),
            mean,
            p50: percentile(samples, 0.5),
            p90: percentile(samples, 0.9),
        }
    }
}

/// The ratio and the added time are of the means: runc's start times are
/// bimodal (about 9 ms apart on the development VM), which makes a median
/// jump between the modes from one run to the next.
fn table(title: &str, rows: &[Row]) {
    let base = rows[0].mean.as_secs_f64();
    println!("\n{title}");
    println!(
        "| {:<48} | {:>9} | {:>9} | {:>9} | {:>9} | {:>6} |",
        "configuration", "mean ms", "p50 ms", "p90 ms", "added ms", "ratio"
    );
    println!(
        "|{:-<50}|{:->11}|{:->11}|{:->11}|{:->11}|{:->8}|",
        "", "", "", "", "", ""
    );
    for r in rows {
        println!(
            "| {:<48} | {:>9.3} | {:>9.3} | {:>9.3} | {:>+9.3} | {:>6.2} |",
            r.name,
            r.mean.as_secs_f64() * 1e3,
            r.p50.as_secs_f64() * 1e3,
            r.p90.as_secs_f64() * 1e3,
            (r.mean.as_secs_f64() - base) * 1e3,
            r.mean.as_secs_f64() / base
        );
    }
}

fn main() {
    let needs = OciRuntime::Runc.needs();
    if !require("oci-hook latency bench", &needs) {
        return;
    }
    let work = tempfile::Builder::new()
        .prefix("hami-hook-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();

    // 1. The hook process on its fast path.
    let state = br#"{"ociVersion":"1.0.2","id":"bench","status":"creating","pid":4242,"bundle":"/run/bundle","annotations":{"io.kubernetes.cri.container-name":"app","io.kubernetes.cri.container-type":"container"}}"#;
    let mut true_times = Vec::new();
    let mut hook_times = Vec::new();
    for _ in 0..HOOK_ONLY_ROUNDS {
        true_times.push(feed("/bin/true", &[], state));
        hook_times.push(feed(HOOK, &["createContainer"], state));
    }
    table(
        "hook process, unannotated State on stdin (fast path)",
        &[
            Row::of("/bin/true (process start baseline)", &mut true_times),
            Row::of("hami-oci-hook createContainer", &mut hook_times),
        ],
    );

    // 2. Whole container starts.
    let rootfs = Rootfs::busybox(&work.path().join("rootfs")).unwrap();
    // /bin/true is static busybox: the library is mounted and listed but never
    // loaded, so any file stands in for it and the bench times the hook alone.
    let library = work.path().join("libhami_core.so");
    std::fs::write(&library, b"stand-in").unwrap();
    let inventory = work.path().join("inventory.json");
    std::fs::write(
        &inventory,
        r#"{"devices":[{"index":0,"uuid":"GPU-bench","memoryMiB":8192,"hostNode":"/dev/null"}]}"#,
    )
    .unwrap();
    let node_args = |stage: &str| -> Vec<String> {
        let mut a = vec!["hami-oci-hook".to_owned(), stage.to_owned()];
        for (flag, v) in [
            ("--vendor", Path::new("mock")),
            ("--inventory", &inventory),
            ("--library", &library),
            ("--state-dir", &work.path().join("state")),
            ("--log-dir", &work.path().join("log")),
        ] {
            a.push(flag.into());
            a.push(v.display().to_string());
        }
        a
    };
    let env = [hami_cdi::builder::HOOK_ENV];
    let configs: Vec<Config> = vec![
        ("runc run, no hook (baseline)", None, false),
        (
            "runc run, /bin/true as the hooks (runc's cost)",
            Some(("/bin/true", "createContainer")),
            false,
        ),
        (
            "runc run, hook, unannotated",
            Some((HOOK, "createContainer")),
            false,
        ),
        (
            "runc run, hook at createContainer, 1g quota",
            Some((HOOK, "createContainer")),
            true,
        ),
        (
            "runc run, hook at prestart, 1g quota",
            Some((HOOK, "prestart")),
            true,
        ),
    ];
    let sandbox = OciSandbox::new(OciRuntime::Runc).unwrap();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); configs.len()];
    for round in 0..RUN_ROUNDS {
        for (i, (_, stage, annotated)) in configs.iter().enumerate() {
            let mut bundle = OciBundle::new(
                &work.path().join(format!("bundle-{i}")),
                rootfs.path(),
                &["/bin/true"],
            );
            if let Some((hook, stage)) = stage {
                for s in [*stage, "poststop"] {
                    let args = node_args(s);
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    bundle.hook(s, Path::new(hook), &args, &env);
                }
            }
            if *annotated {
                bundle.annotation("hami.io/gpumem", "1g");
            }
            let id = format!("bench-{round}-{i}");
            let start = Instant::now();
            let out = sandbox.run(&mut bundle, &id).unwrap();
            // Includes `runc delete` (and with it poststop), alike for every row.
            samples[i].push(start.elapsed());
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let rows: Vec<Row> = configs
        .iter()
        .zip(samples.iter_mut())
        .map(|((name, _, _), s)| Row::of(name, s))
        .collect();
    table(
        &format!("runc run of /bin/true ({RUN_ROUNDS} rounds, interleaved)"),
        &rows,
    );
}
