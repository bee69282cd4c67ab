//! Ascend front end: the same quota engine and shared region as the CUDA
//! front end, in front of CANN's runtime (`rt*`, libruntime.so) and AscendCL
//! (`acl*`, libascendcl.so).
//!
//! AscendCL's memory calls go down into the runtime through the dynamic
//! linker, so with both layers hooked an `aclrtMalloc` would reach our
//! `rtMalloc` too. A thread-local flag marks "inside an ACL call": runtime
//! calls made underneath pass straight through, and each allocation is
//! counted exactly once, at the layer the application called.
//!
//! Over the quota both layers return `ACL_ERROR_RT_MEMORY_ALLOCATION` (207001),
//! the code CANN itself uses for out of device memory.

#![allow(non_snake_case)]
// Each exported function's safety contract is that of the CANN function it is named after.
#![allow(clippy::missing_safety_doc)]

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

use crate::cuda::dlsym::typed_symbol;
use crate::engine::{charged, quota_view, uncharged, Kind};

pub const ACL_SUCCESS: c_int = 0;
pub const ACL_ERROR_RT_MEMORY_ALLOCATION: c_int = 207_001;
/// Returned when the real library cannot be found.
const ACL_ERROR_UNINITIALIZE: c_int = 100_001;
/// Returned for a launch refused because no schedule exists under `force`.
pub const ACL_ERROR_RT_INTERNAL_ERROR: c_int = 507_899;

