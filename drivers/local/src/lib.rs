//! # elara-driver-local: sparse image files in the backend's pool directory
//!
//! The embedded default driver (kind `block`). Each volume is a sparse image file that the host
//! binds to a loop device, formats on first use and mounts. Snapshots are reflinks of the image
//! where the pool's filesystem supports them (btrfs, xfs with reflink), else sparse copies; the
//! host's `clone-file` decides and reports which. See [`layout`] for the files and how every
//! write stays atomic and every call idempotent.
//!
//! `info().notes` carries (`scope`, `node`): the pool is a directory on this node's disk, so the
//! host keeps one pool per node; and (`snapshot-method`, `reflink` | `copy`) as the pool's
//! filesystem allows.
//!
//! Configuration (`configure`):
//! - `pool`: the name of the single pool this backend reports (default `default`);
//! - `reserved_percentage`: share of the filesystem kept free, 0-100 (default `0`);
//! - `max_over_subscription_ratio`: thin-provisioning ratio for the scheduler, a number ≥ 1 or
//!   `auto` (default `20.0`).
//!
//! QoS is not supported: a file-backed volume cannot enforce IOPS or bandwidth limits from
//! inside the driver (the host may later do it with cgroups on the loop device).

pub mod layout;

use elara_driver_sdk::pool::{self, PoolSettings};
use elara_driver_sdk::prelude::*;
use elara_driver_sdk::{debug, info};
use layout::{Kind, SnapshotRecord, VolumeRecord, check_id};

/// The driver. `export_driver!` turns it into the component's exports (feature `export`).
pub struct LocalDriver;

#[cfg(feature = "export")]
elara_driver_sdk::export_driver!(LocalDriver);

/// Settings from `configure`: the single pool this backend reports.
pub type LocalSettings = PoolSettings;

static SETTINGS: Settings<LocalSettings> = Settings::new();

/// The configuration keys, shared by `info` and `configure`.
pub fn config_keys() -> Vec<ConfigKey> {
    pool::config_keys()
}

/// Parse and check the configuration pairs.
pub fn parse_settings(pairs: Vec<(String, String)>) -> DriverResult<LocalSettings> {
    PoolSettings::parse(&Config::parse(pairs, &config_keys())?)
}

/// Why `iops` and `set-qos` are refused.
const QOS_UNSUPPORTED: &str = "qos: the local driver cannot enforce IOPS or bandwidth limits on image files";

fn features() -> Features {
    Features::SNAPSHOT | Features::CLONE | Features::RESIZE | Features::QUOTA | Features::STATS
}

/// `reflink` or `copy`, from the host's figures of the pool filesystem.
fn snapshot_method(stats: &host::FsStats) -> &'static str {
    if stats.reflink { "reflink" } else { "copy" }
}

fn to_volume(record: &VolumeRecord) -> Volume {
    Volume {
        id: record.id.clone(),
        pool: record.pool.clone(),
        size_bytes: record.size_bytes,
        backend_ref: Kind::Volume.image_rel(&record.id),
    }
}

fn to_snapshot(record: &SnapshotRecord) -> Snapshot {
    Snapshot {
        id: record.id.clone(),
        volume_id: record.volume_id.clone(),
        size_bytes: record.size_bytes,
        backend_ref: Kind::Snapshot.image_rel(&record.id),
    }
}

/// The existing record for `spec.id`, if it matches the spec (idempotent retry), or
/// `already-exists` if it does not.
fn existing_volume(spec: &VolumeSpec, from: Option<&str>) -> DriverResult<Option<Volume>> {
    let Some(record) = layout::read_record::<VolumeRecord>(Kind::Volume, &spec.id)? else {
        return Ok(None);
    };
    elara_driver_sdk::idempotency::check_same_volume(
        &spec.id,
        record.size_bytes,
        record.created_from.as_deref(),
        spec.size_bytes,
        from,
    )?;
    Ok(Some(to_volume(&record)))
}

/// Make the image `volumes/.<id>.img.tmp` (by `make`), grow it to the spec size, move it into
/// place and commit the record. Anything a crashed attempt left is removed first.
fn build_volume(
    spec: &VolumeSpec,
    from: Option<&str>,
    make: impl FnOnce(&str) -> DriverResult<()>,
) -> DriverResult<Volume> {
    let (image, tmp) = (Kind::Volume.image_rel(&spec.id), Kind::Volume.image_tmp_rel(&spec.id));
    // No record: any image under either name is an unfinished attempt; start over.
    layout::remove_all(Kind::Volume, &spec.id)?;
    make(&tmp)?;
    layout::set_image_len(&tmp, spec.size_bytes, false)?;
    layout::rename(&tmp, &image)?;
    let record = VolumeRecord {
        id: spec.id.clone(),
        name: spec.name.clone(),
        size_bytes: spec.size_bytes,
        pool: spec.pool.clone(),
        labels: spec.labels.clone(),
        created_from: from.map(str::to_string),
    };
    layout::write_record(Kind::Volume, &spec.id, &record)?;
    Ok(to_volume(&record))
}

