//! A reader for `/proc/self/mountinfo` (see proc(5)): which filesystem is mounted where, from
//! which source. The attach layer uses it to make `attach` idempotent and `detach` exact.
//!
//! A line looks like
//! `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`:
//! mount id, parent id, `major:minor`, root of the mount inside its filesystem, mount point,
//! per-mount options, zero or more optional fields, a `-` separator, filesystem type, source and
//! super-block options. Paths escape space, tab, newline and backslash as `\ooo` octal.

use std::path::{Path, PathBuf};

use super::AttachError;

/// One mount, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The kernel's id of this mount: unique while it exists, so "the mount Elara made here".
    pub id: u64,
    /// The mount's `major:minor` device numbers.
    pub dev: (u32, u32),
    /// The directory of the source filesystem that is mounted (`/` unless a bind mount of a subtree).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Filesystem type, e.g. `ext4`, `xfs`, `fuse.s3fs`, `nfs4`.
    pub fs_type: String,
    /// Mount source, e.g. `/dev/loop3`, `server:/export`, `s3fs`.
    pub source: String,
    /// The per-mount options (`rw,nosuid,nodev,relatime`).
    pub options: String,
}

/// Every mount in this process's mount namespace, in mount order (later entries stack on earlier ones).
pub fn read() -> Result<Vec<MountEntry>, AttachError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|e| AttachError::io("read", path, e))?;
    Ok(parse(&text))
}

/// The top-most mount at exactly `mount_point`, if any.
pub fn find(mount_point: &Path) -> Result<Option<MountEntry>, AttachError> {
    Ok(read()?.into_iter().rev().find(|m| m.mount_point == mount_point))
}

/// Whether a FUSE file system (s3fs, a helper's export or NFS client) is mounted at `path`.
pub fn is_fuse(path: &Path) -> Result<bool, AttachError> {
    Ok(find(path)?.is_some_and(|m| m.fs_type.starts_with("fuse")))
}

/// Parse mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let id = l.next()?.parse().ok()?;
    let _parent_id = l.next()?;
    let (major, minor) = l.next()?.split_once(':')?;
    let root = l.next()?;
    let mount_point = l.next()?;
    let options = l.next()?;
    let mut r = right.split(' ');
    let fs_type = r.next()?;
    let source = r.next()?;
    Some(MountEntry {
        id,
        options: options.to_string(),
        dev: (major.parse().ok()?, minor.parse().ok()?),
        root: PathBuf::from(unescape(root)),
        mount_point: PathBuf::from(unescape(mount_point)),
        fs_type: fs_type.to_string(),
        source: unescape(source),
    })
}

/// Undo the kernel's `\ooo` octal escapes (`\040` is a space).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') as u32 * 64 + (bytes[i + 2] - b'0') as u32 * 8 + (bytes[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a process in another mount namespace (a container) has the filesystem mounted at
/// `mountpoint` bind-mounted somewhere else. Copies propagated to the same path (slave namespaces
/// of system services) do not count. A process that is gone holds nothing; one whose mounts
/// cannot be read (EACCES, a locked-down /proc) counts as in use, since it may hold the volume.
/// A process whose namespace link alone is unreadable (as `/proc/1/ns/mnt` is in some sandboxes)
/// is judged by its mountinfo, without the once-per-namespace shortcut.
pub fn used_by_another_namespace(mountpoint: &Path) -> std::io::Result<bool> {
    let ours = read().map_err(std::io::Error::other)?;
    let Some(entry) = ours.iter().rev().find(|m| m.mount_point == mountpoint) else {
        // Not mounted in our namespace: nothing of ours for a container to hold.
        return Ok(false);
    };
    let own_ns = std::fs::read_link("/proc/self/ns/mnt")?;
    let mut seen = std::collections::BTreeSet::new();
    seen.insert(own_ns);
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH);
    for p in std::fs::read_dir("/proc")?.flatten() {
        let pid = p.file_name();
        if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        match std::fs::read_link(p.path().join("ns/mnt")) {
            Ok(ns) if !seen.insert(ns.clone()) => continue,
            Ok(_) => {}
            Err(e) if gone(&e) => continue,
            Err(_) => {}
        }
        let text = match std::fs::read_to_string(p.path().join("mountinfo")) {
            Ok(t) => t,
            Err(e) if gone(&e) => continue,
            Err(e) => {
                tracing::debug!(pid = %pid.to_string_lossy(), "mounts unreadable ({e}): counted as using {}", mountpoint.display());
                return Ok(true);
            }
        };
        let holds = parse(&text)
            .iter()
            .any(|m| m.dev == entry.dev && m.root.starts_with(&entry.root) && m.mount_point != entry.mount_point);
        if holds {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_with_optional_fields_and_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt\\0402 rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue\n\
                    40 22 0:50 / /var/lib/elara/mounts/v1 rw,nosuid,nodev - fuse.s3fs s3fs rw,user_id=0\n\
                    garbage\n";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].id, 36);
        assert_eq!(m[0].options, "rw,noatime");
        assert_eq!(m[0].dev, (98, 0));
        assert_eq!(m[0].root, PathBuf::from("/mnt1"));
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt 2"));
        assert_eq!(m[0].fs_type, "ext3");
        assert_eq!(m[0].source, "/dev/root");
        assert_eq!(m[1].fs_type, "fuse.s3fs");
        assert_eq!(m[1].mount_point, PathBuf::from("/var/lib/elara/mounts/v1"));
    }

    #[test]
    fn unescape_leaves_plain_backslashes() {
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("a\\9"), "a\\9");
        assert_eq!(unescape("x\\04"), "x\\04");
    }
}
