/*
 * Times driver calls in a tight loop, linked directly against libcuda.so.1:
 *   bench_app alloc ITERATIONS BYTES   ns per cuMemAlloc_v2 + cuMemFree_v2 pair
 *   bench_app launch ITERATIONS        ns per cuLaunchKernel
 * Prints one number. Run natively and under LD_PRELOAD to see what hami-core adds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../cuda_abi.h"

CUresult cuInit(unsigned int);
CUresult cuDeviceGet(CUdevice *, int);
CUresult cuCtxCreate_v2(CUcontext *, unsigned int, CUdevice);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuModuleGetFunction(CUfunction *, CUmodule, const char *);
CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                        void **, void **);

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_app alloc N BYTES | launch N\n");
        return 2;
    }
    long n = atol(argv[2]);
    CUdevice dev;
    CUcontext ctx;
    if (cuInit(0) || cuDeviceGet(&dev, 0) || cuCtxCreate_v2(&ctx, 0, dev)) {
        fprintf(stderr, "bench_app: driver init failed\n");
        return 1;
    }
    if (strcmp(argv[1], "alloc") == 0 && argc == 4) {
        size_t bytes = (size_t)atol(argv[3]);
        CUdeviceptr p;
        for (long i = 0; i < n / 10 + 1; i++) { /* warm caches, hash tables, the region slot */
            if (cuMemAlloc_v2(&p, bytes) || cuMemFree_v2(p)) return 1;
        }
        double t0 = now_ns();
        for (long i = 0; i < n; i++) {
            if (cuMemAlloc_v2(&p, bytes) || cuMemFree_v2(p)) {
                fprintf(stderr, "bench_app: allocation failed at %ld\n", i);
                return 1;
            }
        }
        printf("%.2f\n", (now_ns() - t0) / (double)n);
    } else if (strcmp(argv[1], "launch") == 0) {
        CUfunction f;
        cuModuleGetFunction(&f, NULL, "kernel");
        for (long i = 0; i < n / 10 + 1; i++) cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
        double t0 = now_ns();
        for (long i = 0; i < n; i++) {
            if (cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL)) return 1;
        }
        printf("%.2f\n", (now_ns() - t0) / (double)n);
    } else {
        fprintf(stderr, "bench_app: unknown mode %s\n", argv[1]);
        return 2;
    }
    return 0;
}
