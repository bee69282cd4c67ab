//! The arbiter over its real socket, with clients that behave and clients
//! that attack it the way a tenant could from inside a container.

use super::client::Connection;
use super::*;
use std::os::unix::ffi::OsStrExt;

struct Node {
    dir: tempfile::TempDir,
    arbiter: Arbiter,
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let arbiter = start(dir.path()).unwrap();
        Node { dir, arbiter }
    }

    /// An allocation as hami-cdi writes it: a region file and the node's limits.
    fn allocation(&self, name: &str, limits: &str) -> std::fs::File {
        let alloc = self.dir.path().join(name);
        std::fs::create_dir_all(alloc.join("region")).unwrap();
        std::fs::write(alloc.join("limits.env"), limits).unwrap();
        let region = alloc.join(REGION_IN_ALLOCATION);
        std::fs::write(&region, [0u8; 4096]).unwrap();
        std::fs::File::open(region).unwrap()
    }

    fn tenant(&self, name: &str, share: u32, devices: &str) -> Connection {
        let region = self.allocation(
            name,
            &format!("CUDA_DEVICE_SM_LIMIT={share}\nHAMI_CORE_NPU_DEVICE_IDS={devices}\n"),
        );
        self.connect(Some(&region))
    }

    fn connect(&self, region: Option<&std::fs::File>) -> Connection {
        let (conn, reply) = Connection::open(self.arbiter.socket(), region).unwrap();
        assert_eq!(reply, Reply::Free, "accepted");
        conn
    }

    fn refused(&self, region: Option<&std::fs::File>) -> Reply {
        Connection::open(self.arbiter.socket(), region).unwrap().1
    }
}

fn window(start_ms: u64, len_ms: u64) -> Reply {
    Reply::Window {
        start_ns: start_ms * 1_000_000,
        len_ns: len_ms * 1_000_000,
    }
}

#[test]
fn windows_follow_the_node_shares_in_name_order() {
    let node = Node::new();
    let a = node.tenant("a", 50, "0");
    let b = node.tenant("b", 30, "0");
    let c = node.tenant("c", 20, "0");
    let lone = node.tenant("d", 90, "1");
    assert_eq!(a.ask(0).unwrap(), Reply::Free, "alone so far");
    b.ask(0).unwrap();
    c.ask(0).unwrap();
    assert_eq!(a.ask(0).unwrap(), window(0, 50));
    assert_eq!(b.ask(0).unwrap(), window(50, 30));
    assert_eq!(c.ask(0).unwrap(), window(80, 20));
    assert_eq!(lone.ask(0).unwrap(), Reply::Free, "alone on NPU 1");
}

/// The old schedule file's attack: flood it with entries so the victim's
/// window shrinks. Here an attacker's processes and devices are one entry
/// per granted device, weighted by the node, and its connections are capped.
#[test]
fn a_tenant_cannot_crowd_another_out() {
    let node = Node::new();
    let victim = node.tenant("victim", 50, "0");
    let region = node.allocation(
        "attacker",
        "CUDA_DEVICE_SM_LIMIT=50\nHAMI_CORE_NPU_DEVICE_IDS=0\n",
    );
    let mut conns = Vec::new();
    let mut too_many = 0;
    for _ in 0..MAX_PER_CONTAINER + 20 {
        match Connection::open(node.arbiter.socket(), Some(&region)).unwrap() {
            (conn, Reply::Free) => conns.push(conn),
            (_, Reply::Refused(Refusal::TooMany)) => too_many += 1,
            (_, other) => panic!("{other:?}"),
        }
    }
    assert_eq!(conns.len(), MAX_PER_CONTAINER);
    assert_eq!(too_many, 20);
    for conn in &conns {
        conn.ask(0).unwrap();
    }
    // Devices it does not hold are refused, and the connection is closed.
    assert_eq!(
        conns[0].ask(1).unwrap(),
        Reply::Refused(Refusal::NotGranted)
    );
    assert!(conns[0].ask(0).is_err(), "closed after a refusal");
    // "attacker" < "victim": the victim holds the second half, all of it.
    assert_eq!(victim.ask(0).unwrap(), window(50, 50));
}

