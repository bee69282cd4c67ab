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

/// `nvmlPciInfo_t` (v3 layout).
#[repr(C)]
struct PciInfo {
    bus_id_legacy: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_sub_system_id: c_uint,
    bus_id: [c_char; 32],
}

impl PciInfo {
    fn zeroed() -> Self {
        Self {
            bus_id_legacy: [0; 16],
            domain: 0,
            bus: 0,
            device: 0,
            pci_device_id: 0,
            pci_sub_system_id: 0,
            bus_id: [0; 32],
        }
    }

    fn bus_id(&self) -> String {
        // SAFETY: NVML NUL-terminates busId within its 32 bytes.
        unsafe { CStr::from_ptr(self.bus_id.as_ptr()) }
            .to_string_lossy()
            .to_ascii_lowercase()
    }
}

/// The calls link scores need; absent from old drivers (and then no scores).
struct Topology {
    common_ancestor: unsafe extern "C" fn(Handle, Handle, *mut i32) -> i32,
    pci_info: unsafe extern "C" fn(Handle, *mut PciInfo) -> i32,
    nvlink_state: unsafe extern "C" fn(Handle, c_uint, *mut i32) -> i32,
    nvlink_remote_pci: unsafe extern "C" fn(Handle, c_uint, *mut PciInfo) -> i32,
}

/// NVLink lanes NVML numbers per GPU (NVML_NVLINK_MAX_LINKS).
const MAX_NVLINKS: c_uint = 18;

/// HAMi's pair score for NVML's common-ancestor level: the closer the
/// common ancestor, the faster the PCIe path (board 60 … across CPUs 10).
pub fn level_score(level: i32) -> u32 {
    match level {
        0 => 60,
        10 => 50,
        20 => 40,
        30 => 30,
        40 => 20,
        _ => 10,
    }
}

/// `nvmlProcessUtilizationSample_t`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct UtilSample {
    pid: c_uint,
    time_stamp: u64,
    sm_util: c_uint,
    mem_util: c_uint,
    enc_util: c_uint,
    dec_util: c_uint,
}

type ProcessUtilization = unsafe extern "C" fn(Handle, *mut UtilSample, *mut c_uint, u64) -> i32;

