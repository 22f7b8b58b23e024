//! The host's attach layer: it turns a driver's [`Connection`] into a mounted directory on this
//! node, and takes it down again exactly. Drivers are sandboxed and cannot do any of this; the host
//! alone holds the powers (loop devices, mkfs, mount, FUSE).
//!
//! * `image-file`: a sparse image in the backend's pool dir → `losetup` → `mkfs` (first attach
//!   only: a device that already carries a filesystem is never formatted again) → `mount`.
//! * `directory`: a directory in the pool dir, bind-mounted.
//! * `iscsi` ([`iscsi`]): the kernel's initiator where this node has one, else one
//!   `qemu-storage-daemon` per volume exporting the LUN through FUSE → loop device → `mkfs` (first
//!   attach only) → `mount`.
//! * `nfs` ([`nfs`]): `mount -t nfs` where the kernel has an NFS client, else one `elara nfs-fuse`
//!   helper per volume.
//! * `s3`: `s3fs` (FUSE) with a 0600 credentials file under the run dir.
//! * `other`: refused as unsupported on this host, saying why.
//!
//! Helpers ([`helper`]) run in sessions of their own and are recorded in the volume's attach dir
//! (`<run dir>/attach/<volume id>/`), so a restarted daemon adopts them, and every host command
//! has a deadline ([`cmd`]): a dead server or portal fails an attach or detach, it never hangs it.
//!
//! Every connection comes from an untrusted driver, so paths are checked to stay inside the pool
//! dir and to name a regular file (an image path cannot point the host at `/dev/sda`).
//!
//! `attach` is idempotent (a volume already mounted at its mountpoint is returned as is) and undoes
//! its own partial work on failure; `detach` and `detach_by_volume` are safe to repeat and remove
//! only what belongs to the volume.

mod beneath;
pub mod bind_path;
pub mod cmd;
mod endpoints;
pub mod helper;
pub mod iscsi;
pub mod mountinfo;
pub mod nfs;
pub mod paths;
mod qmp;

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use elara_runtime::Connection;
use serde::{Deserialize, Serialize};

use cmd::{command_error, run};
pub use helper::HelperState;
pub use paths::{DataPath, DataPaths, PathChoice};

/// Where the attach layer keeps its state on this node, and which clients it uses.
#[derive(Clone, Debug)]
pub struct AttachConfig {
    /// Volumes are mounted at `<mount_root>/<volume id>`.
    pub mount_root: PathBuf,
    /// Runtime files: s3fs credential files, and each helper-served volume's attach dir.
    pub run_dir: PathBuf,
    /// Which iSCSI initiator brings LUNs up.
    pub iscsi: PathChoice,
    /// Which NFS client mounts exports.
    pub nfs: PathChoice,
    /// A request to an iSCSI target or NFS server unanswered this long fails (EIO) rather than hangs.
    pub io_timeout: Duration,
    /// The `elara` binary, which runs the `nfs-fuse` helper.
    pub helper_exe: PathBuf,
    /// Where backends' pool dirs are: a recorded image file must be under it. `None` (the
    /// driver checker's throwaway attacher) checks only that the path is absolute and plain.
    pub pools_root: Option<PathBuf>,
}

impl AttachConfig {
    /// Defaults for `mount_root` and `run_dir`: the kernel's clients where present, 30 s I/O
    /// timeout, this executable as the helper.
    pub fn new(mount_root: PathBuf, run_dir: PathBuf) -> Self {
        AttachConfig {
            mount_root,
            run_dir,
            iscsi: PathChoice::Auto,
            nfs: PathChoice::Auto,
            io_timeout: Duration::from_secs(30),
            helper_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("elara")),
            pools_root: None,
        }
    }
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

/// Which of the mount flags that keep a volume's contents from acting on the host a mount
/// gets. Both are on by default: a container can leave a setuid-root binary or a device node
/// on its volume, and without them any local user could run it from the host mount path. A
/// volume type lifts them with the specs `mount:nosuid=false` / `mount:nodev=false`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountSecurity {
    pub nosuid: bool,
    pub nodev: bool,
}

impl Default for MountSecurity {
    fn default() -> Self {
        MountSecurity {
            nosuid: true,
            nodev: true,
        }
    }
}

impl MountSecurity {
    /// The volume-type spec keys that lift a flag.
    pub const SPEC_NOSUID: &'static str = "mount:nosuid";
    pub const SPEC_NODEV: &'static str = "mount:nodev";

