//! Cinder's pools as Elara pools, and how a create lands in the pool Elara's scheduler chose.
//!
//! - With Cinder's pools (`scheduler-stats/get_pools?detail=true`, an admin API), each Cinder
//!   pool `host@backend#pool` is one Elara pool of that name. Its capacity figures map to the
//!   pool record's fields; every other capability keeps Cinder's name and Python's spelling of the
//!   value (`True`, `2.0`, `iSCSI`), so Elara's filters read the same vocabulary as Cinder's
//!   extra specs. A create in such a pool uses a private volume type that pins it there
//!   (`volume_backend_name` and `pool_name` extra specs, plus those of the configured
//!   `volume_type`), made on first use.
//! - Without admin rights (or with `pools=types`), each volume type is one pool of unknown
//!   capacity, named after the type; Cinder's own scheduler places the volume within the type,
//!   and says so when it cannot ("No valid backend").

use std::collections::BTreeMap;

use elara_driver_sdk::prelude::*;
use elara_driver_sdk::{info, warn};
use serde_json::{Value, json};

use crate::api::{Api, Doing};
use crate::settings::PoolSource;

const GIB: f64 = (1u64 << 30) as f64;

/// Where a volume of an Elara pool goes in Cinder.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A Cinder pool, reached through a private pinning type.
    Pool {
        name: String,
        volume_backend_name: String,
        pool_name: String,
    },
    /// A volume type; Cinder's scheduler picks the pool.
    Type(String),
}

/// Keys the pool record carries as figures (Elara's scheduler rebuilds them under these names
/// from the record and refuses them as free capabilities).
const FIGURES: &[&str] = &[
    "name",
    "pool_name",
    "total_capacity_gb",
    "free_capacity_gb",
    "allocated_capacity_gb",
    "provisioned_capacity_gb",
    "reserved_percentage",
    "thin_provisioning_support",
    "thick_provisioning_support",
    "max_over_subscription_ratio",
];

/// A capacity figure in GiB (`100`, `12.5`, `"infinite"`, `"unknown"`).
pub fn capacity(v: Option<&Value>) -> Capacity {
    match v {
        Some(Value::Number(n)) => n
            .as_f64()
            .map_or(Capacity::Unknown, |gb| Capacity::Bytes((gb.max(0.0) * GIB) as u64)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("infinite") => Capacity::Infinite,
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .map_or(Capacity::Unknown, |gb| Capacity::Bytes((gb.max(0.0) * GIB) as u64)),
        _ => Capacity::Unknown,
    }
}

fn gib_to_bytes(v: Option<&Value>) -> u64 {
    match capacity(v) {
        Capacity::Bytes(b) => b,
        _ => 0,
    }
}

/// A JSON value as Cinder's Python would print it in a capability (`True`, `2.0`, `iSCSI`).
pub fn python_str(v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.1}"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn truthy(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => Some(matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "1" | "yes" | "<is> true"
        )),
        Value::Number(n) => Some(n.as_f64().is_some_and(|f| f != 0.0)),
        _ => None,
    }
}

