use super::*;

fn limits_mib(mib: u64) -> Limits {
    let mut l = Limits::unlimited();
    l.memory_bytes[0] = mib << 20;
    l
}

fn me() -> (u32, u64) {
    let pid = std::process::id();
    (pid, process_start_time(pid).expect("own start time"))
}

/// A pid that certainly belongs to no live process: a child we already reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn reserve_enforces_the_limit_and_release_returns_it() {
    let dir = tempfile::tempdir().unwrap();
    let region = Region::open_or_create(&dir.path().join("r"), &limits_mib(1000)).unwrap();
    let (pid, start) = me();
    let g = region.lock();
    let slot = g.claim_slot(pid, start).unwrap();
    for _ in 0..10 {
        g.reserve(slot, 0, 100 << 20, Some(1000 << 20)).unwrap();
    }
    let over = g.reserve(slot, 0, 100 << 20, Some(1000 << 20)).unwrap_err();
    assert_eq!(
        over,
        OverLimit {
            used: 1000 << 20,
            limit: 1000 << 20
        }
    );
    g.release(slot, 0, 100 << 20);
    g.reserve(slot, 0, 100 << 20, Some(1000 << 20)).unwrap();
    drop(g);
    assert_eq!(region.device_used(0), 1000 << 20);
    assert_eq!(
        region.slots()[slot].used[0].load(Ordering::Relaxed),
        1000 << 20
    );
}

#[test]
fn reopening_keeps_the_creators_limits_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r");
    let a = Region::open_or_create(&path, &limits_mib(1000)).unwrap();
    let (pid, start) = me();
    let slot = a.lock().claim_slot(pid, start).unwrap();
    a.lock().reserve(slot, 0, 42, None).unwrap();
    let b = Region::open_or_create(&path, &limits_mib(5)).unwrap();
    assert_eq!(b.limits().memory_bytes[0], 1000 << 20);
    assert_eq!(b.device_used(0), 42);
}

#[test]
fn corrupt_regions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r");
    drop(Region::open_or_create(&path, &limits_mib(1000)).unwrap());

    // Raise the limit behind the checksum's back.
    let mut bytes = std::fs::read(&path).unwrap();
    let offset = std::mem::offset_of!(Header, limits);
    bytes[offset + 4] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = Region::open_or_create(&path, &limits_mib(1))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("checksum"), "{err}");

    bytes[0] = b'X';
    std::fs::write(&path, &bytes).unwrap();
    let err = Region::open_or_create(&path, &limits_mib(1))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("magic"), "{err}");

    std::fs::write(&path, &bytes[..100]).unwrap();
    let err = Region::open_or_create(&path, &limits_mib(1))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("size is 100 bytes"), "{err}");
}

#[test]
fn header_page_is_read_only_after_open() {
    let region = Region::anonymous(&limits_mib(1)).unwrap();
    let base = region.header() as *const Header as *mut libc::c_void;
    // mprotect to the same protection succeeds; a write would fault. Ask the kernel instead
    // of faulting: /proc/self/maps shows the first page r--p.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let start = format!("{:x}-", base as usize);
    let line = maps
        .lines()
        .find(|l| l.starts_with(&start))
        .expect("mapping listed");
    assert!(
        line.split_whitespace().nth(1).unwrap().starts_with("r--"),
        "{line}"
    );
}

#[test]
fn dead_processes_usage_is_reclaimed_when_it_matters() {
    let region = Region::anonymous(&limits_mib(1000)).unwrap();
    let g = region.lock();
    let ghost = g.claim_slot(dead_pid(), 12345).unwrap();
    g.reserve(ghost, 0, 900 << 20, Some(1000 << 20)).unwrap();
    let (pid, start) = me();
    let mine = g.claim_slot(pid, start).unwrap();
    // Only fits once the dead process's 900 MiB are returned.
    g.reserve(mine, 0, 500 << 20, Some(1000 << 20)).unwrap();
    assert_eq!(region.device_used(0), 500 << 20);
    assert_eq!(region.slots()[ghost].pid.load(Ordering::Relaxed), 0);
    assert_eq!(region.shared().reclaimed.load(Ordering::Relaxed), 1);
}

