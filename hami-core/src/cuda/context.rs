//! Context creation: the one moment a process can learn how the driver names
//! it (its host pid, inside a container), and the first device memory it
//! takes (the context itself, a few hundred MiB on a real GPU).
//!
//! Around the real call we list NVML's compute processes and read the
//! device's used memory, before and after, holding an flock on the region
//! file so the container's processes take turns. The one new pid is ours;
//! the growth in used memory is the context, charged to the quota.

#![allow(non_snake_case)]
// Each exported function's safety contract is that of the driver function it is named after.
#![allow(clippy::missing_safety_doc)]

use std::ffi::c_uint;
use std::sync::atomic::{AtomicU32, Ordering};

use super::abi::*;
use super::real::real;
use crate::config::MAX_DEVICES;
use crate::engine::{engine, Charge, Kind};
use crate::nvml;

/// A concurrent allocation by another process can inflate the measured
/// growth; no real context is this large.
const MAX_CONTEXT_BYTES: u64 = 2 << 30;
/// Tracking keys for primary contexts, one per device.
const PRIMARY_KEY: u64 = 0xC0_0000_0000;

/// Our count of primary-context retains per device: the context (and its
/// memory) goes away when it drops to zero.
static PRIMARY_REFS: [AtomicU32; MAX_DEVICES] = [const { AtomicU32::new(0) }; MAX_DEVICES];

/// Runs `create`; learns the host pid and charges the context's memory under `key`.
/// `undo` destroys the context if its memory does not fit the quota.
fn creating(
    device: usize,
    key: u64,
    create: impl FnOnce() -> CUresult,
    undo: impl FnOnce(),
) -> CUresult {
    let e = engine();
    if !e.is_enforcing() {
        return create();
    }
    // Containers on one node have different regions: only a node-wide lock
    // keeps two of them from creating contexts at the same moment.
    let turn: Option<Box<dyn std::any::Any>> = match &e.context_lock {
        Some(path) => node_lock(path).map(|l| Box::new(l) as Box<dyn std::any::Any>),
        None => e
            .region()
            .and_then(|r| r.exclusive())
            .map(|l| Box::new(l) as Box<dyn std::any::Any>),
    };
    let (pids_before, used_before) = (nvml::compute_pids(device), nvml::device_used(device));
    let rc = create();
    if rc != CUDA_SUCCESS {
        return rc;
    }
    let (pids_after, used_after) = (nvml::compute_pids(device), nvml::device_used(device));
    drop(turn);
    crate::hlog!(
        crate::log::DEBUG,
        "context on device {device}: driver processes {pids_before:?} -> {pids_after:?}, used {used_before:?} -> {used_after:?}"
    );
    if e.host_pid().is_none() {
        if let (Some(before), Some(after)) = (pids_before, pids_after) {
            let new: Vec<u32> = after.into_iter().filter(|p| !before.contains(p)).collect();
            match new[..] {
                [pid] => e.set_host_pid(pid),
                [] => {}
                _ => crate::hlog!(
                    crate::log::WARN,
                    "{} processes created contexts at once; cannot tell this process's host pid, so the \
                     compute share cannot be measured (set HAMI_CORE_CONTEXT_LOCK to a node-wide lock file)",
                    new.len()
                ),
            }
        }
    }
    if let (Some(before), Some(after)) = (used_before, used_after) {
        let bytes = after.saturating_sub(before).min(MAX_CONTEXT_BYTES);
        if bytes > 0 {
            if e.reserve(device, bytes).is_err() {
                undo();
                return CUDA_ERROR_OUT_OF_MEMORY;
            }
            e.track(Kind::Context, key, Charge { device, bytes });
        }
    }
    rc
}

fn node_lock(path: &std::path::Path) -> Option<crate::region::LockFile> {
    crate::region::LockFile::acquire(path, crate::region::LOCK_DEADLINE)
        .map_err(|e| crate::hlog!(crate::log::WARN, "cannot lock {}: {e}", path.display()))
        .ok()
}

