//! Block-volume backups through the real CLI and daemon, on both stores, to a local-directory
//! target and to a real S3 server (Ceph RGW, `scripts/services/s3.sh`):
//! round trip (random regions, zero regions, holes → full → 1 % change → incremental → restore
//! both → byte-identical), a corrupted block caught by verify and failing the restore by name, a
//! deleted backup not breaking the others, and the daemon killed mid-backup / mid-restore.
//!
//! Needs `ELARA_TEST_ETCD` (etcd runs) and `ELARA_TEST_S3_*` (scripts/test.sh sets both).

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use elara_tests::*;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;

/// The S3 server's env lines, as scripts/services/s3.sh prints them.
fn s3_env() -> (String, String, String) {
    let var = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!("{k} is not set: start S3 with `scripts/services/s3.sh start .work/s3` (scripts/test.sh does)")
        })
    };
    (
        var("ELARA_TEST_S3_ENDPOINT"),
        var("ELARA_TEST_S3_ACCESS_KEY"),
        var("ELARA_TEST_S3_SECRET_KEY"),
    )
}

/// Add a target named `name`: a directory under the daemon's dir, or a fresh S3 prefix.
fn add_target(d: &Daemon, name: &str, s3: bool) -> anyhow::Result<Option<PathBuf>> {
    if s3 {
        let (endpoint, ak, sk) = s3_env();
        let url = format!("s3://elara-backup-tests/{}", unique(name));
        let out = d.ok(&[
            "backup",
            "target",
            "add",
            name,
            &url,
            "--endpoint",
            &endpoint,
            "--access-key",
            &ak,
            "--secret-key",
            &sk,
        ])?;
        assert!(!out.contains(&sk), "the secret key is never printed: {out}");
        let shown = d.ok(&["backup", "target", "inspect", name])?;
        assert!(
            !shown.contains(&sk) && shown.contains("redacted"),
            "inspect hides the secret: {shown}"
        );
        Ok(None)
    } else {
        let dir = d.dir.join(format!("target-{name}"));
        d.ok(&["backup", "target", "add", name, dir.to_str().unwrap()])?;
        Ok(Some(dir))
    }
}

fn image_of(d: &Daemon, vol: &str) -> anyhow::Result<PathBuf> {
    let v = d.json(&["volume", "inspect", vol])?;
    Ok(d.pool_dir(v["backend"].as_str().unwrap())
        .join(v["backend_ref"].as_str().unwrap()))
}

fn sha256(path: &Path) -> anyhow::Result<String> {
    let out = std::process::Command::new("sha256sum").arg(path).output()?;
    anyhow::ensure!(out.status.success(), "sha256sum {} failed", path.display());
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Known data: random regions, explicit zero regions, and holes (never written).
fn write_known(image: &Path, seed: u64) -> anyhow::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(image)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Random data: 0-10 MiB, 20-21.5 MiB (crosses a block boundary), the last 3 MiB.
    for (off, len) in [(0, 10 * MIB), (20 * MIB, 3 * MIB / 2), (SIZE - 3 * MIB, 3 * MIB)] {
        let mut buf = vec![0u8; len as usize];
        rng.fill_bytes(&mut buf);
        f.write_all_at(&buf, off)?;
    }
    // Zeros written explicitly (allocated, all-zero): 32-44 MiB. 44-61 MiB stays a hole.
    f.write_all_at(&vec![0u8; (12 * MIB) as usize], 32 * MIB)?;
    f.sync_all()?;
    Ok(())
}

/// Change 1 % of the volume (640 KiB in 4 random writes); returns the 4 MiB blocks touched.
fn change_one_percent(image: &Path, seed: u64) -> anyhow::Result<HashSet<u64>> {
    let f = std::fs::OpenOptions::new().write(true).open(image)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut touched = HashSet::new();
    let len = SIZE / 100 / 4;
    for _ in 0..4 {
        let off = rng.random_range(0..SIZE - len);
        let mut buf = vec![0u8; len as usize];
        rng.fill_bytes(&mut buf);
        f.write_all_at(&buf, off)?;
        touched.extend(off / (4 * MIB)..=(off + len - 1) / (4 * MIB));
    }
    f.sync_all()?;
    Ok(touched)
}

fn backup_ids(d: &Daemon) -> anyhow::Result<Vec<String>> {
    Ok(d.json(&["backup", "list"])?
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect())
}

