//! Leases in a target: how block collection and the backups running on one target keep out of
//! each other's way, with nothing shared but the target itself (two daemons with different stores
//! may use one bucket, and a store's op records say nothing about another daemon's backups).
//!
//! Each side writes its own lease object, then lists the other side's. With a target that lists
//! what was written before the listing started (a local directory; S3, which is strongly
//! consistent), of two parties racing at least one sees the other:
//!
//! * A backup writes `locks/backup-<op id>.json` before it lists the blocks it will dedup
//!   against, then waits while a live collection lease is there. It removes its lease once its
//!   manifest is written: from then on the manifest references every block it reused.
//! * Block collection writes `locks/gc-<uuid>.json`, gives up if a live backup lease is there,
//!   marks (reads every manifest, lists every block), looks again and gives up if a backup
//!   appeared meanwhile, then sweeps and removes its lease.
//!
//! So a backup lists blocks only while no collection is sweeping, and a collection that starts
//! later sees the backup's lease and deletes nothing until that backup's manifest is written.
//!
//! A holder refreshes its lease every [`REFRESH`]; one not refreshed for [`STALE`] (its daemon
//! died) is ignored, and the next collection removes it. Freshness is judged by wall clocks:
//! daemons sharing a target need clocks closer than `STALE - REFRESH`.

use std::time::Duration;

use hyper::body::Bytes;
use serde::{Deserialize, Serialize};

use super::target::{Target, TargetError};

/// Where leases live in a target.
pub const PREFIX: &str = "locks/";
/// How often a holder rewrites its lease.
pub const REFRESH: Duration = Duration::from_secs(30);
/// A lease older than this is a dead holder's.
pub const STALE: Duration = Duration::from_secs(600);

/// Who holds a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseKind {
    /// A backup between listing the target's blocks and writing its manifest.
    Backup,
    /// Block collection between its mark and the end of its sweep.
    Gc,
}

/// A lease object's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseBody {
    pub kind: LeaseKind,
    /// The backup's op id, or the collection pass's id.
    pub holder: String,
    pub node: String,
    /// Unix seconds of the last write.
    pub refreshed_at: i64,
}

/// A lease found in a target.
#[derive(Debug, Clone)]
pub struct FoundLease {
    pub key: String,
    pub body: LeaseBody,
    pub stale: bool,
}

/// The key of a lease.
pub fn lease_key(kind: LeaseKind, holder: &str) -> String {
    let kind = match kind {
        LeaseKind::Backup => "backup",
        LeaseKind::Gc => "gc",
    };
    format!("{PREFIX}{kind}-{holder}.json")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn body(kind: LeaseKind, holder: &str, node: &str) -> Bytes {
    let b = LeaseBody {
        kind,
        holder: holder.to_string(),
        node: node.to_string(),
        refreshed_at: now(),
    };
    Bytes::from(serde_json::to_vec(&b).expect("a lease serialises"))
}

/// A lease this daemon holds, refreshed in the background until released or dropped. Dropping
/// it stops the refreshes and leaves the object to go stale (an undo removes it by its key).
pub struct Lease {
    target: Target,
    key: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Lease {
    /// Write the lease, and start refreshing it.
    pub async fn take(target: &Target, kind: LeaseKind, holder: &str, node: &str) -> Result<Lease, TargetError> {
        let key = lease_key(kind, holder);
        target.put(&key, body(kind, holder, node)).await?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (t, k, h, n) = (target.clone(), key.clone(), holder.to_string(), node.to_string());
        // A refresh is never cut off half-way (only between writes): a write still in flight
        // when the lease is released could land after the delete and bring it back.
        let refresher = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(REFRESH) => {}
                }
                if let Err(e) = t.put(&k, body(kind, &h, &n)).await {
                    tracing::warn!(lease = %k, "refreshing a backup target lease failed (retried in {REFRESH:?}): {e}");
                }
            }
        });
        Ok(Lease {
            target: target.clone(),
            key,
            stop: Some(stop),
            refresher: Some(refresher),
        })
    }

    /// Stop refreshing (waiting for a refresh in flight), then remove the lease object.
    pub async fn release(mut self) -> Result<(), TargetError> {
        drop(self.stop.take());
        if let Some(r) = self.refresher.take() {
            let _ = r.await;
        }
        self.target.delete(&self.key).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Closing the channel ends the refresher after any write in flight.
        drop(self.stop.take());
    }
}

/// Every lease in the target. A key under `locks/` whose body is not a lease (planted, or
/// written by something else) is skipped with a warning: it must not stop collection forever.
pub async fn leases(target: &Target) -> Result<Vec<FoundLease>, TargetError> {
    let mut out = vec![];
    for key in target.list(PREFIX).await? {
        let bytes = match target.get(&key).await {
            Ok(b) => b,
            // Released between the listing and the read.
            Err(TargetError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        match serde_json::from_slice::<LeaseBody>(&bytes) {
            Ok(body) => {
                let stale = now().saturating_sub(body.refreshed_at) > STALE.as_secs() as i64;
                out.push(FoundLease { key, body, stale });
            }
            Err(e) => tracing::warn!(key, "not a lease (ignored): {e}"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lease is seen while held, gone once released; a lease not refreshed for `STALE` is
    /// stale; a garbled object under `locks/` is not a lease.
    #[tokio::test]
    async fn take_release_stale() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::Local(dir.path().to_path_buf());
        target.probe().await.unwrap();
        assert!(
            leases(&target).await.unwrap().is_empty(),
            "a target without locks/ has no leases"
        );
        let l = Lease::take(&target, LeaseKind::Backup, "op1", "n1").await.unwrap();
        let found = leases(&target).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].body.kind, found[0].body.holder.as_str(), found[0].stale),
            (LeaseKind::Backup, "op1", false)
        );
        l.release().await.unwrap();
        assert!(leases(&target).await.unwrap().is_empty());

        let old = LeaseBody {
            kind: LeaseKind::Gc,
            holder: "g".into(),
            node: "n".into(),
            refreshed_at: now() - STALE.as_secs() as i64 - 1,
        };
        target
            .put(
                &lease_key(LeaseKind::Gc, "g"),
                Bytes::from(serde_json::to_vec(&old).unwrap()),
            )
            .await
            .unwrap();
        target
            .put("locks/garbage.json", Bytes::from_static(b"{not json"))
            .await
            .unwrap();
        let found = leases(&target).await.unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].stale);
    }
}