    /// The flags as `mount -o` options.
    fn options(self) -> Vec<&'static str> {
        let mut o = Vec::new();
        if self.nosuid {
            o.push("nosuid");
        }
        if self.nodev {
            o.push("nodev");
        }
        o
    }

    /// The flags for mount(2).
    pub(crate) fn ms_flags(self) -> nix::mount::MsFlags {
        use nix::mount::MsFlags;
        let mut f = MsFlags::empty();
        if self.nosuid {
            f |= MsFlags::MS_NOSUID;
        }
        if self.nodev {
            f |= MsFlags::MS_NODEV;
        }
        f
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
    /// The backend's network grants: every endpoint of the connection must be among them.
    pub grants: &'a [elara_runtime::HostGrant],
    pub security: MountSecurity,
}

/// What `attach` set up, recorded in the store so that `detach` (on this daemon or after a
/// restart) removes exactly that.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AttachState {
    pub mountpoint: PathBuf,
    /// The block device: a loop device (image files, user-space iSCSI) or the kernel's LUN.
    pub device: Option<PathBuf>,
    /// The file behind a loop `device`: the image, or the user-space iSCSI helper's FUSE export.
    pub backing_file: Option<PathBuf>,
    /// `image-file`, `directory`, `nfs`, `iscsi` or `s3`.
    pub kind: String,
    /// `kernel` or `user`: which client serves an `iscsi` or `nfs` volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Whether this attach made the filesystem.
    pub formatted_now: bool,
    /// The s3fs credentials file, removed on detach.
    pub creds_file: Option<PathBuf>,
    /// The user-space helper serving the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helper: Option<HelperState>,
    /// The volume's attach dir (helper files, CHAP secret, kernel session share), removed on detach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_dir: Option<PathBuf>,
}

impl AttachState {
    fn plain(kind: &str, mountpoint: PathBuf) -> AttachState {
        AttachState {
            mountpoint,
            device: None,
            backing_file: None,
            kind: kind.into(),
            mode: None,
            formatted_now: false,
            creds_file: None,
            helper: None,
            attach_dir: None,
        }
    }

