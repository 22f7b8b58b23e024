//! Crash safety: for every fault-injection point of create, mount, unmount, snapshot, restore,
//! resize and delete, the daemon SIGKILLs itself at that step; after a restart the test asserts no
//! op left, no volume stuck in a transitional state, no orphan image file, loop device or mount,
//! and no written byte lost. Runs on both stores.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use elara_tests::*;

const DATA: &[u8] = b"precious bytes that must survive every crash\n";

/// What runs before the crashing command, and the command itself.
fn scenario(point: &str) -> (Vec<Vec<&'static str>>, Vec<&'static str>, Option<&'static str>) {
    let op = point.split(':').next().unwrap();
    // (setup commands, crashing command, the volume holding DATA to check afterwards)
    match op {
        "create" => (vec![], vec!["volume", "create", "cv", "--size", "32M"], None),
        "mount" => (
            vec![vec!["volume", "create", "mv", "--size", "32M"]],
            vec!["volume", "mount", "mv"],
            None,
        ),
        "unmount" => (
            vec![
                vec!["volume", "create", "uv", "--size", "32M"],
                vec!["volume", "mount", "uv"],
                vec!["WRITE", "uv"],
            ],
            vec!["volume", "unmount", "uv"],
            Some("uv"),
        ),
        "snapshot" => (
            vec![
                vec!["volume", "create", "sv", "--size", "32M"],
                vec!["volume", "mount", "sv"],
                vec!["WRITE", "sv"],
            ],
            vec!["snapshot", "create", "sv", "--name", "s1"],
            Some("sv"),
        ),
        "restore" => (
            vec![
                vec!["volume", "create", "bv", "--size", "32M"],
                vec!["volume", "mount", "bv"],
                vec!["WRITE", "bv"],
                vec!["snapshot", "create", "bv", "--name", "s2"],
            ],
            vec!["snapshot", "restore", "s2", "--to", "rv"],
            Some("bv"),
        ),
        "delete" => (
            vec![vec!["volume", "create", "dv", "--size", "32M"]],
            vec!["volume", "delete", "dv"],
            None,
        ),
        "snapshot-delete" => (
            vec![
                vec!["volume", "create", "xv", "--size", "32M"],
                vec!["snapshot", "create", "xv", "--name", "s3"],
            ],
            vec!["snapshot", "delete", "s3"],
            None,
        ),
        "resize" => (
            vec![
                vec!["volume", "create", "zv", "--size", "32M"],
                vec!["volume", "mount", "zv"],
                vec!["WRITE", "zv"],
            ],
            vec!["volume", "resize", "zv", "--size", "64M"],
            Some("zv"),
        ),
        other => panic!("no scenario for {other}"),
    }
}

fn mountpoint(d: &Daemon, vol: &str) -> anyhow::Result<String> {
    Ok(d.ok(&["volume", "mount", vol])?.trim().to_string())
}

fn run_point(store: StoreKind, point: &str) -> anyhow::Result<()> {
    let mut opts = DaemonOpts::new(store);
    opts.crash_at = Some(point.to_string());
    let mut d = Daemon::start(opts)?;
    let (setup, action, data_vol) = scenario(point);
    for cmd in &setup {
        if cmd[0] == "WRITE" {
            let mp = mountpoint(&d, cmd[1])?;
            std::fs::write(format!("{mp}/data.bin"), DATA)?;
            let _ = std::process::Command::new("sync").status();
        } else {
            d.ok(cmd)?;
        }
    }
    let out = d.cli(&action)?;
    d.wait_exit(Duration::from_secs(60)).map_err(|e| {
        anyhow::anyhow!(
            "{point}: the daemon did not die at the crash point ({e}); command said {out:?}\n{}",
            d.log_tail()
        )
    })?;
    d.restart()?;
    check_consistent(&d).map_err(|e| anyhow::anyhow!("{point} ({store:?}): {e}\n{}", d.log_tail()))?;
    if let Some(vol) = data_vol {
        let mp = mountpoint(&d, vol)?;
        let got = std::fs::read(format!("{mp}/data.bin"))?;
        assert_eq!(got, DATA, "{point}: written bytes survive");
    }
    cleanup_everything(&d)?;
    Ok(())
}

