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
    TooLarge { key: String, size: usize, limit: usize },
    #[error("corrupt record at {key}: {why}")]
    Corrupt { key: String, why: String },
    #[error("store error: {0}")]
    Other(String),
    /// A store setting (the URL, a certificate, key or password file) is wrong; nothing was
    /// contacted. `field` is the setting (`store`, `store-ca`, `store-password-file`, ...).
    #[error("store setting {field}: {why}")]
    Settings { field: String, why: String },
    /// The TLS handshake with etcd failed: the server's certificate did not verify against our
    /// CA, or the server refused our client certificate.
    #[error("etcd at {store}: TLS certificate verification failed: {why}")]
    Tls { store: String, why: String },
    /// etcd refused our credentials: a wrong user or password, none given to a cluster that
    /// requires them, or a user without access to Elara's keys.
    #[error("etcd at {store}: authentication failed: {why}")]
    Auth { store: String, why: String },
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

/// Where a store is, parsed from its URL:
/// - `etcd://[user@]h1:2379,h2:2379[/namespace]`: etcd over plain HTTP/2;
/// - `etcds://[user@]h1:2379,...[/namespace]`: etcd over TLS (see [`etcd::EtcdSecurity`]);
/// - a path or `file:///path`: the embedded store.
///
/// A URL never carries a password (`user:password@` is refused): it is shown in logs, `ps` and
/// `elara info`. The `Display` form is the URL as parsed (no secret can be in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Embedded(std::path::PathBuf),
    Etcd {
        tls: bool,
        user: Option<String>,
        endpoints: Vec<String>,
        namespace: Option<String>,
    },
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl> {
        let bad = |why: String| StoreError::Settings {
            field: "store".into(),
            why,
        };
        let (tls, rest) = if let Some(rest) = url.strip_prefix("etcds://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("etcd://") {
            (false, rest)
        } else {
            let path = url.strip_prefix("file://").unwrap_or(url);
            if path.is_empty() {
                return Err(bad(
                    "empty: give etcd://host:port, etcds://host:port or a file path".into()
                ));
            }
            return Ok(StoreUrl::Embedded(path.into()));
        };
        let (authority, namespace) = match rest.split_once('/') {
            Some((a, ns)) if !ns.trim_matches('/').is_empty() => (a, Some(ns.to_string())),
            Some((a, _)) => (a, None),
            None => (rest, None),
        };
        let (user, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, _)) if userinfo.contains(':') => {
                // Not echoed: what follows the ':' is a password.
                return Err(bad(
                    "the URL carries a password (user:password@); a password is never read from the URL, \
                     which shows in logs and process lists: put it in a file and give --store-password-file"
                        .into(),
                ));
            }
            Some((userinfo, hosts)) => {
                if userinfo.is_empty() || userinfo.contains(['@', ',', '/']) || userinfo.chars().any(char::is_control) {
                    return Err(bad(format!(
                        "user {userinfo:?} before '@': must be a plain etcd user name"
                    )));
                }
                (Some(userinfo.to_string()), hosts)
            }
            None => (None, authority),
        };
        let mut endpoints = Vec::new();
        for ep in hosts.split(',') {
            let valid = ep
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
                && !ep.chars().any(|c| c.is_whitespace() || c.is_control());
            if !valid {
                return Err(bad(format!(
                    "endpoint {ep:?}: expected host:port (in {})",
                    Self::shown(tls, &user, hosts)
                )));
            }
            endpoints.push(ep.to_string());
        }
        Ok(StoreUrl::Etcd {
            tls,
            user,
            endpoints,
            namespace,
        })
    }

    /// Whether this is a cluster store (etcd), every node seeing the same data.
    pub fn is_cluster(&self) -> bool {
        matches!(self, StoreUrl::Etcd { .. })
    }

    fn shown(tls: bool, user: &Option<String>, hosts: &str) -> String {
        let scheme = if tls { "etcds" } else { "etcd" };
        let user = user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
        format!("{scheme}://{user}{hosts}")
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Embedded(path) => write!(f, "{}", path.display()),
            StoreUrl::Etcd {
                tls,
                user,
                endpoints,
                namespace,
            } => {
                write!(f, "{}", Self::shown(*tls, user, &endpoints.join(",")))?;
                match namespace {
                    Some(ns) => write!(f, "/{ns}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Open a store from its URL (see [`StoreUrl`]) with no TLS material or credentials.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>> {
    open_with(url, &etcd::EtcdSecurity::default()).await
}

/// Open a store from its URL, with the TLS material and credentials for etcd in `security`
/// (read and checked here: a key or password file others may read is refused).
pub async fn open_with(url: &str, security: &etcd::EtcdSecurity) -> Result<std::sync::Arc<dyn Store>> {
    match StoreUrl::parse(url)? {
        StoreUrl::Etcd {
            tls,
            user,
            endpoints,
            namespace,
        } => {
            let (tls, auth) = security.load(tls, user.as_deref())?;
            let options = etcd::EtcdOptions {
                tls,
                auth,
                ..Default::default()
            };
            let store: std::sync::Arc<dyn Store> =
                std::sync::Arc::new(etcd::EtcdStore::connect_with(&endpoints, options).await?);
            Ok(match namespace {
                Some(ns) => std::sync::Arc::new(namespace::Namespaced::new(store, &ns)),
                None => store,
            })
        }
        StoreUrl::Embedded(path) => {
            if !security.is_empty() {
                return Err(StoreError::Settings {
                    field: "store".into(),
                    why: format!(
                        "TLS and etcd credentials (--store-ca, --store-user, ...) need an etcd store, not the embedded {}",
                        path.display()
                    ),
                });
            }
            Ok(std::sync::Arc::new(embedded::EmbeddedStore::open(&path)?))
        }
    }
}
