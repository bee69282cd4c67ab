//! The on-disk layout of the shared region, `#[repr(C)]` and versioned.
//! `hami-core/REGION.md` documents it for readers outside this crate.

use std::cell::UnsafeCell;
use std::mem::size_of;
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::MAX_DEVICES;

pub const MAGIC: [u8; 8] = *b"HAMIRGN1";
pub const VERSION: u32 = 1;
pub const PAGE: usize = 4096;
pub const MAX_SLOTS: usize = 1024;

/// Page 0. Written once by whoever creates the region (the node side, or the
/// first process), then mapped read-only; guarded by `checksum`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    /// Bytes from the start of the file to the shared section (= `PAGE`).
    pub header_size: u32,
    pub file_size: u64,
    pub device_count: u32,
    pub slot_count: u32,
    /// FNV-1a 64 of this struct with `checksum` zeroed.
    pub checksum: u64,
    pub limits: Limits,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes per device; 0 = unlimited.
    pub memory_bytes: [u64; MAX_DEVICES],
    /// Percent per device; 0 = unlimited.
    pub sm_percent: [u32; MAX_DEVICES],
    /// 0 default, 1 force, 2 disable (`GPU_CORE_UTILIZATION_POLICY`).
    pub core_policy: u32,
    pub reserved: u32,
}

/// Page 1: the lock and the per-device totals.
#[repr(C, align(64))]
pub struct Shared {
    /// Process-shared robust mutex: a holder's death hands the next locker
    /// `EOWNERDEAD` instead of a deadlock.
    pub lock: UnsafeCell<libc::pthread_mutex_t>,
    /// Bytes in use per device: always the sum of the live slots' `used`,
    /// changed only under `lock`, read lock-free.
    pub device_used: [AtomicU64; MAX_DEVICES],
    /// Times a dead lock owner was recovered from (for monitoring and tests).
    pub recoveries: AtomicU64,
    /// Slots reclaimed from dead processes.
    pub reclaimed: AtomicU64,
    pub reserved: [u64; 6],
}

/// One process. Slot indexes are stable for a process's lifetime; `generation`
/// changes whenever a slot is given to a new process.
#[repr(C, align(64))]
pub struct Slot {
    /// 0 = free. The pid as seen in the container's pid namespace.
    pub pid: AtomicU32,
    pub generation: AtomicU32,
    /// Field 22 of `/proc/<pid>/stat`: tells a live owner from a reused pid.
    pub start_time: AtomicU64,
    pub used: [AtomicU64; MAX_DEVICES],
    /// Kernel launches, for monitoring.
    pub launches: AtomicU64,
    /// The pid the GPU driver (NVML) reports for this process, which differs
    /// from `pid` inside a pid namespace; 0 until learned.
    pub host_pid: AtomicU32,
    pub reserved32: u32,
    pub reserved: [u64; 4],
}

pub const SHARED_OFFSET: usize = PAGE;
pub const SLOTS_OFFSET: usize = 2 * PAGE;
pub const FILE_SIZE: usize = SLOTS_OFFSET + MAX_SLOTS * size_of::<Slot>();

const _: () = assert!(size_of::<Header>() <= PAGE);
const _: () = assert!(size_of::<Shared>() <= PAGE);
const _: () = assert!(size_of::<Slot>() == 192);
const _: () = assert!(MAX_DEVICES == 16);

impl Header {
    pub fn new(limits: Limits) -> Self {
        let mut h = Header {
            magic: MAGIC,
            version: VERSION,
            header_size: PAGE as u32,
            file_size: FILE_SIZE as u64,
            device_count: MAX_DEVICES as u32,
            slot_count: MAX_SLOTS as u32,
            checksum: 0,
            limits,
        };
        h.checksum = h.compute_checksum();
        h
    }

    pub fn compute_checksum(&self) -> u64 {
        let mut copy = *self;
        copy.checksum = 0;
        // SAFETY: Header is plain old data without padding-sensitive invariants;
        // we hash its bytes as laid out in the file.
        let bytes = unsafe {
            std::slice::from_raw_parts((&copy as *const Header).cast::<u8>(), size_of::<Header>())
        };
        fnv1a64(bytes)
    }
}

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Limits {
    pub fn unlimited() -> Self {
        Limits {
            memory_bytes: [0; MAX_DEVICES],
            sm_percent: [0; MAX_DEVICES],
            core_policy: 0,
            reserved: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    /// REGION.md documents these offsets for readers in other languages.
    #[test]
    fn offsets_match_region_md() {
        assert_eq!(size_of::<Header>(), 240);
        assert_eq!(offset_of!(Header, version), 8);
        assert_eq!(offset_of!(Header, header_size), 12);
        assert_eq!(offset_of!(Header, file_size), 16);
        assert_eq!(offset_of!(Header, device_count), 24);
        assert_eq!(offset_of!(Header, slot_count), 28);
        assert_eq!(offset_of!(Header, checksum), 32);
        assert_eq!(offset_of!(Header, limits), 40);
        assert_eq!(
            offset_of!(Header, limits) + offset_of!(Limits, sm_percent),
            168
        );
        assert_eq!(
            offset_of!(Header, limits) + offset_of!(Limits, core_policy),
            232
        );
        assert_eq!(size_of::<libc::pthread_mutex_t>(), 40);
        assert_eq!(offset_of!(Shared, device_used), 40);
        assert_eq!(offset_of!(Shared, recoveries), 168);
        assert_eq!(offset_of!(Shared, reclaimed), 176);
        assert_eq!(offset_of!(Slot, generation), 4);
        assert_eq!(offset_of!(Slot, start_time), 8);
        assert_eq!(offset_of!(Slot, used), 16);
        assert_eq!(offset_of!(Slot, launches), 144);
        assert_eq!(offset_of!(Slot, host_pid), 152);
        assert_eq!(FILE_SIZE, 204_800);
    }

    #[test]
    fn checksum_covers_the_limits() {
        let a = Header::new(Limits::unlimited());
        let mut l = Limits::unlimited();
        l.memory_bytes[3] = 1;
        assert_ne!(a.checksum, Header::new(l).checksum);
        assert_eq!(a.checksum, a.compute_checksum());
    }
}
