/*
 * A fake libcuda.so.1 for tests and the demo: host-backed device memory with a
 * configurable size, kernels that occupy a virtual device queue for a simulated
 * time, and a cuGetProcAddress that resolves versioned and per-thread-stream
 * entry points from a table, as the real driver does.
 *
 * Link with -Wl,-Bsymbolic: the table must hand out this library's own
 * functions even when an interposer exporting the same names is preloaded.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "cuda_abi.h"
#include "fake_device.h"

#define EXPORT __attribute__((visibility("default")))
#define DRIVER_VERSION 12080
#define GRANULARITY (2ULL << 20)
/* Small blocks come from malloc so that the driver's own cost stays realistic
 * (tens of ns) in benchmarks; large ones from untouched, unreserved mappings. */
#define MMAP_THRESHOLD (1ULL << 20)

static __thread CUcontext current_ctx;
static int initialized;

/* ---- allocation registry: pointer -> size, open addressing ---------------- */

enum kind { K_EMPTY = 0, K_TOMB, K_MEM, K_HANDLE, K_RESERVE };

struct entry {
    uint64_t key;
    uint64_t size;
    int kind;
    int device;
    uint64_t backing; /* K_MEM: base of the host mapping; K_HANDLE: mapped address */
};

#define TABLE_BITS 16
#define TABLE_SIZE (1u << TABLE_BITS)
static struct entry table[TABLE_SIZE];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;

static unsigned slot_of(uint64_t key) {
    return (unsigned)((key * 0x9E3779B97F4A7C15ULL) >> (64 - TABLE_BITS));
}

static struct entry *table_find(uint64_t key, int kind) {
    for (unsigned i = slot_of(key), n = 0; n < TABLE_SIZE; i = (i + 1) & (TABLE_SIZE - 1), n++) {
        if (table[i].kind == K_EMPTY) return NULL;
        if (table[i].kind == kind && table[i].key == key) return &table[i];
    }
    return NULL;
}

static int table_insert(uint64_t key, uint64_t size, int kind, int device, uint64_t backing) {
    for (unsigned i = slot_of(key), n = 0; n < TABLE_SIZE; i = (i + 1) & (TABLE_SIZE - 1), n++) {
        if (table[i].kind == K_EMPTY || table[i].kind == K_TOMB) {
            table[i] = (struct entry){key, size, kind, device, backing};
            return 0;
        }
    }
    return -1;
}

static int current_device(void) {
    return current_ctx ? (int)((uintptr_t)current_ctx - 1) : 0;
}