    /// Why the volume no longer works on this node, if its helper has gone.
    pub fn failure(&self) -> Option<String> {
        let h = self.helper.as_ref()?;
        (!h.alive()).then(|| {
            format!(
                "{} serving this volume exited; its log {}: {}",
                h.describe(),
                h.log.display(),
                helper::log_tail(&h.log)
            )
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("the driver returned a bad connection: {field}: {reason}")]
    BadConnection { field: &'static str, reason: String },
    #[error("{kind} volumes cannot be attached on this node: {reason}")]
    Unsupported { kind: String, reason: String },
    #[error("{} is busy (still in use by a process); stop what uses it and retry", path.display())]
    Busy { path: PathBuf },
    #[error("`{command}` did not finish within {after:?} (a dead server, portal or device?)")]
    Timeout { command: String, after: Duration },
    #[error("{program}: {reason}")]
    Helper { program: String, reason: String },
}

impl AttachError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        AttachError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

type Result<T> = std::result::Result<T, AttachError>;

pub struct Attacher {
    cfg: AttachConfig,
    paths: DataPaths,
    /// Loop device set-up is serialised: two `losetup --find` at once can pick the same device.
    loop_lock: tokio::sync::Mutex<()>,
    /// Kernel iSCSI logins and logouts are serialised: sessions are shared by a target's LUNs.
    iscsi_sessions: tokio::sync::Mutex<()>,
    /// Since when each user-space iSCSI volume has had I/O waiting on a target that is down.
    stalls: tokio::sync::Mutex<std::collections::HashMap<String, tokio::time::Instant>>,
}

impl Attacher {
    pub fn new(cfg: AttachConfig) -> Self {
        let paths = DataPaths::probe(cfg.iscsi, cfg.nfs, &cfg.helper_exe);
        Attacher {
            cfg,
            paths,
            loop_lock: Default::default(),
            iscsi_sessions: Default::default(),
            stalls: Default::default(),
        }
    }

    /// This node's data paths, as probed at start.
    pub fn data_paths(&self) -> &[DataPath] {
        &self.paths.all
    }

    /// Where a helper-served volume keeps its files on this node.
    fn attach_dir(&self, volume_id: &str) -> PathBuf {
        self.cfg.run_dir.join("attach").join(volume_id)
    }

    /// The mode `protocol` attaches with here, or `Unsupported` saying why there is none.
    fn mode(&self, protocol: &str, choice: PathChoice) -> Result<&'static str> {
        self.paths
            .selected(protocol, choice)
            .map_err(|reason| AttachError::Unsupported {
                kind: protocol.into(),
                reason,
            })
    }

    fn mountpoint(&self, volume_id: &str) -> PathBuf {
        self.cfg.mount_root.join(volume_id)
    }

    fn creds_file(&self, volume_id: &str) -> PathBuf {
        self.cfg.run_dir.join("s3").join(format!("{volume_id}.passwd"))
    }

    /// Bring a volume up at its mountpoint. Idempotent; on failure nothing of it is left behind.
    pub async fn attach(&self, req: AttachRequest<'_>) -> Result<AttachState> {
        endpoints::check(req.connection, req.grants)?;
        let mountpoint = self.mountpoint(req.volume_id);
        create_dir(&mountpoint).await?;
        match req.connection {
            Connection::ImageFile(f) => self.attach_image(&req, &f.path, mountpoint).await,
            Connection::Directory(dir) => {
                // Opened once beneath the pool dir; the bind's source is that open directory.
                let src = beneath::open(req.pool_dir, dir, "directory", beneath::Kind::Directory, false)?;
                if mountinfo::find(&mountpoint)?.is_none() {
                    bind_fd(&src.fd, &mountpoint, req.read_only, req.security)?;
                }
                Ok(AttachState::plain("directory", mountpoint))
            }
            Connection::Nfs(nfs) => self.attach_nfs(&req, nfs, mountpoint).await,
            Connection::S3(s3) => self.attach_s3(&req, s3, mountpoint).await,
            Connection::Iscsi(c) => self.attach_iscsi(&req, c, mountpoint).await,
            Connection::Other((kind, _)) => Err(AttachError::Unsupported {
                kind: kind.clone(),
                reason: "Elara's host does not know this protocol".into(),
            }),
        }
    }

    async fn attach_nfs(
        &self,
        req: &AttachRequest<'_>,
        c: &elara_runtime::NfsConnection,
        mountpoint: PathBuf,
    ) -> Result<AttachState> {
        let mode = self.mode("nfs", self.cfg.nfs)?;
        let mut state = AttachState {
            mode: Some(mode.into()),
            ..AttachState::plain("nfs", mountpoint.clone())
        };
        if mode == "kernel" {
            if mountinfo::find(&mountpoint)?.is_none() {
                self.nfs_kernel_mount(c, &mountpoint, req.read_only).await?;
            }
            return Ok(state);
        }
        state.helper = Some(
            self.nfs_user_mount(req.volume_id, c, &mountpoint, req.read_only)
                .await?,
        );
        state.attach_dir = Some(self.attach_dir(req.volume_id));
        Ok(state)
    }

    async fn attach_iscsi(
        &self,
        req: &AttachRequest<'_>,
        c: &elara_runtime::IscsiConnection,
        mountpoint: PathBuf,
    ) -> Result<AttachState> {
        let mode = self.mode("iscsi", self.cfg.iscsi)?;
        let dir = self.attach_dir(req.volume_id);
        let mut state = AttachState {
            mode: Some(mode.into()),
            attach_dir: Some(dir.clone()),
            ..AttachState::plain("iscsi", mountpoint.clone())
        };
        let device = if mode == "kernel" {
            self.iscsi_kernel_device(req.volume_id, c).await?
        } else {
            let (device, helper) = self.iscsi_user_device(req.volume_id, c, req.read_only).await?;
            state.backing_file = Some(dir.join("lun"));
            state.helper = Some(helper);
            device
        };
        state.device = Some(device.clone());
        // Already mounted from this device (a repeated attach, or a restart after the mount step).
        if let Some(m) = mountinfo::find(&mountpoint)? {
            if m.source == path_str(&device) {
                return Ok(state);
            }
            return Err(AttachError::BadConnection {
                field: "mountpoint",
                reason: format!(
                    "{} is already mounted from {}, not from {}",
                    mountpoint.display(),
                    m.source,
                    device.display()
                ),
            });
        }
        match self.format_and_mount(req, &device, &mountpoint).await {
            Ok(formatted_now) => {
                state.formatted_now = formatted_now;
                Ok(state)
            }
            Err(e) => {
                if let Err(undo) = self.detach(&state).await {
                    tracing::error!(volume = req.volume_id, "undoing a failed iSCSI attach: {undo}");
                }
                Err(e)
            }
        }
    }

    /// A loop device over the open file `file` (at `backing`; an existing one is reused), with
    /// the loop's buffered I/O: never `--direct-io=on` over a FUSE export, see [`iscsi`].
    async fn loop_device(&self, backing: &Path, file: &std::os::fd::OwnedFd, read_only: bool) -> Result<PathBuf> {
        let _guard = self.loop_lock.lock().await;
        if let Some(dev) = loop_devices_of(backing).await?.into_iter().next() {
            return Ok(dev);
        }
        let file = file
            .try_clone()
            .map_err(|e| AttachError::io("duplicate the fd of", backing, e))?;
        tokio::task::spawn_blocking(move || beneath::loop_configure(&file, read_only))
            .await
            .expect("loop set-up panicked")
    }

    async fn attach_image(&self, req: &AttachRequest<'_>, path: &str, mountpoint: PathBuf) -> Result<AttachState> {
        // Opened once beneath the pool dir; the loop device is configured on that fd.
        let image = beneath::open(
            req.pool_dir,
            path,
            "image-file.path",
            beneath::Kind::File,
            !req.read_only,
        )?;
        let backing = image.path.clone();

        // Already up (a repeated attach, or a restart after the mount step): hand back what is there.
        if let Some(m) = mountinfo::find(&mountpoint)? {
            let devices = loop_devices_of(&backing).await?;
            if let Some(dev) = devices.into_iter().find(|d| path_str(d) == m.source) {
                return Ok(AttachState {
                    device: Some(dev),
                    backing_file: Some(backing),
                    ..AttachState::plain("image-file", mountpoint)
                });
            }
            return Err(AttachError::BadConnection {
                field: "mountpoint",
                reason: format!(
                    "{} is already mounted from {}, not from {}",
                    mountpoint.display(),
                    m.source,
                    backing.display()
                ),
            });
        }

        let device = self.loop_device(&backing, &image.fd, req.read_only).await?;

        match self.format_and_mount(req, &device, &mountpoint).await {
            Ok(formatted_now) => Ok(AttachState {
                device: Some(device),
                backing_file: Some(backing),
                formatted_now,
                ..AttachState::plain("image-file", mountpoint)
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
                return Err(AttachError::BadConnection {
                    field: "read_only",
                    reason: "a blank volume cannot be attached read-only".into(),
                });
            }
            None => {
                let dev = path_str(device);
                match req.fs_type {
                    // lazy init: a large image formats in a second; nodiscard: keep the image sparse-friendly.
                    // nodiscard also matters on a loop over a FUSE export, which answers discard and
                    // zeroout with "not supported": mkfs.ext4 then made an unmountable filesystem.
                    FsType::Ext4 => {
                        cmd::run_within(
                            cmd::LONG,
                            "mkfs.ext4",
                            &["-q".into(), "-F".into(), "-E".into(), "nodiscard".into(), dev],
                        )
                        .await?
                    }
                    FsType::Xfs => {
                        cmd::run_within(cmd::LONG, "mkfs.xfs", &["-q".into(), "-f".into(), "-K".into(), dev]).await?
                    }
                };
                (req.fs_type.name().to_string(), true)
            }
        };
        let mut opts = req.security.options();
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

    async fn attach_s3(
        &self,
        req: &AttachRequest<'_>,
        s3: &elara_runtime::S3Connection,
        mountpoint: PathBuf,
    ) -> Result<AttachState> {
        let creds = self.creds_file(req.volume_id);
        let state = AttachState {
            creds_file: Some(creds.clone()),
            ..AttachState::plain("s3", mountpoint.clone())
        };
        if mountinfo::find(&mountpoint)?.is_some() {
            return Ok(state);
        }
        if cmd::which("s3fs").is_none() {
            return Err(AttachError::Unsupported {
                kind: "s3".into(),
                reason: "s3fs is not installed (Debian package s3fs)".into(),
            });
        }
        if !Path::new("/dev/fuse").exists() {
            return Err(AttachError::Unsupported {
                kind: "s3".into(),
                reason: "/dev/fuse is missing: this kernel or container has no FUSE".into(),
            });
        }
        write_secret(&creds, &format!("{}:{}\n", s3.access_key, s3.secret_key)).await?;
        let bucket = if s3.prefix.is_empty() {
            s3.bucket.clone()
        } else {
            format!("{}:/{}", s3.bucket, s3.prefix.trim_matches('/'))
        };
        let mut opts = vec![
            format!("passwd_file={}", creds.display()),
            format!("url={}", s3.endpoint),
            format!("endpoint={}", s3.region),
            // Containers of any uid use the volume; host users cannot reach it (the mount
            // root is 0700), and it never honours setuid bits or device nodes unless lifted.
            "allow_other".to_string(),
            "mp_umask=0000".to_string(),
        ];
        opts.extend(req.security.options().into_iter().map(String::from));
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
        match mountinfo::is_fuse(&mountpoint)? {
            true => Ok(state),
            false => {
                let _ = tokio::fs::remove_file(&creds).await;
                Err(AttachError::Command {
                    command: "s3fs".into(),
                    status: "exited 0".into(),
                    stderr: format!("no FUSE mount appeared at {}", mountpoint.display()),
                })
            }
        }
    }

    /// Freeze the filesystem mounted at `mountpoint` (a snapshot's copy is then consistent).
    pub async fn freeze(&self, mountpoint: &Path) -> Result<()> {
        run("fsfreeze", &["--freeze".into(), path_str(mountpoint)])
            .await
            .map(drop)
    }

    /// Thaw a frozen filesystem. Idempotent: one that is not frozen is fine; another failure is
    /// logged, as nothing better can be done about it here.
    pub async fn thaw(&self, mountpoint: &Path) {
        if let Err(e) = run("fsfreeze", &["--unfreeze".into(), path_str(mountpoint)]).await
            && !e.to_string().contains("Invalid argument")
        {
            tracing::warn!(mountpoint = %mountpoint.display(), "thaw: {e}");
        }
    }

    /// After the backend grew a mounted volume to `size_bytes`: make the device see it (the
    /// user-space iSCSI helper re-reads the LUN's capacity, the loop device its file's size), then
    /// grow the filesystem online.
    pub async fn grow(&self, state: &AttachState, size_bytes: u64, fs: FsType) -> Result<()> {
        let Some(device) = &state.device else {
            return Ok(());
        };
        if let Some(qmp) = state.helper.as_ref().and_then(|h| h.qmp.as_ref()) {
            qmp::execute(
                qmp,
                "block_resize",
                serde_json::json!({ "node-name": "lun", "size": size_bytes }),
            )
            .await?;
        }
        if state.backing_file.is_some() {
            run("losetup", &["--set-capacity".into(), path_str(device)]).await?;
        } else if state.kind == "iscsi" {
            // The kernel's SCSI disk re-reads its capacity on a rescan.
            let name = device
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let rescan = PathBuf::from(format!("/sys/class/block/{name}/device/rescan"));
            tokio::fs::write(&rescan, b"1")
                .await
                .map_err(|e| AttachError::io("write", &rescan, e))?;
        }
        match fs {
            FsType::Ext4 => cmd::run_within(cmd::LONG, "resize2fs", &[path_str(device)])
                .await
                .map(drop),
            FsType::Xfs => cmd::run_within(cmd::LONG, "xfs_growfs", &[path_str(&state.mountpoint)])
                .await
                .map(drop),
        }
    }

    /// Take down exactly what `attach` set up. Safe to repeat.
    pub async fn detach(&self, state: &AttachState) -> Result<()> {
        self.check_recorded(state)?;
        // A volume whose helper died can only be unmounted lazily: its I/O fails anyway.
        let helper_dead = state.helper.as_ref().is_some_and(|h| !h.alive());
        unmount(&state.mountpoint, helper_dead).await?;
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
        if let Some(dir) = &state.attach_dir {
            self.release_attach_dir(dir).await?;
        }
        remove_dir_if_exists(&state.mountpoint).await
    }

    /// A recorded attach state comes back from the store, which a compromised etcd peer could
    /// have written: before `umount`, `losetup -d` or `rm` act on its paths, each must be one
    /// this attacher makes (a mount point under the mount root, a loop or iSCSI device, files
    /// under the run dir or a pool dir).
    fn check_recorded(&self, state: &AttachState) -> Result<()> {
        let bad = |field: &'static str, p: &Path| AttachError::BadConnection {
            field,
            reason: format!(
                "the recorded {} is not a path Elara makes; refusing to act on it",
                p.display()
            ),
        };
        let plain = |p: &Path| {
            p.is_absolute()
                && p.components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        };
        let child_of = |p: &Path, dir: &Path| plain(p) && p.parent() == Some(dir);
        if !child_of(&state.mountpoint, &self.cfg.mount_root) {
            return Err(bad("mountpoint", &state.mountpoint));
        }
        if let Some(c) = &state.creds_file
            && !child_of(c, &self.cfg.run_dir.join("s3"))
        {
            return Err(bad("creds_file", c));
        }
        if let Some(d) = &state.attach_dir
            && !child_of(d, &self.cfg.run_dir.join("attach"))
        {
            return Err(bad("attach_dir", d));
        }
        if let Some(dev) = &state.device {
            let name = dev.to_string_lossy();
            let is_loop = name
                .strip_prefix("/dev/loop")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !plain(dev) || !(is_loop || name.starts_with("/dev/disk/by-path/")) {
                return Err(bad("device", dev));
            }
        }
        if let Some(b) = &state.backing_file {
            let in_attach_dir = b.starts_with(self.cfg.run_dir.join("attach"));
            let in_pools = self.cfg.pools_root.as_ref().is_none_or(|root| b.starts_with(root));
            if !plain(b) || !(in_attach_dir || in_pools) {
                return Err(bad("backing_file", b));
            }
        }
        Ok(())
    }

    /// Stop the helper in a volume's attach dir, give back its kernel iSCSI session share, and
    /// remove the dir.
    async fn release_attach_dir(&self, dir: &Path) -> Result<()> {
        if !dir.exists() {
            return Ok(());
        }
        self.stop_helper_in(dir).await?;
        if let Some(volume_id) = dir.file_name().and_then(|n| n.to_str()) {
            self.release_kernel_session(volume_id).await?;
        }
        match tokio::fs::remove_dir_all(dir).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(AttachError::io("remove", dir, e)),
            _ => Ok(()),
        }
    }

    /// Take down whatever a volume may have on this node when the attach state was never recorded
    /// (a crash between the host step and the store write): its mountpoint, loop devices of its
    /// image file, its helper and attach dir, its credentials file.
    pub async fn detach_by_volume(&self, volume_id: &str, backing_file: Option<&Path>) -> Result<()> {
        let mountpoint = self.mountpoint(volume_id);
        let dir = self.attach_dir(volume_id);
        let helper_dead = helper::load(&dir).is_some_and(|h| !h.alive());
        unmount(&mountpoint, helper_dead).await?;
        for backing in backing_file.into_iter().chain(Some(dir.join("lun").as_path())) {
            for dev in loop_devices_of(backing).await? {
                detach_loop(&dev, backing).await?;
            }
        }
        self.release_attach_dir(&dir).await?;
        remove_if_exists(&self.creds_file(volume_id)).await?;
        remove_dir_if_exists(&mountpoint).await
    }
}

/// Where a driver's image path leads, checked as an attach checks it (beneath the pool dir, no
/// symlinks, a regular file): for taking down what a crashed attach may have left, by that path.
/// `None` when the path is refused or gone (then nothing of it can be attached either).
/// A path that is gone is still named, if it stays inside the pool dir by its words alone (a
/// loop device may outlive its deleted image).
pub fn image_path(pool_dir: &Path, rel: &str) -> Option<PathBuf> {
    match beneath::open(pool_dir, rel, "image-file.path", beneath::Kind::File, false) {
        Ok(o) => Some(o.path),
        Err(AttachError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let plain = !rel.is_empty() && Path::new(rel).components().all(|c| matches!(c, Component::Normal(_)));
            plain.then(|| {
                std::fs::canonicalize(pool_dir)
                    .unwrap_or_else(|_| pool_dir.to_path_buf())
                    .join(rel)
            })
        }
        Err(_) => None,
    }
}

/// A driver's image file opened beneath its pool dir (no `..` out, no symlinks, a regular file
/// on the pool's file system), for the backup engine: it reads and writes the image through
/// [`PoolImage::path`], `/proc/self/fd/N` of the file opened here, so a driver that swaps the
/// name for a symlink to a host file or device meanwhile changes nothing. Keep it alive for as
/// long as the path is used.
pub struct PoolImage {
    fd: std::os::fd::OwnedFd,
}

impl PoolImage {
    pub fn open(pool_dir: &Path, rel: &str) -> Result<PoolImage> {
        let o = beneath::open(pool_dir, rel, "backend_ref", beneath::Kind::File, false)?;
        Ok(PoolImage { fd: o.fd })
    }

    /// The path that reopens exactly this file.
    pub fn path(&self) -> PathBuf {
        beneath::proc_path(&self.fd)
    }
}

/// Bind-mount the open directory `dir` at `target` (read-only if asked): the kernel resolves
/// `/proc/self/fd/N` to that very directory, whatever its name leads to by now.
fn bind_fd(dir: &std::os::fd::OwnedFd, target: &Path, read_only: bool, security: MountSecurity) -> Result<()> {
    bind_onto(&beneath::proc_path(dir), target, target, read_only, security)
}

/// Bind-mount `src` at `target` with `security`'s flags (and read-only if asked). A bind mount
/// takes its flags only from a remount, so the flags are a second step, at `mounted` (the path
/// of `target`: a remount through a `/proc/self/fd/N` target would reach the directory under the
/// new mount, not the mount); if that fails the bind is undone.
pub(crate) fn bind_onto(
    src: &Path,
    target: &Path,
    mounted: &Path,
    read_only: bool,
    security: MountSecurity,
) -> Result<()> {
    use nix::mount::{MsFlags, mount};
    mount(Some(src), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| AttachError::io("bind-mount onto", target, e.into()))?;
    let target = mounted;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | security.ms_flags();
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    if flags != MsFlags::MS_BIND | MsFlags::MS_REMOUNT
        && let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
    {
        let _ = nix::mount::umount(target);
        return Err(AttachError::io("set the mount flags of", target, e.into()));
    }
    Ok(())
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
    let shown = format!("e2fsck -f -p {}", device.display());
    let fsck = cmd::output_within(
        cmd::LONG,
        tokio::process::Command::new("e2fsck").args(["-f", "-p"]).arg(device),
        &shown,
    )
    .await?;
    // 0: clean, 1: errors corrected.
    if !matches!(fsck.status.code(), Some(0 | 1)) {
        return Err(command_error("e2fsck -f -p", &fsck));
    }
    cmd::run_within(cmd::LONG, "resize2fs", &[path_str(device)])
        .await
        .map(drop)
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
    let shown = format!("blkid {}", device.display());
    let out = cmd::output_within(
        cmd::QUICK,
        tokio::process::Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "TYPE"])
            .arg(device),
        &shown,
    )
    .await?;
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
    // A device over a dead portal can block a read in the kernel: give up waiting (the blocked
    // thread is the kernel's to release).
    let read = tokio::task::spawn_blocking(move || {
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
    });
    match tokio::time::timeout(cmd::QUICK, read).await {
        Ok(done) => done
            .expect("superblock read panicked")
            .map_err(|e| AttachError::io("read the superblock of", device, e)),
        Err(_) => Err(AttachError::Timeout {
            command: format!("reading the superblock of {}", device.display()),
            after: cmd::QUICK,
        }),
    }
}

