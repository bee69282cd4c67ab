/*
 * A scriptable CUDA driver client for hami-core's tests and the demo.
 *
 * It finds driver entry points one of three ways, chosen by APP_RESOLVE:
 *   procaddress (default)  like the CUDA runtime: dlopen("libcuda.so.1"),
 *                          dlsym "cuGetProcAddress_v2", then ask it for every
 *                          function with APP_CUDA_VERSION (default 12080) and
 *                          the per-thread-stream flag when APP_PTDS=1;
 *   dlsym                  dlopen + dlsym of the versioned names;
 *   direct                 (built with -DDIRECT -lcuda) plain linked calls.
 *
 * Each argument is one operation; each prints one line, e.g.
 *   alloc 104857600      -> "alloc 104857600 rc=0"
 *   info                 -> "info free=… total=… rc=0"
 * The exit status is 0 unless an argument is not understood.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>

#include "../cuda_abi.h"
#include "../fake_device.h"
#include "saturate.h"

typedef CUresult (*proc_v2_fn)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);

static struct {
    CUresult (*init)(unsigned int);
    CUresult (*device_get)(CUdevice *, int);
    CUresult (*ctx_create)(CUcontext *, unsigned int, CUdevice);
    CUresult (*mem_alloc)(CUdeviceptr *, size_t);
    CUresult (*mem_free)(CUdeviceptr);
    CUresult (*mem_get_info)(size_t *, size_t *);
    CUresult (*total_mem)(size_t *, CUdevice);
    CUresult (*alloc_pitch)(CUdeviceptr *, size_t *, size_t, size_t, unsigned int);
    CUresult (*alloc_managed)(CUdeviceptr *, size_t, unsigned int);
    CUresult (*alloc_async)(CUdeviceptr *, size_t, CUstream);
    CUresult (*alloc_from_pool)(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
    CUresult (*free_async)(CUdeviceptr, CUstream);
    CUresult (*pool_create)(CUmemoryPool *, const void *);
    CUresult (*mem_create)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
    CUresult (*mem_release)(CUmemGenericAllocationHandle);
    CUresult (*address_reserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
    CUresult (*mem_map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
    CUresult (*array_create)(CUarray *, const CUDA_ARRAY_DESCRIPTOR *);
    CUresult (*array3d_create)(CUarray *, const CUDA_ARRAY3D_DESCRIPTOR *);
    CUresult (*array_destroy)(CUarray);
    CUresult (*mipmap_create)(CUmipmappedArray *, const CUDA_ARRAY3D_DESCRIPTOR *, unsigned int);
    CUresult (*ipc_get)(CUipcMemHandle *, CUdeviceptr);
    CUresult (*ipc_open)(CUdeviceptr *, CUipcMemHandle, unsigned int);
    CUresult (*ipc_close)(CUdeviceptr);
    CUresult (*launch)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                       void **, void **);
    CUresult (*launch_ex)(const CUlaunchConfig *, CUfunction, void **, void **);
    CUresult (*launch_coop)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                            CUstream, void **);
    CUresult (*graph_launch)(CUgraphExec, CUstream);
    CUresult (*sync)(void);
} api;

static const char *resolve_mode;
static __attribute__((unused)) void *libcuda;
static __attribute__((unused)) proc_v2_fn get_proc;
static int cuda_version = 12080;
static cuuint64_t proc_flags;

#ifdef DIRECT
CUresult cuInit(unsigned int);
CUresult cuDeviceGet(CUdevice *, int);
CUresult cuCtxCreate_v2(CUcontext *, unsigned int, CUdevice);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemGetInfo_v2(size_t *, size_t *);
CUresult cuDeviceTotalMem_v2(size_t *, CUdevice);
CUresult cuMemAllocPitch_v2(CUdeviceptr *, size_t *, size_t, size_t, unsigned int);
CUresult cuMemAllocManaged(CUdeviceptr *, size_t, unsigned int);
CUresult cuMemAllocAsync(CUdeviceptr *, size_t, CUstream);
CUresult cuMemAllocFromPoolAsync(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
CUresult cuMemFreeAsync(CUdeviceptr, CUstream);
CUresult cuMemPoolCreate(CUmemoryPool *, const void *);
CUresult cuMemCreate(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
CUresult cuMemRelease(CUmemGenericAllocationHandle);
CUresult cuMemAddressReserve(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
CUresult cuMemMap(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
CUresult cuArrayCreate_v2(CUarray *, const CUDA_ARRAY_DESCRIPTOR *);
CUresult cuArray3DCreate_v2(CUarray *, const CUDA_ARRAY3D_DESCRIPTOR *);
CUresult cuArrayDestroy(CUarray);
CUresult cuMipmappedArrayCreate(CUmipmappedArray *, const CUDA_ARRAY3D_DESCRIPTOR *, unsigned int);
CUresult cuIpcGetMemHandle(CUipcMemHandle *, CUdeviceptr);
CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *, CUipcMemHandle, unsigned int);
CUresult cuIpcCloseMemHandle(CUdeviceptr);
CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                        void **, void **);
CUresult cuLaunchKernelEx(const CUlaunchConfig *, CUfunction, void **, void **);
CUresult cuLaunchCooperativeKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                   CUstream, void **);
CUresult cuGraphLaunch(CUgraphExec, CUstream);
CUresult cuCtxSynchronize(void);
#define BIND(field, base, versioned) api.field = (void *)versioned
#else
#define BIND(field, base, versioned) api.field = resolve(base, #versioned)
#endif

#ifndef DIRECT
static void *resolve(const char *base, const char *versioned) {
    void *fn = NULL;
    if (strcmp(resolve_mode, "dlsym") == 0) {
        fn = dlsym(libcuda, versioned);
    } else {
        CUdriverProcAddressQueryResult status = 0;
        CUresult rc = get_proc(base, &fn, cuda_version, proc_flags, &status);
        if (rc != CUDA_SUCCESS) fn = NULL;
    }
    if (!fn) {
        fprintf(stderr, "cuda_app: cannot resolve %s (%s)\n", base, versioned);
        exit(3);
    }
    return fn;
}
#endif

static void bind_all(void) {
    resolve_mode = getenv("APP_RESOLVE") ? getenv("APP_RESOLVE") : "procaddress";
    if (getenv("APP_CUDA_VERSION")) cuda_version = atoi(getenv("APP_CUDA_VERSION"));
    if (getenv("APP_PTDS") && strcmp(getenv("APP_PTDS"), "1") == 0)
        proc_flags = CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
#ifndef DIRECT
    libcuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!libcuda) {
        fprintf(stderr, "cuda_app: %s\n", dlerror());
        exit(3);
    }
    get_proc = (proc_v2_fn)dlsym(libcuda, "cuGetProcAddress_v2");
    if (!get_proc) {
        fprintf(stderr, "cuda_app: no cuGetProcAddress_v2\n");
        exit(3);
    }
#endif
    BIND(init, "cuInit", cuInit);
    BIND(device_get, "cuDeviceGet", cuDeviceGet);
    BIND(ctx_create, "cuCtxCreate", cuCtxCreate_v2);
    BIND(mem_alloc, "cuMemAlloc", cuMemAlloc_v2);
    BIND(mem_free, "cuMemFree", cuMemFree_v2);
    BIND(mem_get_info, "cuMemGetInfo", cuMemGetInfo_v2);
    BIND(total_mem, "cuDeviceTotalMem", cuDeviceTotalMem_v2);
    BIND(alloc_pitch, "cuMemAllocPitch", cuMemAllocPitch_v2);
    BIND(alloc_managed, "cuMemAllocManaged", cuMemAllocManaged);
    BIND(alloc_async, "cuMemAllocAsync", cuMemAllocAsync);
    BIND(alloc_from_pool, "cuMemAllocFromPoolAsync", cuMemAllocFromPoolAsync);
    BIND(free_async, "cuMemFreeAsync", cuMemFreeAsync);
    BIND(pool_create, "cuMemPoolCreate", cuMemPoolCreate);
    BIND(mem_create, "cuMemCreate", cuMemCreate);
    BIND(mem_release, "cuMemRelease", cuMemRelease);
    BIND(address_reserve, "cuMemAddressReserve", cuMemAddressReserve);
    BIND(mem_map, "cuMemMap", cuMemMap);
    BIND(array_create, "cuArrayCreate", cuArrayCreate_v2);
    BIND(array3d_create, "cuArray3DCreate", cuArray3DCreate_v2);
    BIND(array_destroy, "cuArrayDestroy", cuArrayDestroy);
    BIND(mipmap_create, "cuMipmappedArrayCreate", cuMipmappedArrayCreate);
    BIND(ipc_get, "cuIpcGetMemHandle", cuIpcGetMemHandle);
    BIND(ipc_open, "cuIpcOpenMemHandle", cuIpcOpenMemHandle_v2);
    BIND(ipc_close, "cuIpcCloseMemHandle", cuIpcCloseMemHandle);
    BIND(launch, "cuLaunchKernel", cuLaunchKernel);
    BIND(launch_ex, "cuLaunchKernelEx", cuLaunchKernelEx);
    BIND(launch_coop, "cuLaunchCooperativeKernel", cuLaunchCooperativeKernel);
    BIND(graph_launch, "cuGraphLaunch", cuGraphLaunch);
    BIND(sync, "cuCtxSynchronize", cuCtxSynchronize);
}

#define MAX_LIVE 4096
static CUdeviceptr live[MAX_LIVE];
static int nlive;

static void remember(CUdeviceptr p) {
    if (nlive < MAX_LIVE) live[nlive++] = p;
}

static unsigned long long arg_u64(char **argv, int *i, int argc) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "cuda_app: %s needs a number\n", argv[*i]);
        exit(2);
    }
    return strtoull(argv[++*i], NULL, 0);
}

/* The legacy (pre-3.2) cuMemGetInfo ABI takes 32-bit pointers: a caller asking
 * for it must get a function that writes exactly 32 bits. Guard words on both
 * sides catch an entry point that writes 64. */
