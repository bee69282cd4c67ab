//! The Ascend front end in real processes: the fake CANN runtime and
//! AscendCL, an app that dlopens them like a CANN application, and
//! libhami_core.so under a real LD_PRELOAD.

mod support;

use support::{field, needs, npu_app, rcs, run};

const GIB: &str = "1073741824";
const OOM: i32 = 207_001;

fn sixteen_then_oom() -> Vec<i32> {
    let mut v = vec![0; 16];
    v.push(OOM);
    v
}

#[test]
fn a_16384_mb_quota_on_a_64_gb_npu_holds_on_both_layers() {
    if !needs("a_16384_mb_quota_on_a_64_gb_npu_holds_on_both_layers") {
        return;
    }
    for op in ["acl-alloc", "rt-alloc"] {
        let mut cmd = npu_app();
        cmd.env("NPU_MEM_QUOTA", "16384").args(["info", "rt-info"]);
        for _ in 0..17 {
            cmd.args([op, GIB]);
        }
        let (out, _) = run(&mut cmd);
        assert_eq!(rcs(&out, op), sixteen_then_oom(), "{op}:\n{out}");
        assert_eq!(field(&out, "info", "total"), 16 << 30, "{out}");
        assert_eq!(field(&out, "rt-info", "total"), 16 << 30, "{out}");
    }
    // Without a quota the device's own 64 GiB show through.
    let (out, _) = run(npu_app().args(["info"]));
    assert_eq!(field(&out, "info", "total"), 64 << 30, "{out}");
}

/// aclrtMalloc reaches rtMalloc underneath; the allocation must count once.
#[test]
fn an_acl_allocation_is_counted_exactly_once() {
    if !needs("an_acl_allocation_is_counted_exactly_once") {
        return;
    }
    let (out, _) = run(npu_app().env("NPU_MEM_QUOTA", "16384").args([
        "acl-alloc",
        "8589934592",
        "rt-alloc",
        "8589934592",
        "rt-alloc",
        "1",
        "info",
        "free-all",
        "acl-until-oom",
        GIB,
    ]));
    assert_eq!(rcs(&out, "acl-alloc"), vec![0], "{out}");
    assert_eq!(rcs(&out, "rt-alloc"), vec![0, OOM], "{out}");
    assert_eq!(field(&out, "info", "free"), 0, "{out}");
    assert_eq!(field(&out, "acl-until-oom", "count"), 16, "{out}");
    // aclrtMallocAlign32 takes 32 bytes more than the rounded size: after
    // 1048512 + 32 of a 1 MiB quota, 32 bytes are left and 1 byte needs 64.
    let (out, _) = run(npu_app().env("NPU_MEM_QUOTA", "1").args([
        "acl-align32",
        "1048512",
        "acl-align32",
        "1",
    ]));
    assert_eq!(rcs(&out, "acl-align32"), vec![0, OOM], "{out}");
}

#[test]
fn two_processes_share_one_npu_quota() {
    if !needs("two_processes_share_one_npu_quota") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let region = dir.path().join("vgpu.cache");
    let mut first = npu_app();
    first
        .env("NPU_MEM_QUOTA", "16384")
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region);
    for _ in 0..10 {
        first.args(["acl-alloc", GIB]);
    }
    let (out, _) = run(&mut first);
    assert_eq!(rcs(&out, "acl-alloc"), vec![0; 10], "{out}");
    // The first process exited without freeing: its 10 GiB stay charged until
    // someone needs them, then come back because it is gone.
    let (out, _) = run(npu_app()
        .env("NPU_MEM_QUOTA", "16384")
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region)
        .args(["info", "rt-until-oom", GIB]));
    assert_eq!(field(&out, "info", "free"), 6 << 30, "{out}");
    assert_eq!(field(&out, "rt-until-oom", "count"), 16, "{out}");
}

#[test]
fn an_invalid_npu_quota_fails_closed() {
    if !needs("an_invalid_npu_quota_fails_closed") {
        return;
    }
    for value in ["16GB", "-1", "1.5"] {
        let (out, err) =
            run(npu_app()
                .env("NPU_MEM_QUOTA", value)
                .args(["acl-alloc", "1", "rt-alloc", "1"]));
        assert_eq!(rcs(&out, "acl-alloc"), vec![OOM], "{value}: {out}");
        assert_eq!(rcs(&out, "rt-alloc"), vec![OOM], "{value}: {out}");
        assert!(
            err.contains("NPU_MEM_QUOTA") && err.contains(value),
            "{err}"
        );
    }
}
