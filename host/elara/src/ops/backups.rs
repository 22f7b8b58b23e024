//! Backups: targets (add/list/inspect/remove), and backup, restore and verify jobs.
//!
//! Block volumes (driver `local`: image files) are backed up from the snapshot's image by the
//! block engine. File volumes (drivers of kind `file` or `object`) are backed up as a tree: the
//! snapshot is cloned into a temporary volume (`backup-<backup id>`, labelled with the op and
//! locked by it, so nobody else mounts it), which is mounted read-only on this node through the
//! attach layer, walked by the file engine, unmounted and deleted. A file restore creates the new
//! volume on any backend (block volumes get a filesystem), mounts it the same way and writes the
//! tree. These private mounts have no attachment record: the op's undo (or the reconciler's)
//! unmounts by volume id.
//!
//! A backup is intent-first like every mutation: its op record (`create-backup`) is written before
//! the temporary snapshot is taken, names the snapshot and the backup id, and is deleted in the
//! transaction that writes the backup record, after the manifest is in the target and the snapshot
//! is gone. A restore (`restore-backup`) creates its volume through the normal create path, labels
//! it with the op id and holds its lock while the blocks are written; a crash makes the reconciler
//! delete that half-written volume. Jobs run in the background; their progress is in memory (for
//! `GET /v1/backup-jobs/{id}`) and copied into the op record every second.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use elara_store::StoreExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::volumes::CreateVolume;
use super::{Elara, Shared, absent, del, faults, put, rev};
use crate::attach::{AttachRequest, AttachState};
use crate::backup::engine::{self, EngineError};
use crate::backup::files;
use crate::backup::lease::{self, Lease, LeaseKind};
use crate::backup::progress::{Progress, ProgressView};
use crate::backup::records::{
    BackupKind, BackupRecord, Manifest, TargetLocation, TargetRecord, VerifyReport, keys as bkeys,
};
use crate::backup::target::{Target, TargetError, block_key, manifest_key};
use crate::backup::{BLOCK_SIZE, FORMAT};
use crate::error::{ApiError, ApiResult};
use crate::model::*;
use crate::validate::check_name;

/// The label a restoring volume carries: the id of the op restoring it.
pub const RESTORE_LABEL: &str = "elara.backup.restore-op";
/// The label a file backup's temporary volume (its snapshot, cloned to be mounted) carries: the
/// id of the backup op.
pub const TEMP_LABEL: &str = "elara.backup.temp-op";

/// `backup target add`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct AddTarget {
    pub name: String,
    /// An absolute directory, or `s3://bucket[/prefix]`.
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
}

/// `backup create`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateBackup {
    pub volume: String,
    pub target: String,
    /// Answer when the backup is done (default: at once, with a job to poll).
    #[serde(default)]
    pub wait: bool,
}

/// `backup restore`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RestoreBackup {
    /// The new volume's name.
    pub volume: String,
    pub backend: Option<String>,
    pub pool: Option<String>,
    #[serde(default)]
    pub wait: bool,
}

/// A background job (backup, restore, verify) as REST shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: String,
    /// `backup`, `restore` or `verify`.
    pub kind: String,
    /// `running`, `done` or `failed`.
    pub state: String,
    pub volume: String,
    pub backup: Option<String>,
    pub progress: ProgressView,
    /// What the job produced: the backup record, the restored volume or the verify report.
    #[schema(value_type = Object)]
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
}

struct Job {
    view: Mutex<JobView>,
    progress: Arc<Progress>,
}

impl Job {
    fn snapshot(&self) -> JobView {
        let mut v = self.view.lock().expect("job lock").clone();
        v.progress = self.progress.view();
        v
    }
    fn finish(&self, result: Result<serde_json::Value, ApiError>) {
        let mut v = self.view.lock().expect("job lock");
        match result {
            Ok(r) => {
                v.state = "done".into();
                v.result = Some(r);
                self.progress.phase("done");
            }
            Err(e) => {
                v.state = "failed".into();
                v.error = Some(e.message.clone());
            }
        }
    }
}

/// Jobs of this daemon (running and finished), by id.
fn jobs() -> &'static Mutex<HashMap<String, Arc<Job>>> {
    static JOBS: OnceLock<Mutex<HashMap<String, Arc<Job>>>> = OnceLock::new();
    JOBS.get_or_init(Default::default)
}

fn new_job(id: &str, kind: &str, volume: &str, backup: Option<&str>) -> Arc<Job> {
    let job = Arc::new(Job {
        view: Mutex::new(JobView {
            id: id.into(),
            kind: kind.into(),
            state: "running".into(),
            volume: volume.into(),
            backup: backup.map(str::to_string),
            progress: ProgressView::default(),
            result: None,
            error: None,
        }),
        progress: Arc::new(Progress::default()),
    });
    jobs().lock().expect("jobs lock").insert(id.to_string(), job.clone());
    job
}

fn target_err(e: TargetError) -> ApiError {
    match e {
        TargetError::NotFound(k) => ApiError::new(404, "not-found", format!("{k} is not in the target")),
        other => ApiError::new(502, "target", other.to_string()),
    }
}

fn engine_err(e: EngineError) -> ApiError {
    match e {
        EngineError::BadBlock { .. }
        | EngineError::BadChunk { .. }
        | EngineError::Digest { .. }
        | EngineError::BadManifest { .. } => ApiError::new(422, "corrupt", e.to_string()),
        EngineError::Upload { .. } | EngineError::UploadChunk { .. } => ApiError::new(502, "target", e.to_string()),
        EngineError::Io { .. } => ApiError::internal(e.to_string()),
    }
}

/// Run a job to its end: in the background (answer at once with the job), or inline when `wait`.
async fn run_job<F>(job: Arc<Job>, wait: bool, work: F) -> ApiResult<JobView>
where
    F: std::future::Future<Output = ApiResult<serde_json::Value>> + Send + 'static,
{
    let j = job.clone();
    let handle = tokio::spawn(async move {
        let r = work.await;
        if let Err(e) = &r {
            tracing::warn!(job = %j.snapshot().id, "backup job failed: {}", e.message);
        }
        j.finish(r);
    });
    if wait {
        let _ = handle.await;
        let v = job.snapshot();
        if let Some(e) = &v.error {
            return Err(ApiError::new(422, "failed", e.clone()));
        }
    }
    Ok(job.snapshot())
}

impl Elara {
    // ---- targets -------------------------------------------------------------------------

