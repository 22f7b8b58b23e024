//! Volume lifecycle: create (optionally from a snapshot), inspect, list, delete, resize.

use std::collections::BTreeMap;

use elara_runtime::{Features, ProgressFn, Qos, VolumeSpec};
use elara_store::StoreExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::placement::PlaceRequest;
use super::{Elara, absent, del, faults, put, raced, rev};
use crate::error::{ApiError, ApiResult};
use crate::model::*;
use crate::validate::{check_name, parse_size};

/// `volume create` as every door hands it over (sizes still as text, so errors name the field).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateVolume {
    pub name: String,
    /// e.g. `10G`; defaults to 1G, or to the snapshot's size when restoring.
    pub size: Option<String>,
    pub backend: Option<String>,
    /// Any backend of this driver (Docker's `driver-name`).
    pub driver: Option<String>,
    pub pool: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `ext4` (default) or `xfs`, for block volumes.
    pub fs: Option<String>,
    /// Restore from this snapshot.
    pub snapshot: Option<String>,
    pub iops: Option<u64>,
    /// A volume type (scheduler specs).
    #[serde(rename = "type")]
    pub volume_type: Option<String>,
    /// Inline extra specs, key → value in Cinder's syntax (`iops` → `>= 1000`).
    #[serde(default)]
    pub specs: BTreeMap<String, String>,
}

/// A volume as shown to users: the record plus where it is mounted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VolumeView {
    #[serde(flatten)]
    pub record: VolumeRecord,
    /// `available`, `in-use`, `creating`, `deleting` or `error`.
    pub status: String,
    pub attachments: Vec<AttachmentRecord>,
}

pub const DEFAULT_SIZE: u64 = 1 << 30;

impl Elara {
    pub async fn create_volume(&self, req: CreateVolume) -> ApiResult<VolumeRecord> {
        self.create_volume_reporting(req, None).await
    }

