//! Optional NVML lookups for NVIDIA discovery: UUID, name and memory of a
//! device, through `dlopen` so hami-cdi runs on nodes without the driver.

use std::ffi::{c_char, c_uint, c_void, CStr};

type Handle = *mut c_void;

#[repr(C)]
struct Memory {
    total: u64,
    free: u64,
    used: u64,
}

pub struct DeviceInfo {
    pub uuid: String,
    pub name: String,
    pub memory_bytes: u64,
}

pub struct Nvml {
    by_index: unsafe extern "C" fn(c_uint, *mut Handle) -> i32,
    uuid: unsafe extern "C" fn(Handle, *mut c_char, c_uint) -> i32,
    name: unsafe extern "C" fn(Handle, *mut c_char, c_uint) -> i32,
    memory: unsafe extern "C" fn(Handle, *mut Memory) -> i32,
}

impl Nvml {
    /// `None` when libnvidia-ml.so.1 is absent or does not initialise.
    pub fn open() -> Option<Self> {
        // SAFETY: dlopen/dlsym with constant names; each symbol has the ABI of
        // the field it is stored in (NVML's documented signatures).
        unsafe {
            let h = libc::dlopen(
                c"libnvidia-ml.so.1".as_ptr(),
                libc::RTLD_NOW | libc::RTLD_LOCAL,
            );
            if h.is_null() {
                return None;
            }
            let sym = |name: &CStr| {
                let p = libc::dlsym(h, name.as_ptr());
                (!p.is_null()).then_some(p)
            };
            let init: unsafe extern "C" fn() -> i32 = std::mem::transmute(sym(c"nvmlInit_v2")?);
            if init() != 0 {
                return None;
            }
            Some(Self {
                by_index: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(c_uint, *mut Handle) -> i32,
                >(sym(c"nvmlDeviceGetHandleByIndex_v2")?),
                uuid: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(Handle, *mut c_char, c_uint) -> i32,
                >(sym(c"nvmlDeviceGetUUID")?),
                name: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(Handle, *mut c_char, c_uint) -> i32,
                >(sym(c"nvmlDeviceGetName")?),
                memory: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(Handle, *mut Memory) -> i32,
                >(sym(c"nvmlDeviceGetMemoryInfo")?),
            })
        }
    }

    pub fn device(&self, index: u32) -> Option<DeviceInfo> {
        let mut h: Handle = std::ptr::null_mut();
        let mut uuid = [0 as c_char; 96];
        let mut name = [0 as c_char; 96];
        let mut mem = Memory {
            total: 0,
            free: 0,
            used: 0,
        };
        // SAFETY: buffers of the stated lengths and a handle NVML returned.
        unsafe {
            if (self.by_index)(index, &mut h) != 0
                || (self.uuid)(h, uuid.as_mut_ptr(), uuid.len() as c_uint) != 0
                || (self.name)(h, name.as_mut_ptr(), name.len() as c_uint) != 0
                || (self.memory)(h, &mut mem) != 0
            {
                return None;
            }
            Some(DeviceInfo {
                uuid: CStr::from_ptr(uuid.as_ptr()).to_string_lossy().into_owned(),
                name: CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
                memory_bytes: mem.total,
            })
        }
    }
}
