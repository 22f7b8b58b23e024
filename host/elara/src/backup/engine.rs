//! The block engine: back up an image file to a target, restore one from it, verify one.
//!
//! Backup reads only the data extents of the (snapshot) image (`SEEK_DATA`/`SEEK_HOLE`), cuts them
//! into fixed blocks, hashes each with blake3, skips all-zero blocks and blocks already in the
//! target, compresses the rest with zstd and uploads them, several at a time. Restore fetches,
//! decompresses and checks every block against its id before writing it; verify does the same
//! without writing.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;
use hyper::body::Bytes;
use thiserror::Error;

use super::progress::Progress;
use super::records::{BadBlock, Manifest};
use super::target::{Target, TargetError, block_key};

/// Blocks in flight at once (read + hash + compress on the blocking pool, upload on the runtime).
pub const PARALLEL: usize = 8;
/// zstd level: 1 is the fastest with a useful ratio on volume data.
pub(crate) const ZSTD_LEVEL: i32 = 1;

/// Why a backup, restore or verify failed.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("uploading block {index} ({id}): {source}")]
    Upload {
        index: u64,
        id: String,
        #[source]
        source: Box<TargetError>,
    },
    #[error("block {index} ({id}) is bad: {reason}")]
    BadBlock { index: u64, id: String, reason: String },
    #[error("chunk {id} of {path} is bad: {reason}")]
    BadChunk { path: String, id: String, reason: String },
    #[error("uploading chunk {id} of {path}: {source}")]
    UploadChunk {
        path: String,
        id: String,
        #[source]
        source: Box<TargetError>,
    },
    #[error("the whole-volume digest does not match: manifest says {expected}, the blocks give {actual}")]
    Digest { expected: String, actual: String },
    #[error("manifest {backup}: {reason}")]
    BadManifest { backup: String, reason: String },
}

/// What a backup pass produced (the manifest's block list and figures).
#[derive(Debug, Default)]
pub struct BackupOutcome {
    pub blocks: Vec<Option<String>>,
    pub data_blocks: u64,
    pub uploaded_blocks: u64,
    pub uploaded_bytes: u64,
    pub scanned_bytes: u64,
    /// Blocks known unchanged by FIEMAP, not read.
    pub reused_blocks: u64,
}

/// Called after every block (fault injection and progress persistence hang off it).
pub type Hook = Arc<dyn Fn(&Progress) + Send + Sync>;

/// The whole-volume digest: blake3 over the format tag, the size, the block size, and every
/// block's id in order (32 zero bytes for a zero block). With each block's id checked against its
/// content, this pins the content of the whole volume.
pub fn volume_digest(size: u64, block_size: u64, blocks: &[Option<String>]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(super::FORMAT.as_bytes());
    h.update(&size.to_le_bytes());
    h.update(&block_size.to_le_bytes());
    for b in blocks {
        match b.as_deref().and_then(|id| hex::decode(id).ok()) {
            Some(raw) => h.update(&raw),
            None => h.update(&[0u8; 32]),
        };
    }
    h.finalize().to_hex().to_string()
}

/// blake3 of an all-zero block of `len` bytes (cached for the full block size).
fn zero_id(len: usize, block_size: u64) -> blake3::Hash {
    static FULL: OnceLock<(usize, blake3::Hash)> = OnceLock::new();
    let (n, h) = FULL.get_or_init(|| (block_size as usize, blake3::hash(&vec![0u8; block_size as usize])));
    if *n == len { *h } else { blake3::hash(&vec![0u8; len]) }
}

/// Which blocks of `file` hold any data, by `SEEK_DATA`/`SEEK_HOLE`. A filesystem without hole
/// reporting says "all data", which is still correct (zero blocks are then found by hash).
pub fn data_blocks(file: &File, size: u64, block_size: u64) -> std::io::Result<Vec<bool>> {
    use nix::unistd::{Whence, lseek};
    let nblocks = size.div_ceil(block_size) as usize;
    let mut data = vec![false; nblocks];
    let fd = file.as_fd();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        let start = match lseek(fd, pos, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break, // no data after pos
            Err(e) => return Err(e.into()),
        };
        let end = lseek(fd, start, Whence::SeekHole)?;
        let end = (end as u64).min(size);
        if end as i64 <= start {
            break;
        }
        let first = start as u64 / block_size;
        let last = (end - 1) / block_size;
        for b in first..=last {
            data[b as usize] = true;
        }
        pos = end as i64;
    }
    Ok(data)
}

