//! File-volume backups (a tree in content-defined chunks) through the real CLI and daemon, on both
//! stores: s3 volumes on the real S3 server (Ceph RGW, `scripts/services/s3.sh`) mounted with
//! s3fs-fuse, backed up to a directory target and to an S3 target.
//!
//! Write a tree (nested directories, random files, an empty file, a symlink, a 24 MiB file, odd
//! modes and owners) → full backup → change a few files → incremental (unchanged files are not
//! re-read, unchanged chunks not re-uploaded) → restore both into new s3 volumes, and the full one
//! into a block volume → every tree identical to the source at that point (content hashes, types,
//! modes, owners, mtimes, symlink targets) → a corrupted chunk is named by `verify` and fails the
//! restore, which leaves no volume behind → deleting the full backup keeps the incremental whole.
//! And the daemon killed mid-upload / mid-restore: nothing half-done listed, mounted or left over.
//!
//! Needs root, /dev/fuse and s3fs (the s3fs mounts), `ELARA_TEST_ETCD` and `ELARA_TEST_S3_*`
//! (scripts/test.sh sets both). Without /dev/fuse the test says why and skips (every step mounts).

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use elara_tests::s3::S3Server;
use elara_tests::*;
use rand::{RngCore, SeedableRng};

const MIB: usize = 1 << 20;

/// One entry of a tree as compared: type, mode, owner, mtime (seconds), content hash or target.
type Tree = BTreeMap<String, String>;

/// Everything under `root` that a backup must keep (ext4's lost+found aside).
fn tree_of(root: &Path) -> anyhow::Result<Tree> {
    let mut out = Tree::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            let rel = p.strip_prefix(root)?.to_string_lossy().into_owned();
            if rel == "lost+found" {
                continue;
            }
            let m = std::fs::symlink_metadata(&p)?;
            let what = if m.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&p)?.display())
            } else if m.is_dir() {
                stack.push(p.clone());
                format!("dir {:o} {}:{} {}", m.mode() & 0o7777, m.uid(), m.gid(), m.mtime())
            } else {
                let sum = blake3::hash(&std::fs::read(&p)?).to_hex().to_string();
                format!(
                    "file {:o} {}:{} {} {} {sum}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    m.mtime(),
                    m.len()
                )
            };
            out.insert(rel, what);
        }
    }
    Ok(out)
}

/// Set a path's mtime (and atime), not following symlinks.
fn set_mtime(p: &Path, secs: i64) -> anyhow::Result<()> {
    let st = std::process::Command::new("touch")
        .arg("-h")
        .arg("-d")
        .arg(format!("@{secs}"))
        .arg(p)
        .status()?;
    anyhow::ensure!(st.success(), "touch {}", p.display());
    Ok(())
}

fn random_file(p: &Path, len: usize, rng: &mut rand::rngs::StdRng) -> anyhow::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    rng.fill_bytes(&mut buf);
    std::fs::write(p, &buf)?;
    Ok(buf)
}

/// The source tree: nested dirs, random files, an empty file, a symlink, a big file, odd modes
/// and owners; every mtime an hour back (as a tree written a while before its backup).
fn write_tree(root: &Path) -> anyhow::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(10);
    std::fs::create_dir_all(root.join("docs/deep/deeper"))?;
    std::fs::create_dir_all(root.join("bin"))?;
    random_file(&root.join("docs/a.txt"), 1000, &mut rng)?;
    random_file(&root.join("docs/deep/b.bin"), 300_000, &mut rng)?;
    random_file(&root.join("docs/deep/deeper/c.bin"), 3 * MIB + 17, &mut rng)?;
    random_file(&root.join("bin/tool"), 70_000, &mut rng)?;
    random_file(&root.join("big.img"), 24 * MIB, &mut rng)?;
    std::fs::write(root.join("empty"), b"")?;
    std::os::unix::fs::symlink("docs/deep/b.bin", root.join("link"))?;
    std::fs::set_permissions(root.join("bin/tool"), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(root.join("docs/a.txt"), std::fs::Permissions::from_mode(0o640))?;
    std::fs::set_permissions(root.join("docs/deep"), std::fs::Permissions::from_mode(0o750))?;
    std::os::unix::fs::chown(root.join("docs/a.txt"), Some(1234), Some(5678))?;
    let old = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64
        - 3600;
    for p in [
        "docs/a.txt",
        "docs/deep/b.bin",
        "docs/deep/deeper/c.bin",
        "bin/tool",
        "big.img",
        "empty",
        "docs/deep/deeper",
        "docs/deep",
        "docs",
        "bin",
    ] {
        set_mtime(&root.join(p), old)?;
    }
    Ok(())
}