static void legacy_info(void) {
    struct {
        unsigned int guard0, free_bytes, guard1, total_bytes, guard2;
    } s = {0xdeadbeef, 0, 0xdeadbeef, 0, 0xdeadbeef};
    CUresult (*fn)(unsigned int *, unsigned int *) = NULL;
#ifndef DIRECT
    CUdriverProcAddressQueryResult status;
    get_proc("cuMemGetInfo", (void **)&fn, 3000, 0, &status);
#endif
    if (!fn) {
        printf("legacy-info unavailable\n");
        return;
    }
    CUresult rc = fn(&s.free_bytes, &s.total_bytes);
    printf("legacy-info free=%u total=%u guards=%s rc=%d\n", s.free_bytes, s.total_bytes,
           s.guard0 == 0xdeadbeef && s.guard1 == 0xdeadbeef && s.guard2 == 0xdeadbeef ? "intact" : "CLOBBERED", rc);
}

/* One launch of `kind` with `blocks` blocks, for saturate_loop. */
struct launch_args {
    const char *kind;
    unsigned blocks;
};

static int launch_one(void *arg) {
    const struct launch_args *a = arg;
    CUlaunchConfig cfg = {a->blocks, 1, 1, 128, 1, 1, 0, NULL, NULL, 0};
    if (strcmp(a->kind, "ex") == 0) return api.launch_ex(&cfg, NULL, NULL, NULL);
    if (strcmp(a->kind, "coop") == 0) return api.launch_coop(NULL, a->blocks, 1, 1, 128, 1, 1, 0, NULL, NULL);
    if (strcmp(a->kind, "graph") == 0) return api.graph_launch(NULL, NULL);
    return api.launch(NULL, a->blocks, 1, 1, 128, 1, 1, 0, NULL, NULL, NULL);
}

