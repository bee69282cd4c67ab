/*
 * The slice of Huawei CANN's runtime (rt*) and AscendCL (acl*) ABI that
 * hami-rs' fake NPU and tests use, written for hami-rs from CANN's public
 * documentation.
 */
#ifndef HAMI_ASCEND_ABI_H
#define HAMI_ASCEND_ABI_H

#include <stddef.h>
#include <stdint.h>

typedef int32_t rtError_t;
typedef int aclError;

#define RT_ERROR_NONE 0
#define ACL_SUCCESS 0
#define ACL_ERROR_INVALID_PARAM 100000
#define ACL_ERROR_RT_MEMORY_ALLOCATION 207001 /* both layers report out of memory with it */

typedef enum { ACL_MEM_MALLOC_HUGE_FIRST = 0, ACL_MEM_MALLOC_HUGE_ONLY = 1, ACL_MEM_MALLOC_NORMAL_ONLY = 2 } aclrtMemMallocPolicy;
typedef enum { ACL_DDR_MEM = 0, ACL_HBM_MEM = 1 } aclrtMemAttr;
typedef uint32_t rtMemType_t;
typedef void *rtStream_t;
typedef void *rtModel_t;
typedef uint32_t rtMemInfoType_t;

#endif
