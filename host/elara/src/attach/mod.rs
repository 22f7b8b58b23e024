//! The host's attach layer: it turns a driver's [`Connection`] into a mounted directory on this
//! node, and takes it down again exactly. Drivers are sandboxed and cannot do any of this; the host
//! alone holds the powers (loop devices, mkfs, mount, FUSE).
//!
//! * `image-file`: a sparse image in the backend's pool dir → `losetup` → `mkfs` (first attach
//!   only: a device that already carries a filesystem is never formatted again) → `mount`.
//! * `directory`: a directory in the pool dir, bind-mounted.
//! * `nfs`: `mount -t nfs` where the kernel has an NFS client.
//! * `s3`: `s3fs` (FUSE) with a 0600 credentials file under the run dir.
//! * `iscsi`, `other`: refused as unsupported on this host, saying why.
//!
//! Every connection comes from an untrusted driver, so paths are checked to stay inside the pool
//! dir and to name a regular file (an image path cannot point the host at `/dev/sda`).
//!
//! `attach` is idempotent (a volume already mounted at its mountpoint is returned as is) and undoes
//! its own partial work on failure; `detach` and `detach_by_volume` are safe to repeat and remove
//! only what belongs to the volume.

pub mod mountinfo;

use std::path::{Component, Path, PathBuf};
use std::process::Output;

use elara_runtime::Connection;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// Where the attach layer keeps its state on this node.
pub struct AttachConfig {
    /// Volumes are mounted at `<mount_root>/<volume id>`.
    pub mount_root: PathBuf,
    /// Runtime files (s3fs credential files).
    pub run_dir: PathBuf,
}

/// Filesystems the host makes on block volumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    fn name(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }
}

impl From<crate::model::FsType> for FsType {
    fn from(f: crate::model::FsType) -> Self {
        match f {
            crate::model::FsType::Ext4 => FsType::Ext4,
            crate::model::FsType::Xfs => FsType::Xfs,
        }
    }
}

/// One volume to bring up.
pub struct AttachRequest<'a> {
    pub volume_id: &'a str,
    /// The backend's pool dir: relative paths in the connection are resolved (and confined) here.
    pub pool_dir: &'a Path,
    pub connection: &'a Connection,
    /// The filesystem to make if the device is blank.
    pub fs_type: FsType,
    pub read_only: bool,
}

/// What `attach` set up, recorded in the store so that `detach` (on this daemon or after a
/// restart) removes exactly that.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AttachState {
    pub mountpoint: PathBuf,
    /// The loop device, for image files.
    pub device: Option<PathBuf>,
    /// The image file behind `device`.
    pub backing_file: Option<PathBuf>,
    /// `image-file`, `directory`, `nfs` or `s3`.
    pub kind: String,
    /// Whether this attach made the filesystem.
    pub formatted_now: bool,
    /// The s3fs credentials file, removed on detach.
    pub creds_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String },
    #[error("the driver returned a bad connection: {field}: {reason}")]
    BadConnection { field: &'static str, reason: String },
    #[error("{kind} volumes cannot be attached on this node: {reason}")]
    Unsupported { kind: String, reason: String },
    #[error("{} is busy (still in use by a process); stop what uses it and retry", path.display())]
    Busy { path: PathBuf },
}

impl AttachError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        AttachError::Io { op, path: path.to_path_buf(), source }
    }
}

type Result<T> = std::result::Result<T, AttachError>;

pub struct Attacher {
    cfg: AttachConfig,
    /// Loop device set-up is serialised: two `losetup --find` at once can pick the same device.
    loop_lock: tokio::sync::Mutex<()>,
}

impl Attacher {
    pub fn new(cfg: AttachConfig) -> Self {
        Attacher { cfg, loop_lock: tokio::sync::Mutex::new(()) }
    }

    fn mountpoint(&self, volume_id: &str) -> PathBuf {
        self.cfg.mount_root.join(volume_id)
    }

    fn creds_file(&self, volume_id: &str) -> PathBuf {
        self.cfg.run_dir.join("s3").join(format!("{volume_id}.passwd"))
    }

