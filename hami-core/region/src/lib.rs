//! `hami-region`: the shared region of hami-core, one file per container that every process of the
//! container maps, plus the node agent (read-only).
//!
//! Accounting changes happen under a process-shared *robust* mutex. A process
//! SIGKILLed while holding it does not block the others: the next locker gets
//! `EOWNERDEAD`, drops the dead processes' slots and recomputes every device
//! total from the live slots, which is exact because only a lock holder ever
//! changes them. (A bare compare-and-swap on a shared total cannot be repaired
//! exactly after a kill between the total and the per-process record; see
//! REGION.md.) The reservation is still atomic with respect to every other
//! process, and happens before the driver is called.

pub mod layout;
pub mod npu_wire;
pub mod safe_read;
pub mod snapshot;

/// Devices one container can be limited on; every per-device array has this many entries.
pub const MAX_DEVICES: usize = 16;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use thiserror::Error;

use layout::{
    Header, Limits, Shared, Slot, FILE_SIZE, MAGIC, MAX_SLOTS, PAGE, SHARED_OFFSET, SLOTS_OFFSET,
    VERSION,
};

#[derive(Debug, Error)]
pub enum RegionError {
    #[error("shared region {path}: {context}: {source}")]
    Io {
        path: PathBuf,
        context: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("shared region {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("shared region {path}: every one of the {MAX_SLOTS} process slots is held by a live process")]
    Full { path: PathBuf },
}

/// A device's accounting would exceed its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit {
    pub used: u64,
    pub limit: u64,
}

/// A mapped region. The header page is read-only once validated.
pub struct Region {
    base: NonNull<u8>,
    path: PathBuf,
    _file: Option<File>,
}

// SAFETY: all shared state is atomics or guarded by the process-shared mutex.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// Opens `path`, creating and initialising it with `limits` if it is new.
    /// An existing region keeps the limits it was created with.
    pub fn open_or_create(path: &Path, limits: &Limits) -> Result<Self, RegionError> {
        let file = open_shared(path).map_err(|source| RegionError::Io {
            path: path.to_path_buf(),
            context: "open",
            source,
        })?;
        Self::from_file(path, file, limits)
    }

