#!/usr/bin/env bash
# Fuzzes everything hami-oci-hook parses from the outside (State, config.json,
# annotations, limits file, /proc cgroup text) for SECONDS (default 30) with
# cargo fuzz (libFuzzer). A crash fails the run and leaves its input under
# oci-hook/fuzz/artifacts/. cargo-fuzz is installed from crates.io on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d "${HOME:-/root}/.cargo/bin" ]; then PATH="${HOME:-/root}/.cargo/bin:$PATH"; fi
seconds=${1:-30}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    # CI machines keep it between runs under the same cache as the build.
    tools=${HAMI_TOOLS_DIR:-/var/cache/hami-rs/tools}
    if [ ! -x "$tools/bin/cargo-fuzz" ]; then
        echo "fuzz-hook: installing cargo-fuzz into $tools" >&2
        cargo install --quiet --locked --root "$tools" cargo-fuzz
    fi
    PATH="$tools/bin:$PATH"
fi
target_dir="${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/fuzz}"
cd oci-hook/fuzz
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# -s none: no sanitizer runtime, so the stable toolchain builds it; the
# harness still catches panics, aborts and timeouts.
set +e
cargo fuzz run -s none ${target_dir:+--target-dir "$target_dir"} hook_input -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1
status=$?
set -e
if [ "$status" -ne 0 ]; then
    tail -n 60 "$log"
    echo "fuzz-hook: FAILED (the input is under oci-hook/fuzz/artifacts/)" >&2
else
    grep -E '^(Done|stat::number_of_executed_units)' "$log" || true
fi
exit "$status"