pub struct Nvml {
    process_utilization: Option<ProcessUtilization>,
    by_index: unsafe extern "C" fn(c_uint, *mut Handle) -> i32,
    uuid: unsafe extern "C" fn(Handle, *mut c_char, c_uint) -> i32,
    name: unsafe extern "C" fn(Handle, *mut c_char, c_uint) -> i32,
    memory: unsafe extern "C" fn(Handle, *mut Memory) -> i32,
    topology: Option<Topology>,
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
                process_utilization: sym(c"nvmlDeviceGetProcessUtilization")
                    .map(|p| std::mem::transmute::<*mut c_void, ProcessUtilization>(p)),
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
                topology: (|| {
                    Some(Topology {
                        common_ancestor: std::mem::transmute::<
                            *mut c_void,
                            unsafe extern "C" fn(Handle, Handle, *mut i32) -> i32,
                        >(sym(
                            c"nvmlDeviceGetTopologyCommonAncestor",
                        )?),
                        pci_info: std::mem::transmute::<
                            *mut c_void,
                            unsafe extern "C" fn(Handle, *mut PciInfo) -> i32,
                        >(sym(c"nvmlDeviceGetPciInfo_v3")?),
                        nvlink_state: std::mem::transmute::<
                            *mut c_void,
                            unsafe extern "C" fn(Handle, c_uint, *mut i32) -> i32,
                        >(sym(c"nvmlDeviceGetNvLinkState")?),
                        nvlink_remote_pci: std::mem::transmute::<
                            *mut c_void,
                            unsafe extern "C" fn(Handle, c_uint, *mut PciInfo) -> i32,
                        >(sym(
                            c"nvmlDeviceGetNvLinkRemotePciInfo_v2",
                        )?),
                    })
                })(),
            })
        }
    }

    fn handle(&self, index: u32) -> Option<Handle> {
        let mut h: Handle = std::ptr::null_mut();
        // SAFETY: an out-pointer to a handle.
        (unsafe { (self.by_index)(index, &mut h) } == 0).then_some(h)
    }

    /// The SM share (percent) each process had of the device since this
    /// process's previous call (NVML samples): `(pid, percent)`.
    pub fn process_utilization(&self, index: u32) -> Option<Vec<(u32, u32)>> {
        let f = self.process_utilization?;
        let h = self.handle(index)?;
        let mut count: c_uint = 0;
        // SAFETY: a null buffer asks for the count (NVML_ERROR_INSUFFICIENT_SIZE
        // or success, both leave `count` set).
        unsafe { f(h, std::ptr::null_mut(), &mut count, 0) };
        let mut samples = vec![UtilSample::default(); count as usize + 8];
        let mut n = samples.len() as c_uint;
        // SAFETY: a buffer of `n` samples of NVML's layout.
        if unsafe { f(h, samples.as_mut_ptr(), &mut n, 0) } != 0 {
            return Some(Vec::new());
        }
        samples.truncate(n as usize);
        Some(
            samples
                .iter()
                .map(|s| (s.pid, s.sm_util.min(100)))
                .collect(),
        )
    }

    /// Bytes in use on the device, as the driver sees it (all processes).
    pub fn memory_used(&self, index: u32) -> Option<u64> {
        let h = self.handle(index)?;
        let mut mem = Memory {
            total: 0,
            free: 0,
            used: 0,
        };
        // SAFETY: a handle NVML returned and an out-struct of NVML's layout.
        (unsafe { (self.memory)(h, &mut mem) } == 0).then_some(mem.used)
    }

    /// Pair scores between devices `0..count`, by index: HAMi's PCIe level
    /// score plus 100 per NVLink lane between the two. `None` when the
    /// driver lacks the topology calls.
    pub fn link_scores(&self, count: u32) -> Option<Vec<Vec<u32>>> {
        let t = self.topology.as_ref()?;
        let handles: Vec<Handle> = (0..count).map(|i| self.handle(i)).collect::<Option<_>>()?;
        let bus: Vec<String> = handles
            .iter()
            .map(|h| {
                let mut pci = PciInfo::zeroed();
                // SAFETY: a handle NVML returned and an out-struct of NVML's layout.
                (unsafe { (t.pci_info)(*h, &mut pci) } == 0).then(|| pci.bus_id())
            })
            .collect::<Option<_>>()?;
        // Lanes from each GPU to each other GPU, by remote bus id.
        let mut lanes = vec![vec![0u32; count as usize]; count as usize];
        for (a, h) in handles.iter().enumerate() {
            for link in 0..MAX_NVLINKS {
                let mut active = 0;
                let mut remote = PciInfo::zeroed();
                // SAFETY: as above; a failing call means no such link.
                let up = unsafe {
                    (t.nvlink_state)(*h, link, &mut active) == 0
                        && active != 0
                        && (t.nvlink_remote_pci)(*h, link, &mut remote) == 0
                };
                if let Some(b) = up
                    .then(|| bus.iter().position(|x| *x == remote.bus_id()))
                    .flatten()
                {
                    lanes[a][b] += 1;
                }
            }
        }
        let mut scores = vec![vec![0u32; count as usize]; count as usize];
        for a in 0..count as usize {
            for b in 0..count as usize {
                if a == b {
                    continue;
                }
                let mut level = 50;
                // SAFETY: two handles NVML returned and an out-int.
                if unsafe { (t.common_ancestor)(handles[a], handles[b], &mut level) } != 0 {
                    level = 50;
                }
                scores[a][b] = level_score(level) + 100 * lanes[a][b].min(lanes[b][a]);
            }
        }
        Some(scores)
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