    /// Creates a new region at `path` with `limits`: the node side's call.
    /// The name must not exist (a symlink or file planted there by the
    /// container whose directory this is fails with `AlreadyExists`), so
    /// root never writes through a name someone else chose.
    pub fn create_new(path: &Path, limits: &Limits) -> Result<Self, RegionError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o666)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(|source| RegionError::Io {
                path: path.to_path_buf(),
                context: "create",
                source,
            })?;
        Self::from_file(path, file, limits)
    }

    fn from_file(path: &Path, file: File, limits: &Limits) -> Result<Self, RegionError> {
        let io_err = |context| {
            let path = path.to_path_buf();
            move |source| RegionError::Io {
                path,
                context,
                source,
            }
        };
        // flock is released by the kernel if we die here, unlike a lock word in the file.
        let _init_lock = FileLock::exclusive(&file).map_err(io_err("flock"))?;
        let len = file.metadata().map_err(io_err("stat"))?.len();
        let fresh = len == 0;
        if fresh {
            file.set_len(FILE_SIZE as u64).map_err(io_err("resize"))?;
        } else if len != FILE_SIZE as u64 {
            return Err(RegionError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("size is {len} bytes, layout v{VERSION} needs {FILE_SIZE}"),
            });
        }
        let base = map(Some(&file), libc::PROT_READ | libc::PROT_WRITE).map_err(io_err("mmap"))?;
        let region = Region {
            base,
            path: path.to_path_buf(),
            _file: Some(file),
        };
        if fresh {
            region.initialise(limits)?;
        } else {
            region.validate()?;
        }
        region.seal_header();
        Ok(region)
    }

    /// A region private to this process, for when no shared file is configured.
    pub fn anonymous(limits: &Limits) -> Result<Self, RegionError> {
        let base =
            map(None, libc::PROT_READ | libc::PROT_WRITE).map_err(|source| RegionError::Io {
                path: PathBuf::from("(anonymous)"),
                context: "mmap",
                source,
            })?;
        let region = Region {
            base,
            path: PathBuf::from("(anonymous)"),
            _file: None,
        };
        region.initialise(limits)?;
        region.seal_header();
        Ok(region)
    }

    fn initialise(&self, limits: &Limits) -> Result<(), RegionError> {
        // SAFETY: the mapping is FILE_SIZE bytes and page aligned; nobody else
        // can see a fresh region yet (we hold the init flock).
        unsafe {
            self.base
                .as_ptr()
                .cast::<Header>()
                .write(Header::new(*limits));
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            libc::pthread_mutexattr_init(&mut attr);
            libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
            libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
            let rc = libc::pthread_mutex_init(self.shared().lock.get(), &attr);
            libc::pthread_mutexattr_destroy(&mut attr);
            if rc != 0 {
                return Err(RegionError::Io {
                    path: self.path.clone(),
                    context: "pthread_mutex_init",
                    source: io::Error::from_raw_os_error(rc),
                });
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), RegionError> {
        let h = self.header();
        let corrupt = |reason: String| RegionError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        if h.magic != MAGIC {
            return Err(corrupt(format!("bad magic {:02x?}", h.magic)));
        }
        if h.version != VERSION {
            return Err(corrupt(format!(
                "layout version {} (this library reads {VERSION})",
                h.version
            )));
        }
        if h.header_size as usize != PAGE
            || h.file_size != FILE_SIZE as u64
            || h.device_count as usize != MAX_DEVICES
            || h.slot_count as usize != MAX_SLOTS
        {
            return Err(corrupt("geometry does not match the layout".into()));
        }
        let expect = h.compute_checksum();
        if h.checksum != expect {
            return Err(corrupt(format!(
                "header checksum {:#x}, computed {expect:#x}",
                h.checksum
            )));
        }
        Ok(())
    }

    /// Makes stray writes to the limits fault instead of silently raising them.
    fn seal_header(&self) {
        // SAFETY: the first page of our own mapping.
        unsafe { libc::mprotect(self.base.as_ptr().cast(), PAGE, libc::PROT_READ) };
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open region file (none for an anonymous region). Its identity is
    /// what a container shows the NPU arbiter (see [`npu_wire`]).
    pub fn file(&self) -> Option<&File> {
        self._file.as_ref()
    }

    pub fn header(&self) -> &Header {
        // SAFETY: validated or initialised at open; lives as long as the mapping.
        unsafe { &*self.base.as_ptr().cast::<Header>() }
    }

    pub fn limits(&self) -> &Limits {
        &self.header().limits
    }

    pub fn shared(&self) -> &Shared {
        // SAFETY: in bounds, aligned, and all fields are atomics or the mutex cell.
        unsafe { &*self.base.as_ptr().add(SHARED_OFFSET).cast::<Shared>() }
    }

    pub fn slots(&self) -> &[Slot] {
        // SAFETY: MAX_SLOTS slots follow the shared page.
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().add(SLOTS_OFFSET).cast::<Slot>(),
                MAX_SLOTS,
            )
        }
    }

    /// Serialises something across the container's processes (context
    /// creation) without holding the accounting lock. `None` for a private region.
    pub fn exclusive(&self) -> Option<impl Drop> {
        let file = self._file.as_ref()?;
        FileLock::exclusive(file).ok()
    }

    pub fn device_used(&self, device: usize) -> u64 {
        self.shared().device_used[device].load(Ordering::Acquire)
    }

    /// Takes the region lock, recovering it if its owner died.
    pub fn lock(&self) -> RegionGuard<'_> {
        let mutex = self.shared().lock.get();
        // SAFETY: the mutex was initialised when the region was created.
        let rc = unsafe { libc::pthread_mutex_lock(mutex) };
        let recovered = rc == libc::EOWNERDEAD;
        if recovered {
            self.shared().recoveries.fetch_add(1, Ordering::Relaxed);
            self.repair();
            // SAFETY: we hold the mutex in the EOWNERDEAD state.
            unsafe { libc::pthread_mutex_consistent(mutex) };
        }
        // ENOTRECOVERABLE cannot happen: every EOWNERDEAD is made consistent above.
        RegionGuard {
            region: self,
            recovered,
        }
    }

    /// Drops dead slots and recomputes every total from the live ones. Lock held.
    fn repair(&self) {
        for slot in self.slots() {
            if slot.pid.load(Ordering::Acquire) != 0 && !owner_alive(slot) {
                free_slot(slot);
                self.shared().reclaimed.fetch_add(1, Ordering::Relaxed);
            }
        }
        for device in 0..MAX_DEVICES {
            let total: u64 = self
                .slots()
                .iter()
                .map(|s| s.used[device].load(Ordering::Acquire))
                .sum();
            self.shared().device_used[device].store(total, Ordering::Release);
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; no references outlive self.
        unsafe { libc::munmap(self.base.as_ptr().cast(), FILE_SIZE) };
    }
}

