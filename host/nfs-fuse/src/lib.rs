//! A user-space NFSv3 client served as a FUSE file system, for nodes whose kernel has no NFS
//! client. One process serves one mount: [`serve`] MOUNTs the export, mounts FUSE at the
//! mount point and answers the kernel until the file system is unmounted or the process is told
//! to stop (SIGTERM/SIGINT).
//!
//! - Transport: a few TCP connections to the NFS program, each with many calls in flight matched
//!   by XID (`rpc.rs`); every call has a deadline ([`MountOptions::io_timeout`]) after which the
//!   caller gets EIO; broken connections are made again on the next call.
//! - Credentials: AUTH_UNIX root, so the export must not squash root. New files, directories,
//!   links and nodes get the uid/gid of the process that made them (from the FUSE request); the
//!   kernel checks permissions from the attributes (`default_permissions`, `allow_other`).
//! - Consistency: close-to-open (see `fs.rs`); writes are sent behind the writer and committed at
//!   close and fsync (see `wb.rs`).
//! - The mount: fs type `fuse.elara-nfs`, source `SERVER:EXPORT`; it appears in
//!   `/proc/self/mountinfo` only after the export answered (MOUNT, FSINFO and GETATTR of its
//!   root), so a parent may take its appearance as readiness.
//!
//! Root is needed: the helper mounts `/dev/fuse` itself (no fusermount, no libfuse, no Debian
//! package). [`serve`] blocks, installs SIGTERM and SIGINT handlers for the whole process (run it
//! in a process of its own, as `elara nfs-fuse` does) and logs through `tracing` (the caller sets
//! up the subscriber; the `elara-nfs-fuse` binary logs to stderr).
//!
//! Not supported by NFSv3 or not done: extended attributes (EOPNOTSUPP), locks across clients
//! (`flock`/`fcntl` locks are local to this mount: no NLM), RENAME_EXCHANGE, fallocate modes
//! other than 0 (mode 0 only grows the size).

mod fs;
mod nfs;
mod rpc;
mod wb;

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

/// How to mount one NFS volume.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The NFS server's host name or address.
    pub server: String,
    /// Its NFS port (2049).
    pub port: u16,
    /// Its MOUNT port; `None`: ask the portmapper (port 111).
    pub mount_port: Option<u16>,
    /// The MOUNT path of the volume's directory.
    pub export: String,
    /// Where to mount.
    pub mountpoint: PathBuf,
    pub read_only: bool,
    /// A call unanswered this long fails with EIO (default 30 s).
    pub io_timeout: Duration,
    /// How long the kernel may cache attributes and names (default 1 s).
    pub attr_timeout: Duration,
}

impl MountOptions {
    /// Options with the defaults: port 2049, MOUNT port from the portmapper, read-write, 30 s
    /// I/O timeout, 1 s attribute cache.
    pub fn new(server: impl Into<String>, export: impl Into<String>, mountpoint: impl Into<PathBuf>) -> MountOptions {
        MountOptions {
            server: server.into(),
            port: 2049,
            mount_port: None,
            export: export.into(),
            mountpoint: mountpoint.into(),
            read_only: false,
            io_timeout: Duration::from_secs(30),
            attr_timeout: Duration::from_secs(1),
        }
    }
}

/// The file system type in `/proc/self/mountinfo`.
pub const FS_TYPE: &str = "fuse.elara-nfs";
/// NFS connections per mount.
const CONNECTIONS: usize = 4;

/// Mount and serve until the file system is unmounted (umount, fusermount -u) or SIGTERM/SIGINT
/// arrives (then unmount — lazily if it is busy, serving what is still open until it is closed —
/// and return `Ok`). A failure before the mount appears returns an error naming the server and
/// the cause.
pub fn serve(opts: MountOptions) -> anyhow::Result<()> {
    let source = format!("{}:{}", opts.server, opts.export);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("nfs-fuse")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let res = serve_on(&rt, &opts, &source);
    rt.shutdown_timeout(Duration::from_secs(1));
    res
}

