//! The nfs driver against a real NFS server (NFS-Ganesha from `scripts/services/nfs.sh`), through
//! the real daemon, on both stores. What the export holds is checked on the exported directory's
//! disk and with libnfs's `nfs-ls` / `nfs-cp`, never with the driver itself.
//!
//! This kernel may have no NFS client: the one step that needs it (the host's `mount -t nfs`) is
//! checked to fail with a message saying so, and skipped with a note; everything before it is real.
//!
//! Needs root, nfs-ganesha, libnfs-utils and the env `ELARA_TEST_NFS_*` (scripts/test.sh).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use elara_tests::docker::{Engine, IMAGE, Plugin};
use elara_tests::nfs::{NfsServer, kernel_has_nfs_client};
use elara_tests::*;
use rand::RngCore;

/// A daemon with an nfs backend `nfs` whose directory in the export is unique to this test.
struct Rig {
    nfs: NfsServer,
    daemon: Daemon,
    /// Elara's directory in the export, relative to the export root.
    path: String,
}

impl Rig {
    fn start(store: StoreKind, tag: &str) -> anyhow::Result<Rig> {
        let nfs = NfsServer::from_env();
        let daemon = Daemon::start(DaemonOpts::new(store))?;
        let path = format!("elara-{tag}");
        let args = nfs.backend_add_args("nfs", &path, &[]);
        daemon.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(Rig { nfs, daemon, path })
    }

    /// Elara's directory on the server's disk.
    fn base(&self) -> PathBuf {
        self.nfs.dir.join(&self.path)
    }

    fn volume_dir(&self, id: &str) -> PathBuf {
        self.base().join("volumes").join(id)
    }

    fn id(&self, volume: &str) -> anyhow::Result<String> {
        Ok(self.daemon.json(&["volume", "inspect", volume])?["id"]
            .as_str()
            .context("volume id")?
            .to_string())
    }

    fn snapshot_id(&self, name: &str) -> anyhow::Result<String> {
        Ok(self.daemon.json(&["snapshot", "inspect", name])?["id"]
            .as_str()
            .context("snapshot id")?
            .to_string())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.base());
    }
}

fn random_file(path: &Path, bytes: usize) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len());
        rand::rng().fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n;
    }
    Ok(())
}

/// What a tree holds, by relative path: kind, mode, owner, and content (files) or target (links).
#[derive(Debug, PartialEq)]
enum Node {
    Dir { mode: u32, uid: u32 },
    File { mode: u32, uid: u32, len: u64 },
    Link(PathBuf),
}

