//! The hami-cdi CLI as a user runs it: bad input leaves nothing behind, an
//! existing allocation is never replaced, and a writer killed mid-write
//! cannot leave a spec that breaks the directory for other containers.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hami_cdi::store::SpecStore;

struct Env {
    _dir: tempfile::TempDir,
    spec_dir: PathBuf,
    state_dir: PathBuf,
    inventory: PathBuf,
    library: PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.json");
    std::fs::write(
        &inventory,
        r#"{"devices":[{"index":0,"uuid":"GPU-fa4e0000-0000-4000-8000-000000000000","memoryMiB":8192}]}"#,
    )
    .unwrap();
    // Any file serves as the library here; nothing loads it.
    let library = dir.path().join("libhami_core.so");
    std::fs::write(&library, b"\x7fELF").unwrap();
    Env {
        spec_dir: dir.path().join("cdi"),
        state_dir: dir.path().join("state"),
        inventory,
        library,
        _dir: dir,
    }
}

fn cli(e: &Env) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hami-cdi"));
    c.arg("--spec-dir")
        .arg(&e.spec_dir)
        .arg("--state-dir")
        .arg(&e.state_dir)
        .env_remove("RUST_BACKTRACE");
    c
}

fn generate(e: &Env, name: &str, extra: &[&str]) -> Command {
    let mut c = cli(e);
    c.args(["generate", "--vendor", "mock", "--inventory"])
        .arg(&e.inventory)
        .arg("--library")
        .arg(&e.library)
        .args(["--name", name])
        .args(extra);
    c
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|f| f.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn generate_list_remove() {
    let e = env();
    let out = generate(
        &e,
        "job1",
        &["--device", "0", "--memory", "3000m", "--cores", "30"],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("podman run --device hami.io/vgpu=job1"),
        "{stdout}"
    );
    assert_eq!(files(&e.spec_dir), vec!["hami.io-vgpu_job1.json"]);
    assert!(e.state_dir.join("job1/region/vgpu.cache").is_file());

    let out = cli(&e).arg("list").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row = stdout
        .lines()
        .find(|l| l.starts_with("job1"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(
        row.split_whitespace().take(5).collect::<Vec<_>>(),
        vec!["job1", "1", "3000m", "30", "0"]
    );

    let out = cli(&e).args(["remove", "job1"]).output().unwrap();
    assert!(out.status.success());
    assert!(files(&e.spec_dir).is_empty());
    assert!(!e.state_dir.join("job1").exists());
    let out = cli(&e).args(["remove", "job1"]).output().unwrap();
    assert!(!out.status.success(), "removing twice must say so");
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    let e = env();
    let cases: &[(&[&str], &str)] = &[
        (&["--device", "3"], "device 3 does not exist"),
        (
            &["--device", "0", "--memory", "9g"],
            "more than the device's 8g",
        ),
        (&["--device", "0", "--memory", "4Gi"], "Gi are not accepted"),
        (&["--device", "0", "--memory=-1"], "negative"),
        (&["--device", "0", "--cores", "150"], "0-100"),
        (&["--device", "0,0"], "requested twice"),
    ];
    for (args, needle) in cases {
        let out = generate(&e, "job1", args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
    }
    let out = generate(&e, "bad name", &["--device", "0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid CDI device name"));
    assert!(files(&e.spec_dir).is_empty(), "{:?}", files(&e.spec_dir));
    assert!(files(&e.state_dir).is_empty(), "{:?}", files(&e.state_dir));
}

#[test]
fn an_existing_allocation_is_never_replaced() {
    let e = env();
    assert!(generate(&e, "job1", &["--device", "0", "--memory", "1g"])
        .status()
        .unwrap()
        .success());
    let before = std::fs::read(e.spec_dir.join("hami.io-vgpu_job1.json")).unwrap();
    let out = generate(&e, "job1", &["--device", "0", "--memory", "2g"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read(e.spec_dir.join("hami.io-vgpu_job1.json")).unwrap(),
        before
    );
}

/// A writer SIGKILLed after writing its temporary and before the rename:
/// the other specs stay intact, no partial spec is visible, the CDI reference
/// implementation still loads every spec in the directory, and the leftover
/// temporary is cleaned up.
#[test]
fn a_writer_killed_mid_write_breaks_nothing() {
    let e = env();
    assert!(generate(&e, "other", &["--device", "0", "--memory", "1g"])
        .status()
        .unwrap()
        .success());
    let other = std::fs::read(e.spec_dir.join("hami.io-vgpu_other.json")).unwrap();

    let mut writer = generate(&e, "job1", &["--device", "0", "--memory", "2g"])
        .env("HAMI_CDI_TEST_PAUSE_BEFORE_RENAME", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(writer.stderr.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().contains("paused before rename")));
    writer.kill().unwrap();
    writer.wait().unwrap();

    let names = files(&e.spec_dir);
    assert!(names.contains(&"hami.io-vgpu_other.json".to_owned()));
    assert!(
        !names.contains(&"hami.io-vgpu_job1.json".to_owned()),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with(".hami.io-vgpu_job1.json.tmp-")),
        "{names:?}"
    );
    assert_eq!(
        std::fs::read(e.spec_dir.join("hami.io-vgpu_other.json")).unwrap(),
        other
    );
    for name in names.iter().filter(|n| n.ends_with(".json")) {
        container_device_interface::spec::read_spec(&e.spec_dir.join(name), 0)
            .unwrap_or_else(|err| panic!("{name}: {err:#}"));
    }

    let removed = SpecStore::new(&e.spec_dir)
        .remove_stale("hami.io/vgpu", |_| true)
        .unwrap();
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(files(&e.spec_dir), vec!["hami.io-vgpu_other.json"]);
    // The half-made allocation is removable and can then be made again.
    assert!(cli(&e).args(["remove", "job1"]).status().unwrap().success());
    assert!(generate(&e, "job1", &["--device", "0", "--memory", "2g"])
        .status()
        .unwrap()
        .success());
}

#[test]
fn stale_specs_of_departed_allocations_are_removed() {
    let e = env();
    for name in ["keep", "gone"] {
        assert!(generate(&e, name, &["--device", "0"])
            .status()
            .unwrap()
            .success());
    }
    let removed = SpecStore::new(&e.spec_dir)
        .remove_stale("hami.io/vgpu", |n| n == "keep")
        .unwrap();
    assert_eq!(removed, vec!["gone"]);
    assert_eq!(files(&e.spec_dir), vec!["hami.io-vgpu_keep.json"]);
}