/// Change a few files: rewrite a small one, insert 10 bytes at the front of the big one (content-
/// defined chunking re-cuts only near the insert), add one, remove one. Returns how many files
/// kept their size and mtime (not re-read by the incremental).
fn change_tree(root: &Path) -> anyhow::Result<u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    random_file(&root.join("docs/a.txt"), 1200, &mut rng)?;
    let mut big = std::fs::read(root.join("big.img"))?;
    big.splice(0..0, *b"0123456789");
    std::fs::write(root.join("big.img"), &big)?;
    random_file(&root.join("docs/new.bin"), 50_000, &mut rng)?;
    std::fs::remove_file(root.join("bin/tool"))?;
    // Unchanged and non-empty: b.bin, c.bin.
    Ok(2)
}

struct Rig {
    d: Daemon,
    s3: S3Server,
    tag: String,
}

impl Rig {
    /// A daemon (`opts`) with the s3 backend `s3a` on the test S3 server, its buckets named
    /// `<prefix><pid><nanos>-…` so they are found and purged afterwards; `None` (after saying
    /// why) where this machine cannot run the test.
    fn start(opts: DaemonOpts, prefix: &str) -> anyhow::Result<Option<Rig>> {
        if !require_root() {
            return Ok(None);
        }
        if !Path::new("/dev/fuse").exists() {
            eprintln!(
                "SKIP: /dev/fuse is missing (this kernel or container has no FUSE), so s3fs cannot mount the s3 volumes every step reads or writes"
            );
            return Ok(None);
        }
        let s3 = S3Server::from_env();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let tag = format!("{prefix}{:x}{:x}-", std::process::id() & 0xffff, nanos & 0xfffff);
        let rig = Rig {
            d: Daemon::start(opts)?,
            s3,
            tag,
        };
        let args = rig.s3.backend_add_args("s3a", &[("bucket_prefix", &rig.tag)]);
        rig.d.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(Some(rig))
    }

    fn mount(&self, vol: &str) -> anyhow::Result<PathBuf> {
        Ok(PathBuf::from(
            self.d.ok(&["volume", "mount", vol, "--holder", "test"])?.trim(),
        ))
    }
    fn unmount(&self, vol: &str) -> anyhow::Result<()> {
        self.d.ok(&["volume", "unmount", vol, "--holder", "test"]).map(drop)
    }
    /// The tree of a volume (mounted for the look, then unmounted).
    fn tree(&self, vol: &str) -> anyhow::Result<Tree> {
        let t = tree_of(&self.mount(vol)?);
        self.unmount(vol)?;
        t
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.s3.purge(&self.tag);
    }
}

/// The names `volume list` shows.
fn volume_names(d: &Daemon) -> anyhow::Result<Vec<String>> {
    Ok(d.json(&["volume", "list"])?
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect())
}

/// Blocks files of a directory target.
fn stored_chunks(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = vec![];
    for sub in std::fs::read_dir(dir.join("blocks"))? {
        for f in std::fs::read_dir(sub?.path())? {
            out.push(f?.path());
        }
    }
    out.sort();
    Ok(out)
}

