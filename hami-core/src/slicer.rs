//! Weighted time-slicing of an NPU between containers, arbitrated by the
//! node agent.
//!
//! Each 100 ms period is cut into consecutive windows, one per container
//! active on the physical NPU, sized in proportion to the shares the node
//! gave them and together filling the period. The node agent's arbiter
//! (`HAMI_CORE_NPU_SCHEDULE` names its socket) hands each container its
//! window; a launch proceeds inside it and otherwise sleeps until it opens.
//! Asking is the heartbeat: a container that stops launching drops out after
//! 300 ms, one whose processes all died drops out at once, and its time goes
//! to the others.
//!
//! The windows always fill the period because an idle window leaks: the
//! device's queue is empty when the next window opens, so its owner can queue
//! work that runs on into the following window. Shares are therefore
//! weights: 50/30/20 get exactly that. A container alone on the NPU runs free
//! (holding it below its share would need the device's queue depth, which
//! the runtime does not expose).
//!
//! A window is cached for [`REFRESH_NS`], so a launch costs a socket round
//! trip at most every 20 ms per process and device. Without an arbiter
//! (none configured, not running, or refusing this container) launches run
//! unthrottled with a loud warning, or fail under `force`.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hami_region::npu_wire::{self, Reply, HELLO, PERIOD_NS};
use hami_region::MAX_DEVICES;

use crate::config::CorePolicy;
use crate::engine::engine;
use crate::{hlog, log};

/// How long an answer stands before the arbiter is asked again.
pub const REFRESH_NS: u64 = 20_000_000;
/// After a failed connection, how long launches go without asking.
const RETRY_NS: u64 = 1_000_000_000;
/// The arbiter answers in microseconds; a hung one must not hang launches.
const REPLY_TIMEOUT: libc::timeval = libc::timeval {
    tv_sec: 0,
    tv_usec: 250_000,
};

/// What a launch must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Go,
    /// No arbiter and `force`: the launch must fail.
    Refuse,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Window { start: u64, len: u64 },
    Free,
    Unavailable,
}

struct Link {
    /// The connection and the process that opened it: after fork the child
    /// must not read the parent's answers.
    conn: Option<(OwnedFd, u32)>,
    retry_at: u64,
    cache: [Option<(u64, Answer)>; MAX_DEVICES],
}

pub struct Slicer {
    socket: Option<PathBuf>,
    force: bool,
    link: Mutex<Link>,
    /// Set while the arbiter is unavailable and that has been logged.
    warned: AtomicBool,
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn slicer() -> &'static Slicer {
    static SLICER: OnceLock<Slicer> = OnceLock::new();
    SLICER.get_or_init(|| {
        let e = engine();
        Slicer {
            socket: e.schedule.clone(),
            force: e.core_policy == CorePolicy::Force,
            link: Mutex::new(Link {
                conn: None,
                retry_at: 0,
                cache: [None; MAX_DEVICES],
            }),
            warned: AtomicBool::new(false),
        }
    })
}

/// Connects and shows the arbiter this container's region file.
fn connect(socket: &Path, region: RawFd) -> Result<OwnedFd, String> {
    let fd = npu_wire::connect(socket).map_err(|e| e.to_string())?;
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: setsockopt with a timeval of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&REPLY_TIMEOUT as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
    }
    npu_wire::send(&fd, &HELLO, Some(region)).map_err(|e| e.to_string())?;
    match npu_wire::receive(&fd).map_err(|e| e.to_string())? {
        Reply::Free => Ok(fd),
        Reply::Refused(r) => Err(format!("refused: {}", r.describe())),
        Reply::Window { .. } => Err("unexpected answer to the greeting".into()),
    }
}

fn ask(fd: &OwnedFd, device: u32) -> Result<Answer, String> {
    npu_wire::send(fd, &device.to_le_bytes(), None).map_err(|e| e.to_string())?;
    match npu_wire::receive(fd).map_err(|e| e.to_string())? {
        Reply::Window { start_ns, len_ns } => Ok(Answer::Window {
            start: start_ns,
            len: len_ns,
        }),
        Reply::Free => Ok(Answer::Free),
        Reply::Refused(r) => Err(format!("device {device} refused: {}", r.describe())),
    }
}

impl Slicer {
    /// Waits for this container's window on `device` (the arbiter knows the
    /// share the node gave it).
    pub fn admit(&self, device: u32) -> Decision {
        loop {
            let now = now_ns();
            let (start, len) = match self.answer(device, now) {
                Answer::Free => return Decision::Go,
                Answer::Unavailable => {
                    return if self.force {
                        Decision::Refuse
                    } else {
                        Decision::Go
                    }
                }
                Answer::Window { start, len } => (start, len),
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

    fn answer(&self, device: u32, now: u64) -> Answer {
        let Some(socket) = &self.socket else {
            self.unavailable("no NPU arbiter (HAMI_CORE_NPU_SCHEDULE)");
            return Answer::Unavailable;
        };
        let slot = (device as usize).min(MAX_DEVICES - 1);
        let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, cached)) = link.cache[slot] {
            if now.saturating_sub(at) < REFRESH_NS {
                return cached;
            }
        }
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() } as u32;
        if link.conn.as_ref().is_some_and(|(_, owner)| *owner != pid) {
            // Forked: this copy of the parent's socket is the child's to close.
            link.conn = None;
        }
        if link.conn.is_none() {
            if now < link.retry_at {
                return Answer::Unavailable;
            }
            let region = engine()
                .region()
                .and_then(|r| r.file())
                .map(|f| f.as_raw_fd());
            let connected = match region {
                None => Err("this container has no shared region to show".to_owned()),
                Some(region) => connect(socket, region),
            };
            match connected {
                Ok(fd) => {
                    link.conn = Some((fd, pid));
                    if self.warned.swap(false, Ordering::Relaxed) {
                        hlog!(
                            log::INFO,
                            "NPU arbiter {} reached: shares enforced",
                            socket.display()
                        );
                    }
                }
                Err(e) => {
                    link.retry_at = now + RETRY_NS;
                    drop(link);
                    self.unavailable(&format!("NPU arbiter {}: {e}", socket.display()));
                    return Answer::Unavailable;
                }
            }
        }
        let (fd, _) = link.conn.as_ref().expect("connected above");
        match ask(fd, device) {
            Ok(answer) => {
                link.cache[slot] = Some((now, answer));
                answer
            }
            Err(e) => {
                link.conn = None;
                link.retry_at = now + RETRY_NS;
                drop(link);
                self.unavailable(&format!("NPU arbiter {}: {e}", socket.display()));
                Answer::Unavailable
            }
        }
    }

    fn unavailable(&self, why: &str) {
        if self.warned.swap(true, Ordering::Relaxed) {
            return;
        }
        if self.force {
            hlog!(log::ERROR, "{why}; policy force: refusing launches");
        } else {
            hlog!(log::WARN, "{why}: the compute share is NOT enforced");
        }
    }
}