fn round_trip(store: StoreKind, s3: bool) -> anyhow::Result<()> {
    let d = Daemon::start(DaemonOpts::new(store))?;
    add_target(&d, "tg", s3)?;
    d.ok(&["volume", "create", "src", "--size", "64M"])?;
    let image = image_of(&d, "src")?;
    write_known(&image, 1)?;
    let sum_full = sha256(&image)?;

    let full = d.json(&["backup", "create", "src", "--target", "tg"])?;
    assert_eq!(full["size_bytes"], SIZE);
    assert_eq!(full["blocks"], 16);
    // Blocks 0-2 (0-12 MiB), 5 (20-24 MiB), 15 (61-64 MiB) hold random data; 8-10 are zeros and
    // 11-14 holes: neither is stored.
    assert_eq!(full["data_blocks"], 5, "{full}");
    assert_eq!(full["uploaded_blocks"], 5, "{full}");
    assert!(full["parent"].is_null());
    assert!(
        full["scanned_bytes"].as_u64().unwrap() < SIZE,
        "holes are not read: {full}"
    );

    let touched = change_one_percent(&image, 2)?;
    let sum_incr = sha256(&image)?;
    assert_ne!(sum_full, sum_incr);
    let incr = d.json(&["backup", "create", "src", "--target", "tg"])?;
    assert_eq!(
        incr["parent"], full["id"],
        "incremental against the previous backup: {incr}"
    );
    assert_eq!(
        incr["uploaded_blocks"].as_u64().unwrap(),
        touched.len() as u64,
        "only the {} changed blocks are uploaded: {incr}",
        touched.len()
    );
    // Other snapshots: the temporary ones are gone.
    assert!(
        d.json(&["snapshot", "list"])?.as_array().unwrap().is_empty(),
        "temporary snapshots removed"
    );

    let (fid, iid) = (full["id"].as_str().unwrap(), incr["id"].as_str().unwrap());
    for (id, vol, sum) in [(fid, "r-full", &sum_full), (iid, "r-incr", &sum_incr)] {
        let v = d.json(&["backup", "restore", id, "--to", vol])?;
        assert_eq!(v["name"], vol);
        assert!(v["op"].is_null(), "restored volume unlocked: {v}");
        assert_eq!(
            &sha256(&image_of(&d, vol)?)?,
            sum,
            "restore of {id} into {vol} is byte-identical"
        );
        let report = d.json(&["backup", "verify", id])?;
        assert_eq!(report["ok"], true, "{report}");
    }

    // Deleting the full backup keeps the incremental whole (shared blocks stay).
    d.ok(&["backup", "delete", fid])?;
    assert_eq!(backup_ids(&d)?, vec![iid.to_string()]);
    assert_eq!(d.json(&["backup", "verify", iid])?["ok"], true);
    d.ok(&["backup", "restore", iid, "--to", "r-incr2"])?;
    assert_eq!(sha256(&image_of(&d, "r-incr2")?)?, sum_incr);

    // Bad input names the field and changes nothing.
    assert!(
        d.fails(&["backup", "create", "nope", "--target", "tg"])?
            .contains("volume")
    );
    assert!(
        d.fails(&["backup", "create", "src", "--target", "nope"])?
            .contains("target")
    );
    assert!(
        d.fails(&["backup", "restore", iid, "--to", "src"])?
            .contains("already exists")
    );
    assert!(
        d.fails(&["backup", "target", "add", "rel", "relative/dir"])?
            .contains("url")
    );
    assert!(
        d.fails(&[
            "backup",
            "target",
            "add",
            "s3x",
            "s3://Bad_Bucket/x",
            "--endpoint",
            "http://127.0.0.1:1"
        ])?
        .contains("bucket")
    );
    assert!(
        d.fails(&["backup", "target", "remove", "tg"])?
            .contains("holds backups")
    );
    assert_eq!(backup_ids(&d)?.len(), 1);
    d.ok(&["backup", "delete", iid])?;
    d.ok(&["backup", "target", "remove", "tg"])?;
    Ok(())
}

/// Flip bytes in the middle of one stored block object.
fn corrupt_one_block(dir: &Path) -> anyhow::Result<String> {
    let mut blocks = vec![];
    for sub in std::fs::read_dir(dir.join("blocks"))? {
        for f in std::fs::read_dir(sub?.path())? {
            blocks.push(f?.path());
        }
    }
    blocks.sort();
    let victim = blocks.first().expect("a stored block").clone();
    let mut bytes = std::fs::read(&victim)?;
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xA5;
    }
    std::fs::write(&victim, bytes)?;
    Ok(victim.file_name().unwrap().to_string_lossy().into_owned())
}

fn corruption(store: StoreKind) -> anyhow::Result<()> {
    let d = Daemon::start(DaemonOpts::new(store))?;
    let dir = add_target(&d, "tg", false)?.unwrap();
    d.ok(&["volume", "create", "src", "--size", "64M"])?;
    write_known(&image_of(&d, "src")?, 3)?;
    let b = d.json(&["backup", "create", "src", "--target", "tg"])?;
    let id = b["id"].as_str().unwrap();
    let bad = corrupt_one_block(&dir)?;

    let err = d.fails(&["backup", "verify", id])?;
    assert!(
        err.contains(&bad) && err.contains("block"),
        "verify names the bad block {bad}: {err}"
    );
    let err = d.fails(&["backup", "restore", id, "--to", "r1"])?;
    assert!(err.contains(&bad), "restore fails naming the block {bad}: {err}");
    d.wait_ops_settled(Duration::from_secs(30))?;
    let vols: Vec<String> = d
        .json(&["volume", "list"])?
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        vols,
        vec!["src".to_string()],
        "the failed restore left no volume behind"
    );
    Ok(())
}

