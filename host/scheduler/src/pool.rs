//! Pools in Cinder's vocabulary (`cinder/scheduler/host_manager.py` `PoolState`), the capacity arithmetic of
//! `cinder/scheduler/sched_utils.py`, loading from Cinder's JSON capability vocabulary, conversion from the byte
//! figures a driver reports through the WIT contract, and in-memory consumption after a placement.
//!
//! Units: `*_gb` figures are GiB, as Cinder's (drivers divide bytes by 2^30).
//!
//! Pool identity ([`PoolState::id`]): `backend#name` when the pool has a backend, else `name` — so pools loaded
//! from a Cinder `pools.json` (which has only `pool_name`) are called by their pool names, and a Cinder
//! `get_pools` dump (`name: "host@backend#pool"`) by its Cinder names.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;
use std::time::SystemTime;

use serde_json::{Map, Number, Value};
use thiserror::Error;

use crate::capabilities::{Capabilities, KeyId, key_id};
use crate::compat::{py_float, py_round2};

/// GiB in bytes: Cinder's "GB".
pub const GIB: f64 = (1u64 << 30) as f64;

/// Cinder's `max_over_subscription_ratio` option default (used when a pool reports none, or 0).
pub const DEFAULT_MAX_OVER_SUBSCRIPTION_RATIO: f64 = 20.0;

/// `sched_utils.INITIAL_AUTO_MOSR`: the `auto` ratio while nothing is provisioned.
pub const INITIAL_AUTO_MAX_OVER_SUBSCRIPTION_RATIO: f64 = 20.0;

/// A capacity figure: a number of GiB, or one of Cinder's strings `infinite` / `unknown`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Capacity {
    Gb(f64),
    Infinite,
    Unknown,
}

impl Capacity {
    pub fn gb(self) -> Option<f64> {
        match self {
            Capacity::Gb(g) => Some(g),
            _ => None,
        }
    }

    fn to_json(self) -> Value {
        match self {
            Capacity::Gb(g) => number(g),
            Capacity::Infinite => Value::String("infinite".into()),
            Capacity::Unknown => Value::String("unknown".into()),
        }
    }
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capacity::Gb(g) => write!(f, "{g} GB"),
            Capacity::Infinite => f.write_str("infinite"),
            Capacity::Unknown => f.write_str("unknown"),
        }
    }
}

/// `max_over_subscription_ratio` as reported: a number or `auto`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OverSubscription {
    Value(f64),
    /// Cinder computes `1 + provisioned / (total - free + 1)` (20 while nothing is provisioned).
    Auto,
}

impl OverSubscription {
    /// Parses the WIT/Cinder text form: `"auto"`, a number (`"20.0"`), or empty for Cinder's default (20.0).
    /// A reported 0 also means the default, as Cinder's `capability.get(...) or CONF...` does.
    pub fn parse(text: &str) -> Result<Self, PoolError> {
        let t = text.trim();
        if t.is_empty() {
            return Ok(OverSubscription::Value(DEFAULT_MAX_OVER_SUBSCRIPTION_RATIO));
        }
        if t == "auto" {
            return Ok(OverSubscription::Auto);
        }
        match py_float(t) {
            Some(v) if v.is_finite() => Ok(Self::from_number(v)),
            _ => Err(PoolError::field(
                "max_over_subscription_ratio",
                format!("`{text}` is neither a number nor `auto`"),
            )),
        }
    }

    fn to_json(self) -> Value {
        match self {
            OverSubscription::Value(v) => number(v),
            OverSubscription::Auto => Value::String("auto".into()),
        }
    }

    fn from_number(v: f64) -> Self {
        OverSubscription::Value(if v == 0.0 {
            DEFAULT_MAX_OVER_SUBSCRIPTION_RATIO
        } else {
            v
        })
    }
}