thread_local! {
    static IN_ACL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` marked as inside an ACL call (restoring the previous state).
fn in_acl<T>(f: impl FnOnce() -> T) -> T {
    let outer = IN_ACL.with(|c| c.replace(true));
    let r = f();
    IN_ACL.with(|c| c.set(outer));
    r
}

fn inside_acl() -> bool {
    IN_ACL.with(Cell::get)
}

type RtMalloc = unsafe extern "C" fn(*mut *mut c_void, u64, u32, u16) -> c_int;
type RtFree = unsafe extern "C" fn(*mut c_void) -> c_int;
type MemInfo = unsafe extern "C" fn(u32, *mut usize, *mut usize) -> c_int;
type GetDevice = unsafe extern "C" fn(*mut i32) -> c_int;
type AclMalloc = unsafe extern "C" fn(*mut *mut c_void, usize, c_int) -> c_int;
type MallocPhysical = unsafe extern "C" fn(*mut *mut c_void, usize, *const c_void, u64) -> c_int;

struct Real {
    rt_malloc: Option<RtMalloc>,
    rt_free: Option<RtFree>,
    rt_mem_get_info_ex: Option<MemInfo>,
    rt_get_device: Option<GetDevice>,
    acl_malloc: Option<AclMalloc>,
    acl_malloc_align32: Option<AclMalloc>,
    acl_free: Option<RtFree>,
    acl_get_mem_info: Option<MemInfo>,
}

fn open(name: &CStr) -> *mut c_void {
    // SAFETY: dlopen with constant names; the application normally loaded them already.
    unsafe {
        let h = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if h.is_null() {
            libc::dlopen(name.as_ptr(), libc::RTLD_NOW)
        } else {
            h
        }
    }
}

fn real() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    REAL.get_or_init(|| {
        let rt = open(c"libruntime.so");
        let acl = open(c"libascendcl.so");
        // SAFETY: each field's type is the symbol's ABI; a null handle yields None.
        unsafe {
            let sym = |h: *mut c_void| !h.is_null();
            Real {
                rt_malloc: sym(rt).then(|| typed_symbol(rt, c"rtMalloc")).flatten(),
                rt_free: sym(rt).then(|| typed_symbol(rt, c"rtFree")).flatten(),
                rt_mem_get_info_ex: sym(rt)
                    .then(|| typed_symbol(rt, c"rtMemGetInfoEx"))
                    .flatten(),
                rt_get_device: sym(rt).then(|| typed_symbol(rt, c"rtGetDevice")).flatten(),
                acl_malloc: sym(acl)
                    .then(|| typed_symbol(acl, c"aclrtMalloc"))
                    .flatten(),
                acl_malloc_align32: sym(acl)
                    .then(|| typed_symbol(acl, c"aclrtMallocAlign32"))
                    .flatten(),
                acl_free: sym(acl).then(|| typed_symbol(acl, c"aclrtFree")).flatten(),
                acl_get_mem_info: sym(acl)
                    .then(|| typed_symbol(acl, c"aclrtGetMemInfo"))
                    .flatten(),
            }
        }
    })
}

macro_rules! real_fn {
    ($field:ident) => {
        match real().$field {
            Some(f) => f,
            None => return ACL_ERROR_UNINITIALIZE,
        }
    };
}

/// The calling thread's current NPU (0 if unknown).
fn current_device() -> usize {
    let mut d = 0;
    match real().rt_get_device {
        // SAFETY: writes one int.
        Some(f) if unsafe { f(&mut d) } == ACL_SUCCESS && d >= 0 => d as usize,
        _ => 0,
    }
}

fn allocate(call: impl FnOnce() -> (c_int, u64), bytes: u64) -> c_int {
    charged(
        Kind::Memory,
        current_device(),
        bytes,
        ACL_ERROR_RT_MEMORY_ALLOCATION,
        call,
    )
}

fn written(rc: c_int, ptr: *mut *mut c_void) -> (c_int, u64) {
    // SAFETY: on success the library wrote the pointer.
    (
        rc,
        if rc == ACL_SUCCESS {
            unsafe { *ptr as u64 }
        } else {
            0
        },
    )
}

fn show_quota(free: *mut usize, total: *mut usize) {
    if free.is_null() || total.is_null() {
        return;
    }
    // SAFETY: the library filled both.
    unsafe {
        let (f, t) = quota_view(current_device(), *free as u64, *total as u64);
        (*free, *total) = (f as usize, t as usize);
    }
}

// ---- runtime layer ----------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn rtMalloc(
    ptr: *mut *mut c_void,
    size: u64,
    kind: u32,
    module: u16,
) -> c_int {
    let f = real_fn!(rt_malloc);
    if inside_acl() {
        // SAFETY: passed through; the ACL call above us is the one that counts.
        return unsafe { f(ptr, size, kind, module) };
    }
    // SAFETY: passed through.
    allocate(|| written(unsafe { f(ptr, size, kind, module) }, ptr), size)
}

#[no_mangle]
pub unsafe extern "C" fn rtFree(ptr: *mut c_void) -> c_int {
    let f = real_fn!(rt_free);
    if inside_acl() {
        // SAFETY: passed through.
        return unsafe { f(ptr) };
    }
    // SAFETY: passed through.
    uncharged(Kind::Memory, ptr as u64, || unsafe { f(ptr) })
}

#[no_mangle]
pub unsafe extern "C" fn rtMemGetInfoEx(kind: u32, free: *mut usize, total: *mut usize) -> c_int {
    let f = real_fn!(rt_mem_get_info_ex);
    // SAFETY: passed through.
    let rc = unsafe { f(kind, free, total) };
    if rc == ACL_SUCCESS && !inside_acl() {
        show_quota(free, total);
    }
    rc
}

/// Physical memory for virtual memory management: charged like rtMalloc,
/// tracked by its handle.
#[no_mangle]
pub unsafe extern "C" fn rtMallocPhysical(
    handle: *mut *mut c_void,
    size: usize,
    prop: *const c_void,
    flags: u64,
) -> c_int {
    static REAL: OnceLock<Option<MallocPhysical>> = OnceLock::new();
    let Some(f) = runtime_symbol(&REAL, c"rtMallocPhysical") else {
        return ACL_ERROR_UNINITIALIZE;
    };
    if inside_acl() {
        // SAFETY: passed through.
        return unsafe { f(handle, size, prop, flags) };
    }
    // SAFETY: passed through.
    allocate(
        || written(unsafe { f(handle, size, prop, flags) }, handle),
        size as u64,
    )
}

#[no_mangle]
pub unsafe extern "C" fn rtFreePhysical(handle: *mut c_void) -> c_int {
    static REAL: OnceLock<Option<RtFree>> = OnceLock::new();
    let Some(f) = runtime_symbol(&REAL, c"rtFreePhysical") else {
        return ACL_ERROR_UNINITIALIZE;
    };
    if inside_acl() {
        // SAFETY: passed through.
        return unsafe { f(handle) };
    }
    // SAFETY: passed through.
    uncharged(Kind::Memory, handle as u64, || unsafe { f(handle) })
}

// ---- AscendCL layer -----------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn aclrtMalloc(ptr: *mut *mut c_void, size: usize, policy: c_int) -> c_int {
    let f = real_fn!(acl_malloc);
    // SAFETY: passed through.
    allocate(
        || in_acl(|| written(unsafe { f(ptr, size, policy) }, ptr)),
        size as u64,
    )
}

/// CANN pads this allocation to 32 bytes and adds 32; charge what it takes.
#[no_mangle]
pub unsafe extern "C" fn aclrtMallocAlign32(
    ptr: *mut *mut c_void,
    size: usize,
    policy: c_int,
) -> c_int {
    let f = real_fn!(acl_malloc_align32);
    let padded = (size as u64)
        .div_ceil(32)
        .saturating_mul(32)
        .saturating_add(32);
    // SAFETY: passed through.
    allocate(
        || in_acl(|| written(unsafe { f(ptr, size, policy) }, ptr)),
        padded,
    )
}

#[no_mangle]
pub unsafe extern "C" fn aclrtFree(ptr: *mut c_void) -> c_int {
    let f = real_fn!(acl_free);
    // SAFETY: passed through.
    uncharged(Kind::Memory, ptr as u64, || in_acl(|| unsafe { f(ptr) }))
}

#[no_mangle]
pub unsafe extern "C" fn aclrtGetMemInfo(attr: u32, free: *mut usize, total: *mut usize) -> c_int {
    let f = real_fn!(acl_get_mem_info);
    // SAFETY: passed through.
    let rc = in_acl(|| unsafe { f(attr, free, total) });
    if rc == ACL_SUCCESS {
        show_quota(free, total);
    }
    rc
}

// ---- launches: time-sliced between the containers on the NPU --------------------------

type LaunchFlagV2 = unsafe extern "C" fn(
    *const c_void,
    u32,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    u32,
    *const c_void,
) -> c_int;
type LaunchHandleV2 = unsafe extern "C" fn(
    *mut c_void,
    u64,
    u32,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    *const c_void,
) -> c_int;
type AicpuLaunch =
    unsafe extern "C" fn(*const c_void, u32, *const c_void, *mut c_void, *mut c_void, u32) -> c_int;
type AicpuLaunchEx = unsafe extern "C" fn(
    u32,
    *const c_char,
    u32,
    *const c_void,
    *mut c_void,
    *mut c_void,
    u32,
) -> c_int;
type ModelExecute = unsafe extern "C" fn(*mut c_void, *mut c_void, u32) -> c_int;

fn runtime_symbol<F: Copy>(cache: &'static OnceLock<Option<F>>, name: &CStr) -> Option<F> {
    *cache.get_or_init(|| {
        let rt = open(c"libruntime.so");
        // SAFETY: F is the symbol's ABI, per the caller.
        (!rt.is_null())
            .then(|| unsafe { typed_symbol(rt, name) })
            .flatten()
    })
}

/// Waits for this container's time window when the device has a share.
fn admit() -> Option<c_int> {
    let device = current_device();
    crate::engine::engine().sm_limit(device)?;
    match crate::slicer::slicer().admit(device as u32) {
        crate::slicer::Decision::Go => None,
        crate::slicer::Decision::Refuse => Some(ACL_ERROR_RT_INTERNAL_ERROR),
    }
}

macro_rules! launch_hook {
    ($name:ident, $ty:ty, ($($arg:ident: $argty:ty),*)) => {
        #[no_mangle]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "C" fn $name($($arg: $argty),*) -> c_int {
            static REAL: OnceLock<Option<$ty>> = OnceLock::new();
            let Some(f) = runtime_symbol(&REAL, {
                const NAME: &CStr = match CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes()) {
                    Ok(n) => n,
                    Err(_) => panic!("bad symbol name"),
                };
                NAME
            }) else {
                return ACL_ERROR_UNINITIALIZE;
            };
            if let Some(refused) = admit() {
                return refused;
            }
            // SAFETY: passed through.
            unsafe { f($($arg),*) }
        }
    };
}

launch_hook!(rtKernelLaunchWithFlagV2, LaunchFlagV2, (stub: *const c_void, block_dim: u32, args: *mut c_void, sm: *mut c_void, stream: *mut c_void, flags: u32, cfg: *const c_void));
launch_hook!(rtKernelLaunchWithHandleV2, LaunchHandleV2, (handle: *mut c_void, tiling_key: u64, block_dim: u32, args: *mut c_void, sm: *mut c_void, stream: *mut c_void, cfg: *const c_void));
launch_hook!(rtAicpuKernelLaunchWithFlag, AicpuLaunch, (names: *const c_void, block_dim: u32, args: *const c_void, sm: *mut c_void, stream: *mut c_void, flags: u32));
launch_hook!(rtAicpuKernelLaunchExWithArgs, AicpuLaunchEx, (kernel_type: u32, op_name: *const c_char, block_dim: u32, args: *const c_void, sm: *mut c_void, stream: *mut c_void, flags: u32));
launch_hook!(rtModelExecute, ModelExecute, (model: *mut c_void, stream: *mut c_void, flag: u32));

/// Our function for an Ascend symbol name (for the `dlsym` override).
pub fn hook_for_name(name: &[u8]) -> Option<*mut c_void> {
    Some(match name {
        b"rtMalloc" => rtMalloc as *mut c_void,
        b"rtFree" => rtFree as *mut c_void,
        b"rtMemGetInfoEx" => rtMemGetInfoEx as *mut c_void,
        b"rtMallocPhysical" => rtMallocPhysical as *mut c_void,
        b"rtFreePhysical" => rtFreePhysical as *mut c_void,
        b"aclrtMalloc" => aclrtMalloc as *mut c_void,
        b"aclrtMallocAlign32" => aclrtMallocAlign32 as *mut c_void,
        b"aclrtFree" => aclrtFree as *mut c_void,
        b"aclrtGetMemInfo" => aclrtGetMemInfo as *mut c_void,
        b"rtKernelLaunchWithFlagV2" => rtKernelLaunchWithFlagV2 as *mut c_void,
        b"rtKernelLaunchWithHandleV2" => rtKernelLaunchWithHandleV2 as *mut c_void,
        b"rtAicpuKernelLaunchWithFlag" => rtAicpuKernelLaunchWithFlag as *mut c_void,
        b"rtAicpuKernelLaunchExWithArgs" => rtAicpuKernelLaunchExWithArgs as *mut c_void,
        b"rtModelExecute" => rtModelExecute as *mut c_void,
        _ => return None,
    })
}
