//! The file engine: back up a mounted file tree (a file volume's snapshot, mounted read-only) to a
//! target, restore one into an empty directory (a new volume, mounted), verify one.
//!
//! Backup walks the tree (no symlink is followed), records every directory, file and symlink
//! with its mode, owner and mtime, and cuts each file into content-defined chunks (FastCDC 2020,
//! [`CHUNK_MIN`]/[`CHUNK_AVG`]/[`CHUNK_MAX`]): an insert or a delete inside a file moves the
//! cut points only near the change, so the other chunks keep their ids. Chunks are named by the
//! blake3 of their bytes, zstd-compressed, and stored in the same `blocks/` space as volume
//! blocks, so they dedup against every backup in the target. A file whose size and mtime match
//! the parent backup's entry (and whose mtime is older than the parent's snapshot, so a change
//! in the same second cannot hide) keeps the parent's chunks without being read.
//!
//! Restore checks the manifest (paths confined to the root, parents before children), creates
//! the directories (private until the end) and symlinks, writes each file from its chunks (each
//! checked against its id before it is written) and sets its owner, mode and mtime, then sets
//! the directories' and symlinks', children before parents. All of it through descriptors
//! walked from the root's without following a symlink (see [`Root`]), so someone swapping
//! entries under a running restore cannot make it touch anything outside the tree. Verify
//! fetches and checks every distinct chunk and the tree digest, writing nothing.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use hyper::body::Bytes;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::engine::{EngineError, Hook, PARALLEL, ZSTD_LEVEL, fetch_object};
use super::progress::Progress;
use super::records::{BadBlock, ChunkRef, EntryKind, FileEntry, Manifest};
use super::target::{Target, block_key};

/// Format tag of a file-tree manifest.
pub const FORMAT: &str = "elara-files/1";
/// Smallest chunk FastCDC cuts (except a file's last).
pub const CHUNK_MIN: u32 = 256 << 10;
/// Average chunk size FastCDC aims for.
pub const CHUNK_AVG: u32 = 1 << 20;
/// Largest chunk.
pub const CHUNK_MAX: u32 = 4 << 20;
/// Files restored at once; each fetches its chunks `PARALLEL / FILES_PARALLEL` ahead, in order.
const FILES_PARALLEL: usize = 4;

/// The whole-tree digest: blake3 over the format tag and every entry (its JSON, length-prefixed)
/// in order. With every chunk checked against its id, this pins the whole tree: names, types,
/// modes, owners, mtimes, symlink targets and every file's content.
pub fn tree_digest(entries: &[FileEntry]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(FORMAT.as_bytes());
    for e in entries {
        let line = serde_json::to_vec(e).expect("an entry serialises");
        h.update(&(line.len() as u64).to_le_bytes());
        h.update(&line);
    }
    h.finalize().to_hex().to_string()
}

/// The parent backup a new one is compared against.
pub struct Parent {
    pub entries: Vec<FileEntry>,
    /// When the parent's snapshot was taken (seconds).
    pub snapshot_at: i64,
}