fn volume_record(id: &str) -> DriverResult<VolumeRecord> {
    check_id("volume-id", id)?;
    layout::read_record(Kind::Volume, id)?.ok_or_else(|| DriverError::not_found(format!("volume {id}")))
}

impl Guest for LocalDriver {
    fn info() -> DriverInfo {
        // `pool-stats` is a statvfs of the pool dir: cheap and never hanging. Without a pool
        // dir (e.g. `driver inspect` before any backend), say that it depends.
        let method = match host::pool_stats() {
            Ok(stats) => snapshot_method(&stats).to_string(),
            Err(_) => "reflink where the pool filesystem supports it, else copy".to_string(),
        };
        DriverInfo {
            name: "local".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: VolumeKind::Block,
            features: features(),
            config_keys: config_keys(),
            notes: vec![
                // Pools live on this node's disk: the host keeps one pool per node.
                ("scope".into(), "node".into()),
                ("snapshot-method".into(), method),
                ("provisioning".into(), "thin (sparse image files)".into()),
                (
                    "qos".into(),
                    "not supported: image files cannot enforce IOPS or bandwidth limits".into(),
                ),
            ],
        }
    }

    fn configure(config: Vec<(String, String)>) -> DriverResult<()> {
        elara_driver_sdk::log::install_panic_hook();
        let settings = parse_settings(config)?;
        debug!("configured: pool {}", settings.name);
        SETTINGS.set(settings);
        Ok(())
    }

    fn pools() -> DriverResult<Vec<Pool>> {
        let settings = SETTINGS.get()?;
        let stats = host::pool_stats()?;
        let provisioned = layout::list_records::<VolumeRecord>(Kind::Volume)?
            .iter()
            .map(|v| v.size_bytes)
            .sum();
        Ok(vec![Pool {
            name: settings.name.clone(),
            total: Capacity::Bytes(stats.total_bytes),
            free: Capacity::Bytes(stats.available_bytes),
            provisioned_bytes: provisioned,
            reserved_percentage: settings.reserved_percentage,
            thin_provisioning: true,
            thick_provisioning: false,
            max_over_subscription_ratio: settings.max_over_subscription_ratio.clone(),
            capabilities: vec![
                ("type".into(), "block".into()),
                ("driver".into(), "local".into()),
                ("reflink".into(), stats.reflink.to_string()),
                ("snapshot-method".into(), snapshot_method(&stats).into()),
            ],
        }])
    }

    fn list_volumes() -> DriverResult<Vec<Volume>> {
        SETTINGS.get()?;
        Ok(layout::list_records::<VolumeRecord>(Kind::Volume)?
            .iter()
            .map(to_volume)
            .collect())
    }

    fn create(spec: VolumeSpec) -> DriverResult<Volume> {
        let settings = SETTINGS.get()?;
        settings.check_spec(&spec, QOS_UNSUPPORTED)?;
        layout::ensure_dirs()?;
        if let Some(volume) = existing_volume(&spec, None)? {
            layout::remove_temps(Kind::Volume, &spec.id)?;
            return Ok(volume);
        }
        let volume = build_volume(&spec, None, |tmp| layout::set_image_len(tmp, 0, true))?;
        info!("created volume {} ({} bytes)", spec.id, spec.size_bytes);
        Ok(volume)
    }

    fn create_from_snapshot(spec: VolumeSpec, snapshot_id: String) -> DriverResult<Volume> {
        let settings = SETTINGS.get()?;
        settings.check_spec(&spec, QOS_UNSUPPORTED)?;
        check_id("snapshot-id", &snapshot_id)?;
        layout::ensure_dirs()?;
        if let Some(volume) = existing_volume(&spec, Some(&snapshot_id))? {
            layout::remove_temps(Kind::Volume, &spec.id)?;
            return Ok(volume);
        }
        let snapshot = layout::read_record::<SnapshotRecord>(Kind::Snapshot, &snapshot_id)?
            .ok_or_else(|| DriverError::not_found(format!("snapshot {snapshot_id}")))?;
        if spec.size_bytes < snapshot.size_bytes {
            return Err(DriverError::invalid(
                "size",
                format!(
                    "{} bytes is smaller than snapshot {snapshot_id} ({} bytes)",
                    spec.size_bytes, snapshot.size_bytes
                ),
            ));
        }
        let source = Kind::Snapshot.image_rel(&snapshot_id);
        let volume = build_volume(&spec, Some(&snapshot_id), |tmp| {
            host::clone_file(&source, tmp)
                .map(|_| ())
                .context(format!("cloning {source}"))
        })?;
        info!("created volume {} from snapshot {snapshot_id}", spec.id);
        Ok(volume)
    }