    /// Bring a volume up at its mountpoint. Idempotent; on failure nothing of it is left behind.
    pub async fn attach(&self, req: AttachRequest<'_>) -> Result<AttachState> {
        let mountpoint = self.mountpoint(req.volume_id);
        create_dir(&mountpoint).await?;
        match req.connection {
            Connection::ImageFile(f) => self.attach_image(&req, &f.path, mountpoint).await,
            Connection::Directory(dir) => {
                let src = confined(req.pool_dir, dir, "directory")?;
                let meta = tokio::fs::symlink_metadata(&src).await.map_err(|e| AttachError::io("stat", &src, e))?;
                if !meta.is_dir() {
                    return Err(AttachError::BadConnection { field: "directory", reason: format!("{} is not a directory", src.display()) });
                }
                if mountinfo::find(&mountpoint)?.is_none() {
                    let mut args = vec!["--bind".to_string(), path_str(&src), path_str(&mountpoint)];
                    if req.read_only {
                        args.insert(0, "-o".into());
                        args.insert(1, "ro".into());
                    }
                    run("mount", &args).await?;
                }
                Ok(AttachState { mountpoint, device: None, backing_file: None, kind: "directory".into(), formatted_now: false, creds_file: None })
            }
            Connection::Nfs(nfs) => {
                if !kernel_has_fs("nfs").await && !kernel_has_fs("nfs4").await {
                    let _ = run("modprobe", &["nfs".to_string()]).await;
                    if !kernel_has_fs("nfs").await && !kernel_has_fs("nfs4").await {
                        return Err(AttachError::Unsupported {
                            kind: "nfs".into(),
                            reason: "this kernel has no NFS client (nfs is not in /proc/filesystems and `modprobe nfs` failed)".into(),
                        });
                    }
                }
                if mountinfo::find(&mountpoint)?.is_none() {
                    let mut opts = vec![format!("vers={}", nfs.version)];
                    if let Some(port) = nfs.port {
                        opts.push(format!("port={port}"));
                    }
                    for (k, v) in &nfs.options {
                        opts.push(if v.is_empty() { k.clone() } else { format!("{k}={v}") });
                    }
                    if req.read_only {
                        opts.push("ro".into());
                    }
                    let source = format!("{}:{}", nfs.server, nfs.export);
                    run("mount", &["-t".into(), "nfs".into(), "-o".into(), opts.join(","), source, path_str(&mountpoint)]).await?;
                }
                Ok(AttachState { mountpoint, device: None, backing_file: None, kind: "nfs".into(), formatted_now: false, creds_file: None })
            }
            Connection::S3(s3) => self.attach_s3(&req, s3, mountpoint).await,
            Connection::Iscsi(_) => Err(AttachError::Unsupported {
                kind: "iscsi".into(),
                reason: "this host has no iSCSI initiator support in Elara yet (open-iscsi login is not implemented)".into(),
            }),
            Connection::Other((kind, _)) => Err(AttachError::Unsupported { kind: kind.clone(), reason: "Elara's host does not know this protocol".into() }),
        }
    }