#[test]
fn a_live_process_is_never_reclaimed() {
    let region = Region::anonymous(&limits_mib(1000)).unwrap();
    let g = region.lock();
    let (pid, start) = me();
    let a = g.claim_slot(pid, start).unwrap();
    g.reserve(a, 0, 900 << 20, Some(1000 << 20)).unwrap();
    assert!(g.reserve(a, 0, 200 << 20, Some(1000 << 20)).is_err());
    assert_eq!(g.reclaim_dead(), 0);
    // Same pid, different start time: a reused pid, so not the owner.
    let b = g.claim_slot(pid, start + 1).unwrap();
    assert_eq!(g.reclaim_dead(), 1);
    assert_eq!(region.slots()[b].pid.load(Ordering::Relaxed), 0);
}

#[test]
fn generation_changes_when_a_slot_is_reused() {
    let region = Region::anonymous(&limits_mib(1)).unwrap();
    let g = region.lock();
    let s = g.claim_slot(dead_pid(), 1).unwrap();
    let gen = region.slots()[s].generation.load(Ordering::Relaxed);
    g.reclaim_dead();
    let (pid, start) = me();
    assert_eq!(
        g.claim_slot(pid, start).unwrap(),
        s,
        "slot indexes are reused, lowest first"
    );
    assert_eq!(
        region.slots()[s].generation.load(Ordering::Relaxed),
        gen + 1
    );
}

/// A process SIGKILLed while holding the lock, half-way through an update,
/// neither blocks the next locker nor leaves the totals wrong.
#[test]
fn lock_owner_death_is_recovered_and_totals_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let region = Region::open_or_create(&dir.path().join("r"), &limits_mib(1000)).unwrap();
    let (pid, start) = me();
    let slot = region.lock().claim_slot(pid, start).unwrap();
    region.lock().reserve(slot, 0, 10 << 20, None).unwrap();

    let mutex = region.shared().lock.get();
    let total = &region.shared().device_used[0];
    // SAFETY: the child only makes async-signal-safe calls and raw atomic stores.
    let child = unsafe { libc::fork() };
    if child == 0 {
        unsafe {
            libc::pthread_mutex_lock(mutex);
            // Half an update: the total moves, no slot records it.
            total.fetch_add(777, Ordering::SeqCst);
            libc::raise(libc::SIGKILL);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
    assert_eq!(region.device_used(0), (10 << 20) + 777);

    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let g = region.lock();
            g.reserve(slot, 0, 1, None).unwrap();
            tx.send(()).unwrap();
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("lock still held by the dead process");
    });
    assert_eq!(region.shared().recoveries.load(Ordering::Relaxed), 1);
    assert_eq!(
        region.device_used(0),
        (10 << 20) + 1,
        "total recomputed from live slots"
    );
}

#[test]
fn start_time_of_self_and_of_the_gone() {
    assert!(process_start_time(std::process::id()).is_some());
    assert!(process_start_time(dead_pid()).is_none());
    assert!(process_start_time(0).is_none());
}

/// Another tenant holds the node-wide context lock for ever: a waiter gives
/// up after its deadline instead of hanging its context creation.
#[test]
fn the_context_lock_has_a_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("context.lock");
    let _held = LockFile::acquire(&path, std::time::Duration::from_secs(1)).unwrap();
    let started = std::time::Instant::now();
    let err = LockFile::acquire(&path, std::time::Duration::from_millis(100))
        .err()
        .expect("a held lock times out");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    drop(_held);
    LockFile::acquire(&path, std::time::Duration::from_millis(100)).unwrap();
}

/// A symlink planted where a shared file goes (the lock directory is every
/// tenant's) is never followed, and a FIFO there does not block.
#[test]
fn shared_files_are_never_opened_through_a_symlink_or_as_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "other tenant's file\n").unwrap();
    let link = dir.path().join("context.lock");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    assert!(open_shared(&link).is_err());
    assert!(LockFile::acquire(&link, std::time::Duration::from_millis(10)).is_err());
    let fifo = dir.path().join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let err = open_shared(&fifo).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "other tenant's file\n"
    );
}
