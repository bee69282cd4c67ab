//! Every flag the Helm chart passes to hami-controller is one the binary
//! takes, for each value set (the args go to the real binary with `--help`).

use std::process::Command;

fn rendered_args(overrides: serde_json::Value) -> Vec<String> {
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/hami");
    hami_chart::container_args(&chart, &overrides, "Deployment", "controller").unwrap()
}

#[test]
fn the_chart_passes_only_flags_hami_controller_takes() {
    for overrides in [
        serde_json::json!({}),
        serde_json::json!({"dra": {"enabled": true}, "scheduler": {"kubeScheduler": {"enabled": false},
            "admissionWebhook": {"runtimeClassName": "nvidia", "gpuCoreUtilizationPolicy": "force"}}}),
        serde_json::json!({"scheduler": {"admissionWebhook": {"enabled": false}, "leaderElect": false}}),
    ] {
        let args = rendered_args(overrides);
        let out = Command::new(env!("CARGO_BIN_EXE_hami-controller"))
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hami-controller {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
