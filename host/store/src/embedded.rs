//! The embedded back end: one redb file, the single-node default.
//!
//! # Layout
//! | table        | key            | value                                                  |
//! |--------------|----------------|--------------------------------------------------------|
//! | `kv`         | key (`&str`)   | 16-byte header (`mod_revision` i64 LE, lease i64 LE, 0 = none) + value bytes |
//! | `meta`       | name (`&str`)  | `revision` (the store revision), `last_lease` (id counter) |
//! | `leases`     | lease id       | `(ttl_ms, expires_at_unix_ms)`                         |
//! | `lease_keys` | lease id       | (multimap) the keys attached to the lease              |
//!
//! # Semantics (mirrors etcd)
//! - Every write transaction that changes something bumps the store revision by one, persisted in the
//!   same redb transaction; all keys written by it get that revision as `mod_revision`.
//! - Every commit uses redb's default `Durability::Immediate`: when a write returns, it is on disk
//!   (a SIGKILL right after cannot lose it; `tests/conformance.rs` checks that with a real SIGKILL).
//! - Lease expiry is wall-clock (unix milliseconds) and persisted, so a lease outlives a restart of the
//!   process but still expires on time. A sweeper thread deletes expired leases and their keys
//!   (emitting `Delete` watch events) every [`EmbeddedOptions::sweep_interval`].
//! - Watches are a tokio broadcast of committed events, filtered by prefix. A receiver that falls
//!   more than [`EmbeddedOptions::watch_buffer`] events behind gets one error item and the stream ends
//!   (the caller re-lists and watches again); events are never skipped silently.
//!
//! redb calls block (a commit is an fsync), so every call runs on `spawn_blocking`; the sweeper is a
//! plain thread because it only ever does blocking work.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{
    Database, MultimapTable, MultimapTableDefinition, ReadableDatabase, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};
use tokio::sync::broadcast;

use crate::{
    KeyValue, LeaseId, MAX_VALUE_SIZE, Result, Revision, Store, StoreError, Txn, TxnResult, WatchEvent, WatchStream,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const LEASES: TableDefinition<i64, (u64, u64)> = TableDefinition::new("leases");
const LEASE_KEYS: MultimapTableDefinition<i64, &str> = MultimapTableDefinition::new("lease_keys");

const META_REVISION: &str = "revision";
const META_LAST_LEASE: &str = "last_lease";
/// `mod_revision` (8 bytes) + lease (8 bytes) in front of every stored value.
const HEADER_LEN: usize = 16;

/// Tuning knobs; [`EmbeddedStore::open`] uses the defaults.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// How often the sweeper looks for expired leases. Keys of an expired lease vanish at most
    /// this long after the expiry. Default 250 ms.
    pub sweep_interval: Duration,
    /// Events a watcher may fall behind before its stream ends with an error. Default 4096.
    pub watch_buffer: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            sweep_interval: Duration::from_millis(250),
            watch_buffer: 4096,
        }
    }
}

/// The redb store. Not `Clone`: share it as `Arc<dyn Store>`. Dropping it stops the sweeper and
/// closes the file (after any blocking call still in flight finishes).
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    /// Dropping the sender tells the sweeper thread to stop.
    sweeper_stop: Option<mpsc::Sender<()>>,
    sweeper: Option<JoinHandle<()>>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    events: broadcast::Sender<WatchEvent>,
    /// Held from `begin_write` until the events are sent, so watchers see commits in revision order.
    write_lock: Mutex<()>,
}

impl EmbeddedStore {
    /// Open (or create) the store file at `path`, creating parent directories.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, EmbeddedOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, options: EmbeddedOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if options.sweep_interval.is_zero() {
            return Err(StoreError::Other("sweep_interval must be positive".into()));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::Other(format!("cannot create directory {}: {e}", parent.display())))?;
        }
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
                "{} is locked by another process (is another elara daemon using this data dir?)",
                path.display()
            )),
            e => StoreError::Other(format!("cannot open {}: {e}", path.display())),
        })?;
        // Create the tables so that read transactions never meet a missing table.
        let tx = db.begin_write().db()?;
        tx.open_table(KV).db()?;
        tx.open_table(META).db()?;
        tx.open_table(LEASES).db()?;
        tx.open_multimap_table(LEASE_KEYS).db()?;
        tx.commit().db()?;

        let (events, _) = broadcast::channel(options.watch_buffer.max(1));
        let inner = Arc::new(Inner {
            db,
            path,
            events,
            write_lock: Mutex::new(()),
        });

        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let sweeper_inner = inner.clone();
        let interval = options.sweep_interval;
        let sweeper = std::thread::Builder::new()
            .name("elara-store-sweeper".into())
            .spawn(move || {
                // A timeout means "sweep now"; a message or a hang-up means "stop".
                while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(interval) {
                    if let Err(e) = sweeper_inner.sweep_expired_leases() {
                        tracing::warn!(error = %e, "lease sweep failed");
                    }
                }
            })
            .map_err(|e| StoreError::Other(format!("cannot start the lease sweeper: {e}")))?;
        tracing::debug!(path = %inner.path.display(), "embedded store open");
        Ok(Self {
            inner,
            sweeper_stop: Some(stop_tx),
            sweeper: Some(sweeper),
        })
    }

    /// Run a blocking closure against the database on tokio's blocking pool.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Inner) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Other(format!("embedded store task failed: {e}")))?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        drop(self.sweeper_stop.take());
        if let Some(handle) = self.sweeper.take() {
            let _ = handle.join();
        }
    }
}