    /// [`Elara::create_volume`]; when it copies a snapshot, the driver's progress is in the op
    /// record (`params.progress`) and also goes to `report` (a backup job's own progress).
    pub(crate) async fn create_volume_reporting(
        &self,
        req: CreateVolume,
        report: Option<ProgressFn>,
    ) -> ApiResult<VolumeRecord> {
        check_name("name", &req.name)?;
        for k in req.labels.keys() {
            if k.is_empty() || k.len() > 256 {
                return Err(ApiError::invalid(
                    "label",
                    format!("label key {k:?} must be 1-256 characters"),
                ));
            }
        }
        let fs = match req.fs.as_deref() {
            None | Some("ext4") => FsType::Ext4,
            Some("xfs") => FsType::Xfs,
            Some(other) => {
                return Err(ApiError::invalid(
                    "fs",
                    format!("{other:?} is not supported; use ext4 or xfs"),
                ));
            }
        };
        if req.iops == Some(0) {
            return Err(ApiError::invalid("iops", "must be greater than zero"));
        }
        let size_given = req.size.as_deref().map(|s| parse_size("size", s)).transpose()?;
        let key = keys::volume(&req.name);
        if self.store.get(&key).await?.is_some() {
            return Err(ApiError::conflict(format!("a volume named {:?} already exists", req.name)).with_field("name"));
        }

        // Restoring: the snapshot decides the backend and the minimum size.
        let source = match &req.snapshot {
            Some(s) => {
                let snap = self
                    .get::<SnapshotRecord>(&keys::snapshot(s))
                    .await?
                    .ok_or_else(|| ApiError::invalid("snapshot", format!("snapshot {s:?} does not exist")))?;
                if snap.value.state != SnapshotState::Available {
                    return Err(ApiError::invalid(
                        "snapshot",
                        format!("snapshot {s:?} is {:?}, not available", snap.value.state),
                    ));
                }
                if let Some(b) = &req.backend
                    && *b != snap.value.backend
                {
                    return Err(ApiError::invalid(
                        "backend",
                        format!(
                            "snapshot {s:?} lives on backend {:?}; restore it there",
                            snap.value.backend
                        ),
                    ));
                }
                Some(snap.value)
            }
            None => None,
        };
        let size_bytes = match (&source, size_given) {
            (Some(snap), Some(size)) if size < snap.size_bytes => {
                return Err(ApiError::invalid(
                    "size",
                    format!(
                        "{size} bytes is smaller than snapshot {:?} ({} bytes)",
                        snap.name, snap.size_bytes
                    ),
                ));
            }
            (_, Some(size)) => size,
            (Some(snap), None) => snap.size_bytes,
            (None, None) => DEFAULT_SIZE,
        };

        let placement = self
            .place(&PlaceRequest {
                size_bytes,
                backend: source.as_ref().map(|s| s.backend.clone()).or(req.backend.clone()),
                driver: req.driver.clone(),
                pool: req.pool.clone(),
                volume_type: req.volume_type.clone(),
                specs: req.specs.clone(),
            })
            .await?;
        let (backend_rec, backend) = self.backends.get(&placement.backend).await?;
        let info = backend.driver().info();
        let features = info.features;
        if req.iops.is_some() && !features.contains(Features::QOS) {
            // The driver's own word on why, where it gives one (`info().notes` key `qos`).
            let why = info
                .notes
                .iter()
                .find(|(k, _)| k == "qos")
                .map(|(_, v)| format!(" ({v})"))
                .unwrap_or_default();
            return Err(ApiError::invalid(
                "iops",
                format!(
                    "backend {} (driver {}) cannot enforce IOPS limits{why}",
                    backend_rec.name, backend_rec.driver
                ),
            ));
        }
        if source.is_some() && !features.contains(Features::CLONE) {
            return Err(ApiError::invalid(
                "snapshot",
                format!("backend {} cannot create a volume from a snapshot", backend_rec.name),
            ));
        }
        if let Some(snap) = &source
            && snap.node.is_some()
            && snap.node.as_deref() != Some(self.node())
        {
            return Err(ApiError::invalid(
                "snapshot",
                format!(
                    "snapshot {:?} lives on node {:?}; restore it there",
                    snap.name, snap.node
                ),
            ));
        }

        let qos = req.iops.map(|iops| QosSpec {
            iops: Some(iops),
            bandwidth_bytes_per_sec: None,
        });
        let mut vol = VolumeRecord {
            v: SCHEMA,
            id: uuid::Uuid::new_v4().to_string(),
            name: req.name.clone(),
            backend: placement.backend.clone(),
            pool: placement.pool.clone(),
            node: (backend_rec.scope == Scope::Node).then(|| self.node().to_string()),
            size_bytes,
            fs,
            labels: req.labels.clone(),
            qos: qos.clone(),
            volume_type: req.volume_type.clone(),
            source_snapshot: source.as_ref().map(|s| s.name.clone()),
            state: VolumeState::Creating,
            op: None,
            error: None,
            backend_ref: None,
            formatted: source.is_some(),
            created_at: now(),
        };
        let params = serde_json::json!({ "volume_id": vol.id, "backend": vol.backend });
        let mut op = self.new_op(
            OpKind::CreateVolume,
            &vol.name,
            source.as_ref().map(|s| s.name.as_str()),
            params,
        );
        vol.op = Some(op.id.clone());
        if !self
            .txn(
                vec![absent(key.clone())],
                vec![put(key.clone(), &vol), put(keys::op(&op.id), &op)],
            )
            .await?
        {
            return Err(ApiError::conflict(format!("a volume named {:?} already exists", req.name)).with_field("name"));
        }
        faults::point(if source.is_some() {
            "restore:after-intent"
        } else {
            "create:after-intent"
        });

        let spec = VolumeSpec {
            id: vol.id.clone(),
            name: vol.name.clone(),
            size_bytes,
            pool: vol.pool.clone(),
            labels: vol.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            qos: qos.map(|q| Qos {
                iops: q.iops,
                bandwidth_bytes_per_sec: q.bandwidth_bytes_per_sec,
            }),
        };
        let made = match &source {
            Some(snap) => {
                let (_ticker, sink) = self.copy_progress(&op.id, report);
                backend.create_from_snapshot_with_progress(&spec, &snap.id, sink).await
            }
            None => backend.create(&spec).await,
        };
        let made = match made {
            Ok(v) => v,
            Err(e) => {
                let err = ApiError::from_call(&vol.backend, e);
                self.undo_create(&mut op, &vol, &err.to_string()).await;
                return Err(err);
            }
        };
        faults::point(if source.is_some() {
            "restore:after-driver"
        } else {
            "create:after-driver"
        });
        self.op_step(&mut op, "driver-done").await?;
        self.finish_create(&op, made).await
    }