fn tree(root: &Path) -> anyhow::Result<BTreeMap<PathBuf, Node>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let rel = path.strip_prefix(root)?.to_path_buf();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                out.insert(rel, Node::Link(std::fs::read_link(&path)?));
            } else if meta.is_dir() {
                out.insert(rel, Node::Dir { mode, uid: meta.uid() });
                walk(root, &path, out)?;
            } else {
                out.insert(
                    rel,
                    Node::File {
                        mode,
                        uid: meta.uid(),
                        len: meta.len(),
                    },
                );
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn same_bytes(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Two trees hold the same entries, modes, owners, links and bytes.
fn assert_same_tree(a: &Path, b: &Path) -> anyhow::Result<()> {
    let (ta, tb) = (tree(a)?, tree(b)?);
    ensure!(
        ta == tb,
        "trees differ:\n{} {ta:#?}\n{} {tb:#?}",
        a.display(),
        b.display()
    );
    for (rel, node) in &ta {
        if matches!(node, Node::File { .. }) {
            ensure!(
                same_bytes(&a.join(rel), &b.join(rel))?,
                "{} differs between {} and {}",
                rel.display(),
                a.display(),
                b.display()
            );
        }
    }
    Ok(())
}

/// Bytes the filesystem allocated under `dir` (not counting `dir`), as NFS's `used` reports them.
fn allocated_under(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let (mut bytes, mut entries) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        bytes += meta.blocks() * 512;
        entries += 1;
        if meta.is_dir() {
            let (b, e) = allocated_under(&path)?;
            bytes += b;
            entries += e;
        }
    }
    Ok((bytes, entries))
}

/// create → the directory on the server (disk and nfs-ls) → data written by an independent NFS
/// client shows in `volume inspect` → snapshot → restore to a new volume with the same bytes →
/// delete → gone on the server. Plus: `iops` refused with the reason, the mount step.
fn lifecycle(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let tag = unique("life");
    // Shared before the backend is added: its first pool report needs the server up.
    let _up = NfsServer::from_env().shared();
    let rig = Rig::start(store, &tag)?;
    let (d, nfs) = (&rig.daemon, &rig.nfs);

    // The pool is the export's FSSTAT: the server's filesystem, as statvfs sees it on disk.
    let pools = d.json(&["pool", "list"])?;
    let pool = pools
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["backend"] == "nfs")
        .context("no nfs pool listed")?;
    let stat = std::process::Command::new("stat")
        .args(["-f", "-c", "%b %S"])
        .arg(&nfs.dir)
        .output()?;
    let figures: Vec<u64> = String::from_utf8_lossy(&stat.stdout)
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total = figures.first().context("stat -f")? * figures.get(1).context("stat -f")?;
    ensure!(
        pool["pool"]["total"]["Bytes"] == total,
        "pool total {} vs the export's filesystem {total}",
        pool["pool"]["total"]
    );
    ensure!(
        pool["pool"]["capabilities"].to_string().contains("file"),
        "capabilities: {}",
        pool["pool"]["capabilities"]
    );

    // iops cannot be enforced on NFS: refused, naming the field and why, nothing made.
    let err = d.fails(&[
        "volume",
        "create",
        "fast",
        "--size",
        "1G",
        "--backend",
        "nfs",
        "--iops",
        "500",
    ])?;
    ensure!(err.contains("iops") && err.contains("NFS"), "iops refusal: {err}");
    ensure!(
        d.fails(&["volume", "inspect", "fast"]).is_ok(),
        "a refused create left a volume"
    );

    // Create: a directory with the volume's mode and owner, seen on disk and by nfs-ls.
    d.ok(&[
        "volume",
        "create",
        "v1",
        "--size",
        "2G",
        "--backend",
        "nfs",
        "--label",
        "uid=1234",
        "--label",
        "mode=0750",
    ])?;
    let id = rig.id("v1")?;
    let dir = rig.volume_dir(&id);
    let meta = std::fs::metadata(&dir).with_context(|| format!("{} is not on the server's disk", dir.display()))?;
    ensure!(
        meta.is_dir() && meta.uid() == 1234 && meta.permissions().mode() & 0o7777 == 0o750,
        "volume dir: uid {} mode {:o}",
        meta.uid(),
        meta.permissions().mode()
    );
    ensure!(
        nfs.ls(&format!("{}/volumes", rig.path))?.contains(&id),
        "nfs-ls does not list {id}"
    );

    // Data from an independent NFS client (nfs-cp), and a tree made on the server's disk.
    let work = tempfile::tempdir()?;
    let big = work.path().join("big.bin");
    random_file(&big, 3 << 20)?;
    nfs.put(&big, &format!("{}/volumes/{id}/big.bin", rig.path))?;
    std::fs::create_dir_all(dir.join("sub/deeper"))?;
    std::fs::write(dir.join("sub/deeper/note.txt"), b"hello from the server's disk\n")?;
    std::fs::set_permissions(dir.join("sub/deeper/note.txt"), std::fs::Permissions::from_mode(0o640))?;
    std::os::unix::fs::symlink("deeper/note.txt", dir.join("sub/link"))?;
    std::fs::File::create(dir.join("empty"))?;
    ensure!(
        same_bytes(&big, &dir.join("big.bin"))?,
        "nfs-cp's file is not on disk byte for byte"
    );

    // Usage in inspect: what the server allocated under the volume, entry for entry.
    let inspect = d.json(&["volume", "inspect", "v1"])?;
    let (allocated, entries) = allocated_under(&dir)?;
    ensure!(
        inspect["usage"]["used_bytes"] == allocated,
        "inspect usage {} vs {allocated} bytes on disk",
        inspect["usage"]
    );
    ensure!(
        inspect["usage"]["objects"] == entries,
        "inspect usage {} vs {entries} entries on disk",
        inspect["usage"]
    );
    ensure!(allocated >= 3 << 20, "the 3 MiB file is not counted: {allocated}");
    ensure!(
        inspect["usage"]["size_bytes"] == 2u64 << 30,
        "size is recorded: {}",
        inspect["usage"]
    );

    // Snapshot: a copy of the tree on the server; restore: a new volume with the same bytes.
    d.ok(&["snapshot", "create", "v1", "--name", "s1"])?;
    let sid = rig.snapshot_id("s1")?;
    assert_same_tree(&dir, &rig.base().join("snapshots").join(&sid))?;
    std::fs::write(dir.join("after-snapshot"), b"not in s1")?;
    d.ok(&["snapshot", "restore", "s1", "--to", "v2"])?;
    let id2 = rig.id("v2")?;
    let dir2 = rig.volume_dir(&id2);
    ensure!(
        !dir2.join("after-snapshot").exists(),
        "v2 has a file written after the snapshot"
    );
    std::fs::remove_file(dir.join("after-snapshot"))?;
    assert_same_tree(&dir, &dir2)?;
    let back = work.path().join("back.bin");
    nfs.get(&format!("{}/volumes/{id2}/big.bin", rig.path), &back)?;
    ensure!(
        same_bytes(&big, &back)?,
        "nfs-cp reads different bytes from the restored volume"
    );

    // Resize: recorded (NFS does not enforce it).
    d.ok(&["volume", "resize", "v1", "--size", "3G"])?;
    ensure!(
        d.json(&["volume", "stats", "v1"])?["size_bytes"] == 3u64 << 30,
        "resize not recorded"
    );

    // Mount: the kernel's NFS client where this kernel has one, else the user-space helper. The
    // files are there, and a file written through the mount lands on the server's disk.
    let mp = PathBuf::from(d.ok(&["volume", "mount", "v1"])?.trim());
    ensure!(
        std::fs::read(mp.join("sub/deeper/note.txt"))? == b"hello from the server's disk\n",
        "the mount does not show the volume's files"
    );
    ensure!(
        same_bytes(&big, &mp.join("big.bin"))?,
        "big.bin reads differently through the mount"
    );
    std::fs::write(mp.join("through-mount"), b"written through the mount")?;
    let att = &d.json(&["volume", "inspect", "v1"])?["attachments"][0];
    let mode = att["host"]["mode"].as_str().unwrap_or_default().to_string();
    ensure!(
        mode == if kernel_has_nfs_client() { "kernel" } else { "user" },
        "attached with mode {mode:?}: {att}"
    );
    d.ok(&["volume", "unmount", "v1"])?;
    ensure!(
        std::fs::read(dir.join("through-mount"))? == b"written through the mount",
        "the write is not on the server's disk"
    );
    std::fs::remove_file(dir.join("through-mount"))?;
    ensure!(
        helpers_under(&d.dir).is_empty(),
        "a helper is left after the unmount: {:?}",
        helpers_under(&d.dir)
    );
    ensure!(
        mounts_under(&d.dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(&d.dir)
    );
    ensure!(
        d.json(&["volume", "inspect", "v1"])?["status"] == "available",
        "v1 after the mount step"
    );

    // Delete: gone on the server, snapshots and records too.
    d.ok(&["snapshot", "delete", "s1"])?;
    for v in ["v1", "v2"] {
        d.ok(&["volume", "delete", v])?;
    }
    for (what, p) in [
        ("v1", &dir),
        ("v2", &dir2),
        ("s1", &rig.base().join("snapshots").join(&sid)),
    ] {
        ensure!(!p.exists(), "{what} is still on the server: {}", p.display());
    }
    ensure!(
        !nfs.ls(&format!("{}/volumes", rig.path))?.contains(&id),
        "nfs-ls still lists {id}"
    );
    let records = tree(&rig.base().join(".elara"))?;
    ensure!(
        records.keys().all(|k| k.components().count() == 1),
        "records left: {records:?}"
    );
    Ok(())
}

#[test]
fn lifecycle_embedded() -> anyhow::Result<()> {
    lifecycle(StoreKind::Embedded)
}

#[test]
fn lifecycle_etcd() -> anyhow::Result<()> {
    lifecycle(StoreKind::Etcd)
}

/// Wait (bounded) until `cond` holds, polling every `step`.
fn wait_until(limit: Duration, step: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(step);
    }
    false
}