static void nvml_info(void) {
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (!h) {
        printf("nvml-info unavailable: %s\n", dlerror());
        return;
    }
    nvmlReturn_t (*init)(void) = (nvmlReturn_t (*)(void))dlsym(h, "nvmlInit_v2");
    nvmlReturn_t (*get)(unsigned int, nvmlDevice_t *) =
        (nvmlReturn_t (*)(unsigned int, nvmlDevice_t *))dlsym(h, "nvmlDeviceGetHandleByIndex_v2");
    nvmlReturn_t (*info)(nvmlDevice_t, nvmlMemory_t *) =
        (nvmlReturn_t (*)(nvmlDevice_t, nvmlMemory_t *))dlsym(h, "nvmlDeviceGetMemoryInfo");
    nvmlReturn_t (*info2)(nvmlDevice_t, nvmlMemory_v2_t *) =
        (nvmlReturn_t (*)(nvmlDevice_t, nvmlMemory_v2_t *))dlsym(h, "nvmlDeviceGetMemoryInfo_v2");
    nvmlDevice_t dev;
    nvmlMemory_t m = {0};
    nvmlMemory_v2_t m2 = {0};
    int rc = init();
    if (rc == NVML_SUCCESS) rc = get(0, &dev);
    if (rc == NVML_SUCCESS) rc = info(dev, &m);
    if (rc == NVML_SUCCESS) rc = info2(dev, &m2);
    printf("nvml-info total=%llu used=%llu free=%llu v2-total=%llu v2-used=%llu rc=%d\n", m.total, m.used, m.free,
           m2.total, m2.used, rc);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    bind_all();
    CUcontext ctx;
    CUdevice dev;
    CUresult rc = api.init(0);
    if (rc == CUDA_SUCCESS) rc = api.device_get(&dev, 0);
    if (rc == CUDA_SUCCESS) rc = api.ctx_create(&ctx, 0, dev);
    printf("init rc=%d\n", rc);
    CUstream stream = NULL;
    for (int i = 1; i < argc; i++) {
        const char *op = argv[i];
        CUdeviceptr p = 0;
        if (strcmp(op, "alloc") == 0) {
            unsigned long long n = arg_u64(argv, &i, argc);
            rc = api.mem_alloc(&p, n);
            if (rc == CUDA_SUCCESS) remember(p);
            printf("alloc %llu rc=%d\n", n, rc);
        } else if (strcmp(op, "alloc-until-oom") == 0) {
            unsigned long long n = arg_u64(argv, &i, argc);
            int count = 0;
            while ((rc = api.mem_alloc(&p, n)) == CUDA_SUCCESS && count < 100000) {
                remember(p);
                count++;
            }
            printf("alloc-until-oom %llu count=%d rc=%d\n", n, count, rc);
        } else if (strcmp(op, "churn") == 0) {
            /* alloc/free pairs for MS milliseconds: keeps taking the quota lock. */
            unsigned long long n = arg_u64(argv, &i, argc), ms = arg_u64(argv, &i, argc);
            struct timespec t0, t;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            unsigned long long pairs = 0, failures = 0;
            do {
                if (api.mem_alloc(&p, n) == CUDA_SUCCESS) failures += api.mem_free(p) != CUDA_SUCCESS;
                else failures++;
                pairs++;
                clock_gettime(CLOCK_MONOTONIC, &t);
            } while ((unsigned long long)((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000) < ms);
            printf("churn pairs=%llu failures=%llu\n", pairs, failures);
        } else if (strcmp(op, "free-all") == 0) {
            int failures = 0;
            while (nlive > 0) failures += api.mem_free(live[--nlive]) != CUDA_SUCCESS;
            printf("free-all failures=%d\n", failures);
        } else if (strcmp(op, "free-last") == 0) {
            rc = nlive ? api.mem_free(live[--nlive]) : CUDA_ERROR_INVALID_VALUE;
            printf("free-last rc=%d\n", rc);
        } else if (strcmp(op, "info") == 0) {
            size_t f = 0, t = 0;
            rc = api.mem_get_info(&f, &t);
            printf("info free=%zu total=%zu rc=%d\n", f, t, rc);
        } else if (strcmp(op, "totalmem") == 0) {
            size_t t = 0;
            rc = api.total_mem(&t, dev);
            printf("totalmem total=%zu rc=%d\n", t, rc);
        } else if (strcmp(op, "pitch") == 0) {
            unsigned long long w = arg_u64(argv, &i, argc), h = arg_u64(argv, &i, argc);
            size_t pitch = 0;
            rc = api.alloc_pitch(&p, &pitch, w, h, 4);
            if (rc == CUDA_SUCCESS) remember(p);
            printf("pitch %llux%llu pitch=%zu rc=%d\n", w, h, pitch, rc);
        } else if (strcmp(op, "managed") == 0) {
            unsigned long long n = arg_u64(argv, &i, argc);
            rc = api.alloc_managed(&p, n, 1);
            if (rc == CUDA_SUCCESS) remember(p);
            printf("managed %llu rc=%d\n", n, rc);
        } else if (strcmp(op, "async") == 0) {
            unsigned long long n = arg_u64(argv, &i, argc);
            rc = api.alloc_async(&p, n, stream);
            if (rc == CUDA_SUCCESS) remember(p);
            printf("async %llu rc=%d\n", n, rc);
        } else if (strcmp(op, "pool") == 0) {
            unsigned long long n = arg_u64(argv, &i, argc);
            CUmemoryPool pool;
            rc = api.pool_create(&pool, NULL);
            if (rc == CUDA_SUCCESS) rc = api.alloc_from_pool(&p, n, pool, stream);
            if (rc == CUDA_SUCCESS) remember(p);
            printf("pool %llu rc=%d\n", n, rc);
        } else if (strcmp(op, "free-async-all") == 0) {
            int failures = 0;
            while (nlive > 0) failures += api.free_async(live[--nlive], stream) != CUDA_SUCCESS;
            printf("free-async-all failures=%d\n", failures);
        } else if (strcmp(op, "vmm") == 0) {
            unsigned long long n = arg_u64(argv, &i, argc);
            CUmemAllocationProp prop = {0};
            prop.type = 1;
            prop.location.type = 1;
            prop.location.id = dev;
            CUmemGenericAllocationHandle handle = 0;
            rc = api.mem_create(&handle, n, &prop, 0);
            if (rc == CUDA_SUCCESS) {
                CUdeviceptr va;
                rc = api.address_reserve(&va, n, 0, 0, 0);
                if (rc == CUDA_SUCCESS) rc = api.mem_map(va, n, 0, handle, 0);
                remember((CUdeviceptr)handle);
            }
            printf("vmm %llu rc=%d\n", n, rc);
        } else if (strcmp(op, "vmm-release-all") == 0) {
            int failures = 0;
            while (nlive > 0) failures += api.mem_release(live[--nlive]) != CUDA_SUCCESS;
            printf("vmm-release-all failures=%d\n", failures);
        } else if (strcmp(op, "array") == 0) {
            unsigned long long w = arg_u64(argv, &i, argc), h = arg_u64(argv, &i, argc);
            CUDA_ARRAY_DESCRIPTOR d = {w, h, 0x20, 4};
            CUarray a;
            rc = api.array_create(&a, &d);
            printf("array %llux%llu rc=%d\n", w, h, rc);
            if (rc == CUDA_SUCCESS && getenv("APP_FREE_ARRAYS")) printf("array-destroy rc=%d\n", api.array_destroy(a));
        } else if (strcmp(op, "array3d") == 0) {
            unsigned long long w = arg_u64(argv, &i, argc), h = arg_u64(argv, &i, argc), z = arg_u64(argv, &i, argc);
            CUDA_ARRAY3D_DESCRIPTOR d = {w, h, z, 0x20, 4, 0};
            CUarray a;
            rc = api.array3d_create(&a, &d);
            printf("array3d %llux%llux%llu rc=%d\n", w, h, z, rc);
        } else if (strcmp(op, "mipmap") == 0) {
            unsigned long long w = arg_u64(argv, &i, argc), h = arg_u64(argv, &i, argc), l = arg_u64(argv, &i, argc);
            CUDA_ARRAY3D_DESCRIPTOR d = {w, h, 0, 0x20, 4, 0};
            CUmipmappedArray a;
            rc = api.mipmap_create(&a, &d, (unsigned int)l);
            printf("mipmap %llux%llu levels=%llu rc=%d\n", w, h, l, rc);
        } else if (strcmp(op, "ipc-roundtrip") == 0) {
            unsigned long long n = arg_u64(argv, &i, argc);
            CUipcMemHandle handle;
            CUdeviceptr imported = 0;
            rc = api.mem_alloc(&p, n);
            if (rc == CUDA_SUCCESS) rc = api.ipc_get(&handle, p);
            if (rc == CUDA_SUCCESS) rc = api.ipc_open(&imported, handle, 1);
            printf("ipc-open %llu rc=%d\n", n, rc);
            if (rc == CUDA_SUCCESS) printf("ipc-close rc=%d\n", api.ipc_close(imported));
            if (p) api.mem_free(p);
        } else if (strcmp(op, "legacy-info") == 0) {
            legacy_info();
        } else if (strcmp(op, "nvml-info") == 0) {
            nvml_info();
        } else if (strcmp(op, "launch") == 0) {
            unsigned long long blocks = arg_u64(argv, &i, argc);
            rc = api.launch(NULL, (unsigned)blocks, 1, 1, 128, 1, 1, 0, stream, NULL, NULL);
            printf("launch %llu rc=%d\n", blocks, rc);
        } else if (strcmp(op, "saturate") == 0) {
            const char *kind = i + 1 < argc ? argv[++i] : "kernel";
            unsigned long long secs = arg_u64(argv, &i, argc), blocks = arg_u64(argv, &i, argc);
            struct launch_args a = {kind, (unsigned)blocks};
            saturate_loop(secs, launch_one, &a);
        } else if (strcmp(op, "sync") == 0) {
            printf("sync rc=%d\n", api.sync());
        } else if (strcmp(op, "sleep-ms") == 0) {
            unsigned long long ms = arg_u64(argv, &i, argc);
            struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        } else if (strcmp(op, "ready") == 0) {
            printf("ready\n");
        } else if (strcmp(op, "pause") == 0) {
            pause();
        } else {
            fprintf(stderr, "cuda_app: unknown operation %s\n", op);
            return 2;
        }
    }
    return 0;
}
