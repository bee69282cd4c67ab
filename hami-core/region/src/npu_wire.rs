//! The NPU arbiter's wire format, shared by hami-core (the client, in every
//! container) and hami-node (the arbiter, on the host).
//!
//! Containers time-slice an NPU through the node agent, not through a file
//! they all write: a shared writable file let one tenant flood the schedule
//! or truncate it under the others. The socket is `SOCK_SEQPACKET`, so every
//! message arrives whole or not at all, and every message has a fixed size.
//!
//! 1. The client connects and sends [`HELLO`] with its shared-region file
//!    attached (`SCM_RIGHTS`). The arbiter looks the file's identity up under
//!    the node's state directory: the allocation directory holding it names
//!    the container, and that allocation's limits file (written by the node)
//!    gives its shares and physical devices. A container cannot present
//!    another tenant's region, because it cannot open one. The arbiter
//!    answers with a [`Reply`]: `Free` means accepted.
//! 2. Before launching on a device the client sends the container-local
//!    device index (u32, little endian). That is the container's heartbeat,
//!    and the arbiter answers with its window in each [`PERIOD_NS`] period,
//!    or `Free` when nobody else is active on that physical device.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The socket's name in the arbiter directory.
pub const SOCKET_FILE: &str = "npu.sock";
/// The first message; the region file travels with it.
pub const HELLO: [u8; 8] = *b"HAMIARB1";
/// A launch question: the container-local device index.
pub const ASK_LEN: usize = 4;
/// Every answer.
pub const REPLY_LEN: usize = 24;
/// The slicing period; windows are offsets into `CLOCK_MONOTONIC % PERIOD_NS`.
pub const PERIOD_NS: u64 = 100_000_000;

/// Why the arbiter refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Refusal {
    /// The attached file is no allocation's region on this node.
    NotIdentified = 1,
    /// The container asked about a device its allocation does not hold.
    NotGranted = 2,
    /// Too many connections (node-wide or from this container).
    TooMany = 3,
    /// A message of the wrong size or content.
    BadMessage = 4,
    /// The allocation's limits file could not be read.
    NoLimits = 5,
}

impl Refusal {
    fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => Self::NotIdentified,
            2 => Self::NotGranted,
            3 => Self::TooMany,
            4 => Self::BadMessage,
            5 => Self::NoLimits,
            _ => return None,
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::NotIdentified => "this container's region is no allocation of this node",
            Self::NotGranted => "the device is not in this container's allocation",
            Self::TooMany => "too many connections",
            Self::BadMessage => "malformed message",
            Self::NoLimits => "the allocation's limits file is unreadable",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Launch only while `CLOCK_MONOTONIC % PERIOD_NS` is in `[start, start + len)`.
    Window {
        start_ns: u64,
        len_ns: u64,
    },
    /// Nothing to share: launch now.
    Free,
    Refused(Refusal),
}

impl Reply {
    pub fn encode(self) -> [u8; REPLY_LEN] {
        let (tag, code, start, len) = match self {
            Reply::Window { start_ns, len_ns } => (1u32, 0u32, start_ns, len_ns),
            Reply::Free => (2, 0, 0, 0),
            Reply::Refused(r) => (3, r as u32, 0, 0),
        };
        let mut out = [0u8; REPLY_LEN];
        out[0..4].copy_from_slice(&tag.to_le_bytes());
        out[4..8].copy_from_slice(&code.to_le_bytes());
        out[8..16].copy_from_slice(&start.to_le_bytes());
        out[16..24].copy_from_slice(&len.to_le_bytes());
        out
    }

    /// None for anything that is not a well-formed answer (a window must lie
    /// inside the period).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != REPLY_LEN {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
        match u32_at(0) {
            1 => {
                let (start_ns, len_ns) = (u64_at(8), u64_at(16));
                (len_ns > 0 && start_ns.checked_add(len_ns)? <= PERIOD_NS)
                    .then_some(Reply::Window { start_ns, len_ns })
            }
            2 => Some(Reply::Free),
            3 => Refusal::from_code(u32_at(4)).map(Reply::Refused),
            _ => None,
        }
    }
}

/// A `SOCK_SEQPACKET` unix socket, close-on-exec.
pub fn seqpacket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `path` as a unix socket address.
pub fn address(path: &Path) -> io::Result<libc::sockaddr_un> {
    // SAFETY: sockaddr_un is plain bytes; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long for a unix socket",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(addr)
}

/// A new seqpacket socket connected to `path`.
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket()?;
    let addr = address(path)?;
    // SAFETY: connect with a filled sockaddr_un.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sends one message, with `attach` passed along (`SCM_RIGHTS`) if given.
pub fn send(fd: &OwnedFd, bytes: &[u8], attach: Option<RawFd>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    let mut control = [0u8; 64];
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(attach) = attach {
        // SAFETY: one SCM_RIGHTS header in a buffer large enough for it.
        unsafe {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            libc::CMSG_DATA(cmsg)
                .cast::<RawFd>()
                .write_unaligned(attach);
        }
    }
    // SAFETY: sendmsg of the message above.
    if unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one answer; anything that is not one (a closed peer included)
/// is `InvalidData`.
pub fn receive(fd: &OwnedFd) -> io::Result<Reply> {
    let mut buf = [0u8; REPLY_LEN];
    // SAFETY: recv into a live buffer.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Reply::decode(&buf[..n as usize]).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "not an arbiter answer (the connection closed?)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_and_nonsense_is_rejected() {
        for r in [
            Reply::Window {
                start_ns: 50_000_000,
                len_ns: 30_000_000,
            },
            Reply::Free,
            Reply::Refused(Refusal::NotGranted),
        ] {
            assert_eq!(Reply::decode(&r.encode()), Some(r));
        }
        let past_the_period = Reply::Window {
            start_ns: 90_000_000,
            len_ns: 20_000_000,
        };
        assert_eq!(Reply::decode(&past_the_period.encode()), None);
        assert_eq!(Reply::decode(&[0u8; REPLY_LEN]), None);
        assert_eq!(Reply::decode(&[2u8; 3]), None);
        let mut unknown = Reply::Refused(Refusal::TooMany).encode();
        unknown[4] = 99;
        assert_eq!(Reply::decode(&unknown), None);
    }
}
