//! Backup targets: where blocks and manifests live. A local directory or an S3 bucket/prefix,
//! both seen as a flat key → bytes store.

use std::path::PathBuf;

use hyper::body::Bytes;
use thiserror::Error;

use super::records::{Manifest, TargetLocation};
use super::s3::{S3Client, S3Error};

/// Why a target call failed.
#[derive(Debug, Error)]
pub enum TargetError {
    #[error("{0} is not in the target")]
    NotFound(String),
    #[error("{op} {key}: {source}")]
    Io {
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("manifest {key} is not valid: {reason}")]
    BadManifest { key: String, reason: String },
}

/// An opened target.
#[derive(Clone)]
pub enum Target {
    Local(PathBuf),
    S3(Box<S3Client>),
}

/// The object key of a block. (`id` is a block id, 64 hex digits; anything else still gets a
/// key, never a panic: `get` then finds nothing there.)
pub fn block_key(id: &str) -> String {
    format!("blocks/{}/{id}", id.get(..2).unwrap_or(id))
}

/// The block id `key` names if it is a key Elara writes (`blocks/<aa>/<id>`, `id` 64 lower-case
/// hex digits, `aa` its first two); `None` for anything else found under `blocks/`.
pub fn block_id_of(key: &str) -> Option<&str> {
    let (aa, id) = key.strip_prefix("blocks/")?.split_once('/')?;
    let hex = id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (hex && id.as_bytes()[..2] == *aa.as_bytes()).then_some(id)
}

/// What is under a target's `blocks/`: the blocks, and the keys that are not blocks Elara wrote
/// (planted or left by another tool), which block collection leaves alone.
#[derive(Debug, Default)]
pub struct BlockListing {
    pub ids: std::collections::HashSet<String>,
    pub foreign: Vec<String>,
}

/// The object key of a manifest.
pub fn manifest_key(backup: &str) -> String {
    format!("manifests/{backup}.json")
}

/// The top directory of a local target a key lives under (`DIR/blocks` or `DIR/manifests`).
fn top_dir(root: &std::path::Path, key: &str) -> PathBuf {
    root.join(key.split('/').next().unwrap_or(key))
}

/// The directory whose presence says a local target is still there for `key`: its top
/// directory, but `manifests` for leases (`locks/` is made on first use, so targets added
/// before leases existed keep working).
fn marker_dir(root: &std::path::Path, key: &str) -> PathBuf {
    if key.starts_with(super::lease::PREFIX) {
        root.join("manifests")
    } else {
        top_dir(root, key)
    }
}

fn gone(top: &std::path::Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("the target directory {} is gone (removed or unmounted?)", top.display()),
    )
}

impl Target {
    pub fn open(loc: &TargetLocation) -> Target {
        match loc {
            TargetLocation::Local { path } => Target::Local(PathBuf::from(path)),
            TargetLocation::S3 {
                bucket,
                prefix,
                endpoint,
                region,
                access_key,
                secret_key,
            } => Target::S3(Box::new(S3Client::new(
                endpoint, region, access_key, secret_key, bucket, prefix,
            ))),
        }
    }

