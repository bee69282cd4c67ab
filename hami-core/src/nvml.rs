//! NVML front end: memory queries report the container's quota as the total and
//! the container's usage as used, so `nvidia-smi`-style tools inside the
//! container agree with `cuMemGetInfo`.

#![allow(non_snake_case, non_camel_case_types)]
// Each exported function's safety contract is that of the driver function it is named after.
#![allow(clippy::missing_safety_doc)]

use std::ffi::{c_uint, c_void};
use std::sync::OnceLock;

use crate::cuda::dlsym::typed_symbol;
use crate::engine::engine;

type nvmlReturn_t = i32;
pub type nvmlDevice_t = *mut c_void;
pub const NVML_SUCCESS: nvmlReturn_t = 0;
const NVML_ERROR_UNINITIALIZED: nvmlReturn_t = 1;

#[repr(C)]
pub struct nvmlMemory_t {
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

#[repr(C)]
pub struct nvmlMemory_v2_t {
    pub version: c_uint,
    pub total: u64,
    pub reserved: u64,
    pub free: u64,
    pub used: u64,
}

/// `nvmlProcessUtilizationSample_t`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ProcessUtilizationSample {
    pub pid: c_uint,
    pub time_stamp: u64,
    pub sm_util: c_uint,
    pub mem_util: c_uint,
    pub enc_util: c_uint,
    pub dec_util: c_uint,
}

/// `nvmlUtilization_t`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Utilization {
    pub gpu: c_uint,
    pub memory: c_uint,
}

/// `nvmlProcessInfo_t` as `nvmlDeviceGetComputeRunningProcesses_v3` fills it.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ProcessInfo {
    pub pid: c_uint,
    pub used_gpu_memory: u64,
    pub gpu_instance_id: c_uint,
    pub compute_instance_id: c_uint,
    pub used_gpu_cc_protected_memory: u64,
}

type ComputeProcessesFn =
    unsafe extern "C" fn(nvmlDevice_t, *mut c_uint, *mut ProcessInfo) -> nvmlReturn_t;

type ProcessUtilizationFn = unsafe extern "C" fn(
    nvmlDevice_t,
    *mut ProcessUtilizationSample,
    *mut c_uint,
    u64,
) -> nvmlReturn_t;

/// The real NVML entry points hami-core calls.
pub struct RealNvml {
    pub init: Option<unsafe extern "C" fn() -> nvmlReturn_t>,
    pub get_handle_by_index:
        Option<unsafe extern "C" fn(c_uint, *mut nvmlDevice_t) -> nvmlReturn_t>,
    pub get_process_utilization: Option<ProcessUtilizationFn>,
    pub get_utilization_rates:
        Option<unsafe extern "C" fn(nvmlDevice_t, *mut Utilization) -> nvmlReturn_t>,
    get_compute_running_processes: Option<ComputeProcessesFn>,
    get_memory_info: Option<unsafe extern "C" fn(nvmlDevice_t, *mut nvmlMemory_t) -> nvmlReturn_t>,
    get_memory_info_v2:
        Option<unsafe extern "C" fn(nvmlDevice_t, *mut nvmlMemory_v2_t) -> nvmlReturn_t>,
    get_index: Option<unsafe extern "C" fn(nvmlDevice_t, *mut c_uint) -> nvmlReturn_t>,
}

// SAFETY: function pointers only.
unsafe impl Send for RealNvml {}
unsafe impl Sync for RealNvml {}

/// Real NVML, loaded on first use; `None` when libnvidia-ml.so.1 is absent.
pub fn real() -> Option<&'static RealNvml> {
    static REAL: OnceLock<Option<RealNvml>> = OnceLock::new();
    REAL.get_or_init(|| {
        // SAFETY: dlopen with a constant name; the application loaded it already.
        let h = unsafe { libc::dlopen(c"libnvidia-ml.so.1".as_ptr(), libc::RTLD_NOW) };
        if h.is_null() {
            return None;
        }
        // SAFETY: a live handle; each field's type is the symbol's ABI.
        unsafe {
            Some(RealNvml {
                init: typed_symbol(h, c"nvmlInit_v2"),
                get_handle_by_index: typed_symbol(h, c"nvmlDeviceGetHandleByIndex_v2"),
                get_process_utilization: typed_symbol(h, c"nvmlDeviceGetProcessUtilization"),
                get_utilization_rates: typed_symbol(h, c"nvmlDeviceGetUtilizationRates"),
                get_compute_running_processes: typed_symbol(
                    h,
                    c"nvmlDeviceGetComputeRunningProcesses_v3",
                ),
                get_memory_info: typed_symbol(h, c"nvmlDeviceGetMemoryInfo"),
                get_memory_info_v2: typed_symbol(h, c"nvmlDeviceGetMemoryInfo_v2"),
                get_index: typed_symbol(h, c"nvmlDeviceGetIndex"),
            })
        }
    })
    .as_ref()
}

