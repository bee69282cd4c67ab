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
