#!/usr/bin/env bash
# Builds the fake driver libraries into OUT_DIR (and with --apps the test
# application, cuda_app and cuda_app_direct, and bench_app): libcuda.so.1 and
# libnvidia-ml.so.1 (plus the unversioned names applications link against).
set -euo pipefail
out=${1:?usage: build.sh OUT_DIR [--apps]}
src=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
cflags=(-O2 -Wall -Werror -fPIC -shared -fvisibility=hidden -Wl,-Bsymbolic -pthread)
gcc "${cflags[@]}" -Wl,-soname,libcuda.so.1 -o "$out/libcuda.so.1" "$src/fake_cuda.c" "$src/fake_device.c"
gcc "${cflags[@]}" -Wl,-soname,libnvidia-ml.so.1 -o "$out/libnvidia-ml.so.1" "$src/fake_nvml.c" "$src/fake_device.c"
ln -sf libcuda.so.1 "$out/libcuda.so"
ln -sf libnvidia-ml.so.1 "$out/libnvidia-ml.so"
# The test application, once resolving like the CUDA runtime (dlopen +
# cuGetProcAddress_v2) and once linked directly against libcuda.
if [ "${2:-}" = "--apps" ]; then
    gcc -O2 -Wall -Werror -o "$out/cuda_app" "$src/apps/cuda_app.c" -ldl
    gcc -O2 -Wall -Werror -DDIRECT -o "$out/cuda_app_direct" "$src/apps/cuda_app.c" -L"$out" -lcuda -ldl
    gcc -O2 -Wall -Werror -o "$out/bench_app" "$src/apps/bench_app.c" -L"$out" -lcuda
fi
