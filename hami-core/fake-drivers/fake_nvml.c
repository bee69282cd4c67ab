/*
 * A fake libnvidia-ml.so.1 over the same shared fake-GPU state as the fake
 * libcuda.so.1: memory use is the device's, utilization comes from the kernel
 * time each process queued, measured between calls like NVML's samples.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cuda_abi.h"
#include "fake_device.h"

#define EXPORT __attribute__((visibility("default")))

static int initialized;

static int index_of(nvmlDevice_t d) {
    int i = (int)((uintptr_t)d - 1);
    return i >= 0 && i < fake_config()->device_count ? i : -1;
}

EXPORT nvmlReturn_t nvmlInit_v2(void) {
    fake_config();
    initialized = 1;
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }
EXPORT nvmlReturn_t nvmlShutdown(void) {
    initialized = 0;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    *count = (unsigned int)fake_config()->device_count;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if ((int)index >= fake_config()->device_count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = (nvmlDevice_t)(uintptr_t)(index + 1);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    int i = index_of(device);
    if (i < 0) return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned int)i;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int len) {
    int i = index_of(device);
    if (i < 0) return NVML_ERROR_INVALID_ARGUMENT;
    return fake_uuid(i, uuid, len) == 0 ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int len) {
    if (index_of(device) < 0) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(name, len, "NVIDIA Fake H100 80GB HBM3");
    return NVML_SUCCESS;
}

static nvmlReturn_t memory(nvmlDevice_t device, unsigned long long *total, unsigned long long *used) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    int i = index_of(device);
    if (i < 0) return NVML_ERROR_INVALID_ARGUMENT;
    *total = fake_config()->total_memory;
    *used = fake_used(i);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *m) {
    if (!m) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = memory(device, &m->total, &m->used);
    if (rc == NVML_SUCCESS) m->free = m->used > m->total ? 0 : m->total - m->used;
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *m) {
    if (!m) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = memory(device, &m->total, &m->used);
    if (rc == NVML_SUCCESS) {
        m->reserved = 0;
        m->free = m->used > m->total ? 0 : m->total - m->used;
    }
    return rc;
}

/* nvmlProcessInfo_t (v2/v3 layout; v3 adds the protected-memory field). */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
    unsigned long long usedGpuCcProtectedMemory;
} fake_process_info_v3;

/* Processes holding a context on the device, named by their device-side pids. */
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                            fake_process_info_v3 *infos) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    int d = index_of(device);
    if (d < 0 || !count) return NVML_ERROR_INVALID_ARGUMENT;
    struct fake_device_state *s = &fake_state()->dev[d];
    unsigned int n = 0;
    for (int i = 0; i < FAKE_MAX_PROCS; i++)
        if (atomic_load((_Atomic uint32_t *)&s->procs[i].pid) &&
            atomic_load((_Atomic uint32_t *)&s->procs[i].contexts))
            n++;
    if (!infos || *count < n) {
        *count = n;
        return n == 0 ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
    }
    unsigned int out = 0;
    for (int i = 0; i < FAKE_MAX_PROCS && out < n; i++) {
        uint32_t pid = atomic_load((_Atomic uint32_t *)&s->procs[i].pid);
        if (pid && atomic_load((_Atomic uint32_t *)&s->procs[i].contexts))
            infos[out++] = (fake_process_info_v3){pid, 0, 0xffffffffu, 0xffffffffu, 0};
    }
    *count = out;
    return NVML_SUCCESS;
}

/* Per-caller memory of the previous sample, so each call reports the share of
 * device time since the last one, as NVML's sampling does. */
static struct {
    uint32_t pid;
    uint64_t busy;
    uint64_t at;
} last[FAKE_MAX_DEVICES][FAKE_MAX_PROCS];
static uint64_t last_device_busy[FAKE_MAX_DEVICES], last_device_at[FAKE_MAX_DEVICES];
static pthread_mutex_t sample_lock = PTHREAD_MUTEX_INITIALIZER;

static unsigned int percent(uint64_t busy, uint64_t elapsed) {
    if (elapsed == 0) return 0;
    uint64_t p = (busy * 100 + elapsed / 2) / elapsed; /* rounded, not truncated */
    return p > 100 ? 100 : (unsigned int)p;
}

EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device, nvmlProcessUtilizationSample_t *samples,
                                                    unsigned int *count, unsigned long long lastSeen) {
    (void)lastSeen;
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    int d = index_of(device);
    if (d < 0 || !count) return NVML_ERROR_INVALID_ARGUMENT;
    struct fake_device_state *s = &fake_state()->dev[d];
    unsigned int n = 0;
    for (int i = 0; i < FAKE_MAX_PROCS; i++)
        if (atomic_load((_Atomic uint32_t *)&s->procs[i].pid)) n++;
    if (!samples || *count < n) {
        *count = n;
        return samples ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
    }
    uint64_t now = fake_now_ns();
    unsigned int out = 0;
    pthread_mutex_lock(&sample_lock);
    for (int i = 0; i < FAKE_MAX_PROCS; i++) {
        uint32_t pid = atomic_load((_Atomic uint32_t *)&s->procs[i].pid);
        if (!pid) continue;
        uint64_t busy = atomic_load((_Atomic uint64_t *)&s->procs[i].busy_ns_total);
        if (last[d][i].pid != pid) last[d][i] = (typeof(last[d][i])){pid, busy, now};
        samples[out] = (nvmlProcessUtilizationSample_t){
            .pid = pid,
            .timeStamp = now / 1000,
            .smUtil = percent(busy - last[d][i].busy, now - last[d][i].at),
        };
        last[d][i].busy = busy;
        last[d][i].at = now;
        out++;
    }
    pthread_mutex_unlock(&sample_lock);
    *count = out;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *u) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    int d = index_of(device);
    if (d < 0 || !u) return NVML_ERROR_INVALID_ARGUMENT;
    uint64_t now = fake_now_ns();
    uint64_t busy = atomic_load((_Atomic uint64_t *)&fake_state()->dev[d].busy_ns_total);
    pthread_mutex_lock(&sample_lock);
    if (!last_device_at[d]) {
        last_device_at[d] = now;
        last_device_busy[d] = busy;
    }
    u->gpu = percent(busy - last_device_busy[d], now - last_device_at[d]);
    u->memory = 0;
    last_device_busy[d] = busy;
    last_device_at[d] = now;
    pthread_mutex_unlock(&sample_lock);
    return NVML_SUCCESS;
}

/*
 * Topology, for the node agent's link scores. FAKE_NVML_TOPOLOGY lists the
 * pairs that are closer than "across CPUs":
 *   "0-1:10:12;2-3:10:4"  = GPUs 0 and 1 under one PCIe switch with 12
 *   NVLinks between them; GPUs 2 and 3 likewise with 4.
 * Level is NVML's common-ancestor level (0 board, 10 one switch, 20 several
 * switches, 30 host bridge, 40 same CPU, 50 across CPUs, the default).
 * Links are numbered per GPU in the order its pairs are listed.
 */
#include <stdlib.h>

#define FAKE_NVLINK_MAX 18

typedef struct {
    char busIdLegacy[16];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[32];
} fake_pci_info;

struct fake_pair {
    int a, b, level, links;
};

static int fake_pairs(struct fake_pair *out, int max) {
    const char *spec = getenv("FAKE_NVML_TOPOLOGY");
    if (!spec) return 0;
    int n = 0;
    const char *p = spec;
    while (*p && n < max) {
        struct fake_pair pair = {0, 0, 50, 0};
        if (sscanf(p, "%d-%d:%d:%d", &pair.a, &pair.b, &pair.level, &pair.links) >= 3) out[n++] = pair;
        const char *next = strchr(p, ';');
        if (!next) break;
        p = next + 1;
    }
    return n;
}

static void bus_id(int index, fake_pci_info *pci) {
    memset(pci, 0, sizeof *pci);
    pci->bus = (unsigned int)(0x10 + index);
    snprintf(pci->busId, sizeof pci->busId, "00000000:%02X:00.0", pci->bus);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "0000:%02X:00.0", pci->bus);
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, fake_pci_info *pci) {
    int i = index_of(device);
    if (i < 0 || !pci) return NVML_ERROR_INVALID_ARGUMENT;
    bus_id(i, pci);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetTopologyCommonAncestor(nvmlDevice_t d1, nvmlDevice_t d2, int *level) {
    int a = index_of(d1), b = index_of(d2);
    if (a < 0 || b < 0 || !level) return NVML_ERROR_INVALID_ARGUMENT;
    struct fake_pair pairs[64];
    int n = fake_pairs(pairs, 64);
    *level = a == b ? 0 : 50;
    for (int i = 0; i < n; i++)
        if ((pairs[i].a == a && pairs[i].b == b) || (pairs[i].a == b && pairs[i].b == a)) *level = pairs[i].level;
    return NVML_SUCCESS;
}

/* The peer at the other end of `link` of GPU `d`, or -1. */
static int link_peer(int d, unsigned int link) {
    struct fake_pair pairs[64];
    int n = fake_pairs(pairs, 64);
    unsigned int next = 0;
    for (int i = 0; i < n; i++) {
        int peer = pairs[i].a == d ? pairs[i].b : pairs[i].b == d ? pairs[i].a : -1;
        if (peer < 0) continue;
        if (link < next + (unsigned int)pairs[i].links) return peer;
        next += (unsigned int)pairs[i].links;
    }
    return -1;
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t device, unsigned int link, int *active) {
    int d = index_of(device);
    if (d < 0 || !active || link >= FAKE_NVLINK_MAX) return NVML_ERROR_INVALID_ARGUMENT;
    *active = link_peer(d, link) >= 0;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(nvmlDevice_t device, unsigned int link, fake_pci_info *pci) {
    int d = index_of(device);
    if (d < 0 || !pci || link >= FAKE_NVLINK_MAX) return NVML_ERROR_INVALID_ARGUMENT;
    int peer = link_peer(d, link);
    if (peer < 0) return NVML_ERROR_NOT_FOUND;
    bus_id(peer, pci);
    return NVML_SUCCESS;
}