/// Wait (bounded) until a snapshot's copy has begun on the server: a file appears in its tree
/// (whichever comes first: the server lists a directory in its own order).
fn copy_begun(snapshots: &Path) -> bool {
    wait_until(Duration::from_secs(60), Duration::from_millis(2), || {
        let tree = std::fs::read_dir(snapshots)
            .ok()
            .and_then(|mut e| e.next())
            .and_then(|e| e.ok());
        tree.and_then(|t| std::fs::read_dir(t.path()).ok())
            .is_some_and(|mut files| files.next().is_some())
    })
}

/// The progress the op on `volume` shows once its copy has moved: (bytes done, bytes in all).
fn copy_progress(d: &Daemon, volume: &str) -> anyhow::Result<(u64, u64)> {
    let mut seen = None;
    wait_until(Duration::from_secs(30), Duration::from_millis(5), || {
        let ops = d.json(&["op", "list"]).unwrap_or_default();
        let op = ops
            .as_array()
            .and_then(|ops| ops.iter().find(|op| op["volume"] == volume));
        let figures = op.map(|op| &op["params"]["progress"]);
        seen = figures
            .and_then(|p| Some((p["bytes_done"].as_u64()?, p["bytes_total"].as_u64()?)))
            .filter(|(done, _)| *done > 0);
        seen.is_some()
    });
    seen.with_context(|| format!("no progress of the copy in the op on {volume}:\n{}", d.log_tail()))
}

/// A volume `vol` of 16 random 32 MiB files, so that copying it takes a while; its directory.
fn big_volume(rig: &Rig) -> anyhow::Result<PathBuf> {
    rig.daemon
        .ok(&["volume", "create", "vol", "--size", "4G", "--backend", "nfs"])?;
    let dir = rig.volume_dir(&rig.id("vol")?);
    for i in 0..16 {
        random_file(&dir.join(format!("f{i:02}")), 32 << 20)?;
    }
    Ok(dir)
}