/// Blocks in a directory target, and the ids its manifests reference.
fn target_state(dir: &Path) -> anyhow::Result<(HashSet<String>, HashSet<String>)> {
    let mut blocks = HashSet::new();
    if let Ok(subs) = std::fs::read_dir(dir.join("blocks")) {
        for sub in subs {
            for f in std::fs::read_dir(sub?.path())? {
                let name = f?.file_name().to_string_lossy().into_owned();
                if !name.starts_with(".tmp-") {
                    blocks.insert(name);
                }
            }
        }
    }
    let mut referenced = HashSet::new();
    if let Ok(ms) = std::fs::read_dir(dir.join("manifests")) {
        for m in ms {
            let m: Value = serde_json::from_slice(&std::fs::read(m?.path())?)?;
            for b in m["blocks"].as_array().unwrap() {
                if let Some(id) = b.as_str() {
                    referenced.insert(id.to_string());
                }
            }
        }
    }
    Ok((blocks, referenced))
}

fn crash_point(store: StoreKind, point: &str) -> anyhow::Result<()> {
    let mut opts = DaemonOpts::new(store);
    opts.crash_at = Some(point.to_string());
    let mut d = Daemon::start(opts)?;
    let dir = add_target(&d, "tg", false)?.unwrap();
    d.ok(&["volume", "create", "src", "--size", "64M"])?;
    let image = image_of(&d, "src")?;
    write_known(&image, 4)?;
    let sum = sha256(&image)?;
    let restoring = point.starts_with("backup-restore");
    let mut before = vec![];
    if restoring {
        // A clean backup first (the crash point is only reached by a restore).
        let out = d.cli(&["-o", "json", "backup", "create", "src", "--target", "tg"])?;
        anyhow::ensure!(
            out.status.success(),
            "backup before the restore crash failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        before = backup_ids(&d)?;
        let out = d.cli(&["backup", "restore", &before[0], "--to", "r1"])?;
        anyhow::ensure!(!out.status.success(), "the restore should have been cut off");
    } else {
        let out = d.cli(&["backup", "create", "src", "--target", "tg"])?;
        anyhow::ensure!(
            !out.status.success(),
            "the backup should have been cut off: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    d.wait_exit(Duration::from_secs(60))
        .map_err(|e| anyhow::anyhow!("{point}: the daemon did not die ({e})\n{}", d.log_tail()))?;
    d.restart()?;
    d.wait_ops_settled(Duration::from_secs(60))?;

    // No half backup: a backup is listed only if its manifest was complete, and then it verifies.
    let listed = backup_ids(&d)?;
    if point == "backup:after-manifest" {
        assert_eq!(listed.len(), 1, "a written manifest is finished by the reconciler");
        assert_eq!(d.json(&["backup", "verify", &listed[0]])?["ok"], true);
    } else {
        assert_eq!(listed, before, "{point}: no half backup listed");
    }
    assert!(
        d.json(&["snapshot", "list"])?.as_array().unwrap().is_empty(),
        "{point}: temporary snapshot removed"
    );
    let (blocks, referenced) = target_state(&dir)?;
    assert!(
        blocks.is_subset(&referenced) && referenced.is_subset(&blocks),
        "{point}: no orphan or missing blocks ({} stored, {} referenced)",
        blocks.len(),
        referenced.len()
    );
    if restoring {
        let vols: Vec<String> = d
            .json(&["volume", "list"])?
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            vols,
            vec!["src".to_string()],
            "{point}: the half-restored volume was removed"
        );
    }

    // The next run completes, and restores byte-identical.
    let id = if restoring {
        before[0].clone()
    } else {
        d.json(&["backup", "create", "src", "--target", "tg"])?["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    d.ok(&["backup", "restore", &id, "--to", "r2"])?;
    assert_eq!(
        sha256(&image_of(&d, "r2")?)?,
        sum,
        "{point}: restore after the crash is byte-identical"
    );
    Ok(())
}

/// The daemon's backup crash points (`elara::ops::faults::POINTS`), not a copy that drifts.
fn crash_points() -> Vec<&'static str> {
    elara::ops::faults::POINTS
        .iter()
        .copied()
        .filter(|p| p.starts_with("backup"))
        .collect()
}

fn crashes(store: StoreKind) -> anyhow::Result<()> {
    let mut failures = vec![];
    let points = crash_points();
    assert!(points.len() >= 6, "only {} backup crash points found", points.len());
    for p in &points {
        eprintln!("crash point {p} ({store:?})");
        if let Err(e) = crash_point(store, p) {
            failures.push(format!("{p}: {e:#}"));
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} of {} crash points failed:\n{}",
        failures.len(),
        points.len(),
        failures.join("\n\n")
    );
    Ok(())
}

/// Wait (polling, up to `limit`) until `cond` holds.
/// What [`backup_losing_target`] leaves for the test to check.
struct LostTarget {
    d: Daemon,
    /// The failed backup job.
    job: Value,
    /// sha256 of the volume `src`.
    sum: String,
}

/// A daemon with target `tg` (made by `add_target`, which returns what `take_away` needs) and a
/// 64 MiB volume `src` of known data; a backup of `src` held mid-upload (`ELARA_PAUSE_AT`) while
/// `take_away` removes the target, then let go. Checks what every lost target must give: the job failed, no backup is listed,
/// and the temporary snapshot is gone.
fn backup_losing_target<T>(
    store: StoreKind,
    add_target: impl FnOnce(&Daemon) -> anyhow::Result<T>,
    take_away: impl FnOnce(&T) -> anyhow::Result<()>,
) -> anyhow::Result<(LostTarget, T)> {
    let pause = work_dir().join(unique("pause"));
    std::fs::write(&pause, b"")?;
    let reached = pause.with_extension("reached");
    let mut opts = DaemonOpts::new(store);
    opts.env.push((
        "ELARA_PAUSE_AT".into(),
        format!("backup:mid-upload={}", pause.display()),
    ));
    let d = Daemon::start(opts)?;
    let target = add_target(&d)?;
    d.ok(&["volume", "create", "src", "--size", "64M"])?;
    let image = image_of(&d, "src")?;
    write_known(&image, 7)?;
    let sum = sha256(&image)?;

    let job = d.json(&["backup", "create", "src", "--target", "tg", "--detach"])?;
    let job_id = job["id"].as_str().unwrap().to_string();
    let backup_id = job["backup"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(60), "the backup to reach mid-upload", || {
        Ok(reached.exists())
    })?;
    take_away(&target)?;
    std::fs::remove_file(&pause)?;
    let _ = std::fs::remove_file(&reached);

    let mut job = Value::Null;
    wait_for(Duration::from_secs(60), "the backup job to end", || {
        job = d.json(&["backup", "job", &job_id])?;
        Ok(job["state"] != "running")
    })?;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(backup_ids(&d)?.is_empty(), "no backup listed");
    assert!(
        d.fails(&["snapshot", "inspect", &format!("backup-{backup_id}")])?
            .contains("does not exist"),
        "temporary snapshot removed"
    );
    Ok((LostTarget { d, job, sum }, target))
}

impl LostTarget {
    fn error(&self) -> &str {
        self.job["error"].as_str().unwrap_or_default()
    }

    /// The next backup completes and restores byte-identical.
    fn next_backup_restores(&self) -> anyhow::Result<()> {
        let b = self.d.json(&["backup", "create", "src", "--target", "tg"])?;
        self.d
            .ok(&["backup", "restore", b["id"].as_str().unwrap(), "--to", "r1"])?;
        assert_eq!(
            sha256(&image_of(&self.d, "r1")?)?,
            self.sum,
            "restore after the vanished target is byte-identical"
        );
        Ok(())
    }
}

/// The target vanishes mid-backup (its directory taken away, as an unmounted disk): the backup
/// fails saying so, no backup is listed, the temporary snapshot goes. While the target is away
/// the undo cannot collect what the backup uploaded and keeps being retried by the reconciler;
/// once the target is back those orphans are removed. The next backup completes and restores
/// byte-identical.
fn target_vanishes(store: StoreKind) -> anyhow::Result<()> {
    let (lost, dir) = backup_losing_target(
        store,
        |d| Ok(add_target(d, "tg", false)?.unwrap()),
        |dir| Ok(std::fs::rename(dir, dir.with_extension("away"))?),
    )?;
    let away = dir.with_extension("away");
    let err = lost.error();
    assert!(
        err.contains("gone") && err.contains(&dir.display().to_string()),
        "the error says the target is gone: {err}"
    );
    let (orphans, _) = target_state(&away)?;
    assert!(
        !orphans.is_empty(),
        "the backup had uploaded blocks before the target went"
    );

    // The target comes back with those blocks; the reconciler's retried undo collects them.
    std::fs::rename(&away, &dir)?;
    lost.d.wait_ops_settled(Duration::from_secs(60))?;
    let (blocks, referenced) = target_state(&dir)?;
    assert!(
        blocks.is_empty() && referenced.is_empty(),
        "orphans removed: {} blocks left",
        blocks.len()
    );
    lost.next_backup_restores()
}

/// The same with an S3 target whose bucket is deleted mid-backup: the backup fails naming
/// S3's `NoSuchBucket`, no backup is listed, the temporary snapshot goes, and nothing recreates
/// the bucket behind the operator's back (the undo waits for it). Once the bucket is made again
/// the reconciler settles the op and the next backup completes and restores byte-identical.
fn s3_bucket_vanishes(store: StoreKind) -> anyhow::Result<()> {
    let s3 = elara_tests::s3::S3Server::from_env();
    let bucket = format!("elara-vanish-{}", unique("b"));
    let (lost, ()) = backup_losing_target(
        store,
        |d| {
            let (endpoint, ak, sk) = s3_env();
            let url = format!("s3://{bucket}/bk");
            d.ok(&[
                "backup",
                "target",
                "add",
                "tg",
                &url,
                "--endpoint",
                &endpoint,
                "--access-key",
                &ak,
                "--secret-key",
                &sk,
            ])
            .map(drop)
        },
        |()| {
            s3.purge(&bucket)?;
            anyhow::ensure!(!s3.buckets()?.contains(&bucket), "the bucket is still there");
            Ok(())
        },
    )?;
    let err = lost.error();
    assert!(err.contains("NoSuchBucket"), "the error names S3's reason: {err}");
    // The undo cannot collect what was uploaded while the bucket is gone: it waits, and
    // nothing recreates the bucket behind the operator's back.
    let ops = lost.d.json(&["op", "list"])?;
    assert!(
        ops.as_array().is_some_and(|a| !a.is_empty()),
        "the undo is pending: {ops}"
    );
    assert!(
        !s3.buckets()?.contains(&bucket),
        "the bucket was recreated behind the operator's back"
    );

    // The operator makes the bucket again: the undo settles, and the next run completes.
    s3.create_bucket(&bucket)?;
    lost.d.wait_ops_settled(Duration::from_secs(60))?;
    lost.next_backup_restores()?;
    s3.purge(&bucket)?;
    Ok(())
}

#[test]
fn s3_bucket_vanishes_embedded() -> anyhow::Result<()> {
    s3_bucket_vanishes(StoreKind::Embedded)
}

#[test]
fn s3_bucket_vanishes_etcd() -> anyhow::Result<()> {
    s3_bucket_vanishes(StoreKind::Etcd)
}

#[test]
fn target_vanishes_embedded() -> anyhow::Result<()> {
    target_vanishes(StoreKind::Embedded)
}

#[test]
fn target_vanishes_etcd() -> anyhow::Result<()> {
    target_vanishes(StoreKind::Etcd)
}

#[test]
fn round_trip_dir_embedded() -> anyhow::Result<()> {
    round_trip(StoreKind::Embedded, false)
}

#[test]
fn round_trip_dir_etcd() -> anyhow::Result<()> {
    round_trip(StoreKind::Etcd, false)
}

#[test]
fn round_trip_s3_embedded() -> anyhow::Result<()> {
    round_trip(StoreKind::Embedded, true)
}

#[test]
fn round_trip_s3_etcd() -> anyhow::Result<()> {
    round_trip(StoreKind::Etcd, true)
}

#[test]
fn corruption_embedded() -> anyhow::Result<()> {
    corruption(StoreKind::Embedded)
}

#[test]
fn corruption_etcd() -> anyhow::Result<()> {
    corruption(StoreKind::Etcd)
}

#[test]
fn crash_embedded() -> anyhow::Result<()> {
    crashes(StoreKind::Embedded)
}

#[test]
fn crash_etcd() -> anyhow::Result<()> {
    crashes(StoreKind::Etcd)
}

/// On a reflink pool (a loop-mounted XFS), the incremental reads only the changed blocks: the
/// others map to the same shared extents as the parent's base snapshot (FIEMAP). Restores are
/// byte-identical; the base snapshot is hidden from `snapshot list` and goes with the volume.
fn fiemap_incremental(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut d = Daemon::start(DaemonOpts::new(store))?;
    // Move the pool directory onto a fresh XFS with reflink while the daemon is down.
    d.kill9();
    let pools = d.dir.join("pools");
    let xfs = d.dir.join("pools.xfs");
    std::fs::rename(&pools, d.dir.join("pools.old"))?;
    std::fs::create_dir(&pools)?;
    std::fs::File::create(&xfs)?.set_len(1 << 30)?;
    let run = |cmd: &str, args: &[&str]| -> anyhow::Result<()> {
        let st = std::process::Command::new(cmd).args(args).status()?;
        anyhow::ensure!(st.success(), "{cmd} {args:?} failed");
        Ok(())
    };
    run("mkfs.xfs", &["-q", "-m", "reflink=1", xfs.to_str().unwrap()])?;
    run("mount", &["-o", "loop", xfs.to_str().unwrap(), pools.to_str().unwrap()])?;
    let result = (|| -> anyhow::Result<()> {
        run(
            "cp",
            &[
                "-a",
                &format!("{}/.", d.dir.join("pools.old").display()),
                pools.to_str().unwrap(),
            ],
        )?;
        d.restart()?;
        add_target(&d, "tg", false)?;
        d.ok(&["volume", "create", "src", "--size", "64M"])?;
        let image = image_of(&d, "src")?;
        write_known(&image, 5)?;
        let full = d.json(&["backup", "create", "src", "--target", "tg"])?;
        assert!(
            full["base_snapshot"].is_string(),
            "a reflink snapshot is kept as the next base: {full}"
        );
        let touched = change_one_percent(&image, 6)?;
        let sum = sha256(&image)?;
        let incr = d.json(&["backup", "create", "src", "--target", "tg"])?;
        assert_eq!(
            incr["uploaded_blocks"].as_u64().unwrap(),
            touched.len() as u64,
            "{incr}"
        );
        let reused = incr["reused_blocks"].as_u64().unwrap();
        assert!(
            reused >= 5 - touched.len() as u64 && reused > 0,
            "unchanged blocks found by FIEMAP, not read: {incr}"
        );
        assert!(
            incr["scanned_bytes"].as_u64().unwrap() <= touched.len() as u64 * 4 * MIB + 4 * MIB,
            "only changed blocks read: {incr}"
        );
        // Only the newest base snapshot is kept, and it is the backups', not the user's: hidden
        // from `snapshot list`, shown by `snapshot inspect`.
        let (old_base, base) = (
            full["base_snapshot"].as_str().unwrap(),
            incr["base_snapshot"].as_str().unwrap(),
        );
        let snaps = d.json(&["snapshot", "list"])?;
        assert!(
            snaps.as_array().unwrap().is_empty(),
            "base snapshots are hidden: {snaps}"
        );
        d.ok(&["snapshot", "inspect", base])?;
        assert!(
            d.fails(&["snapshot", "inspect", old_base])?.contains("does not exist"),
            "the parent's base is retired"
        );
        d.ok(&["backup", "restore", incr["id"].as_str().unwrap(), "--to", "r1"])?;
        assert_eq!(sha256(&image_of(&d, "r1")?)?, sum);
        // A user snapshot still holds the volume; the base snapshot does not: it goes with the
        // volume, and the backups stay whole.
        d.ok(&["snapshot", "create", "src", "--name", "mine"])?;
        assert!(
            d.fails(&["volume", "delete", "src"])?.contains("mine"),
            "a user snapshot holds the volume"
        );
        d.ok(&["snapshot", "delete", "mine"])?;
        d.ok(&["volume", "delete", "src"])?;
        assert!(
            d.fails(&["snapshot", "inspect", base])?.contains("does not exist"),
            "the base snapshot went with its volume"
        );
        for id in backup_ids(&d)? {
            assert_eq!(d.json(&["backup", "verify", &id])?["ok"], true);
        }
        d.ok(&["backup", "restore", incr["id"].as_str().unwrap(), "--to", "r2"])?;
        assert_eq!(sha256(&image_of(&d, "r2")?)?, sum);
        for id in backup_ids(&d)? {
            d.ok(&["backup", "delete", &id])?;
        }
        d.ok(&["volume", "delete", "r1"])?;
        d.ok(&["volume", "delete", "r2"])?;
        Ok(())
    })();
    d.kill9();
    let _ = std::process::Command::new("umount").arg(&pools).status();
    result
}

#[test]
fn fiemap_incremental_embedded() -> anyhow::Result<()> {
    fiemap_incremental(StoreKind::Embedded)
}

#[test]
fn fiemap_incremental_etcd() -> anyhow::Result<()> {
    fiemap_incremental(StoreKind::Etcd)
}

/// Block collection racing a backup (issue 15): backup `a` of an unchanged volume is deleted, and
/// its block collection is held between its mark (what the manifests reference) and its sweep
/// (`ELARA_PAUSE_AT=gc:after-mark`) while backup `b` of the same volume starts: every block of
/// `b` dedups against `a`'s blocks, which the held collection has marked unreferenced. Once the
/// collection goes on, `b` must still be whole: it verifies, restores byte-identical, and (a
/// directory target) every block its manifest names is stored.
fn gc_races_backup(store: StoreKind, s3: bool) -> anyhow::Result<()> {
    let pause = work_dir().join(unique("gc-pause"));
    std::fs::write(&pause, b"")?;
    let reached = pause.with_extension("reached");
    let mut opts = DaemonOpts::new(store);
    opts.env
        .push(("ELARA_PAUSE_AT".into(), format!("gc:after-mark={}", pause.display())));
    let d = Daemon::start(opts)?;
    let dir = add_target(&d, "tg", s3)?;
    d.ok(&["volume", "create", "src", "--size", "64M"])?;
    let image = image_of(&d, "src")?;
    write_known(&image, 8)?;
    let sum = sha256(&image)?;
    let a = d.json(&["backup", "create", "src", "--target", "tg"])?;
    let a_id = a["id"].as_str().unwrap().to_string();

    let (job_id, b) = std::thread::scope(|sc| -> anyhow::Result<(String, Value)> {
        let deleter = sc.spawn(|| d.ok(&["backup", "delete", &a_id]));
        wait_for(
            Duration::from_secs(60),
            "the block collection of the deleted backup to reach its sweep",
            || Ok(reached.exists()),
        )?;
        let job = d.json(&["backup", "create", "src", "--target", "tg", "--detach"])?;
        let job_id = job["id"].as_str().unwrap().to_string();
        // Let the collection go on once the new backup has either run through (it found every
        // block in the target) or stopped for the collection.
        let mut view = Value::Null;
        wait_for(
            Duration::from_secs(120),
            "the new backup to finish or to wait for the collection",
            || {
                view = d.json(&["backup", "job", &job_id])?;
                Ok(view["state"] != "running" || view["progress"]["phase"] == "waiting-for-gc")
            },
        )?;
        eprintln!(
            "the new backup, when the collection went on: state {}, phase {}",
            view["state"], view["progress"]["phase"]
        );
        std::fs::remove_file(&pause)?;
        deleter.join().expect("the delete thread")?;
        wait_for(Duration::from_secs(120), "the new backup to end", || {
            view = d.json(&["backup", "job", &job_id])?;
            Ok(view["state"] != "running")
        })?;
        Ok((job_id, view))
    })?;
    assert_eq!(b["state"], "done", "backup job {job_id}: {b}");
    let b_id = b["backup"].as_str().unwrap();
    assert_eq!(backup_ids(&d)?, vec![b_id.to_string()]);
    let report = d
        .json(&["backup", "verify", b_id])
        .map_err(|e| anyhow::anyhow!("backup {b_id} does not verify after the collection: {e:#}"))?;
    assert_eq!(report["ok"], true, "{report}");
    d.ok(&["backup", "restore", b_id, "--to", "r1"])?;
    assert_eq!(
        sha256(&image_of(&d, "r1")?)?,
        sum,
        "restore of {b_id} is byte-identical"
    );
    if let Some(dir) = dir {
        let (blocks, referenced) = target_state(&dir)?;
        assert!(
            referenced.is_subset(&blocks),
            "blocks named by a manifest are missing: {:?}",
            referenced.difference(&blocks).collect::<Vec<_>>()
        );
    }
    let _ = std::fs::remove_file(&reached);
    Ok(())
}

#[test]
fn gc_races_backup_dir_embedded() -> anyhow::Result<()> {
    gc_races_backup(StoreKind::Embedded, false)
}

#[test]
fn gc_races_backup_dir_etcd() -> anyhow::Result<()> {
    gc_races_backup(StoreKind::Etcd, false)
}

#[test]
fn gc_races_backup_s3_embedded() -> anyhow::Result<()> {
    gc_races_backup(StoreKind::Embedded, true)
}

#[test]
fn gc_races_backup_s3_etcd() -> anyhow::Result<()> {
    gc_races_backup(StoreKind::Etcd, true)
}

/// Names under `blocks/` that are not blocks Elara wrote (issue 15): non-hex, short, odd
/// lengths, a 64-character non-hex name, one whose first two bytes split a UTF-8 character,
/// a valid id under the wrong `<aa>/` directory, deeper paths, a stray file in `blocks/`, and
/// (directory targets) a name that is not UTF-8. Each relative to the target's root.
fn planted_names() -> Vec<(Vec<u8>, &'static str)> {
    let hex = "ab".repeat(32);
    let mut names: Vec<(Vec<u8>, &'static str)> = vec![
        (b"blocks/zz/not-hex".to_vec(), "non-hex"),
        (b"blocks/ab/abc".to_vec(), "short"),
        (format!("blocks/ab/{}", &hex[..63]).into_bytes(), "63 hex characters"),
        (format!("blocks/ab/{hex}0").into_bytes(), "65 hex characters"),
        (
            format!("blocks/zz/{}", "z".repeat(64)).into_bytes(),
            "64 non-hex characters",
        ),
        (
            format!("blocks/ab/{}", "€".to_string() + &"a".repeat(61)).into_bytes(),
            "64 bytes starting with a 3-byte character",
        ),
        (
            format!("blocks/00/{hex}").into_bytes(),
            "a valid id under the wrong directory",
        ),
        (
            format!("blocks/ab/deeper/{hex}").into_bytes(),
            "a valid id one level too deep",
        ),
        (b"blocks/stray".to_vec(), "a file directly in blocks/"),
        (
            format!("blocks/AB/{}", hex.to_uppercase()).into_bytes(),
            "upper-case hex",
        ),
    ];
    names.push(([b"blocks/ff/".as_slice(), &[0xff; 64]].concat(), "not UTF-8"));
    names
}

/// Planted names in a target never panic block collection and are never deleted; the real
/// unreferenced blocks still are. Directory target: every planted name, written as files.
fn foreign_block_names(store: StoreKind, s3: bool) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let d = Daemon::start(DaemonOpts::new(store))?;
    let s3_server = s3.then(elara_tests::s3::S3Server::from_env);
    let (bucket, prefix) = ("elara-backup-tests".to_string(), unique("foreign"));
    let dir = if s3 {
        let (endpoint, ak, sk) = s3_env();
        d.ok(&[
            "backup",
            "target",
            "add",
            "tg",
            &format!("s3://{bucket}/{prefix}"),
            "--endpoint",
            &endpoint,
            "--access-key",
            &ak,
            "--secret-key",
            &sk,
        ])?;
        None
    } else {
        add_target(&d, "tg", false)?
    };
    d.ok(&["volume", "create", "src", "--size", "64M"])?;
    write_known(&image_of(&d, "src")?, 9)?;
    let a = d.json(&["backup", "create", "src", "--target", "tg"])?;
    let a_id = a["id"].as_str().unwrap();

    // S3 keys are UTF-8: the non-UTF-8 name is for directory targets only.
    let planted: Vec<(Vec<u8>, &str)> = planted_names()
        .into_iter()
        .filter(|(n, _)| !s3 || std::str::from_utf8(n).is_ok())
        .collect();
    for (name, why) in &planted {
        match (&dir, &s3_server) {
            (Some(dir), _) => {
                let path = dir.join(std::ffi::OsStr::from_bytes(name));
                std::fs::create_dir_all(path.parent().unwrap())?;
                std::fs::write(&path, why.as_bytes())?;
            }
            (None, Some(s3)) => s3.put(&bucket, &format!("{prefix}/{}", std::str::from_utf8(name)?), why)?,
            _ => unreachable!(),
        }
    }
    // Deleting the only backup collects its blocks: a pass over every planted name.
    d.ok(&["backup", "delete", a_id])
        .map_err(|e| anyhow::anyhow!("the delete (and its block collection) failed: {e:#}\n{}", d.log_tail()))?;
    d.ok(&["info"])?;
    for (name, why) in &planted {
        let there = match (&dir, &s3_server) {
            (Some(dir), _) => std::fs::read(dir.join(std::ffi::OsStr::from_bytes(name)))
                .ok()
                .map(|b| b == why.as_bytes()),
            (None, Some(s3)) => s3
                .get(&bucket, &format!("{prefix}/{}", std::str::from_utf8(name)?))?
                .map(|t| t == *why),
            _ => unreachable!(),
        };
        assert_eq!(
            there,
            Some(true),
            "the planted {why} name {:?} was deleted or changed",
            String::from_utf8_lossy(name)
        );
    }
    // The backup's own blocks went: only planted names are left under blocks/.
    let left: Vec<String> = match (&dir, &s3_server) {
        (Some(dir), _) => walkdir_files(&dir.join("blocks"))?
            .into_iter()
            .map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().into_owned())
            .collect(),
        (None, Some(s3)) => s3
            .objects(&bucket, &format!("{prefix}/blocks/"))?
            .unwrap_or_default()
            .into_iter()
            .map(|(k, _)| k[prefix.len() + 1..].to_string())
            .collect(),
        _ => unreachable!(),
    };
    let planted_keys: HashSet<String> = planted
        .iter()
        .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
        .collect();
    let unplanted: Vec<&String> = left.iter().filter(|k| !planted_keys.contains(*k)).collect();
    assert!(
        unplanted.is_empty(),
        "the deleted backup's blocks are still there: {unplanted:?}"
    );
    let log = std::fs::read_to_string(d.dir.join("daemon.log"))?;
    assert!(
        log.contains("foreign"),
        "the log warns about the foreign names:\n{}",
        d.log_tail()
    );
    Ok(())
}

/// Every file under `dir`, recursively.
fn walkdir_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}

#[test]
fn foreign_block_names_dir_embedded() -> anyhow::Result<()> {
    foreign_block_names(StoreKind::Embedded, false)
}

#[test]
fn foreign_block_names_dir_etcd() -> anyhow::Result<()> {
    foreign_block_names(StoreKind::Etcd, false)
}

#[test]
fn foreign_block_names_s3_embedded() -> anyhow::Result<()> {
    foreign_block_names(StoreKind::Embedded, true)
}

#[test]
fn foreign_block_names_s3_etcd() -> anyhow::Result<()> {
    foreign_block_names(StoreKind::Etcd, true)
}
