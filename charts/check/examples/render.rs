//! `cargo run -p hami-chart --example render [values-override.json]`: prints
//! the chart's manifests as this checker renders them (what `helm template`
//! would print for the same values).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let overrides: serde_json::Value = match std::env::args().nth(1) {
        Some(path) => serde_json::from_str(&std::fs::read_to_string(path)?)?,
        None => serde_json::json!({}),
    };
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hami");
    for r in hami_chart::render(&chart, &overrides, "hami", "hami-system")? {
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
