//! The records Elara keeps in its metadata store, and the keys they live under.
//!
//! Every record is JSON with a schema version `v`. A record is changed only by a compare-and-swap on
//! its store revision, so two daemons never apply conflicting changes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::attach::AttachState;

pub const SCHEMA: u32 = 1;

/// Store keys, all under `/elara/v1/`.
pub mod keys {
    use elara_store::PREFIX;

    pub fn volumes() -> String {
        format!("{PREFIX}volumes/")
    }
    pub fn volume(name: &str) -> String {
        format!("{PREFIX}volumes/{name}")
    }
    pub fn snapshots() -> String {
        format!("{PREFIX}snapshots/")
    }
    pub fn snapshot(name: &str) -> String {
        format!("{PREFIX}snapshots/{name}")
    }
    pub fn nodes() -> String {
        format!("{PREFIX}nodes/")
    }
    pub fn node(name: &str) -> String {
        format!("{PREFIX}nodes/{name}")
    }
    /// A leased key that exists while the node's daemon is alive.
    pub fn node_alive(name: &str) -> String {
        format!("{PREFIX}alive/{name}")
    }
    pub fn alive() -> String {
        format!("{PREFIX}alive/")
    }
    pub fn drivers() -> String {
        format!("{PREFIX}drivers/")
    }
    pub fn driver(name: &str) -> String {
        format!("{PREFIX}drivers/{name}")
    }
    pub fn blob_chunks(sha256: &str) -> String {
        format!("{PREFIX}blobs/{sha256}/")
    }
    pub fn blob_chunk(sha256: &str, index: usize) -> String {
        format!("{PREFIX}blobs/{sha256}/{index:06}")
    }
    pub fn volume_types() -> String {
        format!("{PREFIX}types/")
    }
    pub fn volume_type(name: &str) -> String {
        format!("{PREFIX}types/{name}")
    }
    pub fn backends() -> String {
        format!("{PREFIX}backends/")
    }
    pub fn backend(name: &str) -> String {
        format!("{PREFIX}backends/{name}")
    }
    pub fn pools() -> String {
        format!("{PREFIX}pools/")
    }
    pub fn backend_pools(backend: &str) -> String {
        format!("{PREFIX}pools/{backend}/")
    }
    /// `node` is the node of a node-scoped backend, `-` for a cluster-wide one.
    pub fn pool(backend: &str, node: &str, pool: &str) -> String {
        format!("{PREFIX}pools/{backend}/{node}/{pool}")
    }
    /// Marks that the default `local` backend was made once (so removing it sticks).
    pub fn default_backend_made() -> String {
        format!("{PREFIX}meta/default-backend-made")
    }
    pub fn attachments(volume: &str) -> String {
        format!("{PREFIX}attachments/{volume}/")
    }
    pub fn all_attachments() -> String {
        format!("{PREFIX}attachments/")
    }
    pub fn attachment(volume: &str, node: &str) -> String {
        format!("{PREFIX}attachments/{volume}/{node}")
    }
    pub fn ops() -> String {
        format!("{PREFIX}ops/")
    }
    pub fn op(id: &str) -> String {
        format!("{PREFIX}ops/{id}")
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Filesystem made on a block volume at its first attach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    #[default]
    Ext4,
    Xfs,
}

/// The attach layer has its own filesystem type (it imports nothing of the daemon's model).
impl From<FsType> for crate::attach::FsType {
    fn from(f: FsType) -> Self {
        match f {
            FsType::Ext4 => crate::attach::FsType::Ext4,
            FsType::Xfs => crate::attach::FsType::Xfs,
        }
    }
}

impl std::fmt::Display for FsType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        })
    }
}

