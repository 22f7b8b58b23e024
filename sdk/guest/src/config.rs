//! Configuration helpers: parse the pairs handed to `configure` against the same list of
//! [`ConfigKey`]s the driver returns from `info()`, so the two can never disagree.
//!
//! ```ignore
//! fn keys() -> Vec<ConfigKey> {
//!     vec![
//!         ConfigKey::required("endpoint", "URL of the storage API"),
//!         ConfigKey::optional("timeout_secs", "request timeout", Some("30")),
//!         ConfigKey::required("password", "API password").secret(),
//!     ]
//! }
//! fn configure(pairs: Vec<(String, String)>) -> DriverResult<()> {
//!     let cfg = Config::parse(pairs, &keys())?;   // unknown keys → invalid(key, ...)
//!     let endpoint = cfg.required("endpoint")?;
//!     let timeout = cfg.u64("timeout_secs")?.unwrap();  // has a default
//!     SETTINGS.set(MySettings { .. });
//!     Ok(())
//! }
//! ```

use crate::size::parse_size;
use crate::types::{ConfigKey, DriverError, Pair};
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

impl ConfigKey {
    /// A key that must be given.
    pub fn required(name: &str, description: &str) -> Self {
        ConfigKey {
            name: name.to_string(),
            description: description.to_string(),
            required: true,
            secret: false,
            default_value: None,
        }
    }

    /// A key that may be left out; `default` is applied by [`Config::parse`] when it is.
    pub fn optional(name: &str, description: &str, default: Option<&str>) -> Self {
        ConfigKey {
            name: name.to_string(),
            description: description.to_string(),
            required: false,
            secret: false,
            default_value: default.map(str::to_string),
        }
    }

    /// Mark the key secret: the host stores it but never prints it back or logs it.
    pub fn secret(mut self) -> Self {
        self.secret = true;
        self
    }
}

/// Validated configuration: only declared keys, every required key present, defaults applied.
#[derive(Debug, Clone, Default)]
pub struct Config {
    values: BTreeMap<String, String>,
}

impl Config {
    /// Check `pairs` against `keys`: an undeclared key, a key given twice or a missing required
    /// key is `invalid` naming that key. Optional keys that are missing get their default.
    pub fn parse(pairs: Vec<Pair>, keys: &[ConfigKey]) -> Result<Config, DriverError> {
        let mut values = BTreeMap::new();
        for (key, value) in pairs {
            if !keys.iter().any(|k| k.name == key) {
                let accepted: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
                let reason = if accepted.is_empty() {
                    "unknown configuration key: this driver accepts no configuration".to_string()
                } else {
                    format!("unknown configuration key; accepted keys: {}", accepted.join(", "))
                };
                return Err(DriverError::invalid(key, reason));
            }
            if values.contains_key(&key) {
                return Err(DriverError::invalid(key, "given more than once"));
            }
            values.insert(key, value);
        }
        for k in keys {
            if values.contains_key(&k.name) {
                continue;
            }
            if k.required {
                return Err(DriverError::invalid(
                    &k.name,
                    format!("is required ({})", k.description),
                ));
            }
            if let Some(default) = &k.default_value {
                values.insert(k.name.clone(), default.clone());
            }
        }
        Ok(Config { values })
    }

    /// The value of `key`, if given or defaulted.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The value of `key`, or `invalid(key, "is required")`; an empty value is rejected too.
    pub fn required(&self, key: &str) -> Result<&str, DriverError> {
        match self.get(key) {
            Some(v) if !v.trim().is_empty() => Ok(v),
            Some(_) => Err(DriverError::invalid(key, "must not be empty")),
            None => Err(DriverError::invalid(key, "is required")),
        }
    }

    /// Parse `key` with [`FromStr`]; a bad value is `invalid(key, "<value> is not a valid <what>: ...")`.
    pub fn parse_as<T>(&self, key: &str, what: &str) -> Result<Option<T>, DriverError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<T>()
                .map(Some)
                .map_err(|e| DriverError::invalid(key, format!("{v:?} is not a valid {what}: {e}"))),
        }
    }

    /// A non-negative integer.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, DriverError> {
        self.parse_as(key, "non-negative integer")
    }

    /// A decimal number.
    pub fn f64(&self, key: &str) -> Result<Option<f64>, DriverError> {
        let v: Option<f64> = self.parse_as(key, "number")?;
        match v {
            Some(x) if !x.is_finite() => Err(DriverError::invalid(key, "must be a finite number")),
            other => Ok(other),
        }
    }

    /// `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`), any case.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, DriverError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Ok(Some(true)),
                "false" | "no" | "off" | "0" => Ok(Some(false)),
                _ => Err(DriverError::invalid(
                    key,
                    format!("{v:?} is not a boolean: use true or false"),
                )),
            },
        }
    }

    /// A size such as `10G`, `10GiB`, `512MB` or plain bytes (see [`crate::size`]).
    pub fn size(&self, key: &str) -> Result<Option<u64>, DriverError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse_size(v)
                .map(Some)
                .map_err(|e| DriverError::invalid(key, e.to_string())),
        }
    }

    /// All keys and values, secrets included (do not log this).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Where a driver keeps its parsed settings between `configure` and the other calls.
///
/// A driver's exports are plain functions, so settings live in a `static`:
/// `static SETTINGS: Settings<MySettings> = Settings::new();`. `configure` calls
/// [`Settings::set`]; every other export calls [`Settings::get`], which fails with a clear
/// `backend` error if `configure` was never called on this instance.
pub struct Settings<T> {
    slot: Mutex<Option<Arc<T>>>,
}

impl<T> Settings<T> {
    pub const fn new() -> Self {
        Settings { slot: Mutex::new(None) }
    }

    /// Keep `value` (replacing any earlier one).
    pub fn set(&self, value: T) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(value));
    }

    /// The settings given to the last `configure`.
    pub fn get(&self) -> Result<Arc<T>, DriverError> {
        self.slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| DriverError::backend("the driver was not configured: the host must call configure() first"))
    }
}

impl<T> Default for Settings<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<ConfigKey> {
        vec![
            ConfigKey::required("endpoint", "API URL"),
            ConfigKey::optional("retries", "how often", Some("3")),
            ConfigKey::optional("verify", "check TLS", None),
        ]
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<Pair> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn field(e: DriverError) -> String {
        match e {
            DriverError::Invalid(f) => f.field,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn applies_defaults_and_types() {
        let c = Config::parse(pairs(&[("endpoint", "http://x"), ("verify", "no")]), &keys()).unwrap();
        assert_eq!(c.required("endpoint").unwrap(), "http://x");
        assert_eq!(c.u64("retries").unwrap(), Some(3));
        assert_eq!(c.bool("verify").unwrap(), Some(false));
    }

    #[test]
    fn rejects_unknown_missing_and_bad_values() {
        assert_eq!(
            field(Config::parse(pairs(&[("endpoint", "x"), ("colour", "red")]), &keys()).unwrap_err()),
            "colour"
        );
        assert_eq!(field(Config::parse(pairs(&[]), &keys()).unwrap_err()), "endpoint");
        let c = Config::parse(pairs(&[("endpoint", "x"), ("retries", "many")]), &keys()).unwrap();
        assert_eq!(field(c.u64("retries").unwrap_err()), "retries");
    }
}
