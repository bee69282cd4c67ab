#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test, real runtimes included.
# This is README command 2, and exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
# rustup installs into ~/.cargo/bin, which a bare CI shell may not have on PATH.
if [ -d "${HOME:-/root}/.cargo/bin" ]; then PATH="${HOME:-/root}/.cargo/bin:$PATH"; fi

./hack/prereqs.sh

# Runtime tests must not skip here: a missing runc or podman is a failure.
export HAMI_TEST_REQUIRE_RUNTIMES=1
# CI clones afresh each time; keep compiled dependencies between runs on the same machine.
if [ "${CI:-}" = "true" ] && [ -z "${CARGO_TARGET_DIR:-}" ]; then
    export CARGO_TARGET_DIR=/var/cache/hami-rs/target
    export CARGO_INCREMENTAL=0
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== static hook"
# The build nodes get; the hostile-image tests run it as well as the dynamic one.
HAMI_OCI_HOOK_STATIC=$(./hack/build-static-hook.sh dev)
export HAMI_OCI_HOOK_STATIC
echo "== Kubernetes from Debian's source (built once, then cached)"
# The real-cluster tests (tests/e2e/tests/kube_cluster.rs) run kube-apiserver,
# kube-scheduler, kube-controller-manager and kubelet from here.
HAMI_KUBE_BIN=$(./hack/cluster/build-kube.sh)
export HAMI_KUBE_BIN
echo "== fuzz: hami-oci-hook inputs, 30 s"
./hack/fuzz-hook.sh 30
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# cargo prints one `test result:` line per test binary, the last often a doc-test
# run with nothing in it; close with the workspace total instead.
sum() { grep '^test result:' "$log" | grep -oE "[0-9]+ $1" | awk '{ n += $1 } END { print n + 0 }'; }
passed=$(sum passed)
failed=$(sum failed)
ignored=$(sum ignored)
echo "workspace: $passed passed, $failed failed, $ignored skipped"
exit "$status"