    async fn attach_image(&self, req: &AttachRequest<'_>, path: &str, mountpoint: PathBuf) -> Result<AttachState> {
        let backing = confined(req.pool_dir, path, "image-file.path")?;
        let meta = tokio::fs::symlink_metadata(&backing).await.map_err(|e| AttachError::io("stat", &backing, e))?;
        if !meta.is_file() {
            return Err(AttachError::BadConnection { field: "image-file.path", reason: format!("{} is not a regular file", backing.display()) });
        }

        // Already up (a repeated attach, or a restart after the mount step): hand back what is there.
        if let Some(m) = mountinfo::find(&mountpoint)? {
            let devices = loop_devices_of(&backing).await?;
            if let Some(dev) = devices.into_iter().find(|d| path_str(d) == m.source) {
                return Ok(AttachState {
                    mountpoint,
                    device: Some(dev),
                    backing_file: Some(backing),
                    kind: "image-file".into(),
                    formatted_now: false,
                    creds_file: None,
                });
            }
            return Err(AttachError::BadConnection {
                field: "mountpoint",
                reason: format!("{} is already mounted from {}, not from {}", mountpoint.display(), m.source, backing.display()),
            });
        }

        let device = {
            let _guard = self.loop_lock.lock().await;
            match loop_devices_of(&backing).await?.into_iter().next() {
                Some(dev) => dev,
                None => {
                    let mut args = vec!["--find".to_string(), "--show".into()];
                    if req.read_only {
                        args.push("--read-only".into());
                    }
                    args.push(path_str(&backing));
                    let out = run("losetup", &args).await?;
                    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
                }
            }
        };

        match self.format_and_mount(req, &device, &mountpoint).await {
            Ok(formatted_now) => Ok(AttachState {
                mountpoint,
                device: Some(device),
                backing_file: Some(backing),
                kind: "image-file".into(),
                formatted_now,
                creds_file: None,
            }),
            Err(e) => {
                if let Err(undo) = detach_loop(&device, &backing).await {
                    tracing::error!(device = %device.display(), "undoing a failed attach: {undo}");
                }
                Err(e)
            }
        }
    }

    /// Make the filesystem if the device is blank, then mount it. Returns whether it formatted.
    async fn format_and_mount(&self, req: &AttachRequest<'_>, device: &Path, mountpoint: &Path) -> Result<bool> {
        let existing = probe_fs(device).await?;
        let (fs, formatted_now) = match existing {
            Some(fs) if fs == "ext4" && !req.read_only => {
                grow_ext4_offline(device).await?;
                (fs, false)
            }
            Some(fs) => (fs, false),
            None if req.read_only => {
                return Err(AttachError::BadConnection { field: "read_only", reason: "a blank volume cannot be attached read-only".into() });
            }
            None => {
                let dev = path_str(device);
                match req.fs_type {
                    // lazy init: a large image formats in a second; nodiscard: keep the image sparse-friendly.
                    FsType::Ext4 => run("mkfs.ext4", &["-q".into(), "-F".into(), "-E".into(), "nodiscard".into(), dev]).await?,
                    FsType::Xfs => run("mkfs.xfs", &["-q".into(), "-f".into(), "-K".into(), dev]).await?,
                };
                (req.fs_type.name().to_string(), true)
            }
        };
        let mut opts = Vec::new();
        if req.read_only {
            opts.push("ro");
        }
        if fs == "xfs" {
            // A volume restored from a snapshot carries its source's UUID; xfs refuses duplicates.
            opts.push("nouuid");
        }
        let mut args = vec!["-t".to_string(), fs.clone()];
        if !opts.is_empty() {
            args.push("-o".into());
            args.push(opts.join(","));
        }
        args.push(path_str(device));
        args.push(path_str(mountpoint));
        run("mount", &args).await?;
        if fs == "xfs" && !req.read_only {
            // xfs grows only while mounted; a no-op when it already fills the device.
            if let Err(e) = run("xfs_growfs", &[path_str(mountpoint)]).await {
                tracing::warn!(device = %device.display(), "xfs_growfs: {e}");
            }
        }
        Ok(formatted_now)
    }