/// A pool the scheduler can place volumes in.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolState {
    /// Pool name, unique within its backend (Cinder's `pool_name`).
    pub name: String,
    /// The backend (driver instance) reporting the pool; empty when unknown (offline files).
    pub backend: String,
    /// Driver name (`local`, `nfs`, `cinder`, `s3`…); empty when unknown.
    pub driver: String,
    /// The node the pool is bound to; `None` for a pool every node can use.
    pub node: Option<String>,
    pub availability_zone: Option<String>,
    pub total_capacity_gb: Capacity,
    pub free_capacity_gb: Capacity,
    /// Sum of the volumes Elara placed here (Cinder's `allocated_capacity_gb`).
    pub allocated_capacity_gb: f64,
    /// Sum of the volumes provisioned in the pool (defaults to allocated, as in Cinder).
    pub provisioned_capacity_gb: f64,
    /// 0-100; may be fractional as in Cinder.
    pub reserved_percentage: f64,
    pub thin_provisioning_support: bool,
    pub thick_provisioning_support: bool,
    pub max_over_subscription_ratio: OverSubscription,
    /// Every other capability the pool reported (`iops`, `tier`, `volume_backend_name`…), matched by the
    /// capabilities filter.
    pub capabilities: Capabilities,
    /// The figures as the pool reported them, under their Cinder names ([`FIGURE_KEYS`]: `pool_name`,
    /// `total_capacity_gb`…). A spec naming a figure is matched against these, as Cinder matches it against the
    /// report: [`PoolState::consume`] changes the fields above, not these, and a figure the pool did not report
    /// is absent. (Kept apart from `capabilities`, and boxed, so that the common lookups scan a short map and the
    /// pools of a placement stay small in memory.)
    pub reported_figures: Box<Capabilities>,
    /// When the driver last reported the pool; `None` = never (offline files).
    pub updated_at: Option<SystemTime>,
}

/// A pool that cannot be built from its report.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PoolError {
    #[error("pool {pool}: field `{field}`: {reason}")]
    Field {
        pool: String,
        field: String,
        reason: String,
    },
    #[error("pools JSON: {0}")]
    Json(String),
}

impl PoolError {
    fn field(field: &str, reason: impl Into<String>) -> Self {
        PoolError::Field {
            pool: String::new(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn in_pool(self, pool: &str) -> Self {
        match self {
            PoolError::Field { field, reason, .. } => PoolError::Field {
                pool: pool.into(),
                field,
                reason,
            },
            other => other,
        }
    }
}

/// A capacity figure as the WIT `capacity` variant carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteCapacity {
    Bytes(u64),
    Infinite,
    Unknown,
}

impl From<ByteCapacity> for Capacity {
    fn from(b: ByteCapacity) -> Self {
        match b {
            ByteCapacity::Bytes(n) => Capacity::Gb(n as f64 / GIB),
            ByteCapacity::Infinite => Capacity::Infinite,
            ByteCapacity::Unknown => Capacity::Unknown,
        }
    }
}

/// A driver's pool report in bytes (the WIT `pool` record) plus what the daemon knows about it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolReport {
    pub name: String,
    pub backend: String,
    pub driver: String,
    pub node: Option<String>,
    pub availability_zone: Option<String>,
    pub total: ByteCapacity,
    pub free: ByteCapacity,
    pub provisioned_bytes: u64,
    /// Bytes of the volumes Elara placed in this pool (from its store); Cinder's `allocated_capacity_gb`.
    pub allocated_bytes: u64,
    pub reserved_percentage: u8,
    pub thin_provisioning: bool,
    pub thick_provisioning: bool,
    /// `"auto"`, a number as text, or empty (Cinder's default 20.0).
    pub max_over_subscription_ratio: String,
    pub capabilities: Vec<(String, String)>,
    pub updated_at: SystemTime,
}

/// The figures a pool reports under their Cinder names ([`PoolState::reported_figures`]).
pub const FIGURE_KEYS: [&str; 9] = [
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

/// Whether `key` belongs to Cinder's pool vocabulary (`name` or one of [`FIGURE_KEYS`]) rather
/// than being a free capability.
fn is_standard_key(key: &str) -> bool {
    key == "name" || FIGURE_KEYS.contains(&key)
}

/// Whether the key whose id is `id` is one of [`FIGURE_KEYS`].
pub(crate) fn is_figure(id: KeyId) -> bool {
    static IDS: OnceLock<[KeyId; 9]> = OnceLock::new();
    IDS.get_or_init(|| FIGURE_KEYS.map(key_id)).contains(&id)
}

fn number(v: f64) -> Value {
    Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null)
}

impl PoolState {
    /// A pool with the given name and capacities and Cinder's defaults for everything else.
    pub fn new(name: impl Into<String>, total: Capacity, free: Capacity) -> Self {
        PoolState {
            name: name.into(),
            backend: String::new(),
            driver: String::new(),
            node: None,
            availability_zone: None,
            total_capacity_gb: total,
            free_capacity_gb: free,
            allocated_capacity_gb: 0.0,
            provisioned_capacity_gb: 0.0,
            reserved_percentage: 0.0,
            thin_provisioning_support: false,
            thick_provisioning_support: false,
            max_over_subscription_ratio: OverSubscription::Value(DEFAULT_MAX_OVER_SUBSCRIPTION_RATIO),
            capabilities: Capabilities::new(),
            reported_figures: Box::default(),
            updated_at: None,
        }
    }

