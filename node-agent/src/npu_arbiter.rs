//! The NPU arbiter: the node agent hands out each container's time window on
//! an Ascend NPU, so no tenant writes anything another tenant reads.
//!
//! The earlier design had every container register in one node-wide file
//! that all of them mapped read-write: a tenant could flood it with entries
//! (shrinking everyone else's window) or truncate it (killing the others with
//! SIGBUS). Here a container only talks to the arbiter over a socket in a
//! root-owned directory mounted read-only, and proves who it is with its own
//! shared-region file (see [`hami_region::npu_wire`]). Its weight and its
//! physical devices come from the node's limits file for that allocation,
//! never from the container, and it holds at most one entry per granted
//! device however many processes or connections it opens.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hami_api::{keys, limits_file};
use hami_region::npu_wire::{
    self, address, send, seqpacket, Refusal, Reply, ASK_LEN, HELLO, PERIOD_NS,
};
use hami_region::safe_read::{identity_beneath, read_beneath, Size};
use thiserror::Error;

/// A container that has not asked for this long is not running on the NPU.
const EXPIRY_NS: u64 = 3 * PERIOD_NS;
/// Connections node-wide, and from one container (each process holds one).
pub const MAX_CONNECTIONS: usize = 1024;
pub const MAX_PER_CONTAINER: usize = 128;
const REGION_IN_ALLOCATION: &str = "region/vgpu.cache";

#[derive(Debug, Error)]
pub enum ArbiterError {
    #[error("NPU arbiter directory {path}: {reason}")]
    UnsafeDir { path: PathBuf, reason: String },
    #[error("NPU arbiter {path}: {context}: {source}")]
    Io {
        path: PathBuf,
        context: &'static str,
        source: io::Error,
    },
}

/// What the node says about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tenant {
    /// The allocation's directory name.
    name: String,
    /// Per container-local device: (physical NPU, share in percent or none).
    devices: Vec<(u32, Option<u32>)>,
}

#[derive(Default)]
struct Table {
    /// Physical NPU → container → (share, last ask in ns since start).
    active: HashMap<u32, BTreeMap<String, (u32, u64)>>,
    connections: HashMap<String, usize>,
}

impl Table {
    fn ask(&mut self, tenant: &str, device: u32, share: u32, now: u64) -> Reply {
        let on_device = self.active.entry(device).or_default();
        on_device.insert(tenant.to_owned(), (share, now));
        on_device.retain(|_, (_, last)| now.saturating_sub(*last) <= EXPIRY_NS);
        window(on_device, tenant)
    }

    fn depart(&mut self, tenant: &str) {
        for on_device in self.active.values_mut() {
            on_device.remove(tenant);
        }
    }
}

/// Consecutive windows in name order, proportional to the shares and
/// together filling the period (an idle gap would let the next owner queue
/// work that runs on into someone else's window).
fn window(on_device: &BTreeMap<String, (u32, u64)>, tenant: &str) -> Reply {
    if on_device.len() < 2 {
        return Reply::Free;
    }
    let total: u64 = on_device
        .values()
        .map(|(w, _)| u64::from((*w).clamp(1, 100)))
        .sum();
    let mut start = 0;
    for (name, (w, _)) in on_device {
        let len = PERIOD_NS * u64::from((*w).clamp(1, 100)) / total;
        if name == tenant {
            return Reply::Window {
                start_ns: start,
                len_ns: len.max(1),
            };
        }
        start += len;
    }
    Reply::Free
}

struct Shared {
    state_dir: PathBuf,
    table: Mutex<Table>,
    connections: AtomicUsize,
    epoch: Instant,
}

/// A running arbiter; dropping it stops accepting (open connections finish).
pub struct Arbiter {
    socket: PathBuf,
    listener: Arc<OwnedFd>,
}

