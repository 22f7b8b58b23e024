//! Where the driver keeps things on the export, and the records it keeps there.
//!
//! Under the backend's base directory (`<export>/<path>`):
//!
//! ```text
//! volumes/<volume id>/            the volume: what containers see when they mount it
//! snapshots/<snapshot id>/        a snapshot: a copy of its volume's tree
//! .elara/volumes/<id>.json        the volume's record (name, size, pool, owner, source snapshot)
//! .elara/snapshots/<id>.json      the snapshot's record
//! ```
//!
//! **A record is the commit point.** A volume or snapshot exists exactly when its record does;
//! the record is written (atomically: temporary file, COMMIT, RENAME) after its tree is complete,
//! and removed only after its tree is gone. So whatever a crash or a lost server interrupts, a
//! retry of the same call finds either a record (done: answer as before) or a tree without one
//! (debris of the interrupted attempt: remove it and start again). Records live outside the
//! volume directories, where containers cannot change them.

use serde::{Deserialize, Serialize};

/// Directory of volume trees, relative to the base.
pub const VOLUMES: &str = "volumes";
/// Directory of snapshot trees, relative to the base.
pub const SNAPSHOTS: &str = "snapshots";
/// Directory of records, relative to the base.
pub const META: &str = ".elara";

/// Volume or snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Volume,
    Snapshot,
}

impl Kind {
    /// The directory of this kind's trees, relative to the base.
    pub fn trees(self) -> &'static str {
        match self {
            Kind::Volume => VOLUMES,
            Kind::Snapshot => SNAPSHOTS,
        }
    }

    /// The directory of this kind's records, relative to [`META`].
    pub fn records(self) -> &'static str {
        match self {
            Kind::Volume => "volumes",
            Kind::Snapshot => "snapshots",
        }
    }

    /// The record's file name for `id`.
    pub fn record_name(id: &str) -> String {
        format!("{id}.json")
    }

    /// The id of a record file name, if it is one.
    pub fn id_of_record(name: &str) -> Option<&str> {
        name.strip_suffix(".json")
            .filter(|id| !id.is_empty() && !id.starts_with('.'))
    }

    pub fn what(self) -> &'static str {
        match self {
            Kind::Volume => "volume",
            Kind::Snapshot => "snapshot",
        }
    }
}

/// A volume's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: String,
    pub name: String,
    /// The recorded size (a soft quota: NFS does not enforce it).
    pub size_bytes: u64,
    pub pool: String,
    #[serde(default)]
    pub labels: Vec<(String, String)>,
    /// The snapshot it was made from.
    #[serde(default)]
    pub created_from: Option<String>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A snapshot's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: String,
    pub volume_id: String,
    pub name: String,
    /// The volume's recorded size when the snapshot was taken.
    pub size_bytes: u64,
    /// Entries copied (files, directories, links).
    pub entries: u64,
    /// Bytes of file data copied.
    pub bytes: u64,
    /// Device nodes, FIFOs and sockets left out.
    pub skipped: u64,
}

/// `a/b` joined with `c`, with no doubled or leading `/`.
pub fn join(a: &str, b: &str) -> String {
    let (a, b) = (a.trim_matches('/'), b.trim_matches('/'));
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_paths() {
        assert_eq!(join("", "volumes"), "volumes");
        assert_eq!(join("/elara/", "volumes/x"), "elara/volumes/x");
        assert_eq!(join("a", ""), "a");
    }

    #[test]
    fn record_names_round_trip() {
        assert_eq!(Kind::id_of_record(&Kind::record_name("abc")), Some("abc"));
        assert_eq!(Kind::id_of_record(".abc.json.tmp"), None);
        assert_eq!(Kind::id_of_record(".json"), None);
    }
}
