//! Pools and placement. Pools come from each backend's `pools()` report and are kept in the store
//! with their freshness time; [`Elara::place`] picks the pool for a new volume. Placement is this one
//! function so the scheduler can own it entirely.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use elara_runtime::Capacity;
use elara_scheduler::{ByteCapacity, Explanation, PoolReport, PoolState, Request, Scheduler};
use elara_store::{Op, StoreExt, Txn};

use super::Elara;
use crate::error::{ApiError, ApiResult};
use crate::model::{BackendRecord, PoolRecord, SCHEMA, Scope, VolumeTypeRecord, keys, now};

/// Where a new volume should go.
#[derive(Debug, Clone, Default)]
pub struct PlaceRequest {
    pub size_bytes: u64,
    pub backend: Option<String>,
    /// Any backend of this driver.
    pub driver: Option<String>,
    pub pool: Option<String>,
    /// A volume type whose specs apply.
    pub volume_type: Option<String>,
    /// Inline extra specs (`-o spec=…`); they override the type's spec of the same key.
    pub specs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub backend: String,
    pub pool: String,
}

/// What placement remembers between pool reports: the bytes it placed in each pool since the
/// report it last saw, so a burst of creates spreads before the next report (Cinder's consume).
#[derive(Default)]
pub struct Consumed(std::sync::Mutex<HashMap<String, (i64, f64)>>);

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
        // The runtime has checked the report (at most `max_pools` pools, names fit for a key).
        // It is written in as few transactions as the store takes, not one per pool, and the
        // pools of this backend and node that it no longer names go with it.
        let mut ops = Vec::new();
        let mut out = Vec::new();
        let mut reported = BTreeSet::new();
        for pool in pools {
            let pr = PoolRecord {
                v: SCHEMA,
                backend: name.into(),
                driver: rec.driver.clone(),
                node: node.clone(),
                pool,
                updated_at: now(),
            };
            let key = keys::pool(name, &node_key, &pr.pool.name);
            ops.push(super::put(key.clone(), &pr));
            reported.insert(key);
            out.push(pr);
        }
        let mine = format!("{}{node_key}/", keys::backend_pools(name));
        for key in self.store.list_keys(&mine).await? {
            if !reported.contains(&key) {
                ops.push(super::del(key));
            }
        }
        for chunk in txn_chunks(ops, self.store.max_value_size()) {
            self.store
                .txn(Txn {
                    compares: vec![],
                    ops: chunk,
                })
                .await?;
        }
        Ok(out)
    }

    /// Refresh every backend's pools; failures are logged, not fatal.
    pub async fn refresh_all_pools(&self) {
        let Ok(backends) = self.list_backends_raw().await else {
            return;
        };
        for b in backends {
            if let Err(e) = self.refresh_backend_pools(&b.name).await {
                tracing::warn!(backend = %b.name, "pool report failed: {e}");
            }
        }
    }

    /// Every recorded pool (all nodes).
    pub async fn list_pools(&self) -> ApiResult<Vec<PoolRecord>> {
        Ok(self
            .store
            .list_json::<PoolRecord>(&keys::pools())
            .await?
            .into_iter()
            .map(|r| r.value)
            .collect())
    }

    /// The recorded pools of `backends`, on every node: the scheduler's node and node-down
    /// filters decide (and `explain` shows) which of them this node can use.
    pub async fn candidate_pools(&self, backends: &[BackendRecord]) -> ApiResult<Vec<PoolRecord>> {
        let mut pools: Vec<PoolRecord> = self
            .list_pools()
            .await?
            .into_iter()
            .filter(|p| backends.iter().any(|b| b.name == p.backend))
            .collect();
        let usable_here = |p: &PoolRecord| p.node.is_none() || p.node.as_deref() == Some(self.node());
        // A backend with no report usable here yet (just added, or reports are failing) gets one now.
        let mut failed = Vec::new();
        for b in backends {
            if !pools.iter().any(|p| p.backend == b.name && usable_here(p)) {
                match self.refresh_backend_pools(&b.name).await {
                    Ok(mut fresh) => pools.append(&mut fresh),
                    Err(e) => {
                        tracing::warn!(backend = %b.name, "pool report failed: {e}");
                        failed.push(e);
                    }
                }
            }
        }
        // Nothing to place in because the reports failed: say why (bad credentials, an
        // unreachable endpoint) rather than "no pools are known".
        if !failed.is_empty() && !pools.iter().any(usable_here) {
            if failed.len() == 1 {
                return Err(failed.remove(0));
            }
            let all: Vec<String> = failed.iter().map(ToString::to_string).collect();
            return Err(ApiError::unavailable(all.join("; ")));
        }
        Ok(pools)
    }

    /// The scheduler's view of every pool the request may use, and the request itself.
    async fn scheduling_input(&self, req: &PlaceRequest) -> ApiResult<(Vec<PoolState>, Request, Scheduler)> {
        let all = self.list_backends_raw().await?;
        let backends: Vec<BackendRecord> = all
            .into_iter()
            .filter(|b| req.backend.as_ref().is_none_or(|n| *n == b.name))
            .filter(|b| req.driver.as_ref().is_none_or(|d| *d == b.driver))
            .collect();
        if backends.is_empty() {
            return Err(match (&req.backend, &req.driver) {
                (Some(b), _) => {
                    ApiError::invalid("backend", format!("no backend named {b:?} (see `elara backend list`)"))
                }
                (_, Some(d)) => ApiError::invalid("driver-name", format!("no backend uses driver {d:?}")),
                _ => ApiError::invalid("backend", "no backend exists; add one with `elara backend add`"),
            });
        }
        let mut records = self.candidate_pools(&backends).await?;
        if let Some(name) = &req.pool
            && !records
                .iter()
                .any(|p| p.pool.name == *name || format!("{}#{}", p.backend, p.pool.name) == *name)
        {
            return Err(ApiError::invalid(
                "pool",
                format!("no pool named {name:?} in the chosen backends"),
            ));
        }
        // A stable order makes ties reproducible (the first of equal weights wins, as in Cinder).
        records.sort_by(|a, b| (&a.backend, &a.node, &a.pool.name).cmp(&(&b.backend, &b.node, &b.pool.name)));

        let mut specs = BTreeMap::new();
        if let Some(t) = &req.volume_type {
            let ty = self
                .get::<VolumeTypeRecord>(&keys::volume_type(t))
                .await?
                .ok_or_else(|| {
                    ApiError::invalid("type", format!("no volume type named {t:?} (see `elara type list`)"))
                })?;
            specs.extend(ty.value.specs);
        }
        specs.extend(req.specs.clone());
        let mut request = Request::new(req.size_bytes as f64 / GIB);
        for spec in super::types::parse_specs(&specs)? {
            request
                .add_spec(spec)
                .map_err(|e| ApiError::invalid("spec", e.to_string()))?;
        }
        request.pool = req.pool.clone();
        request.node = Some(self.node().to_string());
        request.volume_type = req.volume_type.clone();

        let consumed = self.consumed.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut pools = Vec::with_capacity(records.len());
        for r in records {
            let mut state = pool_state(&r)
                .map_err(|e| ApiError::internal(format!("backend {} reported a bad pool: {e}", r.backend)))?;
            if let Some((seen, gb)) = consumed.get(&state.id())
                && *seen == r.updated_at
            {
                state.consume(*gb);
            }
            pools.push(state);
        }

        let alive = self.store.list_keys(&keys::alive()).await?;
        let down_nodes: BTreeSet<String> = self
            .list_nodes()
            .await?
            .into_iter()
            .map(|n| n.record.name)
            // This daemon is serving the request: its node is up even if its lease just lapsed.
            .filter(|n| n != self.node() && !alive.contains(&keys::node_alive(n)))
            .collect();
        let scheduler = Scheduler {
            // Three missed refreshes make a report stale.
            max_pool_age: Some(Duration::from_secs(3 * self.cfg.pool_refresh_secs.max(1) + 10)),
            down_nodes,
            ..Scheduler::default()
        };
        Ok((pools, request, scheduler))
    }

    /// Choose a backend and pool with the scheduler (filters, then weighers), and consume the
    /// chosen pool's capacity in memory until its next report.
    pub async fn place(&self, req: &PlaceRequest) -> ApiResult<Placement> {
        let (pools, request, scheduler) = self.scheduling_input(req).await?;
        let chosen = scheduler
            .place(&pools, &request)
            .map_err(|e| ApiError::new(507, "no-valid-pool", e.to_string()))?;
        let pool = &pools[chosen.index];
        let report_time = pool
            .updated_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        {
            let mut consumed = self.consumed.0.lock().unwrap_or_else(|p| p.into_inner());
            let entry = consumed.entry(pool.id()).or_insert((report_time, 0.0));
            if entry.0 != report_time {
                *entry = (report_time, 0.0);
            }
            entry.1 += request.size_gb;
        }
        tracing::debug!(pool = %chosen.pool, weight = chosen.weight, "placed");
        Ok(Placement {
            backend: pool.backend.clone(),
            pool: pool.name.clone(),
        })
    }

    /// Every pool's fate for a request: the filter that rejected it and why, or its weight.
    pub async fn explain_placement(&self, req: &PlaceRequest) -> ApiResult<Explanation> {
        let (pools, request, scheduler) = self.scheduling_input(req).await?;
        Ok(scheduler.explain(&pools, &request))
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// etcd's default `--max-txn-ops`: the most operations one transaction may hold.
const MAX_TXN_OPS: usize = 128;

/// Split `ops` into transactions that both stores take: at most [`MAX_TXN_OPS`] operations, and
/// values adding up to at most `max_bytes` (the store's limit on a transaction's values).
fn txn_chunks(ops: Vec<Op>, max_bytes: usize) -> Vec<Vec<Op>> {
    let mut chunks: Vec<Vec<Op>> = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let size = match &op {
            Op::Put { value, .. } => value.len(),
            Op::Delete { .. } => 0,
        };
        match chunks.last_mut() {
            Some(last) if last.len() < MAX_TXN_OPS && bytes + size <= max_bytes => {
                bytes += size;
                last.push(op);
            }
            _ => {
                bytes = size;
                chunks.push(vec![op]);
            }
        }
    }
    chunks
}