fn serve_on(rt: &tokio::runtime::Runtime, opts: &MountOptions, source: &str) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = rt.block_on(async {
        Ok::<_, std::io::Error>((signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?))
    })?;
    clear_dead_mount(&opts.mountpoint);
    let mountpoint = opts
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mount point {}", opts.mountpoint.display()))?;
    let ep = nfs::Endpoint {
        host: opts.server.clone(),
        port: opts.port,
        mount_port: opts.mount_port,
        export: opts.export.clone(),
        timeout: opts.io_timeout,
        connections: CONNECTIONS,
    };
    let connect = async {
        tokio::select! {
            r = tokio::time::timeout(opts.io_timeout, nfs::Nfs::connect(&ep)) => Some(r),
            _ = term.recv() => None,
            _ = int.recv() => None,
        }
    };
    let (nfs, root_attr) = match rt.block_on(connect) {
        None => {
            tracing::info!("{source}: stopped before the mount");
            return Ok(());
        }
        Some(Err(_)) => bail!("{source}: the server did not answer within {:?}", opts.io_timeout),
        Some(Ok(Err(e))) => return Err(anyhow!("{source}: {e:#}")),
        Some(Ok(Ok(v))) => v,
    };
    if root_attr.type_ != nfs3_client::nfs3_types::nfs3::ftype3::NF3DIR {
        bail!("{source}: the export's root is a {}, not a directory", root_attr.type_);
    }
    tracing::info!(
        "{source}: mounted over NFSv3 ({}), read size {}, write size {}",
        nfs.server(),
        nfs.rsize,
        nfs.wsize
    );
    let core = Arc::new(fs::Core::new(nfs, root_attr, opts.attr_timeout, opts.read_only));

    let fd = mount_fuse(source, &mountpoint, opts.read_only)?;
    // Not stat(2): that would wait for the FUSE handshake, which has not happened yet.
    let dev = mount_dev(&mountpoint);
    let mut config = fuser::Config::default();
    config.n_threads = Some(1);
    let fs = fs::NfsFs::new(rt.handle().clone(), core.clone());
    let session = match fuser::Session::from_fd(fs, fd, fuser::SessionACL::All, config) {
        Ok(s) => s,
        Err(e) => {
            let _ = unmount(&mountpoint, false);
            bail!("{source}: the FUSE handshake at {} failed: {e}", mountpoint.display());
        }
    };
    core.set_notifier(session.notifier());
    if let Some(dev) = dev {
        tune_readahead(dev);
    }
    tracing::info!("{source}: serving {}", mountpoint.display());

    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let runner = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let res = session.run();
            let _ = done_tx.send(());
            res
        })
        .context("starting the FUSE session")?;

    rt.block_on(async {
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = &mut done_rx => break,
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if !stopping {
                stopping = true;
                match unmount(&mountpoint, false) {
                    Ok(()) => tracing::info!("{source}: unmounted {}", mountpoint.display()),
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        tracing::warn!(
                            "{source}: {} is busy: detached it; serving the files still open until they are closed \
                             (signal again to cut them off)",
                            mountpoint.display()
                        );
                        if let Err(e) = unmount(&mountpoint, true) {
                            tracing::warn!("{source}: detaching {}: {e}", mountpoint.display());
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {} // already gone
                    Err(e) => tracing::warn!("{source}: unmounting {}: {e}", mountpoint.display()),
                }
            } else if let Some(dev) = dev {
                tracing::warn!("{source}: aborting the FUSE connection");
                abort_connection(dev);
            }
        }
    });
    match runner.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("{source}: the FUSE session ended: {e}"),
        Err(_) => bail!("{source}: the FUSE session panicked"),
    }
    tracing::info!("{source}: done");
    Ok(())
}