    pub async fn add_backup_target(&self, req: AddTarget) -> ApiResult<TargetRecord> {
        check_name("name", &req.name)?;
        let location = if let Some(rest) = req.url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.len() < 3
                || bucket.len() > 63
                || !bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            {
                return Err(ApiError::invalid(
                    "url",
                    format!("{bucket:?} is not a valid S3 bucket name (3-63 of a-z 0-9 . -)"),
                ));
            }
            let need = |field: &str, v: &Option<String>| {
                v.clone()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| ApiError::invalid(field, "is required for an s3:// target"))
            };
            let endpoint = need("endpoint", &req.endpoint)?;
            if !endpoint.starts_with("http://") {
                return Err(ApiError::invalid(
                    "endpoint",
                    format!("{endpoint:?}: only http:// endpoints are supported"),
                ));
            }
            TargetLocation::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
                endpoint,
                region: req
                    .region
                    .clone()
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| "us-east-1".into()),
                access_key: need("access_key", &req.access_key)?,
                secret_key: need("secret_key", &req.secret_key)?,
            }
        } else {
            if !req.url.starts_with('/') {
                return Err(ApiError::invalid(
                    "url",
                    format!("{:?} is neither an absolute directory nor s3://bucket/prefix", req.url),
                ));
            }
            TargetLocation::Local {
                path: req.url.trim_end_matches('/').to_string(),
            }
        };
        let key = bkeys::target(&req.name);
        if self.store.get(&key).await?.is_some() {
            return Err(
                ApiError::conflict(format!("a backup target named {:?} already exists", req.name)).with_field("name"),
            );
        }
        Target::open(&location)
            .probe()
            .await
            .map_err(|e| ApiError::invalid("url", format!("the target cannot be used: {e}")))?;
        let node = matches!(location, TargetLocation::Local { .. }).then(|| self.node().to_string());
        let rec = TargetRecord {
            v: SCHEMA,
            name: req.name.clone(),
            location,
            node,
            created_at: now(),
        };
        if !self.txn(vec![absent(key.clone())], vec![put(key, &rec)]).await? {
            return Err(
                ApiError::conflict(format!("a backup target named {:?} already exists", req.name)).with_field("name"),
            );
        }
        tracing::info!(target = %rec.name, url = %rec.url(), "backup target added");
        Ok(rec.redacted())
    }

    pub async fn backup_targets(&self) -> ApiResult<Vec<TargetRecord>> {
        Ok(self
            .store
            .list_json::<TargetRecord>(&bkeys::targets())
            .await?
            .into_iter()
            .map(|r| r.value.redacted())
            .collect())
    }

    async fn target_record(&self, name: &str) -> ApiResult<TargetRecord> {
        Ok(self
            .get::<TargetRecord>(&bkeys::target(name))
            .await?
            .ok_or_else(|| ApiError::not_found("backup target", name))?
            .value)
    }

    pub async fn backup_target(&self, name: &str) -> ApiResult<TargetRecord> {
        Ok(self.target_record(name).await?.redacted())
    }

    async fn open_target(&self, name: &str) -> ApiResult<Target> {
        let rec = self.target_record(name).await?;
        if let Some(node) = &rec.node
            && node != self.node()
        {
            return Err(ApiError::conflict(format!(
                "backup target {name:?} is a directory on node {node:?}; use it there"
            )));
        }
        Ok(Target::open(&rec.location))
    }

    /// Remove a target that no backup uses (its objects stay where they are).
    pub async fn remove_backup_target(&self, name: &str) -> ApiResult<()> {
        self.target_record(name).await?;
        let used: Vec<String> = self
            .list_backups(None, Some(name))
            .await?
            .into_iter()
            .map(|b| b.id)
            .collect();
        if !used.is_empty() {
            return Err(ApiError::conflict(format!(
                "backup target {name:?} holds backups {used:?}; delete them first"
            )));
        }
        self.store.delete(&bkeys::target(name)).await?;
        Ok(())
    }

    // ---- backups -------------------------------------------------------------------------

    /// Snapshots that belong to backups, not to users: the base snapshots reflink pools keep for
    /// the next incremental, and the temporary snapshots of backups in flight. `snapshot list`
    /// hides them, and `volume delete` removes a volume's base snapshots itself.
    pub(crate) async fn backup_snapshots(&self) -> ApiResult<HashSet<String>> {
        let mut names: HashSet<String> = self
            .list_backups(None, None)
            .await?
            .into_iter()
            .filter_map(|b| b.base_snapshot)
            .collect();
        for op in self.store.list_json::<OpRecord>(&keys::ops()).await? {
            if op.value.kind == OpKind::CreateBackup
                && let Some(snap) = op.value.snapshot
            {
                names.insert(snap);
            }
        }
        Ok(names)
    }

    /// Every volume but the temporary clones of the file backups running now (`backup-<id>`,
    /// labelled with their op): what `volume list` and Docker's List show (inspect shows the
    /// clones too). A clone whose op is gone is debris, and stays listed.
    pub(crate) async fn listed_volumes(&self) -> ApiResult<Vec<VolumeRecord>> {
        let live: HashSet<String> = self
            .store
            .list_json::<OpRecord>(&keys::ops())
            .await?
            .into_iter()
            .map(|r| r.value.id)
            .collect();
        let mut vols = self.list_volumes_raw().await?;
        vols.retain(|v| !v.labels.get(TEMP_LABEL).is_some_and(|op| live.contains(op)));
        Ok(vols)
    }

    /// Delete the base snapshots kept for incremental backups of the volume with id `volume_id`
    /// (the volume is going; its backups stay whole, the next backup of another volume is not
    /// affected). Returns the snapshots that are left, which are the user's.
    pub(crate) async fn drop_backup_bases(&self, volume_id: &str) -> ApiResult<Vec<String>> {
        let bases: HashSet<String> = self
            .list_backups(None, None)
            .await?
            .into_iter()
            .filter(|b| b.volume_id == volume_id)
            .filter_map(|b| b.base_snapshot)
            .collect();
        let mut left = vec![];
        for snap in self
            .list_snapshots_raw()
            .await?
            .into_iter()
            .filter(|s| s.volume_id == volume_id)
        {
            if bases.contains(&snap.name) {
                self.delete_snapshot(&snap.name).await?;
                tracing::info!(snapshot = %snap.name, "backup base snapshot removed with its volume");
            } else {
                left.push(snap.name);
            }
        }
        Ok(left)
    }

    pub async fn list_backups(&self, volume: Option<&str>, target: Option<&str>) -> ApiResult<Vec<BackupRecord>> {
        let mut v: Vec<BackupRecord> = self
            .store
            .list_json::<BackupRecord>(&bkeys::backups())
            .await?
            .into_iter()
            .map(|r| r.value)
            .filter(|b| volume.is_none_or(|v| b.volume == v) && target.is_none_or(|t| b.target == t))
            .collect();
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(v)
    }

    pub async fn backup(&self, id: &str) -> ApiResult<BackupRecord> {
        Ok(self
            .get::<BackupRecord>(&bkeys::backup(id))
            .await?
            .ok_or_else(|| ApiError::not_found("backup", id))?
            .value)
    }

    /// Ops of a kind still in flight on a target (other than `except`).
    async fn ops_on_target(&self, target: &str, except: Option<&str>) -> ApiResult<Vec<OpRecord>> {
        Ok(self
            .store
            .list_json::<OpRecord>(&keys::ops())
            .await?
            .into_iter()
            .map(|r| r.value)
            .filter(|o| matches!(o.kind, OpKind::CreateBackup | OpKind::RestoreBackup))
            .filter(|o| {
                o.params.get("target").and_then(|t| t.as_str()) == Some(target) && Some(o.id.as_str()) != except
            })
            .collect())
    }

    /// Remove blocks no manifest references: a mark (every manifest read, every block listed)
    /// and a sweep, under a collection lease in the target (see [`crate::backup::lease`]).
    /// Skipped while a backup runs on the target (it may rely on blocks it found there), whether
    /// seen in the store's ops or by its lease in the target, before the mark or after it; those
    /// blocks are collected by a later pass. `except_op`: the backup being undone, whose own
    /// lease does not count. Keys under `blocks/` that are not block names are left alone.
    pub async fn collect_garbage(&self, target_name: &str, except_op: Option<&str>) -> ApiResult<usize> {
        if self
            .ops_on_target(target_name, except_op)
            .await?
            .iter()
            .any(|o| o.kind == OpKind::CreateBackup)
        {
            tracing::info!(
                target = target_name,
                "a backup is running on the target; block collection deferred"
            );
            return Ok(0);
        }
        let target = self.open_target(target_name).await?;
        let pass = uuid::Uuid::now_v7().to_string();
        let lease = Lease::take(&target, LeaseKind::Gc, &pass, self.node())
            .await
            .map_err(target_err)?;
        let swept = self.mark_and_sweep(target_name, &target, except_op).await;
        let released = lease.release().await.map_err(target_err);
        let removed = swept?;
        released?;
        Ok(removed)
    }

    /// The collection itself, its lease held (see [`Elara::collect_garbage`]).
    async fn mark_and_sweep(&self, target_name: &str, target: &Target, except_op: Option<&str>) -> ApiResult<usize> {
        let own = except_op.map(|op| lease::lease_key(LeaseKind::Backup, op));
        // A live backup lease (other than the one being undone) defers the collection; stale
        // leases (their daemon died) are removed on the way.
        let backup_running = || async {
            for l in lease::leases(target).await.map_err(target_err)? {
                if l.stale {
                    tracing::warn!(lease = %l.key, node = %l.body.node, "removing a stale backup target lease (its holder stopped refreshing it)");
                    target.delete(&l.key).await.map_err(target_err)?;
                } else if l.body.kind == LeaseKind::Backup && Some(&l.key) != own.as_ref() {
                    return Ok::<_, ApiError>(Some(l.body.holder));
                }
            }
            Ok(None)
        };
        if let Some(holder) = backup_running().await? {
            tracing::info!(target = target_name, backup_op = %holder, "a backup holds a lease on the target; block collection deferred");
            return Ok(0);
        }
        // Mark.
        let mut referenced = HashSet::new();
        for id in target.manifest_ids().await.map_err(target_err)? {
            let m = target.manifest(&id).await.map_err(target_err)?;
            referenced.extend(m.chunk_ids().cloned());
        }
        let listing = target.blocks().await.map_err(target_err)?;
        if !listing.foreign.is_empty() {
            let shown: Vec<&String> = listing.foreign.iter().take(5).collect();
            tracing::warn!(target = target_name, count = listing.foreign.len(), examples = ?shown, "foreign keys under blocks/ (not block names Elara writes): left alone");
        }
        faults::point("gc:after-mark");
        // A backup that took its lease during the mark may have listed the blocks about to go.
        if let Some(holder) = backup_running().await? {
            tracing::info!(target = target_name, backup_op = %holder, "a backup started during the mark; block collection deferred");
            return Ok(0);
        }
        // Sweep.
        let mut removed = 0;
        for id in listing.ids.iter().filter(|id| !referenced.contains(*id)) {
            target.delete(&block_key(id)).await.map_err(target_err)?;
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(target = target_name, removed, "unreferenced backup blocks removed");
        }
        Ok(removed)
    }

    /// Delete a backup: its record, its manifest, then the blocks no other backup references.
    pub async fn delete_backup(&self, id: &str) -> ApiResult<()> {
        let cur = self
            .get::<BackupRecord>(&bkeys::backup(id))
            .await?
            .ok_or_else(|| ApiError::not_found("backup", id))?;
        let b = cur.value;
        if let Some(op) =
            self.ops_on_target(&b.target, None).await?.into_iter().find(|o| {
                o.kind == OpKind::RestoreBackup && o.params.get("backup_id").and_then(|v| v.as_str()) == Some(id)
            })
        {
            return Err(ApiError::busy("backup", id, &op.id));
        }
        let target = self.open_target(&b.target).await?;
        if let Some(bs) = &b.base_snapshot
            && self.get::<SnapshotRecord>(&keys::snapshot(bs)).await?.is_some()
        {
            self.delete_snapshot(bs).await?;
        }
        if !self
            .txn(vec![rev(bkeys::backup(id), cur.revision)], vec![del(bkeys::backup(id))])
            .await?
        {
            return Err(super::raced("backup", id));
        }
        target.delete(&manifest_key(id)).await.map_err(target_err)?;
        self.collect_garbage(&b.target, None).await?;
        tracing::info!(backup = id, "backup deleted");
        Ok(())
    }

    /// The image file of a volume or snapshot of a local (image-file) backend, opened once
    /// beneath the pool dir: `backend_ref` is the driver's word, and a backup reads (a restore
    /// writes) what it names as root.
    fn image_path(&self, backend: &str, backend_ref: Option<&str>, what: &str) -> ApiResult<crate::attach::PoolImage> {
        let rel = backend_ref.ok_or_else(|| ApiError::internal(format!("{what} has no backend reference")))?;
        let pool_dir = self.backends.pool_dir(backend);
        crate::attach::PoolImage::open(&pool_dir, rel).map_err(|e| match e {
            crate::attach::AttachError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ApiError::new(
                    501,
                    "unsupported",
                    format!(
                        "{what} is not an image file ({}); backups need the local driver",
                        pool_dir.join(rel).display()
                    ),
                )
            }
            e => ApiError::invalid("backend_ref", format!("{what}: {e}")),
        })
    }

    /// How volumes of `backend` are backed up: image files (driver `local`) in blocks, volumes of
    /// file or object drivers as a tree; anything else is refused, naming `field`.
    async fn backup_kind(&self, backend: &str, field: &str) -> ApiResult<BackupKind> {
        let rec = self
            .get::<BackendRecord>(&keys::backend(backend))
            .await?
            .ok_or_else(|| ApiError::invalid(field, format!("backend {backend:?} does not exist")))?;
        if rec.value.driver == "local" {
            return Ok(BackupKind::Block);
        }
        let (_, b) = self.backends.get(backend).await?;
        match b.driver().info().kind {
            elara_runtime::VolumeKind::File | elara_runtime::VolumeKind::Object => Ok(BackupKind::Files),
            elara_runtime::VolumeKind::Block => Err(ApiError::new(
                501,
                "unsupported",
                format!(
                    "backend {backend:?} uses driver {:?}: block backups need image-file volumes (driver local)",
                    rec.value.driver
                ),
            )
            .with_field(field)),
        }
    }

    /// Bring a volume up on this node for a backup job alone: driver attach, then the host mounts
    /// it (a blank block volume gets its filesystem). No attachment record: the volume is locked
    /// by the job's op, so no one else mounts it; [`Elara::detach_private`] takes it down.
    async fn attach_private(&self, vol: &VolumeRecord, read_only: bool) -> ApiResult<AttachState> {
        let (backend_rec, backend) = self.backends.get(&vol.backend).await?;
        let connection = backend
            .attach(&vol.id, &self.node_info())
            .await
            .map_err(|e| ApiError::from_call(&vol.backend, e))?;
        let pool_dir = self.backends.pool_dir(&vol.backend);
        let grants = super::backends::grants_of(&backend_rec);
        let req = AttachRequest {
            volume_id: &vol.id,
            pool_dir: &pool_dir,
            connection: &connection,
            fs_type: vol.fs.into(),
            read_only,
            grants: &grants,
            security: Default::default(),
        };
        match self.attacher.attach(req).await {
            Ok(state) => Ok(state),
            Err(e) => {
                let _ = backend.detach(&vol.id, &self.node_info()).await;
                Err(ApiError::new(500, "attach-failed", format!("volume {}: {e}", vol.name)))
            }
        }
    }

    /// Take down a private attach (see [`Elara::attach_private`]), found by the volume's id (so a
    /// restarted daemon can do it too). Safe to repeat.
    async fn detach_private(&self, vol: &VolumeRecord) -> ApiResult<()> {
        let backing = vol
            .backend_ref
            .as_deref()
            .and_then(|r| crate::attach::image_path(&self.backends.pool_dir(&vol.backend), r));
        self.attacher
            .detach_by_volume(&vol.id, backing.as_deref())
            .await
            .map_err(|e| ApiError::new(500, "detach-failed", format!("volume {}: {e}", vol.name)))?;
        let (_, backend) = self.backends.get(&vol.backend).await?;
        backend
            .detach(&vol.id, &self.node_info())
            .await
            .map_err(|e| ApiError::from_call(&vol.backend, e))
    }

    /// Take a volume's lock for a backup job's op (CAS); the volume must be free.
    async fn lock_for_job(&self, name: &str, op_id: &str) -> ApiResult<VolumeRecord> {
        let key = keys::volume(name);
        let cur = self
            .get::<VolumeRecord>(&key)
            .await?
            .ok_or_else(|| ApiError::not_found("volume", name))?;
        let mut locked = cur.value.clone();
        locked.op = Some(op_id.to_string());
        if cur.value.op.is_some()
            || !self
                .txn(vec![rev(key.clone(), cur.revision)], vec![put(key, &locked)])
                .await?
        {
            return Err(super::raced("volume", name));
        }
        Ok(locked)
    }

    /// Remove a volume a backup job made (its temporary clone, or a half-restored volume), if it
    /// carries `label` = the op's id: private mount down, lock released, volume deleted.
    async fn remove_job_volume(&self, name: &str, label: &str, op_id: &str) -> ApiResult<()> {
        let vkey = keys::volume(name);
        let Some(cur) = self.get::<VolumeRecord>(&vkey).await? else {
            return Ok(());
        };
        if cur.value.labels.get(label).map(String::as_str) != Some(op_id) {
            return Ok(());
        }
        match cur.value.op.as_deref() {
            Some(o) if o == op_id => {
                self.detach_private(&cur.value).await?;
                let mut v = cur.value.clone();
                v.op = None;
                if !self
                    .txn(vec![rev(vkey.clone(), cur.revision)], vec![put(vkey.clone(), &v)])
                    .await?
                {
                    return Err(super::raced("volume", name));
                }
            }
            Some(other) => return Err(ApiError::busy("volume", name, other)),
            None => {}
        }
        self.delete_volume(name).await
    }

    async fn require_image_backend(&self, backend: &str, field: &str) -> ApiResult<()> {
        let rec = self
            .get::<BackendRecord>(&keys::backend(backend))
            .await?
            .ok_or_else(|| ApiError::invalid(field, format!("backend {backend:?} does not exist")))?;
        if rec.value.driver != "local" {
            return Err(ApiError::new(
                501,
                "unsupported",
                format!(
                    "backend {backend:?} uses driver {:?}; block backups need image-file volumes (driver local)",
                    rec.value.driver
                ),
            )
            .with_field(field));
        }
        Ok(())
    }
}

