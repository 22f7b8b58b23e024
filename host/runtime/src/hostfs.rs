//! The `host` import: powers a driver borrows from the host, confined to its pool directory.
//!
//! Every path is relative to the pool dir: absolute paths and `..` are rejected up front, and
//! every access goes through a [`cap_std::fs::Dir`] opened on the pool dir, which refuses to
//! follow a symlink out of it. Blocking work runs on `spawn_blocking`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};

use crate::bindings::elara::driver::host::{self, CopyMethod, FsStats};
use crate::state::{ProgressFn, StoreState};
use crate::{DriverError, InvalidField};

/// A backend's pool directory, opened once.
pub(crate) struct PoolDir {
    pub(crate) path: PathBuf,
    dir: Dir,
    reflink: OnceLock<bool>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn invalid(field: &str, reason: impl Into<String>) -> DriverError {
    DriverError::Invalid(InvalidField {
        field: field.to_string(),
        reason: reason.into(),
    })
}

/// Check a guest-supplied path: relative, no `..`, not empty.
fn check_relative<'a>(field: &str, path: &'a str) -> Result<&'a Path, DriverError> {
    if path.is_empty() {
        return Err(invalid(field, "empty path"));
    }
    if path.contains('\0') {
        return Err(invalid(field, "path contains a NUL byte"));
    }
    let p = Path::new(path);
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(invalid(
                    field,
                    format!("`{path}`: `..` is not allowed; paths are relative to the pool directory"),
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(
                    field,
                    format!("`{path}`: absolute paths are not allowed; paths are relative to the pool directory"),
                ));
            }
        }
    }
    if p.components().all(|c| c == Component::CurDir) {
        return Err(invalid(field, "path names the pool directory itself, not a file"));
    }
    Ok(p)
}

/// Map an I/O error on `path` to the driver's error type.
fn io_error(field: &str, path: &str, e: io::Error) -> DriverError {
    match e.kind() {
        io::ErrorKind::NotFound => DriverError::NotFound(format!("{path}: no such file in the pool directory")),
        io::ErrorKind::AlreadyExists => DriverError::AlreadyExists(format!("{path} already exists")),
        io::ErrorKind::PermissionDenied => invalid(
            field,
            format!("`{path}`: {e} (a symlink may point outside the pool directory)"),
        ),
        _ => DriverError::Backend(format!("{path}: {e}")),
    }
}

fn ficlone(dst: &File, src: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source fd as its argument; both fds are open for the call.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Copy `[pos, end)` of `src` to the same offsets of `dst` in the kernel (`copy_file_range`: no
/// trip through user space, and a server-side or shared-extent copy where the filesystem can).
/// Returns where it stopped: `end`, or earlier if the kernel cannot copy between these files
/// (then the caller copies the rest itself).
/// `copied` hears the bytes of every step (64 MiB at most, so progress moves).
fn kernel_copy(src: &File, dst: &File, mut pos: u64, end: u64, copied: &mut dyn FnMut(u64)) -> io::Result<u64> {
    while pos < end {
        let (mut off_in, mut off_out) = (pos as libc::loff_t, pos as libc::loff_t);
        let want = ((end - pos) as usize).min(64 << 20);
        // SAFETY: both fds are open; the offsets are ours and the kernel updates them.
        let n = unsafe { libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), &mut off_out, want, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS) => Ok(pos),
                _ => Err(e),
            };
        }
        if n == 0 {
            return Ok(pos);
        }
        pos += n as u64;
        copied(n as u64);
    }
    Ok(pos)
}

/// Copy `src` into the empty `dst`, skipping holes (SEEK_DATA/SEEK_HOLE), then give `dst`
/// the same length. Data extents are copied by the kernel where it can (`copy_file_range`).
/// `progress` hears (bytes copied, bytes allocated to `src`) as the copy advances.
fn sparse_copy(src: &File, dst: &File, progress: Option<&ProgressFn>) -> io::Result<()> {
    let meta = src.metadata()?;
    let len = meta.len();
    let total = (meta.blocks() * 512).min(len);
    let mut done = 0u64;
    let mut copied = |n: u64| {
        done += n;
        if let Some(report) = progress {
            report(done.min(total), total);
        }
    };
    let fd = src.as_raw_fd();
    let mut buf = vec![];
    let mut off = 0u64;
    while off < len {
        // SAFETY: lseek on an open fd; the result is checked.
        let data = unsafe { libc::lseek(fd, off as libc::off_t, libc::SEEK_DATA) };
        let (start, end) = if data < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENXIO) => break,                                // only a hole remains
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => (off, len), // no hole support
                _ => return Err(e),
            }
        } else {
            let data = data as u64;
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
            (data, if hole < 0 { len } else { (hole as u64).min(len) })
        };
        let mut pos = kernel_copy(src, dst, start, end, &mut copied)?;
        if pos < end && buf.is_empty() {
            buf = vec![0u8; 1 << 20];
        }
        while pos < end {
            let want = ((end - pos) as usize).min(buf.len());
            let n = src.read_at(&mut buf[..want], pos)?;
            if n == 0 {
                break;
            }
            dst.write_all_at(&buf[..n], pos)?;
            pos += n as u64;
            copied(n as u64);
        }
        off = end.max(off + 1);
    }
    dst.set_len(len)?;
    Ok(())
}

