//! Volume backups: the on-target format, the block engine, the file engine, and the targets.
//!
//! # Format (`elara-backup/1`)
//!
//! A target (a local directory, or an S3 bucket and prefix) holds two kinds of objects:
//!
//! * `blocks/<aa>/<blake3 hex>`: one volume block, zstd-compressed. Its name is the blake3 hash of
//!   the *uncompressed* block, so blocks are content-addressed and shared by every backup in the
//!   target (dedup across volumes and backups). All-zero blocks and holes are never stored.
//! * `manifests/<backup id>.json`: a synthetic full: the volume size, the block size (4 MiB), every
//!   block's id (`null` for a zero block), and a whole-volume digest (see [`engine::volume_digest`]).
//!   A manifest is written last, after every block it names is in the target: a manifest that
//!   exists claims a complete backup; a crash before it leaves only unreferenced blocks, which
//!   the reconciler (or the next delete) collects.
//! * `locks/<backup|gc>-<id>.json`: leases of the backups running on the target and of block
//!   collection, so that a collection never deletes a block a running backup has found there
//!   (see [`lease`]).
//!
//! Only keys of the form `blocks/<aa>/<64 lower-case hex digits starting with aa>` are blocks:
//! anything else under `blocks/` is foreign, and block collection leaves it alone.
//!
//! File volumes (drivers of kind `file` or `object`: s3, nfs) are backed up as a tree
//! ([`files`], format `elara-files/1`): the snapshot is cloned into a temporary volume, mounted
//! read-only, and walked; each file is cut into content-defined chunks (FastCDC, ~1 MiB) stored
//! in the same `blocks/` space (so chunks and blocks dedup together), and the manifest lists
//! every entry (path, type, mode, owner, mtime, size, chunk ids, symlink target) with a
//! whole-tree digest.
//!
//! The daemon keeps a [`records::BackupRecord`] per finished backup in its store for listing,
//! written after the manifest.

pub mod engine;
pub mod fiemap;
pub mod files;
pub mod lease;
pub mod progress;
pub mod records;
pub mod s3;
pub mod target;

/// Fixed block size of block-volume backups.
pub const BLOCK_SIZE: u64 = 4 << 20;
/// Format tag written in every manifest.
pub const FORMAT: &str = "elara-backup/1";
