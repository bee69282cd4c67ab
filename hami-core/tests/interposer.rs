//! hami-core in real processes: the fake driver and the test application are
//! built with gcc, and libhami_core.so is loaded with a real LD_PRELOAD.

mod support;

use std::process::Command;
use std::time::Duration;

use hami_testkit::process::spawn_until_ready;

use support::{app, field, fixture, needs, rcs, run, HUNDRED_MIB, MIB};

fn ten_then_oom() -> Vec<i32> {
    let mut v = vec![0; 10];
    v.push(2);
    v
}

#[test]
fn a_1000m_limit_allows_ten_100mib_allocations_on_every_path() {
    if !needs("a_1000m_limit_allows_ten_100mib_allocations_on_every_path") {
        return;
    }
    // (resolution, per-thread-stream flag, operation and its arguments)
    let cases: &[(&str, bool, &[&str])] = &[
        ("procaddress", false, &["alloc", HUNDRED_MIB]),
        ("dlsym", false, &["alloc", HUNDRED_MIB]),
        ("direct", false, &["alloc", HUNDRED_MIB]),
        ("procaddress", false, &["managed", HUNDRED_MIB]),
        ("procaddress", false, &["async", HUNDRED_MIB]),
        ("procaddress", true, &["async", HUNDRED_MIB]),
        ("direct", false, &["async", HUNDRED_MIB]),
        ("procaddress", false, &["pool", HUNDRED_MIB]),
        ("procaddress", true, &["pool", HUNDRED_MIB]),
        ("procaddress", false, &["vmm", HUNDRED_MIB]),
        ("dlsym", false, &["vmm", HUNDRED_MIB]),
        // 1000-byte rows padded to 1024: 100 MiB per allocation.
        ("procaddress", false, &["pitch", "1000", "102400"]),
        // 6553600 float4 texels = 100 MiB.
        ("procaddress", false, &["array", "6553600", "1"]),
        ("procaddress", false, &["array3d", "6553600", "1", "1"]),
    ];
    for (resolve, ptds, op) in cases {
        let mut cmd = app(resolve);
        if *ptds {
            cmd.env("APP_PTDS", "1");
        }
        for _ in 0..11 {
            cmd.args(*op);
        }
        let (out, _) = run(&mut cmd);
        assert_eq!(
            rcs(&out, op[0]),
            ten_then_oom(),
            "{resolve} ptds={ptds} {op:?}:\n{out}"
        );
    }
}

#[test]
fn freeing_returns_quota_on_every_path() {
    if !needs("freeing_returns_quota_on_every_path") {
        return;
    }
    for (alloc, free) in [
        ("alloc", "free-all"),
        ("async", "free-async-all"),
        ("vmm", "vmm-release-all"),
    ] {
        let mut cmd = app("procaddress");
        for _ in 0..10 {
            cmd.args([alloc, HUNDRED_MIB]);
        }
        cmd.args([free, alloc, HUNDRED_MIB, "info"]);
        let (out, _) = run(&mut cmd);
        assert_eq!(rcs(&out, alloc), vec![0; 11], "{alloc}/{free}:\n{out}");
        assert_eq!(field(&out, "info", "free"), 900 * MIB, "{out}");
    }
}

#[test]
fn memory_info_reports_the_quota_through_cuda_and_nvml() {
    if !needs("memory_info_reports_the_quota_through_cuda_and_nvml") {
        return;
    }
    let (out, _) = run(app("procaddress")
        .args([
            "alloc",
            HUNDRED_MIB,
            "alloc",
            HUNDRED_MIB,
            "alloc",
            HUNDRED_MIB,
        ])
        .args(["info", "totalmem", "nvml-info", "legacy-info"]));
    assert_eq!(field(&out, "info", "total"), 1000 * MIB);
    assert_eq!(field(&out, "info", "free"), 700 * MIB);
    assert_eq!(field(&out, "totalmem", "total"), 1000 * MIB);
    assert_eq!(field(&out, "nvml-info", "total"), 1000 * MIB);
    assert_eq!(field(&out, "nvml-info", "used"), 300 * MIB);
    assert_eq!(field(&out, "nvml-info", "free"), 700 * MIB);
    assert_eq!(field(&out, "nvml-info", "v2-used"), 300 * MIB);
    // The pre-3.2 entry point writes 32-bit values and nothing else.
    assert!(
        out.contains("legacy-info free=734003200 total=1048576000 guards=intact rc=0"),
        "{out}"
    );

    // Without a limit the device's own numbers show through.
    let (out, _) = run(app("procaddress")
        .env_remove("CUDA_DEVICE_MEMORY_LIMIT")
        .args(["info", "nvml-info"]));
    assert_eq!(field(&out, "info", "total"), 8192 * MIB);
    assert_eq!(field(&out, "nvml-info", "total"), 8192 * MIB);
}

