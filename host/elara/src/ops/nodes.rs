//! Nodes and their liveness. A running daemon keeps `alive/<node>` on a lease it renews; when the
//! daemon dies the lease expires, the key vanishes and the node shows as `down`.

use std::sync::Arc;
use std::time::Duration;

use elara_store::{StoreError, StoreExt, encode};

use super::reconcile::Alive;
use super::{Elara, absent, del, put, raced, rev};
use crate::error::{ApiError, ApiResult};
use crate::model::*;
use crate::validate::check_name;

impl Elara {
    /// Register this daemon as alive: a fresh lease, the alive key, and the node record.
    pub async fn register_self(&self) -> ApiResult<()> {
        let ttl = Duration::from_secs(self.cfg.node_ttl_secs);
        let lease = self.store.grant_lease(ttl).await?;
        self.lease.store(lease, std::sync::atomic::Ordering::Relaxed);
        let alive = Alive {
            incarnation: self.incarnation.clone(),
            lease,
        };
        self.store
            .put(&keys::node_alive(self.node()), encode(&alive), Some(lease))
            .await?;
        let key = keys::node(self.node());
        let existing = self.get::<NodeRecord>(&key).await?;
        let rec = NodeRecord {
            v: SCHEMA,
            name: self.node().to_string(),
            id: existing
                .as_ref()
                .map(|r| r.value.id.clone())
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            registered_at: existing.as_ref().map(|r| r.value.registered_at).unwrap_or_else(now),
            last_start: Some(now()),
            manual: false,
        };
        self.store.put(&key, encode(&rec), None).await?;
        Ok(())
    }

    /// Renew the lease every third of its TTL; re-register if it was lost (e.g. a long pause).
    pub async fn keep_alive_loop(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let period = Duration::from_secs(self.cfg.node_ttl_secs).div_f64(3.0);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.changed() => return,
            }
            match self.store.keep_alive(self.lease()).await {
                Ok(()) => {}
                Err(StoreError::LeaseNotFound(_)) => {
                    tracing::warn!("node lease expired; registering again");
                    if let Err(e) = self.register_self().await {
                        tracing::error!("re-registering the node failed: {e}");
                    }
                }
                Err(e) => tracing::warn!("node lease renewal failed: {e}"),
            }
        }
    }

    /// Leave the cluster cleanly: the node shows `down` at once.
    pub async fn deregister_self(&self) {
        if let Err(e) = self.store.revoke_lease(self.lease()).await {
            tracing::warn!("revoking the node lease: {e}");
        }
    }

    pub async fn list_nodes(&self) -> ApiResult<Vec<NodeView>> {
        let alive = self.store.list_keys(&keys::alive()).await?;
        Ok(self
            .store
            .list_json::<NodeRecord>(&keys::nodes())
            .await?
            .into_iter()
            .map(|r| {
                let up = alive.contains(&keys::node_alive(&r.value.name));
                NodeView {
                    record: r.value,
                    status: if up { "up" } else { "down" }.into(),
                }
            })
            .collect())
    }

    pub async fn node_view(&self, name: &str) -> ApiResult<NodeView> {
        self.list_nodes()
            .await?
            .into_iter()
            .find(|n| n.record.name == name)
            .ok_or_else(|| ApiError::not_found("node", name))
    }

    /// Record a node before its daemon first starts.
    pub async fn register_node(&self, name: &str) -> ApiResult<NodeView> {
        check_name("name", name)?;
        let key = keys::node(name);
        let rec = NodeRecord {
            v: SCHEMA,
            name: name.to_string(),
            id: uuid::Uuid::new_v4().to_string(),
            hostname: String::new(),
            version: String::new(),
            registered_at: now(),
            last_start: None,
            manual: true,
        };
        if !self.txn(vec![absent(key.clone())], vec![put(key, &rec)]).await? {
            return Err(ApiError::conflict(format!("node {name:?} is already registered")).with_field("name"));
        }
        self.node_view(name).await
    }

    /// Remove a node that is down and holds nothing.
    pub async fn unregister_node(&self, name: &str) -> ApiResult<()> {
        let view = self.node_view(name).await?;
        if view.status == "up" {
            return Err(ApiError::conflict(format!(
                "node {name:?} is up; stop its daemon first"
            )));
        }
        self.check_node_empty(name).await?;
        let cur = self
            .get::<NodeRecord>(&keys::node(name))
            .await?
            .ok_or_else(|| ApiError::not_found("node", name))?;
        if !self
            .txn(vec![rev(keys::node(name), cur.revision)], vec![del(keys::node(name))])
            .await?
        {
            return Err(raced("node", name));
        }
        Ok(())
    }

    /// Rename a node that is down and holds nothing (start its daemon with `--node NEW` after).
    pub async fn rename_node(&self, name: &str, new: &str) -> ApiResult<NodeView> {
        check_name("new-name", new)?;
        let view = self.node_view(name).await?;
        if view.status == "up" {
            return Err(ApiError::conflict(format!(
                "node {name:?} is up; stop its daemon, rename it, then start it with --node {new}"
            )));
        }
        self.check_node_empty(name).await?;
        let cur = self
            .get::<NodeRecord>(&keys::node(name))
            .await?
            .ok_or_else(|| ApiError::not_found("node", name))?;
        let mut rec = cur.value;
        rec.name = new.to_string();
        let ok = self
            .txn(
                vec![rev(keys::node(name), cur.revision), absent(keys::node(new))],
                vec![del(keys::node(name)), put(keys::node(new), &rec)],
            )
            .await?;
        if !ok {
            return Err(
                ApiError::conflict(format!("node {new:?} already exists or {name:?} changed")).with_field("new-name"),
            );
        }
        self.node_view(new).await
    }

    async fn check_node_empty(&self, name: &str) -> ApiResult<()> {
        let vols = self
            .list_volumes_raw()
            .await?
            .into_iter()
            .filter(|v| v.node.as_deref() == Some(name))
            .count();
        let atts = self
            .store
            .list_json::<AttachmentRecord>(&keys::all_attachments())
            .await?
            .into_iter()
            .filter(|a| a.value.node == name)
            .count();
        if vols + atts > 0 {
            return Err(ApiError::conflict(format!(
                "node {name:?} still holds {vols} node-local volume(s) and {atts} attachment(s); move or delete them first"
            )));
        }
        Ok(())
    }
}
