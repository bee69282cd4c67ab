#!/usr/bin/env bash
# Validates hami-core on a machine with a real NVIDIA GPU and PyTorch:
#   1. torch.cuda.mem_get_info() under a 4g limit reports a 4 GiB device;
#   2. allocating past the limit raises OutOfMemoryError at the limit;
#   3. matmul throughput at CUDA_DEVICE_SM_LIMIT 30/50/100 versus no preload.
# Usage: run.sh [path/to/libhami_core.so]   (default: target/release/libhami_core.so)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lib=${1:-$here/../../target/release/libhami_core.so}
[ -f "$lib" ] || { echo "no $lib: build with cargo build --release -p hami-core" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
py() { python3 "$here/check.py" "$@"; }
with() { env LD_PRELOAD="$lib" CUDA_DEVICE_MEMORY_SHARED_CACHE="$(mktemp -u /tmp/hami-gpu-check.XXXXXX)" "$@"; }

echo "== 1. mem_get_info, no preload / 4g limit"
py meminfo
with CUDA_DEVICE_MEMORY_LIMIT=4g python3 "$here/check.py" meminfo

echo "== 2. allocate 512 MiB blocks until OOM under a 4g limit (expect 8 or fewer)"
with CUDA_DEVICE_MEMORY_LIMIT=4g python3 "$here/check.py" oom

echo "== 3. bf16 matmul throughput"
echo -n "no preload: "; py matmul
for share in 100 50 30; do
    echo -n "SM limit $share: "
    with CUDA_DEVICE_SM_LIMIT=$share GPU_CORE_UTILIZATION_POLICY=force python3 "$here/check.py" matmul
done
