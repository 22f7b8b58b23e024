//! `elara driver check --attach`: every connection the driver's `attach` returns is brought up
//! on this host through the daemon's own attach layer (loop, iSCSI, NFS, s3fs; formatted on
//! first use), a file is written, synced and read back, and everything is taken down again.

use std::path::Path;

use elara_conformance::{BringUp, BringUpFuture};
use elara_runtime::Connection;

use crate::attach::{AttachConfig, AttachRequest, Attacher, FsType};

/// The test file's size.
const PROBE_BYTES: usize = 1 << 20;

pub struct HostBringUp {
    attacher: Attacher,
    /// The check's `--allow-host` grants: the host connects only there, as the daemon would.
    grants: Vec<elara_runtime::HostGrant>,
    /// Mount root and run dir of this check alone, removed afterwards.
    _dir: tempfile::TempDir,
}

impl HostBringUp {
    pub fn new(grants: Vec<elara_runtime::HostGrant>) -> anyhow::Result<HostBringUp> {
        let dir = tempfile::Builder::new().prefix("elara-check-").tempdir()?;
        let attacher = Attacher::new(AttachConfig::new(dir.path().join("mounts"), dir.path().join("run")));
        Ok(HostBringUp {
            attacher,
            grants,
            _dir: dir,
        })
    }
}

impl BringUp for HostBringUp {
    fn exercise<'a>(&'a self, volume_id: &'a str, pool_dir: &'a Path, connection: &'a Connection) -> BringUpFuture<'a> {
        Box::pin(async move {
            let req = AttachRequest {
                volume_id,
                pool_dir,
                connection,
                fs_type: FsType::Ext4,
                read_only: false,
                grants: &self.grants,
                security: Default::default(),
            };
            let state = self.attacher.attach(req).await.map_err(|e| format!("attach: {e}"))?;
            let used = write_and_read_back(&state.mountpoint).await;
            let down = self.attacher.detach(&state).await.map_err(|e| format!("detach: {e}"));
            let how = match (&state.kind[..], state.mode.as_deref(), state.formatted_now) {
                (kind, Some(mode), true) => format!("{kind} ({mode}) attached, formatted"),
                (kind, Some(mode), false) => format!("{kind} ({mode}) attached"),
                (kind, None, _) => format!("{kind} attached"),
            };
            let shown = used?;
            down?;
            Ok(format!("{how}, {shown}, detached"))
        })
    }
}

/// Write a file of random bytes, sync it, read it back (bypassing nothing: what a container sees).
async fn write_and_read_back(mountpoint: &Path) -> Result<String, String> {
    let path = mountpoint.join(".elara-check");
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut data = vec![0u8; PROBE_BYTES];
        let seed = blake3::hash(uuid::Uuid::new_v4().as_bytes());
        let mut xof = blake3::Hasher::new_keyed(seed.as_bytes()).finalize_xof();
        xof.fill(&mut data);
        let mut f = std::fs::File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        f.write_all(&data)
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        drop(f);
        let back = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        std::fs::remove_file(&path).map_err(|e| format!("remove {}: {e}", path.display()))?;
        if back != data {
            return Err(format!(
                "{} read back differently from what was written",
                path.display()
            ));
        }
        Ok(format!("{} KiB written, synced and read back", PROBE_BYTES >> 10))
    })
    .await
    .map_err(|e| format!("probe task: {e}"))?
}