#[test]
fn a_file_that_is_no_allocations_region_is_not_an_identity() {
    let node = Node::new();
    node.tenant("victim", 50, "0");
    let outside = tempfile::tempfile().unwrap();
    assert_eq!(
        node.refused(Some(&outside)),
        Reply::Refused(Refusal::NotIdentified)
    );
    assert_eq!(node.refused(None), Reply::Refused(Refusal::BadMessage));
    // A container that planted a symlink to the victim's region as its own
    // (it can write its region directory) does not become the victim's
    // owner, and a FIFO planted there does not hang the lookup.
    let attacker = node.dir.path().join("attacker/region");
    std::fs::create_dir_all(&attacker).unwrap();
    std::fs::write(node.dir.path().join("attacker/limits.env"), "").unwrap();
    std::os::unix::fs::symlink(
        node.dir.path().join("victim").join(REGION_IN_ALLOCATION),
        attacker.join("vgpu.cache"),
    )
    .unwrap();
    let fifo = node.dir.path().join("fifo/region");
    std::fs::create_dir_all(&fifo).unwrap();
    let c = std::ffi::CString::new(fifo.join("vgpu.cache").as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo of a C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    let victim_region =
        std::fs::metadata(node.dir.path().join("victim").join(REGION_IN_ALLOCATION)).unwrap();
    for _ in 0..5 {
        assert_eq!(
            owner_of(node.dir.path(), (victim_region.dev(), victim_region.ino())).as_deref(),
            Some("victim")
        );
    }
}

#[test]
fn malformed_clients_leave_the_arbiter_serving() {
    let node = Node::new();
    let region = node.allocation("a", "CUDA_DEVICE_SM_LIMIT=40\nHAMI_CORE_NPU_DEVICE_IDS=3\n");
    // A wrong greeting, two descriptors, a short and a long question.
    let socket = node.arbiter.socket();
    let (conn, _) = Connection::open(socket, Some(&region)).unwrap();
    conn.send_with_fd(b"xy", None).unwrap();
    assert_eq!(conn.recv().unwrap(), Reply::Refused(Refusal::BadMessage));
    let raw = seqpacket().unwrap();
    let addr = address(socket).unwrap();
    // SAFETY: connect with a filled sockaddr_un.
    assert_eq!(
        unsafe {
            libc::connect(
                raw.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        },
        0
    );
    let bad = Connection(raw);
    bad.send_with_fd(b"HAMIARB0", Some(region.as_raw_fd()))
        .unwrap();
    assert_eq!(bad.recv().unwrap(), Reply::Refused(Refusal::BadMessage));
    let (conn, _) = Connection::open(socket, Some(&region)).unwrap();
    conn.send_with_fd(&[0u8; 40], None).unwrap();
    assert_eq!(conn.recv().unwrap(), Reply::Refused(Refusal::BadMessage));
    // Clients that vanish mid-greeting.
    for _ in 0..20 {
        drop(seqpacket().unwrap());
    }
    let good = node.connect(Some(&region));
    assert_eq!(good.ask(0).unwrap(), Reply::Free);
}

#[test]
fn a_departed_container_hands_its_window_over_at_once() {
    let node = Node::new();
    let a = node.tenant("a", 50, "0");
    let b = node.tenant("b", 50, "0");
    b.ask(0).unwrap();
    assert_eq!(a.ask(0).unwrap(), window(0, 50));
    drop(b);
    let deadline = Instant::now() + std::time::Duration::from_secs(2);
    while a.ask(0).unwrap() != Reply::Free {
        assert!(
            Instant::now() < deadline,
            "b's window outlived its last process"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn shares_and_devices_come_from_the_limits_file() {
    let parse = |text: &str| tenant_from_limits("t", &limits_file::parse(text).unwrap());
    assert_eq!(
        parse("CUDA_DEVICE_SM_LIMIT_0=30\nHAMI_CORE_NPU_DEVICE_IDS=4,6\n")
            .unwrap()
            .devices,
        vec![(4, Some(30)), (6, None)]
    );
    assert!(parse("CUDA_DEVICE_SM_LIMIT=30\n")
        .unwrap_err()
        .contains("HAMI_CORE_NPU_DEVICE_IDS"));
    assert!(parse("CUDA_DEVICE_SM_LIMIT=130\nHAMI_CORE_NPU_DEVICE_IDS=0\n").is_err());
    assert!(parse("HAMI_CORE_NPU_DEVICE_IDS=0,x\n").is_err());
}

#[test]
fn an_arbiter_directory_others_can_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let arbiter = arbiter_dir(dir.path());
    std::fs::create_dir(&arbiter).unwrap();
    std::fs::set_permissions(&arbiter, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(matches!(
        start(dir.path()),
        Err(ArbiterError::UnsafeDir { .. })
    ));
    std::fs::set_permissions(&arbiter, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(arbiter.join(npu_wire::SOCKET_FILE), "").unwrap();
    assert!(matches!(
        start(dir.path()),
        Err(ArbiterError::UnsafeDir { .. })
    ));
    std::fs::remove_file(arbiter.join(npu_wire::SOCKET_FILE)).unwrap();
    // An old socket from a previous run is replaced.
    drop(start(dir.path()).unwrap());
    start(dir.path()).unwrap();
}