/// (block count, block size) of an ext4 superblock (ext magic with the extents feature, as
/// mkfs.ext4 makes it), or `None` if `sb` holds no ext4.
fn ext4_size(sb: &[u8]) -> Option<(u64, u64)> {
    let u32_at = |off: usize| {
        sb.get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let magic = sb
        .get(1024 + 0x38..1024 + 0x3a)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))?;
    let incompat = u32_at(1024 + 0x60)?;
    const EXTENTS: u32 = 0x40;
    const BIT64: u32 = 0x80;
    if magic != 0xEF53 || incompat & EXTENTS == 0 {
        return None;
    }
    let lo = u64::from(u32_at(1024 + 0x4)?);
    let hi = if incompat & BIT64 != 0 {
        u64::from(u32_at(1024 + 0x150)?)
    } else {
        0
    };
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
        let Ok(back) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
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

/// Unmount everything stacked at `mountpoint`. `lazy_if_stuck`: for a volume whose helper is
/// gone, detach lazily when a plain unmount fails or does not finish in time.
async fn unmount(mountpoint: &Path, lazy_if_stuck: bool) -> Result<()> {
    while mountinfo::find(mountpoint)?.is_some() {
        let shown = format!("umount {}", mountpoint.display());
        let out = cmd::output_within(
            cmd::QUICK,
            tokio::process::Command::new("umount").arg(mountpoint),
            &shown,
        )
        .await;
        let failure = match out {
            Ok(out) if out.status.success() => continue,
            Ok(out) if String::from_utf8_lossy(&out.stderr).contains("busy") && !lazy_if_stuck => {
                return Err(AttachError::Busy {
                    path: mountpoint.to_path_buf(),
                });
            }
            Ok(out) => command_error(&shown, &out),
            Err(e) => e,
        };
        if !lazy_if_stuck {
            return Err(failure);
        }
        tracing::warn!(mountpoint = %mountpoint.display(), "{failure}; its helper is gone: detaching lazily");
        run("umount", &["-l".into(), path_str(mountpoint)]).await?;
    }
    Ok(())
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
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&target)?;
        f.write_all(content.as_bytes())
    })
    .await
    .expect("write task panicked")
    .map_err(|e| AttachError::io("write", path, e))
}

