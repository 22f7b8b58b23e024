//! Filters: each says whether a pool can take the request, and if not, why.
//!
//! Order (the first that rejects a pool is reported): `stale`, `node_down`, `backend`, `driver`, `pool_name`,
//! `node`, `availability_zone`, `capacity`, `capabilities`. `capacity` and `capabilities` are Cinder's
//! CapacityFilter and CapabilitiesFilter; `availability_zone` is its AvailabilityZoneFilter.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::pool::{Capacity, PoolState};
use crate::request::{Request, Spec};

/// The filters, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// The pool's last report is older than the scheduler's `max_pool_age`.
    Stale,
    /// The pool's node is down.
    NodeDown,
    Backend,
    Driver,
    PoolName,
    Node,
    AvailabilityZone,
    /// Cinder's CapacityFilter.
    Capacity,
    /// Cinder's CapabilitiesFilter.
    Capabilities,
}

impl Filter {
    pub const ALL: [Filter; 9] = [
        Filter::Stale,
        Filter::NodeDown,
        Filter::Backend,
        Filter::Driver,
        Filter::PoolName,
        Filter::Node,
        Filter::AvailabilityZone,
        Filter::Capacity,
        Filter::Capabilities,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Filter::Stale => "stale",
            Filter::NodeDown => "node_down",
            Filter::Backend => "backend",
            Filter::Driver => "driver",
            Filter::PoolName => "pool_name",
            Filter::Node => "node",
            Filter::AvailabilityZone => "availability_zone",
            Filter::Capacity => "capacity",
            Filter::Capabilities => "capabilities",
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the filters need besides the pool and the request.
#[derive(Debug, Clone, Copy)]
pub struct FilterContext<'a> {
    pub now: SystemTime,
    /// `None`: no staleness check.
    pub max_pool_age: Option<Duration>,
    pub down_nodes: &'a BTreeSet<String>,
    /// false: rejections carry an empty reason (no text is formatted); `place` uses this on its fast path.
    pub verbose: bool,
}

/// Runs every filter in order; `Err((filter, reason))` from the first that rejects.
pub fn check(pool: &PoolState, request: &Request, ctx: &FilterContext<'_>) -> Result<(), (Filter, String)> {
    check_only(&Filter::ALL, pool, request, ctx)
}

/// The filters that can reject a pool for this request and context, in order: the others pass every pool
/// (no staleness limit, no node down, no constraint asked), so a placement need not run them on each pool.
pub fn active(request: &Request, ctx: &FilterContext<'_>) -> Vec<Filter> {
    Filter::ALL
        .into_iter()
        .filter(|f| match f {
            Filter::Stale => ctx.max_pool_age.is_some(),
            Filter::NodeDown => !ctx.down_nodes.is_empty(),
            Filter::Backend => request.backend.is_some(),
            Filter::Driver => request.driver.is_some(),
            Filter::PoolName => request.pool.is_some(),
            Filter::Node => request.node.is_some(),
            Filter::AvailabilityZone => request.availability_zone.is_some(),
            Filter::Capacity => request.size_gb != 0.0,
            Filter::Capabilities => !request.specs.is_empty(),
        })
        .collect()
}

/// Runs `filters` in order; `Err((filter, reason))` from the first that rejects.
pub fn check_only(
    filters: &[Filter],
    pool: &PoolState,
    request: &Request,
    ctx: &FilterContext<'_>,
) -> Result<(), (Filter, String)> {
    for &filter in filters {
        run(filter, pool, request, ctx).map_err(|reason| (filter, reason))?;
    }
    Ok(())
}

/// Runs one filter.
pub fn run(filter: Filter, pool: &PoolState, request: &Request, ctx: &FilterContext<'_>) -> Result<(), String> {
    let v = ctx.verbose;
    match filter {
        Filter::Stale => stale(pool, ctx),
        Filter::NodeDown => match &pool.node {
            Some(n) if ctx.down_nodes.contains(n) => Err(why(v, || format!("node {n} is down"))),
            _ => Ok(()),
        },
        Filter::Backend => constraint(v, "backend", request.backend.as_deref(), Some(&pool.backend)),
        Filter::Driver => constraint(v, "driver", request.driver.as_deref(), Some(&pool.driver)),
        Filter::PoolName => match request.pool.as_deref() {
            Some(want) if want != pool.name && want != pool.id() => Err(why(v, || {
                format!("pool {} is not the requested pool {want}", pool.id())
            })),
            _ => Ok(()),
        },
        Filter::Node => match (request.node.as_deref(), &pool.node) {
            (Some(want), Some(n)) if want != n => {
                Err(why(v, || format!("bound to node {n}, request needs node {want}")))
            }
            _ => Ok(()),
        },
        Filter::AvailabilityZone => constraint(
            v,
            "availability zone",
            request.availability_zone.as_deref(),
            pool.availability_zone.as_ref(),
        ),
        Filter::Capacity => capacity(pool, request, v),
        Filter::Capabilities => capabilities(pool, &request.specs, v),
    }
}

/// The reason text, formatted only when `verbose`.
fn why(verbose: bool, text: impl FnOnce() -> String) -> String {
    if verbose { text() } else { String::new() }
}

fn constraint(v: bool, what: &str, want: Option<&str>, have: Option<&String>) -> Result<(), String> {
    match (want, have) {
        (Some(w), Some(h)) if w == h => Ok(()),
        (Some(w), Some(h)) if !h.is_empty() => Err(why(v, || format!("{what} is {h}, request needs {w}"))),
        (Some(w), _) => Err(why(v, || format!("{what} unknown, request needs {w}"))),
        (None, _) => Ok(()),
    }
}

fn stale(pool: &PoolState, ctx: &FilterContext<'_>) -> Result<(), String> {
    let Some(max) = ctx.max_pool_age else {
        return Ok(());
    };
    let Some(at) = pool.updated_at else {
        return Err(why(ctx.verbose, || "never reported".into()));
    };
    // A report from the future (clock skew) counts as fresh.
    let age = ctx.now.duration_since(at).unwrap_or_default();
    if age > max {
        return Err(why(ctx.verbose, || {
            format!("last report {:.0}s ago (max {}s)", age.as_secs_f64(), max.as_secs())
        }));
    }
    Ok(())
}

fn gb(v: f64) -> String {
    format!("{v} GB")
}

/// Cinder's CapacityFilter (`cinder/scheduler/filters/capacity_filter.py`), branch for branch.
pub fn capacity(pool: &PoolState, request: &Request, v: bool) -> Result<(), String> {
    let size = request.size_gb;
    if size == 0.0 {
        return Ok(());
    }
    let total = match (pool.free_capacity_gb, pool.total_capacity_gb) {
        (Capacity::Infinite | Capacity::Unknown, _) => return Ok(()),
        (_, t @ (Capacity::Infinite | Capacity::Unknown)) => {
            if pool.reserved_percentage / 100.0 == 0.0 {
                return Ok(());
            }
            return Err(why(v, || {
                format!(
                    "cannot reserve {}% of a total capacity that is {t}",
                    pool.reserved_percentage
                )
            }));
        }
        (_, Capacity::Gb(t)) => t,
    };
    if total <= 0.0 {
        return Err(why(v, || format!("total capacity is {}", gb(total))));
    }
    let thin = request.wants_thin();
    let f = pool.capacity_factors(thin).expect("numeric total and free");
    let mosr = pool.effective_max_over_subscription_ratio();
    if thin && pool.thin_provisioning_support {
        if mosr < 1.0 {
            return Err(why(v, || {
                format!("invalid max_over_subscription_ratio {mosr} (must be at least 1.0)")
            }));
        }
        if f.total_available_capacity == 0.0 {
            // Cinder divides by zero here (ZeroDivisionError); nothing is available anyway.
            return Err(why(v, || "no capacity left after the reserved share".into()));
        }
        let provisioned_ratio = (pool.provisioned_capacity_gb + size) / f.total_available_capacity;
        if provisioned_ratio > mosr {
            return Err(why(v, || {
                format!(
                    "thin: provisioned {} + requested {} over available {} is a ratio of {:.2}, above max_over_subscription_ratio {}",
                    gb(pool.provisioned_capacity_gb),
                    gb(size),
                    gb(f.total_available_capacity),
                    provisioned_ratio,
                    mosr
                )
            }));
        }
        if f.virtual_free_capacity < size {
            return Err(why(v, || {
                format!(
                    "thin: requested {}, virtual free {} (total {} minus reserved {} times ratio {} minus provisioned {})",
                    gb(size),
                    gb(f.virtual_free_capacity),
                    gb(total),
                    gb(f.reserved_capacity),
                    mosr,
                    gb(pool.provisioned_capacity_gb)
                )
            }));
        }
        return Ok(());
    }
    if f.virtual_free_capacity < size {
        return Err(why(v, || {
            format!(
                "{}: requested {}, free {} (reported free {}, total {} minus reserved {} minus provisioned {})",
                if thin { "thick pool" } else { "thick request" },
                gb(size),
                gb(f.virtual_free_capacity),
                pool.free_capacity_gb,
                gb(total),
                gb(f.reserved_capacity),
                gb(pool.provisioned_capacity_gb)
            )
        }));
    }
    Ok(())
}

/// Cinder's CapabilitiesFilter (`cinder/scheduler/filters/capabilities_filter.py`): keys scoped with anything
/// but `capabilities:` are ignored (e.g. `provisioning:type`, `qos:…`); `capabilities:a:b` looks up `b` inside
/// the map capability `a`; a list capability matches when any element does.
pub fn capabilities(pool: &PoolState, specs: &[Spec], v: bool) -> Result<(), String> {
    for spec in specs {
        // Keys scoped other than `capabilities:` (vendor specs, `provisioning:type`, `qos:`...) are not ours.
        let Some(path) = spec.capability_path() else {
            continue;
        };
        let mut cap: Cow<'_, Value> = match path.first() {
            None => Cow::Owned(all_capabilities(pool)),
            Some(first) => {
                match pool.capability_in(
                    first,
                    spec.capability_id().expect("id of a path"),
                    spec.capability_is_figure(),
                ) {
                    Some(found) => found,
                    None => {
                        return Err(why(v, || format!("no capability `{first}` (spec `{}`)", spec.key)));
                    }
                }
            }
        };
        for part in path.iter().skip(1) {
            let next = match cap.as_ref() {
                Value::Object(m) => m.get(part.as_str()).cloned(),
                _ => None,
            };
            match next {
                Some(found) => cap = Cow::Owned(found),
                None => {
                    return Err(why(v, || format!("no capability `{part}` (spec `{}`)", spec.key)));
                }
            }
        }
        let matched = match cap.as_ref() {
            Value::Array(items) => items.iter().any(|item| spec.expr.matches(item)),
            single => spec.expr.matches(single),
        };
        if !matched {
            return Err(why(v, || {
                format!("`{}` is {}, which does not satisfy `{}`", spec.key, cap, spec.value)
            }));
        }
    }
    Ok(())
}

/// The whole capability map, as Cinder's `capabilities` dict (for the bare key `capabilities`).
fn all_capabilities(pool: &PoolState) -> Value {
    let Value::Object(mut m) = pool.capabilities.to_json() else {
        unreachable!("to_json gives an object")
    };
    m.extend(pool.reported_figures.iter().map(|(k, v)| (k.to_string(), v.clone())));
    for k in ["pool_name", "volume_backend_name"] {
        if let Some(v) = pool.capability(k) {
            m.entry(k.to_string()).or_insert_with(|| v.into_owned());
        }
    }
    Value::Object(m)
}
