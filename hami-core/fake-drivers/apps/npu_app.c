/*
 * A scriptable AscendCL client for hami-core's tests. Like CANN applications
 * it dlopens libascendcl.so (and libruntime.so for direct rt* calls) and
 * finds every entry point with dlsym. Each argument is one operation and
 * prints one line, e.g. "acl-alloc 1073741824 rc=0".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../ascend_abi.h"
#include "saturate.h"

static aclError (*acl_init)(const char *);
static aclError (*acl_set_device)(int32_t);
static aclError (*acl_malloc)(void **, size_t, aclrtMemMallocPolicy);
static aclError (*acl_malloc_align32)(void **, size_t, aclrtMemMallocPolicy);
static aclError (*acl_free)(void *);
static aclError (*acl_get_mem_info)(aclrtMemAttr, size_t *, size_t *);
static rtError_t (*rt_malloc)(void **, uint64_t, rtMemType_t, uint16_t);
static rtError_t (*rt_free)(void *);
static rtError_t (*rt_mem_get_info)(rtMemInfoType_t, size_t *, size_t *);
static rtError_t (*rt_malloc_physical)(void **, size_t, const void *, uint64_t);
static rtError_t (*rt_free_physical)(void *);
static rtError_t (*rt_launch_flag)(const void *, uint32_t, void *, void *, rtStream_t, uint32_t, const void *);
static rtError_t (*rt_launch_handle)(void *, uint64_t, uint32_t, void *, void *, rtStream_t, const void *);
static rtError_t (*rt_aicpu)(const void *, uint32_t, const void *, void *, rtStream_t, uint32_t);
static rtError_t (*rt_aicpu_ex)(uint32_t, const char *, uint32_t, const void *, void *, rtStream_t, uint32_t);
static rtError_t (*rt_model_execute)(rtModel_t, rtStream_t, uint32_t);

struct launch_args {
    const char *kind;
    uint32_t blocks;
};

/* One launch through the entry point `kind` names. */
static int launch_one(void *arg) {
    const struct launch_args *a = arg;
    if (strcmp(a->kind, "handle") == 0) return rt_launch_handle(NULL, 0, a->blocks, NULL, NULL, NULL, NULL);
    if (strcmp(a->kind, "aicpu") == 0) return rt_aicpu(NULL, a->blocks, NULL, NULL, NULL, 0);
    if (strcmp(a->kind, "aicpu-ex") == 0) return rt_aicpu_ex(0, "op", a->blocks, NULL, NULL, NULL, 0);
    if (strcmp(a->kind, "model") == 0) return rt_model_execute(NULL, NULL, 0);
    return rt_launch_flag(NULL, a->blocks, NULL, NULL, NULL, 0, NULL);
}

static void *must(void *lib, const char *name) {
    void *p = dlsym(lib, name);
    if (!p) {
        fprintf(stderr, "npu_app: no %s\n", name);
        exit(3);
    }
    return p;
}

#define MAX_LIVE 4096
static struct {
    void *p;
    int rt;
} live[MAX_LIVE];
static int nlive;

