//! Paths a driver names, opened once and used by fd. Checking a path and then handing its *name*
//! to `losetup` or `mount --bind` is a race a driver can win: calls run concurrently and a guest
//! can make relative symlinks, so between the check and the command `img` can become a symlink to
//! `../../../../dev/sda` (or a directory one to `/`). Here a path is opened beneath the pool dir
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` (no `..` out, no
//! symlink anywhere on the way), the open file is checked (a regular file or a directory, on the
//! pool's own file system), and the kernel gets that very file: the loop device is configured on
//! the fd (`LOOP_CONFIGURE`), a bind mount's source is the fd (`/proc/self/fd/N`).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

use super::{AttachError, Result};

/// What a driver's path must name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Directory,
}

/// A driver's path, opened beneath the pool dir: the fd, and the path it was opened at (for the
/// record and for messages; never opened again by it).
pub struct Opened {
    pub fd: OwnedFd,
    pub path: PathBuf,
}

/// Open `rel` beneath `root` as `kind`: relative, no `..` out, no symlinks, on `root`'s file
/// system. `writable` opens a file read-write (a directory is opened `O_PATH`).
pub fn open(root: &Path, rel: &str, field: &'static str, kind: Kind, writable: bool) -> Result<Opened> {
    let bad = |reason: String| AttachError::BadConnection { field, reason };
    if rel.is_empty() || Path::new(rel).is_absolute() {
        return Err(bad(format!("{rel:?} must be a relative path inside the pool dir")));
    }
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| AttachError::io("open", root, e.into()))?;
    // openat2 refuses flags O_PATH does not take (O_NOCTTY among them) with EINVAL.
    let flags = match (kind, writable) {
        (Kind::Directory, _) => OFlag::O_PATH | OFlag::O_DIRECTORY,
        (Kind::File, true) => OFlag::O_RDWR | OFlag::O_NOCTTY,
        (Kind::File, false) => OFlag::O_RDONLY | OFlag::O_NOCTTY,
    } | OFlag::O_CLOEXEC;
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(&root_fd, rel, how).map_err(|e| match e {
        nix::Error::ELOOP => bad(format!("{rel:?} is or passes through a symlink")),
        nix::Error::EXDEV => bad(format!("{rel:?} leads outside the pool dir")),
        nix::Error::ENOTDIR if kind == Kind::Directory => bad(format!("{rel:?} is not a directory")),
        e => AttachError::io("open", &root.join(rel), e.into()),
    })?;
    let file = std::fs::File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| AttachError::io("stat", &root.join(rel), e))?;
    let root_meta = std::fs::metadata(root).map_err(|e| AttachError::io("stat", root, e))?;
    match kind {
        Kind::File if !meta.is_file() => return Err(bad(format!("{rel:?} is not a regular file"))),
        Kind::Directory if !meta.is_dir() => {
            return Err(bad(format!("{rel:?} is not a directory")));
        }
        _ => {}
    }
    if meta.dev() != root_meta.dev() {
        return Err(bad(format!(
            "{rel:?} is on another file system than the pool dir (a mount inside it?)"
        )));
    }
    let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap_or_else(|_| root.join(rel));
    Ok(Opened { fd: file.into(), path })
}

/// The `/proc/self/fd/N` name of an fd: what `mount(2)` resolves to exactly that open file.
pub fn proc_path(fd: &impl AsFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
}

/// A free loop device configured on `file` itself (`LOOP_CONFIGURE`, kernel 5.8+); returns its
/// path. The caller serialises calls (two at once could pick the same free device; the loser
/// sees EBUSY and tries the next).
pub fn loop_configure(file: &OwnedFd, read_only: bool) -> Result<PathBuf> {
    use linux_raw_sys::loop_device::{LO_FLAGS_READ_ONLY, LOOP_CONFIGURE, LOOP_CTL_GET_FREE, loop_config};
    let control = Path::new("/dev/loop-control");
    let ctl = nix::fcntl::open(control, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| AttachError::io("open", control, e.into()))?;
    for _ in 0..8 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(AttachError::io(
                "find a free loop device with",
                control,
                std::io::Error::last_os_error(),
            ));
        }
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let flags = if read_only { OFlag::O_RDONLY } else { OFlag::O_RDWR };
        let loop_fd = nix::fcntl::open(&dev, flags | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| AttachError::io("open", &dev, e.into()))?;
        // SAFETY: loop_config is plain old data; all-zero is its documented default.
        let mut cfg: loop_config = unsafe { std::mem::zeroed() };
        cfg.fd = file.as_raw_fd() as u32;
        if read_only {
            cfg.info.lo_flags = LO_FLAGS_READ_ONLY as u32;
        }
        // SAFETY: LOOP_CONFIGURE reads a loop_config that lives across the call.
        let rc = unsafe { libc::ioctl(loop_fd.as_raw_fd(), LOOP_CONFIGURE as _, &cfg as *const loop_config) };
        if rc == 0 {
            return Ok(dev);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(AttachError::io("configure", &dev, err));
        }
    }
    Err(AttachError::Helper {
        program: "loop".into(),
        reason: "every free loop device was taken while configuring one; retry".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_dotdot_and_wrong_kinds_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("ok.img"), b"x").unwrap();
        std::fs::create_dir(root.join("d")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("ok.img", root.join("rel")).unwrap();
        std::os::unix::fs::symlink("/", root.join("slash")).unwrap();
        std::os::unix::fs::symlink(".", root.join("dotlink")).unwrap();
        assert!(open(root, "ok.img", "p", Kind::File, false).is_ok());
        assert!(open(root, "d", "p", Kind::Directory, false).is_ok());
        for (rel, kind) in [
            ("", Kind::File),
            ("/etc/passwd", Kind::File),
            ("../x", Kind::File),
            ("d/../../x", Kind::File),
            ("abs", Kind::File),
            ("rel", Kind::File),
            ("slash", Kind::Directory),
            ("dotlink/ok.img", Kind::File),
            ("d", Kind::File),
            ("ok.img", Kind::Directory),
        ] {
            let err = open(root, rel, "p", kind, false)
                .err()
                .unwrap_or_else(|| panic!("{rel} was opened"));
            assert!(matches!(err, AttachError::BadConnection { .. }), "{rel}: {err}");
        }
    }
}
