#!/usr/bin/env bash
# The local demo (README command 1): two podman containers share one fake GPU
# with different quotas, through CDI specs written by hami-cdi and limits
# enforced by hami-core. Needs root (podman, /var/run/cdi). Idempotent: it
# removes what an interrupted earlier run left and cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# rustup installs into ~/.cargo/bin, which a bare CI shell may not have on PATH.
if [ -d "${HOME:-/root}/.cargo/bin" ]; then PATH="${HOME:-/root}/.cargo/bin:$PATH"; fi

./hack/prereqs.sh
echo "== building hami-core, hami-cdi and the demo (release)"
# Two invocations: with --bin filters cargo would skip hami-core's library.
cargo build --release --locked -p hami-core
cargo build --release --locked -p hami-cdi -p hami-e2e --bin hami-demo --bin hami-cdi
echo "== running"
exec target/release/hami-demo --library target/release/libhami_core.so "$@"