impl PoolDir {
    /// Open (creating if missing) a pool directory.
    pub(crate) fn open(path: &Path) -> io::Result<PoolDir> {
        std::fs::create_dir_all(path)?;
        let dir = Dir::open_ambient_dir(path, ambient_authority())?;
        Ok(PoolDir {
            path: path.to_path_buf(),
            dir,
            reflink: OnceLock::new(),
        })
    }

    fn tmp_name(dst: &Path) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(".elara-tmp-{}-{n}", std::process::id());
        match dst.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.join(name),
            _ => PathBuf::from(name),
        }
    }

    /// Whether FICLONE works in this pool dir (probed once with two small files).
    fn reflink_supported(&self) -> bool {
        *self.reflink.get_or_init(|| {
            let a = Self::tmp_name(Path::new("x"));
            let b = Self::tmp_name(Path::new("x"));
            let probe = || -> io::Result<bool> {
                let fa = self.dir.create(&a)?.into_std();
                fa.write_all_at(&[0u8; 4096], 0)?;
                let fb = self.dir.create(&b)?.into_std();
                Ok(ficlone(&fb, &fa).is_ok())
            };
            let ok = probe().unwrap_or(false);
            let _ = self.dir.remove_file(&a);
            let _ = self.dir.remove_file(&b);
            ok
        })
    }

    /// statvfs of the pool dir.
    pub(crate) fn stats(&self) -> Result<FsStats, DriverError> {
        let st = nix::sys::statvfs::fstatvfs(&self.dir)
            .map_err(|e| DriverError::Backend(format!("statvfs of the pool directory: {e}")))?;
        let frsize = st.fragment_size() as u64;
        Ok(FsStats {
            total_bytes: st.blocks() as u64 * frsize,
            free_bytes: st.blocks_free() as u64 * frsize,
            available_bytes: st.blocks_available() as u64 * frsize,
            reflink: self.reflink_supported(),
        })
    }

    /// Reflink-or-copy `src` to a new `dst`; `dst` appears only when complete.
    /// Copy `src` to the new `dst` (reflink, else a sparse copy whose progress goes to `progress`).
    pub(crate) fn clone_file(
        &self,
        src: &str,
        dst: &str,
        progress: Option<&ProgressFn>,
    ) -> Result<CopyMethod, DriverError> {
        let src_p = check_relative("src", src)?;
        let dst_p = check_relative("dst", dst)?;
        match self.dir.symlink_metadata(dst_p) {
            Ok(_) => return Err(DriverError::AlreadyExists(format!("{dst} already exists"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("dst", dst, e)),
        }
        let src_f = self.dir.open(src_p).map_err(|e| io_error("src", src, e))?.into_std();
        let meta = src_f.metadata().map_err(|e| io_error("src", src, e))?;
        if !meta.is_file() {
            return Err(invalid("src", format!("`{src}` is not a regular file")));
        }
        let tmp = Self::tmp_name(dst_p);
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        let tmp_f = self
            .dir
            .open_with(&tmp, &opts)
            .map_err(|e| io_error("dst", dst, e))?
            .into_std();
        let result = (|| {
            let method = match ficlone(&tmp_f, &src_f) {
                Ok(()) => CopyMethod::Reflink,
                Err(_) => {
                    sparse_copy(&src_f, &tmp_f, progress)
                        .map_err(|e| DriverError::Backend(format!("copy {src} to {dst}: {e}")))?;
                    CopyMethod::Copy
                }
            };
            tmp_f
                .sync_all()
                .map_err(|e| DriverError::Backend(format!("sync {dst}: {e}")))?;
            // A hard link never replaces an existing file: `dst` must not exist.
            self.dir
                .hard_link(&tmp, &self.dir, dst_p)
                .map_err(|e| io_error("dst", dst, e))?;
            Ok(method)
        })();
        let _ = self.dir.remove_file(&tmp);
        result
    }

    /// st_blocks × 512 of a file.
    pub(crate) fn allocated_bytes(&self, path: &str) -> Result<u64, DriverError> {
        let p = check_relative("path", path)?;
        let f = self.dir.open(p).map_err(|e| io_error("path", path, e))?.into_std();
        let meta = f.metadata().map_err(|e| io_error("path", path, e))?;
        Ok(meta.blocks() * 512)
    }
}

impl StoreState {
    fn pool(&self) -> Result<Arc<PoolDir>, DriverError> {
        self.pool
            .clone()
            .ok_or_else(|| DriverError::Unavailable("no pool directory: this sandbox only answers `info`".to_string()))
    }
}

/// Run `f` on the pool dir on a blocking thread.
async fn blocking<T: Send + 'static>(
    pool: Result<Arc<PoolDir>, DriverError>,
    f: impl FnOnce(&PoolDir) -> Result<T, DriverError> + Send + 'static,
) -> wasmtime::Result<Result<T, DriverError>> {
    let pool = match pool {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    Ok(tokio::task::spawn_blocking(move || f(&pool)).await?)
}

impl host::Host for StoreState {
    async fn pool_stats(&mut self) -> wasmtime::Result<Result<FsStats, DriverError>> {
        blocking(self.pool(), |p| p.stats()).await
    }

    async fn clone_file(&mut self, src: String, dst: String) -> wasmtime::Result<Result<CopyMethod, DriverError>> {
        // The host's copy advances the call (renewing its wall-clock limit) and reports to the caller.
        let (caller, advance) = (self.progress.clone(), self.advance.clone());
        let report: ProgressFn = Arc::new(move |done, total| {
            advance.lock().unwrap().host_copied();
            if let Some(caller) = &caller {
                caller(done, total);
            }
        });
        blocking(self.pool(), move |p| p.clone_file(&src, &dst, Some(&report))).await
    }

    async fn allocated_bytes(&mut self, path: String) -> wasmtime::Result<Result<u64, DriverError>> {
        blocking(self.pool(), move |p| p.allocated_bytes(&path)).await
    }
}

impl crate::bindings::elara::driver::types::Host for StoreState {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escaping_paths() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("outside.txt");
        std::fs::write(&root, b"secret").unwrap();
        let pool = PoolDir::open(&d.path().join("pool")).unwrap();
        std::os::unix::fs::symlink(&root, d.path().join("pool/link")).unwrap();
        std::fs::write(d.path().join("pool/a"), b"hello").unwrap();

        for (src, dst, want) in [
            ("../outside.txt", "b", "`..` is not allowed"),
            ("/etc/passwd", "b", "absolute paths"),
            ("a", "/tmp/x", "absolute paths"),
            ("a", "../x", "`..`"),
            ("link", "b", "outside the pool"),
            ("", "b", "empty path"),
        ] {
            let e = pool.clone_file(src, dst, None).unwrap_err();
            assert!(e.message().contains(want), "{src} -> {dst}: {}", e.message());
        }
        assert!(matches!(pool.allocated_bytes("link"), Err(DriverError::Invalid(_))));
        assert!(matches!(pool.allocated_bytes("nope"), Err(DriverError::NotFound(_))));
        assert!(!d.path().join("b").exists() && !d.path().join("x").exists());
    }

    #[test]
    fn clone_and_sparse_copy() {
        let d = tempfile::tempdir().unwrap();
        let pool = PoolDir::open(d.path()).unwrap();
        let f = File::create(d.path().join("img")).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        drop(f);
        let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = reports.clone();
        let progress: ProgressFn = Arc::new(move |done, total| sink.lock().unwrap().push((done, total)));
        let m = pool.clone_file("img", "copy", Some(&progress)).unwrap();
        let a = std::fs::read(d.path().join("img")).unwrap();
        let b = std::fs::read(d.path().join("copy")).unwrap();
        assert!(a == b, "contents differ");
        let reports = reports.lock().unwrap().clone();
        if m == CopyMethod::Copy {
            // sparse: far less allocated than the 64 MiB length
            assert!(pool.allocated_bytes("copy").unwrap() < 8 << 20);
            // progress: in order, ending at the source's allocated bytes
            let allocated = pool.allocated_bytes("img").unwrap();
            assert_eq!(reports.last(), Some(&(allocated, allocated)), "{reports:?}");
            assert!(
                reports.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 == w[1].1),
                "{reports:?}"
            );
        } else {
            assert!(reports.is_empty(), "a reflink copies nothing: {reports:?}");
        }
        assert!(matches!(
            pool.clone_file("img", "copy", None),
            Err(DriverError::AlreadyExists(_))
        ));
        assert!(matches!(
            pool.clone_file("missing", "c2", None),
            Err(DriverError::NotFound(_))
        ));
        let leftovers: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".elara-tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let st = pool.stats().unwrap();
        assert!(st.total_bytes > 0 && st.available_bytes <= st.total_bytes);
    }
}
