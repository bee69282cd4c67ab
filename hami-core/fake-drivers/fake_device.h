/*
 * State of the fake GPUs, shared by the fake libcuda.so.1 and libnvidia-ml.so.1
 * and by every process that loads them, like a real device is.
 *
 * FAKE_CUDA_STATE names a file that holds it (created zero-filled on first use,
 * which is a valid empty state); without it each process gets a private device.
 * Configuration, read once per process:
 *   FAKE_CUDA_DEVICE_COUNT  number of devices (default 1, at most 8)
 *   FAKE_CUDA_TOTAL_MEMORY  bytes per device, k/m/g suffixes allowed (default 8g)
 *   FAKE_CUDA_SM_COUNT      multiprocessors per device (default 132)
 *   FAKE_CUDA_NS_PER_BLOCK  simulated run time of one thread block (default 1000)
 *   FAKE_CUDA_QUEUE_NS      queued work after which a launch blocks, like a full
 *                           hardware queue (default 20000000, i.e. 20 ms)
 *   FAKE_CUDA_LAUNCH_NOOP   1: launches return at once and do nothing, so a
 *                           benchmark sees only the cost of what wraps them
 *   FAKE_CUDA_CONTEXT_BYTES device memory a context takes (default 0)
 *   FAKE_CUDA_PID_OFFSET    added to getpid() wherever the device names a
 *                           process (NVML): the host's view of a container's
 *                           pids, which differ from the container's own
 *
 * Like the real driver, the device frees what a process held when it is gone,
 * however it ended (kill -9 included): with a state file, each process holds
 * an open-file-description lock on one byte past the state for each device
 * record it owns; a record whose lock nobody holds belongs to a dead process,
 * and the next allocation or memory query on that device takes it back. This
 * works across containers, whose pids mean nothing to each other.
 */
#ifndef HAMI_FAKE_DEVICE_H
#define HAMI_FAKE_DEVICE_H

#include <stdint.h>

#define FAKE_MAX_DEVICES 8
#define FAKE_MAX_PROCS 64

struct fake_proc_busy {
    uint32_t pid;              /* 0 = free slot; the device's (host's) view */
    uint32_t contexts;         /* contexts this process holds on the device */
    uint64_t busy_ns_total;    /* kernel time this process put on the device */
    uint64_t used_bytes;       /* device memory this process holds */
};

struct fake_device_state {
    uint64_t used_bytes;       /* device memory in use, all processes */
    uint64_t busy_until_ns;    /* CLOCK_MONOTONIC time the kernel queue drains */
    uint64_t busy_ns_total;    /* total kernel time ever queued */
    struct fake_proc_busy procs[FAKE_MAX_PROCS];
};

struct fake_state {
    struct fake_device_state dev[FAKE_MAX_DEVICES];
};

struct fake_config {
    int device_count;
    uint64_t total_memory;
    int sm_count;
    uint64_t ns_per_block;
    uint64_t queue_ns;
    int launch_noop;
    uint64_t context_bytes;
    uint32_t pid_offset;
};

const struct fake_config *fake_config(void);
struct fake_state *fake_state(void);
uint64_t fake_now_ns(void);
int fake_uuid(int index, char *out, unsigned int len);
/* This process as the device (and NVML) names it. */
uint32_t fake_device_pid(void);
/* The device's record for this process, created on first use (NULL if full). */
struct fake_proc_busy *fake_proc(int device);
/* Charges `size` bytes to the device and this process, or returns -1 when the
 * device has less than that free out of `total`; dead processes' memory is
 * taken back first. */
int fake_charge(int device, uint64_t size, uint64_t total);
void fake_uncharge(int device, uint64_t size);
/* The device's used memory, after taking back dead processes' memory. */
uint64_t fake_used(int device);
/* Queues a kernel of `blocks` thread blocks on the device: sm_count run at a
 * time for ns_per_block each; blocks while the queue holds more than queue_ns. */
void fake_launch(int device, uint64_t blocks);

#endif
