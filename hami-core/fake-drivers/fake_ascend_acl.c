/*
 * A fake AscendCL, libascendcl.so. Like CANN's, its memory calls go down to
 * the runtime's rt* functions through the dynamic linker, so an interposer
 * that hooks both layers sees an ACL allocation twice unless it takes care.
 */
#include <stddef.h>
#include <stdint.h>

#include "ascend_abi.h"

#define EXPORT __attribute__((visibility("default")))

rtError_t rtSetDevice(int32_t device);
rtError_t rtGetDevice(int32_t *device);
rtError_t rtMalloc(void **ptr, uint64_t size, rtMemType_t type, uint16_t module);
rtError_t rtFree(void *ptr);
rtError_t rtMemGetInfoEx(rtMemInfoType_t type, size_t *free_bytes, size_t *total_bytes);

EXPORT aclError aclInit(const char *config) {
    (void)config;
    return ACL_SUCCESS;
}
EXPORT aclError aclFinalize(void) { return ACL_SUCCESS; }
EXPORT aclError aclrtSetDevice(int32_t device) { return rtSetDevice(device); }
EXPORT aclError aclrtGetDevice(int32_t *device) { return rtGetDevice(device); }

EXPORT aclError aclrtMalloc(void **ptr, size_t size, aclrtMemMallocPolicy policy) {
    (void)policy;
    return rtMalloc(ptr, size, 0, 0);
}

/* Padded to 32 bytes plus 32 more, as CANN documents for this call. */
EXPORT aclError aclrtMallocAlign32(void **ptr, size_t size, aclrtMemMallocPolicy policy) {
    (void)policy;
    return rtMalloc(ptr, ((size + 31) & ~(size_t)31) + 32, 0, 0);
}

EXPORT aclError aclrtFree(void *ptr) { return rtFree(ptr); }

EXPORT aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t *free_bytes, size_t *total_bytes) {
    return rtMemGetInfoEx(attr, free_bytes, total_bytes);
}
