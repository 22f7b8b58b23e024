//! A trivial, well-behaved driver for the runtime's tests and benchmark.
//!
//! * `stats` returns a constant (the benchmark's trivial call).
//! * `create` with name `sleep:MS` sleeps MS milliseconds (a slow call blocked in the host);
//!   size 0 is `invalid size`.
//! * `configure` rejects a config that has the key `reject`.

use std::sync::Mutex;

wit_bindgen::generate!({ path: "../../../wit", world: "driver-world" });

use elara::driver::types::*;
use exports::elara::driver::driver::Guest;

static CONFIG: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

struct Trivial;

fn unsupported<T>(what: &str) -> Result<T, DriverError> {
    Err(DriverError::Unsupported(format!(
        "the trivial driver does not do {what}"
    )))
}

impl Guest for Trivial {
    fn info() -> DriverInfo {
        DriverInfo {
            name: "trivial".into(),
            version: "0.1.0".into(),
            kind: VolumeKind::File,
            features: Features::STATS,
            config_keys: vec![ConfigKey {
                name: "reject".into(),
                description: "if present, configure fails (for tests)".into(),
                required: false,
                secret: false,
                default_value: None,
            }],
            notes: vec![("purpose".into(), "runtime tests".into())],
        }
    }

    fn configure(config: Vec<(String, String)>) -> Result<(), DriverError> {
        if config.iter().any(|(k, _)| k == "reject") {
            return Err(DriverError::Invalid(InvalidField {
                field: "reject".into(),
                reason: "this backend refuses every configuration that has it".into(),
            }));
        }
        *CONFIG.lock().unwrap() = config;
        Ok(())
    }

    fn pools() -> Result<Vec<Pool>, DriverError> {
        Ok(vec![Pool {
            name: "default".into(),
            total: Capacity::Unknown,
            free: Capacity::Unknown,
            provisioned_bytes: 0,
            reserved_percentage: 0,
            thin_provisioning: true,
            thick_provisioning: false,
            max_over_subscription_ratio: "1.0".into(),
            capabilities: CONFIG.lock().unwrap().clone(),
        }])
    }

    fn list_volumes() -> Result<Vec<Volume>, DriverError> {
        Ok(Vec::new())
    }

    fn create(spec: VolumeSpec) -> Result<Volume, DriverError> {
        if spec.size_bytes == 0 {
            return Err(DriverError::Invalid(InvalidField {
                field: "size".into(),
                reason: "must be > 0".into(),
            }));
        }
        if let Some(ms) = spec.name.strip_prefix("sleep:") {
            let ms: u64 = ms.parse().unwrap_or(100);
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        Ok(Volume {
            id: spec.id.clone(),
            pool: spec.pool,
            size_bytes: spec.size_bytes,
            backend_ref: spec.name,
        })
    }

    fn create_from_snapshot(_: VolumeSpec, _: String) -> Result<Volume, DriverError> {
        unsupported("clones")
    }
    fn delete(_: String) -> Result<(), DriverError> {
        Ok(())
    }
    fn resize(_: String, _: u64) -> Result<Volume, DriverError> {
        unsupported("resize")
    }
    fn snapshot_create(_: SnapshotSpec) -> Result<Snapshot, DriverError> {
        unsupported("snapshots")
    }
    fn snapshot_delete(_: String) -> Result<(), DriverError> {
        Ok(())
    }
    fn attach(volume_id: String, _: NodeInfo) -> Result<Connection, DriverError> {
        Ok(Connection::Directory(volume_id))
    }
    fn detach(_: String, _: NodeInfo) -> Result<(), DriverError> {
        Ok(())
    }
    fn stats(_: String) -> Result<VolumeStats, DriverError> {
        Ok(VolumeStats {
            size_bytes: 1 << 30,
            used_bytes: 4096,
            objects: None,
        })
    }
    fn set_qos(_: String, _: Qos) -> Result<(), DriverError> {
        unsupported("QoS")
    }
}

export!(Trivial);
