//! Logging to stderr with a `[hami-core]` prefix, filtered by `LIBCUDA_LOG_LEVEL`
//! (0 errors, 1 warnings (default), 2 info, 3 and up debug), as HAMi-core does.
//!
//! This runs inside arbitrary applications, so it writes with one `write(2)` per
//! line and never panics; it is off every hot path unless debug is on.

use std::sync::atomic::{AtomicU8, Ordering};

pub const ERROR: u8 = 0;
pub const WARN: u8 = 1;
pub const INFO: u8 = 2;
pub const DEBUG: u8 = 3;

static LEVEL: AtomicU8 = AtomicU8::new(WARN);

pub fn set_level(level: u8) {
    LEVEL.store(level, Ordering::Relaxed);
}

#[inline]
pub fn enabled(level: u8) -> bool {
    level <= LEVEL.load(Ordering::Relaxed)
}

pub fn write(level: u8, message: std::fmt::Arguments<'_>) {
    let tag = match level {
        ERROR => "ERROR",
        WARN => "WARN",
        INFO => "INFO",
        _ => "DEBUG",
    };
    let line = format!("[hami-core {tag} pid={}] {message}\n", std::process::id());
    // SAFETY: writing an owned buffer to fd 2.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

#[macro_export]
macro_rules! hlog {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            $crate::log::write($level, format_args!($($arg)*));
        }
    };
}