static unsigned long long num(char **argv, int *i, int argc) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "npu_app: %s needs a number\n", argv[*i]);
        exit(2);
    }
    return strtoull(argv[++*i], NULL, 0);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    void *acl = dlopen("libascendcl.so", RTLD_NOW | RTLD_GLOBAL);
    void *rt = dlopen("libruntime.so", RTLD_NOW | RTLD_GLOBAL);
    if (!acl || !rt) {
        fprintf(stderr, "npu_app: %s\n", dlerror());
        return 3;
    }
    acl_init = must(acl, "aclInit");
    acl_set_device = must(acl, "aclrtSetDevice");
    acl_malloc = must(acl, "aclrtMalloc");
    acl_malloc_align32 = must(acl, "aclrtMallocAlign32");
    acl_free = must(acl, "aclrtFree");
    acl_get_mem_info = must(acl, "aclrtGetMemInfo");
    rt_malloc = must(rt, "rtMalloc");
    rt_free = must(rt, "rtFree");
    rt_mem_get_info = must(rt, "rtMemGetInfoEx");
    rt_malloc_physical = must(rt, "rtMallocPhysical");
    rt_free_physical = must(rt, "rtFreePhysical");
    rt_launch_flag = must(rt, "rtKernelLaunchWithFlagV2");
    rt_launch_handle = must(rt, "rtKernelLaunchWithHandleV2");
    rt_aicpu = must(rt, "rtAicpuKernelLaunchWithFlag");
    rt_aicpu_ex = must(rt, "rtAicpuKernelLaunchExWithArgs");
    rt_model_execute = must(rt, "rtModelExecute");
    aclError rc = acl_init(NULL);
    if (rc == ACL_SUCCESS) rc = acl_set_device(0);
    printf("init rc=%d\n", rc);
    for (int i = 1; i < argc; i++) {
        const char *op = argv[i];
        void *p = NULL;
        if (strcmp(op, "acl-alloc") == 0 || strcmp(op, "acl-align32") == 0 || strcmp(op, "rt-alloc") == 0) {
            unsigned long long n = num(argv, &i, argc);
            int is_rt = op[0] == 'r';
            rc = is_rt ? rt_malloc(&p, n, 0, 0)
                       : (op[4] == 'a' && op[5] == 'l' && op[6] == 'i' ? acl_malloc_align32 : acl_malloc)(
                             &p, n, ACL_MEM_MALLOC_HUGE_FIRST);
            if (rc == 0 && nlive < MAX_LIVE) live[nlive].p = p, live[nlive++].rt = is_rt;
            printf("%s %llu rc=%d\n", op, n, rc);
        } else if (strcmp(op, "physical") == 0) {
            unsigned long long n = num(argv, &i, argc);
            rc = rt_malloc_physical(&p, n, NULL, 0);
            if (rc == 0 && nlive < MAX_LIVE) live[nlive].p = p, live[nlive++].rt = 2;
            printf("physical %llu rc=%d\n", n, rc);
        } else if (strcmp(op, "acl-until-oom") == 0 || strcmp(op, "rt-until-oom") == 0) {
            unsigned long long n = num(argv, &i, argc);
            int is_rt = op[0] == 'r', count = 0;
            while ((rc = is_rt ? rt_malloc(&p, n, 0, 0) : acl_malloc(&p, n, ACL_MEM_MALLOC_HUGE_FIRST)) == 0 &&
                   count < 100000) {
                if (nlive < MAX_LIVE) live[nlive].p = p, live[nlive++].rt = is_rt;
                count++;
            }
            printf("%s %llu count=%d rc=%d\n", op, n, count, rc);
        } else if (strcmp(op, "free-all") == 0) {
            int failures = 0;
            while (nlive > 0) {
                nlive--;
                void *q = live[nlive].p;
                failures += (live[nlive].rt == 2 ? rt_free_physical(q) : live[nlive].rt ? rt_free(q) : acl_free(q)) != 0;
            }
            printf("free-all failures=%d\n", failures);
        } else if (strcmp(op, "info") == 0 || strcmp(op, "rt-info") == 0) {
            size_t f = 0, t = 0;
            rc = op[0] == 'r' ? rt_mem_get_info(0, &f, &t) : acl_get_mem_info(ACL_HBM_MEM, &f, &t);
            printf("%s free=%zu total=%zu rc=%d\n", op, f, t, rc);
        } else if (strcmp(op, "saturate") == 0) {
            const char *kind = i + 1 < argc ? argv[++i] : "flag";
            unsigned long long secs = num(argv, &i, argc), blocks = num(argv, &i, argc);
            struct launch_args a = {kind, (uint32_t)blocks};
            saturate_loop(secs, launch_one, &a);
        } else if (strcmp(op, "ready") == 0) {
            printf("ready\n");
        } else if (strcmp(op, "pause") == 0) {
            pause();
        } else {
            fprintf(stderr, "npu_app: unknown operation %s\n", op);
            return 2;
        }
    }
    return 0;
}
