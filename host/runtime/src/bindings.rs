//! Host bindings generated from the driver contract (`wit/driver.wit`, world `driver-world`).
//!
//! Exports are called asynchronously (so epoch deadlines can yield and host imports can await
//! I/O); the `host` import is async, the `log` import is synchronous. Every WIT type derives
//! `serde::{Serialize, Deserialize}`, `Clone`, `Debug` and `PartialEq`. The `features` flags type
//! cannot derive serde through bindgen, so it gets a hand-written impl below that (de)serialises
//! it as a list of flag names, e.g. `["snapshot", "clone"]`.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "driver-world",
    exports: { default: async },
    imports: {
        "elara:driver/host": async | trappable,
        "elara:driver/log": trappable,
    },
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});

use self::elara::driver::types::Features;

/// Every flag of [`Features`] with its WIT name, in WIT order.
pub const FEATURE_NAMES: [(&str, Features); 6] = [
    ("snapshot", Features::SNAPSHOT),
    ("clone", Features::CLONE),
    ("resize", Features::RESIZE),
    ("qos", Features::QOS),
    ("quota", Features::QUOTA),
    ("stats", Features::STATS),
];

impl Features {
    /// The WIT names of the flags that are set, in WIT order.
    pub fn names(&self) -> Vec<&'static str> {
        FEATURE_NAMES
            .iter()
            .filter(|(_, f)| self.contains(*f))
            .map(|(n, _)| *n)
            .collect()
    }

    /// The flag with this WIT name (`snapshot`, `clone`, ...), if there is one.
    pub fn from_name(name: &str) -> Option<Features> {
        FEATURE_NAMES.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }
}

impl serde::Serialize for Features {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

impl<'de> serde::Deserialize<'de> for Features {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        let mut features = Features::empty();
        for name in names {
            features |= Features::from_name(&name).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown driver feature `{name}` (known: snapshot, clone, resize, qos, quota, stats)"
                ))
            })?;
        }
        Ok(features)
    }
}
