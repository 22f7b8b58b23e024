//! Snapshots: create (crash-consistent: a mounted filesystem is frozen while the driver copies),
//! list, inspect, delete. Restoring is `create_volume` with `snapshot`.

use elara_runtime::{Features, ProgressFn, SnapshotSpec};
use elara_store::StoreExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Elara, absent, del, faults, put, raced, rev};
use crate::error::{ApiError, ApiResult};
use crate::model::*;
use crate::validate::check_name;

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateSnapshot {
    pub volume: String,
    /// Defaults to `<volume>-<unix time>`.
    pub name: Option<String>,
}

impl Elara {
    pub async fn create_snapshot(&self, req: CreateSnapshot) -> ApiResult<SnapshotRecord> {
        self.create_snapshot_reporting(req, None).await
    }

    /// [`Elara::create_snapshot`]; the driver's copy progress is in the op record
    /// (`params.progress`) and also goes to `report` (a backup job's own progress).
    pub(crate) async fn create_snapshot_reporting(
        &self,
        req: CreateSnapshot,
        report: Option<ProgressFn>,
    ) -> ApiResult<SnapshotRecord> {
        let name = req.name.clone().unwrap_or_else(|| format!("{}-{}", req.volume, now()));
        check_name("name", &name)?;
        let skey = keys::snapshot(&name);
        if self.store.get(&skey).await?.is_some() {
            return Err(ApiError::conflict(format!("a snapshot named {name:?} already exists")).with_field("name"));
        }
        let vol = self
            .get::<VolumeRecord>(&keys::volume(&req.volume))
            .await?
            .ok_or_else(|| ApiError::invalid("volume", format!("volume {:?} does not exist", req.volume)))?
            .value;
        if let Some(node) = &vol.node
            && node != self.node()
        {
            return Err(ApiError::conflict(format!(
                "volume {:?} lives on node {node:?}; snapshot it there",
                vol.name
            )));
        }
        let (_, backend) = self.backends.get(&vol.backend).await?;
        if !backend.driver().info().features.contains(Features::SNAPSHOT) {
            return Err(ApiError::new(
                501,
                "unsupported",
                format!("backend {} does not support snapshots", vol.backend),
            ));
        }
        let snap = SnapshotRecord {
            v: SCHEMA,
            id: uuid::Uuid::new_v4().to_string(),
            name: name.clone(),
            volume: vol.name.clone(),
            volume_id: vol.id.clone(),
            backend: vol.backend.clone(),
            node: vol.node.clone(),
            size_bytes: vol.size_bytes,
            fs: vol.fs,
            state: SnapshotState::Creating,
            op: None,
            error: None,
            backend_ref: None,
            created_at: now(),
        };
        let params = serde_json::json!({ "snapshot_id": snap.id, "volume_id": vol.id });
        let mut op = self.new_op(OpKind::CreateSnapshot, &vol.name, Some(&name), params);
        let mut snap = SnapshotRecord {
            op: Some(op.id.clone()),
            ..snap
        };

        // Lock the volume and record the snapshot in one transaction.
        let vkey = keys::volume(&vol.name);
        let cur = self
            .get::<VolumeRecord>(&vkey)
            .await?
            .ok_or_else(|| ApiError::not_found("volume", &vol.name))?;
        if let Some(other) = &cur.value.op {
            return Err(ApiError::busy("volume", &vol.name, other));
        }
        if cur.value.state != VolumeState::Available {
            return Err(ApiError::conflict(format!(
                "volume {:?} is {:?}",
                vol.name, cur.value.state
            )));
        }
        let mut locked = cur.value.clone();
        locked.op = Some(op.id.clone());
        let ok = self
            .txn(
                vec![rev(vkey.clone(), cur.revision), absent(skey.clone())],
                vec![put(vkey, &locked), put(skey.clone(), &snap), put(keys::op(&op.id), &op)],
            )
            .await?;
        if !ok {
            return Err(raced("volume", &vol.name));
        }
        faults::point("snapshot:after-intent");

        // A mounted filesystem is frozen so the copy is consistent; the reconciler thaws it if we die.
        let frozen = match self.mounted_block(&vol).await? {
            Some(state) => {
                self.attacher.freeze(&state.mountpoint).await.map_err(|e| {
                    ApiError::internal(format!("volume {}: freezing it for the snapshot: {e}", vol.name))
                })?;
                Some(state.mountpoint)
            }
            None => None,
        };
        faults::point("snapshot:after-freeze");
        let spec = SnapshotSpec {
            id: snap.id.clone(),
            volume_id: vol.id.clone(),
            name: name.clone(),
        };
        let (ticker, sink) = self.copy_progress(&op.id, report);
        let made = backend.snapshot_create_with_progress(&spec, sink).await;
        drop(ticker);
        if let Some(mp) = &frozen {
            self.attacher.thaw(mp).await;
        }
        let made = match made {
            Ok(s) => s,
            Err(e) => {
                let err = ApiError::from_call(&vol.backend, e);
                self.undo_snapshot(&mut op, &snap, &err.to_string()).await;
                return Err(err);
            }
        };
        faults::point("snapshot:after-driver");
        self.op_step(&mut op, "driver-done").await?;
        snap.backend_ref = Some(made.backend_ref);
        snap.size_bytes = made.size_bytes.max(snap.size_bytes);
        self.finish_snapshot(&op, snap).await
    }

