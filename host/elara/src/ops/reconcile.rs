//! The reconciler: runs on every daemon, finds operations whose owner is gone (its node's alive
//! key is missing or belongs to another process incarnation, or the owner handed it over), takes
//! them over by CAS, and finishes or undoes them. Every step it repeats is idempotent.

use elara_store::StoreExt;

use super::{Elara, put, rev};
use crate::error::{ApiError, ApiResult};
use crate::model::*;

/// An op that failed recently is retried after this many seconds.
const RETRY_AFTER: i64 = 3;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Alive {
    pub incarnation: String,
    pub lease: i64,
}

impl Elara {
    /// One pass over every op record. Returns how many ops it settled.
    pub async fn reconcile_once(&self) -> ApiResult<usize> {
        let alive_keys = self.store.list(&keys::alive()).await?;
        let incarnation_of = |node: &str| -> Option<String> {
            alive_keys
                .iter()
                .find(|kv| kv.key == keys::node_alive(node))
                .and_then(|kv| serde_json::from_slice::<Alive>(&kv.value).ok())
                .map(|a| a.incarnation)
        };
        let mut settled = 0;
        for rec in self.store.list_json::<OpRecord>(&keys::ops()).await? {
            let op = rec.value;
            let orphaned = op.owner_incarnation.is_empty()
                || incarnation_of(&op.owner).as_deref() != Some(op.owner_incarnation.as_str());
            if !orphaned {
                continue;
            }
            if op.last_error.is_some() && now() - op.updated_at < RETRY_AFTER {
                continue;
            }
            // Attach and detach work is on the owner's node: only that node can finish it.
            if matches!(op.kind, OpKind::Attach | OpKind::Detach) && op.owner != self.node() {
                continue;
            }
            if let Some(vol) = self.get::<VolumeRecord>(&keys::volume(&op.volume)).await?
                && vol.value.node.as_deref().is_some_and(|n| n != self.node())
            {
                continue;
            }
            // Take it over.
            let mut mine = op.clone();
            mine.owner = self.node().to_string();
            mine.owner_incarnation = self.incarnation.clone();
            mine.owner_lease = self.lease();
            mine.updated_at = now();
            if !self
                .txn(
                    vec![rev(keys::op(&op.id), rec.revision)],
                    vec![put(keys::op(&op.id), &mine)],
                )
                .await?
            {
                continue; // another daemon took it
            }
            tracing::info!(op = %op.id, kind = ?op.kind, volume = %op.volume, step = %op.step, "reconciler: taking over");
            match self.recover(&mut mine).await {
                Ok(()) => settled += 1,
                Err(e) => {
                    tracing::warn!(op = %op.id, "reconciler: not settled yet: {e}");
                    self.op_abandon(&mut mine, &e.to_string()).await;
                }
            }
        }
        Ok(settled)
    }