/// Start a backup of a volume (validation happens before the job starts).
pub async fn start_backup(s: Shared, req: CreateBackup) -> ApiResult<JobView> {
    let vol = s
        .get::<VolumeRecord>(&keys::volume(&req.volume))
        .await?
        .ok_or_else(|| ApiError::invalid("volume", format!("volume {:?} does not exist", req.volume)))?
        .value;
    if vol.state != VolumeState::Available {
        return Err(ApiError::conflict(format!("volume {:?} is {:?}", vol.name, vol.state)));
    }
    let kind = s.backup_kind(&vol.backend, "volume").await?;
    let trec = s
        .get::<TargetRecord>(&bkeys::target(&req.target))
        .await?
        .ok_or_else(|| ApiError::invalid("target", format!("backup target {:?} does not exist", req.target)))?;
    let target = s.open_target(&trec.value.name).await?;

    let backup_id = uuid::Uuid::now_v7().to_string();
    let snap_name = format!("backup-{backup_id}");
    let params = serde_json::json!({ "backup_id": backup_id, "target": req.target, "volume_id": vol.id });
    let mut op = s.new_op(OpKind::CreateBackup, &vol.name, Some(&snap_name), params);
    if !s
        .txn(vec![absent(keys::op(&op.id))], vec![put(keys::op(&op.id), &op)])
        .await?
    {
        return Err(ApiError::conflict("operation id collision; try again"));
    }
    faults::point("backup:after-intent");
    let job = new_job(&op.id, "backup", &vol.name, Some(&backup_id));
    let (s2, j2) = (s.clone(), job.clone());
    run_job(job, req.wait, async move {
        let ticker = s2.persist_progress(&op.id, j2.progress.clone());
        let r = match kind {
            BackupKind::Block => do_backup(&s2, &mut op, &vol, &req.target, &target, &backup_id, &snap_name, j2.progress.clone()).await,
            BackupKind::Files => do_backup_files(&s2, &mut op, &vol, &req.target, &target, &backup_id, &snap_name, j2.progress.clone()).await,
        };
        drop(ticker);
        match r {
            Ok(rec) => Ok(serde_json::to_value(rec).unwrap_or_default()),
            Err(e) => {
                // Clean up what we made: the temporary snapshot and the blocks nobody references.
                if let Err(ce) = undo_backup(&s2, &op, &req.target).await {
                    tracing::warn!(op = %op.id, "backup failed ({}); cleanup failed ({}); the reconciler will retry", e.message, ce.message);
                    s2.op_abandon(&mut op, &e.message).await;
                }
                Err(e)
            }
        }
    })
    .await
}