fn round_trip(store: StoreKind, s3_target: bool) -> anyhow::Result<()> {
    let Some(rig) = Rig::start(DaemonOpts::new(store), "bf")? else {
        return Ok(());
    };
    let (d, tag) = (&rig.d, &rig.tag);
    let target_dir = if s3_target {
        let url = format!("s3://{tag}backups/files");
        d.ok(&[
            "backup",
            "target",
            "add",
            "tg",
            &url,
            "--endpoint",
            &rig.s3.endpoint,
            "--access-key",
            &rig.s3.access_key,
            "--secret-key",
            &rig.s3.secret_key,
        ])?;
        None
    } else {
        let dir = d.dir.join("target");
        d.ok(&["backup", "target", "add", "tg", dir.to_str().unwrap()])?;
        Some(dir)
    };

    d.ok(&["volume", "create", "src", "--backend", "s3a"])?;
    write_tree(&rig.mount("src")?)?;
    rig.unmount("src")?;
    let tree_full = rig.tree("src")?;
    assert_eq!(tree_full.len(), 11, "the tree as written: {tree_full:#?}");

    let full = d.json(&["backup", "create", "src", "--target", "tg"])?;
    assert_eq!(full["kind"], "files", "{full}");
    assert_eq!(full["files"], 11, "{full}");
    assert!(full["parent"].is_null());
    assert!(
        full["uploaded_blocks"].as_u64().unwrap() >= 24,
        "24 MiB + 3 MiB in ~1 MiB chunks: {full}"
    );

    let mountpoint = rig.mount("src")?;
    let unchanged = change_tree(&mountpoint)?;
    rig.unmount("src")?;
    let tree_incr = rig.tree("src")?;
    assert_ne!(tree_full, tree_incr);
    let incr = d.json(&["backup", "create", "src", "--target", "tg"])?;
    assert_eq!(
        incr["parent"], full["id"],
        "incremental against the previous backup: {incr}"
    );
    assert_eq!(
        incr["reused_files"], unchanged,
        "unchanged files are not re-read: {incr}"
    );
    let (up_full, up_incr) = (
        full["uploaded_blocks"].as_u64().unwrap(),
        incr["uploaded_blocks"].as_u64().unwrap(),
    );
    assert!(
        up_incr * 4 < up_full,
        "an insert at the front of the big file re-uploads only the chunks near it ({up_incr} of {up_full}): {incr}"
    );
    // The temporary snapshots and clones are gone.
    assert!(
        d.json(&["snapshot", "list"])?.as_array().unwrap().is_empty(),
        "temporary snapshots removed"
    );
    let vols = volume_names(d)?;
    assert_eq!(vols, vec!["src".to_string()], "temporary clones removed");

    let (fid, iid) = (
        full["id"].as_str().unwrap().to_string(),
        incr["id"].as_str().unwrap().to_string(),
    );
    for (id, vol, tree) in [(&fid, "r-full", &tree_full), (&iid, "r-incr", &tree_incr)] {
        let v = d.json(&["backup", "restore", id, "--to", vol, "--backend", "s3a"])?;
        assert!(v["op"].is_null(), "restored volume unlocked: {v}");
        assert_eq!(
            &rig.tree(vol)?,
            tree,
            "restore of {id} into {vol} is the tree backed up"
        );
        assert_eq!(d.json(&["backup", "verify", id])?["ok"], true);
    }
    // Into a block volume (ext4 on an image file) as well.
    d.ok(&["backup", "restore", &fid, "--to", "r-block", "--backend", "local"])?;
    assert_eq!(
        rig.tree("r-block")?,
        tree_full,
        "a file backup restores into a block volume"
    );

    // Deleting the full backup keeps the incremental whole (chunks it shares stay).
    d.ok(&["backup", "delete", &fid])?;
    assert_eq!(
        d.json(&["backup", "verify", &iid])?["ok"],
        true,
        "the incremental survives the full's delete"
    );

    // A corrupted chunk (every stored chunk is now the incremental's): verify names it and its
    // file, the restore fails naming it and leaves no volume.
    let victim = match &target_dir {
        Some(dir) => {
            let path = stored_chunks(dir)?.into_iter().next().expect("a stored chunk");
            std::fs::write(&path, b"not zstd")?;
            path.file_name().unwrap().to_string_lossy().into_owned()
        }
        None => {
            let bucket = format!("{tag}backups");
            let (key, _) = rig
                .s3
                .objects(&bucket, "files/blocks/")?
                .unwrap_or_default()
                .into_iter()
                .next()
                .expect("a stored chunk");
            rig.s3.put(&bucket, &key, "not zstd")?;
            key.rsplit('/').next().unwrap().to_string()
        }
    };
    let err = d.fails(&["backup", "verify", &iid])?;
    assert!(
        err.contains(&victim) && err.contains("chunk"),
        "verify names the bad chunk {victim}: {err}"
    );
    let err = d.fails(&["backup", "restore", &iid, "--to", "r-bad", "--backend", "s3a"])?;
    assert!(
        err.contains(&victim) && err.contains("chunk"),
        "restore fails naming the chunk {victim}: {err}"
    );
    d.wait_ops_settled(Duration::from_secs(60))?;
    let vols = volume_names(d)?;
    assert!(
        !vols.contains(&"r-bad".to_string()),
        "the failed restore left no volume: {vols:?}"
    );
    assert!(
        mounts_under(&d.dir).is_empty(),
        "no mount left behind: {:?}",
        mounts_under(&d.dir)
    );
    Ok(())
}