    /// The pool's identity: `backend#name`, or `name` when it has no backend.
    pub fn id(&self) -> String {
        if self.backend.is_empty() {
            self.name.clone()
        } else {
            format!("{}#{}", self.backend, self.name)
        }
    }

    /// Builds a pool from a driver's byte-based report (the WIT `pool` record).
    pub fn from_report(report: PoolReport) -> Result<Self, PoolError> {
        let name = report.name.clone();
        let result = (|| {
            if report.name.is_empty() {
                return Err(PoolError::field("name", "must not be empty"));
            }
            if report.reserved_percentage > 100 {
                return Err(PoolError::field("reserved-percentage", "must be 0-100"));
            }
            let mut capabilities = Capabilities::new();
            for (k, v) in report.capabilities {
                if is_standard_key(&k) {
                    return Err(PoolError::field(&k, "is a pool figure, not a free capability"));
                }
                capabilities.insert(k, Value::String(v));
            }
            let mosr = OverSubscription::parse(&report.max_over_subscription_ratio)?;
            // The figures, under their Cinder names, as a Cinder driver's pool report carries them.
            let total: Capacity = report.total.into();
            let free: Capacity = report.free.into();
            let figures = [
                ("pool_name", Value::String(report.name.clone())),
                ("total_capacity_gb", total.to_json()),
                ("free_capacity_gb", free.to_json()),
                ("allocated_capacity_gb", number(report.allocated_bytes as f64 / GIB)),
                ("provisioned_capacity_gb", number(report.provisioned_bytes as f64 / GIB)),
                ("reserved_percentage", Value::from(report.reserved_percentage)),
                ("thin_provisioning_support", Value::Bool(report.thin_provisioning)),
                ("thick_provisioning_support", Value::Bool(report.thick_provisioning)),
                ("max_over_subscription_ratio", mosr.to_json()),
            ];
            let reported_figures: Box<Capabilities> = Box::new(figures.into_iter().collect());
            if !report.backend.is_empty() {
                // Cinder's `_append_backend_info`: a pool without its own backend name gets its backend's.
                capabilities.insert_if_absent("volume_backend_name", || Value::String(report.backend.clone()));
            }
            Ok(PoolState {
                name: report.name,
                backend: report.backend,
                driver: report.driver,
                node: report.node,
                availability_zone: report.availability_zone,
                total_capacity_gb: total,
                free_capacity_gb: free,
                allocated_capacity_gb: report.allocated_bytes as f64 / GIB,
                provisioned_capacity_gb: report.provisioned_bytes as f64 / GIB,
                reserved_percentage: report.reserved_percentage as f64,
                thin_provisioning_support: report.thin_provisioning,
                thick_provisioning_support: report.thick_provisioning,
                max_over_subscription_ratio: mosr,
                capabilities,
                reported_figures,
                updated_at: Some(report.updated_at),
            })
        })();
        result.map_err(|e| e.in_pool(&name))
    }