    async fn attach_s3(&self, req: &AttachRequest<'_>, s3: &elara_runtime::S3Connection, mountpoint: PathBuf) -> Result<AttachState> {
        let creds = self.creds_file(req.volume_id);
        let state = AttachState {
            mountpoint: mountpoint.clone(),
            device: None,
            backing_file: None,
            kind: "s3".into(),
            formatted_now: false,
            creds_file: Some(creds.clone()),
        };
        if mountinfo::find(&mountpoint)?.is_some() {
            return Ok(state);
        }
        if which("s3fs").await.is_none() {
            return Err(AttachError::Unsupported { kind: "s3".into(), reason: "s3fs is not installed (Debian package s3fs)".into() });
        }
        if !Path::new("/dev/fuse").exists() {
            return Err(AttachError::Unsupported { kind: "s3".into(), reason: "/dev/fuse is missing: this kernel or container has no FUSE".into() });
        }
        write_secret(&creds, &format!("{}:{}\n", s3.access_key, s3.secret_key)).await?;
        let bucket = if s3.prefix.is_empty() { s3.bucket.clone() } else { format!("{}:/{}", s3.bucket, s3.prefix.trim_matches('/')) };
        let mut opts = vec![
            format!("passwd_file={}", creds.display()),
            format!("url={}", s3.endpoint),
            format!("endpoint={}", s3.region),
            "allow_other".to_string(),
            "mp_umask=0000".to_string(),
        ];
        if s3.path_style {
            opts.push("use_path_request_style".into());
        }
        if req.read_only {
            opts.push("ro".into());
        }
        if let Err(e) = run("s3fs", &[bucket, path_str(&mountpoint), "-o".into(), opts.join(",")]).await {
            let _ = tokio::fs::remove_file(&creds).await;
            return Err(e);
        }
        // s3fs returns once its daemon is forked; the mount is the readiness signal.
        match mountinfo::find(&mountpoint)? {
            Some(m) if m.fs_type.starts_with("fuse") => Ok(state),
            _ => {
                let _ = tokio::fs::remove_file(&creds).await;
                Err(AttachError::Command {
                    command: "s3fs".into(),
                    status: "exited 0".into(),
                    stderr: format!("no FUSE mount appeared at {}", mountpoint.display()),
                })
            }
        }
    }

    /// Take down exactly what `attach` set up. Safe to repeat.
    pub async fn detach(&self, state: &AttachState) -> Result<()> {
        unmount(&state.mountpoint).await?;
        if let (Some(dev), Some(backing)) = (&state.device, &state.backing_file) {
            detach_loop(dev, backing).await?;
        }
        if let Some(backing) = &state.backing_file {
            for dev in loop_devices_of(backing).await? {
                detach_loop(&dev, backing).await?;
            }
        }
        if let Some(creds) = &state.creds_file {
            remove_if_exists(creds).await?;
        }
        remove_dir_if_exists(&state.mountpoint).await
    }

    /// Take down whatever a volume may have on this node when the attach state was never recorded
    /// (a crash between the host step and the store write): its mountpoint, loop devices of its
    /// image file, its credentials file.
    pub async fn detach_by_volume(&self, volume_id: &str, backing_file: Option<&Path>) -> Result<()> {
        let mountpoint = self.mountpoint(volume_id);
        unmount(&mountpoint).await?;
        if let Some(backing) = backing_file {
            for dev in loop_devices_of(backing).await? {
                detach_loop(&dev, backing).await?;
            }
        }
        remove_if_exists(&self.creds_file(volume_id)).await?;
        remove_dir_if_exists(&mountpoint).await
    }
}

/// `rel` resolved inside `root`: relative, no `..`, and (after symlinks) still inside `root`.
fn confined(root: &Path, rel: &str, field: &'static str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty() || p.is_absolute() || p.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(AttachError::BadConnection { field, reason: format!("{rel:?} must be a relative path inside the pool dir") });
    }
    let root = std::fs::canonicalize(root).map_err(|e| AttachError::io("resolve", root, e))?;
    let joined = root.join(p);
    let real = std::fs::canonicalize(&joined).map_err(|e| AttachError::io("resolve", &joined, e))?;
    if !real.starts_with(&root) {
        return Err(AttachError::BadConnection { field, reason: format!("{rel:?} leads outside the pool dir (to {})", real.display()) });
    }
    Ok(real)
}