    /// Last step of a create: the volume becomes available and the op disappears, atomically. The
    /// driver's answer is authoritative for where the volume landed (a restore may go beside its
    /// snapshot, not into the pool the scheduler picked).
    pub(crate) async fn finish_create(&self, op: &OpRecord, made: elara_runtime::Volume) -> ApiResult<VolumeRecord> {
        let key = keys::volume(&op.volume);
        let cur = self
            .get::<VolumeRecord>(&key)
            .await?
            .ok_or_else(|| ApiError::internal(format!("volume {} vanished during create", op.volume)))?;
        let mut vol = cur.value;
        vol.state = VolumeState::Available;
        vol.op = None;
        vol.error = None;
        vol.backend_ref = Some(made.backend_ref);
        if !made.pool.is_empty() {
            vol.pool = made.pool;
        }
        if !self
            .txn(
                vec![rev(key.clone(), cur.revision)],
                vec![put(key, &vol), del(keys::op(&op.id))],
            )
            .await?
        {
            return Err(raced("volume", &vol.name));
        }
        tracing::info!(volume = %vol.name, id = %vol.id, backend = %vol.backend, "volume created");
        Ok(vol)
    }

    /// Undo a failed create: remove whatever the driver made, then the records. If the driver
    /// cannot be reached, the op goes to the reconciler and the volume shows `error`.
    pub(crate) async fn undo_create(&self, op: &mut OpRecord, vol: &VolumeRecord, why: &str) {
        let result = async {
            let (_, backend) = self.backends.get(&vol.backend).await?;
            backend
                .delete(&vol.id)
                .await
                .map_err(|e| ApiError::from_call(&vol.backend, e))?;
            let key = keys::volume(&vol.name);
            let ops = vec![del(key.clone()), del(keys::op(&op.id))];
            match self.get::<VolumeRecord>(&key).await? {
                Some(cur) if cur.value.id == vol.id => {
                    self.txn(vec![rev(key, cur.revision)], ops).await?;
                }
                _ => {
                    self.store.delete(&keys::op(&op.id)).await?;
                }
            }
            ApiResult::Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(volume = %vol.name, "create failed ({why}) and its undo failed ({e}); the reconciler will retry");
            self.mark_volume_error(&vol.name, &format!("create failed: {why}"))
                .await;
            self.op_abandon(op, &format!("{why}; undo: {e}")).await;
        }
    }

    pub(crate) async fn mark_volume_error(&self, name: &str, why: &str) {
        let key = keys::volume(name);
        if let Ok(Some(cur)) = self.get::<VolumeRecord>(&key).await {
            let mut v = cur.value;
            v.state = VolumeState::Error;
            v.error = Some(why.to_string());
            let _ = self.txn(vec![rev(key.clone(), cur.revision)], vec![put(key, &v)]).await;
        }
    }

    pub async fn list_volumes_raw(&self) -> ApiResult<Vec<VolumeRecord>> {
        Ok(self
            .store
            .list_json::<VolumeRecord>(&keys::volumes())
            .await?
            .into_iter()
            .map(|r| r.value)
            .collect())
    }

    /// Volumes with their status, filtered by backend and labels; not the temporary clones of
    /// running backups.
    pub async fn list_volumes(&self, backend: Option<&str>, labels: &[(String, String)]) -> ApiResult<Vec<VolumeView>> {
        let attachments = self
            .store
            .list_json::<AttachmentRecord>(&keys::all_attachments())
            .await?;
        Ok(self
            .listed_volumes()
            .await?
            .into_iter()
            .filter(|v| backend.is_none_or(|b| v.backend == b))
            .filter(|v| labels.iter().all(|(k, val)| v.labels.get(k) == Some(val)))
            .map(|v| {
                let atts: Vec<AttachmentRecord> = attachments
                    .iter()
                    .filter(|a| a.value.volume == v.name)
                    .map(|a| a.value.clone())
                    .collect();
                view(v, atts)
            })
            .collect())
    }

    pub async fn volume(&self, name: &str) -> ApiResult<VolumeView> {
        let rec = self
            .get::<VolumeRecord>(&keys::volume(name))
            .await?
            .ok_or_else(|| ApiError::not_found("volume", name))?;
        let atts = self
            .store
            .list_json::<AttachmentRecord>(&keys::attachments(name))
            .await?
            .into_iter()
            .map(|a| a.value)
            .collect();
        Ok(view(rec.value, atts))
    }