    /// Check the target is reachable and writable (creating the directory or bucket if missing).
    pub async fn probe(&self) -> Result<(), TargetError> {
        match self {
            Target::Local(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(dir.join("blocks"))?;
                    std::fs::create_dir_all(dir.join("manifests"))?;
                    let probe = dir.join(".elara-probe");
                    std::fs::write(&probe, b"ok")?;
                    std::fs::remove_file(&probe)
                })
                .await
                .expect("probe task")
                .map_err(|source| TargetError::Io {
                    op: "writing to",
                    key: self.describe(),
                    source,
                })
            }
            Target::S3(s3) => {
                s3.ensure_bucket().await?;
                s3.put("manifests/.elara-probe", Bytes::from_static(b"ok")).await?;
                s3.delete("manifests/.elara-probe").await?;
                Ok(())
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Local(d) => d.display().to_string(),
            Target::S3(s) => s.describe(),
        }
    }

    /// Write an object; a local write is atomic (temp file + rename), so a crash leaves no torn object.
    /// A local target's `blocks/` and `manifests/` must still be there (a directory that vanished
    /// or was unmounted is an error, never silently made again on another filesystem).
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), TargetError> {
        match self {
            Target::Local(dir) => {
                let path = dir.join(key);
                let top = marker_dir(dir, key);
                let key = key.to_string();
                tokio::task::spawn_blocking(move || {
                    let parent = path.parent().expect("key has a parent");
                    if !top.is_dir() {
                        return Err(gone(&top));
                    }
                    let write = || {
                        std::fs::create_dir_all(parent)?;
                        let tmp = parent.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
                        std::fs::write(&tmp, &data)?;
                        std::fs::rename(&tmp, &path)
                    };
                    // The target may go between the check and the write: say so, not just ENOENT.
                    write().map_err(|e| if top.is_dir() { e } else { gone(&top) })
                })
                .await
                .expect("put task")
                .map_err(|source| TargetError::Io {
                    op: "writing",
                    key,
                    source,
                })
            }
            Target::S3(s3) => Ok(s3.put(key, data).await?),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, TargetError> {
        match self {
            Target::Local(dir) => {
                let path = dir.join(key);
                let k = key.to_string();
                tokio::task::spawn_blocking(move || std::fs::read(&path))
                    .await
                    .expect("get task")
                    .map(Bytes::from)
                    .map_err(|source| {
                        if source.kind() == std::io::ErrorKind::NotFound {
                            TargetError::NotFound(k)
                        } else {
                            TargetError::Io {
                                op: "reading",
                                key: k,
                                source,
                            }
                        }
                    })
            }
            Target::S3(s3) => s3.get(key).await?.ok_or_else(|| TargetError::NotFound(key.to_string())),
        }
    }

    /// Remove an object; a missing one counts as removed.
    pub async fn delete(&self, key: &str) -> Result<(), TargetError> {
        match self {
            Target::Local(dir) => match tokio::fs::remove_file(dir.join(key)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TargetError::Io {
                    op: "removing",
                    key: key.into(),
                    source: e,
                }),
                _ => Ok(()),
            },
            Target::S3(s3) => Ok(s3.delete(key).await?),
        }
    }

    /// Every key under `prefix` (`blocks/` or `manifests/`), relative to the target's root.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, TargetError> {
        match self {
            Target::Local(dir) => {
                let root = dir.clone();
                let prefix = prefix.to_string();
                tokio::task::spawn_blocking(move || {
                    let top = marker_dir(&root, &prefix);
                    if !top.is_dir() {
                        return Err(TargetError::Io {
                            op: "listing",
                            key: prefix.clone(),
                            source: gone(&top),
                        });
                    }
                    let mut out = vec![];
                    let mut stack = vec![root.join(&prefix)];
                    while let Some(d) = stack.pop() {
                        let entries = match std::fs::read_dir(&d) {
                            Ok(e) => e,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                            Err(e) => {
                                return Err(TargetError::Io {
                                    op: "listing",
                                    key: d.display().to_string(),
                                    source: e,
                                });
                            }
                        };
                        for entry in entries.flatten() {
                            let p = entry.path();
                            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                                stack.push(p);
                            } else if !entry.file_name().to_string_lossy().starts_with(".tmp-")
                                && let Ok(rel) = p.strip_prefix(&root)
                            {
                                out.push(rel.to_string_lossy().into_owned());
                            }
                        }
                    }
                    Ok(out)
                })
                .await
                .expect("list task")
            }
            Target::S3(s3) => Ok(s3.list(prefix).await?),
        }
    }

    /// The ids of every block in the target (keys that are not blocks are not counted).
    pub async fn block_ids(&self) -> Result<std::collections::HashSet<String>, TargetError> {
        Ok(self.blocks().await?.ids)
    }

    /// Every key under `blocks/`, sorted into blocks and foreign keys.
    pub async fn blocks(&self) -> Result<BlockListing, TargetError> {
        let mut out = BlockListing::default();
        for key in self.list("blocks/").await? {
            match block_id_of(&key) {
                Some(id) => drop(out.ids.insert(id.to_string())),
                None => out.foreign.push(key),
            }
        }
        Ok(out)
    }

    /// The ids of every manifest in the target.
    pub async fn manifest_ids(&self) -> Result<Vec<String>, TargetError> {
        Ok(self
            .list("manifests/")
            .await?
            .into_iter()
            .filter_map(|k| {
                k.strip_prefix("manifests/")
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_string)
            })
            .collect())
    }

    pub async fn manifest(&self, backup: &str) -> Result<Manifest, TargetError> {
        let key = manifest_key(backup);
        let bytes = self.get(&key).await?;
        serde_json::from_slice(&bytes).map_err(|e| TargetError::BadManifest {
            key,
            reason: e.to_string(),
        })
    }
}