/// Open /dev/fuse and mount it at `mountpoint` (as libfuse does, without its helper).
fn mount_fuse(source: &str, mountpoint: &Path, read_only: bool) -> anyhow::Result<OwnedFd> {
    let dev = CString::new("/dev/fuse").expect("no NUL");
    // SAFETY: a valid NUL-terminated path; the fd returned is owned below.
    let raw = unsafe { libc::open(dev.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        let e = std::io::Error::last_os_error();
        bail!("opening /dev/fuse: {e} (is FUSE available, and are we root?)");
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let data = format!(
        "fd={raw},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions,max_read={}",
        1 << 20
    );
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    let c_source = CString::new(source.replace(',', "_")).context("the source has a NUL byte")?;
    let c_target = CString::new(mountpoint.as_os_str().as_bytes()).context("the mount point has a NUL byte")?;
    let c_type = CString::new(FS_TYPE).expect("no NUL");
    let c_data = CString::new(data).expect("no NUL");
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c_source.as_ptr(),
            c_target.as_ptr(),
            c_type.as_ptr(),
            flags,
            c_data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!("mounting FUSE at {}: {e}", mountpoint.display());
    }
    Ok(fd)
}

/// The device number (major, minor) of the newest mount at `mountpoint`, from mountinfo.
fn mount_dev(mountpoint: &Path) -> Option<(u32, u32)> {
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    let want = escape_mountinfo(mountpoint);
    info.split(|&b| b == b'\n').rev().find_map(|line| {
        let mut f = line.split(|&b| b == b' ');
        let (_, _, dev, _, point) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        if point != want.as_slice() {
            return None;
        }
        let (ma, mi) = std::str::from_utf8(dev).ok()?.split_once(':')?;
        Some((ma.parse().ok()?, mi.parse().ok()?))
    })
}

/// A path as mountinfo writes it (space, tab, newline and backslash as octal escapes).
fn escape_mountinfo(p: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in p.as_os_str().as_bytes() {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => out.extend_from_slice(format!("\\{b:03o}").as_bytes()),
            _ => out.push(b),
        }
    }
    out
}

/// A helper that died leaves its mount behind, answering ENOTCONN: detach it, so a new helper
/// can mount there again.
fn clear_dead_mount(mountpoint: &Path) {
    let Err(e) = std::fs::metadata(mountpoint) else {
        return;
    };
    if e.raw_os_error() != Some(libc::ENOTCONN) {
        return;
    }
    let info = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    let want = escape_mountinfo(mountpoint);
    let ours = info.split(|&b| b == b'\n').any(|line| {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let sep = fields.iter().position(|f| *f == b"-");
        fields.get(4) == Some(&want.as_slice()) && sep.and_then(|i| fields.get(i + 1)) == Some(&FS_TYPE.as_bytes())
    });
    if ours {
        tracing::warn!(
            "{}: a dead mount of an earlier helper is there: detaching it",
            mountpoint.display()
        );
        if let Err(e) = unmount(mountpoint, true) {
            tracing::warn!("detaching {}: {e}", mountpoint.display());
        }
    }
}

fn unmount(mountpoint: &Path, lazy: bool) -> std::io::Result<()> {
    let c = CString::new(mountpoint.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::umount2(c.as_ptr(), if lazy { libc::MNT_DETACH } else { 0 }) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The kernel offers FUSE at most 128 KiB of readahead at INIT; raise it (as root, through the
/// mount's BDI) so sequential reads keep several 1 MiB READs in flight.
fn tune_readahead((major, minor): (u32, u32)) {
    let kb = std::env::var("ELARA_NFS_FUSE_READAHEAD_KB")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(8192);
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, kb.to_string()) {
        tracing::debug!("setting {path}: {e}");
    }
}

/// Abort the FUSE connection of the mount with device `dev` (through fusectl, mounting it if
/// need be): every process still using the mount gets ENOTCONN and the session ends.
fn abort_connection((major, minor): (u32, u32)) {
    let dir = "/sys/fs/fuse/connections";
    // fusectl names a connection by the kernel's dev_t of the mount.
    let path = format!("{dir}/{}/abort", (major << 20) | minor);
    if !Path::new(&path).exists() {
        let (src, target, ty) = (
            CString::new("fusectl").unwrap(),
            CString::new(dir).unwrap(),
            CString::new("fusectl").unwrap(),
        );
        // SAFETY: valid NUL-terminated strings; no data.
        unsafe { libc::mount(src.as_ptr(), target.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    }
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::warn!("aborting through {path}: {e}");
    }
}