/// Grow an unmounted ext4 filesystem to fill its device, if the volume was resized while the
/// kernel refused an online resize (it needs CAP_SYS_RESOURCE, which some containers drop).
async fn grow_ext4_offline(device: &Path) -> Result<()> {
    // The superblock and the device size, read directly: this runs at every mount, and two
    // processes (dumpe2fs, blockdev) per mount were a measurable part of `docker run -v`.
    let (sb, dev_bytes) = read_superblock(device).await?;
    let Some((blocks, block_size)) = ext4_size(&sb) else {
        return Ok(());
    };
    if dev_bytes / block_size <= blocks {
        return Ok(());
    }
    tracing::info!(device = %device.display(), "growing ext4 from {} to {dev_bytes} bytes", blocks * block_size);
    // resize2fs insists on a freshly checked filesystem; -p repairs only what is safe unattended.
    let fsck = Command::new("e2fsck").args(["-f", "-p"]).arg(device).output().await.map_err(|e| AttachError::io("run e2fsck on", device, e))?;
    // 0: clean, 1: errors corrected.
    if !matches!(fsck.status.code(), Some(0 | 1)) {
        return Err(command_error("e2fsck -f -p", &fsck));
    }
    run("resize2fs", &[path_str(device)]).await.map(drop)
}

/// The filesystem type on a device, or `None` if blank.
async fn probe_fs(device: &Path) -> Result<Option<String>> {
    // Fast path for the filesystems Elara makes (no process at every mount); anything else,
    // a blank device included, is left to blkid's full probe.
    let (sb, _) = read_superblock(device).await?;
    if ext4_size(&sb).is_some() {
        return Ok(Some("ext4".into()));
    }
    if sb.starts_with(b"XFSB") {
        return Ok(Some("xfs".into()));
    }
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(device)
        .output()
        .await
        .map_err(|e| AttachError::io("run blkid on", device, e))?;
    match out.status.code() {
        Some(0) => {
            let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Ok((!t.is_empty()).then_some(t))
        }
        // 2: nothing found.
        Some(2) => Ok(None),
        _ => Err(command_error("blkid", &out)),
    }
}

/// The first 4 KiB of a device (ext4's superblock sits at 1024, xfs's at 0) and its size.
async fn read_superblock(device: &Path) -> Result<(Vec<u8>, u64)> {
    let dev = device.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&dev)?;
        let mut buf = vec![0u8; 4096];
        let mut got = 0;
        while got < buf.len() {
            match f.read(&mut buf[got..])? {
                0 => break,
                n => got += n,
            }
        }
        buf.truncate(got);
        let size = f.seek(SeekFrom::End(0))?;
        Ok((buf, size))
    })
    .await
    .expect("superblock read panicked")
    .map_err(|e| AttachError::io("read the superblock of", device, e))
}

/// (block count, block size) of an ext4 superblock (ext magic with the extents feature, as
/// mkfs.ext4 makes it), or `None` if `sb` holds no ext4.
fn ext4_size(sb: &[u8]) -> Option<(u64, u64)> {
    let u32_at = |off: usize| sb.get(off..off + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let magic = sb.get(1024 + 0x38..1024 + 0x3a).map(|b| u16::from_le_bytes([b[0], b[1]]))?;
    let incompat = u32_at(1024 + 0x60)?;
    const EXTENTS: u32 = 0x40;
    const BIT64: u32 = 0x80;
    if magic != 0xEF53 || incompat & EXTENTS == 0 {
        return None;
    }
    let lo = u64::from(u32_at(1024 + 0x4)?);
    let hi = if incompat & BIT64 != 0 { u64::from(u32_at(1024 + 0x150)?) } else { 0 };
    let log = u32_at(1024 + 0x18)?;
    (log <= 6).then(|| ((hi << 32) | lo, 1024u64 << log))
}

/// Loop devices currently backed by `file`, from sysfs (what `losetup --list` reads, without a
/// process at every mount and unmount).
async fn loop_devices_of(file: &Path) -> Result<Vec<PathBuf>> {
    let want = path_str(file);
    let sys = Path::new("/sys/block");
    let entries = match std::fs::read_dir(sys) {
        Ok(e) => e,
        Err(e) => return Err(AttachError::io("list", sys, e)),
    };
    let mut out = vec![];
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        // No backing_file: an unbound loop device.
        let Ok(back) = std::fs::read_to_string(e.path().join("loop/backing_file")) else { continue };
        if back.trim_end_matches('\n').trim_end_matches(" (deleted)") == want {
            out.push(PathBuf::from("/dev").join(&name));
        }
    }
    out.sort();
    Ok(out)
}

