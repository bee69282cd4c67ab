//! The exported CUDA driver entry points. Each has exactly the ABI of the
//! versioned driver symbol it is named after.
//!
//! Every path that takes device memory reserves quota before calling the
//! driver and gives it back if the driver fails, so no interleaving of
//! processes can overshoot the limit, and over the limit every path returns
//! the real `CUDA_ERROR_OUT_OF_MEMORY` without calling the driver.

#![allow(non_snake_case)]
// Each exported function's safety contract is that of the driver function it is named after.
#![allow(clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, c_uint, c_void};

use super::abi::*;
use super::real::{current_device, real, real_symbol};
use crate::engine::{engine, Charge, Kind};

macro_rules! real_fn {
    ($field:ident) => {
        match real().and_then(|r| r.$field) {
            Some(f) => f,
            None => return CUDA_ERROR_NOT_INITIALIZED,
        }
    };
}

/// Reserve `bytes`, run the driver call, then track the result or give the bytes back.
fn charged(
    kind: Kind,
    device: usize,
    bytes: u64,
    call: impl FnOnce() -> (CUresult, u64),
) -> CUresult {
    crate::engine::charged(kind, device, bytes, CUDA_ERROR_OUT_OF_MEMORY, call)
}

use crate::engine::{quota_view, uncharged};

