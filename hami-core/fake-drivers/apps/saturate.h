/*
 * The test apps' "saturate" operation: launch as fast as allowed for a number
 * of seconds and print the share of device time this process got in each
 * whole second, read from the fake device's own books (FAKE_CUDA_STATE), not
 * from NVML, which the limiter under test reads.
 */
#ifndef HAMI_SATURATE_H
#define HAMI_SATURATE_H

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../fake_device.h"

/* This process's kernel time on device 0 so far, from the fake device's own
 * books (FAKE_CUDA_STATE): the ground truth a limiter is judged against. */
static inline uint64_t my_busy_ns(void) {
    static struct fake_state *st;
    if (!st) {
        const char *path = getenv("FAKE_CUDA_STATE");
        if (!path) {
            fprintf(stderr, "saturate: needs FAKE_CUDA_STATE\n");
            exit(2);
        }
        int fd = open(path, O_RDONLY);
        if (fd < 0) return 0; /* the device has not been touched yet */
        /* Another process may have created the file and not yet grown it:
         * mapping it then would fault past its end. */
        struct stat st_file;
        if (fstat(fd, &st_file) != 0 || (size_t)st_file.st_size < sizeof *st) {
            close(fd);
            return 0;
        }
        void *m = mmap(NULL, sizeof *st, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (m == MAP_FAILED) return 0;
        st = m;
    }
    /* The device names processes with FAKE_CUDA_PID_OFFSET added. */
    const char *offset = getenv("FAKE_CUDA_PID_OFFSET");
    uint32_t me = (uint32_t)getpid() + (offset ? (uint32_t)atoi(offset) : 0);
    for (int i = 0; i < FAKE_MAX_PROCS; i++)
        if (__atomic_load_n(&st->dev[0].procs[i].pid, __ATOMIC_ACQUIRE) == me)
            return __atomic_load_n(&st->dev[0].procs[i].busy_ns_total, __ATOMIC_ACQUIRE);
    return 0;
}

static inline double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Calls launch(arg) until `seconds` whole seconds have passed; a non-zero
 * return ends the run. */
static inline void saturate_loop(unsigned long long seconds, int (*launch)(void *), void *arg) {
    double mark = mono_s();
    uint64_t busy_mark = my_busy_ns();
    int second = 0;
    while (second < (int)seconds) {
        int rc = launch(arg);
        if (rc != 0) {
            printf("saturate rc=%d\n", rc);
            return;
        }
        double t = mono_s();
        if (t - mark >= 1.0) {
            uint64_t busy = my_busy_ns();
            printf("util second=%d percent=%.2f\n", second++, (double)(busy - busy_mark) / ((t - mark) * 1e7));
            mark = t;
            busy_mark = busy;
        }
    }
    printf("saturate rc=0\n");
}

#endif
