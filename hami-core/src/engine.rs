//! The per-process quota engine behind every front end: reserve before the
//! driver allocates, release when it frees, and remember what each pointer or
//! handle was charged.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

use crate::config::{Config, CorePolicy, MAX_DEVICES};
use crate::region::layout::Limits;
use crate::region::{process_start_time, Region};
use crate::{hlog, log};

/// What kind of object a tracked key names; pointers and VMM handles can collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `cuMemAlloc*`, `cuMemAllocManaged`, stream-ordered allocations.
    Memory,
    /// `cuMemCreate` physical handles.
    Physical,
    /// `cuArrayCreate`, `cuArray3DCreate`, mipmapped arrays.
    Array,
    /// `cuIpcOpenMemHandle` imports.
    IpcImport,
    /// The device memory a context takes.
    Context,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub device: usize,
    pub bytes: u64,
}

/// Why an allocation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    OverLimit,
    /// The configuration or region is unusable: everything is refused.
    FailClosed,
}

pub enum Mode {
    Enforcing,
    /// `CUDA_DISABLE_CONTROL=true`: no accounting at all.
    Disabled,
    FailClosed(String),
}

pub struct Engine {
    pub mode: Mode,
    region: Option<Region>,
    limits: [Option<u64>; MAX_DEVICES],
    sm_limits: [Option<u8>; MAX_DEVICES],
    pub core_policy: CorePolicy,
    tracker: SpinLock<HashMap<(Kind, u64), Charge, BuildHasherDefault<KeyHasher>>>,
    /// This process's slot in the region; a forked child starts without one.
    slot: AtomicUsize,
    /// The pid the driver reports for this process (0 = not learned yet).
    host_pid: AtomicU32,
    /// Node-wide lock file held around context creation.
    pub context_lock: Option<std::path::PathBuf>,
    /// The node agent's NPU arbiter socket.
    pub schedule: Option<std::path::PathBuf>,
}

/// This process's pid, cached (HAMi spent most of an allocation in getpid) and
/// refreshed in a forked child.
static PID: AtomicU32 = AtomicU32::new(0);
const NO_SLOT: usize = usize::MAX;

static ENGINE: OnceLock<Engine> = OnceLock::new();
static ATFORK: Once = Once::new();

/// The process-wide engine, built from the environment on first use.
pub fn engine() -> &'static Engine {
    ENGINE.get_or_init(|| {
        let engine = match Config::from_env() {
            Ok(config) => Engine::new(&config),
            Err(e) => {
                hlog!(
                    log::ERROR,
                    "invalid configuration, refusing all device allocations: {e}"
                );
                Engine::fail_closed(format!("invalid configuration: {e}"))
            }
        };
        ATFORK.call_once(|| {
            // SAFETY: registering a plain extern "C" handler.
            unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        });
        engine
    })
}

extern "C" fn after_fork_in_child() {
    PID.store(std::process::id(), Ordering::Relaxed);
    if let Some(e) = ENGINE.get() {
        e.slot.store(NO_SLOT, Ordering::Relaxed);
        e.host_pid.store(0, Ordering::Relaxed);
        // Another thread may have held the tracker at fork time; the child has
        // no allocations of its own yet, so start from an empty, unlocked map.
        e.tracker.force_unlock();
        e.tracker.lock().clear();
    }
}

/// Where the region disagrees with the node's limits file, if anywhere.
fn differs_from_pinned(limits: &Limits, pinned: &crate::config::PinnedLimits) -> Option<String> {
    for d in 0..MAX_DEVICES {
        if let Some(m) = pinned.memory_bytes[d] {
            if limits.memory_bytes[d] != m {
                return Some(format!(
                    "device {d}: memory limit {} bytes in the region, {m} in the limits file",
                    limits.memory_bytes[d]
                ));
            }
        }
        if let Some(p) = pinned.sm_percent[d] {
            if limits.sm_percent[d] != p {
                return Some(format!(
                    "device {d}: compute limit {}% in the region, {p}% in the limits file",
                    limits.sm_percent[d]
                ));
            }
        }
    }
    None
}