impl Arbiter {
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Arbiter {
    fn drop(&mut self) {
        // Wakes the accept loop (accept then fails with EINVAL).
        // SAFETY: shutdown on a socket we own.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// The arbiter's directory beneath the state directory (the CDI specs and
/// the hook mount it read-only into every Ascend container).
pub fn arbiter_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(hami_cdi::builder::ARBITER_DIR)
}

/// Listens at `<state_dir>/.arbiter/npu.sock`.
pub fn start(state_dir: &Path) -> Result<Arbiter, ArbiterError> {
    let dir = arbiter_dir(state_dir);
    let io_err = |path: &Path, context| {
        let path = path.to_path_buf();
        move |source| ArbiterError::Io {
            path,
            context,
            source,
        }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)
        .map_err(io_err(&dir, "create"))?;
    let meta = std::fs::symlink_metadata(&dir).map_err(io_err(&dir, "stat"))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let unsafe_dir = |reason: String| ArbiterError::UnsafeDir {
        path: dir.clone(),
        reason,
    };
    if !meta.is_dir() {
        return Err(unsafe_dir("not a directory (a symlink?)".into()));
    }
    if meta.uid() != me {
        return Err(unsafe_dir(format!("owned by uid {}, not {me}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "mode {:o} lets others replace the socket",
            meta.mode() & 0o7777
        )));
    }
    let socket = dir.join(npu_wire::SOCKET_FILE);
    match std::fs::symlink_metadata(&socket) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(&socket).map_err(io_err(&socket, "remove the old socket"))?;
        }
        Ok(_) => {
            return Err(ArbiterError::UnsafeDir {
                path: socket,
                reason: "exists and is not a socket".into(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&socket, "stat")(e)),
    }
    let listener = seqpacket().map_err(io_err(&socket, "socket"))?;
    let addr = address(&socket).map_err(io_err(&socket, "address"))?;
    // SAFETY: bind/listen on our socket with a filled sockaddr_un.
    let bound = unsafe {
        libc::bind(
            listener.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if bound != 0 {
        return Err(io_err(&socket, "bind")(io::Error::last_os_error()));
    }
    // Processes of any uid in any container connect.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
        .map_err(io_err(&socket, "chmod"))?;
    // SAFETY: as above.
    if unsafe { libc::listen(listener.as_raw_fd(), 128) } != 0 {
        return Err(io_err(&socket, "listen")(io::Error::last_os_error()));
    }
    let listener = Arc::new(listener);
    let shared = Arc::new(Shared {
        state_dir: state_dir.to_path_buf(),
        table: Mutex::new(Table::default()),
        connections: AtomicUsize::new(0),
        epoch: Instant::now(),
    });
    let accepting = listener.clone();
    std::thread::Builder::new()
        .name("npu-arbiter".into())
        .spawn(move || accept_loop(&accepting, &shared))
        .map_err(io_err(&socket, "spawn"))?;
    tracing::info!(socket = %socket.display(), "NPU arbiter listening");
    Ok(Arbiter { socket, listener })
}

fn accept_loop(listener: &OwnedFd, shared: &Arc<Shared>) {
    loop {
        // SAFETY: accept4 on our listening socket; the fd is owned below.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR | libc::ECONNABORTED | libc::EMFILE | libc::ENFILE) => {
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    continue;
                }
                _ => {
                    tracing::info!("NPU arbiter stops accepting: {e}");
                    return;
                }
            }
        }
        // SAFETY: a fresh fd.
        let conn = unsafe { OwnedFd::from_raw_fd(fd) };
        if shared.connections.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            let _ = send(&conn, &Reply::Refused(Refusal::TooMany).encode(), None);
            continue;
        }
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("npu-arbiter-conn".into())
            .stack_size(128 << 10)
            .spawn(move || {
                serve(&conn, &shared);
                shared.connections.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            tracing::warn!("NPU arbiter: cannot serve a connection: {e}");
        }
    }
}

/// Receives the hello: its bytes and the one descriptor attached to it.
fn recv_hello(conn: &OwnedFd) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = [0u8; 64];
    // Room for a few descriptors, so that extra ones are received (and
    // closed) rather than truncated away silently.
    let mut control = [0u8; 128];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    // SAFETY: recvmsg into the buffers above.
    let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control buffer the kernel filled, as CMSG_* define.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((buf[..n as usize].to_vec(), fds))
}

fn serve(conn: &OwnedFd, shared: &Shared) {
    let tenant = match hello(conn, shared) {
        Ok(t) => t,
        Err(refusal) => {
            let _ = send(conn, &Reply::Refused(refusal).encode(), None);
            return;
        }
    };
    {
        let mut table = shared.table.lock().unwrap_or_else(|p| p.into_inner());
        let count = table.connections.entry(tenant.name.clone()).or_default();
        if *count >= MAX_PER_CONTAINER {
            drop(table);
            tracing::warn!(container = %tenant.name, "NPU arbiter: too many connections from one container");
            let _ = send(conn, &Reply::Refused(Refusal::TooMany).encode(), None);
            return;
        }
        *count += 1;
    }
    if send(conn, &Reply::Free.encode(), None).is_ok() {
        asks(conn, shared, &tenant);
    }
    let mut table = shared.table.lock().unwrap_or_else(|p| p.into_inner());
    let last = match table.connections.get_mut(&tenant.name) {
        Some(n) => {
            *n -= 1;
            *n == 0
        }
        None => true,
    };
    if last {
        // Its last process is gone: its time goes to the others now, not
        // when its heartbeat expires.
        table.connections.remove(&tenant.name);
        table.depart(&tenant.name);
    }
}

fn asks(conn: &OwnedFd, shared: &Shared, tenant: &Tenant) {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: recv into a live buffer.
        let n = unsafe { libc::recv(conn.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            return;
        }
        let reply = if n as usize != ASK_LEN {
            Reply::Refused(Refusal::BadMessage)
        } else {
            let local = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
            match tenant.devices.get(local) {
                None => Reply::Refused(Refusal::NotGranted),
                Some((_, None)) => Reply::Free,
                Some((physical, Some(share))) => {
                    let now = shared.epoch.elapsed().as_nanos() as u64;
                    let mut table = shared.table.lock().unwrap_or_else(|p| p.into_inner());
                    table.ask(&tenant.name, *physical, *share, now)
                }
            }
        };
        let refused = matches!(reply, Reply::Refused(_));
        if send(conn, &reply.encode(), None).is_err() || refused {
            return;
        }
    }
}

