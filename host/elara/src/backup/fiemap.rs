//! FIEMAP (`FS_IOC_FIEMAP`): the physical extents of a file. Two reflink snapshots taken of the
//! same volume share the physical extents of every region the volume did not write in between
//! (a write to a shared extent is copied on write), so an incremental backup can tell unchanged
//! blocks without reading them.

use std::fs::File;
use std::os::fd::AsRawFd;

/// The extent is shared with another file (a reflink).
pub const SHARED: u32 = 0x2000;
/// Flags that make an extent's physical address meaningless for comparison.
const UNRELIABLE: u32 = 0x2 /* UNKNOWN */ | 0x4 /* DELALLOC */ | 0x8 /* ENCODED */ | 0x80 /* NOT_ALIGNED */ | 0x100 /* DATA_INLINE */ | 0x200 /* DATA_TAIL */;
const FLAG_SYNC: u32 = 0x1;
const LAST: u32 = 0x1;
/// `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const BATCH: usize = 512;

/// One extent: logical offset, physical offset, length, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct Request {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [RawExtent; BATCH],
}

/// Every extent of `file` (after syncing its dirty pages, so none is delayed).
pub fn extents(file: &File) -> std::io::Result<Vec<Extent>> {
    let mut out = vec![];
    let mut start = 0u64;
    loop {
        let mut req = Box::new(Request {
            start,
            length: u64::MAX - start,
            flags: FLAG_SYNC,
            mapped_extents: 0,
            extent_count: BATCH as u32,
            reserved: 0,
            extents: [RawExtent::default(); BATCH],
        });
        // SAFETY: FS_IOC_FIEMAP reads and fills a `struct fiemap` followed by `extent_count` extents,
        // which is exactly `Request`'s layout; the fd is open for the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut *req as *mut Request) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = req.mapped_extents as usize;
        if n == 0 {
            return Ok(out);
        }
        for e in &req.extents[..n] {
            out.push(Extent {
                logical: e.logical,
                physical: e.physical,
                length: e.length,
                flags: e.flags,
            });
        }
        let last = req.extents[n - 1];
        if last.flags & LAST != 0 {
            return Ok(out);
        }
        start = last.logical + last.length;
    }
}

/// Whether any extent is shared (the file is, at least partly, a reflink).
pub fn any_shared(ext: &[Extent]) -> bool {
    ext.iter().any(|e| e.flags & SHARED != 0)
}

/// The extents overlapping `[from, to)`, clipped to it, as (logical, physical, length) — `None` if
/// any of them cannot be compared (not shared, or of unknown/delayed/inline placement).
fn mapping(ext: &[Extent], from: u64, to: u64) -> Option<Vec<(u64, u64, u64)>> {
    let mut v = vec![];
    let i = ext.partition_point(|e| e.logical + e.length <= from);
    for e in &ext[i..] {
        if e.logical >= to {
            break;
        }
        if e.flags & UNRELIABLE != 0 || e.flags & SHARED == 0 {
            return None;
        }
        let s = e.logical.max(from);
        let t = (e.logical + e.length).min(to);
        let phys = e.physical + (s - e.logical);
        // Merge pieces contiguous both logically and physically (files may report them split).
        match v.last_mut() {
            Some((ls, lp, ll)) if *ls + *ll == s && *lp + *ll == phys => *ll += t - s,
            _ => v.push((s, phys, t - s)),
        }
    }
    Some(v)
}

/// Whether block `[from, to)` maps to the very same shared physical extents in both files (and has
/// holes at the same places): then its content is the same in both (a write in between would have
/// been copied elsewhere).
pub fn same_block(old: &[Extent], new: &[Extent], from: u64, to: u64) -> bool {
    match (mapping(old, from, to), mapping(new, from, to)) {
        // Equal lists: the same shared extents at the same offsets, and holes (zeros) elsewhere in both.
        (Some(a), Some(b)) => !a.is_empty() && a == b,
        _ => false,
    }
}