impl Engine {
    pub fn new(config: &Config) -> Self {
        crate::log::set_level(config.log_level);
        PID.store(std::process::id(), Ordering::Relaxed);
        if config.disabled {
            hlog!(
                log::WARN,
                "CUDA_DISABLE_CONTROL is set: no limits are enforced"
            );
            return Self::with_mode(Mode::Disabled, None);
        }
        let mut wanted = Limits::unlimited();
        for d in 0..MAX_DEVICES {
            wanted.memory_bytes[d] = config.memory_limit[d].unwrap_or(0);
            wanted.sm_percent[d] = config.sm_limit[d].map_or(0, u32::from);
        }
        wanted.core_policy = match config.core_policy {
            CorePolicy::Default => 0,
            CorePolicy::Force => 1,
            CorePolicy::Disable => 2,
        };
        let region = match &config.shared_cache {
            Some(path) => Region::open_or_create(path, &wanted),
            None => Region::anonymous(&wanted),
        };
        let region = match region {
            Ok(r) => r,
            Err(e) => {
                hlog!(log::ERROR, "{e}; refusing all device allocations");
                return Self::fail_closed(e.to_string());
            }
        };
        let limits = *region.limits();
        if let Some(pinned) = &config.pinned {
            if let Some(why) = differs_from_pinned(&limits, pinned) {
                let reason = format!(
                    "{}: {why}; the region's limits were changed after the node wrote them (the limits file is the node's): refusing all device allocations",
                    region.path().display()
                );
                hlog!(log::ERROR, "{reason}");
                return Self::fail_closed(reason);
            }
        }
        if limits != wanted && config.has_memory_limit() {
            hlog!(
                log::WARN,
                "{} was created with other limits than this process's environment; the region's apply",
                region.path().display()
            );
        }
        let mut engine = Self::with_mode(Mode::Enforcing, Some(region));
        engine.context_lock = config.context_lock.clone();
        engine.schedule = config.npu_schedule.clone();
        for d in 0..MAX_DEVICES {
            engine.limits[d] = (limits.memory_bytes[d] != 0).then_some(limits.memory_bytes[d]);
            engine.sm_limits[d] = u8::try_from(limits.sm_percent[d]).ok().filter(|p| *p != 0);
        }
        engine.core_policy = match limits.core_policy {
            1 => CorePolicy::Force,
            2 => CorePolicy::Disable,
            _ => CorePolicy::Default,
        };
        hlog!(log::INFO, "enforcing memory limits {:?}", engine.limits);
        engine
    }

    pub fn fail_closed(reason: String) -> Self {
        Self::with_mode(Mode::FailClosed(reason), None)
    }

    fn with_mode(mode: Mode, region: Option<Region>) -> Self {
        Self {
            mode,
            region,
            limits: [None; MAX_DEVICES],
            sm_limits: [None; MAX_DEVICES],
            core_policy: CorePolicy::Default,
            tracker: SpinLock::new(HashMap::default()),
            slot: AtomicUsize::new(NO_SLOT),
            host_pid: AtomicU32::new(0),
            context_lock: None,
            schedule: None,
        }
    }

    pub fn memory_limit(&self, device: usize) -> Option<u64> {
        self.limits.get(device).copied().flatten()
    }

    pub fn sm_limit(&self, device: usize) -> Option<u8> {
        self.sm_limits.get(device).copied().flatten()
    }

    /// Bytes the whole container uses on `device`.
    pub fn used(&self, device: usize) -> u64 {
        match &self.region {
            Some(r) if device < MAX_DEVICES => r.device_used(device),
            _ => 0,
        }
    }

    pub fn is_enforcing(&self) -> bool {
        matches!(self.mode, Mode::Enforcing)
    }

    pub fn region(&self) -> Option<&Region> {
        self.region.as_ref()
    }

    /// Charges `bytes` on `device` to this process, or refuses.
    pub fn reserve(&self, device: usize, bytes: u64) -> Result<(), Refusal> {
        let region = match (&self.mode, &self.region) {
            (Mode::Enforcing, Some(r)) => r,
            (Mode::Disabled, _) => return Ok(()),
            _ => {
                hlog!(
                    log::ERROR,
                    "refusing a {bytes}-byte allocation: hami-core failed closed"
                );
                return Err(Refusal::FailClosed);
            }
        };
        if device >= MAX_DEVICES {
            return Err(Refusal::OverLimit);
        }
        let guard = region.lock();
        report_recovery(&guard);
        let slot = self.slot_locked(&guard).ok_or(Refusal::OverLimit)?;
        guard
            .reserve(slot, device, bytes, self.limits[device])
            .map_err(|over| {
                hlog!(
                    log::WARN,
                    "device {device}: {bytes} bytes would exceed the limit ({} of {} used)",
                    over.used,
                    over.limit
                );
                Refusal::OverLimit
            })
    }

