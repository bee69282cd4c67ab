//! Weighted time-slicing of an NPU between containers, with no coordinator.
//!
//! Every container sharing the node's NPUs registers in one schedule file
//! (`HAMI_CORE_NPU_SCHEDULE`, on a node-wide mount) with its device, its
//! share and a heartbeat. Each 100 ms period is cut into consecutive
//! windows, one per live container on the device, in key order, sized in
//! proportion to the shares and together filling the period. Every process
//! computes the same windows from the same file, so nobody has to hand them
//! out: a launch proceeds inside its container's window and otherwise sleeps
//! until the window opens.
//!
//! The windows always fill the period because an idle window leaks: the
//! device's queue is empty when the next window opens, so its owner can queue
//! work that runs on into the following window. Shares are therefore weights:
//! 50/30/20 get exactly that, and a departed container's time goes to the
//! others in proportion. A container alone on the NPU runs free, under either
//! policy (holding a lone container below its share would need the device's
//! queue depth, which the runtime does not expose).
//!
//! A container whose processes die (or stop launching) stops beating; after
//! three periods it drops out of everyone's computation, so a dead peer never
//! stalls the others. Without a schedule file there is nothing to slice:
//! launches run unthrottled with a loud warning, or fail under `force`.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::config::CorePolicy;
use crate::engine::engine;
use crate::{hlog, log};

pub const PERIOD_NS: u64 = 100_000_000;
/// A container missing this many periods of heartbeats is gone.
const EXPIRY_NS: u64 = 3 * PERIOD_NS;
const ENTRIES: usize = 64;
const MAGIC: u64 = u64::from_le_bytes(*b"HAMISCH1");

#[repr(C)]
struct Entry {
    /// Identifies the container (its region file); 0 = free.
    key: AtomicU64,
    device: AtomicU32,
    /// Share in percent.
    weight: AtomicU32,
    /// CLOCK_MONOTONIC ns of the last launch attempt; the clock is host-wide.
    heartbeat: AtomicU64,
}

#[repr(C)]
struct ScheduleFile {
    magic: AtomicU64,
    entries: [Entry; ENTRIES],
}

/// What a launch must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Go,
    /// No schedule and `force`: the launch must fail.
    Refuse,
}

pub struct Slicer {
    file: Option<NonNull<ScheduleFile>>,
    key: u64,
    force: bool,
    warned: AtomicBool,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for Slicer {}
unsafe impl Sync for Slicer {}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn map(path: &Path) -> std::io::Result<NonNull<ScheduleFile>> {
    let file = crate::region::open_shared(path)?;
    let size = std::mem::size_of::<ScheduleFile>();
    if file.metadata()?.len() < size as u64 {
        // Zero-filled is a valid empty schedule; set_len never shrinks it here.
        file.set_len(size as u64)?;
    }
    // SAFETY: a shared mapping of the file's first `size` bytes.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let s = NonNull::new(p.cast::<ScheduleFile>()).expect("mmap returned null");
    // SAFETY: the mapping is live and large enough.
    let magic = unsafe { &s.as_ref().magic };
    let _ = magic.compare_exchange(0, MAGIC, Ordering::AcqRel, Ordering::Acquire);
    if magic.load(Ordering::Acquire) != MAGIC {
        return Err(std::io::Error::other("not a hami-rs NPU schedule file"));
    }
    Ok(s)
}

/// This container's key: the region file's identity, so all its processes agree.
fn container_key() -> u64 {
    use std::os::unix::fs::MetadataExt;
    let region = engine().region().map(|r| r.path().to_path_buf());
    let key = region
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| key_of(m.dev(), m.ino()))
        .unwrap_or_else(|| u64::from(std::process::id()) << 20);
    key.max(1)
}

/// A file's identity as a key. 0 marks a free entry; the caller maps it to 1.
/// (Or-ing in a 1 instead merged the keys of files with consecutive inodes,
/// and two containers then shared one window.)
fn key_of(dev: u64, ino: u64) -> u64 {
    dev.rotate_left(32) ^ ino
}

pub fn slicer() -> &'static Slicer {
    static SLICER: OnceLock<Slicer> = OnceLock::new();
    SLICER.get_or_init(|| {
        let e = engine();
        let force = e.core_policy == CorePolicy::Force;
        let file = match &e.schedule {
            None => None,
            Some(path) => match map(path) {
                Ok(f) => Some(f),
                Err(err) => {
                    hlog!(log::ERROR, "NPU schedule {}: {err}", path.display());
                    None
                }
            },
        };
        Slicer {
            file,
            key: container_key(),
            force,
            warned: AtomicBool::new(false),
        }
    })
}

impl Slicer {
    fn entries(&self) -> Option<&[Entry; ENTRIES]> {
        // SAFETY: the mapping lives as long as the process.
        self.file.map(|f| unsafe { &f.as_ref().entries })
    }