/// The invariants after a restart.
fn check_consistent(d: &Daemon) -> anyhow::Result<()> {
    let ops = d.json(&["op", "list"])?;
    anyhow::ensure!(ops.as_array().unwrap().is_empty(), "ops left after restart: {ops}");
    let vols = d.json(&["volume", "list"])?;
    let mut vol_ids = BTreeSet::new();
    let mut attached_mounts = BTreeSet::new();
    for v in vols.as_array().unwrap() {
        let status = v["status"].as_str().unwrap();
        anyhow::ensure!(
            status == "available" || status == "in-use",
            "volume {} stuck in {status}",
            v["name"]
        );
        anyhow::ensure!(v["op"].is_null(), "volume {} still locked by {}", v["name"], v["op"]);
        vol_ids.insert(v["id"].as_str().unwrap().to_string());
        for a in v["attachments"].as_array().unwrap() {
            anyhow::ensure!(
                a["state"] == "attached",
                "attachment of {} is {}",
                v["name"],
                a["state"]
            );
            attached_mounts.insert(a["host"]["mountpoint"].as_str().unwrap().to_string());
        }
    }
    let snaps = d.json(&["snapshot", "list"])?;
    let mut snap_ids = BTreeSet::new();
    for s in snaps.as_array().unwrap() {
        anyhow::ensure!(
            s["state"] == "available",
            "snapshot {} stuck in {}",
            s["name"],
            s["state"]
        );
        snap_ids.insert(s["id"].as_str().unwrap().to_string());
    }
    let pool = d.pool_dir("local");
    anyhow::ensure!(
        image_ids(&pool.join("volumes")) == vol_ids,
        "volume images {:?} != volumes {vol_ids:?}",
        image_ids(&pool.join("volumes"))
    );
    anyhow::ensure!(
        image_ids(&pool.join("snapshots")) == snap_ids,
        "snapshot images {:?} != snapshots {snap_ids:?}",
        image_ids(&pool.join("snapshots"))
    );
    let mounts: BTreeSet<String> = mounts_under(&d.dir).into_iter().collect();
    anyhow::ensure!(
        mounts == attached_mounts,
        "mounts {mounts:?} != attachments {attached_mounts:?}"
    );
    let pool_s = pool.display().to_string();
    let loops: Vec<_> = loop_devices()
        .into_iter()
        .filter(|(_, b)| b.starts_with(&pool_s))
        .collect();
    anyhow::ensure!(
        loops.len() == attached_mounts.len(),
        "loop devices {loops:?} but {} attachments",
        attached_mounts.len()
    );
    Ok(())
}

/// Ids of `<id>.img` files; any other file (temporary, half-made) is reported as an orphan.
fn image_ids(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| !n.ends_with(".json"))
                .map(|n| {
                    n.strip_suffix(".img")
                        .map(str::to_string)
                        .unwrap_or(format!("ORPHAN:{n}"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Unmount, delete snapshots and volumes; the pool must end empty.
fn cleanup_everything(d: &Daemon) -> anyhow::Result<()> {
    for v in d.json(&["volume", "list"])?.as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        for a in v["attachments"].as_array().unwrap() {
            for holder in a["holders"].as_object().unwrap().keys() {
                let h = holder.strip_prefix("rest:");
                match h {
                    Some(h) => d.ok(&["volume", "unmount", name, "--holder", h])?,
                    None => d.ok(&["volume", "unmount", name])?,
                };
            }
        }
    }
    for s in d.json(&["snapshot", "list"])?.as_array().unwrap() {
        d.ok(&["snapshot", "delete", s["name"].as_str().unwrap()])?;
    }
    for v in d.json(&["volume", "list"])?.as_array().unwrap() {
        d.ok(&["volume", "delete", v["name"].as_str().unwrap()])?;
    }
    let pool = d.pool_dir("local");
    anyhow::ensure!(
        image_ids(&pool.join("volumes")).is_empty() && image_ids(&pool.join("snapshots")).is_empty(),
        "pool not empty after cleanup"
    );
    anyhow::ensure!(mounts_under(&d.dir).is_empty(), "mounts left after cleanup");
    Ok(())
}

/// The daemon's crash points of the volume lifecycle (`elara::ops::faults::POINTS`; the backup
/// ones are `backup.rs`'s, and `gc:` points are pauses, not crashes).
fn points() -> Vec<&'static str> {
    elara::ops::faults::POINTS
        .iter()
        .copied()
        .filter(|p| !p.starts_with("backup") && !p.starts_with("gc:"))
        .collect()
}

fn all_points(store: StoreKind) -> anyhow::Result<()> {
    let mut failures = vec![];
    let points = points();
    anyhow::ensure!(points.len() >= 18, "only {} volume crash points found", points.len());
    for point in &points {
        eprintln!("crash point {point} ({store:?})");
        if let Err(e) = run_point(store, point) {
            failures.push(format!("{point}: {e:#}"));
        }
    }
    eprintln!("{} crash points, {} failed", points.len(), failures.len());
    anyhow::ensure!(
        failures.is_empty(),
        "{} of {} crash points failed:\n{}",
        failures.len(),
        points.len(),
        failures.join("\n\n")
    );
    Ok(())
}

#[test]
fn crash_points_embedded() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    all_points(StoreKind::Embedded)
}

#[test]
fn crash_points_etcd() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    all_points(StoreKind::Etcd)
}