#[test]
fn two_processes_share_one_quota() {
    if !needs("two_processes_share_one_quota") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let region = dir.path().join("vgpu.cache");
    let mut first = app("procaddress");
    first.env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region);
    for _ in 0..6 {
        first.args(["alloc", HUNDRED_MIB]);
    }
    let mut holder = spawn_until_ready(first.args(["ready", "pause"]));

    let (out, _) = run(app("dlsym")
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region)
        .args(["info", "alloc-until-oom", HUNDRED_MIB]));
    assert_eq!(field(&out, "info", "free"), 400 * MIB, "{out}");
    assert_eq!(field(&out, "alloc-until-oom", "count"), 4, "{out}");

    // Once the first process is gone its 600 MiB come back.
    holder.kill().unwrap();
    holder.wait().unwrap();
    let (out, _) = run(app("direct")
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region)
        .args(["alloc-until-oom", HUNDRED_MIB]));
    assert_eq!(field(&out, "alloc-until-oom", "count"), 10, "{out}");
}

/// The fake device, like a real one, frees what a process held once it is
/// gone, kill -9 included: a 600 MiB device filled by one process is whole
/// again for the next once the first is killed (the real-cluster test's
/// next pod must see the device, not the dead pod's usage).
#[test]
fn the_fake_device_frees_a_killed_process_memory() {
    if !needs("the_fake_device_frees_a_killed_process_memory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("fake-gpu.state");
    let on_device = |c: &mut std::process::Command| {
        c.env("FAKE_CUDA_STATE", &device)
            .env("FAKE_CUDA_TOTAL_MEMORY", "600m");
    };
    let mut first = app("procaddress");
    on_device(&mut first);
    first.env(
        "CUDA_DEVICE_MEMORY_SHARED_CACHE",
        dir.path().join("a.cache"),
    );
    for _ in 0..6 {
        first.args(["alloc", HUNDRED_MIB]);
    }
    let mut holder = spawn_until_ready(first.args(["ready", "pause"]));
    let mut second = app("procaddress");
    on_device(&mut second);
    second.env(
        "CUDA_DEVICE_MEMORY_SHARED_CACHE",
        dir.path().join("b.cache"),
    );
    let (out, _) = run(second.args(["alloc-until-oom", HUNDRED_MIB]));
    assert_eq!(
        field(&out, "alloc-until-oom", "count"),
        0,
        "the device is full: {out}"
    );

    holder.kill().unwrap(); // SIGKILL: nothing of the process runs
    holder.wait().unwrap();
    let mut third = app("procaddress");
    on_device(&mut third);
    third.env(
        "CUDA_DEVICE_MEMORY_SHARED_CACHE",
        dir.path().join("c.cache"),
    );
    let (out, _) = run(third.args(["nvml-info", "alloc-until-oom", HUNDRED_MIB]));
    assert_eq!(field(&out, "nvml-info", "used"), 0, "{out}");
    assert_eq!(field(&out, "alloc-until-oom", "count"), 6, "{out}");
}

#[test]
fn sigkill_in_the_middle_of_allocating_is_recovered() {
    if !needs("sigkill_in_the_middle_of_allocating_is_recovered") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let region = dir.path().join("vgpu.cache");
    // Victims hold 500 MiB and churn 1 MiB alloc/free pairs (taking the region
    // lock tens of thousands of times a second) when they are SIGKILLed.
    for delay_ms in [40, 90, 150, 220, 300] {
        let mut victim = spawn_until_ready(
            app("procaddress")
                .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region)
                .args(["alloc", "524288000", "ready", "churn", "1048576", "10000"]),
        );
        std::thread::sleep(Duration::from_millis(delay_ms));
        victim.kill().unwrap();
        victim.wait().unwrap();
    }
    // A survivor gets the whole quota, without hanging on a dead lock owner.
    let mut survivor = app("procaddress");
    survivor
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region)
        .args(["alloc-until-oom", HUNDRED_MIB]);
    let out = hami_testkit::process::run_with_timeout(&mut survivor, Duration::from_secs(30))
        .expect("survivor hung");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(field(&stdout, "alloc-until-oom", "count"), 10, "{stdout}");
}