/// One entry of `get_pools?detail=true` as an Elara pool.
pub fn pool_from_cinder(name: &str, caps: &serde_json::Map<String, Value>) -> Pool {
    let thin = truthy(caps.get("thin_provisioning_support")).unwrap_or(false);
    // Cinder: a pool that claims neither is thick.
    let thick = truthy(caps.get("thick_provisioning_support")).unwrap_or(!thin) || !thin;
    let ratio = match caps.get("max_over_subscription_ratio") {
        Some(Value::String(s)) if s.trim() == "auto" => "auto".to_string(),
        Some(v) => match python_str(v).and_then(|s| s.parse::<f64>().ok()) {
            Some(r) if r.is_finite() && r >= 1.0 => format!("{r:.1}"),
            _ => "1.0".to_string(),
        },
        None => "20.0".to_string(), // Cinder's default max_over_subscription_ratio
    };
    let provisioned = caps
        .get("provisioned_capacity_gb")
        .or_else(|| caps.get("allocated_capacity_gb"));
    let reserved = caps
        .get("reserved_percentage")
        .and_then(|v| python_str(v)?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let mut capabilities: Vec<(String, String)> = caps
        .iter()
        .filter(|(k, _)| k.as_str() != "timestamp" && !FIGURES.contains(&k.as_str()))
        .filter_map(|(k, v)| python_str(v).map(|s| (k.clone(), s)))
        .collect();
    capabilities.push(("cinder_pool".into(), name.to_string()));
    if let Some(short) = caps.get("pool_name").and_then(python_str) {
        capabilities.push(("cinder_pool_name".into(), short));
    }
    capabilities.sort();
    Pool {
        name: name.to_string(),
        total: capacity(caps.get("total_capacity_gb")),
        free: capacity(caps.get("free_capacity_gb")),
        provisioned_bytes: gib_to_bytes(provisioned),
        reserved_percentage: reserved.clamp(0.0, 100.0) as u8,
        thin_provisioning: thin,
        thick_provisioning: thick,
        max_over_subscription_ratio: ratio,
        capabilities,
    }
}

/// A volume type as a pool of unknown capacity (Cinder's scheduler decides inside it).
pub fn pool_from_type(name: &str, extra_specs: &serde_json::Map<String, Value>) -> Pool {
    let mut capabilities: Vec<(String, String)> = extra_specs
        .iter()
        .filter(|(k, _)| !FIGURES.contains(&k.as_str()))
        .filter_map(|(k, v)| python_str(v).map(|s| (k.clone(), s)))
        .collect();
    capabilities.push(("volume_type".into(), name.to_string()));
    capabilities.sort();
    Pool {
        name: name.to_string(),
        total: Capacity::Unknown,
        free: Capacity::Unknown,
        provisioned_bytes: 0,
        reserved_percentage: 0,
        thin_provisioning: true,
        thick_provisioning: true,
        max_over_subscription_ratio: "20.0".into(),
        capabilities,
    }
}

/// The pools `pools()` reports, and for each where its volumes go.
pub fn list(api: &Api) -> DriverResult<Vec<(Pool, Target)>> {
    let s = &api.settings;
    if s.pools != PoolSource::Types {
        match cinder_pools(api) {
            Ok(p) => return Ok(p),
            Err(e) if s.pools == PoolSource::Auto && is_forbidden(&e) => {
                warn!(
                    "these credentials may not list Cinder's pools ({}); reporting one pool per volume type",
                    e.message()
                );
            }
            Err(e) => return Err(e),
        }
    }
    type_pools(api)
}

fn is_forbidden(e: &DriverError) -> bool {
    matches!(e, DriverError::Backend(m) if m.contains("HTTP 403"))
}

/// The extra specs of a volume type, by name (admin sees private types too).
pub fn type_specs(api: &Api, name: &str) -> DriverResult<Option<serde_json::Map<String, Value>>> {
    Ok(all_types(api)?.into_iter().find(|t| t.name == name).map(|t| t.specs))
}

/// A volume type: its name and extra specs.
struct VolumeType {
    name: String,
    specs: serde_json::Map<String, Value>,
}

/// Every volume type the credentials see.
fn all_types(api: &Api) -> DriverResult<Vec<VolumeType>> {
    let doing = Doing {
        what: "listing volume types",
        field: "volume_type",
    };
    let v = api.call("GET", "/types?is_public=None", None, None, doing)?;
    let mut out = Vec::new();
    for t in v.get("volume_types").and_then(Value::as_array).into_iter().flatten() {
        let name = t.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        let specs = t
            .get("extra_specs")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        out.push(VolumeType { name, specs });
    }
    Ok(out)
}

fn cinder_pools(api: &Api) -> DriverResult<Vec<(Pool, Target)>> {
    let doing = Doing {
        what: "listing Cinder's pools",
        field: "pools",
    };
    let v = api.call("GET", "/scheduler-stats/get_pools?detail=true", None, None, doing)?;
    // With a configured type, only the pools of its backend (its `volume_backend_name` spec).
    let wanted_backend = match &api.settings.volume_type {
        Some(t) => {
            let specs = type_specs(api, t)?
                .ok_or_else(|| DriverError::invalid("volume_type", format!("Cinder has no volume type named {t:?}")))?;
            specs.get("volume_backend_name").and_then(python_str)
        }
        None => None,
    };
    let mut out = Vec::new();
    for p in v.get("pools").and_then(Value::as_array).into_iter().flatten() {
        let Some(name) = p.get("name").and_then(Value::as_str) else {
            continue;
        };
        let caps = p
            .get("capabilities")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let backend_name = caps.get("volume_backend_name").and_then(python_str).unwrap_or_default();
        if wanted_backend.as_ref().is_some_and(|w| *w != backend_name) {
            continue;
        }
        let pool_name = caps
            .get("pool_name")
            .and_then(python_str)
            .unwrap_or_else(|| name.rsplit_once('#').map_or(name.to_string(), |(_, p)| p.to_string()));
        let target = Target::Pool {
            name: name.to_string(),
            volume_backend_name: backend_name,
            pool_name,
        };
        out.push((pool_from_cinder(name, &caps), target));
    }
    if out.is_empty() {
        return Err(DriverError::backend(match wanted_backend {
            Some(b) => format!("Cinder reports no pool of volume_backend_name {b:?} (from volume_type)"),
            None => "Cinder reports no pool: is a cinder-volume service up?".into(),
        }));
    }
    Ok(out)
}

fn type_pools(api: &Api) -> DriverResult<Vec<(Pool, Target)>> {
    let types = all_types(api)?;
    let out: Vec<(Pool, Target)> = types
        .into_iter()
        .filter(|t| api.settings.volume_type.as_ref().is_none_or(|want| *want == t.name))
        .map(|t| (pool_from_type(&t.name, &t.specs), Target::Type(t.name)))
        .collect();
    if out.is_empty() {
        return Err(match &api.settings.volume_type {
            Some(t) => DriverError::invalid("volume_type", format!("Cinder has no volume type named {t:?}")),
            None => DriverError::backend("Cinder shows these credentials no volume type"),
        });
    }
    Ok(out)
}

/// Where a volume of the Elara pool `pool` goes; `invalid("pool")` for a pool this backend does
/// not report.
pub fn target(api: &Api, pool: &str) -> DriverResult<Target> {
    let pools = list(api)?;
    let names: Vec<&str> = pools.iter().map(|(p, _)| p.name.as_str()).collect();
    pools
        .iter()
        .find(|(p, _)| p.name == pool)
        .map(|(_, t)| t.clone())
        .ok_or_else(|| {
            DriverError::invalid(
                "pool",
                format!("unknown pool {pool:?}: this backend has {}", names.join(", ")),
            )
        })
}

/// The name of the private type that pins volumes to a Cinder pool (on top of `base`).
pub fn pin_type_name(base: Option<&str>, pool: &str) -> String {
    match base {
        Some(b) => format!("elara:{b}:{pool}"),
        None => format!("elara:{pool}"),
    }
}

/// The volume type to create a volume of `target` with: the pinning type (made on first use),
/// or the pool's own type.
pub fn volume_type_for(api: &Api, target: &Target) -> DriverResult<String> {
    let (pool, backend, pool_name) = match target {
        Target::Type(t) => return Ok(t.clone()),
        Target::Pool {
            name,
            volume_backend_name,
            pool_name,
        } => (name, volume_backend_name, pool_name),
    };
    let base = api.settings.volume_type.as_deref();
    let name = pin_type_name(base, pool);
    if type_specs(api, &name)?.is_some() {
        return Ok(name);
    }
    let mut specs: BTreeMap<String, Value> = BTreeMap::new();
    if let Some(b) = base {
        let base_specs = type_specs(api, b)?
            .ok_or_else(|| DriverError::invalid("volume_type", format!("Cinder has no volume type named {b:?}")))?;
        specs.extend(base_specs);
    }
    specs.insert("volume_backend_name".into(), Value::String(backend.clone()));
    specs.insert("pool_name".into(), Value::String(pool_name.clone()));
    let body = json!({ "volume_type": {
        "name": name,
        "description": format!("Elara: pins volumes to Cinder pool {pool} (made by Elara's cinder driver)"),
        "os-volume-type-access:is_public": false,
        "extra_specs": specs,
    }});
    let resp = api.raw("POST", "/types", Some(&body), None)?;
    // 409: another instance made it meanwhile.
    if !resp.is_success() && resp.status != 409 {
        return Err(crate::api::status_error(
            resp.status,
            &resp.text(),
            Doing {
                what: &format!("making the volume type {name} that pins volumes to pool {pool}"),
                field: "pool",
            },
        ));
    }
    info!("made private volume type {name} for pool {pool}");
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_a_cinder_pool() {
        let caps = json!({
            "pool_name": "p3", "total_capacity_gb": 200, "free_capacity_gb": 20.5, "reserved_percentage": 10,
            "provisioned_capacity_gb": 4, "thin_provisioning_support": true, "max_over_subscription_ratio": 2.0,
            "QoS_support": false, "volume_backend_name": "multi", "storage_protocol": "iSCSI",
            "timestamp": "2026-01-01T00:00:00", "filter_function": null
        });
        let p = pool_from_cinder("h@multi#p3", caps.as_object().unwrap());
        assert!(matches!(p.total, Capacity::Bytes(b) if b == 200 << 30));
        assert!(matches!(p.free, Capacity::Bytes(b) if b == (20.5 * GIB) as u64));
        assert_eq!(p.provisioned_bytes, 4 << 30);
        assert_eq!(p.reserved_percentage, 10);
        assert!(p.thin_provisioning && !p.thick_provisioning);
        assert_eq!(p.max_over_subscription_ratio, "2.0");
        let cap = |k: &str| p.capabilities.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(cap("QoS_support"), Some("False"));
        assert_eq!(cap("storage_protocol"), Some("iSCSI"));
        assert_eq!(cap("cinder_pool"), Some("h@multi#p3"));
        assert_eq!(cap("timestamp"), None);
        assert_eq!(cap("filter_function"), None);
        assert_eq!(cap("pool_name"), None);
        assert_eq!(cap("total_capacity_gb"), None);
        assert_eq!(cap("cinder_pool_name"), Some("p3"));
    }

    #[test]
    fn infinite_and_thick_defaults() {
        let caps = json!({"total_capacity_gb": "infinite", "free_capacity_gb": "unknown", "reserved_percentage": 100});
        let p = pool_from_cinder("h@fake#fake", caps.as_object().unwrap());
        assert!(matches!((p.total, p.free), (Capacity::Infinite, Capacity::Unknown)));
        assert!(p.thick_provisioning && !p.thin_provisioning);
        assert_eq!(p.max_over_subscription_ratio, "20.0");
        assert_eq!(p.reserved_percentage, 100);
    }
}