    /// Usage figures from the driver.
    pub async fn volume_stats(&self, name: &str) -> ApiResult<elara_runtime::VolumeStats> {
        let rec = self
            .get::<VolumeRecord>(&keys::volume(name))
            .await?
            .ok_or_else(|| ApiError::not_found("volume", name))?;
        let (_, backend) = self.backends.get(&rec.value.backend).await?;
        backend
            .stats(&rec.value.id)
            .await
            .map_err(|e| ApiError::from_call(&rec.value.backend, e))
    }

    /// Take a volume's lock for `op`: it must be available and not busy. Returns the new revision.
    pub(crate) async fn lock_volume(
        &self,
        name: &str,
        op: &OpRecord,
        state: VolumeState,
    ) -> ApiResult<(VolumeRecord, i64)> {
        let key = keys::volume(name);
        let cur = self
            .get::<VolumeRecord>(&key)
            .await?
            .ok_or_else(|| ApiError::not_found("volume", name))?;
        if let Some(other) = &cur.value.op {
            return Err(ApiError::busy("volume", name, other));
        }
        if cur.value.state != VolumeState::Available {
            return Err(ApiError::conflict(format!("volume {name:?} is {:?}", cur.value.state)));
        }
        let mut vol = cur.value.clone();
        vol.op = Some(op.id.clone());
        vol.state = state;
        if !self
            .txn(
                vec![rev(key.clone(), cur.revision)],
                vec![put(key.clone(), &vol), put(keys::op(&op.id), op)],
            )
            .await?
        {
            return Err(raced("volume", name));
        }
        let now_rev = self.get::<VolumeRecord>(&key).await?.map(|r| r.revision).unwrap_or(0);
        Ok((vol, now_rev))
    }

    /// Release a volume's lock (applying `change`) and drop the op, atomically.
    pub(crate) async fn unlock_volume(
        &self,
        name: &str,
        op: &OpRecord,
        change: impl FnOnce(&mut VolumeRecord),
    ) -> ApiResult<VolumeRecord> {
        let key = keys::volume(name);
        let cur = self
            .get::<VolumeRecord>(&key)
            .await?
            .ok_or_else(|| ApiError::not_found("volume", name))?;
        let mut vol = cur.value;
        if vol.op.as_deref() == Some(op.id.as_str()) {
            vol.op = None;
        }
        if vol.state != VolumeState::Error {
            vol.state = VolumeState::Available;
        }
        change(&mut vol);
        if !self
            .txn(
                vec![rev(key.clone(), cur.revision)],
                vec![put(key, &vol), del(keys::op(&op.id))],
            )
            .await?
        {
            return Err(raced("volume", name));
        }
        Ok(vol)
    }

    pub async fn delete_volume(&self, name: &str) -> ApiResult<()> {
        let cur = self
            .get::<VolumeRecord>(&keys::volume(name))
            .await?
            .ok_or_else(|| ApiError::not_found("volume", name))?;
        let atts = self
            .store
            .list_json::<AttachmentRecord>(&keys::attachments(name))
            .await?;
        if let Some(a) = atts.first() {
            let holders: Vec<&String> = a.value.holders.keys().collect();
            return Err(ApiError::conflict(format!(
                "volume {name:?} is mounted on node {} (by {holders:?}); unmount it first",
                a.value.node
            )));
        }
        // Snapshots backups keep for themselves do not hold the volume (see below).
        let internal = self.backup_snapshots().await?;
        let snaps: Vec<String> = self
            .list_snapshots_raw()
            .await?
            .into_iter()
            .filter(|s| s.volume_id == cur.value.id && !internal.contains(&s.name))
            .map(|s| s.name)
            .collect();
        if !snaps.is_empty() {
            return Err(ApiError::conflict(format!(
                "volume {name:?} has snapshots {snaps:?}; delete them first"
            )));
        }
        if let Some(node) = &cur.value.node
            && node != self.node()
        {
            return Err(ApiError::conflict(format!(
                "volume {name:?} lives on node {node:?}; delete it there"
            )));
        }
        // The base snapshots kept for incremental backups go with the volume (its backups stay
        // whole); a backup still running on it keeps its snapshot, and the volume.
        if cur.value.op.is_none() {
            let left = self.drop_backup_bases(&cur.value.id).await?;
            if !left.is_empty() {
                return Err(ApiError::conflict(format!(
                    "volume {name:?} has snapshots {left:?} (a backup of it is running?); retry when it is done"
                )));
            }
        }
        let params = serde_json::json!({ "volume_id": cur.value.id, "backend": cur.value.backend });
        let mut op = self.new_op(OpKind::DeleteVolume, name, None, params);
        // A volume in `error` (a failed create) may be deleted too.
        let key = keys::volume(name);
        if let Some(other) = &cur.value.op {
            return Err(ApiError::busy("volume", name, other));
        }
        let mut vol = cur.value.clone();
        vol.state = VolumeState::Deleting;
        vol.op = Some(op.id.clone());
        // No attachment may appear between our check and the lock: attaching also takes the lock.
        if !self
            .txn(
                vec![rev(key.clone(), cur.revision)],
                vec![put(key.clone(), &vol), put(keys::op(&op.id), &op)],
            )
            .await?
        {
            return Err(raced("volume", name));
        }
        faults::point("delete:after-intent");
        self.finish_delete(&mut op, &vol).await
    }

