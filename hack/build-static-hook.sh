#!/usr/bin/env bash
# Builds hami-oci-hook as a static-pie executable and prints its path.
#
# The hook runs as root on the host, and a runtime may start it with the
# container's environment. A statically linked hook has no dynamic loader, so
# LD_PRELOAD, LD_LIBRARY_PATH and LD_AUDIT from an image cannot load anything
# into it: this is the build to install on nodes.
#
#   hack/build-static-hook.sh            # release
#   hack/build-static-hook.sh dev        # debug profile (the test suite)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d "${HOME:-/root}/.cargo/bin" ]; then PATH="${HOME:-/root}/.cargo/bin:$PATH"; fi
profile=${1:-release}
triple=$(rustc -vV | sed -n 's/^host: //p')
case "$triple" in
    *-linux-gnu) ;;
    *) echo "build-static-hook: a glibc Linux host is needed, not $triple" >&2; exit 1 ;;
esac
dir=$profile; [ "$profile" = dev ] && dir=debug
# --target puts the static build beside, not over, the workspace's dynamic one.
cargo rustc --quiet --locked --profile "$profile" -p hami-oci-hook --bin hami-oci-hook \
    --target "$triple" -- -C target-feature=+crt-static
out="${CARGO_TARGET_DIR:-target}/$triple/$dir/hami-oci-hook"
if readelf -l "$out" | grep -q 'Requesting program interpreter'; then
    echo "build-static-hook: $out still has a program interpreter" >&2
    exit 1
fi
realpath "$out"