    /// Builds a pool from one object of Cinder's capability vocabulary: `name` or `pool_name`,
    /// `total_capacity_gb`, `free_capacity_gb` (numbers or `"infinite"`/`"unknown"`), `allocated_capacity_gb`,
    /// `provisioned_capacity_gb` (defaults to allocated), `reserved_percentage`, `thin_provisioning_support`,
    /// `thick_provisioning_support`, `max_over_subscription_ratio` (number, numeric text or `"auto"`); Elara's
    /// `backend`, `driver`, `node`, `availability_zone`. Every key but `name` is also a capability (figures
    /// included, as Cinder's capability dict holds them), and `pool_name` is added when absent. A Cinder
    /// `get_pools` entry (`{"name": ..., "capabilities": {...}}`) is accepted too. Missing figures take Cinder's
    /// defaults.
    pub fn from_cinder_json(object: &Map<String, Value>) -> Result<Self, PoolError> {
        // `get_pools?detail=true` shape: figures nested under "capabilities".
        if let (Some(Value::String(name)), Some(Value::Object(caps))) = (object.get("name"), object.get("capabilities"))
        {
            let mut flat = caps.clone();
            flat.insert("name".into(), Value::String(name.clone()));
            return Self::from_cinder_json(&flat);
        }
        let name = match object.get("name").or_else(|| object.get("pool_name")) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) => {
                return Err(PoolError::field(
                    "name",
                    format!("must be a non-empty string, got {other}"),
                ));
            }
            None => return Err(PoolError::field("name", "missing (`name` or `pool_name`)")),
        };
        Self::from_cinder_fields(&name, object).map_err(|e| e.in_pool(&name))
    }

    fn from_cinder_fields(name: &str, o: &Map<String, Value>) -> Result<Self, PoolError> {
        let capacity = |key: &str| -> Result<Capacity, PoolError> {
            match o.get(key) {
                None => Ok(Capacity::Gb(0.0)),
                Some(Value::Number(n)) => Ok(Capacity::Gb(n.as_f64().unwrap_or(f64::NAN))),
                Some(Value::String(s)) if s == "infinite" => Ok(Capacity::Infinite),
                Some(Value::String(s)) if s == "unknown" => Ok(Capacity::Unknown),
                Some(other) => Err(PoolError::field(
                    key,
                    format!("must be a number, \"infinite\" or \"unknown\", got {other}"),
                )),
            }
        };
        let figure = |key: &str, default: f64| -> Result<f64, PoolError> {
            match o.get(key) {
                None => Ok(default),
                Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(f64::NAN)),
                Some(other) => Err(PoolError::field(key, format!("must be a number, got {other}"))),
            }
        };
        let flag = |key: &str| -> Result<bool, PoolError> {
            match o.get(key) {
                None => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(PoolError::field(key, format!("must be true or false, got {other}"))),
            }
        };
        let text = |key: &str| -> Result<Option<String>, PoolError> {
            match o.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(PoolError::field(key, format!("must be a string, got {other}"))),
            }
        };
        let allocated = figure("allocated_capacity_gb", 0.0)?;
        let mosr = match o.get("max_over_subscription_ratio") {
            None | Some(Value::Null) => OverSubscription::Value(DEFAULT_MAX_OVER_SUBSCRIPTION_RATIO),
            Some(Value::Number(n)) => OverSubscription::from_number(n.as_f64().unwrap_or(f64::NAN)),
            Some(Value::String(s)) => OverSubscription::parse(s)?,
            Some(other) => {
                return Err(PoolError::field(
                    "max_over_subscription_ratio",
                    format!("must be a number or \"auto\", got {other}"),
                ));
            }
        };
        let reserved = figure("reserved_percentage", 0.0)?;
        if !(0.0..=100.0).contains(&reserved) {
            return Err(PoolError::field(
                "reserved_percentage",
                format!("must be 0-100, got {reserved}"),
            ));
        }
        let capabilities: Capabilities = o
            .iter()
            .filter(|(k, _)| !is_standard_key(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut reported_figures: Box<Capabilities> = Box::new(
            o.iter()
                .filter(|(k, _)| FIGURE_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        reported_figures.insert_if_absent("pool_name", || Value::String(name.to_string()));
        Ok(PoolState {
            name: name.to_string(),
            backend: text("backend")?.unwrap_or_default(),
            driver: text("driver")?.unwrap_or_default(),
            node: text("node")?,
            availability_zone: text("availability_zone")?,
            total_capacity_gb: capacity("total_capacity_gb")?,
            free_capacity_gb: capacity("free_capacity_gb")?,
            allocated_capacity_gb: allocated,
            provisioned_capacity_gb: figure("provisioned_capacity_gb", allocated)?,
            reserved_percentage: reserved,
            thin_provisioning_support: flag("thin_provisioning_support")?,
            thick_provisioning_support: flag("thick_provisioning_support")?,
            max_over_subscription_ratio: mosr,
            capabilities,
            reported_figures,
            updated_at: None,
        })
    }

    /// The ratio Cinder's `PoolState` holds (`sched_utils.calculate_max_over_subscription_ratio`): 1.0 without
    /// thin provisioning or with an infinite/unknown figure; `auto` resolved from the current figures.
    pub fn effective_max_over_subscription_ratio(&self) -> f64 {
        if !self.thin_provisioning_support {
            return 1.0;
        }
        let (Capacity::Gb(total), Capacity::Gb(free)) = (self.total_capacity_gb, self.free_capacity_gb) else {
            return 1.0;
        };
        match self.max_over_subscription_ratio {
            OverSubscription::Value(v) => v,
            OverSubscription::Auto => {
                if self.provisioned_capacity_gb != 0.0 {
                    let used_plus_one = total - free + 1.0;
                    if used_plus_one == 0.0 {
                        // Cinder raises ZeroDivisionError here; Elara keeps the initial ratio.
                        INITIAL_AUTO_MAX_OVER_SUBSCRIPTION_RATIO
                    } else {
                        1.0 + self.provisioned_capacity_gb / used_plus_one
                    }
                } else {
                    INITIAL_AUTO_MAX_OVER_SUBSCRIPTION_RATIO
                }
            }
        }
    }

    /// Capacity factors (`sched_utils.calculate_capacity_factors`) when total and free are numbers.
    /// `thin` is false when the request asks `provisioning:type=thick`.
    pub fn capacity_factors(&self, thin: bool) -> Option<CapacityFactors> {
        let (Capacity::Gb(total), Capacity::Gb(free)) = (self.total_capacity_gb, self.free_capacity_gb) else {
            return None;
        };
        Some(capacity_factors(
            total,
            free,
            self.provisioned_capacity_gb,
            self.thin_provisioning_support,
            self.effective_max_over_subscription_ratio(),
            self.reserved_percentage,
            thin,
        ))
    }

    /// A capability as Cinder's `backend_state.capabilities[key]` would give it: the reported
    /// [`capabilities`](PoolState::capabilities) or [`reported_figures`](PoolState::reported_figures); failing
    /// that `pool_name` (the pool's name) and `volume_backend_name` (its backend, when it has one), which Cinder
    /// always fills in.
    pub fn capability(&self, key: &str) -> Option<Cow<'_, Value>> {
        self.capability_by_id(key, key_id(key))
    }

    /// [`PoolState::capability`] with the key's id ([`key_id`]) looked up by the caller (once per request).
    pub fn capability_by_id(&self, key: &str, id: KeyId) -> Option<Cow<'_, Value>> {
        self.capability_in(key, id, is_figure(id))
    }

    /// [`PoolState::capability_by_id`] with `figure` = [`is_figure`]`(id)` known by the caller.
    pub(crate) fn capability_in(&self, key: &str, id: KeyId, figure: bool) -> Option<Cow<'_, Value>> {
        let map = if figure {
            &self.reported_figures
        } else {
            &self.capabilities
        };
        if let Some(v) = map.get_by_id(id) {
            return Some(Cow::Borrowed(v));
        }
        let v = match key {
            "pool_name" => Value::String(self.name.clone()),
            "volume_backend_name" if !self.backend.is_empty() => Value::String(self.backend.clone()),
            _ => return None,
        };
        Some(Cow::Owned(v))
    }

    /// Takes a placed volume into account until the next report, as Cinder's `consume_from_volume`: allocated
    /// and provisioned grow, a numeric free shrinks. An `auto` ratio is first frozen at its current value, as
    /// Cinder computes it once per report. `updated_at` is left alone (it says when the driver last reported).
    pub fn consume(&mut self, size_gb: f64) {
        if self.max_over_subscription_ratio == OverSubscription::Auto && self.thin_provisioning_support {
            self.max_over_subscription_ratio = OverSubscription::Value(self.effective_max_over_subscription_ratio());
        }
        self.allocated_capacity_gb += size_gb;
        self.provisioned_capacity_gb += size_gb;
        if let Capacity::Gb(free) = self.free_capacity_gb {
            self.free_capacity_gb = Capacity::Gb(free - size_gb);
        }
    }
}

