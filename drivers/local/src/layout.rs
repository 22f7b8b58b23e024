//! The on-disk layout of a local pool and the atomic writes that keep it consistent.
//!
//! ```text
//! /pool/volumes/<id>.img     sparse image file (the volume's data)
//! /pool/volumes/<id>.json    its record: the volume exists once this file exists
//! /pool/snapshots/<id>.img   a reflink or sparse copy of a volume image
//! /pool/snapshots/<id>.json  its record
//! /pool/{volumes,snapshots}/.<id>.*.tmp   work in progress; removed by the next call for <id>
//! ```
//!
//! The record is written last on create and removed first on delete, so an image without a
//! record is an unfinished create (or delete) that the next call for that id redoes from the
//! start. Every file appears under its final name only by `rename`, so no reader ever sees a
//! half-written record or image.

use elara_driver_sdk::prelude::*;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{ErrorKind, Write};

/// The pool directory as the guest sees it.
pub const POOL_ROOT: &str = "/pool";

/// Volumes or snapshots: the two kinds of object the driver keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Volume,
    Snapshot,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Volume => "volumes",
            Kind::Snapshot => "snapshots",
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            Kind::Volume => "volume",
            Kind::Snapshot => "snapshot",
        }
    }

    /// Image path relative to the pool dir (what the host sees): `volumes/<id>.img`.
    pub fn image_rel(self, id: &str) -> String {
        format!("{}/{id}.img", self.dir())
    }

    /// Temporary image path relative to the pool dir: `volumes/.<id>.img.tmp`.
    pub fn image_tmp_rel(self, id: &str) -> String {
        format!("{}/.{id}.img.tmp", self.dir())
    }

    /// Absolute guest path of a pool-relative path.
    pub fn abs(rel: &str) -> String {
        format!("{POOL_ROOT}/{rel}")
    }

    fn record_abs(self, id: &str) -> String {
        format!("{POOL_ROOT}/{}/{id}.json", self.dir())
    }

    fn record_tmp_abs(self, id: &str) -> String {
        format!("{POOL_ROOT}/{}/.{id}.json.tmp", self.dir())
    }

    fn dir_abs(self) -> String {
        format!("{POOL_ROOT}/{}", self.dir())
    }
}

/// What a volume is, kept in `volumes/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: String,
    pub name: String,
    pub size_bytes: u64,
    pub pool: String,
    #[serde(default)]
    pub labels: Vec<(String, String)>,
    /// The snapshot this volume was created from, if any.
    #[serde(default)]
    pub created_from: Option<String>,
}

/// What a snapshot is, kept in `snapshots/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: String,
    pub volume_id: String,
    pub name: String,
    pub size_bytes: u64,
    /// `reflink` or `copy`: how the image was made.
    pub method: String,
}

pub use elara_driver_sdk::names::check_id;

/// Make sure `volumes/` and `snapshots/` exist.
pub fn ensure_dirs() -> DriverResult<()> {
    for kind in [Kind::Volume, Kind::Snapshot] {
        fs::create_dir_all(kind.dir_abs()).context(format!("creating {}", kind.dir_abs()))?;
    }
    Ok(())
}

/// Read a record; `None` if it does not exist.
pub fn read_record<T: for<'de> Deserialize<'de>>(kind: Kind, id: &str) -> DriverResult<Option<T>> {
    let path = kind.record_abs(id);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| DriverError::backend(format!("{} record {path} is corrupt: {e}", kind.noun()))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DriverError::from(e).with_context(format!("reading {path}"))),
    }
}

/// Write a record atomically: a temporary file, flushed, then renamed over the final name.
pub fn write_record<T: Serialize>(kind: Kind, id: &str, record: &T) -> DriverResult<()> {
    let tmp = kind.record_tmp_abs(id);
    let path = kind.record_abs(id);
    let bytes = serde_json::to_vec_pretty(record)?;
    let mut file = fs::File::create(&tmp).context(format!("creating {tmp}"))?;
    file.write_all(&bytes).context(format!("writing {tmp}"))?;
    file.sync_all().context(format!("syncing {tmp}"))?;
    drop(file);
    fs::rename(&tmp, &path).context(format!("renaming {tmp} to {path}"))?;
    Ok(())
}

/// Remove a file, succeeding if it is already gone.
pub fn remove_if_exists(abs: &str) -> DriverResult<()> {
    match fs::remove_file(abs) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DriverError::from(e).with_context(format!("removing {abs}"))),
    }
}

/// Remove the temporary files a crashed call for `id` may have left.
pub fn remove_temps(kind: Kind, id: &str) -> DriverResult<()> {
    remove_if_exists(&Kind::abs(&kind.image_tmp_rel(id)))?;
    remove_if_exists(&kind.record_tmp_abs(id))
}

/// Remove everything of `id`: the record first (so the object stops existing), then the image,
/// then any temporary files.
pub fn remove_all(kind: Kind, id: &str) -> DriverResult<()> {
    remove_if_exists(&kind.record_abs(id))?;
    remove_if_exists(&Kind::abs(&kind.image_rel(id)))?;
    remove_temps(kind, id)
}

/// Whether a pool-relative path exists.
pub fn exists(rel: &str) -> DriverResult<bool> {
    let abs = Kind::abs(rel);
    fs::exists(&abs).context(format!("checking {abs}"))
}

/// Grow (or create) the image at pool-relative `rel` to `size` bytes, sparsely.
pub fn set_image_len(rel: &str, size: u64, create: bool) -> DriverResult<()> {
    let abs = Kind::abs(rel);
    let file = fs::OpenOptions::new()
        .write(true)
        .create(create)
        .truncate(false)
        .open(&abs)
        .context(format!("opening {abs}"))?;
    file.set_len(size).context(format!("sizing {abs} to {size} bytes"))?;
    file.sync_all().context(format!("syncing {abs}"))?;
    Ok(())
}

/// Rename a pool-relative path.
pub fn rename(from_rel: &str, to_rel: &str) -> DriverResult<()> {
    let (from, to) = (Kind::abs(from_rel), Kind::abs(to_rel));
    fs::rename(&from, &to).context(format!("renaming {from} to {to}"))
}

/// Every record of `kind` (files `<id>.json` that are not temporary).
pub fn list_records<T: for<'de> Deserialize<'de>>(kind: Kind) -> DriverResult<Vec<T>> {
    let dir = kind.dir_abs();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DriverError::from(e).with_context(format!("listing {dir}"))),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let name = entry.context(format!("listing {dir}"))?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name.strip_suffix(".json")
            && !id.starts_with('.')
        {
            ids.push(id.to_string());
        }
    }
    ids.sort();
    let mut records = Vec::with_capacity(ids.len());
    for id in ids {
        // A record removed between the listing and the read is simply gone.
        if let Some(record) = read_record(kind, &id)? {
            records.push(record);
        }
    }
    Ok(records)
}