    /// Driver delete, then records: finishes a delete whoever started it.
    pub(crate) async fn finish_delete(&self, op: &mut OpRecord, vol: &VolumeRecord) -> ApiResult<()> {
        let (_, backend) = self.backends.get(&vol.backend).await?;
        if let Err(e) = backend.delete(&vol.id).await {
            let err = ApiError::from_call(&vol.backend, e);
            self.op_abandon(op, &err.to_string()).await;
            return Err(err);
        }
        faults::point("delete:after-driver");
        self.op_step(op, "driver-done").await?;
        let key = keys::volume(&vol.name);
        let mut ops = vec![del(keys::op(&op.id))];
        if let Some(cur) = self.get::<VolumeRecord>(&key).await?
            && cur.value.id == vol.id
        {
            ops.push(del(key));
        }
        self.txn(vec![], ops).await?;
        tracing::info!(volume = %vol.name, id = %vol.id, "volume deleted");
        Ok(())
    }

    /// Grow a volume; a mounted block volume's filesystem grows with it.
    pub async fn resize_volume(&self, name: &str, size: &str) -> ApiResult<VolumeRecord> {
        let new_size = parse_size("size", size)?;
        let cur = self
            .get::<VolumeRecord>(&keys::volume(name))
            .await?
            .ok_or_else(|| ApiError::not_found("volume", name))?;
        if new_size < cur.value.size_bytes {
            return Err(ApiError::invalid(
                "size",
                format!(
                    "{new_size} bytes is smaller than the current {} bytes; volumes only grow",
                    cur.value.size_bytes
                ),
            ));
        }
        if new_size == cur.value.size_bytes {
            return Ok(cur.value);
        }
        let (_, backend) = self.backends.get(&cur.value.backend).await?;
        if !backend.driver().info().features.contains(Features::RESIZE) {
            return Err(ApiError::invalid(
                "size",
                format!("backend {} cannot resize volumes", cur.value.backend),
            ));
        }
        let params = serde_json::json!({ "volume_id": cur.value.id, "size_bytes": new_size });
        let mut op = self.new_op(OpKind::ResizeVolume, name, None, params);
        let (vol, _) = self.lock_volume(name, &op, VolumeState::Available).await?;
        faults::point("resize:after-intent");
        self.finish_resize(&mut op, &vol, new_size).await
    }

    pub(crate) async fn finish_resize(
        &self,
        op: &mut OpRecord,
        vol: &VolumeRecord,
        new_size: u64,
    ) -> ApiResult<VolumeRecord> {
        let (_, backend) = self.backends.get(&vol.backend).await?;
        if let Err(e) = backend.resize(&vol.id, new_size).await {
            let err = ApiError::from_call(&vol.backend, e);
            // Nothing changed at the driver: release the lock and report.
            self.unlock_volume(&vol.name, op, |_| {}).await?;
            return Err(err);
        }
        faults::point("resize:after-driver");
        self.op_step(op, "driver-done").await?;
        if let Err(e) = self.grow_attached(vol).await {
            tracing::warn!(volume = %vol.name, "the volume grew but its mounted filesystem could not grow online ({e}); it grows at the next mount");
        }
        self.unlock_volume(&vol.name, op, |v| v.size_bytes = new_size).await
    }
}

fn view(record: VolumeRecord, attachments: Vec<AttachmentRecord>) -> VolumeView {
    let status = match record.state {
        VolumeState::Available if !attachments.is_empty() => "in-use".to_string(),
        s => serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
    };
    // A view leaves the daemon: no connection secret in it.
    let attachments = attachments.iter().map(crate::redact::attachment).collect();
    VolumeView {
        record,
        status,
        attachments,
    }
}