    fn delete(volume_id: String) -> DriverResult<()> {
        SETTINGS.get()?;
        check_id("volume-id", &volume_id)?;
        layout::remove_all(Kind::Volume, &volume_id)?;
        info!("deleted volume {volume_id}");
        Ok(())
    }

    fn resize(volume_id: String, size_bytes: u64) -> DriverResult<Volume> {
        SETTINGS.get()?;
        let mut record = volume_record(&volume_id)?;
        if pool::check_grow(record.size_bytes, size_bytes)? {
            // Grow the image first, then the record: a crash in between leaves a larger image
            // under the old record, and the retry grows it (a no-op) and writes the record.
            layout::set_image_len(&Kind::Volume.image_rel(&volume_id), size_bytes, false)?;
            record.size_bytes = size_bytes;
            layout::write_record(Kind::Volume, &volume_id, &record)?;
            info!("resized volume {volume_id} to {size_bytes} bytes");
        }
        Ok(to_volume(&record))
    }

    fn snapshot_create(spec: SnapshotSpec) -> DriverResult<Snapshot> {
        SETTINGS.get()?;
        check_id("id", &spec.id)?;
        check_id("volume-id", &spec.volume_id)?;
        layout::ensure_dirs()?;
        if let Some(existing) = layout::read_record::<SnapshotRecord>(Kind::Snapshot, &spec.id)? {
            if existing.volume_id != spec.volume_id {
                return Err(DriverError::already_exists(format!(
                    "snapshot {} exists for volume {}, not {}",
                    spec.id, existing.volume_id, spec.volume_id
                )));
            }
            layout::remove_temps(Kind::Snapshot, &spec.id)?;
            return Ok(to_snapshot(&existing));
        }
        let volume = volume_record(&spec.volume_id)?;
        let (image, tmp) = (
            Kind::Snapshot.image_rel(&spec.id),
            Kind::Snapshot.image_tmp_rel(&spec.id),
        );
        layout::remove_all(Kind::Snapshot, &spec.id)?;
        let source = Kind::Volume.image_rel(&spec.volume_id);
        let method = host::clone_file(&source, &tmp).context(format!("cloning {source}"))?;
        layout::rename(&tmp, &image)?;
        let record = SnapshotRecord {
            id: spec.id.clone(),
            volume_id: spec.volume_id.clone(),
            name: spec.name.clone(),
            size_bytes: volume.size_bytes,
            method: match method {
                host::CopyMethod::Reflink => "reflink".into(),
                host::CopyMethod::Copy => "copy".into(),
            },
        };
        layout::write_record(Kind::Snapshot, &spec.id, &record)?;
        info!(
            "snapshot {} of volume {} made by {}",
            spec.id, spec.volume_id, record.method
        );
        Ok(to_snapshot(&record))
    }

    fn snapshot_delete(snapshot_id: String) -> DriverResult<()> {
        SETTINGS.get()?;
        check_id("snapshot-id", &snapshot_id)?;
        layout::remove_all(Kind::Snapshot, &snapshot_id)?;
        info!("deleted snapshot {snapshot_id}");
        Ok(())
    }

    fn attach(volume_id: String, _node: NodeInfo) -> DriverResult<Connection> {
        SETTINGS.get()?;
        volume_record(&volume_id)?;
        let path = Kind::Volume.image_rel(&volume_id);
        if !layout::exists(&path)? {
            return Err(DriverError::backend(format!(
                "volume {volume_id} has a record but no image {path}"
            )));
        }
        Ok(Connection::ImageFile(ImageFileConnection { path }))
    }

    fn detach(volume_id: String, _node: NodeInfo) -> DriverResult<()> {
        // The host releases the loop device; nothing is held on the driver's side.
        SETTINGS.get()?;
        check_id("volume-id", &volume_id)
    }

    fn stats(volume_id: String) -> DriverResult<VolumeStats> {
        SETTINGS.get()?;
        let record = volume_record(&volume_id)?;
        let used = host::allocated_bytes(&Kind::Volume.image_rel(&volume_id))?;
        Ok(VolumeStats {
            size_bytes: record.size_bytes,
            used_bytes: used,
            objects: None,
        })
    }

    fn set_qos(_volume_id: String, _qos: Qos) -> DriverResult<()> {
        Err(DriverError::unsupported(QOS_UNSUPPORTED))
    }
}
