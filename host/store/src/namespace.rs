//! A key namespace over any store: every key is stored as `<namespace><key>`, and the namespace is
//! stripped from what comes back. Lets several daemons or test runs share one etcd without seeing
//! each other (`--store etcd://127.0.0.1:2379/my-namespace`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use crate::*;

pub struct Namespaced {
    inner: Arc<dyn Store>,
    ns: String,
}

impl Namespaced {
    /// `ns` like `/tenant-a` (a leading `/` is added if missing, a trailing one removed).
    pub fn new(inner: Arc<dyn Store>, ns: &str) -> Self {
        let ns = format!("/{}", ns.trim_matches('/'));
        Namespaced { inner, ns }
    }

    fn wrap(&self, key: &str) -> String {
        format!("{}{key}", self.ns)
    }

    fn unwrap_kv(&self, mut kv: KeyValue) -> KeyValue {
        kv.key = kv.key.strip_prefix(&self.ns).unwrap_or(&kv.key).to_string();
        kv
    }
}

#[async_trait]
impl Store for Namespaced {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn location(&self) -> String {
        format!("{}{}", self.inner.location(), self.ns)
    }
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.inner.get(&self.wrap(key)).await?.map(|kv| self.unwrap_kv(kv)))
    }
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        Ok(self
            .inner
            .list(&self.wrap(prefix))
            .await?
            .into_iter()
            .map(|kv| self.unwrap_kv(kv))
            .collect())
    }
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .inner
            .list_keys(&self.wrap(prefix))
            .await?
            .into_iter()
            .map(|k| k.strip_prefix(&self.ns).unwrap_or(&k).to_string())
            .collect())
    }
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        self.inner.put(&self.wrap(key), value, lease).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.inner.delete(&self.wrap(key)).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        let compares = txn
            .compares
            .into_iter()
            .map(|c| match c {
                Compare::Revision { key, revision } => Compare::Revision {
                    key: self.wrap(&key),
                    revision,
                },
                Compare::Exists { key } => Compare::Exists { key: self.wrap(&key) },
            })
            .collect();
        let ops = txn
            .ops
            .into_iter()
            .map(|o| match o {
                Op::Put { key, value, lease } => Op::Put {
                    key: self.wrap(&key),
                    value,
                    lease,
                },
                Op::Delete { key } => Op::Delete { key: self.wrap(&key) },
            })
            .collect();
        self.inner.txn(Txn { compares, ops }).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.inner.revoke_lease(lease).await
    }
    async fn lease_alive(&self, lease: LeaseId) -> Result<bool> {
        self.inner.lease_alive(lease).await
    }
    async fn watch(&self, prefix: &str) -> Result<WatchStream> {
        let ns = self.ns.clone();
        let strip = move |k: String| k.strip_prefix(&ns).map(str::to_string).unwrap_or(k);
        let stream = self.inner.watch(&self.wrap(prefix)).await?.map(move |ev| {
            ev.map(|e| match e {
                WatchEvent::Put(mut kv) => {
                    kv.key = strip(kv.key);
                    WatchEvent::Put(kv)
                }
                WatchEvent::Delete { key, revision } => WatchEvent::Delete {
                    key: strip(key),
                    revision,
                },
            })
        });
        Ok(Box::pin(stream))
    }
    fn max_value_size(&self) -> usize {
        self.inner.max_value_size()
    }
}
