//! Backup records in the metadata store (targets and finished backups) and the manifest format.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Store keys of backups, under `/elara/v1/`.
pub mod keys {
    use elara_store::PREFIX;

    pub fn targets() -> String {
        format!("{PREFIX}backup-targets/")
    }
    pub fn target(name: &str) -> String {
        format!("{PREFIX}backup-targets/{name}")
    }
    pub fn backups() -> String {
        format!("{PREFIX}backups/")
    }
    pub fn backup(id: &str) -> String {
        format!("{PREFIX}backups/{id}")
    }
}

/// Where a target keeps its objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TargetLocation {
    /// A directory on this node's filesystem.
    Local { path: String },
    /// An S3 bucket (and key prefix).
    S3 {
        bucket: String,
        prefix: String,
        endpoint: String,
        region: String,
        access_key: String,
        /// Never returned by the API (see [`TargetRecord::redacted`]).
        secret_key: String,
    },
}

/// A named backup target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TargetRecord {
    pub v: u32,
    pub name: String,
    pub location: TargetLocation,
    /// The node of a local-directory target (its directory is only there).
    pub node: Option<String>,
    pub created_at: i64,
}

impl TargetRecord {
    /// The record as shown to users: the secret key replaced by `<redacted>`.
    pub fn redacted(mut self) -> Self {
        if let TargetLocation::S3 { secret_key, .. } = &mut self.location {
            *secret_key = "<redacted>".into();
        }
        self
    }

    /// `DIR` or `s3://bucket/prefix`, for tables.
    pub fn url(&self) -> String {
        match &self.location {
            TargetLocation::Local { path } => path.clone(),
            TargetLocation::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

/// What a backup holds: a block volume's image in fixed blocks, or a file volume's tree in
/// content-defined chunks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    #[default]
    Block,
    Files,
}

/// A finished backup (its manifest is in the target).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackupRecord {
    pub v: u32,
    pub id: String,
    /// `block` (an image in fixed blocks) or `files` (a tree in content-defined chunks). For a
    /// `files` backup the block figures count chunks (`block_size` is 0).
    #[serde(default)]
    pub kind: BackupKind,
    /// Entries (directories, files, symlinks) of a `files` backup.
    #[serde(default)]
    pub files: u64,
    /// Files of a `files` backup whose chunks were taken from the parent (same size and mtime,
    /// not read).
    #[serde(default)]
    pub reused_files: u64,
    pub volume: String,
    pub volume_id: String,
    pub target: String,
    pub size_bytes: u64,
    pub block_size: u64,
    /// Blocks of the volume (zero blocks included).
    pub blocks: u64,
    /// Blocks holding data.
    pub data_blocks: u64,
    /// Blocks this backup uploaded (the rest were in the target already).
    pub uploaded_blocks: u64,
    /// Compressed bytes this backup uploaded.
    pub uploaded_bytes: u64,
    /// Bytes of data read from the snapshot.
    pub scanned_bytes: u64,
    /// The backup of the same volume in the same target this one was compared against.
    pub parent: Option<String>,
    /// Whole-volume digest (hex).
    pub digest: String,
    pub created_at: i64,
    pub duration_ms: u64,
    /// Blocks known unchanged by FIEMAP against the parent's base snapshot, not read.
    #[serde(default)]
    pub reused_blocks: u64,
    /// On a reflink pool: the snapshot this backup was made from, kept (it costs only the blocks
    /// the volume rewrites) so the next incremental finds unchanged blocks by FIEMAP. Deleted by
    /// the next backup of the volume to the target, or with this backup.
    #[serde(default)]
    pub base_snapshot: Option<String>,
}

/// A backup's manifest in the target: a synthetic full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub id: String,
    pub volume: String,
    pub volume_id: String,
    pub size_bytes: u64,
    pub block_size: u64,
    pub parent: Option<String>,
    pub created_at: i64,
    /// Whole-volume digest (hex), see [`super::engine::volume_digest`].
    pub digest: String,
    /// Every block's blake3 id (hex), `None` for an all-zero block or hole. Empty in a `files`
    /// manifest.
    pub blocks: Vec<Option<String>>,
    /// A `files` manifest (format [`super::files::FORMAT`]): every entry of the tree, parents
    /// before children, sorted by path. The digest is then [`super::files::tree_digest`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<FileEntry>,
    /// A `files` manifest: when the snapshot was taken (seconds). The next backup trusts a file's
    /// size and mtime as "unchanged" only if that mtime is older than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_at: Option<i64>,
}

impl Manifest {
    /// Every chunk or block id the manifest references (with repeats).
    pub fn chunk_ids(&self) -> impl Iterator<Item = &String> {
        self.blocks
            .iter()
            .flatten()
            .chain(self.entries.iter().flat_map(|e| e.chunks.iter().map(|c| &c.id)))
    }
}

/// The type of a tree entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
}

/// One chunk of a file: its blake3 id (of the uncompressed bytes) and length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: String,
    pub len: u32,
}

/// One entry of a file volume's tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the volume's root, `/`-separated, no `.` or `..`.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (with setuid/setgid/sticky), without the type bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Bytes of a file (0 otherwise).
    pub size: u64,
    /// A file's content in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// One block that failed verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BadBlock {
    /// The block's index (block backups) or the entry's index (file backups).
    pub index: u64,
    pub id: String,
    pub reason: String,
    /// File backups: a file the bad chunk belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    pub backup: String,
    pub blocks_checked: u64,
    pub bad_blocks: Vec<BadBlock>,
    /// Whether the whole-volume digest recomputed from the blocks matches the manifest.
    pub digest_ok: bool,
    pub ok: bool,
}
