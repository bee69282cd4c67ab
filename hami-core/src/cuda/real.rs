//! The real driver's entry points, resolved once from `libcuda.so.1` with the
//! real `dlsym` (never our override).

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;

use super::abi::*;
use super::dlsym::{real_dlsym, typed_symbol};

macro_rules! real_table {
    ($( $field:ident = $name:literal : fn($($arg:ty),*); )*) => {
        /// Typed pointers to the real driver functions hami-core calls.
        pub struct RealCuda {
            pub handle: *mut c_void,
            $( pub $field: Option<unsafe extern "C" fn($($arg),*) -> CUresult>, )*
        }

        impl RealCuda {
            /// # Safety
            /// `handle` must be a live `dlopen` handle of the driver.
            unsafe fn load(handle: *mut c_void) -> Self {
                Self {
                    handle,
                    $( $field: unsafe { typed_symbol(handle, cstr(concat!($name, "\0"))) }, )*
                }
            }
        }
    };
}

real_table! {
    ctx_get_device = "cuCtxGetDevice": fn(*mut CUdevice);
    mem_alloc_v2 = "cuMemAlloc_v2": fn(*mut CUdeviceptr, usize);
    mem_free_v2 = "cuMemFree_v2": fn(CUdeviceptr);
    mem_alloc_pitch_v2 = "cuMemAllocPitch_v2": fn(*mut CUdeviceptr, *mut usize, usize, usize, c_uint);
    mem_alloc_managed = "cuMemAllocManaged": fn(*mut CUdeviceptr, usize, c_uint);
    mem_get_info_v2 = "cuMemGetInfo_v2": fn(*mut usize, *mut usize);
    mem_get_info = "cuMemGetInfo": fn(*mut c_uint, *mut c_uint);
    device_total_mem_v2 = "cuDeviceTotalMem_v2": fn(*mut usize, CUdevice);
    device_total_mem = "cuDeviceTotalMem": fn(*mut c_uint, CUdevice);
    mem_get_address_range_v2 = "cuMemGetAddressRange_v2": fn(*mut CUdeviceptr, *mut usize, CUdeviceptr);
    mem_alloc_async = "cuMemAllocAsync": fn(*mut CUdeviceptr, usize, CUstream);
    mem_alloc_async_ptsz = "cuMemAllocAsync_ptsz": fn(*mut CUdeviceptr, usize, CUstream);
    mem_alloc_from_pool_async = "cuMemAllocFromPoolAsync": fn(*mut CUdeviceptr, usize, CUmemoryPool, CUstream);
    mem_alloc_from_pool_async_ptsz = "cuMemAllocFromPoolAsync_ptsz": fn(*mut CUdeviceptr, usize, CUmemoryPool, CUstream);
    mem_free_async = "cuMemFreeAsync": fn(CUdeviceptr, CUstream);
    mem_free_async_ptsz = "cuMemFreeAsync_ptsz": fn(CUdeviceptr, CUstream);
    mem_create = "cuMemCreate": fn(*mut CUmemGenericAllocationHandle, usize, *const CUmemAllocationProp, u64);
    mem_release = "cuMemRelease": fn(CUmemGenericAllocationHandle);
    array_create_v2 = "cuArrayCreate_v2": fn(*mut CUarray, *const CUDA_ARRAY_DESCRIPTOR);
    array_3d_create_v2 = "cuArray3DCreate_v2": fn(*mut CUarray, *const CUDA_ARRAY3D_DESCRIPTOR);
    array_destroy = "cuArrayDestroy": fn(CUarray);
    mipmapped_array_create = "cuMipmappedArrayCreate": fn(*mut CUmipmappedArray, *const CUDA_ARRAY3D_DESCRIPTOR, c_uint);
    mipmapped_array_destroy = "cuMipmappedArrayDestroy": fn(CUmipmappedArray);
    ipc_open_mem_handle_v2 = "cuIpcOpenMemHandle_v2": fn(*mut CUdeviceptr, CUipcMemHandle, c_uint);
    ipc_close_mem_handle = "cuIpcCloseMemHandle": fn(CUdeviceptr);
    get_proc_address = "cuGetProcAddress": fn(*const c_char, *mut *mut c_void, c_int, u64);
    get_proc_address_v2 = "cuGetProcAddress_v2": fn(*const c_char, *mut *mut c_void, c_int, u64, *mut c_int);
    device_get_count = "cuDeviceGetCount": fn(*mut c_int);
    ctx_create_v2 = "cuCtxCreate_v2": fn(*mut CUcontext, c_uint, CUdevice);
    ctx_destroy_v2 = "cuCtxDestroy_v2": fn(CUcontext);
    device_primary_ctx_retain = "cuDevicePrimaryCtxRetain": fn(*mut CUcontext, CUdevice);
    device_primary_ctx_release_v2 = "cuDevicePrimaryCtxRelease_v2": fn(CUdevice);
    launch_kernel = "cuLaunchKernel": fn(CUfunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CUstream, *mut *mut c_void, *mut *mut c_void);
    launch_kernel_ptsz = "cuLaunchKernel_ptsz": fn(CUfunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CUstream, *mut *mut c_void, *mut *mut c_void);
    launch_kernel_ex = "cuLaunchKernelEx": fn(*const CUlaunchConfig, CUfunction, *mut *mut c_void, *mut *mut c_void);
    launch_kernel_ex_ptsz = "cuLaunchKernelEx_ptsz": fn(*const CUlaunchConfig, CUfunction, *mut *mut c_void, *mut *mut c_void);
    launch_cooperative_kernel = "cuLaunchCooperativeKernel": fn(CUfunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CUstream, *mut *mut c_void);
    launch_cooperative_kernel_ptsz = "cuLaunchCooperativeKernel_ptsz": fn(CUfunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CUstream, *mut *mut c_void);
    graph_launch = "cuGraphLaunch": fn(CUgraphExec, CUstream);
    graph_launch_ptsz = "cuGraphLaunch_ptsz": fn(CUgraphExec, CUstream);
}