/* Device-wide memory accounting, shared across processes like a real GPU. */
static int charge(int device, uint64_t size) {
    return fake_charge(device, size, fake_config()->total_memory) == 0 ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

static void uncharge(int device, uint64_t size) {
    fake_uncharge(device, size);
}

static void *host_alloc(uint64_t size) {
    if (size < MMAP_THRESHOLD) return malloc(size ? size : 1);
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void host_free(void *p, uint64_t size) {
    if (size < MMAP_THRESHOLD) free(p);
    else munmap(p, size);
}

static CUresult mem_alloc(CUdeviceptr *dptr, uint64_t size, int device) {
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!dptr || size == 0) return CUDA_ERROR_INVALID_VALUE;
    if (charge(device, size) != CUDA_SUCCESS) return CUDA_ERROR_OUT_OF_MEMORY;
    void *p = host_alloc(size);
    if (!p) {
        uncharge(device, size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    pthread_mutex_lock(&table_lock);
    int rc = table_insert((uint64_t)(uintptr_t)p, size, K_MEM, device, (uint64_t)(uintptr_t)p);
    pthread_mutex_unlock(&table_lock);
    if (rc != 0) {
        host_free(p, size);
        uncharge(device, size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *dptr = (CUdeviceptr)(uintptr_t)p;
    return CUDA_SUCCESS;
}

static CUresult mem_free(CUdeviceptr dptr) {
    if (dptr == 0) return CUDA_SUCCESS;
    pthread_mutex_lock(&table_lock);
    struct entry *e = table_find(dptr, K_MEM);
    struct entry copy = e ? *e : (struct entry){0};
    if (e) e->kind = K_TOMB;
    pthread_mutex_unlock(&table_lock);
    if (!e) return CUDA_ERROR_INVALID_VALUE;
    host_free((void *)(uintptr_t)copy.backing, copy.size);
    uncharge(copy.device, copy.size);
    return CUDA_SUCCESS;
}

/* ---- initialisation, devices, contexts ------------------------------------ */

EXPORT CUresult cuInit(unsigned int flags) {
    (void)flags;
    fake_config();
    initialized = 1;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDriverGetVersion(int *version) {
    if (!version) return CUDA_ERROR_INVALID_VALUE;
    *version = DRIVER_VERSION;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetCount(int *count) {
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    *count = fake_config()->device_count;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGet(CUdevice *dev, int ordinal) {
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (ordinal < 0 || ordinal >= fake_config()->device_count) return CUDA_ERROR_INVALID_DEVICE;
    *dev = ordinal;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
    if (dev < 0 || dev >= fake_config()->device_count) return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "NVIDIA Fake H100 80GB HBM3");
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetUuid(char uuid[16], CUdevice dev) {
    if (dev < 0 || dev >= fake_config()->device_count) return CUDA_ERROR_INVALID_DEVICE;
    memset(uuid, 0, 16);
    uuid[0] = (char)0xfa;
    uuid[15] = (char)dev;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetAttribute(int *value, int attrib, CUdevice dev) {
    if (dev < 0 || dev >= fake_config()->device_count) return CUDA_ERROR_INVALID_DEVICE;
    *value = attrib == CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT ? fake_config()->sm_count : 0;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    if (dev < 0 || dev >= fake_config()->device_count) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = fake_config()->total_memory;
    return CUDA_SUCCESS;
}

/* The pre-3.2 ABI: 32-bit results, clamped like the real legacy entry point. */
EXPORT CUresult cuDeviceTotalMem(unsigned int *bytes, CUdevice dev) {
    if (dev < 0 || dev >= fake_config()->device_count) return CUDA_ERROR_INVALID_DEVICE;
    uint64_t t = fake_config()->total_memory;
    *bytes = t > 0xffffffffULL ? 0xffffffffU : (unsigned int)t;
    return CUDA_SUCCESS;
}

/* A context takes FAKE_CUDA_CONTEXT_BYTES of device memory and makes the
 * process show up in NVML's list of compute processes. */
static CUresult context_open(int dev) {
    if (charge(dev, fake_config()->context_bytes) != CUDA_SUCCESS) return CUDA_ERROR_OUT_OF_MEMORY;
    struct fake_proc_busy *p = fake_proc(dev);
    if (p) atomic_fetch_add((_Atomic uint32_t *)&p->contexts, 1);
    return CUDA_SUCCESS;
}

static void context_close(int dev) {
    uncharge(dev, fake_config()->context_bytes);
    struct fake_proc_busy *p = fake_proc(dev);
    if (p) atomic_fetch_sub((_Atomic uint32_t *)&p->contexts, 1);
}

EXPORT CUresult cuCtxCreate_v2(CUcontext *ctx, unsigned int flags, CUdevice dev) {
    (void)flags;
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (dev < 0 || dev >= fake_config()->device_count) return CUDA_ERROR_INVALID_DEVICE;
    CUresult rc = context_open(dev);
    if (rc != CUDA_SUCCESS) return rc;
    *ctx = (CUcontext)(uintptr_t)(dev + 1);
    current_ctx = *ctx;
    return CUDA_SUCCESS;
}

static int primary_refs[FAKE_MAX_DEVICES];

EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev) {
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (dev < 0 || dev >= fake_config()->device_count) return CUDA_ERROR_INVALID_DEVICE;
    if (__atomic_fetch_add(&primary_refs[dev], 1, __ATOMIC_ACQ_REL) == 0) {
        CUresult rc = context_open(dev);
        if (rc != CUDA_SUCCESS) {
            __atomic_fetch_sub(&primary_refs[dev], 1, __ATOMIC_ACQ_REL);
            return rc;
        }
    }
    *ctx = (CUcontext)(uintptr_t)(dev + 1);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    if (dev < 0 || dev >= fake_config()->device_count) return CUDA_ERROR_INVALID_DEVICE;
    if (__atomic_load_n(&primary_refs[dev], __ATOMIC_ACQUIRE) == 0) return CUDA_ERROR_INVALID_VALUE;
    if (__atomic_sub_fetch(&primary_refs[dev], 1, __ATOMIC_ACQ_REL) == 0) context_close(dev);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    context_close((int)((uintptr_t)ctx - 1));
    if (current_ctx == ctx) current_ctx = NULL;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
    current_ctx = ctx;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetCurrent(CUcontext *ctx) {
    *ctx = current_ctx;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetDevice(CUdevice *dev) {
    if (!current_ctx) return CUDA_ERROR_INVALID_HANDLE;
    *dev = current_device();
    return CUDA_SUCCESS;
}

/* ---- memory ---------------------------------------------------------------- */

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t size) {
    return mem_alloc(dptr, size, current_device());
}

/* 32-bit device pointers cannot exist on a 64-bit device. */
EXPORT CUresult cuMemAlloc(unsigned int *dptr, unsigned int size) {
    (void)dptr;
    (void)size;
    return CUDA_ERROR_NOT_SUPPORTED;
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) { return mem_free(dptr); }

EXPORT CUresult cuMemFree(unsigned int dptr) {
    (void)dptr;
    return CUDA_ERROR_NOT_SUPPORTED;
}

EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height,
                                   unsigned int elementSize) {
    if (!pitch || elementSize == 0 || elementSize > 16) return CUDA_ERROR_INVALID_VALUE;
    size_t p = (width + 511) & ~(size_t)511;
    *pitch = p;
    return mem_alloc(dptr, (uint64_t)p * height, current_device());
}

EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t size, unsigned int flags) {
    (void)flags;
    return mem_alloc(dptr, size, current_device());
}

EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    int d = current_device();
    uint64_t total = fake_config()->total_memory;
    uint64_t used = fake_used(d);
    *free_bytes = used > total ? 0 : total - used;
    *total_bytes = total;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemGetInfo(unsigned int *free_bytes, unsigned int *total_bytes) {
    size_t f, t;
    CUresult rc = cuMemGetInfo_v2(&f, &t);
    if (rc != CUDA_SUCCESS) return rc;
    *free_bytes = f > 0xffffffffULL ? 0xffffffffU : (unsigned int)f;
    *total_bytes = t > 0xffffffffULL ? 0xffffffffU : (unsigned int)t;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemGetAddressRange_v2(CUdeviceptr *base, size_t *size, CUdeviceptr dptr) {
    CUresult rc = CUDA_ERROR_NOT_FOUND;
    pthread_mutex_lock(&table_lock);
    for (unsigned i = 0; i < TABLE_SIZE; i++) {
        struct entry *e = &table[i];
        if (e->kind == K_MEM && dptr >= e->key && dptr < e->key + e->size) {
            if (base) *base = e->key;
            if (size) *size = e->size;
            rc = CUDA_SUCCESS;
            break;
        }
    }
    pthread_mutex_unlock(&table_lock);
    return rc;
}

EXPORT CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t n) {
    memset((void *)(uintptr_t)dst, value, n);
    return CUDA_SUCCESS;
}

/* Same operation, per-thread default stream: distinct entry point, as in the real driver. */
EXPORT CUresult cuMemsetD8_v2_ptds(CUdeviceptr dst, unsigned char value, size_t n) {
    return cuMemsetD8_v2(dst, value, n);
}

/* Stream-ordered allocation: the pool is a tag, memory is charged at once. */
static CUresult alloc_async(CUdeviceptr *dptr, size_t size, CUmemoryPool pool, CUstream stream) {
    (void)pool;
    (void)stream;
    return mem_alloc(dptr, size, current_device());
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t size, CUstream stream) {
    return alloc_async(dptr, size, NULL, stream);
}
EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t size, CUstream stream) {
    return alloc_async(dptr, size, NULL, stream);
}
EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t size, CUmemoryPool pool, CUstream stream) {
    if (!pool) return CUDA_ERROR_INVALID_VALUE;
    return alloc_async(dptr, size, pool, stream);
}
EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t size, CUmemoryPool pool,
                                             CUstream stream) {
    if (!pool) return CUDA_ERROR_INVALID_VALUE;
    return alloc_async(dptr, size, pool, stream);
}
EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream) {
    (void)stream;
    return mem_free(dptr);
}
EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream) {
    (void)stream;
    return mem_free(dptr);
}
EXPORT CUresult cuMemPoolCreate(CUmemoryPool *pool, const void *props) {
    (void)props;
    static int next = 1;
    *pool = (CUmemoryPool)(uintptr_t)(0x1000 + __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED));
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool) {
    (void)pool;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice dev) {
    *pool = (CUmemoryPool)(uintptr_t)(0x100 + dev);
    return CUDA_SUCCESS;
}

/* Virtual memory management: physical handles are charged, mappings are not. */
EXPORT CUresult cuMemGetAllocationGranularity(size_t *granularity, const CUmemAllocationProp *prop, int option) {
    (void)prop;
    (void)option;
    *granularity = GRANULARITY;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                            unsigned long long flags) {
    (void)flags;
    if (!handle || !prop || size == 0 || size % GRANULARITY) return CUDA_ERROR_INVALID_VALUE;
    int device = prop->location.id;
    if (device < 0 || device >= fake_config()->device_count) return CUDA_ERROR_INVALID_DEVICE;
    if (charge(device, size) != CUDA_SUCCESS) return CUDA_ERROR_OUT_OF_MEMORY;
    static uint64_t next = 1;
    uint64_t h = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(&table_lock);
    int rc = table_insert(h, size, K_HANDLE, device, 0);
    pthread_mutex_unlock(&table_lock);
    if (rc != 0) {
        uncharge(device, size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *handle = h;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
    pthread_mutex_lock(&table_lock);
    struct entry *e = table_find(handle, K_HANDLE);
    struct entry copy = e ? *e : (struct entry){0};
    if (e) e->kind = K_TOMB;
    pthread_mutex_unlock(&table_lock);
    if (!e) return CUDA_ERROR_INVALID_HANDLE;
    uncharge(copy.device, copy.size);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                                    unsigned long long flags) {
    (void)alignment;
    (void)addr;
    (void)flags;
    void *p = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    *ptr = (CUdeviceptr)(uintptr_t)p;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size) {
    munmap((void *)(uintptr_t)ptr, size);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                         unsigned long long flags) {
    (void)offset;
    (void)flags;
    pthread_mutex_lock(&table_lock);
    struct entry *e = table_find(handle, K_HANDLE);
    pthread_mutex_unlock(&table_lock);
    if (!e) return CUDA_ERROR_INVALID_HANDLE;
    if (mprotect((void *)(uintptr_t)ptr, size, PROT_READ | PROT_WRITE) != 0) return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
    mprotect((void *)(uintptr_t)ptr, size, PROT_NONE);
    return CUDA_SUCCESS;
}

/* Arrays: bytes = width x max(height,1) x max(depth,1) x channels x element size. */
static uint64_t format_bytes(int format) {
    switch (format) {
    case 0x01: case 0x08: return 1; /* UNSIGNED_INT8, SIGNED_INT8 */
    case 0x02: case 0x09: case 0x10: return 2; /* INT16s, HALF */
    default: return 4;
    }
}

static CUresult array_alloc(CUarray *arr, uint64_t bytes) {
    CUdeviceptr p;
    CUresult rc = mem_alloc(&p, bytes, current_device());
    if (rc == CUDA_SUCCESS) *arr = (CUarray)(uintptr_t)p;
    return rc;
}

EXPORT CUresult cuArrayCreate_v2(CUarray *arr, const CUDA_ARRAY_DESCRIPTOR *d) {
    uint64_t h = d->Height ? d->Height : 1;
    return array_alloc(arr, (uint64_t)d->Width * h * d->NumChannels * format_bytes(d->Format));
}

EXPORT CUresult cuArray3DCreate_v2(CUarray *arr, const CUDA_ARRAY3D_DESCRIPTOR *d) {
    uint64_t h = d->Height ? d->Height : 1, z = d->Depth ? d->Depth : 1;
    return array_alloc(arr, (uint64_t)d->Width * h * z * d->NumChannels * format_bytes(d->Format));
}

EXPORT CUresult cuArrayDestroy(CUarray arr) { return mem_free((CUdeviceptr)(uintptr_t)arr); }

EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray *arr, const CUDA_ARRAY3D_DESCRIPTOR *d,
                                       unsigned int levels) {
    uint64_t h = d->Height ? d->Height : 1, z = d->Depth ? d->Depth : 1;
    uint64_t level0 = (uint64_t)d->Width * h * z * d->NumChannels * format_bytes(d->Format);
    /* A full mip chain is at most 4/3 of level 0 in 2D; charge that bound. */
    uint64_t bytes = levels > 1 ? level0 + level0 / 3 : level0;
    CUdeviceptr p;
    CUresult rc = mem_alloc(&p, bytes, current_device());
    if (rc == CUDA_SUCCESS) *arr = (CUmipmappedArray)(uintptr_t)p;
    return rc;
}

EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray arr) { return mem_free((CUdeviceptr)(uintptr_t)arr); }

/* IPC: the handle carries the exporter's pointer; importing maps (here: aliases) it. */
EXPORT CUresult cuIpcGetMemHandle(CUipcMemHandle *handle, CUdeviceptr dptr) {
    memset(handle, 0, sizeof *handle);
    memcpy(handle->reserved, &dptr, sizeof dptr);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *dptr, CUipcMemHandle handle, unsigned int flags) {
    (void)flags;
    memcpy(dptr, handle.reserved, sizeof *dptr);
    return *dptr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

EXPORT CUresult cuIpcCloseMemHandle(CUdeviceptr dptr) {
    (void)dptr;
    return CUDA_SUCCESS;
}

/* ---- kernels --------------------------------------------------------------- */

EXPORT CUresult cuModuleLoadData(CUmodule *module, const void *image) {
    (void)image;
    *module = (CUmodule)(uintptr_t)0x4d4f44;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuModuleGetFunction(CUfunction *fn, CUmodule module, const char *name) {
    (void)module;
    (void)name;
    *fn = (CUfunction)(uintptr_t)0x46554e43;
    return CUDA_SUCCESS;
}

static CUresult launch(unsigned gx, unsigned gy, unsigned gz) {
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    fake_launch(current_device(), (uint64_t)gx * gy * gz);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                               unsigned bz, unsigned shmem, CUstream s, void **params, void **extra) {
    (void)f; (void)bx; (void)by; (void)bz; (void)shmem; (void)s; (void)params; (void)extra;
    return launch(gx, gy, gz);
}
EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                    unsigned by, unsigned bz, unsigned shmem, CUstream s, void **params,
                                    void **extra) {
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, s, params, extra);
}
EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params, void **extra) {
    (void)f; (void)params; (void)extra;
    return launch(config->gridDimX, config->gridDimY, config->gridDimZ);
}
EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **params, void **extra) {
    return cuLaunchKernelEx(config, f, params, extra);
}
EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                          unsigned by, unsigned bz, unsigned shmem, CUstream s, void **params) {
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, s, params, NULL);
}
EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                               unsigned by, unsigned bz, unsigned shmem, CUstream s,
                                               void **params) {
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, s, params, NULL);
}
/* A graph executes as one launch of FAKE_CUDA_GRAPH_BLOCKS blocks (default 1024). */
EXPORT CUresult cuGraphLaunch(CUgraphExec graph, CUstream s) {
    (void)graph; (void)s;
    const char *b = getenv("FAKE_CUDA_GRAPH_BLOCKS");
    return launch(b ? (unsigned)atoi(b) : 1024, 1, 1);
}
EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec graph, CUstream s) { return cuGraphLaunch(graph, s); }

