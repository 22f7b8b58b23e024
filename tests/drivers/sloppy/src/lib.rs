//! `sloppy`: a file-kind driver that looks fine but is not idempotent.
//!
//! Like a naive cloud driver that lets the backend pick object names, every `create` makes a
//! new directory `/pool/<id>.<n>/` (the next free `n`) even when a volume with that id already
//! exists. Everything else follows the contract: `list-volumes` reports each directory, `delete`
//! removes every directory of the id, `attach` returns a `directory` connection. Snapshots,
//! clones, resize and QoS are `unsupported`, as `info()` says.
//!
//! The conformance suite must report `create-idempotent` as FAIL (a second volume appeared).

use elara_driver_sdk::prelude::*;
use serde::{Deserialize, Serialize};
use std::fs;

struct Sloppy;
elara_driver_sdk::export_driver!(Sloppy);

const ROOT: &str = "/pool";

#[derive(Serialize, Deserialize)]
struct Record {
    id: String,
    size_bytes: u64,
}

static CONFIGURED: Settings<()> = Settings::new();

/// Every `(directory name, record)` in the pool.
fn records() -> DriverResult<Vec<(String, Record)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(ROOT).context("listing /pool")? {
        let name = entry
            .context("listing /pool")?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Ok(bytes) = fs::read(format!("{ROOT}/{name}/volume.json")) {
            out.push((name, serde_json::from_slice(&bytes)?));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn unsupported<T>(what: &str) -> DriverResult<T> {
    Err(DriverError::unsupported(format!(
        "the sloppy driver does not do {what}"
    )))
}

fn check_id(field: &str, id: &str) -> DriverResult<()> {
    if id.is_empty() || id.starts_with('.') || id.contains(['/', '\0']) {
        return Err(DriverError::invalid(field, "must be a plain name"));
    }
    Ok(())
}

fn to_volume((dir, r): &(String, Record)) -> Volume {
    Volume {
        id: r.id.clone(),
        pool: "default".into(),
        size_bytes: r.size_bytes,
        backend_ref: dir.clone(),
    }
}

impl Guest for Sloppy {
    fn info() -> DriverInfo {
        DriverInfo {
            name: "sloppy".into(),
            version: "0.1.0".into(),
            kind: VolumeKind::File,
            features: Features::empty(),
            config_keys: vec![],
            notes: vec![("purpose".into(), "conformance tests: create is not idempotent".into())],
        }
    }

    fn configure(config: Vec<(String, String)>) -> DriverResult<()> {
        Config::parse(config, &[])?;
        CONFIGURED.set(());
        Ok(())
    }

    fn pools() -> DriverResult<Vec<Pool>> {
        CONFIGURED.get()?;
        let stats = host::pool_stats()?;
        Ok(vec![Pool {
            name: "default".into(),
            total: Capacity::Bytes(stats.total_bytes),
            free: Capacity::Bytes(stats.available_bytes),
            provisioned_bytes: records()?.iter().map(|(_, r)| r.size_bytes).sum(),
            reserved_percentage: 0,
            thin_provisioning: true,
            thick_provisioning: false,
            max_over_subscription_ratio: "1.0".into(),
            capabilities: vec![],
        }])
    }

    fn list_volumes() -> DriverResult<Vec<Volume>> {
        Ok(records()?.iter().map(to_volume).collect())
    }

    /// The bug: never looks for an existing volume with this id.
    fn create(spec: VolumeSpec) -> DriverResult<Volume> {
        check_id("id", &spec.id)?;
        if spec.size_bytes == 0 {
            return Err(DriverError::invalid("size", "must be greater than 0 bytes"));
        }
        let n = (0..)
            .find(|n| fs::metadata(format!("{ROOT}/{}.{n}", spec.id)).is_err())
            .unwrap();
        let dir = format!("{}.{n}", spec.id);
        fs::create_dir(format!("{ROOT}/{dir}")).context(format!("creating {dir}"))?;
        let record = Record {
            id: spec.id.clone(),
            size_bytes: spec.size_bytes,
        };
        fs::write(format!("{ROOT}/{dir}/volume.json"), serde_json::to_vec(&record)?).context("writing the record")?;
        Ok(to_volume(&(dir, record)))
    }

    fn create_from_snapshot(_: VolumeSpec, _: String) -> DriverResult<Volume> {
        unsupported("clones")
    }

    fn delete(volume_id: String) -> DriverResult<()> {
        check_id("volume-id", &volume_id)?;
        for (dir, r) in records()? {
            if r.id == volume_id {
                fs::remove_dir_all(format!("{ROOT}/{dir}")).context(format!("removing {dir}"))?;
            }
        }
        Ok(())
    }

    fn resize(_: String, _: u64) -> DriverResult<Volume> {
        unsupported("resize")
    }

    fn snapshot_create(_: SnapshotSpec) -> DriverResult<Snapshot> {
        unsupported("snapshots")
    }

    fn snapshot_delete(_: String) -> DriverResult<()> {
        unsupported("snapshots")
    }

    fn attach(volume_id: String, _: NodeInfo) -> DriverResult<Connection> {
        check_id("volume-id", &volume_id)?;
        let found = records()?.into_iter().find(|(_, r)| r.id == volume_id);
        match found {
            Some((dir, _)) => Ok(Connection::Directory(dir)),
            None => Err(DriverError::not_found(format!("volume {volume_id}"))),
        }
    }

    fn detach(_: String, _: NodeInfo) -> DriverResult<()> {
        Ok(())
    }

    fn stats(_: String) -> DriverResult<VolumeStats> {
        unsupported("stats")
    }

    fn set_qos(_: String, _: Qos) -> DriverResult<()> {
        unsupported("QoS")
    }
}