#[allow(clippy::too_many_arguments)]
async fn do_backup(
    s: &Shared,
    op: &mut OpRecord,
    vol: &VolumeRecord,
    target_name: &str,
    target: &Target,
    backup_id: &str,
    snap_name: &str,
    progress: Arc<Progress>,
) -> ApiResult<BackupRecord> {
    let started = std::time::Instant::now();
    progress.phase("snapshotting");
    let req = super::snapshots::CreateSnapshot {
        volume: vol.name.clone(),
        name: Some(snap_name.to_string()),
    };
    let snap = s.create_snapshot_reporting(req, Some(progress.sink(None))).await?;
    progress.reset_bytes();
    faults::point("backup:after-snapshot");
    s.op_step(op, "uploading").await?;
    let image_file = s.image_path(
        &snap.backend,
        snap.backend_ref.as_deref(),
        &format!("snapshot {snap_name}"),
    )?;
    let image = image_file.path();

    // What the target holds already (listed under this backup's lease, so no collection deletes
    // it before the manifest names it), and the last backup of this volume there (the parent).
    let lease = take_backup_lease(s, op, target, &progress).await?;
    let known = target.block_ids().await.map_err(target_err)?;
    let parent = s
        .list_backups(Some(&vol.name), Some(target_name))
        .await?
        .into_iter()
        .rfind(|b| b.volume_id == vol.id);
    let hook: engine::Hook = Arc::new(|p: &Progress| {
        use std::sync::atomic::Ordering::Relaxed;
        if p.blocks_transferred.load(Relaxed) > 0 && p.blocks_done.load(Relaxed) * 2 >= p.blocks_total.load(Relaxed) {
            faults::point("backup:mid-upload");
        }
    });
    // The parent's base snapshot (reflink pools): unchanged blocks are found by FIEMAP.
    let mut base_image = None;
    if let Some(p) = &parent
        && let Some(bs) = &p.base_snapshot
        && let Some(b) = s.get::<SnapshotRecord>(&keys::snapshot(bs)).await?
        && b.value.state == SnapshotState::Available
        && let Ok(file) = s.image_path(&b.value.backend, b.value.backend_ref.as_deref(), "base snapshot")
        && let Ok(m) = target.manifest(&p.id).await
    {
        base_image = Some((file, m.blocks));
    }
    // The engine reads the base through its fd's path; `base_image` keeps the fd open meanwhile.
    let base = base_image.as_ref().map(|(file, blocks)| (file.path(), blocks.clone()));
    let out = engine::backup(
        &image,
        snap.size_bytes,
        BLOCK_SIZE,
        target,
        known,
        base,
        progress.clone(),
        hook,
    )
    .await
    .map_err(engine_err)?;
    // Keep this snapshot as the next one's base if it is a reflink (it then costs only the blocks
    // the volume rewrites); a copy is deleted.
    let img = image.clone();
    let reflink = tokio::task::spawn_blocking(move || {
        std::fs::File::open(&img)
            .and_then(|f| crate::backup::fiemap::extents(&f))
            .map(|e| crate::backup::fiemap::any_shared(&e))
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false);

    // Finalise: every block the manifest names must be in the target now (a concurrent delete
    // may have collected one we found there); then the manifest, last.
    progress.phase("finalising");
    let present = target.block_ids().await.map_err(target_err)?;
    if let Some((i, id)) = out
        .blocks
        .iter()
        .enumerate()
        .find_map(|(i, b)| b.as_ref().filter(|id| !present.contains(*id)).map(|id| (i, id)))
    {
        return Err(ApiError::conflict(format!(
            "block {i} ({id}) vanished from the target during the backup (a concurrent delete?); run the backup again"
        )));
    }
    let digest = engine::volume_digest(snap.size_bytes, BLOCK_SIZE, &out.blocks);
    let manifest = Manifest {
        format: FORMAT.into(),
        id: backup_id.into(),
        volume: vol.name.clone(),
        volume_id: vol.id.clone(),
        size_bytes: snap.size_bytes,
        block_size: BLOCK_SIZE,
        parent: parent.as_ref().map(|p| p.id.clone()),
        created_at: now(),
        digest: digest.clone(),
        blocks: out.blocks.clone(),
        entries: vec![],
        snapshot_at: None,
    };
    let rec = BackupRecord {
        v: SCHEMA,
        id: backup_id.into(),
        kind: BackupKind::Block,
        files: 0,
        reused_files: 0,
        volume: vol.name.clone(),
        volume_id: vol.id.clone(),
        target: target_name.into(),
        size_bytes: snap.size_bytes,
        block_size: BLOCK_SIZE,
        blocks: out.blocks.len() as u64,
        data_blocks: out.data_blocks,
        uploaded_blocks: out.uploaded_blocks,
        uploaded_bytes: out.uploaded_bytes,
        scanned_bytes: out.scanned_bytes,
        parent: manifest.parent.clone(),
        digest,
        created_at: manifest.created_at,
        duration_ms: 0,
        reused_blocks: out.reused_blocks,
        base_snapshot: reflink.then(|| snap_name.to_string()),
    };
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| ApiError::internal(e.to_string()))?;
    commit_backup(s, op, target, body, rec, started, lease).await
}