static CUresult wait_device(void) {
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    uint64_t until = atomic_load((_Atomic uint64_t *)&fake_state()->dev[current_device()].busy_until_ns);
    uint64_t now = fake_now_ns();
    if (until > now) {
        uint64_t d = until - now;
        struct timespec ts = {(time_t)(d / 1000000000ULL), (long)(d % 1000000000ULL)};
        nanosleep(&ts, NULL);
    }
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSynchronize(void) { return wait_device(); }
EXPORT CUresult cuStreamSynchronize(CUstream s) { (void)s; return wait_device(); }
EXPORT CUresult cuStreamSynchronize_ptsz(CUstream s) { (void)s; return wait_device(); }
EXPORT CUresult cuStreamCreate(CUstream *s, unsigned int flags) {
    (void)flags;
    *s = (CUstream)(uintptr_t)0x5354;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamDestroy_v2(CUstream s) { (void)s; return CUDA_SUCCESS; }

EXPORT CUresult cuGetErrorString(CUresult error, const char **str) {
    switch (error) {
    case CUDA_SUCCESS: *str = "no error"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *str = "out of memory"; break;
    default: *str = "unknown error"; break;
    }
    return CUDA_SUCCESS;
}

/* ---- cuGetProcAddress ------------------------------------------------------ */

struct proc_entry {
    const char *name;   /* the base name callers ask for */
    int since;          /* first CUDA version (1000*major + 10*minor) with this ABI */
    void *fn;           /* default-stream entry point */
    void *per_thread;   /* _ptsz/_ptds entry point, if the function has one */
};

EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags);
EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *status);