/// Where a volume is in its life. Transitions happen only under the volume's operation lock
/// (`VolumeRecord::op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumeState {
    /// The driver is making it.
    Creating,
    /// Ready for use (possibly mounted: see its attachments).
    Available,
    /// Being removed.
    Deleting,
    /// A create or delete failed and needs the reconciler.
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QosSpec {
    pub iops: Option<u64>,
    pub bandwidth_bytes_per_sec: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VolumeRecord {
    pub v: u32,
    /// Elara's id, handed to the driver as the idempotency key.
    pub id: String,
    pub name: String,
    pub backend: String,
    pub pool: String,
    /// For node-scoped backends (the local driver): the node that holds the data.
    pub node: Option<String>,
    pub size_bytes: u64,
    pub fs: FsType,
    pub labels: BTreeMap<String, String>,
    pub qos: Option<QosSpec>,
    pub volume_type: Option<String>,
    /// The snapshot it was restored from.
    pub source_snapshot: Option<String>,
    pub state: VolumeState,
    /// The operation holding this volume's lock, if any.
    pub op: Option<String>,
    /// Last error, for `inspect`.
    pub error: Option<String>,
    /// The backend's own handle.
    pub backend_ref: Option<String>,
    /// Whether a filesystem has been made on it (block volumes).
    pub formatted: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotState {
    Creating,
    Available,
    Deleting,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotRecord {
    pub v: u32,
    pub id: String,
    pub name: String,
    pub volume: String,
    pub volume_id: String,
    pub backend: String,
    pub node: Option<String>,
    pub size_bytes: u64,
    pub fs: FsType,
    pub state: SnapshotState,
    pub op: Option<String>,
    pub error: Option<String>,
    pub backend_ref: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeRecord {
    pub v: u32,
    pub name: String,
    pub id: String,
    pub hostname: String,
    pub version: String,
    pub registered_at: i64,
    pub last_start: Option<i64>,
    /// Set by `node register` for a node that has not started yet.
    pub manual: bool,
}

/// A node as shown to users, with its liveness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    #[serde(flatten)]
    pub record: NodeRecord,
    /// `up` while its daemon keeps its lease, else `down`.
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DriverRecord {
    pub v: u32,
    pub name: String,
    pub sha256: String,
    pub size: usize,
    pub chunks: usize,
    pub wit_version: String,
    /// The driver's `info()` at install time.
    #[schema(value_type = Object)]
    pub info: serde_json::Value,
    pub builtin: bool,
    pub installed_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackendLimits {
    pub memory_bytes: u64,
    pub call_timeout_secs: u64,
    pub cpu_budget_secs: u64,
}

impl Default for BackendLimits {
    fn default() -> Self {
        BackendLimits {
            memory_bytes: 256 << 20,
            call_timeout_secs: 300,
            cpu_budget_secs: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackendRecord {
    pub v: u32,
    pub name: String,
    pub driver: String,
    /// Driver configuration. Secret values are kept here and never returned by the API.
    pub config: BTreeMap<String, String>,
    /// `host[:port]` the sandbox may reach.
    pub allow_hosts: Vec<String>,
    pub limits: BackendLimits,
    /// `node`: data lives on one node (local image files); `cluster`: reachable from every node.
    pub scope: Scope,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Node,
    Cluster,
}

/// A pool as last reported by its backend's driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolRecord {
    pub v: u32,
    pub backend: String,
    pub driver: String,
    /// For node-scoped backends, the node whose pool this is.
    pub node: Option<String>,
    #[schema(value_type = Object)]
    pub pool: elara_runtime::Pool,
    pub updated_at: i64,
}

/// Who holds an attachment open: a REST mount or a Docker mount ID.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Holder {
    pub since: i64,
    /// A bind-mount target chosen by the user (REST mounts with `path`).
    #[schema(value_type = Option<String>)]
    pub path: Option<PathBuf>,
    /// The kernel's id of the bind mount Elara made at `path`: unmount removes that mount only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_id: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttachmentState {
    Attaching,
    Attached,
    Detaching,
    /// Attached, but what served it on the node is gone (its helper process exited): its I/O
    /// fails. The next mount brings it up anew; the last unmount takes it down.
    Failed,
}

/// A volume brought up on one node; reference-counted by its holders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttachmentRecord {
    pub v: u32,
    pub volume: String,
    pub volume_id: String,
    pub node: String,
    pub state: AttachmentState,
    #[schema(value_type = Object)]
    pub connection: Option<elara_runtime::Connection>,
    #[schema(value_type = Object)]
    pub host: Option<AttachState>,
    pub holders: BTreeMap<String, Holder>,
    pub updated_at: i64,
    /// Why the attachment failed (state `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    CreateVolume,
    DeleteVolume,
    ResizeVolume,
    CreateSnapshot,
    DeleteSnapshot,
    Attach,
    Detach,
    /// A block backup to a backup target (see `ops::backups`).
    CreateBackup,
    /// A restore of a backup into a new volume.
    RestoreBackup,
}

/// An intent record: written in the same transaction that moves an object into a transitional
/// state, updated at each step, removed in the transaction that finishes the operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OpRecord {
    pub v: u32,
    pub id: String,
    pub kind: OpKind,
    pub volume: String,
    pub snapshot: Option<String>,
    /// The last step reached (`intent`, `driver-done`, ...).
    pub step: String,
    /// The node and lease of the daemon running it. A reconciler takes over when the lease is gone.
    pub owner: String,
    /// The owning process (a fresh id per daemon start); empty once handed to the reconciler.
    pub owner_incarnation: String,
    pub owner_lease: i64,
    /// Parameters the reconciler needs to finish or undo it.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub started_at: i64,
    pub updated_at: i64,
    pub last_error: Option<String>,
}

/// A volume type (Cinder) / profile: extra specs the scheduler matches against pool capabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VolumeTypeRecord {
    pub v: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Extra specs in Cinder's syntax: key → `>= 1000`, `<is> True`, `s== file`, a literal …
    pub specs: BTreeMap<String, String>,
    pub created_at: i64,
}