/// Back up a file volume: snapshot → a temporary clone of it, mounted read-only on this node →
/// the tree walked and chunked → the clone unmounted and deleted → the manifest, last.
#[allow(clippy::too_many_arguments)]
async fn do_backup_files(
    s: &Shared,
    op: &mut OpRecord,
    vol: &VolumeRecord,
    target_name: &str,
    target: &Target,
    backup_id: &str,
    snap_name: &str,
    progress: Arc<Progress>,
) -> ApiResult<BackupRecord> {
    let started = std::time::Instant::now();
    progress.phase("snapshotting");
    // Before the snapshot starts: a file with an older mtime cannot have changed after it.
    let snapshot_at = now();
    let req = super::snapshots::CreateSnapshot {
        volume: vol.name.clone(),
        name: Some(snap_name.to_string()),
    };
    let snap = s.create_snapshot_reporting(req, Some(progress.sink(None))).await?;
    faults::point("backup:after-snapshot");

    // The clone's name goes into the op before it exists, so an undo finds it (by its label).
    let temp = format!("backup-{backup_id}");
    if let Some(p) = op.params.as_object_mut() {
        p.insert("temp_volume".into(), temp.clone().into());
    }
    s.op_step(op, "cloning").await?;
    progress.phase("cloning");
    let mut labels = BTreeMap::new();
    labels.insert(TEMP_LABEL.to_string(), op.id.clone());
    progress.reset_bytes();
    let req = CreateVolume {
        name: temp.clone(),
        snapshot: Some(snap_name.to_string()),
        labels,
        ..Default::default()
    };
    s.create_volume_reporting(req, Some(progress.sink(None))).await?;
    progress.reset_bytes();
    let clone = s.lock_for_job(&temp, &op.id).await?;
    progress.phase("mounting");
    let mounted = s.attach_private(&clone, true).await?;
    s.op_step(op, "uploading").await?;

    let lease = take_backup_lease(s, op, target, &progress).await?;
    let known = target.block_ids().await.map_err(target_err)?;
    let parent = s
        .list_backups(Some(&vol.name), Some(target_name))
        .await?
        .into_iter()
        .rfind(|b| b.volume_id == vol.id && b.kind == BackupKind::Files);
    let mut base = None;
    if let Some(p) = &parent
        && let Ok(m) = target.manifest(&p.id).await
        && m.format == files::FORMAT
    {
        base = Some(files::Parent {
            entries: m.entries,
            snapshot_at: m.snapshot_at.unwrap_or(0),
        });
    }
    let hook: engine::Hook = Arc::new(|p: &Progress| {
        use std::sync::atomic::Ordering::Relaxed;
        if p.blocks_transferred.load(Relaxed) > 0 && p.bytes_done.load(Relaxed) * 2 >= p.bytes_total.load(Relaxed) {
            faults::point("backup:mid-upload");
        }
    });
    let out = files::backup(&mounted.mountpoint, target, known, base, progress.clone(), hook).await;
    // The clone goes whatever happened (on failure the undo would retry this).
    let removed = s.remove_job_volume(&temp, TEMP_LABEL, &op.id).await;
    let out = out.map_err(engine_err)?;
    removed?;
    if out.skipped > 0 {
        tracing::warn!(volume = %vol.name, skipped = out.skipped, "sockets, fifos and devices are not backed up");
    }

    progress.phase("finalising");
    let present = target.block_ids().await.map_err(target_err)?;
    if let Some((e, c)) = out
        .entries
        .iter()
        .find_map(|e| e.chunks.iter().find(|c| !present.contains(&c.id)).map(|c| (e, c)))
    {
        return Err(ApiError::conflict(format!(
            "chunk {} of {} vanished from the target during the backup (a concurrent delete?); run the backup again",
            c.id, e.path
        )));
    }
    let digest = files::tree_digest(&out.entries);
    let manifest = Manifest {
        format: files::FORMAT.into(),
        id: backup_id.into(),
        volume: vol.name.clone(),
        volume_id: vol.id.clone(),
        size_bytes: snap.size_bytes,
        block_size: 0,
        parent: parent.as_ref().map(|p| p.id.clone()),
        created_at: now(),
        digest: digest.clone(),
        blocks: vec![],
        entries: out.entries,
        snapshot_at: Some(snapshot_at),
    };
    let rec = BackupRecord {
        v: SCHEMA,
        id: backup_id.into(),
        kind: BackupKind::Files,
        files: manifest.entries.len() as u64,
        reused_files: out.reused_files,
        volume: vol.name.clone(),
        volume_id: vol.id.clone(),
        target: target_name.into(),
        size_bytes: snap.size_bytes,
        block_size: 0,
        blocks: out.chunks,
        data_blocks: out.chunks,
        uploaded_blocks: out.uploaded_chunks,
        uploaded_bytes: out.uploaded_bytes,
        scanned_bytes: out.scanned_bytes,
        parent: manifest.parent.clone(),
        digest,
        created_at: manifest.created_at,
        duration_ms: 0,
        reused_blocks: 0,
        base_snapshot: None,
    };
    // Compact: a file manifest lists every entry.
    let body = serde_json::to_vec(&manifest).map_err(|e| ApiError::internal(e.to_string()))?;
    commit_backup(s, op, target, body, rec, started, lease).await
}