    /// Finish or undo one op.
    async fn recover(&self, op: &mut OpRecord) -> ApiResult<()> {
        let param = |k: &str| {
            op.params
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .unwrap_or_default()
        };
        let volume_id = param("volume_id");
        let vol = self
            .get::<VolumeRecord>(&keys::volume(&op.volume))
            .await?
            .map(|r| r.value)
            .filter(|v| v.id == volume_id || volume_id.is_empty());
        match op.kind {
            OpKind::CreateVolume => {
                let Some(vol) = vol else {
                    self.store.delete(&keys::op(&op.id)).await?;
                    return Ok(());
                };
                if op.step == "driver-done" {
                    let (_, backend) = self.backends.get(&vol.backend).await?;
                    let listed = backend
                        .list_volumes()
                        .await
                        .map_err(|e| ApiError::from_call(&vol.backend, e))?;
                    if let Some(made) = listed.into_iter().find(|v| v.id == vol.id) {
                        self.finish_create(op, made).await?;
                        return Ok(());
                    }
                }
                let why = op
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the daemon stopped during the create".into());
                let mut copy = op.clone();
                self.undo_create(&mut copy, &vol, &why).await;
                if self.store.get(&keys::op(&op.id)).await?.is_some() {
                    return Err(ApiError::unavailable(format!(
                        "undo of the create of {} is pending",
                        vol.name
                    )));
                }
                Ok(())
            }
            OpKind::DeleteVolume => match vol {
                Some(vol) => self.finish_delete(op, &vol).await,
                None => {
                    // Records gone already; make sure the driver's copy is gone too.
                    let backend = param("backend");
                    if !backend.is_empty() && !volume_id.is_empty() {
                        let (_, b) = self.backends.get(&backend).await?;
                        b.delete(&volume_id)
                            .await
                            .map_err(|e| ApiError::from_call(&backend, e))?;
                    }
                    self.store.delete(&keys::op(&op.id)).await?;
                    Ok(())
                }
            },
            OpKind::ResizeVolume => {
                let size = op.params.get("size_bytes").and_then(|v| v.as_u64()).unwrap_or(0);
                match vol {
                    Some(vol) if size > 0 => self.finish_resize(op, &vol, size).await.map(|_| ()),
                    Some(vol) => self.unlock_volume(&vol.name, op, |_| {}).await.map(|_| ()),
                    None => Ok(self.store.delete(&keys::op(&op.id)).await.map(|_| ())?),
                }
            }
            OpKind::CreateSnapshot => {
                let name = op.snapshot.clone().unwrap_or_default();
                let snap = self
                    .get::<SnapshotRecord>(&keys::snapshot(&name))
                    .await?
                    .map(|r| r.value);
                match snap {
                    Some(snap) if snap.id == param("snapshot_id") => {
                        if op.step == "driver-done" {
                            if let Some(state) = self.mounted_block(vol.as_ref().unwrap_or(&placeholder(&snap))).await?
                            {
                                self.attacher.thaw(&state.mountpoint).await;
                            }
                            self.finish_snapshot(op, snap).await.map(|_| ())
                        } else {
                            let why = op
                                .last_error
                                .clone()
                                .unwrap_or_else(|| "the daemon stopped during the snapshot".into());
                            let mut copy = op.clone();
                            self.undo_snapshot(&mut copy, &snap, &why).await;
                            if self.store.get(&keys::op(&op.id)).await?.is_some() {
                                return Err(ApiError::unavailable(format!("undo of snapshot {name} is pending")));
                            }
                            Ok(())
                        }
                    }
                    _ => {
                        if let Some(v) = vol {
                            self.unlock_volume(&v.name, op, |_| {}).await?;
                        } else {
                            self.store.delete(&keys::op(&op.id)).await?;
                        }
                        Ok(())
                    }
                }
            }
            OpKind::DeleteSnapshot => {
                let name = op.snapshot.clone().unwrap_or_default();
                match self.get::<SnapshotRecord>(&keys::snapshot(&name)).await? {
                    Some(s) => self.finish_snapshot_delete(op, &s.value).await,
                    None => Ok(self.store.delete(&keys::op(&op.id)).await.map(|_| ())?),
                }
            }
            OpKind::CreateBackup | OpKind::RestoreBackup => self.recover_backup_op(op).await,
            OpKind::Attach | OpKind::Detach => {
                let att = self
                    .get::<AttachmentRecord>(&keys::attachment(&op.volume, self.node()))
                    .await?
                    .map(|r| r.value);
                match (vol, att) {
                    (Some(vol), Some(att)) => self.tear_down(op, &vol, &att).await,
                    (Some(vol), None) => self.unlock_volume(&vol.name, op, |_| {}).await.map(|_| ()),
                    (None, _) => Ok(self.store.delete(&keys::op(&op.id)).await.map(|_| ())?),
                }
            }
        }
    }

    /// Run the reconciler every few seconds until the daemon stops.
    pub async fn reconcile_loop(self: std::sync::Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.watch_helpers().await {
                tracing::warn!("checking this node's helper processes failed: {e}");
            }
            if let Err(e) = self.reconcile_once().await {
                tracing::warn!("reconciler pass failed: {e}");
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// A stand-in volume record for a snapshot whose volume record is gone (only name/node are used).
fn placeholder(snap: &SnapshotRecord) -> VolumeRecord {
    VolumeRecord {
        v: SCHEMA,
        id: snap.volume_id.clone(),
        name: snap.volume.clone(),
        backend: snap.backend.clone(),
        pool: String::new(),
        node: snap.node.clone(),
        size_bytes: snap.size_bytes,
        fs: snap.fs,
        labels: Default::default(),
        qos: None,
        volume_type: None,
        source_snapshot: None,
        state: VolumeState::Available,
        op: None,
        error: None,
        backend_ref: None,
        formatted: true,
        created_at: 0,
    }
}
