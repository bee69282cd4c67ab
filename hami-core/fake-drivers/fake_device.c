/* Shared fake-GPU state and configuration; linked into both fake libraries. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fake_device.h"

static struct fake_config config;
static struct fake_state *state;
static pthread_once_t once = PTHREAD_ONCE_INIT;
/* The state file, kept open for the records' liveness locks (-1: no file). */
static int state_fd = -1;
/* This process's record on each device (-1: none yet). */
static int my_slot[FAKE_MAX_DEVICES] = {-1, -1, -1, -1, -1, -1, -1, -1};

static uint64_t parse_size(const char *text, uint64_t fallback) {
    if (!text || !*text) return fallback;
    char *end = NULL;
    unsigned long long v = strtoull(text, &end, 10);
    if (end == text) return fallback;
    switch (*end) {
    case 'k': case 'K': v <<= 10; break;
    case 'm': case 'M': v <<= 20; break;
    case 'g': case 'G': v <<= 30; break;
    default: break;
    }
    return v;
}

static void init(void) {
    const char *count = getenv("FAKE_CUDA_DEVICE_COUNT");
    config.device_count = count ? atoi(count) : 1;
    if (config.device_count < 0) config.device_count = 0;
    if (config.device_count > FAKE_MAX_DEVICES) config.device_count = FAKE_MAX_DEVICES;
    config.total_memory = parse_size(getenv("FAKE_CUDA_TOTAL_MEMORY"), 8ULL << 30);
    const char *sm = getenv("FAKE_CUDA_SM_COUNT");
    config.sm_count = sm ? atoi(sm) : 132;
    config.ns_per_block = parse_size(getenv("FAKE_CUDA_NS_PER_BLOCK"), 1000);
    config.queue_ns = parse_size(getenv("FAKE_CUDA_QUEUE_NS"), 20000000);
    config.context_bytes = parse_size(getenv("FAKE_CUDA_CONTEXT_BYTES"), 0);
    config.pid_offset = (uint32_t)parse_size(getenv("FAKE_CUDA_PID_OFFSET"), 0);
    config.launch_noop = getenv("FAKE_CUDA_LAUNCH_NOOP") && strcmp(getenv("FAKE_CUDA_LAUNCH_NOOP"), "1") == 0;

    const char *path = getenv("FAKE_CUDA_STATE");
    void *mem = MAP_FAILED;
    if (path && *path) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        if (fd >= 0) {
            struct stat st;
            if (fstat(fd, &st) == 0 && (size_t)st.st_size < sizeof(struct fake_state))
                if (ftruncate(fd, sizeof(struct fake_state)) != 0) perror("fake-cuda: ftruncate");
            mem = mmap(NULL, sizeof(struct fake_state), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (mem != MAP_FAILED) state_fd = fd;
            else close(fd);
        } else {
            fprintf(stderr, "fake-cuda: cannot open %s: %s\n", path, strerror(errno));
        }
    }
    if (mem == MAP_FAILED) {
        /* No state file: the device is private to this process, but libcuda and
         * libnvidia-ml each carry this code and must still see one device. The
         * first to get here publishes its mapping for the other. */
        char key[64];
        const char *published = getenv("HAMI_FAKE_CUDA_STATE_ADDR");
        unsigned long pid = 0;
        void *addr = NULL;
        if (published && sscanf(published, "%lu:%p", &pid, &addr) == 2 && pid == (unsigned long)getpid()) {
            mem = addr;
        } else {
            mem = mmap(NULL, sizeof(struct fake_state), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
            if (mem != MAP_FAILED) {
                snprintf(key, sizeof key, "%lu:%p", (unsigned long)getpid(), mem);
                setenv("HAMI_FAKE_CUDA_STATE_ADDR", key, 1);
            }
        }
    }
    state = mem == MAP_FAILED ? NULL : mem;
}

const struct fake_config *fake_config(void) {
    pthread_once(&once, init);
    return &config;
}

struct fake_state *fake_state(void) {
    pthread_once(&once, init);
    return state;
}

uint64_t fake_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int fake_uuid(int index, char *out, unsigned int len) {
    return snprintf(out, len, "GPU-fa4e0000-0000-4000-8000-%012d", index) < (int)len ? 0 : -1;
}

uint32_t fake_device_pid(void) {
    return (uint32_t)getpid() + fake_config()->pid_offset;
}

/* The byte whose lock says record `slot` of `device` is owned by a live process. */
static off_t liveness_byte(int device, int slot) {
    return (off_t)sizeof(struct fake_state) + (off_t)device * FAKE_MAX_PROCS + slot;
}

/* F_SETLK with an open-file-description lock: held until this process's last
 * descriptor of the file closes, i.e. until it exits, however it exits. */
static int liveness_lock(int device, int slot, short type) {
    struct flock l = {.l_type = type, .l_whence = SEEK_SET, .l_start = liveness_byte(device, slot), .l_len = 1};
    return fcntl(state_fd, F_OFD_SETLK, &l);
}

/* Takes back the memory and the record of every process of `device` that is
 * gone: its record's lock is free. Without a state file nothing is shared. */
static void reap(int device) {
    if (state_fd < 0) return;
    struct fake_device_state *d = &fake_state()->dev[device];
    for (int i = 0; i < FAKE_MAX_PROCS; i++) {
        if (i == my_slot[device] || __atomic_load_n(&d->procs[i].pid, __ATOMIC_ACQUIRE) == 0) continue;
        if (liveness_lock(device, i, F_WRLCK) != 0) continue; /* its owner lives */
        /* Owned by no one: its process died; a claimer locks before it names itself. */
        if (__atomic_load_n(&d->procs[i].pid, __ATOMIC_ACQUIRE) != 0) {
            uint64_t held = __atomic_exchange_n(&d->procs[i].used_bytes, 0, __ATOMIC_ACQ_REL);
            __atomic_fetch_sub(&d->used_bytes, held, __ATOMIC_ACQ_REL);
            __atomic_store_n(&d->procs[i].contexts, 0, __ATOMIC_RELEASE);
            __atomic_store_n(&d->procs[i].busy_ns_total, 0, __ATOMIC_RELEASE);
            __atomic_store_n(&d->procs[i].pid, 0, __ATOMIC_RELEASE);
        }
        liveness_lock(device, i, F_UNLCK);
    }
}

struct fake_proc_busy *fake_proc(int device) {
    struct fake_device_state *d = &fake_state()->dev[device];
    int mine = __atomic_load_n(&my_slot[device], __ATOMIC_ACQUIRE);
    if (mine >= 0) return &d->procs[mine];
    uint32_t pid = fake_device_pid();
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < FAKE_MAX_PROCS; i++) {
            if (__atomic_load_n(&d->procs[i].pid, __ATOMIC_ACQUIRE) != 0) continue;
            if (state_fd >= 0 && liveness_lock(device, i, F_WRLCK) != 0) continue;
            uint32_t zero = 0;
            if (__atomic_compare_exchange_n(&d->procs[i].pid, &zero, pid, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                __atomic_store_n(&my_slot[device], i, __ATOMIC_RELEASE);
                return &d->procs[i];
            }
            if (state_fd >= 0) liveness_lock(device, i, F_UNLCK);
        }
        reap(device); /* full: perhaps of the dead */
    }
    return NULL;
}