fn destroyed(key: u64) {
    let e = engine();
    if let Some(c) = e.untrack(Kind::Context, key) {
        e.release(c.device, c.bytes);
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v2(
    ctx: *mut CUcontext,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    let Some(create) = real().and_then(|r| r.ctx_create_v2) else {
        return CUDA_ERROR_NOT_INITIALIZED;
    };
    let device = dev.max(0) as usize;
    // The key is only known afterwards; charge under a per-device placeholder, then move it.
    let placeholder = PRIMARY_KEY - 1 - device as u64;
    let rc = creating(
        device,
        placeholder,
        // SAFETY: passed through.
        || unsafe { create(ctx, flags, dev) },
        || {
            if let Some(destroy) = real().and_then(|r| r.ctx_destroy_v2) {
                // SAFETY: destroying the context we just created.
                unsafe { destroy(*ctx) };
            }
        },
    );
    if rc == CUDA_SUCCESS {
        if let Some(charge) = engine().untrack(Kind::Context, placeholder) {
            // SAFETY: the driver wrote the new context.
            engine().track(Kind::Context, unsafe { *ctx } as u64, charge);
        }
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: CUcontext) -> CUresult {
    let Some(destroy) = real().and_then(|r| r.ctx_destroy_v2) else {
        return CUDA_ERROR_NOT_INITIALIZED;
    };
    // SAFETY: passed through.
    let rc = unsafe { destroy(ctx) };
    if rc == CUDA_SUCCESS {
        destroyed(ctx as u64);
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    let Some(retain) = real().and_then(|r| r.device_primary_ctx_retain) else {
        return CUDA_ERROR_NOT_INITIALIZED;
    };
    let device = dev.max(0) as usize;
    if device >= MAX_DEVICES || PRIMARY_REFS[device].load(Ordering::Acquire) > 0 {
        // SAFETY: passed through; the context already exists.
        let rc = unsafe { retain(ctx, dev) };
        if rc == CUDA_SUCCESS && device < MAX_DEVICES {
            PRIMARY_REFS[device].fetch_add(1, Ordering::AcqRel);
        }
        return rc;
    }
    let rc = creating(
        device,
        PRIMARY_KEY + device as u64,
        // SAFETY: passed through.
        || unsafe { retain(ctx, dev) },
        || {
            if let Some(release) = real().and_then(|r| r.device_primary_ctx_release_v2) {
                // SAFETY: releasing the retain we just made.
                unsafe { release(dev) };
            }
        },
    );
    if rc == CUDA_SUCCESS {
        PRIMARY_REFS[device].fetch_add(1, Ordering::AcqRel);
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    let Some(release) = real().and_then(|r| r.device_primary_ctx_release_v2) else {
        return CUDA_ERROR_NOT_INITIALIZED;
    };
    // SAFETY: passed through.
    let rc = unsafe { release(dev) };
    let device = dev.max(0) as usize;
    if rc == CUDA_SUCCESS
        && device < MAX_DEVICES
        && PRIMARY_REFS[device]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            == Ok(1)
    {
        destroyed(PRIMARY_KEY + device as u64);
    }
    rc
}

/// Our function for a context entry point name (for `dlsym` and `cuGetProcAddress`).
pub fn hook_for_name(name: &[u8]) -> Option<*mut std::ffi::c_void> {
    match name {
        b"cuCtxCreate_v2" => Some(cuCtxCreate_v2 as *mut std::ffi::c_void),
        b"cuCtxDestroy_v2" => Some(cuCtxDestroy_v2 as *mut std::ffi::c_void),
        b"cuDevicePrimaryCtxRetain" => Some(cuDevicePrimaryCtxRetain as *mut std::ffi::c_void),
        b"cuDevicePrimaryCtxRelease_v2" => {
            Some(cuDevicePrimaryCtxRelease_v2 as *mut std::ffi::c_void)
        }
        _ => None,
    }
}

pub const HOOKED: &[&str] = &[
    "cuCtxCreate_v2\0",
    "cuCtxDestroy_v2\0",
    "cuDevicePrimaryCtxRetain\0",
    "cuDevicePrimaryCtxRelease_v2\0",
];
