//! Our `dlsym`, which every `dlsym` call in the process reaches first.
//!
//! The CUDA runtime finds the driver with `dlopen("libcuda.so.1")` and
//! `dlsym(handle, "cuGetProcAddress_v2")`; a handle lookup bypasses symbol
//! preemption, so without this override the runtime would never see hami-core.
//!
//! For names we hook, we return our function. For everything else we must
//! behave exactly like glibc, including `dlsym(RTLD_NEXT, …)`, whose answer
//! depends on *which object called it*: glibc reads its caller's return address.
//! A Rust wrapper that called the real `dlsym` would make hami-core the caller
//! and break every other interposer that uses `RTLD_NEXT`. So on x86-64 the
//! exported `dlsym` is a naked trampoline that asks [`hami_dlsym_hook`] and,
//! when it answers null, *jumps* (not calls) to glibc's `dlsym` with the
//! original arguments and return address intact.

use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicPtr, Ordering};

/// glibc's own `dlsym`, found with `dlvsym` (which we do not override).
static REAL_DLSYM: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

fn resolve_real_dlsym() -> *mut c_void {
    let cached = REAL_DLSYM.load(Ordering::Acquire);
    if !cached.is_null() {
        return cached;
    }
    // The symbol version changed when libdl moved into libc (2.34); aarch64 started at 2.17.
    for version in [c"GLIBC_2.34", c"GLIBC_2.2.5", c"GLIBC_2.17"] {
        // SAFETY: dlvsym with constant C strings.
        let p = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), version.as_ptr()) };
        if !p.is_null() {
            REAL_DLSYM.store(p, Ordering::Release);
            return p;
        }
    }
    std::ptr::null_mut()
}

/// Calls glibc's `dlsym` (for hami-core's own lookups, always with a real handle).
///
/// # Safety
/// Same contract as `dlsym(3)`.
pub unsafe fn real_dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    let p = resolve_real_dlsym();
    if p.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: p is glibc's dlsym.
    unsafe { std::mem::transmute::<*mut c_void, DlsymFn>(p)(handle, symbol) }
}

/// A symbol of `handle` as a typed function pointer (None when absent).
///
/// # Safety
/// `handle` is a live `dlopen` handle and `F` is an `Option<unsafe extern "C" fn(..)>`
/// with the symbol's exact ABI.
pub unsafe fn typed_symbol<F: Copy>(handle: *mut c_void, name: &CStr) -> Option<F> {
    assert_eq!(
        std::mem::size_of::<Option<F>>(),
        std::mem::size_of::<*mut c_void>()
    );
    // SAFETY: per the contract above.
    let p = unsafe { real_dlsym(handle, name.as_ptr()) };
    // SAFETY: null is None; otherwise the caller vouches for the type.
    unsafe { std::mem::transmute_copy::<*mut c_void, Option<F>>(&p) }
}

/// Our hook for `symbol`, or null to let glibc answer. Must not touch the
/// engine: std and glibc call `dlsym` while the engine is being built.
extern "C" fn hami_dlsym_hook(_handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    resolve_real_dlsym();
    if symbol.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: dlsym's contract: a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(symbol) };
    super::hooks::hook_for_name(name.to_bytes())
        .or_else(|| super::context::hook_for_name(name.to_bytes()))
        .or_else(|| crate::nvml::hook_for_name(name.to_bytes()))
        .or_else(|| crate::ascend::hook_for_name(name.to_bytes()))
        .unwrap_or(std::ptr::null_mut())
}

/// # Safety
/// Same contract as `dlsym(3)`.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    core::arch::naked_asm!(
        "push rdi",
        "push rsi",
        // Entry rsp is 8 mod 16; two pushes and 8 more make the call aligned.
        "sub rsp, 8",
        "call {hook}",
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        "test rax, rax",
        "jnz 2f",
        // Tail jump: glibc sees our caller's return address, so RTLD_NEXT stays exact.
        "jmp qword ptr [rip + {real}]",
        "2:",
        "ret",
        hook = sym hami_dlsym_hook,
        real = sym REAL_DLSYM,
    )
}

/// Elsewhere, a plain wrapper: `RTLD_NEXT` lookups then resolve relative to
/// hami-core rather than their caller.
///
/// # Safety
/// Same contract as `dlsym(3)`.
#[cfg(not(target_arch = "x86_64"))]
#[no_mangle]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    let hook = hami_dlsym_hook(handle, symbol);
    if !hook.is_null() {
        return hook;
    }
    unsafe { real_dlsym(handle, symbol) }
}
