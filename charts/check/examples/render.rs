//! `cargo run -p hami-chart --example render [values-override.json [kube-version]]`:
//! prints the chart's manifests as this checker renders them (what `helm
//! template --kube-version` would print for the same values).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let overrides: serde_json::Value = match std::env::args().nth(1) {
        Some(path) if path != "-" => serde_json::from_str(&std::fs::read_to_string(path)?)?,
        _ => serde_json::json!({}),
    };
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hami");
    let kube_version = std::env::args()
        .nth(2)
        .unwrap_or_else(|| hami_chart::DEFAULT_KUBE_VERSION.to_owned());
    for r in hami_chart::render_for(&chart, &overrides, "hami", "hami-system", &kube_version)? {
        if r.text.trim().is_empty() {
            continue;
        }
        println!(
            "---\n# Source: hami/templates/{}\n{}",
            r.file,
            r.text.trim_start_matches('\n')
        );
    }
    Ok(())
}