/// `elara snapshot create vol --name NAME`, running in the background.
fn snapshot_in_background(d: &Daemon, name: &str) -> anyhow::Result<std::process::Child> {
    Ok(std::process::Command::new(elara_bin())
        .arg("-s")
        .arg(&d.socket)
        .args(["snapshot", "create", "vol", "--name", name])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?)
}

/// The server stopped in the middle of a snapshot's copy and before a delete: each fails with a
/// clear `unavailable`, and once the server is back the reconciler finishes what was left (the
/// half copy removed, the delete done), with nothing left on the server.
fn server_stopped_mid_operation(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let tag = unique("down");
    let _only_me = NfsServer::from_env().exclusive();
    let rig = Rig::start(store, &tag)?;
    let (d, nfs) = (&rig.daemon, &rig.nfs);
    // The server comes back whatever happens below.
    struct Restart<'a>(&'a NfsServer);
    impl Drop for Restart<'_> {
        fn drop(&mut self) {
            let _ = self.0.start();
        }
    }
    let _restart = Restart(nfs);

    let dir = big_volume(&rig)?;
    d.ok(&["volume", "create", "other", "--size", "1G", "--backend", "nfs"])?;
    let other = rig.volume_dir(&rig.id("other")?);
    std::fs::write(other.join("data"), b"to be deleted while the server is down")?;
    let snapshots = rig.base().join("snapshots");

    // A snapshot in flight; the server stops once the copy has begun.
    let child = snapshot_in_background(d, "s1")?;
    ensure!(
        copy_begun(&snapshots),
        "the snapshot's copy never started on the server:\n{}",
        d.log_tail()
    );
    nfs.stop()?;
    let out = child.wait_with_output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        bail!("the snapshot finished before the server stopped; the test needs more data");
    }
    ensure!(err.contains("unavailable"), "snapshot with the server gone: {err}");
    let partial: Vec<_> = std::fs::read_dir(&snapshots)?.collect();
    ensure!(
        !partial.is_empty(),
        "no half copy on the server to clean up: the server stopped too late to test anything"
    );

    // A delete while the server is down fails clearly too.
    let err = d.fails(&["volume", "delete", "other"])?;
    ensure!(err.contains("unavailable"), "delete with the server gone: {err}");

    // The server is back: the reconciler removes the half snapshot and finishes the delete.
    nfs.start()?;
    d.wait_ops_settled(Duration::from_secs(60))?;
    let snaps = d.json(&["snapshot", "list"])?;
    ensure!(
        snaps.as_array().is_some_and(|a| a.is_empty()),
        "snapshots after the reconciler: {snaps}"
    );
    ensure!(
        std::fs::read_dir(&snapshots)?.next().is_none(),
        "the half copy is still on the server"
    );
    let vols = d.json(&["volume", "list"])?;
    let names: Vec<&str> = vols
        .as_array()
        .context("volume list")?
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    ensure!(names == ["vol"], "volumes after the reconciler: {vols}");
    ensure!(
        !other.exists(),
        "the deleted volume is still on the server: {}",
        other.display()
    );

    // And the volume snapshots cleanly now, with the same bytes.
    d.ok(&["snapshot", "create", "vol", "--name", "s2"])?;
    assert_same_tree(&dir, &snapshots.join(rig.snapshot_id("s2")?))?;
    d.ok(&["snapshot", "delete", "s2"])?;
    d.ok(&["volume", "delete", "vol"])?;
    ensure!(!dir.exists(), "vol is still on the server");
    let records = tree(&rig.base().join(".elara"))?;
    ensure!(
        records.keys().all(|k| k.components().count() == 1),
        "records left: {records:?}"
    );
    Ok(())
}

#[test]
fn server_stopped_mid_operation_embedded() -> anyhow::Result<()> {
    server_stopped_mid_operation(StoreKind::Embedded)
}

#[test]
fn server_stopped_mid_operation_etcd() -> anyhow::Result<()> {
    server_stopped_mid_operation(StoreKind::Etcd)
}

