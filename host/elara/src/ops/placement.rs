//! Pools and placement. Pools come from each backend's `pools()` report and are kept in the store
//! with their freshness time; [`Elara::place`] picks the pool for a new volume. Placement is this one
//! function so the scheduler can own it entirely.

use elara_runtime::{Capacity, Pool};
use elara_store::StoreExt;

use super::Elara;
use crate::error::{ApiError, ApiResult};
use crate::model::{BackendRecord, PoolRecord, SCHEMA, Scope, keys, now};

/// Where a new volume should go.
#[derive(Debug, Clone, Default)]
pub struct PlaceRequest {
    pub size_bytes: u64,
    pub backend: Option<String>,
    /// Any backend of this driver.
    pub driver: Option<String>,
    pub pool: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub backend: String,
    pub pool: String,
}

impl Elara {
    /// Ask one backend for its pools and record them (for node-scoped backends: this node's pools).
    pub async fn refresh_backend_pools(&self, name: &str) -> ApiResult<Vec<PoolRecord>> {
        let (rec, backend) = self.backends.get(name).await?;
        let pools = backend.pools().await.map_err(|e| ApiError::from_call(name, e))?;
        let node = match rec.scope {
            Scope::Node => Some(self.node().to_string()),
            Scope::Cluster => None,
        };
        let node_key = node.clone().unwrap_or_else(|| "-".into());
        let mut out = Vec::new();
        for pool in pools {
            let pr = PoolRecord { v: SCHEMA, backend: name.into(), driver: rec.driver.clone(), node: node.clone(), pool, updated_at: now() };
            self.store.put(&keys::pool(name, &node_key, &pr.pool.name), elara_store::encode(&pr), None).await?;
            out.push(pr);
        }
        Ok(out)
    }

    /// Refresh every backend's pools; failures are logged, not fatal.
    pub async fn refresh_all_pools(&self) {
        let Ok(backends) = self.list_backends_raw().await else { return };
        for b in backends {
            if let Err(e) = self.refresh_backend_pools(&b.name).await {
                tracing::warn!(backend = %b.name, "pool report failed: {e}");
            }
        }
    }

    /// Every recorded pool (all nodes).
    pub async fn list_pools(&self) -> ApiResult<Vec<PoolRecord>> {
        Ok(self.store.list_json::<PoolRecord>(&keys::pools()).await?.into_iter().map(|r| r.value).collect())
    }

    /// Pools a volume can be placed in from this node.
    pub async fn usable_pools(&self, backends: &[BackendRecord]) -> ApiResult<Vec<PoolRecord>> {
        let mut pools: Vec<PoolRecord> = self
            .list_pools()
            .await?
            .into_iter()
            .filter(|p| p.node.is_none() || p.node.as_deref() == Some(self.node()))
            .filter(|p| backends.iter().any(|b| b.name == p.backend))
            .collect();
        // A backend with no report yet (just added, or reports are failing) gets one now.
        for b in backends {
            if !pools.iter().any(|p| p.backend == b.name) {
                match self.refresh_backend_pools(&b.name).await {
                    Ok(mut fresh) => pools.append(&mut fresh),
                    Err(e) => tracing::warn!(backend = %b.name, "pool report failed: {e}"),
                }
            }
        }
        Ok(pools)
    }

    /// Choose a backend and pool: the named ones, or the first pool that fits.
    pub async fn place(&self, req: &PlaceRequest) -> ApiResult<Placement> {
        let all = self.list_backends_raw().await?;
        let backends: Vec<BackendRecord> = all
            .into_iter()
            .filter(|b| req.backend.as_ref().is_none_or(|n| *n == b.name))
            .filter(|b| req.driver.as_ref().is_none_or(|d| *d == b.driver))
            .collect();
        if backends.is_empty() {
            return Err(match (&req.backend, &req.driver) {
                (Some(b), _) => ApiError::invalid("backend", format!("no backend named {b:?} (see `elara backend list`)")),
                (_, Some(d)) => ApiError::invalid("driver-name", format!("no backend uses driver {d:?}")),
                _ => ApiError::invalid("backend", "no backend exists; add one with `elara backend add`"),
            });
        }
        let pools = self.usable_pools(&backends).await?;
        let mut why = Vec::new();
        for p in &pools {
            if let Some(name) = &req.pool
                && *name != p.pool.name
            {
                why.push(format!("{}/{}: not the requested pool", p.backend, p.pool.name));
                continue;
            }
            match fits(&p.pool, req.size_bytes) {
                Ok(()) => return Ok(Placement { backend: p.backend.clone(), pool: p.pool.name.clone() }),
                Err(reason) => why.push(format!("{}/{}: {reason}", p.backend, p.pool.name)),
            }
        }
        if let Some(name) = &req.pool
            && !pools.iter().any(|p| p.pool.name == *name)
        {
            return Err(ApiError::invalid("pool", format!("no pool named {name:?} in the chosen backends")));
        }
        Err(ApiError::new(
            507,
            "no-valid-pool",
            format!("no pool fits a volume of {} bytes: {}", req.size_bytes, if why.is_empty() { "no pools reported".into() } else { why.join("; ") }),
        ))
    }
}

/// Capacity check with Cinder's meaning: thin pools by virtual capacity, thick by free minus reserved.
fn fits(pool: &Pool, size: u64) -> Result<(), String> {
    let (Capacity::Bytes(total), Capacity::Bytes(free)) = (&pool.total, &pool.free) else {
        return Ok(()); // infinite or unknown capacity passes, as in Cinder
    };
    let reserved = (*total as f64 * pool.reserved_percentage as f64 / 100.0).floor();
    let free_usable = *free as f64 - reserved;
    if pool.thin_provisioning {
        let ratio: f64 = pool.max_over_subscription_ratio.parse::<f64>().unwrap_or(1.0).max(1.0);
        let virtual_free = *total as f64 * ratio - pool.provisioned_bytes as f64 - reserved;
        if virtual_free < size as f64 {
            return Err(format!("virtual free {virtual_free:.0} bytes < {size}"));
        }
        if free_usable <= 0.0 {
            return Err("no free space left".into());
        }
        Ok(())
    } else if free_usable < size as f64 {
        Err(format!("free {free_usable:.0} bytes (after reserved) < {size}"))
    } else {
        Ok(())
    }
}