fn hello(conn: &OwnedFd, shared: &Shared) -> Result<Tenant, Refusal> {
    let (bytes, fds) = recv_hello(conn).map_err(|_| Refusal::BadMessage)?;
    if bytes != HELLO || fds.len() != 1 {
        return Err(Refusal::BadMessage);
    }
    let file = std::fs::File::from(fds.into_iter().next().expect("one fd"));
    let meta = file.metadata().map_err(|_| Refusal::NotIdentified)?;
    if !meta.is_file() {
        return Err(Refusal::NotIdentified);
    }
    let name = owner_of(&shared.state_dir, (meta.dev(), meta.ino())).ok_or_else(|| {
        tracing::warn!(
            "NPU arbiter: a client showed a file that is no allocation's region (dev {} ino {})",
            meta.dev(),
            meta.ino()
        );
        Refusal::NotIdentified
    })?;
    tenant(&shared.state_dir, &name).map_err(|e| {
        tracing::warn!(container = %name, "NPU arbiter: {e}");
        Refusal::NoLimits
    })
}

/// The allocation whose region has this identity. Found without following
/// anything the containers could have planted in their region directories.
fn owner_of(state_dir: &Path, identity: (u64, u64)) -> Option<String> {
    let entries = std::fs::read_dir(state_dir).ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let region = Path::new(name).join(REGION_IN_ALLOCATION);
        if identity_beneath(state_dir, &region).ok() == Some(identity) {
            return Some(name.to_owned());
        }
    }
    None
}

fn tenant(state_dir: &Path, name: &str) -> Result<Tenant, String> {
    let relative = Path::new(name).join(hami_cdi::builder::LIMITS_FILE);
    let bytes = read_beneath(
        state_dir,
        &relative,
        Size::AtMost(limits_file::MAX_LIMITS_FILE_BYTES as u64),
    )
    .map_err(|e| format!("{}: {e}", relative.display()))?;
    let text = String::from_utf8(bytes).map_err(|_| "limits file is not UTF-8".to_owned())?;
    let limits = limits_file::parse(&text).map_err(|e| e.to_string())?;
    tenant_from_limits(name, &limits)
}

fn tenant_from_limits(name: &str, limits: &BTreeMap<String, String>) -> Result<Tenant, String> {
    let percent = |key: &str| -> Result<Option<u32>, String> {
        match limits.get(key) {
            None => Ok(None),
            Some(v) => {
                let p: u32 = v
                    .parse()
                    .ok()
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| format!("{key}={v:?} is not a percentage"))?;
                Ok((p != 0 && p != 100).then_some(p))
            }
        }
    };
    let all = percent(keys::ENV_SM_LIMIT)?;
    let ids: Vec<u32> = match limits.get(keys::ENV_NPU_DEVICE_IDS) {
        Some(v) => v
            .split(',')
            .map(|id| {
                id.parse()
                    .map_err(|_| format!("{}={v:?}: not device numbers", keys::ENV_NPU_DEVICE_IDS))
            })
            .collect::<Result<_, _>>()?,
        None => {
            return Err(format!(
                "no {} in the limits file",
                keys::ENV_NPU_DEVICE_IDS
            ))
        }
    };
    if ids.len() > hami_region::MAX_DEVICES {
        return Err(format!("more than {} devices", hami_region::MAX_DEVICES));
    }
    let devices = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| Ok((id, percent(&keys::env_sm_limit_for(i))?.or(all))))
        .collect::<Result<_, String>>()?;
    Ok(Tenant {
        name: name.to_owned(),
        devices,
    })
}

/// A client speaking the wire format as hami-core does (for tests and tools).
pub mod client {
    use super::*;

    pub struct Connection(pub(super) OwnedFd);

    impl Connection {
        /// Connects and shows `region` (any open file: the arbiter decides).
        pub fn open(socket: &Path, region: Option<&std::fs::File>) -> io::Result<(Self, Reply)> {
            let conn = Connection(npu_wire::connect(socket)?);
            conn.send_with_fd(&HELLO, region.map(|f| f.as_raw_fd()))?;
            let reply = conn.recv()?;
            Ok((conn, reply))
        }

        pub fn send_with_fd(&self, bytes: &[u8], fd: Option<RawFd>) -> io::Result<()> {
            npu_wire::send(&self.0, bytes, fd)
        }

        pub fn ask(&self, device: u32) -> io::Result<Reply> {
            self.send_with_fd(&device.to_le_bytes(), None)?;
            self.recv()
        }

        pub fn recv(&self) -> io::Result<Reply> {
            npu_wire::receive(&self.0)
        }
    }
}

#[cfg(test)]
mod tests;