/// The daemon killed (SIGKILL) in the middle of a snapshot's copy: after a restart the
/// reconciler undoes the snapshot (its half copy removed from the server), the volume is whole
/// and a new snapshot of it is identical.
fn daemon_killed_mid_copy(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let tag = unique("kill");
    let _up = NfsServer::from_env().shared();
    let mut rig = Rig::start(store, &tag)?;
    let dir = big_volume(&rig)?;
    let before = tree(&dir)?;
    let snapshots = rig.base().join("snapshots");
    let mut child = snapshot_in_background(&rig.daemon, "s1")?;
    ensure!(
        copy_begun(&snapshots),
        "the snapshot's copy never started on the server:\n{}",
        rig.daemon.log_tail()
    );
    // The driver reports the copy's progress; the op shows it: bytes of the volume's 512 MiB.
    let (done, total) = copy_progress(&rig.daemon, "vol")?;
    ensure!(
        total == 16 * (32 << 20) && done > 0 && done < total,
        "snapshot progress: {done} of {total} bytes"
    );
    rig.daemon.kill9();
    let _ = child.wait();
    ensure!(
        std::fs::read_dir(&snapshots)?.next().is_some(),
        "no half copy on the server: the kill came too late to test anything"
    );

    rig.daemon.restart()?;
    let d = &rig.daemon;
    d.wait_ops_settled(Duration::from_secs(60))?;
    let snaps = d.json(&["snapshot", "list"])?;
    ensure!(
        snaps.as_array().is_some_and(|a| a.is_empty()),
        "snapshots after the reconciler: {snaps}"
    );
    ensure!(
        std::fs::read_dir(&snapshots)?.next().is_none(),
        "the half copy is still on the server"
    );
    ensure!(tree(&dir)? == before, "the volume changed");
    ensure!(
        d.json(&["volume", "inspect", "vol"])?["status"] == "available",
        "vol after the reconciler"
    );
    d.ok(&["snapshot", "create", "vol", "--name", "s2"])?;
    assert_same_tree(&dir, &snapshots.join(rig.snapshot_id("s2")?))?;
    Ok(())
}

#[test]
fn daemon_killed_mid_copy_embedded() -> anyhow::Result<()> {
    daemon_killed_mid_copy(StoreKind::Embedded)
}

#[test]
fn daemon_killed_mid_copy_etcd() -> anyhow::Result<()> {
    daemon_killed_mid_copy(StoreKind::Etcd)
}