/// A directory only root can enter (a helper's files: its CHAP secret, its QMP socket).
async fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    create_dir(dir).await?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .await
        .map_err(|e| AttachError::io("chmod", dir, e))
}

async fn create_dir(dir: &Path) -> Result<()> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| AttachError::io("create", dir, e))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup's image is the file beneath the pool dir, or nothing: not a host file by `..`,
    /// an absolute path or a symlink, not a device; and the path it hands the engine is that
    /// very file even after the name is swapped.
    #[test]
    fn pool_images_stay_in_the_pool() {
        let t = tempfile::tempdir().unwrap();
        let pool = t.path().join("pool");
        std::fs::create_dir(&pool).unwrap();
        let victim = t.path().join("victim.img");
        std::fs::write(&victim, b"victim").unwrap();
        std::fs::write(pool.join("v.img"), b"legit").unwrap();
        std::os::unix::fs::symlink("../victim.img", pool.join("link.img")).unwrap();
        std::os::unix::fs::symlink("/dev/null", pool.join("dev.img")).unwrap();
        for bad in ["../victim.img", victim.to_str().unwrap(), "link.img", "dev.img", ""] {
            assert!(PoolImage::open(&pool, bad).is_err(), "{bad:?} was opened");
        }
        let img = PoolImage::open(&pool, "v.img").unwrap();
        // Swap the name for a symlink to the victim: the engine's path still reads the image.
        std::fs::rename(pool.join("v.img"), pool.join("v.real")).unwrap();
        std::os::unix::fs::symlink("../victim.img", pool.join("v.img")).unwrap();
        assert_eq!(std::fs::read(img.path()).unwrap(), b"legit");
    }

    /// A tampered attachment record cannot aim detach at host paths.
    #[test]
    fn recorded_paths_must_be_elaras() {
        let mut cfg = AttachConfig::new("/var/lib/elara/mounts".into(), "/var/lib/elara/run".into());
        cfg.pools_root = Some("/var/lib/elara/pools".into());
        let a = Attacher::new(cfg);
        let ok = AttachState {
            device: Some("/dev/loop7".into()),
            backing_file: Some("/var/lib/elara/pools/b/v.img".into()),
            creds_file: Some("/var/lib/elara/run/s3/v.passwd".into()),
            attach_dir: Some("/var/lib/elara/run/attach/v".into()),
            ..AttachState::plain("image-file", "/var/lib/elara/mounts/v".into())
        };
        a.check_recorded(&ok).unwrap();
        let cases: Vec<(&str, AttachState)> = vec![
            (
                "mountpoint",
                AttachState {
                    mountpoint: "/etc".into(),
                    ..ok.clone()
                },
            ),
            (
                "mountpoint",
                AttachState {
                    mountpoint: "/var/lib/elara/mounts/../../../etc".into(),
                    ..ok.clone()
                },
            ),
            (
                "device",
                AttachState {
                    device: Some("/dev/sda".into()),
                    ..ok.clone()
                },
            ),
            (
                "device",
                AttachState {
                    device: Some("/dev/loop7/../sda".into()),
                    ..ok.clone()
                },
            ),
            (
                "backing_file",
                AttachState {
                    backing_file: Some("/var/lib/docker/x.img".into()),
                    ..ok.clone()
                },
            ),
            (
                "creds_file",
                AttachState {
                    creds_file: Some("/etc/shadow".into()),
                    ..ok.clone()
                },
            ),
            (
                "attach_dir",
                AttachState {
                    attach_dir: Some("/".into()),
                    ..ok.clone()
                },
            ),
        ];
        for (field, st) in cases {
            let e = a.check_recorded(&st).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    /// The superblock fast path agrees with mkfs: ext4 and its size, xfs, blank.
    #[tokio::test]
    async fn superblock_probe() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("v.img");
        std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
        assert_eq!(ext4_size(&read_superblock(&img).await.unwrap().0), None, "blank");
        let ok = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .status()
            .unwrap();
        assert!(ok.success());
        let (sb, size) = read_superblock(&img).await.unwrap();
        let (blocks, bs) = ext4_size(&sb).expect("ext4 found");
        assert_eq!(blocks * bs, 64 << 20);
        assert_eq!(size, 64 << 20);
        assert_eq!(probe_fs(&img).await.unwrap().as_deref(), Some("ext4"));
        std::fs::File::create(&img).unwrap().set_len(320 << 20).unwrap();
        let ok = std::process::Command::new("mkfs.xfs")
            .args(["-q", "-f"])
            .arg(&img)
            .status()
            .unwrap();
        assert!(ok.success());
        assert_eq!(probe_fs(&img).await.unwrap().as_deref(), Some("xfs"));
    }
}
