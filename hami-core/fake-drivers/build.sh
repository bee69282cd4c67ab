#!/usr/bin/env bash
# Builds the fake driver libraries into OUT_DIR (and with --apps the test
# applications cuda_app, cuda_app_direct, bench_app and npu_app): libcuda.so.1,
# libruntime.so and libascendcl.so (a fake CANN) and
# libnvidia-ml.so.1 (plus the unversioned names applications link against).
set -euo pipefail
out=${1:?usage: build.sh OUT_DIR [--apps]}
src=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
cflags=(-O2 -Wall -Werror -fPIC -shared -fvisibility=hidden -Wl,-Bsymbolic -pthread)
gcc "${cflags[@]}" -Wl,-soname,libcuda.so.1 -o "$out/libcuda.so.1" "$src/fake_cuda.c" "$src/fake_device.c"
gcc "${cflags[@]}" -Wl,-soname,libnvidia-ml.so.1 -o "$out/libnvidia-ml.so.1" "$src/fake_nvml.c" "$src/fake_device.c"
gcc "${cflags[@]}" -Wl,-soname,libruntime.so -o "$out/libruntime.so" "$src/fake_ascend_rt.c" "$src/fake_device.c"
# Linked against the runtime: its calls to rt* go through the dynamic linker, as in CANN.
gcc -O2 -Wall -Werror -fPIC -shared -fvisibility=hidden -pthread -Wl,-soname,libascendcl.so \
    -o "$out/libascendcl.so" "$src/fake_ascend_acl.c" -L"$out" -lruntime -Wl,-rpath,'$ORIGIN'
ln -sf libcuda.so.1 "$out/libcuda.so"
ln -sf libnvidia-ml.so.1 "$out/libnvidia-ml.so"
# The test application, once resolving like the CUDA runtime (dlopen +
# cuGetProcAddress_v2) and once linked directly against libcuda.
if [ "${2:-}" = "--apps" ]; then
    gcc -O2 -Wall -Werror -o "$out/cuda_app" "$src/apps/cuda_app.c" -ldl
    gcc -O2 -Wall -Werror -DDIRECT -o "$out/cuda_app_direct" "$src/apps/cuda_app.c" -L"$out" -lcuda -ldl
    gcc -O2 -Wall -Werror -o "$out/bench_app" "$src/apps/bench_app.c" -L"$out" -lcuda
    gcc -O2 -Wall -Werror -o "$out/npu_app" "$src/apps/npu_app.c" -ldl
fi