/// NVML, initialised once for hami-core's own queries; `None` if unavailable.
pub fn initialised() -> Option<&'static RealNvml> {
    static READY: OnceLock<bool> = OnceLock::new();
    let r = real()?;
    // SAFETY: NVML's init, reference counted by NVML itself.
    READY
        .get_or_init(|| r.init.is_some_and(|init| unsafe { init() } == NVML_SUCCESS))
        .then_some(r)
}

fn handle(r: &RealNvml, index: usize) -> Option<nvmlDevice_t> {
    let mut h: nvmlDevice_t = std::ptr::null_mut();
    // SAFETY: writes one handle.
    (unsafe { r.get_handle_by_index?(index as c_uint, &mut h) } == NVML_SUCCESS).then_some(h)
}

/// Bytes in use on device `index`, all processes, as the driver sees it.
pub fn device_used(index: usize) -> Option<u64> {
    let r = initialised()?;
    let h = handle(r, index)?;
    let mut m = nvmlMemory_t {
        total: 0,
        free: 0,
        used: 0,
    };
    // SAFETY: writes one struct; the real function, not our hook.
    (unsafe { r.get_memory_info?(h, &mut m) } == NVML_SUCCESS).then_some(m.used)
}

/// Pids (as the driver names them) of the processes with a context on device `index`.
pub fn compute_pids(index: usize) -> Option<Vec<u32>> {
    let r = initialised()?;
    let h = handle(r, index)?;
    let get = r.get_compute_running_processes?;
    let mut infos = vec![ProcessInfo::default(); 256];
    let mut count = infos.len() as c_uint;
    // SAFETY: a buffer of `count` entries.
    if unsafe { get(h, &mut count, infos.as_mut_ptr()) } != NVML_SUCCESS {
        return None;
    }
    infos.truncate(count as usize);
    Some(infos.into_iter().map(|i| i.pid).collect())
}

/// (total, used, free) for the container on `device`, or None without a limit.
fn quota_view(device: nvmlDevice_t, real_free: u64) -> Option<(u64, u64, u64)> {
    let r = real()?;
    let mut index: c_uint = 0;
    // SAFETY: writes one uint.
    if unsafe { r.get_index?(device, &mut index) } != NVML_SUCCESS {
        return None;
    }
    let e = engine();
    let limit = e.memory_limit(index as usize)?;
    let used = e.used(index as usize);
    Some((limit, used, limit.saturating_sub(used).min(real_free)))
}

/// The fields both NVML memory structs share.
trait MemoryFields {
    fn fields(&mut self) -> (&mut u64, &mut u64, &mut u64);
}

impl MemoryFields for nvmlMemory_t {
    fn fields(&mut self) -> (&mut u64, &mut u64, &mut u64) {
        (&mut self.total, &mut self.used, &mut self.free)
    }
}

impl MemoryFields for nvmlMemory_v2_t {
    fn fields(&mut self) -> (&mut u64, &mut u64, &mut u64) {
        (&mut self.total, &mut self.used, &mut self.free)
    }
}

/// Calls the real query, then shows the container's quota in what NVML filled.
fn memory_info<M: MemoryFields>(
    real_fn: Option<unsafe extern "C" fn(nvmlDevice_t, *mut M) -> nvmlReturn_t>,
    device: nvmlDevice_t,
    memory: *mut M,
) -> nvmlReturn_t {
    let Some(f) = real_fn else {
        return NVML_ERROR_UNINITIALIZED;
    };
    // SAFETY: passed through.
    let rc = unsafe { f(device, memory) };
    // SAFETY: on success NVML filled the caller's struct.
    if let (NVML_SUCCESS, Some(m)) = (rc, unsafe { memory.as_mut() }) {
        let (total, used, free) = m.fields();
        if let Some(view) = quota_view(device, *free) {
            (*total, *used, *free) = view;
        }
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_t,
) -> nvmlReturn_t {
    memory_info(real().and_then(|r| r.get_memory_info), device, memory)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    memory_info(real().and_then(|r| r.get_memory_info_v2), device, memory)
}

/// Our function for an NVML symbol name (for the `dlsym` override).
pub fn hook_for_name(name: &[u8]) -> Option<*mut c_void> {
    match name {
        b"nvmlDeviceGetMemoryInfo" => Some(nvmlDeviceGetMemoryInfo as *mut c_void),
        b"nvmlDeviceGetMemoryInfo_v2" => Some(nvmlDeviceGetMemoryInfo_v2 as *mut c_void),
        _ => None,
    }
}