/// How long a backup waits for a block collection sweeping its target before it gives up.
const GC_WAIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Take a backup's lease on its target, before it lists the blocks it will dedup against; then
/// wait while a block collection is sweeping there (see [`crate::backup::lease`]). From then on
/// no collection deletes a block until the lease goes, after the manifest is written.
async fn take_backup_lease(s: &Elara, op: &OpRecord, target: &Target, progress: &Progress) -> ApiResult<Lease> {
    let lease = Lease::take(target, LeaseKind::Backup, &op.id, s.node())
        .await
        .map_err(target_err)?;
    let deadline = std::time::Instant::now() + GC_WAIT;
    loop {
        let sweeping = lease::leases(target)
            .await
            .map_err(target_err)?
            .into_iter()
            .find(|l| l.body.kind == LeaseKind::Gc && !l.stale);
        let Some(gc) = sweeping else { return Ok(lease) };
        if std::time::Instant::now() >= deadline {
            return Err(ApiError::conflict(format!(
                "block collection {} (node {}) has held backup target {} for over {} minutes; run the backup again later",
                gc.body.holder,
                gc.body.node,
                target.describe(),
                GC_WAIT.as_secs() / 60
            )));
        }
        progress.phase("waiting-for-gc");
        // The lease is an object in the target: nothing notifies its removal, so poll.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The last steps of every backup: the record goes into the op first (so a reconciler can finish
/// from a written manifest), then the manifest `body` (the blocks it names are safe from
/// collection from then on, so the backup's lease goes), then the record is committed.
async fn commit_backup(
    s: &Elara,
    op: &mut OpRecord,
    target: &Target,
    body: Vec<u8>,
    rec: BackupRecord,
    started: std::time::Instant,
    lease: Lease,
) -> ApiResult<BackupRecord> {
    if let Some(p) = op.params.as_object_mut() {
        p.insert("record".into(), serde_json::to_value(&rec).unwrap_or_default());
    }
    s.op_step(op, "finalising").await?;
    target
        .put(&manifest_key(&rec.id), body.into())
        .await
        .map_err(target_err)?;
    s.op_step(op, "manifest-written").await?;
    if let Err(e) = lease.release().await {
        tracing::warn!(backup = %rec.id, "the backup's lease on the target was not removed (collection waits until it is stale, {:?}): {e}", lease::STALE);
    }
    faults::point("backup:after-manifest");
    let rec = BackupRecord {
        duration_ms: started.elapsed().as_millis() as u64,
        ..rec
    };
    finish_backup(s, op, rec).await
}

/// Remove the temporary snapshot (unless kept as the next base, which retires the parent's base)
/// and commit the backup record (deleting the op) in one transaction.
async fn finish_backup(s: &Elara, op: &OpRecord, rec: BackupRecord) -> ApiResult<BackupRecord> {
    if let Some(name) = &op.snapshot
        && rec.base_snapshot.as_ref() != Some(name)
        && s.get::<SnapshotRecord>(&keys::snapshot(name)).await?.is_some()
    {
        s.delete_snapshot(name).await?;
    }
    if rec.base_snapshot.is_some()
        && let Some(parent) = &rec.parent
        && let Ok(p) = s.backup(parent).await
        && let Some(old) = p.base_snapshot
        && Some(&old) != rec.base_snapshot.as_ref()
        && s.get::<SnapshotRecord>(&keys::snapshot(&old)).await?.is_some()
    {
        s.delete_snapshot(&old).await?;
    }
    let key = bkeys::backup(&rec.id);
    let mut ops = vec![del(keys::op(&op.id))];
    if s.store.get(&key).await?.is_none() {
        ops.push(put(key, &rec));
    }
    s.txn(vec![], ops).await?;
    tracing::info!(backup = %rec.id, volume = %rec.volume, uploaded = rec.uploaded_blocks, reused = rec.reused_blocks, blocks = rec.blocks, "backup created");
    Ok(rec)
}

/// Undo a backup that did not finish: its temporary clone (file volumes) and snapshot, its
/// manifest if it got that far without a record, unreferenced blocks; then the op.
async fn undo_backup(s: &Elara, op: &OpRecord, target: &str) -> ApiResult<()> {
    // A file backup's temporary clone (unmounted first), before the snapshot it was made from.
    if let Some(temp) = op.params.get("temp_volume").and_then(|v| v.as_str()) {
        s.remove_job_volume(temp, TEMP_LABEL, &op.id).await?;
    }
    if let Some(name) = &op.snapshot
        && let Some(snap) = s.get::<SnapshotRecord>(&keys::snapshot(name)).await?
    {
        if let Some(other) = &snap.value.op {
            return Err(ApiError::busy("snapshot", name, other));
        }
        s.delete_snapshot(name).await?;
    }
    if let Some(id) = op.params.get("backup_id").and_then(|v| v.as_str())
        && s.store.get(&bkeys::backup(id)).await?.is_none()
        && let Ok(t) = s.open_target(target).await
    {
        t.delete(&manifest_key(id)).await.map_err(target_err)?;
    }
    // Its lease, if it took one (collection ignores it anyway; this keeps the target tidy).
    if let Ok(t) = s.open_target(target).await {
        t.delete(&lease::lease_key(LeaseKind::Backup, &op.id))
            .await
            .map_err(target_err)?;
    }
    if s.get::<TargetRecord>(&bkeys::target(target)).await?.is_some() {
        s.collect_garbage(target, Some(&op.id)).await?;
    }
    s.store.delete(&keys::op(&op.id)).await?;
    Ok(())
}

/// Start restoring a backup into a new volume.
pub async fn start_restore(s: Shared, backup_id: String, req: RestoreBackup) -> ApiResult<JobView> {
    check_name("volume", &req.volume)?;
    let b = s.backup(&backup_id).await?;
    if s.store.get(&keys::volume(&req.volume)).await?.is_some() {
        return Err(ApiError::conflict(format!("a volume named {:?} already exists", req.volume)).with_field("volume"));
    }
    if let Some(backend) = &req.backend {
        match b.kind {
            BackupKind::Block => s.require_image_backend(backend, "backend").await?,
            // A tree can be written into any volume this node can mount.
            BackupKind::Files => drop(s.backup_kind(backend, "backend").await?),
        }
    }
    let target = s.open_target(&b.target).await?;
    let params = serde_json::json!({ "backup_id": b.id, "target": b.target });
    let mut op = s.new_op(OpKind::RestoreBackup, &req.volume, None, params);
    if !s
        .txn(vec![absent(keys::op(&op.id))], vec![put(keys::op(&op.id), &op)])
        .await?
    {
        return Err(ApiError::conflict("operation id collision; try again"));
    }
    faults::point("backup-restore:after-intent");
    let job = new_job(&op.id, "restore", &req.volume, Some(&b.id));
    let (s2, j2) = (s.clone(), job.clone());
    run_job(job, req.wait, async move {
        let ticker = s2.persist_progress(&op.id, j2.progress.clone());
        let r = do_restore(&s2, &mut op, &b, &target, &req, j2.progress.clone()).await;
        drop(ticker);
        match r {
            Ok(vol) => Ok(serde_json::to_value(vol).unwrap_or_default()),
            Err(e) => {
                if let Err(ce) = undo_restore(&s2, &op).await {
                    tracing::warn!(op = %op.id, "restore failed ({}); cleanup failed ({}); the reconciler will retry", e.message, ce.message);
                    s2.op_abandon(&mut op, &e.message).await;
                }
                Err(e)
            }
        }
    })
    .await
}

async fn do_restore(
    s: &Shared,
    op: &mut OpRecord,
    b: &BackupRecord,
    target: &Target,
    req: &RestoreBackup,
    progress: Arc<Progress>,
) -> ApiResult<VolumeRecord> {
    progress.phase("creating");
    let manifest = target.manifest(&b.id).await.map_err(target_err)?;
    if manifest.digest != b.digest || manifest.size_bytes != b.size_bytes {
        return Err(ApiError::new(
            422,
            "corrupt",
            format!(
                "manifest of backup {} does not match its record (digest or size differs)",
                b.id
            ),
        ));
    }
    let mut labels = BTreeMap::new();
    labels.insert(RESTORE_LABEL.to_string(), op.id.clone());
    let create = CreateVolume {
        name: req.volume.clone(),
        size: Some(manifest.size_bytes.to_string()),
        backend: req.backend.clone(),
        pool: req.pool.clone(),
        labels,
        ..Default::default()
    };
    let vol = s.create_volume(create).await?;
    // Hold the new volume's lock while its blocks are written: nobody mounts a half-restored volume.
    let vkey = keys::volume(&vol.name);
    let cur = s
        .get::<VolumeRecord>(&vkey)
        .await?
        .ok_or_else(|| ApiError::not_found("volume", &vol.name))?;
    let mut locked = cur.value.clone();
    locked.op = Some(op.id.clone());
    if cur.value.op.is_some()
        || !s
            .txn(vec![rev(vkey.clone(), cur.revision)], vec![put(vkey.clone(), &locked)])
            .await?
    {
        return Err(super::raced("volume", &vol.name));
    }
    if let Some(p) = op.params.as_object_mut() {
        p.insert("volume_id".into(), vol.id.clone().into());
    }
    s.op_step(op, "writing").await?;
    let hook: engine::Hook = Arc::new(|p: &Progress| {
        use std::sync::atomic::Ordering::Relaxed;
        if p.blocks_transferred.load(Relaxed) > 0 && p.blocks_done.load(Relaxed) * 2 >= p.blocks_total.load(Relaxed) {
            faults::point("backup-restore:mid-write");
        }
    });
    let mut formatted = false;
    match b.kind {
        BackupKind::Block => {
            s.require_image_backend(&vol.backend, "backend").await?;
            let image = s.image_path(
                &vol.backend,
                vol.backend_ref.as_deref(),
                &format!("volume {}", vol.name),
            )?;
            engine::restore(&manifest, target, &image.path(), progress, hook)
                .await
                .map_err(engine_err)?;
        }
        BackupKind::Files => {
            progress.phase("mounting");
            let mounted = s.attach_private(&locked, false).await?;
            formatted = mounted.formatted_now;
            let written = files::restore(&manifest, target, &mounted.mountpoint, progress, hook)
                .await
                .map_err(engine_err);
            let down = s.detach_private(&locked).await;
            written?;
            down?;
        }
    }
    // Done: release the lock and drop the op in one transaction.
    let cur = s
        .get::<VolumeRecord>(&vkey)
        .await?
        .ok_or_else(|| ApiError::not_found("volume", &vol.name))?;
    let mut v = cur.value.clone();
    v.op = None;
    v.formatted = v.formatted || formatted;
    v.source_snapshot = Some(format!("backup:{}", b.id));
    if !s
        .txn(
            vec![rev(vkey.clone(), cur.revision)],
            vec![put(vkey, &v), del(keys::op(&op.id))],
        )
        .await?
    {
        return Err(super::raced("volume", &vol.name));
    }
    tracing::info!(backup = %b.id, volume = %v.name, "backup restored");
    Ok(v)
}

/// Undo a restore: unmount and delete the volume it made (found by its label), then the op.
async fn undo_restore(s: &Elara, op: &OpRecord) -> ApiResult<()> {
    s.remove_job_volume(&op.volume, RESTORE_LABEL, &op.id).await?;
    s.store.delete(&keys::op(&op.id)).await?;
    Ok(())
}

/// Start verifying a backup: every block fetched and checked, and the whole digest.
pub async fn start_verify(s: Shared, backup_id: String, wait: bool) -> ApiResult<JobView> {
    let b = s.backup(&backup_id).await?;
    let target = s.open_target(&b.target).await?;
    let job = new_job(&uuid::Uuid::now_v7().to_string(), "verify", &b.volume, Some(&b.id));
    let j2 = job.clone();
    run_job(job, wait, async move {
        let manifest = target.manifest(&b.id).await.map_err(|e| {
            ApiError::new(
                422,
                "corrupt",
                format!("the manifest of backup {} cannot be read: {e}", b.id),
            )
        })?;
        let (bad, digest_ok) = if manifest.format == files::FORMAT {
            files::verify(&manifest, &target, j2.progress.clone()).await
        } else {
            engine::verify(&manifest, &target, j2.progress.clone()).await
        }
        .map_err(engine_err)?;
        let digest_ok = digest_ok && manifest.digest == b.digest;
        // Files: each distinct chunk is checked once; blocks: every data block.
        let checked = if manifest.format == files::FORMAT {
            manifest.chunk_ids().collect::<HashSet<_>>().len()
        } else {
            manifest.chunk_ids().count()
        } as u64;
        let ok = bad.is_empty() && digest_ok;
        Ok(serde_json::to_value(VerifyReport {
            backup: b.id.clone(),
            blocks_checked: checked,
            bad_blocks: bad,
            digest_ok,
            ok,
        })
        .unwrap_or_default())
    })
    .await
}

/// A job of this daemon, or (for a running op of any daemon) its op record's progress.
pub async fn job(s: &Elara, id: &str) -> ApiResult<JobView> {
    if let Some(j) = jobs().lock().expect("jobs lock").get(id) {
        return Ok(j.snapshot());
    }
    let op = s
        .get::<OpRecord>(&keys::op(id))
        .await?
        .ok_or_else(|| ApiError::not_found("backup job", id))?
        .value;
    let kind = match op.kind {
        OpKind::CreateBackup => "backup",
        OpKind::RestoreBackup => "restore",
        _ => return Err(ApiError::not_found("backup job", id)),
    };
    Ok(JobView {
        id: op.id.clone(),
        kind: kind.into(),
        state: "running".into(),
        volume: op.volume.clone(),
        backup: op.params.get("backup_id").and_then(|v| v.as_str()).map(str::to_string),
        progress: op
            .params
            .get("progress")
            .and_then(|p| serde_json::from_value(p.clone()).ok())
            .unwrap_or_default(),
        result: None,
        error: op.last_error.clone(),
    })
}

impl Elara {
    /// The reconciler's part for backup ops whose daemon died: a backup whose manifest was
    /// written is finished; any other is undone (snapshot, manifest, orphan blocks). A restore is
    /// undone (its half-written volume deleted).
    pub async fn recover_backup_op(&self, op: &mut OpRecord) -> ApiResult<()> {
        let target = op
            .params
            .get("target")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        match op.kind {
            OpKind::CreateBackup => {
                let record: Option<BackupRecord> = op
                    .params
                    .get("record")
                    .and_then(|r| serde_json::from_value(r.clone()).ok());
                if op.step == "manifest-written"
                    && let Some(rec) = record
                {
                    // The manifest holds its blocks now: the dead daemon's lease can go.
                    if let Ok(t) = self.open_target(&target).await
                        && let Err(e) = t.delete(&lease::lease_key(LeaseKind::Backup, &op.id)).await
                    {
                        tracing::warn!(op = %op.id, "the backup's lease on the target was not removed (it goes stale): {e}");
                    }
                    finish_backup(self, op, rec).await.map(drop)
                } else {
                    undo_backup(self, op, &target).await
                }
            }
            OpKind::RestoreBackup => undo_restore(self, op).await,
            _ => Ok(()),
        }
    }
}