/// Proof that the region lock is held; accounting goes through it.
pub struct RegionGuard<'a> {
    region: &'a Region,
    recovered: bool,
}

impl RegionGuard<'_> {
    /// True when this lock was taken over from a dead owner (and the region repaired).
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// Claims a slot for `pid` (reusing a dead process's slot if needed).
    pub fn claim_slot(&self, pid: u32, start_time: u64) -> Result<usize, RegionError> {
        let slots = self.region.slots();
        let free = slots
            .iter()
            .position(|s| s.pid.load(Ordering::Acquire) == 0);
        let index = match free {
            Some(i) => i,
            None => {
                if self.reclaim_dead() == 0 {
                    return Err(RegionError::Full {
                        path: self.region.path.clone(),
                    });
                }
                slots
                    .iter()
                    .position(|s| s.pid.load(Ordering::Acquire) == 0)
                    .expect("reclaim freed a slot")
            }
        };
        let slot = &slots[index];
        for u in &slot.used {
            u.store(0, Ordering::Relaxed);
        }
        slot.launches.store(0, Ordering::Relaxed);
        slot.host_pid.store(0, Ordering::Relaxed);
        slot.start_time.store(start_time, Ordering::Relaxed);
        slot.generation.fetch_add(1, Ordering::Relaxed);
        slot.pid.store(pid, Ordering::Release);
        Ok(index)
    }

    /// Frees the slots of processes that are gone and returns their usage to the devices.
    pub fn reclaim_dead(&self) -> usize {
        let shared = self.region.shared();
        let mut n = 0;
        for slot in self.region.slots() {
            if slot.pid.load(Ordering::Acquire) == 0 || owner_alive(slot) {
                continue;
            }
            for (device, used) in slot.used.iter().enumerate() {
                let v = used.load(Ordering::Acquire);
                let _ = shared.device_used[device].fetch_update(
                    Ordering::AcqRel,
                    Ordering::Acquire,
                    |t| Some(t.saturating_sub(v)),
                );
            }
            free_slot(slot);
            shared.reclaimed.fetch_add(1, Ordering::Relaxed);
            n += 1;
        }
        n
    }

    /// Adds `bytes` to `device` for `slot`, unless that would pass `limit`.
    /// Dead processes' usage is reclaimed once before saying no.
    pub fn reserve(
        &self,
        slot: usize,
        device: usize,
        bytes: u64,
        limit: Option<u64>,
    ) -> Result<(), OverLimit> {
        let shared = self.region.shared();
        if let Some(limit) = limit {
            let fits = |used: u64| used.checked_add(bytes).is_some_and(|t| t <= limit);
            let used = shared.device_used[device].load(Ordering::Acquire);
            if !fits(used)
                && (self.reclaim_dead() == 0
                    || !fits(shared.device_used[device].load(Ordering::Acquire)))
            {
                return Err(OverLimit {
                    used: shared.device_used[device].load(Ordering::Acquire),
                    limit,
                });
            }
        }
        shared.device_used[device].fetch_add(bytes, Ordering::AcqRel);
        self.region.slots()[slot].used[device].fetch_add(bytes, Ordering::AcqRel);
        Ok(())
    }

    /// Returns `bytes` on `device` from `slot`.
    pub fn release(&self, slot: usize, device: usize, bytes: u64) {
        let sub = |a: &std::sync::atomic::AtomicU64| {
            let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(bytes))
            });
        };
        sub(&self.region.shared().device_used[device]);
        sub(&self.region.slots()[slot].used[device]);
    }
}