/// Back up `image` (`size` bytes) to `target`. `known` holds the ids already in the target: those
/// blocks are not uploaded. The manifest is not written here (the caller writes it last).
/// `base`: the reflink snapshot the parent backup was made from, with the parent's blocks: a block
/// whose physical extents are the very same shared extents in both is taken from the parent
/// without being read (FIEMAP).
#[allow(clippy::too_many_arguments)]
pub async fn backup(
    image: &Path,
    size: u64,
    block_size: u64,
    target: &Target,
    known: HashSet<String>,
    base: Option<(PathBuf, Vec<Option<String>>)>,
    progress: Arc<Progress>,
    hook: Hook,
) -> Result<BackupOutcome, EngineError> {
    let io = |op: &'static str| {
        let path = image.to_path_buf();
        move |source| EngineError::Io {
            op,
            path: path.clone(),
            source,
        }
    };
    let file = Arc::new(File::open(image).map_err(io("opening"))?);
    progress.phase("scanning");
    let data = {
        let f = file.clone();
        tokio::task::spawn_blocking(move || data_blocks(&f, size, block_size))
            .await
            .expect("scan task")
            .map_err(io("scanning"))?
    };
    let nblocks = data.len();
    // Unchanged blocks by FIEMAP against the parent's reflink snapshot (when there is one).
    let reused: Vec<Option<Option<String>>> = match base {
        Some((old, parent)) if parent.len() == nblocks => {
            let new = file.clone();
            tokio::task::spawn_blocking(move || {
                let old_ext = File::open(&old).and_then(|f| super::fiemap::extents(&f));
                let new_ext = super::fiemap::extents(&new);
                match (old_ext, new_ext) {
                    (Ok(o), Ok(n)) => (0..nblocks as u64)
                        .map(|i| {
                            let (from, to) = (i * block_size, ((i + 1) * block_size).min(size));
                            super::fiemap::same_block(&o, &n, from, to).then(|| parent[i as usize].clone())
                        })
                        .collect(),
                    (o, n) => {
                        tracing::info!(
                            "FIEMAP unavailable ({:?} / {:?}); reading every block",
                            o.err(),
                            n.err()
                        );
                        vec![None; nblocks]
                    }
                }
            })
            .await
            .expect("fiemap task")
        }
        _ => vec![None; nblocks],
    };
    let to_read: Vec<u64> = (0..nblocks as u64)
        .filter(|&i| data[i as usize] && reused[i as usize].is_none())
        .collect();
    progress
        .blocks_total
        .store(nblocks as u64, std::sync::atomic::Ordering::Relaxed);
    progress.bytes_total.store(size, std::sync::atomic::Ordering::Relaxed);
    // Holes count as done at once.
    let hole_blocks = nblocks as u64 - to_read.len() as u64;
    progress
        .blocks_done
        .fetch_add(hole_blocks, std::sync::atomic::Ordering::Relaxed);
    progress
        .bytes_done
        .fetch_add(hole_blocks * block_size, std::sync::atomic::Ordering::Relaxed);
    progress.phase("uploading");

    let known = Arc::new(known);
    let claimed = Arc::new(Mutex::new(HashSet::<String>::new()));
    let mut out = BackupOutcome {
        blocks: vec![None; nblocks],
        ..Default::default()
    };
    // Reused blocks count as done at once, like holes.
    for (i, r) in reused.iter().enumerate() {
        if let Some(id) = r
            && data[i]
        {
            out.blocks[i] = id.clone();
            out.data_blocks += id.is_some() as u64;
            out.reused_blocks += 1;
            let len = block_size.min(size - i as u64 * block_size);
            progress.blocks_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            progress.bytes_done.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let mut stream = futures::stream::iter(to_read)
        .map(|index| {
            let file = file.clone();
            let known = known.clone();
            let claimed = claimed.clone();
            let target = target.clone();
            let progress = progress.clone();
            let image = image.to_path_buf();
            async move {
                let offset = index * block_size;
                let len = block_size.min(size - offset) as usize;
                // Read, hash, and compress unless the target has it: CPU work on the blocking pool.
                let work =
                    tokio::task::spawn_blocking(move || -> std::io::Result<(Option<String>, Option<Bytes>, usize)> {
                        let mut buf = vec![0u8; len];
                        file.read_exact_at(&mut buf, offset)?;
                        let hash = blake3::hash(&buf);
                        if hash == zero_id(len, block_size) {
                            return Ok((None, None, len));
                        }
                        let id = hash.to_hex().to_string();
                        let fresh = !known.contains(&id) && claimed.lock().expect("claimed").insert(id.clone());
                        if !fresh {
                            return Ok((Some(id), None, len));
                        }
                        let packed = zstd::bulk::compress(&buf, ZSTD_LEVEL)?;
                        Ok((Some(id), Some(Bytes::from(packed)), len))
                    })
                    .await
                    .expect("block task")
                    .map_err(|source| EngineError::Io {
                        op: "reading",
                        path: image,
                        source,
                    })?;
                let (id, packed, len) = work;
                if let (Some(id), Some(packed)) = (&id, packed) {
                    let n = packed.len() as u64;
                    target
                        .put(&block_key(id), packed)
                        .await
                        .map_err(|source| EngineError::Upload {
                            index,
                            id: id.clone(),
                            source: Box::new(source),
                        })?;
                    progress.add_transferred(n);
                }
                progress.add_done(len as u64);
                Ok::<_, EngineError>((index, id, len))
            }
        })
        .buffer_unordered(PARALLEL);
    while let Some(item) = stream.next().await {
        let (index, id, len) = item?;
        out.scanned_bytes += len as u64;
        if id.is_some() {
            out.data_blocks += 1;
        }
        out.blocks[index as usize] = id;
        hook(&progress);
    }
    out.uploaded_blocks = progress.blocks_transferred.load(std::sync::atomic::Ordering::Relaxed);
    out.uploaded_bytes = progress.bytes_transferred.load(std::sync::atomic::Ordering::Relaxed);
    Ok(out)
}

/// Fetch block `index` and check it: decompresses to at most one block, hashes to its id.
async fn fetch_checked(
    target: &Target,
    index: u64,
    id: &str,
    len: usize,
    progress: &Progress,
) -> Result<Vec<u8>, EngineError> {
    fetch_object(target, id, len, progress)
        .await
        .map_err(|reason| EngineError::BadBlock {
            index,
            id: id.to_string(),
            reason,
        })
}

/// Fetch the block or chunk `id` of `len` bytes and check it (decompresses to exactly `len`
/// bytes that hash to `id`); the error says what is wrong with it.
pub(crate) async fn fetch_object(
    target: &Target,
    id: &str,
    len: usize,
    progress: &Progress,
) -> Result<Vec<u8>, String> {
    let packed = target.get(&block_key(id)).await.map_err(|e| e.to_string())?;
    progress.add_transferred(packed.len() as u64);
    let id_owned = id.to_string();
    tokio::task::spawn_blocking(move || {
        let data = zstd::bulk::decompress(&packed, len).map_err(|e| format!("does not decompress: {e}"))?;
        if data.len() != len {
            return Err(format!("holds {} bytes, expected {len}", data.len()));
        }
        let actual = blake3::hash(&data).to_hex().to_string();
        if actual != id_owned {
            return Err(format!("content hashes to {actual}"));
        }
        Ok(data)
    })
    .await
    .expect("verify task")
}

fn check_manifest(m: &Manifest) -> Result<(), EngineError> {
    let bad = |reason: String| EngineError::BadManifest {
        backup: m.id.clone(),
        reason,
    };
    if m.format != super::FORMAT {
        return Err(bad(format!("format {:?}, expected {:?}", m.format, super::FORMAT)));
    }
    if m.block_size == 0 || m.block_size > 64 << 20 || m.blocks.len() as u64 != m.size_bytes.div_ceil(m.block_size) {
        return Err(bad("block size and block count do not fit the volume size".into()));
    }
    if let Some((i, _)) = m
        .blocks
        .iter()
        .enumerate()
        .find(|(_, b)| b.as_ref().is_some_and(|id| id.len() != 64 || hex::decode(id).is_err()))
    {
        return Err(bad(format!("block {i} has a malformed id")));
    }
    Ok(())
}

/// Start writing `[offset, offset + len)` of `file` to disk now, without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): the disk works while the next blocks are fetched,
/// and the final `fsync` finds little left to do. Only a hint: errors surface at that `fsync`.
fn start_writeback(file: &File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range on an open fd with a range inside the file; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Restore a manifest into `image` (an existing, zero-filled file of at least the volume's size).
/// Every block is checked before it is written; the first bad block fails the restore, naming it.
pub async fn restore(
    m: &Manifest,
    target: &Target,
    image: &Path,
    progress: Arc<Progress>,
    hook: Hook,
) -> Result<(), EngineError> {
    check_manifest(m)?;
    let digest = volume_digest(m.size_bytes, m.block_size, &m.blocks);
    if digest != m.digest {
        return Err(EngineError::Digest {
            expected: m.digest.clone(),
            actual: digest,
        });
    }
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .write(true)
            .open(image)
            .map_err(|source| EngineError::Io {
                op: "opening",
                path: image.into(),
                source,
            })?,
    );
    progress
        .blocks_total
        .store(m.blocks.len() as u64, std::sync::atomic::Ordering::Relaxed);
    progress
        .bytes_total
        .store(m.size_bytes, std::sync::atomic::Ordering::Relaxed);
    progress.phase("downloading");
    let (size, bs) = (m.size_bytes, m.block_size);
    let mut stream = futures::stream::iter(m.blocks.iter().cloned().enumerate())
        .map(|(index, id)| {
            let file = file.clone();
            let progress = progress.clone();
            let image = image.to_path_buf();
            async move {
                let index = index as u64;
                let offset = index * bs;
                let len = bs.min(size - offset) as usize;
                if let Some(id) = id {
                    let data = fetch_checked(target, index, &id, len, &progress).await?;
                    tokio::task::spawn_blocking(move || {
                        file.write_all_at(&data, offset)?;
                        start_writeback(&file, offset, data.len());
                        Ok(())
                    })
                    .await
                    .expect("write task")
                    .map_err(|source| EngineError::Io {
                        op: "writing",
                        path: image,
                        source,
                    })?;
                }
                progress.add_done(len as u64);
                Ok::<_, EngineError>(())
            }
        })
        .buffer_unordered(PARALLEL);
    while let Some(r) = stream.next().await {
        r?;
        hook(&progress);
    }
    drop(stream);
    progress.phase("finalising");
    let f = file.clone();
    tokio::task::spawn_blocking(move || f.sync_all())
        .await
        .expect("sync task")
        .map_err(|source| EngineError::Io {
            op: "syncing",
            path: image.into(),
            source,
        })?;
    Ok(())
}

/// Check every block of a manifest (fetch, decompress, hash) and the whole-volume digest.
pub async fn verify(
    m: &Manifest,
    target: &Target,
    progress: Arc<Progress>,
) -> Result<(Vec<BadBlock>, bool), EngineError> {
    check_manifest(m)?;
    let digest_ok = volume_digest(m.size_bytes, m.block_size, &m.blocks) == m.digest;
    progress
        .blocks_total
        .store(m.blocks.len() as u64, std::sync::atomic::Ordering::Relaxed);
    progress
        .bytes_total
        .store(m.size_bytes, std::sync::atomic::Ordering::Relaxed);
    progress.phase("verifying");
    let (size, bs) = (m.size_bytes, m.block_size);
    let mut bad = vec![];
    let mut stream = futures::stream::iter(m.blocks.iter().cloned().enumerate())
        .map(|(index, id)| {
            let progress = progress.clone();
            async move {
                let index = index as u64;
                let len = bs.min(size - index * bs) as usize;
                let r = match id {
                    Some(id) => fetch_checked(target, index, &id, len, &progress).await.map(drop),
                    None => Ok(()),
                };
                progress.add_done(len as u64);
                r
            }
        })
        .buffer_unordered(PARALLEL);
    while let Some(r) = stream.next().await {
        match r {
            Ok(()) => {}
            Err(EngineError::BadBlock { index, id, reason }) => bad.push(BadBlock {
                index,
                id,
                reason,
                path: None,
            }),
            Err(e) => return Err(e),
        }
    }
    bad.sort_by_key(|b| b.index);
    Ok((bad, digest_ok))
}