#[test]
fn invalid_limits_fail_closed_with_a_clear_message() {
    if !needs("invalid_limits_fail_closed_with_a_clear_message") {
        return;
    }
    for (var, value) in [
        ("CUDA_DEVICE_MEMORY_LIMIT", "4Gi"),
        ("CUDA_DEVICE_MEMORY_LIMIT_0", "1.5g"),
        ("CUDA_DEVICE_SM_LIMIT", "250"),
    ] {
        let (out, err) = run(app("procaddress")
            .env(var, value)
            .args(["alloc", "1", "async", "1", "vmm", "2097152"]));
        assert_eq!(rcs(&out, "alloc"), vec![2], "{var}={value}: {out}");
        assert_eq!(rcs(&out, "async"), vec![2], "{out}");
        assert_eq!(rcs(&out, "vmm"), vec![2], "{out}");
        assert!(
            err.contains(var) && err.contains(value),
            "stderr does not name {var}={value}: {err}"
        );
    }
}

#[test]
fn a_corrupt_region_fails_closed() {
    if !needs("a_corrupt_region_fails_closed") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let region = dir.path().join("vgpu.cache");
    std::fs::write(&region, vec![0x5a; 204_800]).unwrap();
    let (out, err) = run(app("procaddress")
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region)
        .args(["alloc", "1"]));
    assert_eq!(rcs(&out, "alloc"), vec![2], "{out}");
    assert!(err.contains("corrupt") && err.contains("magic"), "{err}");

    std::fs::write(&region, b"short").unwrap();
    let (out, err) = run(app("procaddress")
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region)
        .args(["alloc", "1"]));
    assert_eq!(rcs(&out, "alloc"), vec![2], "{out}");
    assert!(err.contains("size is 5 bytes"), "{err}");
}

#[test]
fn disable_control_passes_everything_through() {
    if !needs("disable_control_passes_everything_through") {
        return;
    }
    let (out, _) = run(app("procaddress")
        .env("CUDA_DISABLE_CONTROL", "true")
        .args(["alloc-until-oom", HUNDRED_MIB]));
    // The 8 GiB fake device, not the 1000 MiB limit, is what runs out.
    assert_eq!(field(&out, "alloc-until-oom", "count"), 81, "{out}");
}

/// Another preloaded library that wraps `puts` with `dlsym(RTLD_NEXT, "puts")`
/// must get libc's `puts`, not its own: our `dlsym` must not change whose
/// "next" it is.
#[test]
fn rtld_next_stays_relative_to_its_real_caller() {
    if !needs("rtld_next_stays_relative_to_its_real_caller") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shim = hami_testkit::cc::compile(
        r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int puts(const char *s) {
    int (*next)(const char *) = (int (*)(const char *))dlsym(RTLD_NEXT, "puts");
    if (next == NULL || next == puts) {
        fprintf(stderr, "RTLD_NEXT gave %s\n", next ? "the caller itself" : "nothing");
        _exit(42);
    }
    fputs("[shim] ", stdout);
    return next(s);
}
"#,
        &dir.path().join("libshim.so"),
        hami_testkit::cc::Artifact::SharedLibrary,
        &["-ldl"],
    )
    .unwrap();
    let hello = hami_testkit::cc::compile(
        "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
        &dir.path().join("hello"),
        hami_testkit::cc::Artifact::Executable,
        &[],
    )
    .unwrap();
    let out = Command::new(&hello)
        .env(
            "LD_PRELOAD",
            format!("{} {}", fixture().preload.display(), shim.display()),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[shim] hello\n");
}

/// A context's own device memory counts against the quota, and a context that
/// does not fit is refused with the real out-of-memory error.
#[test]
fn context_memory_is_charged() {
    if !needs("context_memory_is_charged") {
        return;
    }
    let (out, _) = run(app("procaddress")
        .env("FAKE_CUDA_CONTEXT_BYTES", "300m")
        .args(["info", "alloc-until-oom", HUNDRED_MIB]));
    assert_eq!(field(&out, "info", "free"), 700 * MIB, "{out}");
    assert_eq!(field(&out, "alloc-until-oom", "count"), 7, "{out}");

    let (out, _) = run(app("procaddress")
        .env("FAKE_CUDA_CONTEXT_BYTES", "300m")
        .env("CUDA_DEVICE_MEMORY_LIMIT", "200m"));
    assert!(out.contains("init rc=2"), "{out}");
}
