/*
 * A fake CANN runtime, libruntime.so: host-backed NPU memory on the shared
 * fake-device state (FAKE_CUDA_TOTAL_MEMORY sets its size; FAKE_NPU_TOTAL_MEMORY
 * overrides it for the NPU, default 64g).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "ascend_abi.h"
#include "fake_device.h"

#define EXPORT __attribute__((visibility("default")))

static __thread int32_t current_device;

static uint64_t npu_total(void) {
    static uint64_t total;
    if (!total) {
        const char *s = getenv("FAKE_NPU_TOTAL_MEMORY");
        total = s ? strtoull(s, NULL, 10) << 30 : 64ULL << 30; /* in GiB */
    }
    return total;
}

/* pointer -> size, open addressing with tombstones */
#define SLOTS (1u << 14)
enum { EMPTY, USED, TOMB };
static struct {
    uint64_t key, size;
    int state;
} table[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static unsigned slot(uint64_t k) { return (unsigned)((k * 0x9E3779B97F4A7C15ULL) >> 50) & (SLOTS - 1); }

EXPORT rtError_t rtSetDevice(int32_t device) {
    if (device < 0 || device >= FAKE_MAX_DEVICES) return ACL_ERROR_INVALID_PARAM;
    current_device = device;
    return RT_ERROR_NONE;
}

EXPORT rtError_t rtGetDevice(int32_t *device) {
    *device = current_device;
    return RT_ERROR_NONE;
}

EXPORT rtError_t rtMalloc(void **ptr, uint64_t size, rtMemType_t type, uint16_t module) {
    (void)type;
    (void)module;
    if (!ptr || size == 0) return ACL_ERROR_INVALID_PARAM;
    if (fake_charge(current_device, size, npu_total()) != 0) return ACL_ERROR_RT_MEMORY_ALLOCATION;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        fake_uncharge(current_device, size);
        return ACL_ERROR_RT_MEMORY_ALLOCATION;
    }
    pthread_mutex_lock(&lock);
    unsigned i = slot((uint64_t)(uintptr_t)p);
    while (table[i].state == USED) i = (i + 1) & (SLOTS - 1);
    table[i].key = (uint64_t)(uintptr_t)p;
    table[i].size = size;
    table[i].state = USED;
    pthread_mutex_unlock(&lock);
    *ptr = p;
    return RT_ERROR_NONE;
}

EXPORT rtError_t rtFree(void *ptr) {
    uint64_t k = (uint64_t)(uintptr_t)ptr, size = 0;
    pthread_mutex_lock(&lock);
    for (unsigned i = slot(k), n = 0; n < SLOTS && table[i].state != EMPTY; i = (i + 1) & (SLOTS - 1), n++) {
        if (table[i].state == USED && table[i].key == k) {
            size = table[i].size;
            table[i].state = TOMB;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    if (!size) return ACL_ERROR_INVALID_PARAM;
    munmap(ptr, size);
    fake_uncharge(current_device, size);
    return RT_ERROR_NONE;
}

EXPORT rtError_t rtMemGetInfoEx(rtMemInfoType_t type, size_t *free_bytes, size_t *total_bytes) {
    (void)type;
    uint64_t used = fake_used(current_device);
    *total_bytes = npu_total();
    *free_bytes = used > npu_total() ? 0 : npu_total() - used;
    return RT_ERROR_NONE;
}

/* Kernel launches: blockDim blocks on the current device's timed queue.
 * Argument structures are opaque here, as they are to an interposer. */
EXPORT rtError_t rtKernelLaunchWithFlagV2(const void *stub, uint32_t blockDim, void *args, void *smDesc,
                                          rtStream_t stream, uint32_t flags, const void *cfg) {
    (void)stub; (void)args; (void)smDesc; (void)stream; (void)flags; (void)cfg;
    fake_launch(current_device, blockDim);
    return RT_ERROR_NONE;
}

EXPORT rtError_t rtKernelLaunchWithHandleV2(void *handle, uint64_t tilingKey, uint32_t blockDim, void *args,
                                            void *smDesc, rtStream_t stream, const void *cfg) {
    (void)handle; (void)tilingKey; (void)args; (void)smDesc; (void)stream; (void)cfg;
    fake_launch(current_device, blockDim);
    return RT_ERROR_NONE;
}

EXPORT rtError_t rtAicpuKernelLaunchWithFlag(const void *names, uint32_t blockDim, const void *args,
                                             void *smDesc, rtStream_t stream, uint32_t flags) {
    (void)names; (void)args; (void)smDesc; (void)stream; (void)flags;
    fake_launch(current_device, blockDim);
    return RT_ERROR_NONE;
}

EXPORT rtError_t rtAicpuKernelLaunchExWithArgs(uint32_t kernelType, const char *opName, uint32_t blockDim,
                                               const void *args, void *smDesc, rtStream_t stream,
                                               uint32_t flags) {
    (void)kernelType; (void)opName; (void)args; (void)smDesc; (void)stream; (void)flags;
    fake_launch(current_device, blockDim);
    return RT_ERROR_NONE;
}

/* A model runs as one launch of FAKE_CUDA_GRAPH_BLOCKS blocks (default 1024). */
EXPORT rtError_t rtModelExecute(rtModel_t model, rtStream_t stream, uint32_t flag) {
    (void)model; (void)stream; (void)flag;
    const char *b = getenv("FAKE_CUDA_GRAPH_BLOCKS");
    fake_launch(current_device, b ? strtoull(b, NULL, 10) : 1024);
    return RT_ERROR_NONE;
}

/* Physical memory handles (virtual memory management): charged like rtMalloc;
 * the handle is the backing address. */
EXPORT rtError_t rtMallocPhysical(void **handle, size_t size, const void *prop, uint64_t flags) {
    (void)prop;
    (void)flags;
    return rtMalloc(handle, size, 0, 0);
}

EXPORT rtError_t rtFreePhysical(void *handle) { return rtFree(handle); }
