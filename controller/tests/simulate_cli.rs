//! `hami-controller simulate` on real trace data: the first 120 GPU nodes of
//! openb and its default pod list, three seeds. The run is deterministic, so
//! the ranking it prints is checked exactly: fragmentation-aware leaves the
//! least GPU unallocated, spread the most.

use std::path::Path;
use std::process::Command;

fn trace(file: &str) -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/openb")
        .join(file);
    assert!(
        p.is_file(),
        "{}: the openb trace belongs beside the repository in shared/",
        p.display()
    );
    p
}

/// `(policy, mean unallocated %)` rows of the printed table.
fn rows(stdout: &str) -> Vec<(String, f64)> {
    stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| policy"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].to_owned(), cells[2].parse().unwrap())
        })
        .collect()
}

#[test]
fn fragmentation_aware_beats_binpack_and_spread_on_openb() {
    let work = tempfile::tempdir().unwrap();
    let nodes = work.path().join("nodes.csv");
    let all = std::fs::read_to_string(trace("openb_node_list_gpu_node.csv")).unwrap();
    let subset: Vec<&str> = all.lines().take(121).collect();
    std::fs::write(&nodes, subset.join("\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hami-controller"))
        .args([
            "simulate",
            "--first-seed",
            "42",
            "--last-seed",
            "44",
            "--nodes",
        ])
        .arg(&nodes)
        .arg("--pods")
        .arg(trace("openb_pod_list_default.csv"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("120 nodes, 682 GPUs, 8152 pods"),
        "{stdout}"
    );
    let r = rows(&stdout);
    let get = |name: &str| {
        r.iter()
            .find(|(p, _)| p == name)
            .unwrap_or_else(|| panic!("{stdout}"))
            .1
    };
    let (binpack, spread, fgd) = (get("binpack"), get("spread"), get("fragmentation-aware"));
    assert!(fgd < binpack && binpack < spread, "{stdout}");
    assert!(
        fgd > 0.0,
        "a fully packed cluster would mean the metric is broken: {stdout}"
    );
}

#[test]
fn bad_trace_files_are_named() {
    let work = tempfile::tempdir().unwrap();
    let nodes = work.path().join("nodes.csv");
    std::fs::write(
        &nodes,
        "sn,cpu_milli,memory_mib,gpu,model\nn1,lots,1,1,T4\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hami-controller"))
        .args(["simulate", "--nodes"])
        .arg(&nodes)
        .arg("--pods")
        .arg(trace("openb_pod_list_default.csv"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nodes.csv line 2: cpu_milli = \"lots\""),
        "{stderr}"
    );
}
