//! The operations layer: every door (REST, Docker, CLI through REST) calls these functions.
//!
//! Intent first: a mutation writes an [`OpRecord`] in the same transaction that takes the object's
//! lock (`op` field) and moves it into a transitional state; each step updates the record; the
//! transaction that finishes the work deletes it. If the daemon dies, [`reconcile`] (on this or any
//! other daemon) finishes or undoes the operation. Exclusion is a compare-and-swap on the object's
//! record, never a process lock, so two daemons on one etcd never run conflicting steps.

pub mod attachments;
pub mod backends;
pub mod backups;
pub mod faults;
pub mod nodes;
pub mod placement;
pub mod reconcile;
pub mod snapshots;
pub mod types;
pub mod volumes;

use std::sync::Arc;

use elara_runtime::Runtime;
use elara_store::{Compare, Op, Record, Store, StoreExt, Txn, encode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::attach::Attacher;
use crate::backup::progress::Progress;
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::model::{OpKind, OpRecord, SCHEMA, keys, now};

/// The daemon's shared state: configuration, the store, the driver runtime and the attach layer.
pub struct Elara {
    pub cfg: Config,
    pub store: Arc<dyn Store>,
    pub runtime: Runtime,
    pub backends: backends::Registry,
    pub attacher: Attacher,
    /// This process's identity: ops it owns carry it; a different one means a previous life.
    pub incarnation: String,
    pub lease: std::sync::atomic::AtomicI64,
    /// Capacity placed since each pool's last report.
    pub consumed: placement::Consumed,
}

impl Elara {
    pub fn node(&self) -> &str {
        &self.cfg.node
    }

    pub fn lease(&self) -> i64 {
        self.lease.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A fresh op record owned by this daemon.
    pub fn new_op(&self, kind: OpKind, volume: &str, snapshot: Option<&str>, params: serde_json::Value) -> OpRecord {
        OpRecord {
            v: SCHEMA,
            id: uuid::Uuid::now_v7().to_string(),
            kind,
            volume: volume.to_string(),
            snapshot: snapshot.map(str::to_string),
            step: "intent".into(),
            owner: self.node().to_string(),
            owner_incarnation: self.incarnation.clone(),
            owner_lease: self.lease(),
            params,
            started_at: now(),
            updated_at: now(),
            last_error: None,
        }
    }

    /// Record that `op` reached `step` (unconditional: only its owner writes it).
    pub async fn op_step(&self, op: &mut OpRecord, step: &str) -> ApiResult<()> {
        op.step = step.to_string();
        op.updated_at = now();
        self.store.put(&keys::op(&op.id), encode(op), None).await?;
        Ok(())
    }

    /// Record a failure on the op and hand it to the reconciler (any daemon may take it over).
    pub async fn op_abandon(&self, op: &mut OpRecord, error: &str) {
        op.last_error = Some(error.to_string());
        op.owner_incarnation = String::new();
        op.updated_at = now();
        if let Err(e) = self.store.put(&keys::op(&op.id), encode(op), None).await {
            tracing::error!(op = %op.id, "could not hand operation to the reconciler: {e}");
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> ApiResult<Option<Record<T>>> {
        Ok(self.store.get_json(key).await?)
    }

    /// Run a transaction; `false` if a compare failed.
    pub async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> ApiResult<bool> {
        Ok(self.store.txn(Txn { compares, ops }).await?.succeeded)
    }

    /// Copy `progress` into the op record's `params.progress` while a long step runs, so
    /// `GET /v1/ops` (and the CLI's progress bar) show it from any daemon: soon after it moves,
    /// then at most twice a second. A CAS on the record's revision: it never overwrites a newer
    /// step, and stops once the op is gone. The ticker ends when the returned guard is dropped.
    pub fn persist_progress(&self, op_id: &str, progress: Arc<Progress>) -> ProgressTicker {
        use std::time::{Duration, Instant};
        let (store, key) = (self.store.clone(), keys::op(op_id));
        ProgressTicker(tokio::spawn(async move {
            let mut written: Option<(Instant, String, u64)> = None;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let view = progress.view();
                let unchanged = written.as_ref().is_some_and(|(at, phase, done)| {
                    (*phase == view.phase && *done == view.bytes_done) || at.elapsed() < Duration::from_millis(500)
                });
                if unchanged {
                    continue;
                }
                let Ok(Some(cur)) = store.get_json::<OpRecord>(&key).await else {
                    return;
                };
                let mut op = cur.value;
                if let Some(p) = op.params.as_object_mut() {
                    p.insert("progress".into(), serde_json::to_value(&view).unwrap_or_default());
                }
                let _ = store
                    .txn(Txn {
                        compares: vec![rev(key.clone(), cur.revision)],
                        ops: vec![put(key.clone(), &op)],
                    })
                    .await;
                written = Some((Instant::now(), view.phase, view.bytes_done));
            }
        }))
    }

    /// The progress of a driver's copy (phase `copying`) for op `op_id`: kept in the op record
    /// while the returned ticker lives, and passed on to `report`. Hand the sink to the call.
    pub fn copy_progress(
        &self,
        op_id: &str,
        report: Option<elara_runtime::ProgressFn>,
    ) -> (ProgressTicker, elara_runtime::ProgressFn) {
        let progress = Arc::new(Progress::default());
        progress.phase("copying");
        (self.persist_progress(op_id, progress.clone()), progress.sink(report))
    }
}

/// Stops a [`Elara::persist_progress`] ticker when dropped.
pub struct ProgressTicker(tokio::task::JoinHandle<()>);

impl Drop for ProgressTicker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn put<T: Serialize>(key: String, value: &T) -> Op {
    Op::Put {
        key,
        value: encode(value),
        lease: None,
    }
}

pub fn del(key: String) -> Op {
    Op::Delete { key }
}

pub fn rev(key: String, revision: i64) -> Compare {
    Compare::Revision { key, revision }
}

pub fn absent(key: String) -> Compare {
    Compare::Revision { key, revision: 0 }
}

/// Losing a CAS race means someone else changed the object first.
pub fn raced(what: &str, name: &str) -> ApiError {
    ApiError::conflict(format!("{what} {name:?} was changed concurrently; try again"))
}

pub type Shared = Arc<Elara>;