    /// This process's slot, claimed on first use. Lock held.
    fn slot_locked(&self, guard: &crate::region::RegionGuard<'_>) -> Option<usize> {
        match self.slot.load(Ordering::Relaxed) {
            NO_SLOT => {
                let pid = PID.load(Ordering::Relaxed);
                let start = process_start_time(pid).unwrap_or(0);
                match guard.claim_slot(pid, start) {
                    Ok(s) => {
                        self.slot.store(s, Ordering::Relaxed);
                        Some(s)
                    }
                    Err(e) => {
                        hlog!(log::ERROR, "{e}");
                        None
                    }
                }
            }
            s => Some(s),
        }
    }

    /// Makes this process visible in the region before it allocates anything:
    /// the compute limiter counts the container's processes by their slots.
    pub fn register(&self) {
        if let (Mode::Enforcing, Some(region)) = (&self.mode, &self.region) {
            let guard = region.lock();
            self.slot_locked(&guard);
        }
    }

    /// Records the pid the driver reports for this process, here and in its slot.
    pub fn set_host_pid(&self, pid: u32) {
        self.host_pid.store(pid, Ordering::Relaxed);
        if let (Mode::Enforcing, Some(region)) = (&self.mode, &self.region) {
            let guard = region.lock();
            if let Some(slot) = self.slot_locked(&guard) {
                region.slots()[slot].host_pid.store(pid, Ordering::Release);
            }
        }
        hlog!(log::INFO, "the driver knows this process as pid {pid}");
    }

    /// The pid the driver reports for this process, if learned.
    pub fn host_pid(&self) -> Option<u32> {
        Some(self.host_pid.load(Ordering::Relaxed)).filter(|p| *p != 0)
    }

    pub fn release(&self, device: usize, bytes: u64) {
        if let (Mode::Enforcing, Some(region), slot) =
            (&self.mode, &self.region, self.slot.load(Ordering::Relaxed))
        {
            if slot != NO_SLOT && device < MAX_DEVICES {
                region.lock().release(slot, device, bytes);
            }
        }
    }

    pub fn track(&self, kind: Kind, key: u64, charge: Charge) {
        self.tracker.lock().insert((kind, key), charge);
    }

    pub fn untrack(&self, kind: Kind, key: u64) -> Option<Charge> {
        self.tracker.lock().remove(&(kind, key))
    }

    /// Puts back a charge taken by [`Engine::untrack`] when the driver refused the free.
    pub fn retrack(&self, kind: Kind, key: u64, charge: Charge) {
        self.track(kind, key, charge);
    }
}

fn report_recovery(guard: &crate::region::RegionGuard<'_>) {
    if guard.recovered() {
        hlog!(
            log::WARN,
            "a process died holding the region lock; the region was repaired"
        );
    }
}

/// Reserve `bytes`, run the driver call, then track its result under the key
/// it returns, or give the bytes back if it failed. Drivers' success code is 0;
/// `oom` is what a refused reservation returns (each API has its own).
pub fn charged(
    kind: Kind,
    device: usize,
    bytes: u64,
    oom: i32,
    call: impl FnOnce() -> (i32, u64),
) -> i32 {
    let e = engine();
    if e.reserve(device, bytes).is_err() {
        return oom;
    }
    let (rc, key) = call();
    if rc == 0 {
        e.track(kind, key, Charge { device, bytes });
    } else {
        e.release(device, bytes);
    }
    rc
}

/// Run a driver free and give back what `key` was charged, if the driver agreed.
pub fn uncharged(kind: Kind, key: u64, call: impl FnOnce() -> i32) -> i32 {
    let e = engine();
    let charge = e.untrack(kind, key);
    let rc = call();
    match charge {
        Some(c) if rc == 0 => e.release(c.device, c.bytes),
        Some(c) => e.retrack(kind, key, c),
        None => {}
    }
    rc
}