// SAFETY: function pointers and a dlopen handle are freely shareable.
unsafe impl Send for RealCuda {}
unsafe impl Sync for RealCuda {}

fn cstr(name: &'static str) -> &'static CStr {
    CStr::from_bytes_with_nul(name.as_bytes()).expect("nul-terminated")
}

static REAL: OnceLock<Option<RealCuda>> = OnceLock::new();

/// The real driver, loaded on first use; `None` if `libcuda.so.1` cannot be opened.
pub fn real() -> Option<&'static RealCuda> {
    REAL.get_or_init(|| {
        // SAFETY: dlopen with a constant name.
        let handle = unsafe {
            let h = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
            if h.is_null() {
                libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW)
            } else {
                h
            }
        };
        if handle.is_null() {
            crate::hlog!(crate::log::ERROR, "cannot load libcuda.so.1");
            return None;
        }
        // SAFETY: a live handle of the driver.
        Some(unsafe { RealCuda::load(handle) })
    })
    .as_ref()
}

/// Resolves any real driver symbol by its versioned name.
pub fn real_symbol(name: &CStr) -> *mut c_void {
    match real() {
        // SAFETY: a live handle and a C string.
        Some(r) => unsafe { real_dlsym(r.handle, name.as_ptr()) },
        None => std::ptr::null_mut(),
    }
}

/// The device of the calling thread's current context (0 without one).
pub fn current_device() -> usize {
    let mut device: CUdevice = 0;
    match real().and_then(|r| r.ctx_get_device) {
        // SAFETY: writes one int.
        Some(f) if unsafe { f(&mut device) } == CUDA_SUCCESS && device >= 0 => device as usize,
        _ => 0,
    }
}