// ---- plain allocations -------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) -> CUresult {
    let f = real_fn!(mem_alloc_v2);
    charged(Kind::Memory, current_device(), bytesize as u64, || {
        // SAFETY: the caller's arguments, passed through.
        let rc = unsafe { f(dptr, bytesize) };
        (
            rc,
            if rc == CUDA_SUCCESS {
                unsafe { *dptr }
            } else {
                0
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    let f = real_fn!(mem_free_v2);
    // SAFETY: passed through.
    uncharged(Kind::Memory, dptr, || unsafe { f(dptr) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocManaged(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    flags: c_uint,
) -> CUresult {
    let f = real_fn!(mem_alloc_managed);
    charged(Kind::Memory, current_device(), bytesize as u64, || {
        // SAFETY: passed through.
        let rc = unsafe { f(dptr, bytesize, flags) };
        (
            rc,
            if rc == CUDA_SUCCESS {
                unsafe { *dptr }
            } else {
                0
            },
        )
    })
}

/// The pitch is only known afterwards: reserve the largest the driver may pick
/// (rows padded to 512 bytes), then give back what it did not use.
#[no_mangle]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width: usize,
    height: usize,
    element_size: c_uint,
) -> CUresult {
    let f = real_fn!(mem_alloc_pitch_v2);
    let device = current_device();
    let bound = (width as u64)
        .div_ceil(512)
        .saturating_mul(512)
        .saturating_mul(height as u64);
    let e = engine();
    if e.reserve(device, bound).is_err() {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    // SAFETY: passed through.
    let rc = unsafe { f(dptr, pitch, width, height, element_size) };
    if rc != CUDA_SUCCESS {
        e.release(device, bound);
        return rc;
    }
    // SAFETY: the driver succeeded, so both outputs are written.
    let (ptr, actual) = unsafe { (*dptr, (*pitch as u64).saturating_mul(height as u64)) };
    let charged = if actual <= bound {
        e.release(device, bound - actual);
        actual
    } else if e.reserve(device, actual - bound).is_ok() {
        actual
    } else {
        // The driver padded more than any known device does and that pushes us over.
        // SAFETY: freeing what the driver just gave us.
        unsafe { real_fn!(mem_free_v2)(ptr) };
        e.release(device, bound);
        return CUDA_ERROR_OUT_OF_MEMORY;
    };
    e.track(
        Kind::Memory,
        ptr,
        Charge {
            device,
            bytes: charged,
        },
    );
    rc
}

// ---- memory info ---------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    let f = real_fn!(mem_get_info_v2);
    // SAFETY: passed through.
    let rc = unsafe { f(free, total) };
    if rc == CUDA_SUCCESS && !free.is_null() && !total.is_null() {
        // SAFETY: the driver wrote both.
        unsafe {
            let (fr, t) = quota_view(current_device(), *free as u64, *total as u64);
            (*free, *total) = (fr as usize, t as usize);
        }
    }
    rc
}

/// The pre-3.2 ABI with 32-bit outputs; writing 64 bits here would corrupt the caller.
#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo(free: *mut c_uint, total: *mut c_uint) -> CUresult {
    let f = real_fn!(mem_get_info);
    // SAFETY: passed through.
    let rc = unsafe { f(free, total) };
    if rc == CUDA_SUCCESS && !free.is_null() && !total.is_null() {
        let mut real_free = 0usize;
        let mut real_total = 0usize;
        let full = real().and_then(|r| r.mem_get_info_v2);
        // SAFETY: the 64-bit query into our own locals.
        if full.is_some_and(|g| unsafe { g(&mut real_free, &mut real_total) } == CUDA_SUCCESS) {
            let (fr, t) = quota_view(current_device(), real_free as u64, real_total as u64);
            // SAFETY: 32-bit outputs, as this ABI defines.
            unsafe { (*free, *total) = (clamp32(fr), clamp32(t)) };
        }
    }
    rc
}

fn clamp32(v: u64) -> c_uint {
    v.min(u64::from(c_uint::MAX)) as c_uint
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    let f = real_fn!(device_total_mem_v2);
    // SAFETY: passed through.
    let rc = unsafe { f(bytes, dev) };
    if let (CUDA_SUCCESS, Some(limit)) = (rc, engine().memory_limit(dev.max(0) as usize)) {
        // SAFETY: the driver wrote it.
        unsafe { *bytes = limit as usize };
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem(bytes: *mut c_uint, dev: CUdevice) -> CUresult {
    let f = real_fn!(device_total_mem);
    // SAFETY: passed through.
    let rc = unsafe { f(bytes, dev) };
    if let (CUDA_SUCCESS, Some(limit)) = (rc, engine().memory_limit(dev.max(0) as usize)) {
        // SAFETY: a 32-bit output, as this ABI defines.
        unsafe { *bytes = clamp32(limit) };
    }
    rc
}

// ---- stream-ordered allocation (charged when asked for, released when freed) --------

type AllocAsyncFn = unsafe extern "C" fn(*mut CUdeviceptr, usize, CUstream) -> CUresult;
type AllocPoolFn =
    unsafe extern "C" fn(*mut CUdeviceptr, usize, CUmemoryPool, CUstream) -> CUresult;
type FreeAsyncFn = unsafe extern "C" fn(CUdeviceptr, CUstream) -> CUresult;

fn alloc_async(f: AllocAsyncFn, dptr: *mut CUdeviceptr, size: usize, stream: CUstream) -> CUresult {
    charged(Kind::Memory, current_device(), size as u64, || {
        // SAFETY: passed through.
        let rc = unsafe { f(dptr, size, stream) };
        (
            rc,
            if rc == CUDA_SUCCESS {
                unsafe { *dptr }
            } else {
                0
            },
        )
    })
}

fn alloc_from_pool(
    f: AllocPoolFn,
    dptr: *mut CUdeviceptr,
    size: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    charged(Kind::Memory, current_device(), size as u64, || {
        // SAFETY: passed through.
        let rc = unsafe { f(dptr, size, pool, stream) };
        (
            rc,
            if rc == CUDA_SUCCESS {
                unsafe { *dptr }
            } else {
                0
            },
        )
    })
}

fn free_async(f: FreeAsyncFn, dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    // SAFETY: passed through.
    uncharged(Kind::Memory, dptr, || unsafe { f(dptr, stream) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut CUdeviceptr,
    size: usize,
    stream: CUstream,
) -> CUresult {
    alloc_async(real_fn!(mem_alloc_async), dptr, size, stream)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync_ptsz(
    dptr: *mut CUdeviceptr,
    size: usize,
    stream: CUstream,
) -> CUresult {
    alloc_async(real_fn!(mem_alloc_async_ptsz), dptr, size, stream)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync(
    dptr: *mut CUdeviceptr,
    size: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    alloc_from_pool(
        real_fn!(mem_alloc_from_pool_async),
        dptr,
        size,
        pool,
        stream,
    )
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync_ptsz(
    dptr: *mut CUdeviceptr,
    size: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    alloc_from_pool(
        real_fn!(mem_alloc_from_pool_async_ptsz),
        dptr,
        size,
        pool,
        stream,
    )
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    free_async(real_fn!(mem_free_async), dptr, stream)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync_ptsz(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    free_async(real_fn!(mem_free_async_ptsz), dptr, stream)
}

// ---- virtual memory management: physical handles carry the memory -----------------

#[no_mangle]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut CUmemGenericAllocationHandle,
    size: usize,
    prop: *const CUmemAllocationProp,
    flags: u64,
) -> CUresult {
    let f = real_fn!(mem_create);
    // SAFETY: the caller's prop, read if present.
    let device = match unsafe { prop.as_ref() } {
        Some(p) if p.location_type == CU_MEM_LOCATION_TYPE_DEVICE && p.location_id >= 0 => {
            p.location_id as usize
        }
        _ => current_device(),
    };
    charged(Kind::Physical, device, size as u64, || {
        // SAFETY: passed through.
        let rc = unsafe { f(handle, size, prop, flags) };
        (
            rc,
            if rc == CUDA_SUCCESS {
                unsafe { *handle }
            } else {
                0
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemRelease(handle: CUmemGenericAllocationHandle) -> CUresult {
    let f = real_fn!(mem_release);
    // SAFETY: passed through.
    uncharged(Kind::Physical, handle, || unsafe { f(handle) })
}

// ---- arrays --------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuArrayCreate_v2(
    array: *mut CUarray,
    desc: *const CUDA_ARRAY_DESCRIPTOR,
) -> CUresult {
    let f = real_fn!(array_create_v2);
    // SAFETY: the caller's descriptor.
    let Some(d) = (unsafe { desc.as_ref() }) else {
        return unsafe { f(array, desc) };
    };
    let bytes = array_bytes(d.width, d.height, 1, d.num_channels, d.format);
    charged(Kind::Array, current_device(), bytes, || {
        // SAFETY: passed through.
        let rc = unsafe { f(array, desc) };
        (
            rc,
            if rc == CUDA_SUCCESS {
                unsafe { *array as u64 }
            } else {
                0
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArray3DCreate_v2(
    array: *mut CUarray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR,
) -> CUresult {
    let f = real_fn!(array_3d_create_v2);
    // SAFETY: the caller's descriptor.
    let Some(d) = (unsafe { desc.as_ref() }) else {
        return unsafe { f(array, desc) };
    };
    let bytes = array_bytes(d.width, d.height, d.depth, d.num_channels, d.format);
    charged(Kind::Array, current_device(), bytes, || {
        // SAFETY: passed through.
        let rc = unsafe { f(array, desc) };
        (
            rc,
            if rc == CUDA_SUCCESS {
                unsafe { *array as u64 }
            } else {
                0
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayDestroy(array: CUarray) -> CUresult {
    let f = real_fn!(array_destroy);
    // SAFETY: passed through.
    uncharged(Kind::Array, array as u64, || unsafe { f(array) })
}

/// A full mip chain adds at most a third to level 0 (2D); charge that bound.
#[no_mangle]
pub unsafe extern "C" fn cuMipmappedArrayCreate(
    array: *mut CUmipmappedArray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR,
    levels: c_uint,
) -> CUresult {
    let f = real_fn!(mipmapped_array_create);
    // SAFETY: the caller's descriptor.
    let Some(d) = (unsafe { desc.as_ref() }) else {
        return unsafe { f(array, desc, levels) };
    };
    let level0 = array_bytes(d.width, d.height, d.depth, d.num_channels, d.format);
    let bytes = if levels > 1 {
        level0 + level0 / 3
    } else {
        level0
    };
    charged(Kind::Array, current_device(), bytes, || {
        // SAFETY: passed through.
        let rc = unsafe { f(array, desc, levels) };
        (
            rc,
            if rc == CUDA_SUCCESS {
                unsafe { *array as u64 }
            } else {
                0
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMipmappedArrayDestroy(array: CUmipmappedArray) -> CUresult {
    let f = real_fn!(mipmapped_array_destroy);
    // SAFETY: passed through.
    uncharged(Kind::Array, array as u64, || unsafe { f(array) })
}

// ---- IPC imports: memory another process allocated now counts here too ------------

#[no_mangle]
pub unsafe extern "C" fn cuIpcOpenMemHandle_v2(
    dptr: *mut CUdeviceptr,
    handle: CUipcMemHandle,
    flags: c_uint,
) -> CUresult {
    let f = real_fn!(ipc_open_mem_handle_v2);
    // SAFETY: passed through.
    let rc = unsafe { f(dptr, handle, flags) };
    if rc != CUDA_SUCCESS {
        return rc;
    }
    // SAFETY: the driver wrote the imported pointer.
    let ptr = unsafe { *dptr };
    let mut size = 0usize;
    let range = real().and_then(|r| r.mem_get_address_range_v2);
    // SAFETY: size query of a pointer the driver just mapped.
    if range.is_none_or(|g| unsafe { g(std::ptr::null_mut(), &mut size, ptr) } != CUDA_SUCCESS) {
        crate::hlog!(
            crate::log::WARN,
            "cannot size IPC import {ptr:#x}; not charged"
        );
        return rc;
    }
    let device = current_device();
    let e = engine();
    if e.reserve(device, size as u64).is_err() {
        if let Some(close) = real().and_then(|r| r.ipc_close_mem_handle) {
            // SAFETY: closing the mapping we just opened.
            unsafe { close(ptr) };
        }
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    e.track(
        Kind::IpcImport,
        ptr,
        Charge {
            device,
            bytes: size as u64,
        },
    );
    rc
}

#[no_mangle]
pub unsafe extern "C" fn cuIpcCloseMemHandle(dptr: CUdeviceptr) -> CUresult {
    let f = real_fn!(ipc_close_mem_handle);
    // SAFETY: passed through.
    uncharged(Kind::IpcImport, dptr, || unsafe { f(dptr) })
}

// ---- kernel launches: the compute-share limiter decides when they may go ------------

use crate::limiter::{admit, grid_cost, GRAPH_COST};

type LaunchFn = unsafe extern "C" fn(
    CUfunction,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    CUstream,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CUresult;
type LaunchExFn = unsafe extern "C" fn(
    *const CUlaunchConfig,
    CUfunction,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CUresult;
type CooperativeFn = unsafe extern "C" fn(
    CUfunction,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    CUstream,
    *mut *mut c_void,
) -> CUresult;
type GraphLaunchFn = unsafe extern "C" fn(CUgraphExec, CUstream) -> CUresult;

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn launch(
    f: LaunchFn,
    func: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    admit(grid_cost(gx, gy, gz));
    // SAFETY: passed through.
    unsafe { f(func, gx, gy, gz, bx, by, bz, shared, stream, params, extra) }
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cuLaunchKernel(
    func: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    let f = real_fn!(launch_kernel);
    // SAFETY: passed through.
    unsafe {
        launch(
            f, func, gx, gy, gz, bx, by, bz, shared, stream, params, extra,
        )
    }
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cuLaunchKernel_ptsz(
    func: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    let f = real_fn!(launch_kernel_ptsz);
    // SAFETY: passed through.
    unsafe {
        launch(
            f, func, gx, gy, gz, bx, by, bz, shared, stream, params, extra,
        )
    }
}

unsafe fn launch_ex(
    f: LaunchExFn,
    config: *const CUlaunchConfig,
    func: CUfunction,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    // SAFETY: the caller's config, read if present.
    if let Some(c) = unsafe { config.as_ref() } {
        admit(grid_cost(c.grid_dim_x, c.grid_dim_y, c.grid_dim_z));
    }
    // SAFETY: passed through.
    unsafe { f(config, func, params, extra) }
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernelEx(
    config: *const CUlaunchConfig,
    func: CUfunction,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    // SAFETY: passed through.
    unsafe { launch_ex(real_fn!(launch_kernel_ex), config, func, params, extra) }
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernelEx_ptsz(
    config: *const CUlaunchConfig,
    func: CUfunction,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    // SAFETY: passed through.
    unsafe { launch_ex(real_fn!(launch_kernel_ex_ptsz), config, func, params, extra) }
}

#[allow(clippy::too_many_arguments)]
unsafe fn cooperative(
    f: CooperativeFn,
    func: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    stream: CUstream,
    params: *mut *mut c_void,
) -> CUresult {
    admit(grid_cost(gx, gy, gz));
    // SAFETY: passed through.
    unsafe { f(func, gx, gy, gz, bx, by, bz, shared, stream, params) }
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cuLaunchCooperativeKernel(
    func: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    stream: CUstream,
    params: *mut *mut c_void,
) -> CUresult {
    let f = real_fn!(launch_cooperative_kernel);
    // SAFETY: passed through.
    unsafe { cooperative(f, func, gx, gy, gz, bx, by, bz, shared, stream, params) }
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cuLaunchCooperativeKernel_ptsz(
    func: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    stream: CUstream,
    params: *mut *mut c_void,
) -> CUresult {
    let f = real_fn!(launch_cooperative_kernel_ptsz);
    // SAFETY: passed through.
    unsafe { cooperative(f, func, gx, gy, gz, bx, by, bz, shared, stream, params) }
}

/// A graph hides its kernels; it is charged a fixed cost, which the limiter's
/// learned blocks-to-utilization factor converts like any other.
#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch(graph: CUgraphExec, stream: CUstream) -> CUresult {
    let f: GraphLaunchFn = real_fn!(graph_launch);
    admit(GRAPH_COST);
    // SAFETY: passed through.
    unsafe { f(graph, stream) }
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch_ptsz(graph: CUgraphExec, stream: CUstream) -> CUresult {
    let f: GraphLaunchFn = real_fn!(graph_launch_ptsz);
    admit(GRAPH_COST);
    // SAFETY: passed through.
    unsafe { f(graph, stream) }
}

// ---- cuGetProcAddress: hand out hooks with the ABI the caller asked for -------------

/// Maps a real driver entry point to our hook with the same ABI, if we have one.
///
/// The driver alone decides which version (`_v2`, `_v3`, `_ptsz`, `_ptds`, legacy)
/// a `(symbol, cudaVersion, flags)` query gets; we ask it first and only then
/// swap in the hook named after exactly the entry point it chose. A query for an
/// ABI we do not hook gets the driver's own function, never a hook for another
/// version (HAMi returns the newest, which crashes older callers).
fn translate(real_pfn: *mut c_void) -> *mut c_void {
    use std::sync::OnceLock;
    static TABLE: OnceLock<Vec<(usize, usize)>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        HOOKED
            .iter()
            .chain(super::context::HOOKED)
            .filter_map(|name| {
                let cname = std::ffi::CStr::from_bytes_with_nul(name.as_bytes()).ok()?;
                let real = real_symbol(cname);
                let hook = hook_for_name(cname.to_bytes())
                    .or_else(|| super::context::hook_for_name(cname.to_bytes()))?;
                (!real.is_null()).then_some((real as usize, hook as usize))
            })
            .collect()
    });
    table
        .iter()
        .find(|(real, _)| *real == real_pfn as usize)
        .map_or(real_pfn, |(_, hook)| *hook as *mut c_void)
}

#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cuda_version: c_int,
    flags: u64,
) -> CUresult {
    let f = real_fn!(get_proc_address);
    // SAFETY: passed through.
    let rc = unsafe { f(symbol, pfn, cuda_version, flags) };
    if rc == CUDA_SUCCESS && !pfn.is_null() {
        // SAFETY: the driver wrote it.
        unsafe { *pfn = translate(*pfn) };
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cuda_version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CUresult {
    let f = real_fn!(get_proc_address_v2);
    // SAFETY: passed through.
    let rc = unsafe { f(symbol, pfn, cuda_version, flags, status) };
    if rc == CUDA_SUCCESS && !pfn.is_null() {
        // SAFETY: the driver wrote it.
        unsafe { *pfn = translate(*pfn) };
    }
    rc
}

macro_rules! hooked {
    ($($name:ident),* $(,)?) => {
        /// Versioned driver symbols we export, NUL-terminated.
        pub const HOOKED: &[&str] = &[$(concat!(stringify!($name), "\0")),*];

        /// Our function for an exact versioned driver symbol name.
        pub fn hook_for_name(name: &[u8]) -> Option<*mut c_void> {
            if !name.starts_with(b"cu") {
                return None;
            }
            $( if name == stringify!($name).as_bytes() { return Some($name as *mut c_void); } )*
            None
        }
    };
}

hooked!(
    cuMemAlloc_v2,
    cuMemFree_v2,
    cuMemAllocManaged,
    cuMemAllocPitch_v2,
    cuMemGetInfo_v2,
    cuMemGetInfo,
    cuDeviceTotalMem_v2,
    cuDeviceTotalMem,
    cuMemAllocAsync,
    cuMemAllocAsync_ptsz,
    cuMemAllocFromPoolAsync,
    cuMemAllocFromPoolAsync_ptsz,
    cuMemFreeAsync,
    cuMemFreeAsync_ptsz,
    cuMemCreate,
    cuMemRelease,
    cuArrayCreate_v2,
    cuArray3DCreate_v2,
    cuArrayDestroy,
    cuMipmappedArrayCreate,
    cuMipmappedArrayDestroy,
    cuIpcOpenMemHandle_v2,
    cuIpcCloseMemHandle,
    cuLaunchKernel,
    cuLaunchKernel_ptsz,
    cuLaunchKernelEx,
    cuLaunchKernelEx_ptsz,
    cuLaunchCooperativeKernel,
    cuLaunchCooperativeKernel_ptsz,
    cuGraphLaunch,
    cuGraphLaunch_ptsz,
    cuGetProcAddress,
    cuGetProcAddress_v2,
);