int fake_charge(int device, uint64_t size, uint64_t total) {
    reap(device);
    struct fake_device_state *d = &fake_state()->dev[device];
    uint64_t used = __atomic_load_n(&d->used_bytes, __ATOMIC_ACQUIRE);
    do {
        if (used + size < used || used + size > total) return -1;
    } while (!__atomic_compare_exchange_n(&d->used_bytes, &used, used + size, 1, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
    struct fake_proc_busy *p = fake_proc(device);
    if (p) __atomic_fetch_add(&p->used_bytes, size, __ATOMIC_ACQ_REL);
    return 0;
}

void fake_uncharge(int device, uint64_t size) {
    struct fake_device_state *d = &fake_state()->dev[device];
    __atomic_fetch_sub(&d->used_bytes, size, __ATOMIC_ACQ_REL);
    struct fake_proc_busy *p = fake_proc(device);
    if (p) __atomic_fetch_sub(&p->used_bytes, size, __ATOMIC_ACQ_REL);
}

uint64_t fake_used(int device) {
    reap(device);
    return __atomic_load_n(&fake_state()->dev[device].used_bytes, __ATOMIC_ACQUIRE);
}

static void account_busy(int device, uint64_t ns) {
    struct fake_proc_busy *p = fake_proc(device);
    if (p) __atomic_fetch_add(&p->busy_ns_total, ns, __ATOMIC_RELAXED);
    __atomic_fetch_add(&fake_state()->dev[device].busy_ns_total, ns, __ATOMIC_RELAXED);
}

void fake_launch(int device, uint64_t blocks) {
    const struct fake_config *c = fake_config();
    if (c->launch_noop) return;
    uint64_t sm = c->sm_count > 0 ? (uint64_t)c->sm_count : 1;
    uint64_t ns = (blocks + sm - 1) / sm * c->ns_per_block;
    uint64_t *until = &fake_state()->dev[device].busy_until_ns;
    uint64_t now = fake_now_ns(), old = __atomic_load_n(until, __ATOMIC_ACQUIRE), next;
    do {
        next = (old > now ? old : now) + ns;
    } while (!__atomic_compare_exchange_n(until, &old, next, 1, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
    account_busy(device, ns);
    /* A full hardware queue makes the launch itself wait. */
    if (next > now + c->queue_ns) {
        uint64_t d = next - c->queue_ns - now;
        struct timespec ts = {(time_t)(d / 1000000000ULL), (long)(d % 1000000000ULL)};
        nanosleep(&ts, NULL);
    }
}