/// Detach `device` if it is still backed by `backing` (a loop device number may have been reused).
async fn detach_loop(device: &Path, backing: &Path) -> Result<()> {
    if !loop_devices_of(backing).await?.iter().any(|d| d == device) {
        return Ok(());
    }
    run("losetup", &["--detach".into(), path_str(device)]).await.map(drop)
}

async fn unmount(mountpoint: &Path) -> Result<()> {
    while mountinfo::find(mountpoint)?.is_some() {
        let out = Command::new("umount").arg(mountpoint).output().await.map_err(|e| AttachError::io("run umount on", mountpoint, e))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("busy") {
                return Err(AttachError::Busy { path: mountpoint.to_path_buf() });
            }
            return Err(command_error(&format!("umount {}", mountpoint.display()), &out));
        }
    }
    Ok(())
}

async fn kernel_has_fs(name: &str) -> bool {
    tokio::fs::read_to_string("/proc/filesystems")
        .await
        .map(|t| t.lines().any(|l| l.split_whitespace().last() == Some(name)))
        .unwrap_or(false)
}

async fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(cmd)).find(|p| p.is_file())
}

async fn write_secret(path: &Path, content: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        create_dir(dir).await?;
    }
    let target = path.to_path_buf();
    let content = content.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&target)?;
        f.write_all(content.as_bytes())
    })
    .await
    .expect("write task panicked")
    .map_err(|e| AttachError::io("write", path, e))
}

async fn create_dir(dir: &Path) -> Result<()> {
    tokio::fs::create_dir_all(dir).await.map_err(|e| AttachError::io("create", dir, e))
}

async fn remove_if_exists(path: &Path) -> Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(AttachError::io("remove", path, e)),
        _ => Ok(()),
    }
}

async fn remove_dir_if_exists(path: &Path) -> Result<()> {
    match tokio::fs::remove_dir(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(AttachError::io("remove", path, e)),
        _ => Ok(()),
    }
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

fn command_error(command: &str, out: &Output) -> AttachError {
    AttachError::Command {
        command: command.to_string(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

async fn run(cmd: &str, args: &[String]) -> Result<Output> {
    let out = Command::new(cmd).args(args).output().await.map_err(|e| AttachError::io("run", Path::new(cmd), e))?;
    if !out.status.success() {
        return Err(command_error(&format!("{cmd} {}", args.join(" ")), &out));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The superblock fast path agrees with mkfs: ext4 and its size, xfs, blank.
    #[tokio::test]
    async fn superblock_probe() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("v.img");
        std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
        assert_eq!(ext4_size(&read_superblock(&img).await.unwrap().0), None, "blank");
        let ok = std::process::Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img).status().unwrap();
        assert!(ok.success());
        let (sb, size) = read_superblock(&img).await.unwrap();
        let (blocks, bs) = ext4_size(&sb).expect("ext4 found");
        assert_eq!(blocks * bs, 64 << 20);
        assert_eq!(size, 64 << 20);
        assert_eq!(probe_fs(&img).await.unwrap().as_deref(), Some("ext4"));
        std::fs::File::create(&img).unwrap().set_len(320 << 20).unwrap();
        let ok = std::process::Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&img).status().unwrap();
        assert!(ok.success());
        assert_eq!(probe_fs(&img).await.unwrap().as_deref(), Some("xfs"));
    }

    #[test]
    fn confined_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ok.img"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("out")).unwrap();
        assert!(confined(dir.path(), "ok.img", "p").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "out"] {
            let err = confined(dir.path(), bad, "p").unwrap_err();
            assert!(matches!(err, AttachError::BadConnection { .. } | AttachError::Io { .. }), "{bad}: {err}");
        }
        assert!(confined(dir.path(), "out", "p").unwrap_err().to_string().contains("outside the pool dir"));
    }
}