/// Through Docker: `docker volume create -d PLUGIN -o backend=nfs -o label.uid=…` makes the
/// directory on the server with that owner; `-o iops=` is refused naming it; a container writing
/// as uid 1000 through `docker run -v` (the node's NFS client: the kernel's, or the user-space
/// one) leaves files owned by 1000 on the server's disk, which a second container reads;
/// `docker volume rm` removes the directory.
fn docker_volumes(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let nfs = NfsServer::from_env();
    let _up = nfs.shared();
    let plugin = Plugin::new()?;
    let mut opts = DaemonOpts::new(store);
    opts.plugin_dir = Some(plugin.dir.clone());
    let d = Daemon::start(opts)?;
    let path = format!("elara-{}", unique("dock"));
    let _cleanup = RemoveOnDrop(nfs.dir.join(&path));
    d.ok(&nfs
        .backend_add_args("nfs", &path, &[])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())?;
    let engine = Engine::start(&[])?;
    let p = plugin.name.as_str();

    engine.ok(&[
        "volume",
        "create",
        "-d",
        p,
        "-o",
        "backend=nfs",
        "-o",
        "size=1G",
        "-o",
        "label.uid=1000",
        "shared",
    ])?;
    let id = d.json(&["volume", "inspect", "shared"])?["id"]
        .as_str()
        .context("id")?
        .to_string();
    let dir = nfs.dir.join(&path).join("volumes").join(&id);
    ensure!(
        std::fs::metadata(&dir)
            .map(|m| m.is_dir() && m.uid() == 1000)
            .unwrap_or(false),
        "{} is not a directory owned by 1000",
        dir.display()
    );
    let listed = engine.ok(&["volume", "ls", "-q", "--filter", &format!("driver={p}")])?;
    ensure!(listed.lines().any(|l| l == "shared"), "docker volume ls: {listed}");

    let err = engine.fails(&[
        "volume",
        "create",
        "-d",
        p,
        "-o",
        "backend=nfs",
        "-o",
        "iops=100",
        "fast",
    ])?;
    ensure!(err.contains("iops"), "docker -o iops on nfs: {err}");

    // A container writes as uid 1000: the file is on the server's disk with that owner, and a
    // second container reads it.
    let text = unique("shared-bytes");
    engine.ok(&[
        "run",
        "--rm",
        "--user",
        "1000:1000",
        "-v",
        "shared:/data",
        IMAGE,
        "sh",
        "-c",
        &format!("echo {text} > /data/f && mkdir /data/d"),
    ])?;
    let f = dir.join("f");
    let meta = std::fs::metadata(&f).with_context(|| format!("{} is not on the server's disk", f.display()))?;
    ensure!(
        meta.uid() == 1000 && meta.gid() == 1000,
        "owner on the server: {}:{}",
        meta.uid(),
        meta.gid()
    );
    ensure!(
        std::fs::metadata(dir.join("d"))?.uid() == 1000,
        "the directory's owner on the server"
    );
    ensure!(
        std::fs::read_to_string(&f)?.trim() == text,
        "the server's disk holds {:?}",
        std::fs::read_to_string(&f)?
    );
    let read = engine.ok(&["run", "--rm", "-v", "shared:/data", IMAGE, "cat", "/data/f"])?;
    ensure!(read.trim() == text, "a second container read {read:?}");
    ensure!(
        helpers_under(&d.dir).is_empty(),
        "a helper is left after the containers: {:?}",
        helpers_under(&d.dir)
    );
    ensure!(
        d.json(&["volume", "inspect", "shared"])?["status"] == "available",
        "after the containers"
    );

    engine.ok(&["volume", "rm", "shared"])?;
    ensure!(!dir.exists(), "docker volume rm left {}", dir.display());
    Ok(())
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn docker_volumes_embedded() -> anyhow::Result<()> {
    docker_volumes(StoreKind::Embedded)
}

#[test]
fn docker_volumes_etcd() -> anyhow::Result<()> {
    docker_volumes(StoreKind::Etcd)
}

/// `elara driver check` passes on the nfs driver against the real server; bad config is refused
/// when the backend is added, naming the key, and a backend without the grant is told how.
#[test]
fn driver_check_and_bad_backends() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let nfs = NfsServer::from_env();
    let _up = nfs.shared();
    let wasm = drivers_dir().join("nfs.wasm");
    let path = format!("elara-{}", unique("check"));
    let out = std::process::Command::new(elara_bin())
        .args(["driver", "check"])
        .arg(&wasm)
        .args([
            "--config",
            &format!("server={}", nfs.server),
            "--config",
            &format!("export={}", nfs.export),
        ])
        .args([
            "--config",
            &format!("mount_port={}", nfs.mount_port),
            "--config",
            &format!("path={path}"),
        ])
        .args(["--allow-host", nfs.host()])
        .output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(nfs.dir.join(&path));
    ensure!(
        out.status.success() && report.contains("CONFORMS") && !report.contains("FAIL"),
        "driver check:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let d = Daemon::start(DaemonOpts::new(StoreKind::Embedded))?;
    for (key, value, want) in [
        ("export", "relative/path", "export"),
        ("version", "2", "version"),
        ("path", "../outside", "path"),
        ("server", "nfs:0", "server"),
    ] {
        let args = nfs.backend_add_args("bad", "elara-bad", &[(key, value)]);
        let err = d.fails(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        ensure!(err.contains(want), "{key}={value}: {err}");
    }
    // No grant for the portmapper/MOUNT ports: the error says how to grant them.
    let mut args = nfs.backend_add_args("nogrant", "elara-nogrant", &[]);
    let grant = args.iter().position(|a| a == "--allow-host").unwrap();
    args[grant + 1] = format!("{}:1", nfs.host());
    d.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let err = d.fails(&["volume", "create", "c-nogrant", "--size", "1G", "--backend", "nogrant"])?;
    ensure!(
        err.contains("unavailable") && err.contains("--allow-host"),
        "without the grant: {err}"
    );
    ensure!(
        d.json(&["volume", "list"])?.as_array().is_some_and(|a| a.is_empty()),
        "a failed create left a volume"
    );
    ensure!(
        !nfs.dir.join("elara-nogrant").exists(),
        "the sandbox let the driver reach the server"
    );
    let backends = d.json(&["backend", "list"])?;
    ensure!(
        !backends.to_string().contains("\"bad\""),
        "a refused backend was kept: {backends}"
    );
    Ok(())
}

/// A Docker rig on the nfs backend, with the I/O timeout short.
fn docker_rig(store: StoreKind) -> anyhow::Result<(NfsServer, Plugin, Daemon, Engine, String, RemoveOnDrop)> {
    let nfs = NfsServer::from_env();
    let plugin = Plugin::new()?;
    let mut opts = DaemonOpts::new(store);
    opts.plugin_dir = Some(plugin.dir.clone());
    opts.env.push(("ELARA_ATTACH_IO_TIMEOUT".into(), "3".into()));
    let d = Daemon::start(opts)?;
    let path = format!("elara-{}", unique("fail"));
    let cleanup = RemoveOnDrop(nfs.dir.join(&path));
    d.ok(&nfs
        .backend_add_args("nfs", &path, &[])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())?;
    let engine = Engine::start(&[])?;
    Ok((nfs, plugin, d, engine, path, cleanup))
}

/// The daemon SIGKILLed while a container writes to an nfs volume: the container sees no error,
/// the restarted daemon adopts the same helper, and the container's end takes it down.
fn daemon_killed_while_writing(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _up = NfsServer::from_env().shared();
    let (nfs, plugin, mut d, engine, path, _cleanup) = docker_rig(store)?;
    engine.ok(&["volume", "create", "-d", &plugin.name, "-o", "backend=nfs", "busy"])?;
    let script = "set -e; i=0; while true; do i=$((i+1)); echo $i >> /data/log; sleep 0.02; done";
    let cid = engine
        .ok(&["run", "-d", "-v", "busy:/data", IMAGE, "sh", "-c", script])?
        .trim()
        .to_string();
    let id = d.json(&["volume", "inspect", "busy"])?["id"]
        .as_str()
        .context("id")?
        .to_string();
    let on_server = nfs.dir.join(&path).join("volumes").join(&id).join("log");
    let att = &d.json(&["volume", "inspect", "busy"])?["attachments"][0];
    let pid = att["host"]["helper"]["pid"]
        .as_u64()
        .with_context(|| format!("no helper in {att}"))?;
    wait_for(Duration::from_secs(20), "the container to write", || {
        Ok(line_count(&on_server) > 10)
    })?;

    d.kill9();
    let before = line_count(&on_server);
    wait_for(Duration::from_secs(20), "writes with the daemon dead", || {
        Ok(line_count(&on_server) > before + 20)
    })?;
    d.restart()?;
    d.wait_ops_settled(Duration::from_secs(60))?;
    let att = d.json(&["volume", "inspect", "busy"])?["attachments"][0].clone();
    ensure!(
        att["state"] == "attached" && att["host"]["helper"]["pid"].as_u64() == Some(pid),
        "after the restart: {att}"
    );
    ensure!(
        helpers_under(&d.dir) == vec![pid as u32],
        "helpers after the restart: {:?}",
        helpers_under(&d.dir)
    );
    let before = line_count(&on_server);
    wait_for(Duration::from_secs(20), "writes after the restart", || {
        Ok(line_count(&on_server) > before + 20)
    })?;
    ensure!(
        engine.ok(&["inspect", "-f", "{{.State.Running}}", &cid])?.trim() == "true",
        "the container stopped"
    );

    engine.ok(&["rm", "-f", &cid])?;
    wait_for(Duration::from_secs(60), "the detach", || {
        Ok(d.json(&["volume", "inspect", "busy"])?["attachments"]
            .as_array()
            .is_some_and(|a| a.is_empty()))
    })?;
    ensure!(
        helpers_under(&d.dir).is_empty() && mounts_under(&d.dir).is_empty(),
        "left: {:?} {:?}",
        helpers_under(&d.dir),
        mounts_under(&d.dir)
    );
    engine.ok(&["volume", "rm", "busy"])?;
    Ok(())
}

#[test]
fn daemon_killed_while_writing_embedded() -> anyhow::Result<()> {
    daemon_killed_while_writing(StoreKind::Embedded)
}

#[test]
fn daemon_killed_while_writing_etcd() -> anyhow::Result<()> {
    daemon_killed_while_writing(StoreKind::Etcd)
}

/// The helper killed under a mounted nfs volume: marked failed, the next mount works. Then the
/// server stopped while mounted: calls fail within a bounded time, unmount does not hang, and
/// once the server is back the volume works again.
fn helper_and_server_failures(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let up = NfsServer::from_env().shared();
    let (nfs, _plugin, d, _engine, _path, _cleanup) = docker_rig(store)?;
    d.ok(&["volume", "create", "nv", "--backend", "nfs"])?;
    let mp = PathBuf::from(d.ok(&["volume", "mount", "nv"])?.trim());
    std::fs::write(mp.join("kept"), b"kept")?;
    let att = |d: &Daemon| -> anyhow::Result<serde_json::Value> {
        Ok(d.json(&["volume", "inspect", "nv"])?["attachments"][0].clone())
    };
    let pid = att(&d)?["host"]["helper"]["pid"].as_u64().context("helper pid")?;
    ensure!(
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()?
            .success(),
        "kill"
    );
    wait_for(Duration::from_secs(30), "the attachment to be marked failed", || {
        Ok(att(&d)?["state"] == "failed")
    })?;
    ensure!(
        att(&d)?["error"].as_str().is_some_and(|e| e.contains("nfs-fuse")),
        "failed attachment: {}",
        att(&d)?
    );
    let mp2 = PathBuf::from(d.ok(&["volume", "mount", "nv", "--holder", "second"])?.trim());
    ensure!(
        std::fs::read(mp2.join("kept"))? == b"kept",
        "the data after the remount"
    );
    ensure!(att(&d)?["state"] == "attached", "after the remount: {}", att(&d)?);
    drop(up);

    {
        let _only_me = nfs.exclusive();
        nfs.stop()?;
        let t = Instant::now();
        let probe = std::process::Command::new("cat").arg(mp2.join("kept")).output();
        let write = std::fs::write(mp2.join("during-outage"), b"x");
        let took = t.elapsed();
        eprintln!(
            "with the server down: read {:?}, write {write:?}, after {took:?}",
            probe.as_ref().map(|o| o.status)
        );
        ensure!(
            took < Duration::from_secs(60),
            "calls with the server down took {took:?}"
        );
        let t = Instant::now();
        let _ = d.cli(&["volume", "unmount", "nv", "--holder", "second"])?;
        let _ = d.cli(&["volume", "unmount", "nv"])?;
        ensure!(
            t.elapsed() < Duration::from_secs(120),
            "unmount with the server down took {:?}",
            t.elapsed()
        );
        nfs.start()?;
    }
    let _up = nfs.shared();
    wait_for(Duration::from_secs(120), "the detach to finish", || {
        let _ = d.cli(&["volume", "unmount", "nv", "--holder", "second"]);
        let _ = d.cli(&["volume", "unmount", "nv"]);
        Ok(d.json(&["volume", "inspect", "nv"])?["attachments"]
            .as_array()
            .is_some_and(|a| a.is_empty()))
    })?;
    let mp3 = PathBuf::from(d.ok(&["volume", "mount", "nv"])?.trim());
    ensure!(std::fs::read(mp3.join("kept"))? == b"kept", "the data after the outage");
    d.ok(&["volume", "unmount", "nv"])?;
    ensure!(
        helpers_under(&d.dir).is_empty() && mounts_under(&d.dir).is_empty(),
        "left: {:?} {:?}",
        helpers_under(&d.dir),
        mounts_under(&d.dir)
    );
    d.ok(&["volume", "delete", "nv"])?;
    Ok(())
}

#[test]
fn helper_and_server_failures_embedded() -> anyhow::Result<()> {
    helper_and_server_failures(StoreKind::Embedded)
}

#[test]
fn helper_and_server_failures_etcd() -> anyhow::Result<()> {
    helper_and_server_failures(StoreKind::Etcd)
}

/// File backups of nfs volumes: the volume (and the backup's temporary clone) mount through the
/// node's NFS client (the user-space one here); a tree written through the mount is backed up to
/// a directory target and restored into a new nfs volume identical on the server's disk
/// (entries, types, modes, owners, links, bytes), and verify passes.
fn file_backup_round_trip(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _up = NfsServer::from_env().shared();
    let rig = Rig::start(store, &unique("bk"))?;
    let d = &rig.daemon;
    d.ok(&["volume", "create", "src", "--backend", "nfs"])?;
    let mp = PathBuf::from(d.ok(&["volume", "mount", "src"])?.trim());
    std::fs::create_dir_all(mp.join("docs/deep"))?;
    let mut big = vec![0u8; 9 << 20];
    rand::rng().fill_bytes(&mut big);
    std::fs::write(mp.join("docs/deep/big.bin"), &big)?;
    std::fs::write(mp.join("docs/note.txt"), b"a note\n")?;
    std::fs::set_permissions(mp.join("docs/note.txt"), std::fs::Permissions::from_mode(0o640))?;
    std::os::unix::fs::chown(mp.join("docs/note.txt"), Some(1000), Some(1000))?;
    std::os::unix::fs::symlink("deep/big.bin", mp.join("docs/link"))?;
    std::fs::File::create(mp.join("empty"))?;
    d.ok(&["volume", "unmount", "src"])?;

    let target = d.dir.join("target");
    d.ok(&["backup", "target", "add", "tg", target.to_str().context("path")?])?;
    let b = d.json(&["backup", "create", "src", "--target", "tg"])?;
    ensure!(b["kind"] == "files" && b["files"].as_u64() >= Some(3), "backup: {b}");
    d.ok(&[
        "backup",
        "restore",
        b["id"].as_str().context("id")?,
        "--to",
        "dst",
        "--backend",
        "nfs",
    ])?;
    assert_same_tree(&rig.volume_dir(&rig.id("src")?), &rig.volume_dir(&rig.id("dst")?))?;
    ensure!(
        d.json(&["backup", "verify", b["id"].as_str().unwrap_or_default()])?["ok"] == true,
        "verify"
    );
    let vols: Vec<String> = d
        .json(&["volume", "list"])?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(String::from))
        .collect();
    ensure!(
        vols == ["dst", "src"] || vols == ["src", "dst"],
        "volumes after the backup: {vols:?} (the temporary clone must be gone)"
    );
    ensure!(
        helpers_under(&d.dir).is_empty() && mounts_under(&d.dir).is_empty(),
        "left: {:?} {:?}",
        helpers_under(&d.dir),
        mounts_under(&d.dir)
    );
    for v in ["src", "dst"] {
        d.ok(&["volume", "delete", v])?;
    }
    Ok(())
}

#[test]
fn file_backup_round_trip_embedded() -> anyhow::Result<()> {
    file_backup_round_trip(StoreKind::Embedded)
}

#[test]
fn file_backup_round_trip_etcd() -> anyhow::Result<()> {
    file_backup_round_trip(StoreKind::Etcd)
}
