#!/usr/bin/env bash
# The local demo (README command 1): two podman containers share one fake GPU
# with different quotas. It needs hami-core's CUDA interposer and fake driver
# and `hami-cdi generate`, which are not built yet; until they are, this script
# installs the prerequisites, builds what exists, says what is missing, and
# fails. It never reports a demo that did not run.
set -euo pipefail
cd "$(dirname "$0")/.."
# rustup installs into ~/.cargo/bin, which a bare CI shell may not have on PATH.
if [ -d "${HOME:-/root}/.cargo/bin" ]; then PATH="${HOME:-/root}/.cargo/bin:$PATH"; fi

./hack/prereqs.sh
cargo build --workspace --locked

missing=()
nm -D --defined-only target/debug/libhami_core.so 2>/dev/null | grep -q ' cuMemAlloc_v2$' ||
    missing+=("hami-core CUDA interposer (libhami_core.so exports no CUDA symbols yet)")
[ -e hami-core/fake-drivers ] || missing+=("fake libcuda.so.1 / libnvidia-ml.so.1 (hami-core/fake-drivers)")
target/debug/hami-cdi generate --help >/dev/null 2>&1 || missing+=("hami-cdi generate")

if ((${#missing[@]})); then
    echo "demo: cannot run yet; missing:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
fi
echo "demo: all parts present but the demo script itself is not written yet" >&2
exit 1