/// What a file backup pass produced.
#[derive(Debug, Default)]
pub struct FilesOutcome {
    pub entries: Vec<FileEntry>,
    /// Chunk references over all files (with repeats).
    pub chunks: u64,
    pub uploaded_chunks: u64,
    pub uploaded_bytes: u64,
    /// Bytes of file content read.
    pub scanned_bytes: u64,
    /// Files whose chunks came from the parent without being read.
    pub reused_files: u64,
    /// Entries that are neither directory, file nor symlink (sockets, fifos, devices): not kept.
    pub skipped: u64,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + use<> {
    let path = path.to_path_buf();
    move |source| EngineError::Io { op, path, source }
}

/// Walk `root` (not following symlinks): every entry with its metadata, parents before children,
/// siblings by name. File chunks are left empty.
fn scan(root: &Path) -> Result<(Vec<FileEntry>, u64), EngineError> {
    let mut out = vec![];
    let mut skipped = 0;
    for item in walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
    {
        let item = item.map_err(|e| {
            let path = e.path().map(Path::to_path_buf).unwrap_or_else(|| root.to_path_buf());
            EngineError::Io {
                op: "walking",
                path,
                source: e.into(),
            }
        })?;
        let rel = item.path().strip_prefix(root).expect("walkdir stays under its root");
        let rel = rel.to_str().ok_or_else(|| EngineError::Io {
            op: "backing up",
            path: item.path().to_path_buf(),
            source: std::io::Error::other("the name is not UTF-8 (not supported by file backups yet)"),
        })?;
        let meta = item.metadata().map_err(|e| EngineError::Io {
            op: "reading metadata of",
            path: item.path().to_path_buf(),
            source: e.into(),
        })?;
        let ft = item.file_type();
        let (kind, size, target) = if ft.is_dir() {
            (EntryKind::Dir, 0, None)
        } else if ft.is_file() {
            (EntryKind::File, meta.len(), None)
        } else if ft.is_symlink() {
            let t = std::fs::read_link(item.path()).map_err(io_err("reading the link", item.path()))?;
            let t = t.into_os_string().into_string().map_err(|_| EngineError::Io {
                op: "backing up",
                path: item.path().to_path_buf(),
                source: std::io::Error::other("the symlink target is not UTF-8 (not supported by file backups yet)"),
            })?;
            (EntryKind::Symlink, 0, Some(t))
        } else {
            tracing::warn!(path = %item.path().display(), "not a directory, file or symlink; not backed up");
            skipped += 1;
            continue;
        };
        out.push(FileEntry {
            path: rel.to_string(),
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec() as u32,
            size,
            chunks: vec![],
            target,
        });
    }
    Ok((out, skipped))
}

/// A chunk cut from a file, on its way to be hashed, compressed and uploaded.
struct Piece {
    file: usize,
    seq: usize,
    data: Vec<u8>,
}

/// Back up the tree at `root` to `target`. `known`: ids already in the target (not uploaded).
/// The manifest is not written here (the caller writes it last).
pub async fn backup(
    root: &Path,
    target: &Target,
    known: HashSet<String>,
    parent: Option<Parent>,
    progress: Arc<Progress>,
    hook: Hook,
) -> Result<FilesOutcome, EngineError> {
    progress.phase("scanning");
    let r = root.to_path_buf();
    let (mut entries, skipped) = tokio::task::spawn_blocking(move || scan(&r))
        .await
        .expect("scan task")?;
    let mut out = FilesOutcome {
        skipped,
        ..Default::default()
    };

    // Unchanged files keep the parent's chunks.
    if let Some(p) = &parent {
        let old: HashMap<&str, &FileEntry> = p
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| (e.path.as_str(), e))
            .collect();
        for e in entries.iter_mut().filter(|e| e.kind == EntryKind::File && e.size > 0) {
            if let Some(o) = old.get(e.path.as_str())
                && o.size == e.size
                && (o.mtime, o.mtime_nsec) == (e.mtime, e.mtime_nsec)
                && e.mtime < p.snapshot_at - 1
                && o.chunks.iter().map(|c| c.len as u64).sum::<u64>() == e.size
            {
                e.chunks = o.chunks.clone();
                out.reused_files += 1;
            }
        }
    }
    let total: u64 = entries.iter().map(|e| e.size).sum();
    progress.bytes_total.store(total, Relaxed);
    for e in entries.iter().filter(|e| !e.chunks.is_empty()) {
        progress.blocks_total.fetch_add(e.chunks.len() as u64, Relaxed);
        progress.blocks_done.fetch_add(e.chunks.len() as u64, Relaxed);
        progress.bytes_done.fetch_add(e.size, Relaxed);
    }
    let todo: Vec<(usize, PathBuf)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == EntryKind::File && e.size > 0 && e.chunks.is_empty())
        .map(|(i, e)| (i, root.join(&e.path)))
        .collect();
    let paths: Arc<Vec<String>> = Arc::new(entries.iter().map(|e| e.path.clone()).collect());
    progress.phase("uploading");

    // One thread reads and cuts the files in order; hashing, compression and uploads run
    // `PARALLEL` at a time behind it (the channel bounds the chunks held in memory).
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Piece, EngineError>>(PARALLEL);
    let prog = progress.clone();
    let chunker = tokio::task::spawn_blocking(move || {
        for (file, path) in todo {
            let f = match File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.blocking_send(Err(io_err("opening", &path)(e)));
                    return;
                }
            };
            let cdc = fastcdc::v2020::StreamCDC::new(f, CHUNK_MIN as usize, CHUNK_AVG as usize, CHUNK_MAX as usize);
            for (seq, c) in cdc.enumerate() {
                let piece = c
                    .map(|c| Piece {
                        file,
                        seq,
                        data: c.data,
                    })
                    .map_err(|e| io_err("reading", &path)(e.into()));
                let failed = piece.is_err();
                prog.blocks_total.fetch_add(1, Relaxed);
                if tx.blocking_send(piece).is_err() || failed {
                    return;
                }
            }
        }
    });
    let known = Arc::new(known);
    let claimed = Arc::new(Mutex::new(HashSet::<String>::new()));
    let pieces = Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|p| (p, rx))
    }));
    let mut results = pieces
        .map(|piece| {
            let (known, claimed, target, progress, paths) = (
                known.clone(),
                claimed.clone(),
                target.clone(),
                progress.clone(),
                paths.clone(),
            );
            async move {
                let Piece { file, seq, data } = piece?;
                let len = data.len();
                let path = paths[file].clone();
                let work = tokio::task::spawn_blocking(move || -> std::io::Result<(String, Option<Bytes>)> {
                    let id = blake3::hash(&data).to_hex().to_string();
                    let fresh = !known.contains(&id) && claimed.lock().expect("claimed").insert(id.clone());
                    let packed = if fresh {
                        Some(Bytes::from(zstd::bulk::compress(&data, ZSTD_LEVEL)?))
                    } else {
                        None
                    };
                    Ok((id, packed))
                });
                let (id, packed) = work.await.expect("chunk task").map_err(|source| EngineError::Io {
                    op: "compressing",
                    path: path.clone().into(),
                    source,
                })?;
                if let Some(packed) = packed {
                    let n = packed.len() as u64;
                    target
                        .put(&block_key(&id), packed)
                        .await
                        .map_err(|source| EngineError::UploadChunk {
                            path,
                            id: id.clone(),
                            source: Box::new(source),
                        })?;
                    progress.add_transferred(n);
                }
                progress.add_done(len as u64);
                Ok::<_, EngineError>((file, seq, ChunkRef { id, len: len as u32 }))
            }
        })
        .buffer_unordered(PARALLEL);
    let mut got: HashMap<usize, Vec<(usize, ChunkRef)>> = HashMap::new();
    let mut failure = None;
    while let Some(r) = results.next().await {
        match r {
            Ok((file, seq, c)) => {
                out.scanned_bytes += c.len as u64;
                got.entry(file).or_default().push((seq, c));
                hook(&progress);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    // Stop the chunker and wait for it: it holds files of the tree open (the caller unmounts next).
    drop(results);
    chunker.await.expect("chunker task");
    if let Some(e) = failure {
        return Err(e);
    }
    for (file, mut chunks) in got {
        chunks.sort_by_key(|(seq, _)| *seq);
        let e = &mut entries[file];
        e.chunks = chunks.into_iter().map(|(_, c)| c).collect();
        // The content is what was read (a snapshot does not change under us; this keeps the
        // manifest consistent even if it did).
        e.size = e.chunks.iter().map(|c| c.len as u64).sum();
    }
    out.chunks = entries.iter().map(|e| e.chunks.len() as u64).sum();
    out.uploaded_chunks = progress.blocks_transferred.load(Relaxed);
    out.uploaded_bytes = progress.bytes_transferred.load(Relaxed);
    out.entries = entries;
    Ok(out)
}

/// Whether `path` is a clean relative path: not empty, no leading `/`, no empty, `.` or `..`
/// component, no NUL.
fn clean_path(path: &str) -> bool {
    !path.is_empty() && !path.contains('\0') && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Check a file manifest before anything is written from it: format, paths confined and each
/// parent a directory listed earlier (so no entry can be written through a symlink), unique
/// paths, well-formed chunks adding up to each file's size.
pub fn check_manifest(m: &Manifest) -> Result<(), EngineError> {
    let bad = |reason: String| EngineError::BadManifest {
        backup: m.id.clone(),
        reason,
    };
    if m.format != FORMAT {
        return Err(bad(format!("format {:?}, expected {FORMAT:?}", m.format)));
    }
    let mut dirs: HashSet<&str> = HashSet::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for e in &m.entries {
        let p = e.path.as_str();
        if !clean_path(p) {
            return Err(bad(format!("entry {p:?} is not a clean relative path")));
        }
        if !seen.insert(p) {
            return Err(bad(format!("entry {p:?} is listed twice")));
        }
        if let Some((parent, _)) = p.rsplit_once('/')
            && !dirs.contains(parent)
        {
            return Err(bad(format!(
                "entry {p:?} comes before its directory {parent:?}, or that is not a directory"
            )));
        }
        if e.mode > 0o7777 {
            return Err(bad(format!("entry {p:?} has mode {:o}", e.mode)));
        }
        match e.kind {
            EntryKind::Dir => {
                dirs.insert(p);
            }
            EntryKind::Symlink if e.target.as_deref().is_none_or(|t| t.is_empty() || t.contains('\0')) => {
                return Err(bad(format!("symlink {p:?} has no target")));
            }
            EntryKind::File => {
                if let Some(c) = e
                    .chunks
                    .iter()
                    .find(|c| c.id.len() != 64 || hex::decode(&c.id).is_err() || c.len == 0 || c.len > CHUNK_MAX)
                {
                    return Err(bad(format!(
                        "file {p:?} has a malformed chunk {:?} ({} bytes)",
                        c.id, c.len
                    )));
                }
                let sum: u64 = e.chunks.iter().map(|c| c.len as u64).sum();
                if sum != e.size {
                    return Err(bad(format!(
                        "file {p:?}: its chunks hold {sum} bytes, its size is {}",
                        e.size
                    )));
                }
            }
            _ => {}
        }
        if e.kind != EntryKind::File && !e.chunks.is_empty() {
            return Err(bad(format!("entry {p:?} is not a file but has chunks")));
        }
    }
    Ok(())
}

/// Restore a file manifest into `root` (an empty directory: a new volume's mountpoint). Every
/// chunk is checked before it is written; the first bad one fails the restore, naming it.
pub async fn restore(
    m: &Manifest,
    target: &Target,
    root: &Path,
    progress: Arc<Progress>,
    hook: Hook,
) -> Result<(), EngineError> {
    check_manifest(m)?;
    let digest = tree_digest(&m.entries);
    if digest != m.digest {
        return Err(EngineError::Digest {
            expected: m.digest.clone(),
            actual: digest,
        });
    }
    progress
        .bytes_total
        .store(m.entries.iter().map(|e| e.size).sum(), Relaxed);
    progress
        .blocks_total
        .store(m.entries.iter().map(|e| e.chunks.len() as u64).sum(), Relaxed);
    progress.phase("downloading");
    let root = Arc::new(Root::open(root)?);

    // Directories and symlinks first (parents come before children in the manifest).
    let (r, entries) = (root.clone(), m.entries.clone());
    tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
        for e in &entries {
            let (parent, name) = r.parent(&e.path)?;
            let fail = |err: nix::Error| io_err("creating", &r.path.join(&e.path))(err.into());
            match e.kind {
                // Private (0700) until its own mode is set, last.
                EntryKind::Dir => match nix::sys::stat::mkdirat(&parent, name, Mode::S_IRWXU) {
                    // A fresh ext4 volume already has lost+found: a directory already there is
                    // used, if it is one (opened without following a symlink).
                    Err(nix::Error::EEXIST) => drop(openat(&parent, name, DIR_FLAGS, Mode::empty()).map_err(fail)?),
                    other => other.map_err(fail)?,
                },
                EntryKind::Symlink => {
                    nix::unistd::symlinkat(e.target.as_deref().unwrap_or_default(), &parent, name).map_err(fail)?
                }
                EntryKind::File => {}
            }
        }
        Ok(())
    })
    .await
    .expect("mkdir task")?;

    // Files, a few at a time, each written in order from chunks fetched ahead, then given its
    // owner, mode and mtime through its own descriptor.
    let ahead = (PARALLEL / FILES_PARALLEL).max(1);
    // Owned entries and target: the futures borrow nothing (they must be `Send` for any lifetime).
    let todo: Vec<FileEntry> = m
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .cloned()
        .collect();
    let mut files = futures::stream::iter(todo)
        .map(|e| {
            let progress = progress.clone();
            let hook = hook.clone();
            let target = target.clone();
            let root = root.clone();
            let path = root.path.join(&e.path);
            async move {
                let (r, rel) = (root.clone(), e.path.clone());
                let file = tokio::task::spawn_blocking(move || -> Result<File, EngineError> {
                    let (parent, name) = r.parent(&rel)?;
                    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                    let fd = openat(&parent, name, flags, Mode::S_IRUSR | Mode::S_IWUSR)
                        .map_err(|err| io_err("creating", &r.path.join(&rel))(err.into()))?;
                    Ok(File::from(fd))
                })
                .await
                .expect("create task")?;
                let file = Arc::new(file);
                let mut chunks = futures::stream::iter(e.chunks.clone())
                    .map(|c| {
                        let (progress, target, path) = (progress.clone(), target.clone(), e.path.clone());
                        async move {
                            fetch_object(&target, &c.id, c.len as usize, &progress)
                                .await
                                .map_err(|reason| EngineError::BadChunk {
                                    path,
                                    id: c.id.clone(),
                                    reason,
                                })
                        }
                    })
                    .buffered(ahead);
                let mut offset = 0u64;
                while let Some(data) = chunks.next().await {
                    let data = data?;
                    let (f, len) = (file.clone(), data.len() as u64);
                    tokio::task::spawn_blocking(move || f.write_all_at(&data, offset))
                        .await
                        .expect("write task")
                        .map_err(io_err("writing", &path))?;
                    offset += len;
                    progress.add_done(len);
                    hook(&progress);
                }
                drop(chunks);
                // Owner, mode, mtime, then fsync: on s3fs the fsync is when the object (with its
                // metadata: s3fs drops what is set on an open file after its last upload) is
                // uploaded, and where its errors show.
                let (f, p) = (file.clone(), path.clone());
                tokio::task::spawn_blocking(move || {
                    set_meta(f.as_fd(), &e, &p)?;
                    f.sync_all().map_err(io_err("syncing", &p))
                })
                .await
                .expect("sync task")?;
                Ok::<_, EngineError>(())
            }
        })
        .buffer_unordered(FILES_PARALLEL);
    while let Some(r) = files.next().await {
        r?;
    }
    drop(files);

    // Directories' and symlinks' owners, modes, mtimes: children before parents (writing into a
    // directory changes its mtime).
    progress.phase("finalising");
    let (r, entries) = (root.clone(), m.entries.clone());
    tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
        for e in entries.iter().rev() {
            let path = r.path.join(&e.path);
            match e.kind {
                EntryKind::File => {}
                EntryKind::Dir => set_meta(r.dir(&e.path)?.as_fd(), e, &path)?,
                EntryKind::Symlink => {
                    // On the link itself (AT_SYMLINK_NOFOLLOW). Not every filesystem keeps a
                    // symlink's owner and times (s3fs does not): best effort.
                    let (parent, name) = r.parent(&e.path)?;
                    let (uid, gid) = (Some(Uid::from_raw(e.uid)), Some(Gid::from_raw(e.gid)));
                    if let Err(err) = nix::unistd::fchownat(&parent, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW) {
                        tracing::debug!(path = %path.display(), "symlink owner not restored: {err}");
                    }
                    let mtime = TimeSpec::new(e.mtime, e.mtime_nsec as _);
                    if let Err(err) = utimensat(&parent, name, &mtime, &mtime, UtimensatFlags::NoFollowSymlink) {
                        tracing::debug!(path = %path.display(), "symlink mtime not restored: {err}");
                    }
                }
            }
        }
        nix::unistd::syncfs(&r.fd).map_err(|err| io_err("syncing", &r.path)(err.into()))
    })
    .await
    .expect("metadata task")
}