/// The daemon killed mid-upload of a file backup and mid-write of a file restore: after a restart
/// no half backup is listed, the temporary clone (mounted with s3fs when the daemon died) and the
/// half-restored volume are unmounted and gone, and the next run completes.
fn crash(store: StoreKind, point: &str) -> anyhow::Result<()> {
    let mut opts = DaemonOpts::new(store);
    opts.crash_at = Some(point.to_string());
    let Some(mut rig) = Rig::start(opts, "bc")? else {
        return Ok(());
    };
    rig.d.ok(&[
        "backup",
        "target",
        "add",
        "tg",
        rig.d.dir.join("target").to_str().unwrap(),
    ])?;
    rig.d.ok(&["volume", "create", "src", "--backend", "s3a"])?;
    write_tree(&rig.mount("src")?)?;
    rig.unmount("src")?;
    let tree = rig.tree("src")?;
    let restoring = point.starts_with("backup-restore");
    let mut before = vec![];
    if restoring {
        rig.d.ok(&["backup", "create", "src", "--target", "tg"])?;
        before = ids(&rig.d)?;
        anyhow::ensure!(
            !rig.d
                .cli(&["backup", "restore", &before[0], "--to", "r1", "--backend", "s3a"])?
                .status
                .success(),
            "the restore should have been cut off"
        );
    } else {
        anyhow::ensure!(
            !rig.d
                .cli(&["backup", "create", "src", "--target", "tg"])?
                .status
                .success(),
            "the backup should have been cut off"
        );
    }
    rig.d
        .wait_exit(Duration::from_secs(60))
        .map_err(|e| anyhow::anyhow!("{point}: the daemon did not die ({e})"))?;
    rig.d.restart()?;
    rig.d.wait_ops_settled(Duration::from_secs(90))?;
    let d = &rig.d;
    assert_eq!(ids(d)?, before, "{point}: no half backup listed");
    let vols = volume_names(d)?;
    assert_eq!(
        vols,
        vec!["src".to_string()],
        "{point}: the temporary clone or half-restored volume is gone"
    );
    assert!(
        mounts_under(&d.dir).is_empty(),
        "{point}: nothing left mounted: {:?}",
        mounts_under(&d.dir)
    );
    let id = if restoring {
        before[0].clone()
    } else {
        d.json(&["backup", "create", "src", "--target", "tg"])?["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    d.ok(&["backup", "restore", &id, "--to", "r2", "--backend", "s3a"])?;
    assert_eq!(rig.tree("r2")?, tree, "{point}: the next run restores the tree");
    Ok(())
}

/// While a file backup runs (held mid-upload by `ELARA_PAUSE_AT`), its temporary clone
/// `backup-<id>` is hidden from `volume list` (inspect shows it, labelled with the op); once the
/// backup is done it is gone.
fn clone_hidden_while_running(store: StoreKind) -> anyhow::Result<()> {
    let pause = work_dir().join(unique("pause"));
    let mut opts = DaemonOpts::new(store);
    opts.env.push((
        "ELARA_PAUSE_AT".into(),
        format!("backup:mid-upload={}", pause.display()),
    ));
    let Some(rig) = Rig::start(opts, "bh")? else {
        return Ok(());
    };
    std::fs::write(&pause, b"")?;
    let reached = pause.with_extension("reached");
    let d = &rig.d;
    d.ok(&["backup", "target", "add", "tg", d.dir.join("target").to_str().unwrap()])?;
    d.ok(&["volume", "create", "src", "--backend", "s3a"])?;
    write_tree(&rig.mount("src")?)?;
    rig.unmount("src")?;

    let job = d.json(&["backup", "create", "src", "--target", "tg", "--detach"])?;
    let (job_id, clone) = (
        job["id"].as_str().unwrap().to_string(),
        format!("backup-{}", job["backup"].as_str().unwrap()),
    );
    wait_for(Duration::from_secs(60), "the backup to reach mid-upload", || {
        Ok(reached.exists())
    })?;
    let listed = volume_names(d);
    let inspected = d.json(&["volume", "inspect", &clone]);
    std::fs::remove_file(&pause)?;
    assert_eq!(
        listed?,
        vec!["src".to_string()],
        "the temporary clone is hidden while the backup runs"
    );
    let inspected = inspected?;
    assert!(
        inspected["labels"]["elara.backup.temp-op"].is_string(),
        "inspect shows the clone, with its op: {inspected}"
    );

    let mut job = serde_json::Value::Null;
    wait_for(Duration::from_secs(120), "the backup job to end", || {
        job = d.json(&["backup", "job", &job_id])?;
        Ok(job["state"] != "running")
    })?;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(volume_names(d)?, vec!["src".to_string()]);
    assert!(
        d.fails(&["volume", "inspect", &clone])?.contains("does not exist"),
        "the clone is gone after the backup"
    );
    Ok(())
}

#[test]
fn files_clone_hidden_while_running_embedded() -> anyhow::Result<()> {
    clone_hidden_while_running(StoreKind::Embedded)
}

#[test]
fn files_clone_hidden_while_running_etcd() -> anyhow::Result<()> {
    clone_hidden_while_running(StoreKind::Etcd)
}

fn ids(d: &Daemon) -> anyhow::Result<Vec<String>> {
    Ok(d.json(&["backup", "list"])?
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect())
}

#[test]
fn files_crash_mid_upload_embedded() -> anyhow::Result<()> {
    crash(StoreKind::Embedded, "backup:mid-upload")
}

#[test]
fn files_crash_mid_upload_etcd() -> anyhow::Result<()> {
    crash(StoreKind::Etcd, "backup:mid-upload")
}

#[test]
fn files_crash_mid_restore_embedded() -> anyhow::Result<()> {
    crash(StoreKind::Embedded, "backup-restore:mid-write")
}

#[test]
fn files_crash_mid_restore_etcd() -> anyhow::Result<()> {
    crash(StoreKind::Etcd, "backup-restore:mid-write")
}

#[test]
fn files_round_trip_dir_target_embedded() -> anyhow::Result<()> {
    round_trip(StoreKind::Embedded, false)
}

#[test]
fn files_round_trip_s3_target_etcd() -> anyhow::Result<()> {
    round_trip(StoreKind::Etcd, true)
}