    pub(crate) async fn finish_snapshot(&self, op: &OpRecord, mut snap: SnapshotRecord) -> ApiResult<SnapshotRecord> {
        snap.state = SnapshotState::Available;
        snap.op = None;
        let mut ops = vec![put(keys::snapshot(&snap.name), &snap), del(keys::op(&op.id))];
        let mut cmps = vec![];
        let vkey = keys::volume(&snap.volume);
        if let Some(cur) = self.get::<VolumeRecord>(&vkey).await?
            && cur.value.op.as_deref() == Some(op.id.as_str())
        {
            let mut v = cur.value;
            v.op = None;
            cmps.push(rev(vkey.clone(), cur.revision));
            ops.push(put(vkey, &v));
        }
        if !self.txn(cmps, ops).await? {
            return Err(raced("volume", &snap.volume));
        }
        tracing::info!(snapshot = %snap.name, volume = %snap.volume, "snapshot created");
        Ok(snap)
    }

    /// Undo a snapshot create: remove what the driver made, the record, and the volume's lock.
    pub(crate) async fn undo_snapshot(&self, op: &mut OpRecord, snap: &SnapshotRecord, why: &str) {
        let result = async {
            if let Some(state) = self.mounted_block_by_name(&snap.volume).await? {
                self.attacher.thaw(&state).await;
            }
            let (_, backend) = self.backends.get(&snap.backend).await?;
            backend
                .snapshot_delete(&snap.id)
                .await
                .map_err(|e| ApiError::from_call(&snap.backend, e))?;
            let mut ops = vec![del(keys::op(&op.id))];
            let mut cmps = vec![];
            if let Some(cur) = self.get::<SnapshotRecord>(&keys::snapshot(&snap.name)).await?
                && cur.value.id == snap.id
            {
                ops.push(del(keys::snapshot(&snap.name)));
            }
            let vkey = keys::volume(&snap.volume);
            if let Some(cur) = self.get::<VolumeRecord>(&vkey).await?
                && cur.value.op.as_deref() == Some(op.id.as_str())
            {
                let mut v = cur.value;
                v.op = None;
                cmps.push(rev(vkey.clone(), cur.revision));
                ops.push(put(vkey, &v));
            }
            self.txn(cmps, ops).await?;
            ApiResult::Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(snapshot = %snap.name, "snapshot failed ({why}) and its undo failed ({e}); the reconciler will retry");
            self.op_abandon(op, &format!("{why}; undo: {e}")).await;
        }
    }

    async fn mounted_block_by_name(&self, volume: &str) -> ApiResult<Option<std::path::PathBuf>> {
        match self.get::<VolumeRecord>(&keys::volume(volume)).await? {
            Some(v) => Ok(self.mounted_block(&v.value).await?.map(|s| s.mountpoint)),
            None => Ok(None),
        }
    }

    pub async fn list_snapshots_raw(&self) -> ApiResult<Vec<SnapshotRecord>> {
        Ok(self
            .store
            .list_json::<SnapshotRecord>(&keys::snapshots())
            .await?
            .into_iter()
            .map(|r| r.value)
            .collect())
    }

    /// The users' snapshots (those that backups keep for themselves are hidden; `snapshot
    /// inspect` still shows them).
    pub async fn list_snapshots(&self, volume: Option<&str>) -> ApiResult<Vec<SnapshotRecord>> {
        let internal = self.backup_snapshots().await?;
        Ok(self
            .list_snapshots_raw()
            .await?
            .into_iter()
            .filter(|s| volume.is_none_or(|v| s.volume == v) && !internal.contains(&s.name))
            .collect())
    }

    pub async fn snapshot(&self, name: &str) -> ApiResult<SnapshotRecord> {
        Ok(self
            .get::<SnapshotRecord>(&keys::snapshot(name))
            .await?
            .ok_or_else(|| ApiError::not_found("snapshot", name))?
            .value)
    }

    pub async fn delete_snapshot(&self, name: &str) -> ApiResult<()> {
        let key = keys::snapshot(name);
        let cur = self
            .get::<SnapshotRecord>(&key)
            .await?
            .ok_or_else(|| ApiError::not_found("snapshot", name))?;
        if let Some(other) = &cur.value.op {
            return Err(ApiError::busy("snapshot", name, other));
        }
        if let Some(node) = &cur.value.node
            && node != self.node()
        {
            return Err(ApiError::conflict(format!(
                "snapshot {name:?} lives on node {node:?}; delete it there"
            )));
        }
        let params = serde_json::json!({ "snapshot_id": cur.value.id });
        let mut op = self.new_op(OpKind::DeleteSnapshot, &cur.value.volume, Some(name), params);
        let mut snap = cur.value.clone();
        snap.state = SnapshotState::Deleting;
        snap.op = Some(op.id.clone());
        if !self
            .txn(
                vec![rev(key.clone(), cur.revision)],
                vec![put(key, &snap), put(keys::op(&op.id), &op)],
            )
            .await?
        {
            return Err(raced("snapshot", name));
        }
        faults::point("snapshot-delete:after-intent");
        self.finish_snapshot_delete(&mut op, &snap).await
    }

    pub(crate) async fn finish_snapshot_delete(&self, op: &mut OpRecord, snap: &SnapshotRecord) -> ApiResult<()> {
        let (_, backend) = self.backends.get(&snap.backend).await?;
        if let Err(e) = backend.snapshot_delete(&snap.id).await {
            let err = ApiError::from_call(&snap.backend, e);
            self.op_abandon(op, &err.to_string()).await;
            return Err(err);
        }
        faults::point("snapshot-delete:after-driver");
        let mut ops = vec![del(keys::op(&op.id))];
        if let Some(cur) = self.get::<SnapshotRecord>(&keys::snapshot(&snap.name)).await?
            && cur.value.id == snap.id
        {
            ops.push(del(keys::snapshot(&snap.name)));
        }
        self.txn(vec![], ops).await?;
        tracing::info!(snapshot = %snap.name, "snapshot deleted");
        Ok(())
    }
}