    /// Waits for this container's window on `device` with `share` percent.
    pub fn admit(&self, device: u32, share: u32) -> Decision {
        let Some(entries) = self.entries() else {
            if !self.warned.swap(true, Ordering::Relaxed) {
                if self.force {
                    hlog!(log::ERROR, "no NPU schedule (HAMI_CORE_NPU_SCHEDULE) and policy force: refusing launches");
                } else {
                    hlog!(
                        log::WARN,
                        "no NPU schedule (HAMI_CORE_NPU_SCHEDULE): the {share}% compute share is NOT enforced"
                    );
                }
            }
            return if self.force {
                Decision::Refuse
            } else {
                Decision::Go
            };
        };
        loop {
            let now = now_ns();
            self.beat(entries, device, share, now);
            let computed = window(entries, self.key, device, now);
            if log::enabled(log::DEBUG) {
                thread_local!(static LAST: std::cell::Cell<Option<(u64, u64)>> = const { std::cell::Cell::new(None) });
                if LAST.with(|l| l.replace(computed)) != computed {
                    hlog!(
                        log::DEBUG,
                        "NPU {device}: window {computed:?} of {PERIOD_NS} ns (key {:#x})",
                        self.key
                    );
                }
            }
            let Some((start, len)) = computed else {
                return Decision::Go;
            };
            let phase = now % PERIOD_NS;
            if phase >= start && phase < start + len {
                return Decision::Go;
            }
            let wait = if phase < start {
                start - phase
            } else {
                PERIOD_NS - phase + start
            };
            std::thread::sleep(Duration::from_nanos(wait));
        }
    }

    fn beat(&self, entries: &[Entry; ENTRIES], device: u32, share: u32, now: u64) {
        let mine = entries.iter().find(|e| {
            e.key.load(Ordering::Acquire) == self.key && e.device.load(Ordering::Relaxed) == device
        });
        let entry = match mine {
            Some(e) => e,
            None => {
                // Claim a free slot, or one whose owner stopped beating long ago.
                let Some(e) = entries.iter().find(|e| {
                    let k = e.key.load(Ordering::Acquire);
                    let stale =
                        now.saturating_sub(e.heartbeat.load(Ordering::Acquire)) > 10 * EXPIRY_NS;
                    (k == 0 || stale)
                        && e.key
                            .compare_exchange(k, self.key, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                }) else {
                    return;
                };
                e.device.store(device, Ordering::Relaxed);
                e
            }
        };
        entry.weight.store(share, Ordering::Relaxed);
        entry.heartbeat.store(now, Ordering::Release);
    }
}

/// This container's window (offset into the period, length), or None when it
/// is alone on the device (or unregistered): nothing to share.
fn window(entries: &[Entry; ENTRIES], key: u64, device: u32, now: u64) -> Option<(u64, u64)> {
    let mut live: Vec<(u64, u64)> = entries
        .iter()
        .filter(|e| e.device.load(Ordering::Relaxed) == device)
        .filter(|e| now.saturating_sub(e.heartbeat.load(Ordering::Acquire)) <= EXPIRY_NS)
        .filter_map(|e| {
            let k = e.key.load(Ordering::Acquire);
            (k != 0).then(|| (k, u64::from(e.weight.load(Ordering::Relaxed)).clamp(1, 100)))
        })
        .collect();
    if live.len() < 2 || !live.iter().any(|(k, _)| *k == key) {
        return None;
    }
    live.sort_unstable();
    live.dedup_by_key(|(k, _)| *k);
    let total: u64 = live.iter().map(|(_, w)| w).sum();
    let mut start = 0;
    for (k, w) in live {
        let len = PERIOD_NS * w / total;
        if k == key {
            return Some((start, len));
        }
        start += len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: &[(u64, u32, u32, u64)]) -> Box<[Entry; ENTRIES]> {
        let entries: Box<[Entry; ENTRIES]> = Box::new(std::array::from_fn(|_| Entry {
            key: AtomicU64::new(0),
            device: AtomicU32::new(0),
            weight: AtomicU32::new(0),
            heartbeat: AtomicU64::new(0),
        }));
        for (i, (key, device, weight, beat)) in rows.iter().enumerate() {
            entries[i].key.store(*key, Ordering::Relaxed);
            entries[i].device.store(*device, Ordering::Relaxed);
            entries[i].weight.store(*weight, Ordering::Relaxed);
            entries[i].heartbeat.store(*beat, Ordering::Relaxed);
        }
        entries
    }

    const NOW: u64 = 10 * PERIOD_NS;

    #[test]
    fn windows_follow_shares_in_key_order() {
        let t = table(&[
            (3, 0, 20, NOW),
            (1, 0, 50, NOW),
            (2, 0, 30, NOW),
            (9, 1, 90, NOW),
        ]);
        assert_eq!(window(&t, 1, 0, NOW), Some((0, 50_000_000)));
        assert_eq!(window(&t, 2, 0, NOW), Some((50_000_000, 30_000_000)));
        assert_eq!(window(&t, 3, 0, NOW), Some((80_000_000, 20_000_000)));
        // Alone on device 1: nothing to share.
        assert_eq!(window(&t, 9, 1, NOW), None);
    }

    #[test]
    fn consecutive_inodes_get_distinct_keys() {
        assert_ne!(key_of(0xfe, 0x99_404e), key_of(0xfe, 0x99_404f));
        assert_ne!(key_of(1, 7), key_of(2, 7));
    }

    #[test]
    fn windows_fill_the_period_and_dead_peers_drop_out() {
        let t = table(&[(1, 0, 100, NOW), (2, 0, 100, NOW)]);
        assert_eq!(window(&t, 2, 0, NOW), Some((50_000_000, 50_000_000)));
        let t = table(&[(1, 0, 50, NOW), (2, 0, 30, NOW)]);
        assert_eq!(window(&t, 1, 0, NOW), Some((0, 62_500_000)));
        assert_eq!(window(&t, 2, 0, NOW), Some((62_500_000, 37_500_000)));
        let t = table(&[(1, 0, 50, NOW), (2, 0, 30, NOW - EXPIRY_NS - 1)]);
        assert_eq!(
            window(&t, 1, 0, NOW),
            None,
            "the only live container runs free"
        );
    }
}