#define E(name, since, fn, pt) {name, since, (void *)(fn), (void *)(pt)}
static const struct proc_entry procs[] = {
    E("cuInit", 2000, cuInit, NULL),
    E("cuDriverGetVersion", 2020, cuDriverGetVersion, NULL),
    E("cuDeviceGetCount", 2000, cuDeviceGetCount, NULL),
    E("cuDeviceGet", 2000, cuDeviceGet, NULL),
    E("cuDeviceGetName", 2000, cuDeviceGetName, NULL),
    E("cuDeviceGetUuid", 9020, cuDeviceGetUuid, NULL),
    E("cuDeviceGetAttribute", 2000, cuDeviceGetAttribute, NULL),
    E("cuDeviceTotalMem", 2000, cuDeviceTotalMem, NULL),
    E("cuDeviceTotalMem", 3020, cuDeviceTotalMem_v2, NULL),
    E("cuCtxCreate", 3020, cuCtxCreate_v2, NULL),
    E("cuCtxDestroy", 4000, cuCtxDestroy_v2, NULL),
    E("cuCtxSetCurrent", 4000, cuCtxSetCurrent, NULL),
    E("cuCtxGetCurrent", 4000, cuCtxGetCurrent, NULL),
    E("cuCtxGetDevice", 2000, cuCtxGetDevice, NULL),
    E("cuCtxSynchronize", 2000, cuCtxSynchronize, NULL),
    E("cuDevicePrimaryCtxRetain", 7000, cuDevicePrimaryCtxRetain, NULL),
    E("cuDevicePrimaryCtxRelease", 11000, cuDevicePrimaryCtxRelease_v2, NULL),
    E("cuMemAlloc", 2000, cuMemAlloc, NULL),
    E("cuMemAlloc", 3020, cuMemAlloc_v2, NULL),
    E("cuMemFree", 2000, cuMemFree, NULL),
    E("cuMemFree", 3020, cuMemFree_v2, NULL),
    E("cuMemAllocPitch", 3020, cuMemAllocPitch_v2, NULL),
    E("cuMemAllocManaged", 6000, cuMemAllocManaged, NULL),
    E("cuMemGetInfo", 2000, cuMemGetInfo, NULL),
    E("cuMemGetInfo", 3020, cuMemGetInfo_v2, NULL),
    E("cuMemGetAddressRange", 3020, cuMemGetAddressRange_v2, NULL),
    E("cuMemsetD8", 3020, cuMemsetD8_v2, cuMemsetD8_v2_ptds),
    E("cuMemAllocAsync", 11020, cuMemAllocAsync, cuMemAllocAsync_ptsz),
    E("cuMemAllocFromPoolAsync", 11020, cuMemAllocFromPoolAsync, cuMemAllocFromPoolAsync_ptsz),
    E("cuMemFreeAsync", 11020, cuMemFreeAsync, cuMemFreeAsync_ptsz),
    E("cuMemPoolCreate", 11020, cuMemPoolCreate, NULL),
    E("cuMemPoolDestroy", 11020, cuMemPoolDestroy, NULL),
    E("cuDeviceGetDefaultMemPool", 11020, cuDeviceGetDefaultMemPool, NULL),
    E("cuMemGetAllocationGranularity", 10020, cuMemGetAllocationGranularity, NULL),
    E("cuMemCreate", 10020, cuMemCreate, NULL),
    E("cuMemRelease", 10020, cuMemRelease, NULL),
    E("cuMemAddressReserve", 10020, cuMemAddressReserve, NULL),
    E("cuMemAddressFree", 10020, cuMemAddressFree, NULL),
    E("cuMemMap", 10020, cuMemMap, NULL),
    E("cuMemUnmap", 10020, cuMemUnmap, NULL),
    E("cuArrayCreate", 3020, cuArrayCreate_v2, NULL),
    E("cuArray3DCreate", 3020, cuArray3DCreate_v2, NULL),
    E("cuArrayDestroy", 2000, cuArrayDestroy, NULL),
    E("cuMipmappedArrayCreate", 5000, cuMipmappedArrayCreate, NULL),
    E("cuMipmappedArrayDestroy", 5000, cuMipmappedArrayDestroy, NULL),
    E("cuIpcGetMemHandle", 4010, cuIpcGetMemHandle, NULL),
    E("cuIpcOpenMemHandle", 11000, cuIpcOpenMemHandle_v2, NULL),
    E("cuIpcCloseMemHandle", 4010, cuIpcCloseMemHandle, NULL),
    E("cuModuleLoadData", 2000, cuModuleLoadData, NULL),
    E("cuModuleGetFunction", 2000, cuModuleGetFunction, NULL),
    E("cuLaunchKernel", 4000, cuLaunchKernel, cuLaunchKernel_ptsz),
    E("cuLaunchKernelEx", 11060, cuLaunchKernelEx, cuLaunchKernelEx_ptsz),
    E("cuLaunchCooperativeKernel", 9000, cuLaunchCooperativeKernel, cuLaunchCooperativeKernel_ptsz),
    E("cuGraphLaunch", 10000, cuGraphLaunch, cuGraphLaunch_ptsz),
    E("cuStreamCreate", 2000, cuStreamCreate, NULL),
    E("cuStreamDestroy", 4000, cuStreamDestroy_v2, NULL),
    E("cuStreamSynchronize", 2000, cuStreamSynchronize, cuStreamSynchronize_ptsz),
    E("cuGetErrorString", 6000, cuGetErrorString, NULL),
    E("cuGetProcAddress", 11030, cuGetProcAddress, NULL),
    E("cuGetProcAddress", 12000, cuGetProcAddress_v2, NULL),
};
#undef E

static CUresult lookup(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                       CUdriverProcAddressQueryResult *status) {
    const struct proc_entry *best = NULL;
    int known = 0;
    for (size_t i = 0; i < sizeof procs / sizeof procs[0]; i++) {
        if (strcmp(procs[i].name, symbol) != 0) continue;
        known = 1;
        if (procs[i].since <= cudaVersion && (!best || procs[i].since > best->since)) best = &procs[i];
    }
    if (!best) {
        *pfn = NULL;
        if (status) *status = known ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        return CUDA_ERROR_NOT_FOUND;
    }
    *pfn = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) && best->per_thread ? best->per_thread : best->fn;
    if (status) *status = CU_GET_PROC_ADDRESS_SUCCESS;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags) {
    if (!symbol || !pfn) return CUDA_ERROR_INVALID_VALUE;
    return lookup(symbol, pfn, cudaVersion, flags, NULL);
}

EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *status) {
    if (!symbol || !pfn) return CUDA_ERROR_INVALID_VALUE;
    return lookup(symbol, pfn, cudaVersion, flags, status);
}