/// Opening a directory of the tree being restored: never through a symlink.
const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// The root of a restore, opened once. Every entry is reached from it one component at a time,
/// each directory opened relative to its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY`,
/// and every change is made through a descriptor (or `AT_SYMLINK_NOFOLLOW`), never by a path:
/// whoever can write into the tree while it is restored (a local user, through the volume's
/// mount) and swaps an entry for a symlink makes the restore fail, never write, chown or chmod
/// anything outside it.
struct Root {
    fd: OwnedFd,
    /// For messages only.
    path: PathBuf,
}

impl Root {
    fn open(path: &Path) -> Result<Root, EngineError> {
        let fd = nix::fcntl::open(path, DIR_FLAGS, Mode::empty()).map_err(|err| io_err("opening", path)(err.into()))?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The directory at `rel` (a clean relative path, see [`check_manifest`]; empty: the root).
    fn dir(&self, rel: &str) -> Result<OwnedFd, EngineError> {
        let mut fd = self.fd.try_clone().map_err(io_err("opening", &self.path))?;
        let mut walked = self.path.clone();
        for c in rel.split('/').filter(|c| !c.is_empty()) {
            walked.push(c);
            // ELOOP or ENOTDIR if the component is not (or no longer) a directory.
            fd = openat(&fd, c, DIR_FLAGS, Mode::empty())
                .map_err(|err| io_err("opening the directory", &walked)(err.into()))?;
        }
        Ok(fd)
    }

    /// The directory holding `rel`, opened, and `rel`'s last component.
    fn parent<'a>(&self, rel: &'a str) -> Result<(OwnedFd, &'a str), EngineError> {
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        Ok((self.dir(parent)?, name))
    }
}