impl Drop for RegionGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: we hold the lock.
        unsafe { libc::pthread_mutex_unlock(self.region.shared().lock.get()) };
    }
}

fn free_slot(slot: &Slot) {
    for u in &slot.used {
        u.store(0, Ordering::Relaxed);
    }
    slot.start_time.store(0, Ordering::Relaxed);
    slot.pid.store(0, Ordering::Release);
}

/// True while the slot's process exists, is not a zombie, and is the same
/// process (start time) that claimed the slot.
fn owner_alive(slot: &Slot) -> bool {
    let pid = slot.pid.load(Ordering::Acquire);
    match process_start_time(pid) {
        Some(start) => start == slot.start_time.load(Ordering::Acquire),
        None => false,
    }
}

/// Field 22 of `/proc/<pid>/stat`, or `None` if the process is gone or a zombie.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3 (state); starttime is field 22.
    fields.nth(22 - 4)?.parse().ok()
}

fn map(file: Option<&File>, prot: libc::c_int) -> io::Result<NonNull<u8>> {
    let (flags, fd) = match file {
        Some(f) => (libc::MAP_SHARED, f.as_raw_fd()),
        None => (libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1),
    };
    // SAFETY: a fresh mapping of FILE_SIZE bytes; the file was sized above.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), FILE_SIZE, prot, flags, fd, 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(NonNull::new(p.cast()).expect("mmap returned null"))
}

/// Opens a file every process of the container (or node) shares: created if
/// missing, readable and writable by all, never inherited across exec, and
/// never through a symlink (in the node-wide lock directory another tenant
/// could aim one at a file of its choosing).
pub fn open_shared(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o666)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| {
            if f.metadata()?.is_file() {
                Ok(f)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: not a regular file", path.display()),
                ))
            }
        })
}

/// How long a process waits for the node-wide context lock. Another tenant
/// can hold it for ever; the lock only sharpens which process a new context
/// belongs to, so after this the context is created without it.
pub const LOCK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// `flock(LOCK_EX)` on a lock file this guard owns, released on drop or by the
/// kernel if the process dies. hami-core holds one node-wide around context creation.
pub struct LockFile {
    _guard: FileLock,
    _file: File,
}

impl LockFile {
    /// Opens (creating, mode 0666) and locks `path`, waiting for other
    /// holders at most `deadline`; then `ErrorKind::TimedOut`.
    pub fn acquire(path: &Path, deadline: std::time::Duration) -> io::Result<Self> {
        let file = open_shared(path)?;
        let until = std::time::Instant::now() + deadline;
        let guard = loop {
            match FileLock::try_exclusive(&file)? {
                Some(g) => break g,
                None if std::time::Instant::now() >= until => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{}: held by another process for over {deadline:?}",
                            path.display()
                        ),
                    ))
                }
                None => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        };
        // Field order: the guard unlocks before the file closes.
        Ok(Self {
            _guard: guard,
            _file: file,
        })
    }
}

/// Holds `flock(LOCK_EX)` on an fd. If the fd is closed first, closing released it.
struct FileLock(libc::c_int);

impl FileLock {
    /// `Ok(None)` while another open file holds the lock.
    fn try_exclusive(file: &File) -> io::Result<Option<Self>> {
        // SAFETY: flock on an open fd.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(FileLock(file.as_raw_fd())));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }

    fn exclusive(file: &File) -> io::Result<Self> {
        // SAFETY: flock on an open fd.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(FileLock(file.as_raw_fd()))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: unlocking the fd we locked.
        unsafe { libc::flock(self.0, libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests;
