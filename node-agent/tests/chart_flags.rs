//! Every flag the Helm chart passes to hami-node is one the binary takes:
//! the chart is rendered for each value set and the DaemonSet's args are
//! handed to the real binary with `--help` at the end (clap stops at the
//! first unknown flag, before the help).

use std::process::Command;

fn rendered_args(overrides: serde_json::Value) -> Vec<String> {
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/hami");
    hami_chart::container_args(&chart, &overrides, "DaemonSet", "node").unwrap()
}

#[test]
fn the_chart_passes_only_flags_hami_node_takes() {
    for overrides in [
        serde_json::json!({}),
        serde_json::json!({"dra": {"enabled": true}, "ascend": {"hamiVnpuCore": true}, "devicePlugin": {"cdiEnabled": false}}),
    ] {
        let args = rendered_args(overrides);
        let out = Command::new(env!("CARGO_BIN_EXE_hami-node"))
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hami-node {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
