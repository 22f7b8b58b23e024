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

/// A finished backup (its manifest is in the target).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackupRecord {
    pub v: u32,
    pub id: String,
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
    /// Every block's blake3 id (hex), `None` for an all-zero block or hole.
    pub blocks: Vec<Option<String>>,
}

/// One block that failed verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BadBlock {
    pub index: u64,
    pub id: String,
    pub reason: String,
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