/// Give an entry opened at `fd` its owner, mode and mtime. The owner first: chown clears
/// setuid/setgid, chmod then sets them.
fn set_meta(fd: BorrowedFd<'_>, e: &FileEntry, path: &Path) -> Result<(), EngineError> {
    let err = |op: &'static str| move |err: nix::Error| io_err(op, path)(err.into());
    nix::unistd::fchown(fd, Some(Uid::from_raw(e.uid)), Some(Gid::from_raw(e.gid)))
        .map_err(err("setting the owner of"))?;
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(e.mode)).map_err(err("setting the mode of"))?;
    let mtime = TimeSpec::new(e.mtime, e.mtime_nsec as _);
    nix::sys::stat::futimens(fd, &mtime, &mtime).map_err(err("setting the mtime of"))
}

/// Check every distinct chunk of a file manifest (fetch, decompress, hash) and the tree digest.
pub async fn verify(
    m: &Manifest,
    target: &Target,
    progress: Arc<Progress>,
) -> Result<(Vec<BadBlock>, bool), EngineError> {
    check_manifest(m)?;
    let digest_ok = tree_digest(&m.entries) == m.digest;
    // Each distinct chunk once, named after the first file that holds it.
    let mut seen = HashSet::new();
    let mut unique = vec![];
    for (i, e) in m.entries.iter().enumerate() {
        for c in &e.chunks {
            if seen.insert(c.id.as_str()) {
                unique.push((i as u64, e.path.clone(), c.clone()));
            }
        }
    }
    progress.blocks_total.store(unique.len() as u64, Relaxed);
    progress
        .bytes_total
        .store(unique.iter().map(|(_, _, c)| c.len as u64).sum(), Relaxed);
    progress.phase("verifying");
    let mut bad = vec![];
    let mut checks = futures::stream::iter(unique)
        .map(|(index, path, c)| {
            let (progress, target) = (progress.clone(), target.clone());
            async move {
                let r = fetch_object(&target, &c.id, c.len as usize, &progress).await;
                progress.add_done(c.len as u64);
                r.err().map(|reason| BadBlock {
                    index,
                    id: c.id,
                    reason,
                    path: Some(path),
                })
            }
        })
        .buffer_unordered(PARALLEL);
    while let Some(r) = checks.next().await {
        bad.extend(r);
    }
    bad.sort_by_key(|b| b.index);
    Ok((bad, digest_ok))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A small tree round-trips through a directory target; a changed file reuses the chunks it
    /// shares with its old version; a damaged chunk is named by verify.
    #[tokio::test]
    async fn round_trip_and_dedup() {
        use rand::RngCore;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        let mut big = vec![0u8; 6 << 20];
        rand::rng().fill_bytes(&mut big);
        std::fs::write(src.join("a/b/big"), &big).unwrap();
        std::fs::write(src.join("a/small"), b"hello").unwrap();
        std::fs::write(src.join("empty"), b"").unwrap();
        std::os::unix::fs::symlink("a/small", src.join("link")).unwrap();
        std::fs::set_permissions(src.join("a/small"), std::fs::Permissions::from_mode(0o640)).unwrap();
        let target = Target::Local(dir.path().join("target"));
        target.probe().await.unwrap();
        let hook: Hook = Arc::new(|_: &Progress| {});
        let out = backup(
            &src,
            &target,
            HashSet::new(),
            None,
            Arc::new(Progress::default()),
            hook.clone(),
        )
        .await
        .unwrap();
        assert_eq!(
            out.entries.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["a", "a/b", "a/b/big", "a/small", "empty", "link"]
        );
        assert!(out.entries[2].chunks.len() >= 2, "6 MiB is cut in several chunks");
        let first_uploaded = out.uploaded_chunks;

        // Insert 100 bytes at the start of the big file: most chunks keep their ids.
        let mut changed = vec![7u8; 100];
        changed.extend_from_slice(&big);
        std::fs::write(src.join("a/b/big"), &changed).unwrap();
        let known = target.block_ids().await.unwrap();
        let out2 = backup(&src, &target, known, None, Arc::new(Progress::default()), hook.clone())
            .await
            .unwrap();
        assert!(
            out2.uploaded_chunks < first_uploaded,
            "an insert re-uploads only the chunks around it ({} of {first_uploaded})",
            out2.uploaded_chunks
        );

        let m = Manifest {
            format: FORMAT.into(),
            id: "b1".into(),
            volume: "v".into(),
            volume_id: "v".into(),
            size_bytes: 0,
            block_size: 0,
            parent: None,
            created_at: 0,
            digest: tree_digest(&out2.entries),
            blocks: vec![],
            entries: out2.entries.clone(),
            snapshot_at: Some(0),
        };
        let dst = dir.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        restore(&m, &target, &dst, Arc::new(Progress::default()), hook)
            .await
            .unwrap();
        assert_eq!(std::fs::read(dst.join("a/b/big")).unwrap(), changed);
        assert_eq!(std::fs::read(dst.join("a/small")).unwrap(), b"hello");
        assert_eq!(std::fs::metadata(dst.join("a/small")).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(std::fs::read_link(dst.join("link")).unwrap(), Path::new("a/small"));
        assert_eq!(std::fs::metadata(dst.join("empty")).unwrap().len(), 0);
        let (bad, ok) = verify(&m, &target, Arc::new(Progress::default())).await.unwrap();
        assert!(bad.is_empty() && ok);

        // Damage one chunk of the big file.
        let victim = &m.entries[2].chunks[0].id;
        let key = dir.path().join("target").join(block_key(victim));
        std::fs::write(&key, b"garbage").unwrap();
        let (bad, _) = verify(&m, &target, Arc::new(Progress::default())).await.unwrap();
        assert_eq!(bad.len(), 1);
        assert_eq!(&bad[0].id, victim);
        assert_eq!(bad[0].path.as_deref(), Some("a/b/big"));
    }

    #[test]
    fn manifest_paths_are_confined() {
        let entry = |path: &str, kind| FileEntry {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            chunks: vec![],
            target: Some("x".into()),
        };
        let m = |entries| Manifest {
            format: FORMAT.into(),
            id: "b".into(),
            volume: "v".into(),
            volume_id: "v".into(),
            size_bytes: 0,
            block_size: 0,
            parent: None,
            created_at: 0,
            digest: String::new(),
            blocks: vec![],
            entries,
            snapshot_at: None,
        };
        assert!(check_manifest(&m(vec![entry("a", EntryKind::Dir), entry("a/f", EntryKind::File)])).is_ok());
        for bad in [
            vec![entry("../x", EntryKind::File)],
            vec![entry("/etc/passwd", EntryKind::File)],
            vec![entry("a/./b", EntryKind::File)],
            // Through a symlink.
            vec![entry("a", EntryKind::Symlink), entry("a/passwd", EntryKind::File)],
            // Child before parent.
            vec![entry("a/f", EntryKind::File), entry("a", EntryKind::Dir)],
            vec![entry("f", EntryKind::File), entry("f", EntryKind::File)],
        ] {
            assert!(check_manifest(&m(bad.clone())).is_err(), "{bad:?}");
        }
    }

    /// A file manifest of `entries` whose files hold `content`, its chunk stored in `target`.
    async fn manifest_with(target: &Target, entries: Vec<(&str, EntryKind, u32)>, content: &[u8]) -> Manifest {
        let id = blake3::hash(content).to_hex().to_string();
        target
            .put(
                &block_key(&id),
                Bytes::from(zstd::bulk::compress(content, ZSTD_LEVEL).unwrap()),
            )
            .await
            .unwrap();
        let entries: Vec<FileEntry> = entries
            .into_iter()
            .map(|(path, kind, mode)| {
                let file = kind == EntryKind::File;
                FileEntry {
                    path: path.into(),
                    kind,
                    mode,
                    uid: 4242,
                    gid: 4242,
                    mtime: 1_000_000,
                    mtime_nsec: 0,
                    size: if file { content.len() as u64 } else { 0 },
                    chunks: if file {
                        vec![ChunkRef {
                            id: id.clone(),
                            len: content.len() as u32,
                        }]
                    } else {
                        vec![]
                    },
                    target: (kind == EntryKind::Symlink).then(|| "elsewhere".to_string()),
                }
            })
            .collect();
        Manifest {
            format: FORMAT.into(),
            id: "b".into(),
            volume: "v".into(),
            volume_id: "v".into(),
            size_bytes: 0,
            block_size: 0,
            parent: None,
            created_at: 0,
            digest: tree_digest(&entries),
            blocks: vec![],
            entries,
            snapshot_at: Some(0),
        }
    }

    /// A host directory outside the restore root holding one file, and what must stay true of
    /// both: names, and the file's content, mode, owner and mtime.
    struct Victim {
        dir: PathBuf,
        file: PathBuf,
    }

    impl Victim {
        fn new(base: &Path) -> Victim {
            let dir = base.join("host-dir");
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
            let file = dir.join("secret");
            std::fs::write(&file, b"host file").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
            Victim { dir, file }
        }

        /// What is checked: the directory's names and mode, the file's bytes, mode, owner, mtime.
        fn state(&self) -> (Vec<String>, u32, Vec<u8>, u32, u32, u32, i64) {
            let mut names: Vec<String> = std::fs::read_dir(&self.dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            let dm = std::fs::symlink_metadata(&self.dir).unwrap();
            let m = std::fs::symlink_metadata(&self.file).unwrap();
            (
                names,
                dm.mode(),
                std::fs::read(&self.file).unwrap(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
            )
        }
    }

    /// A symlink already in the restore root where an entry goes (a directory, a file, a
    /// symlink) is not followed: the restore fails naming it, and the host file and directory the
    /// links point at are unchanged.
    #[tokio::test]
    async fn restore_does_not_follow_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::Local(dir.path().join("target"));
        target.probe().await.unwrap();
        let victim = Victim::new(dir.path());
        let before = victim.state();
        let hook: Hook = Arc::new(|_: &Progress| {});
        for (planted, points_at, entries) in [
            (
                "d",
                &victim.dir,
                vec![("d", EntryKind::Dir, 0o777), ("d/f", EntryKind::File, 0o666)],
            ),
            ("f", &victim.file, vec![("f", EntryKind::File, 0o4777)]),
            ("l", &victim.file, vec![("l", EntryKind::Symlink, 0o777)]),
        ] {
            let m = manifest_with(&target, entries, b"restored bytes").await;
            let root = dir.path().join(format!("root-{planted}"));
            std::fs::create_dir(&root).unwrap();
            std::os::unix::fs::symlink(points_at, root.join(planted)).unwrap();
            let err = restore(&m, &target, &root, Arc::new(Progress::default()), hook.clone())
                .await
                .expect_err("a planted symlink fails the restore");
            assert!(err.to_string().contains(planted), "the error names {planted:?}: {err}");
            assert_eq!(
                victim.state(),
                before,
                "planted {planted:?}: the host directory and file are unchanged"
            );
        }
    }

    /// Restores racing a local user who keeps swapping what the restore creates for a symlink
    /// to a host directory or file outside the root: the directory `d` (files would be written
    /// into the host directory), a top-level file (its mode would be set on the host file), a
    /// file inside `d` (the same, one level down). Each swap target gets its own rounds; after
    /// every restore the host directory and file are unchanged (the restore may fail).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restore_racing_a_symlink_swapper() {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        const ITERATIONS: usize = 200;
        let dir = tempfile::tempdir().unwrap();
        let target = Target::Local(dir.path().join("target"));
        target.probe().await.unwrap();
        let victim = Victim::new(dir.path());
        let before = victim.state();
        let mut entries = vec![("d", EntryKind::Dir, 0o777)];
        let names: Vec<String> = (0..8).map(|i| format!("d/f{i}")).collect();
        entries.extend(names.iter().map(|n| (n.as_str(), EntryKind::File, 0o666)));
        entries.push(("top", EntryKind::File, 0o4777));
        let m = manifest_with(&target, entries, &[7u8; 64 << 10]).await;
        let hook: Hook = Arc::new(|_: &Progress| {});
        for (swapped, to) in [
            ("d", victim.dir.clone()),
            ("top", victim.file.clone()),
            ("d/f3", victim.file.clone()),
        ] {
            let swaps = Arc::new(AtomicU64::new(0));
            let (mut failed_restores, mut changed, mut run) = (0, None, 0);
            for i in 0..ITERATIONS {
                run += 1;
                let root = dir.path().join(format!("root-{}-{i}", swapped.replace('/', "-")));
                std::fs::create_dir(&root).unwrap();
                let stop = Arc::new(AtomicBool::new(false));
                // The swapper: once the entry exists and is not a link, it is moved aside and
                // replaced by a symlink out of the root, again and again.
                let swapper = {
                    let (p, stop, swaps, to) = (root.join(swapped), stop.clone(), swaps.clone(), to.clone());
                    std::thread::spawn(move || {
                        let mut n = 0;
                        while !stop.load(Relaxed) {
                            if p.symlink_metadata().is_ok_and(|m| !m.file_type().is_symlink()) {
                                n += 1;
                                let aside = p.with_file_name(format!(".moved-{n}"));
                                if std::fs::rename(&p, aside).is_ok() && std::os::unix::fs::symlink(&to, &p).is_ok() {
                                    swaps.fetch_add(1, Relaxed);
                                }
                            }
                        }
                    })
                };
                let r = restore(&m, &target, &root, Arc::new(Progress::default()), hook.clone()).await;
                stop.store(true, Relaxed);
                swapper.join().unwrap();
                failed_restores += r.is_err() as usize;
                if victim.state() != before {
                    changed = Some(i);
                    break;
                }
            }
            eprintln!(
                "swapping {swapped:?}: {run} of {ITERATIONS} iterations run, {} swaps, {failed_restores} restores failed",
                swaps.load(Relaxed)
            );
            assert_eq!(
                changed,
                None,
                "swapping {swapped:?}: a restore changed the host directory or file: {before:?} → {:?}",
                victim.state()
            );
            assert!(
                swaps.load(Relaxed) > 0,
                "swapping {swapped:?}: the swapper never swapped anything: the race was not run"
            );
        }
    }
}
