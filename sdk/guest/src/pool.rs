//! For drivers that report one pool of their own (a filesystem, an export): the pool's
//! configuration keys (name, reserved share, over-subscription), and the checks every create and
//! resize makes against them.
//!
//! ```ignore
//! fn config_keys() -> Vec<ConfigKey> {
//!     let mut keys = vec![ConfigKey::required("server", "...")];
//!     keys.extend(pool::config_keys());
//!     keys
//! }
//! let pool = PoolSettings::parse(&cfg)?;             // in configure
//! pool.check_spec(&spec, "qos: this store cannot")?; // in create / create-from-snapshot
//! ```

use crate::config::Config;
use crate::names::check_id;
use crate::types::{ConfigKey, DriverError, VolumeSpec};

/// The keys [`PoolSettings::parse`] reads: `pool`, `reserved_percentage`,
/// `max_over_subscription_ratio`.
pub fn config_keys() -> Vec<ConfigKey> {
    vec![
        ConfigKey::optional("pool", "name of the pool this backend reports", Some("default")),
        ConfigKey::optional(
            "reserved_percentage",
            "share of the pool's space kept free for other uses, 0-100",
            Some("0"),
        ),
        ConfigKey::optional(
            "max_over_subscription_ratio",
            "how far thin volumes may over-commit the pool: a number >= 1.0, or `auto`",
            Some("20.0"),
        ),
    ]
}

/// The pool's name and the scheduler's thin-provisioning figures.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub name: String,
    pub reserved_percentage: u8,
    /// A number >= 1.0 as text, or `auto` (Cinder's vocabulary).
    pub max_over_subscription_ratio: String,
}

impl PoolSettings {
    /// Read and check the [`config_keys`] (declared by the driver, so defaults apply).
    pub fn parse(cfg: &Config) -> Result<PoolSettings, DriverError> {
        let name = cfg.required("pool")?.trim().to_string();
        check_id("pool", &name)?;
        let reserved = cfg.u64("reserved_percentage")?.unwrap_or(0);
        if reserved > 100 {
            return Err(DriverError::invalid(
                "reserved_percentage",
                format!("{reserved} is not between 0 and 100"),
            ));
        }
        let ratio = cfg.required("max_over_subscription_ratio")?.trim().to_string();
        if ratio != "auto" && cfg.f64("max_over_subscription_ratio")?.unwrap_or(0.0) < 1.0 {
            return Err(DriverError::invalid(
                "max_over_subscription_ratio",
                format!("{ratio} is below 1.0: use a number >= 1.0 or `auto`"),
            ));
        }
        Ok(PoolSettings {
            name,
            reserved_percentage: reserved as u8,
            max_over_subscription_ratio: ratio,
        })
    }

    /// What every create checks: a usable id, a size above 0, this pool, and no QoS limits
    /// (`qos_unsupported` says why the driver cannot enforce them).
    pub fn check_spec(&self, spec: &VolumeSpec, qos_unsupported: &str) -> Result<(), DriverError> {
        check_id("id", &spec.id)?;
        if spec.size_bytes == 0 {
            return Err(DriverError::invalid("size", "must be greater than 0 bytes"));
        }
        if spec.pool != self.name {
            return Err(DriverError::invalid(
                "pool",
                format!(
                    "unknown pool {:?}: this backend has the pool {:?}",
                    spec.pool, self.name
                ),
            ));
        }
        if spec
            .qos
            .as_ref()
            .is_some_and(|q| q.iops.is_some() || q.bandwidth_bytes_per_sec.is_some())
        {
            return Err(DriverError::unsupported(qos_unsupported));
        }
        Ok(())
    }
}

/// The resize rule: volumes only grow. `Ok(true)` if `wanted` is larger than `current`,
/// `Ok(false)` if it is the same, `invalid(size)` if it is smaller.
pub fn check_grow(current: u64, wanted: u64) -> Result<bool, DriverError> {
    if wanted < current {
        return Err(DriverError::invalid(
            "size",
            format!("{wanted} bytes is smaller than the volume ({current} bytes): volumes can only grow"),
        ));
    }
    Ok(wanted > current)
}