impl Inner {
    fn read<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<T>) -> Result<T> {
        let tx = self.db.begin_read().db()?;
        f(&tx)
    }

    /// One redb write transaction: `f` runs against a [`Writer`]; if it fails nothing is committed.
    /// After the commit the events are broadcast, still under the write lock (revision order).
    fn write<T>(&self, f: impl FnOnce(&mut Writer<'_>) -> Result<T>) -> Result<(T, Revision)> {
        let _guard = self.write_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = self.db.begin_write().db()?;
        let (out, revision, events, dirty) = {
            let mut writer = Writer::open(&tx)?;
            let out = f(&mut writer)?;
            let (revision, events, dirty) = writer.finish()?;
            (out, revision, events, dirty)
        };
        if dirty {
            tx.commit().db()?;
        } else {
            tx.abort().db()?;
        }
        for event in events {
            // No receiver is not an error.
            let _ = self.events.send(event);
        }
        Ok((out, revision))
    }

    fn sweep_expired_leases(&self) -> Result<()> {
        let now = now_ms();
        let expired: Vec<LeaseId> = self.read(|tx| {
            let leases = tx.open_table(LEASES).db()?;
            let mut expired = Vec::new();
            for entry in leases.iter().db()? {
                let (id, times) = entry.db()?;
                if times.value().1 <= now {
                    expired.push(id.value());
                }
            }
            Ok(expired)
        })?;
        if expired.is_empty() {
            return Ok(());
        }
        self.write(|w| {
            for id in &expired {
                // A keep-alive may have landed between the scan and this transaction.
                if w.lease_expiry(*id)?.is_some_and(|expiry| expiry <= now) {
                    let keys = w.drop_lease(*id)?;
                    tracing::info!(lease = id, keys, "lease expired");
                }
            }
            Ok(())
        })?;
        Ok(())
    }
}

/// The tables of one write transaction plus the revision it will commit at.
struct Writer<'t> {
    kv: Table<'t, &'static str, &'static [u8]>,
    meta: Table<'t, &'static str, i64>,
    leases: Table<'t, i64, (u64, u64)>,
    lease_keys: MultimapTable<'t, i64, &'static str>,
    /// The store revision before this transaction.
    base_revision: Revision,
    /// Set once the transaction changed a key (the store revision moves).
    changed: bool,
    /// Set once the transaction changed anything (keys, leases, counters); otherwise it is aborted
    /// instead of committed, so a failed compare costs no fsync.
    dirty: bool,
    events: Vec<WatchEvent>,
    now: u64,
}

impl<'t> Writer<'t> {
    fn open(tx: &'t WriteTransaction) -> Result<Self> {
        let meta = tx.open_table(META).db()?;
        let base_revision = meta.get(META_REVISION).db()?.map(|v| v.value()).unwrap_or(0);
        Ok(Self {
            kv: tx.open_table(KV).db()?,
            meta,
            leases: tx.open_table(LEASES).db()?,
            lease_keys: tx.open_multimap_table(LEASE_KEYS).db()?,
            base_revision,
            changed: false,
            dirty: false,
            events: Vec::new(),
            now: now_ms(),
        })
    }

    /// The revision this transaction's writes get.
    fn write_revision(&mut self) -> Revision {
        self.changed = true;
        self.dirty = true;
        self.base_revision + 1
    }

