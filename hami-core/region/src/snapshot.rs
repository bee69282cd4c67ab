//! A read-only copy of a region, for the node agent's monitor: the file is
//! read (never mapped, never locked) and validated before anything in it is
//! believed. A truncated, foreign or corrupt file is an error naming what is
//! wrong, never a panic: the monitor reads files written by containers.

use std::mem::{offset_of, size_of};
use std::path::Path;

use crate::layout::{
    Header, Limits, Shared, Slot, FILE_SIZE, MAGIC, MAX_SLOTS, SHARED_OFFSET, SLOTS_OFFSET, VERSION,
};
use crate::{RegionError, MAX_DEVICES};

/// What one container's region says, at the moment it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub limits: Limits,
    /// Bytes in use per device (the exact totals the region keeps).
    pub used_bytes: [u64; MAX_DEVICES],
    /// Processes holding a slot.
    pub processes: u32,
    /// Kernel launches over all live slots.
    pub launches: u64,
    /// Times a dead lock owner was recovered from.
    pub recoveries: u64,
    /// The live processes as the driver names them: each slot's host pid
    /// where hami-core learned it, else its own pid (right without a pid
    /// namespace) — what the interposer's limiter uses too.
    pub pids: Vec<u32>,
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

impl Snapshot {
    /// Reads the region at `path`; its last component is never followed
    /// (see [`crate::safe_read`]).
    pub fn read(path: &Path) -> Result<Self, RegionError> {
        let parent = path.parent().unwrap_or(Path::new("."));
        let name = Path::new(path.file_name().unwrap_or_default());
        Self::read_beneath(parent, name)
    }

    /// Reads the region at `relative` beneath `root`, no symlink followed on
    /// the way: the node side's view of a file its container may replace.
    pub fn read_beneath(root: &Path, relative: &Path) -> Result<Self, RegionError> {
        let path = root.join(relative);
        let bytes = crate::safe_read::read_beneath(
            root,
            relative,
            crate::safe_read::Size::Exactly(FILE_SIZE as u64),
        )
        .map_err(|source| RegionError::Io {
            path: path.clone(),
            context: "reading",
            source,
        })?;
        Self::parse(&bytes).map_err(|reason| RegionError::Corrupt { path, reason })
    }

    /// Validates and decodes a region's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < FILE_SIZE {
            return Err(format!(
                "truncated: {} bytes, a region has {FILE_SIZE}",
                bytes.len()
            ));
        }
        if bytes[..8] != MAGIC {
            return Err("not a hami-core region (bad magic)".into());
        }
        let version = u32_at(bytes, offset_of!(Header, version));
        if version != VERSION {
            return Err(format!(
                "layout version {version}, this reader knows {VERSION}"
            ));
        }
        // SAFETY: Header is plain old data (integers and arrays), `bytes`
        // holds at least size_of::<Header>() bytes, and read_unaligned
        // copies it without alignment requirements.
        let header: Header = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Header>()) };
        if header.checksum != header.compute_checksum() {
            return Err("header checksum mismatch (the limits were changed or torn)".into());
        }
        if header.file_size != FILE_SIZE as u64
            || header.device_count as usize != MAX_DEVICES
            || header.slot_count as usize != MAX_SLOTS
        {
            return Err("header sizes do not match the layout".into());
        }
        let mut used_bytes = [0u64; MAX_DEVICES];
        let used_at = SHARED_OFFSET + offset_of!(Shared, device_used);
        for (i, u) in used_bytes.iter_mut().enumerate() {
            *u = u64_at(bytes, used_at + i * 8);
        }
        let recoveries = u64_at(bytes, SHARED_OFFSET + offset_of!(Shared, recoveries));
        let (mut processes, mut launches, mut pids) = (0u32, 0u64, Vec::new());
        for s in 0..MAX_SLOTS {
            let base = SLOTS_OFFSET + s * size_of::<Slot>();
            let pid = u32_at(bytes, base + offset_of!(Slot, pid));
            if pid != 0 {
                processes += 1;
                launches =
                    launches.saturating_add(u64_at(bytes, base + offset_of!(Slot, launches)));
                let host = u32_at(bytes, base + offset_of!(Slot, host_pid));
                pids.push(if host != 0 { host } else { pid });
            }
        }
        Ok(Self {
            limits: header.limits,
            used_bytes,
            processes,
            launches,
            recoveries,
            pids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Region;

    fn limits() -> Limits {
        let mut l = Limits::unlimited();
        l.memory_bytes[0] = 1 << 30;
        l.sm_percent[0] = 30;
        l
    }

    #[test]
    fn reads_what_a_writer_accounted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vgpu.cache");
        let region = Region::open_or_create(&path, &limits()).unwrap();
        {
            let g = region.lock();
            let slot = g.claim_slot(std::process::id(), 1).unwrap();
            g.reserve(slot, 0, 300 << 20, Some(1 << 30)).unwrap();
        }
        let snap = Snapshot::read(&path).unwrap();
        assert_eq!(snap.limits, limits());
        assert_eq!(snap.used_bytes[0], 300 << 20);
        assert_eq!(snap.processes, 1);
        assert_eq!(snap.pids, [std::process::id()]);
    }

    #[test]
    fn damaged_files_are_named_not_believed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vgpu.cache");
        drop(Region::open_or_create(&path, &limits()).unwrap());
        let good = std::fs::read(&path).unwrap();
        let mut cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..100].to_vec(), "truncated"),
            (Vec::new(), "truncated"),
            (vec![0u8; FILE_SIZE], "bad magic"),
        ];
        let mut torn = good.clone();
        torn[offset_of!(Header, limits)] ^= 0xff;
        cases.push((torn, "checksum"));
        let mut future = good.clone();
        future[offset_of!(Header, version)] = 9;
        cases.push((future, "layout version 9"));
        for (bytes, want) in cases {
            let e = Snapshot::parse(&bytes).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        let missing = Snapshot::read(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("nope"));
    }
}
