//! Elara's metadata store.
//!
//! One trait, [`Store`], with two back ends: [`embedded::EmbeddedStore`] (redb, a single file; the
//! single-node default) and [`etcd::EtcdStore`] (clusters). Both give get/put/delete, ordered prefix
//! listing, compare-and-swap transactions on per-key revisions, leases and prefix watches.
//!
//! Keys are plain strings under [`PREFIX`] (`/elara/v1/`); values are bytes (versioned JSON records,
//! see [`Record`]). A key's `mod_revision` changes on every write; `0` in a [`Compare`] means "absent".

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use serde::{Serialize, de::DeserializeOwned};

pub mod bench;
pub mod embedded;
pub mod etcd;
pub mod namespace;
mod validate;

/// Every Elara key starts with this.
pub const PREFIX: &str = "/elara/v1/";

/// The largest value either back end accepts (also the limit for the sum of a transaction's values).
///
/// etcd refuses requests over 1.5 MiB (`--max-request-bytes`, key and framing included), so the
/// limit is 1.5 MiB less 32 KiB of headroom for the key ([`MAX_KEY_SIZE`]) and the request framing.
/// The embedded store applies the same limit so that code tested on one back end works on the
/// other; large blobs are chunked by the caller.
pub const MAX_VALUE_SIZE: usize = 1536 * 1024 - 32 * 1024;
/// The longest key either back end accepts.
pub const MAX_KEY_SIZE: usize = 16 * 1024;

/// A store revision (etcd's `mod_revision`). Strictly increasing across the whole store.
pub type Revision = i64;
/// A lease id. Keys put with a lease are deleted when it expires or is revoked.
pub type LeaseId = i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("lease {0} not found or expired")]
    LeaseNotFound(LeaseId),
    #[error("value too large: {key} is {size} bytes (limit {limit})")]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    #[error("corrupt record at {key}: {why}")]
    Corrupt { key: String, why: String },
    #[error("store error: {0}")]
    Other(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the last write to this key.
    pub mod_revision: Revision,
    /// Lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals this (`0`: the key is absent).
    Revision { key: String, revision: Revision },
    /// The key exists.
    Exists { key: String },
}

/// A write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
}

/// All `compares` hold → all `ops` apply atomically; otherwise nothing changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    /// The store revision after the transaction (unchanged when it failed).
    pub revision: Revision,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    /// The key and the revision of the delete.
    Delete {
        key: String,
        revision: Revision,
    },
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent>> + Send>>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `embedded` or `etcd`.
    fn kind(&self) -> &'static str;
    /// Where it lives: a file path or the etcd endpoints.
    fn location(&self) -> String;

    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Every key starting with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>>;
    /// Keys only, sorted (cheap listing).
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>>;
    /// Unconditional put; returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision>;
    /// Unconditional delete; `true` if the key existed.
    async fn delete(&self, key: &str) -> Result<bool>;
    async fn txn(&self, txn: Txn) -> Result<TxnResult>;

    /// A lease that expires `ttl` after the last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;
    /// Refresh the lease once. `LeaseNotFound` if it already expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;
    /// Drop the lease and delete its keys.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;
    /// Whether the lease is still alive.
    async fn lease_alive(&self, lease: LeaseId) -> Result<bool>;

    /// Changes to keys under `prefix` from now on, in revision order.
    async fn watch(&self, prefix: &str) -> Result<WatchStream>;

    /// The largest value the back end accepts (etcd: ~1.5 MiB).
    fn max_value_size(&self) -> usize;
}

/// A JSON record with its store revision, for read-modify-CAS cycles.
#[derive(Debug, Clone)]
pub struct Record<T> {
    pub value: T,
    pub revision: Revision,
}

/// Typed JSON helpers over any [`Store`].
#[async_trait]
pub trait StoreExt: Store {
    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Record<T>>> {
        match self.get(key).await? {
            None => Ok(None),
            Some(kv) => Ok(Some(Record {
                value: decode(&kv)?,
                revision: kv.mod_revision,
            })),
        }
    }

    async fn list_json<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<Record<T>>> {
        self.list(prefix)
            .await?
            .iter()
            .map(|kv| {
                Ok(Record {
                    value: decode(kv)?,
                    revision: kv.mod_revision,
                })
            })
            .collect()
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

/// Decode a JSON value, naming the key when it is corrupt.
pub fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(&kv.value).map_err(|e| StoreError::Corrupt {
        key: kv.key.clone(),
        why: e.to_string(),
    })
}

/// Encode a record as JSON.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

/// Open a store from its URL: `etcd://h1:2379,h2:2379` or a path / `file:///path` for the embedded one.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>> {
    if let Some(rest) = url.strip_prefix("etcd://") {
        // etcd://h1:2379,h2:2379[/namespace]
        let (endpoints, ns) = match rest.split_once('/') {
            Some((eps, ns)) => (eps, Some(ns)),
            None => (rest, None),
        };
        let eps: Vec<String> = endpoints
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.to_string())
            .collect();
        let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(etcd::EtcdStore::connect(&eps).await?);
        Ok(match ns {
            Some(ns) if !ns.trim_matches('/').is_empty() => std::sync::Arc::new(namespace::Namespaced::new(store, ns)),
            _ => store,
        })
    } else {
        let path = url.strip_prefix("file://").unwrap_or(url);
        Ok(std::sync::Arc::new(embedded::EmbeddedStore::open(
            std::path::Path::new(path),
        )?))
    }
}
