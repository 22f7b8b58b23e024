//! A pool's capability map, built for the capabilities filter's hot path: every placement looks up each spec's
//! key in every pool.
//!
//! Keys are interned process-wide into [`KeyId`]s (a capability vocabulary is small: a few dozen names), and each
//! map keeps its keys' ids inline, so a lookup by id compares integers inside the `PoolState` itself, with no
//! pointer to follow until the value is found (values are inline too, up to 4). Walking tree nodes and comparing heap strings instead dominated a
//! placement over 10 000 pools. Iteration is in key order, as a `BTreeMap`'s.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use serde_json::Value;
use smallvec::SmallVec;

/// An interned capability key: equal ids ⇔ equal keys, within the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(u32);

fn interner() -> &'static RwLock<HashMap<Box<str>, KeyId>> {
    static INTERNER: OnceLock<RwLock<HashMap<Box<str>, KeyId>>> = OnceLock::new();
    INTERNER.get_or_init(Default::default)
}

/// The id of `key`, interning it on first sight.
pub fn key_id(key: &str) -> KeyId {
    if let Some(id) = interner().read().unwrap_or_else(|e| e.into_inner()).get(key) {
        return *id;
    }
    let mut table = interner().write().unwrap_or_else(|e| e.into_inner());
    let next = KeyId(u32::try_from(table.len()).expect("fewer than 2^32 capability keys"));
    *table.entry(key.into()).or_insert(next)
}

/// Capability name → JSON value (Cinder's `backend_state.capabilities`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capabilities {
    /// The keys' ids, in the order of `keys`; inline for up to 8 keys.
    ids: SmallVec<[KeyId; 8]>,
    /// Sorted, each once.
    keys: Vec<String>,
    /// In the order of `keys`; inline for up to 8 keys too, so that a lookup by id reads no other memory than
    /// the pool's own until it compares a string value (for the first 4 keys).
    values: SmallVec<[Value; 4]>,
}

impl Capabilities {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let i = self.keys.binary_search_by(|k| k.as_str().cmp(key)).ok()?;
        Some(&self.values[i])
    }

    /// The value of the key whose id is `id` ([`key_id`]).
    pub fn get_by_id(&self, id: KeyId) -> Option<&Value> {
        let i = self.ids.iter().position(|k| *k == id)?;
        Some(&self.values[i])
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`; returns the value it replaces.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) -> Option<Value> {
        let key = key.into();
        match self.keys.binary_search(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.values[i], value)),
            Err(i) => {
                self.ids.insert(i, key_id(&key));
                self.keys.insert(i, key);
                self.values.insert(i, value);
                None
            }
        }
    }

    /// Sets `key` to `value()` unless it is already set.
    pub fn insert_if_absent(&mut self, key: &str, value: impl FnOnce() -> Value) {
        if !self.contains_key(key) {
            self.insert(key, value());
        }
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.keys.binary_search_by(|k| k.as_str().cmp(key)).ok()?;
        self.ids.remove(i);
        self.keys.remove(i);
        Some(self.values.remove(i))
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.keys.iter().map(String::as_str).zip(&self.values)
    }

    /// The map as a JSON object.
    pub fn to_json(&self) -> Value {
        Value::Object(self.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }
}

impl<K: Into<String>> FromIterator<(K, Value)> for Capabilities {
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(iter: I) -> Self {
        let mut c = Capabilities::new();
        for (k, v) in iter {
            c.insert(k, v);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn behaves_as_a_sorted_map() {
        let mut c: Capabilities = [("tier", json!("gold")), ("iops", json!(5))].into_iter().collect();
        assert_eq!(c.get("tier"), Some(&json!("gold")));
        assert_eq!(c.get("iops"), Some(&json!(5)));
        assert_eq!(c.get("ssd"), None);
        assert_eq!(c.insert("iops", json!(6)), Some(json!(5)));
        c.insert_if_absent("iops", || json!(7));
        c.insert_if_absent("ssd", || json!(true));
        let keys: Vec<&str> = c.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["iops", "ssd", "tier"]);
        assert_eq!(c.get_by_id(key_id("iops")), Some(&json!(6)));
        assert_eq!(c.get_by_id(key_id("never-inserted")), None);
        assert_eq!(c.remove("ssd"), Some(json!(true)));
        assert_eq!(c.get_by_id(key_id("tier")), Some(&json!("gold")));
        assert_eq!(c.len(), 2);
        assert_eq!(c.to_json(), json!({"iops": 6, "tier": "gold"}));
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(key_id("a-key"), key_id("a-key"));
        assert_ne!(key_id("a-key"), key_id("another-key"));
    }
}