/// A stored pool report in the scheduler's terms.
fn pool_state(r: &PoolRecord) -> Result<PoolState, elara_scheduler::PoolError> {
    let bytes = |c: &Capacity| match c {
        Capacity::Bytes(n) => ByteCapacity::Bytes(*n),
        Capacity::Infinite => ByteCapacity::Infinite,
        Capacity::Unknown => ByteCapacity::Unknown,
    };
    let p = &r.pool;
    PoolState::from_report(PoolReport {
        name: p.name.clone(),
        backend: r.backend.clone(),
        driver: r.driver.clone(),
        node: r.node.clone(),
        availability_zone: None,
        total: bytes(&p.total),
        free: bytes(&p.free),
        provisioned_bytes: p.provisioned_bytes,
        // Elara does not keep a per-pool sum of its own volumes; the driver's provisioned figure
        // stands in (it only matters to the allocated-capacity weigher, off by default).
        allocated_bytes: p.provisioned_bytes,
        reserved_percentage: p.reserved_percentage,
        thin_provisioning: p.thin_provisioning,
        thick_provisioning: p.thick_provisioning,
        max_over_subscription_ratio: p.max_over_subscription_ratio.clone(),
        capabilities: p.capabilities.clone(),
        updated_at: SystemTime::UNIX_EPOCH + Duration::from_secs(r.updated_at.max(0) as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_of(len: usize) -> Op {
        Op::Put {
            key: "k".into(),
            value: vec![0; len],
            lease: None,
        }
    }

    #[test]
    fn txn_chunks_keep_to_the_ops_and_bytes_limits() {
        let ops: Vec<Op> = (0..300).map(|_| put_of(10)).collect();
        let sizes: Vec<usize> = txn_chunks(ops, 1 << 20).iter().map(Vec::len).collect();
        assert_eq!(sizes, [128, 128, 44]);
        // By bytes: 4 values of 400 under a limit of 1000 go two by two.
        let sizes: Vec<usize> = txn_chunks((0..4).map(|_| put_of(400)).collect(), 1000)
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [2, 2]);
        // Deletes weigh nothing but count as operations.
        let ops: Vec<Op> = (0..130).map(|i| Op::Delete { key: format!("k{i}") }).collect();
        assert_eq!(txn_chunks(ops, 0).iter().map(Vec::len).collect::<Vec<_>>(), [128, 2]);
        assert!(txn_chunks(vec![], 10).is_empty());
    }
}