/// Free function form of [`PoolState::consume`].
pub fn consume(pool: &mut PoolState, size_gb: f64) {
    pool.consume(size_gb);
}

/// The figures of `sched_utils.calculate_capacity_factors` (rounded to 2 places where Cinder rounds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapacityFactors {
    /// `floor(total * reserved_percentage / 100)`.
    pub reserved_capacity: f64,
    /// Total minus reserved, times the ratio for thin requests on thin pools.
    pub total_available_capacity: f64,
    /// What the capacity filter and weigher use.
    pub virtual_free_capacity: f64,
    /// Whether the thin formula applied.
    pub thin: bool,
}

/// `sched_utils.calculate_capacity_factors`.
pub fn capacity_factors(
    total: f64,
    free: f64,
    provisioned: f64,
    thin_provisioning_support: bool,
    max_over_subscription_ratio: f64,
    reserved_percentage: f64,
    thin: bool,
) -> CapacityFactors {
    let reserved_capacity = if reserved_percentage == 0.0 {
        0.0 // floor(total * 0), without the libm call
    } else {
        (total * (reserved_percentage / 100.0)).floor()
    };
    let total_reserved_available = total - reserved_capacity;
    let thin_math = thin && thin_provisioning_support;
    let (total_available, virtual_free) = if thin_math {
        let total_available = total_reserved_available * max_over_subscription_ratio;
        (total_available, total_available - provisioned)
    } else {
        let calculated = total_reserved_available - provisioned;
        (
            total_reserved_available,
            if free < calculated { free } else { calculated },
        )
    };
    CapacityFactors {
        reserved_capacity,
        total_available_capacity: py_round2(total_available),
        virtual_free_capacity: py_round2(virtual_free),
        thin: thin_math,
    }
}

/// Loads pools from JSON: an array of pool objects, or an object with a `pools` array (Cinder's `get_pools`
/// answer). See [`PoolState::from_cinder_json`] for the keys.
pub fn load_pools_json(text: &str) -> Result<Vec<PoolState>, PoolError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| PoolError::Json(e.to_string()))?;
    let list = match &doc {
        Value::Array(a) => a,
        Value::Object(o) => match o.get("pools") {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(PoolError::Json(
                    "expected an array of pools or an object with a `pools` array".into(),
                ));
            }
        },
        _ => {
            return Err(PoolError::Json(
                "expected an array of pools or an object with a `pools` array".into(),
            ));
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Object(o) => PoolState::from_cinder_json(o),
            other => Err(PoolError::Json(format!("pool #{i} is not an object: {other}"))),
        })
        .collect()
}