    /// Persist the revision counter; returns the store revision after the transaction.
    fn finish(mut self) -> Result<(Revision, Vec<WatchEvent>, bool)> {
        let revision = if self.changed {
            self.base_revision + 1
        } else {
            self.base_revision
        };
        if self.changed {
            self.meta.insert(META_REVISION, revision).db()?;
        }
        Ok((revision, self.events, self.dirty))
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.kv.get(key).db()?.map(|v| decode_kv(key, v.value())).transpose()
    }

    fn lease_expiry(&self, id: LeaseId) -> Result<Option<u64>> {
        Ok(self.leases.get(id).db()?.map(|v| v.value().1))
    }

    fn require_live_lease(&self, id: LeaseId) -> Result<(u64, u64)> {
        match self.leases.get(id).db()?.map(|v| v.value()) {
            Some((ttl, expiry)) if expiry > self.now => Ok((ttl, expiry)),
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    fn put(&mut self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
        if let Some(id) = lease {
            self.require_live_lease(id)?;
        }
        let old_lease = self.get(key)?.and_then(|kv| kv.lease);
        if old_lease != lease {
            if let Some(old) = old_lease {
                self.lease_keys.remove(old, key).db()?;
            }
            if let Some(new) = lease {
                self.lease_keys.insert(new, key).db()?;
            }
        }
        let revision = self.write_revision();
        self.kv.insert(key, encode_kv(revision, lease, value).as_slice()).db()?;
        self.events.push(WatchEvent::Put(KeyValue {
            key: key.to_string(),
            value: value.to_vec(),
            mod_revision: revision,
            lease,
        }));
        Ok(revision)
    }

    fn delete(&mut self, key: &str) -> Result<bool> {
        let old = self
            .kv
            .remove(key)
            .db()?
            .map(|v| decode_kv(key, v.value()))
            .transpose()?;
        let Some(old) = old else { return Ok(false) };
        if let Some(lease) = old.lease {
            self.lease_keys.remove(lease, key).db()?;
        }
        let revision = self.write_revision();
        self.events.push(WatchEvent::Delete {
            key: key.to_string(),
            revision,
        });
        Ok(true)
    }

    /// Remove a lease and delete its keys; returns how many keys went.
    fn drop_lease(&mut self, id: LeaseId) -> Result<usize> {
        self.dirty = true;
        self.leases.remove(id).db()?;
        let keys: Vec<String> = self
            .lease_keys
            .remove_all(id)
            .db()?
            .map(|k| k.map(|k| k.value().to_string()))
            .collect::<std::result::Result<_, _>>()
            .db()?;
        let mut deleted = 0;
        for key in &keys {
            if self.delete(key)? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    fn compare_holds(&self, compare: &crate::Compare) -> Result<bool> {
        Ok(match compare {
            crate::Compare::Exists { key } => self.kv.get(key.as_str()).db()?.is_some(),
            crate::Compare::Revision { key, revision } => {
                let current = self.get(key)?.map(|kv| kv.mod_revision).unwrap_or(0);
                current == *revision
            }
        })
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn location(&self) -> String {
        self.inner.path.display().to_string()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        crate::validate::key(key)?;
        let key = key.to_string();
        self.blocking(move |inner| {
            inner.read(|tx| {
                let kv = tx.open_table(KV).db()?;
                let value = kv.get(key.as_str()).db()?;
                value.map(|v| decode_kv(&key, v.value())).transpose()
            })
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            inner.read(|tx| {
                let kv = tx.open_table(KV).db()?;
                let mut out = Vec::new();
                for entry in kv.range::<&str>(prefix.as_str()..).db()? {
                    let (key, value) = entry.db()?;
                    if !key.value().starts_with(prefix.as_str()) {
                        break;
                    }
                    out.push(decode_kv(key.value(), value.value())?);
                }
                Ok(out)
            })
        })
        .await
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            inner.read(|tx| {
                let kv = tx.open_table(KV).db()?;
                let mut out = Vec::new();
                for entry in kv.range::<&str>(prefix.as_str()..).db()? {
                    let (key, _) = entry.db()?;
                    if !key.value().starts_with(prefix.as_str()) {
                        break;
                    }
                    out.push(key.value().to_string());
                }
                Ok(out)
            })
        })
        .await
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        crate::validate::put(key, &value, self.max_value_size())?;
        let key = key.to_string();
        self.blocking(move |inner| Ok(inner.write(|w| w.put(&key, &value, lease))?.0))
            .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        crate::validate::key(key)?;
        let key = key.to_string();
        self.blocking(move |inner| Ok(inner.write(|w| w.delete(&key))?.0)).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        crate::validate::txn(&txn, self.max_value_size())?;
        self.blocking(move |inner| {
            let (succeeded, revision) = inner.write(|w| {
                for compare in &txn.compares {
                    if !w.compare_holds(compare)? {
                        return Ok(false);
                    }
                }
                for op in &txn.ops {
                    match op {
                        crate::Op::Put { key, value, lease } => {
                            w.put(key, value, *lease)?;
                        }
                        crate::Op::Delete { key } => {
                            w.delete(key)?;
                        }
                    }
                }
                Ok(true)
            })?;
            Ok(TxnResult { succeeded, revision })
        })
        .await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if ttl_ms == 0 {
            return Err(StoreError::Other("lease ttl must be at least 1 ms".into()));
        }
        self.blocking(move |inner| {
            let (id, _) = inner.write(|w| {
                let id = w.meta.get(META_LAST_LEASE).db()?.map(|v| v.value()).unwrap_or(0) + 1;
                w.dirty = true;
                w.meta.insert(META_LAST_LEASE, id).db()?;
                w.leases.insert(id, (ttl_ms, w.now.saturating_add(ttl_ms))).db()?;
                Ok(id)
            })?;
            Ok(id)
        })
        .await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.blocking(move |inner| {
            inner.write(|w| {
                let (ttl, _) = w.require_live_lease(lease)?;
                w.dirty = true;
                w.leases.insert(lease, (ttl, w.now.saturating_add(ttl))).db()?;
                Ok(())
            })?;
            Ok(())
        })
        .await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.blocking(move |inner| {
            inner.write(|w| {
                if w.lease_expiry(lease)?.is_none() {
                    return Err(StoreError::LeaseNotFound(lease));
                }
                w.drop_lease(lease)
            })?;
            Ok(())
        })
        .await
    }

    async fn lease_alive(&self, lease: LeaseId) -> Result<bool> {
        self.blocking(move |inner| {
            inner.read(|tx| {
                let leases = tx.open_table(LEASES).db()?;
                let expiry = leases.get(lease).db()?.map(|v| v.value().1);
                Ok(expiry.is_some_and(|e| e > now_ms()))
            })
        })
        .await
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream> {
        let rx = self.inner.events.subscribe();
        Ok(broadcast_watch(rx, prefix.to_string()))
    }

    fn max_value_size(&self) -> usize {
        MAX_VALUE_SIZE
    }
}

/// Turn a broadcast receiver into a prefix-filtered watch stream that ends with an error on lag.
fn broadcast_watch(rx: broadcast::Receiver<WatchEvent>, prefix: String) -> WatchStream {
    struct State {
        rx: broadcast::Receiver<WatchEvent>,
        prefix: String,
        ended: bool,
    }
    let state = State {
        rx,
        prefix,
        ended: false,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        if st.ended {
            return None;
        }
        loop {
            match st.rx.recv().await {
                Ok(event) => {
                    let key = match &event {
                        WatchEvent::Put(kv) => &kv.key,
                        WatchEvent::Delete { key, .. } => key,
                    };
                    if key.starts_with(&st.prefix) {
                        return Some((Ok(event), st));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    st.ended = true;
                    let err = StoreError::Other(format!(
                        "watch on {:?} fell {missed} events behind and was closed; list again and \
                         start a new watch",
                        st.prefix
                    ));
                    return Some((Err(err), st));
                }
                Err(broadcast::error::RecvError::Closed) => {
                    st.ended = true;
                    return Some((Err(StoreError::Unavailable("embedded store closed".into())), st));
                }
            }
        }
    }))
}

fn encode_kv(revision: Revision, lease: Option<LeaseId>, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + value.len());
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(&lease.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_kv(key: &str, raw: &[u8]) -> Result<KeyValue> {
    if raw.len() < HEADER_LEN {
        return Err(StoreError::Corrupt {
            key: key.to_string(),
            why: format!("stored entry is {} bytes, shorter than its header", raw.len()),
        });
    }
    let revision = i64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
    let lease = i64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
    Ok(KeyValue {
        key: key.to_string(),
        value: raw[HEADER_LEN..].to_vec(),
        mod_revision: revision,
        lease: (lease != 0).then_some(lease),
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `.db()` turns any redb error into a [`StoreError`].
trait DbResult<T> {
    fn db(self) -> Result<T>;
}

impl<T, E: Into<redb::Error>> DbResult<T> for std::result::Result<T, E> {
    fn db(self) -> Result<T> {
        self.map_err(|e| StoreError::Other(format!("embedded store (redb): {}", e.into())))
    }
}