/// Free and total memory as the container should see them on `device`.
pub fn quota_view(device: usize, real_free: u64, real_total: u64) -> (u64, u64) {
    let e = engine();
    match e.memory_limit(device) {
        Some(limit) => (limit.saturating_sub(e.used(device)).min(real_free), limit),
        None => (real_free, real_total),
    }
}

/// Pointers and handles are already well-mixed integers; a multiplicative hash
/// is enough and far cheaper than SipHash on the allocation path.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn write_isize(&mut self, v: isize) {
        self.write_u64(v as u64);
    }
}

/// A spin lock the fork handler can reset: a std `Mutex` held by another
/// thread at `fork` would stay locked forever in the child.
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: std::cell::UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `locked`.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: std::cell::UnsafeCell::new(value),
        }
    }

    pub fn lock(&self) -> SpinGuard<'_, T> {
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        SpinGuard { lock: self }
    }

    fn force_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> std::ops::Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: we hold the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> std::ops::DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: we hold the lock.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(mib: u64) -> Engine {
        let mut c = Config::default();
        c.memory_limit[0] = Some(mib << 20);
        Engine::new(&c)
    }

    #[test]
    fn reserve_track_untrack_release() {
        let e = limited(1000);
        for i in 0..10u64 {
            e.reserve(0, 100 << 20).unwrap();
            e.track(
                Kind::Memory,
                0x1000 + i,
                Charge {
                    device: 0,
                    bytes: 100 << 20,
                },
            );
        }
        assert_eq!(e.reserve(0, 100 << 20), Err(Refusal::OverLimit));
        let c = e.untrack(Kind::Memory, 0x1000).unwrap();
        e.release(c.device, c.bytes);
        assert_eq!(e.used(0), 900 << 20);
        assert!(e.untrack(Kind::Memory, 0x1000).is_none());
        assert!(
            e.untrack(Kind::Physical, 0x1001).is_none(),
            "kinds do not collide"
        );
    }

    #[test]
    fn unlimited_devices_still_account() {
        let e = limited(1);
        e.reserve(3, 5 << 30).unwrap();
        assert_eq!(e.used(3), 5 << 30);
        assert_eq!(e.memory_limit(3), None);
    }

    #[test]
    fn fail_closed_refuses_everything() {
        let e = Engine::fail_closed("test".into());
        assert_eq!(e.reserve(0, 1), Err(Refusal::FailClosed));
    }

    /// A container rewrites its region's header (it is 0666; the checksum is
    /// unkeyed) to lift its own limit: the node's limits file says otherwise.
    #[test]
    fn a_region_whose_limits_differ_from_the_limits_file_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vgpu.cache");
        let mut lifted = Limits::unlimited();
        lifted.memory_bytes[0] = 8 << 30;
        drop(Region::open_or_create(&path, &lifted).unwrap());
        let mut pinned = crate::config::PinnedLimits::default();
        pinned.memory_bytes[0] = Some(1000 << 20);
        let config = |pinned| Config {
            memory_limit: {
                let mut m = [None; MAX_DEVICES];
                m[0] = Some(1000 << 20);
                m
            },
            shared_cache: Some(path.clone()),
            pinned,
            ..Config::default()
        };
        let e = Engine::new(&config(Some(pinned)));
        assert_eq!(e.reserve(0, 1), Err(Refusal::FailClosed));
        // Without a limits file (a bare LD_PRELOAD) the region's limits apply.
        let e = Engine::new(&config(None));
        assert_eq!(e.memory_limit(0), Some(8 << 30));
        // The node's own region agrees with its file.
        let fresh = dir.path().join("fresh.cache");
        let mut node = Limits::unlimited();
        node.memory_bytes[0] = 1000 << 20;
        drop(Region::open_or_create(&fresh, &node).unwrap());
        let e = Engine::new(&Config {
            shared_cache: Some(fresh),
            ..config(Some(pinned))
        });
        assert_eq!(e.memory_limit(0), Some(1000 << 20));
        e.reserve(0, 1).unwrap();
    }

    #[test]
    fn disabled_accounts_nothing_and_refuses_nothing() {
        let e = Engine::new(&Config {
            disabled: true,
            ..Config::default()
        });
        e.reserve(0, u64::MAX).unwrap();
        assert_eq!(e.used(0), 0);
    }
}
