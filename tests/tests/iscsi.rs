//! Cinder block volumes reach containers: Cinder (`scripts/services/cinder.sh`, backend `lun`) →
//! a LUN of the real tgt target (`scripts/services/tgt.sh`, 127.0.0.1:3260, CHAP) → this node's
//! user-space initiator (one `qemu-storage-daemon` per volume, FUSE export, loop device) → ext4
//! made on first use → mounted → `docker run -v`. Every claim is checked independently: the
//! bytes in the LUN's backing file (read with `debugfs`, no mount), Cinder's API (curl), the
//! processes, loop devices and mounts on this machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use elara_tests::cinder::Cinder;
use elara_tests::docker::{Engine, IMAGE, Plugin};
use elara_tests::*;
use serde_json::Value;

/// The outage test stops the one tgtd of this machine: it holds this exclusively, every other
/// test of this binary shares it.
static TARGET_UP: RwLock<()> = RwLock::new(());

/// A daemon with a Docker plugin, a Cinder backend on the `lun` backend's type, and a dockerd.
struct Rig {
    cinder: Cinder,
    tag: String,
    luns: PathBuf,
    tgt_service: PathBuf,
    plugin: Plugin,
    engine: Option<Engine>,
    d: Daemon,
}

impl Rig {
    fn start(store: StoreKind, docker: bool) -> anyhow::Result<Rig> {
        let cinder = Cinder::from_env();
        let var = |k: &str| {
            std::env::var(k).with_context(|| {
                format!("{k} is not set: start the Cinder stack with scripts/services/cinder.sh (scripts/test.sh does)")
            })
        };
        let lun_type = var("ELARA_TEST_CINDER_LUN_TYPE")?;
        let portal = var("ELARA_TEST_TGT_PORTAL")?;
        let luns = PathBuf::from(var("ELARA_TEST_TGT_LUNS")?);
        let tgt_service = PathBuf::from(var("ELARA_TEST_TGT_SERVICE")?);
        let plugin = Plugin::new()?;
        let mut opts = DaemonOpts::new(store);
        opts.plugin_dir = Some(plugin.dir.clone());
        // A dead target fails a request after 5 s instead of the default 30 s.
        opts.env.push(("ELARA_ATTACH_IO_TIMEOUT".into(), "5".into()));
        let d = Daemon::start(opts)?;
        let tag = unique("blk");
        let mut args = cinder.backend_add("cinder1", &tag, &[("volume_type", lun_type.as_str())]);
        args.push("--allow-host".into());
        args.push(portal);
        d.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        let engine = if docker { Some(Engine::start(&[])?) } else { None };
        Ok(Rig {
            cinder,
            tag,
            luns,
            tgt_service,
            plugin,
            engine,
            d,
        })
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("a rig with docker")
    }

    /// The Cinder volume behind Elara's volume `name`, and its LUN's backing file.
    fn lun_file(&self, name: &str) -> anyhow::Result<PathBuf> {
        let v = self.d.json(&["volume", "inspect", name])?;
        let uuid = v["backend_ref"].as_str().context("backend_ref")?;
        Ok(self.luns.join(format!("volume-{uuid}.img")))
    }

    /// This node's attachment of `name`, as `volume inspect` shows it.
    fn attachment(&self, name: &str) -> anyhow::Result<Value> {
        let v = self.d.json(&["volume", "inspect", name])?;
        Ok(v["attachments"]
            .as_array()
            .and_then(|a| a.first())
            .cloned()
            .unwrap_or(Value::Null))
    }

    fn tgt(&self, action: &str) -> anyhow::Result<()> {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/services/tgt.sh"))
            .arg(action)
            .arg(&self.tgt_service)
            .output()?;
        ensure!(
            out.status.success(),
            "tgt.sh {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Nothing of the daemon's volumes is left on this machine: no helper, mount or loop device.
    fn nothing_left(&self) -> anyhow::Result<()> {
        let dir = self.d.dir.display().to_string();
        ensure!(
            helpers_under(&self.d.dir).is_empty(),
            "helper processes left: {:?}",
            helpers_under(&self.d.dir)
        );
        let mounts: Vec<String> = mounts_under(&self.d.dir);
        ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
        let loops: Vec<_> = loop_devices()
            .into_iter()
            .filter(|(_, b)| b.starts_with(&dir))
            .collect();
        ensure!(loops.is_empty(), "loop devices left: {loops:?}");
        Ok(())
    }
}

/// A file inside an ext4 image, read without mounting it (`debugfs`, e2fsprogs).
fn read_in_image(image: &Path, file: &str) -> anyhow::Result<String> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(image)
        .output()
        .context("running debugfs")?;
    ensure!(
        out.status.success(),
        "debugfs {}: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A GET on the daemon's REST socket.
fn rest_get(d: &Daemon, path: &str) -> anyhow::Result<Value> {
    let out = Command::new("curl")
        .args(["-sS", "-m", "30", "--unix-socket"])
        .arg(&d.socket)
        .arg(format!("http://elara{path}"))
        .output()?;
    ensure!(
        out.status.success(),
        "GET {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Through Docker: create on Cinder, write from a container, the bytes are on the LUN, a second
/// container reads them, snapshot and restore through Cinder, remove: nothing left anywhere.
fn docker_block_volume(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _up = TARGET_UP.read().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::start(store, true)?;
    let (e, p) = (rig.engine(), rig.plugin.name.as_str());
    let info = rig.d.json(&["info"])?;
    let user_iscsi = info["data_paths"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["protocol"] == "iscsi" && p["selected"] == true);
    ensure!(
        user_iscsi.is_some(),
        "no iSCSI data path selected: {}",
        info["data_paths"]
    );

    e.ok(&[
        "volume",
        "create",
        "-d",
        p,
        "-o",
        "backend=cinder1",
        "-o",
        "size=1G",
        "db",
    ])?;
    let lun = rig.lun_file("db")?;
    ensure!(lun.is_file(), "Cinder made no LUN file {}", lun.display());
    let uuid = rig.d.json(&["volume", "inspect", "db"])?["backend_ref"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let one = format!("first {}", unique("bytes"));
    e.ok(&[
        "run",
        "--rm",
        "-v",
        "db:/data",
        IMAGE,
        "sh",
        "-c",
        &format!("echo '{one}' > /data/hello && sync"),
    ])?;
    // Unmounted at the container's exit: the bytes are on the target's disk.
    ensure!(
        read_in_image(&lun, "/hello")?.trim() == one,
        "the LUN's file does not hold what the container wrote"
    );
    let read = e.ok(&["run", "--rm", "-v", "db:/data", IMAGE, "cat", "/data/hello"])?;
    ensure!(read.trim() == one, "a second container read {read:?}");

    // Mounted, the LUN's CHAP secret (Cinder's word for it) is nowhere outside the daemon.
    rig.d.ok(&["volume", "mount", "db", "--holder", "sweep"])?;
    let att = rig.cinder.attachments(&uuid)?;
    let att_id = att
        .first()
        .and_then(|a| a["id"].as_str())
        .context("no Cinder attachment while mounted")?;
    let info = rig.cinder.get(&format!("/attachments/{att_id}"), &[])?["attachment"]["connection_info"].clone();
    let chap = info["auth_password"]
        .as_str()
        .context("no CHAP secret in Cinder's connection info")?
        .to_string();
    let (leaks, swept) = elara_tests::secrets::sweep(&rig.d, &[&chap])?;
    ensure!(leaks.is_empty(), "the CHAP secret leaked to:\n{}", leaks.join("\n"));
    eprintln!("secrets sweep with a mounted LUN: {swept} REST GETs, argv, files, log: clean");
    rig.d.ok(&["volume", "unmount", "db", "--holder", "sweep"])?;
    ensure!(
        rig.cinder.volume(&uuid)?["status"] == "available",
        "Cinder volume not available between containers"
    );

    // Snapshot (through Cinder), change the volume, restore: the restored volume has the old bytes.
    rig.d.ok(&["snapshot", "create", "db", "--name", "s1"])?;
    e.ok(&[
        "run",
        "--rm",
        "-v",
        "db:/data",
        IMAGE,
        "sh",
        "-c",
        "echo second > /data/hello && sync",
    ])?;
    rig.d.ok(&["snapshot", "restore", "s1", "--to", "db2"])?;
    let old = e.ok(&["run", "--rm", "-v", "db2:/data", IMAGE, "cat", "/data/hello"])?;
    ensure!(
        old.trim() == one,
        "the restored volume holds {old:?}, not the snapshot's bytes"
    );
    let new = e.ok(&["run", "--rm", "-v", "db:/data", IMAGE, "cat", "/data/hello"])?;
    ensure!(new.trim() == "second", "the volume holds {new:?}");
    rig.nothing_left()?;

    rig.d.ok(&["snapshot", "delete", "s1"])?;
    e.ok(&["volume", "rm", "db", "db2"])?;
    ensure!(!lun.exists(), "the LUN file {} is left", lun.display());
    ensure!(
        rig.cinder.volumes_where("elara-tag", &rig.tag)?.is_empty(),
        "Cinder volumes left"
    );
    rig.nothing_left()
}

#[test]
fn docker_block_volume_embedded() -> anyhow::Result<()> {
    docker_block_volume(StoreKind::Embedded)
}

#[test]
fn docker_block_volume_etcd() -> anyhow::Result<()> {
    docker_block_volume(StoreKind::Etcd)
}

/// The daemon SIGKILLed while a container writes: the container sees no error, the restarted
/// daemon adopts the same helper (one process), and the container's exit cleans up.
fn daemon_killed_while_writing(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _up = TARGET_UP.read().unwrap_or_else(|e| e.into_inner());
    let mut rig = Rig::start(store, true)?;
    let p = rig.plugin.name.clone();
    rig.engine().ok(&[
        "volume",
        "create",
        "-d",
        &p,
        "-o",
        "backend=cinder1",
        "-o",
        "size=1G",
        "busy",
    ])?;
    let script = "set -e; i=0; while true; do i=$((i+1)); echo $i >> /data/log; sleep 0.02; done";
    let cid = rig
        .engine()
        .ok(&["run", "-d", "-v", "busy:/data", IMAGE, "sh", "-c", script])?
        .trim()
        .to_string();
    let att = rig.attachment("busy")?;
    let log = PathBuf::from(att["host"]["mountpoint"].as_str().context("mountpoint")?).join("log");
    let pid = att["host"]["helper"]["pid"]
        .as_u64()
        .context("no helper pid in the attachment")?;
    wait_for(Duration::from_secs(20), "the container to write", || {
        Ok(line_count(&log) > 10)
    })?;

    rig.d.kill9();
    let before = line_count(&log);
    wait_for(Duration::from_secs(20), "writes to go on with the daemon dead", || {
        Ok(line_count(&log) > before + 20)
    })?;
    rig.d.restart()?;
    rig.d.wait_ops_settled(Duration::from_secs(60))?;
    let after = rig.attachment("busy")?;
    ensure!(after["state"] == "attached", "after the restart: {after}");
    ensure!(
        after["host"]["helper"]["pid"].as_u64() == Some(pid),
        "the helper changed: {pid} → {}",
        after["host"]["helper"]["pid"]
    );
    let helpers = helpers_under(&rig.d.dir);
    ensure!(
        helpers == vec![pid as u32],
        "helpers after the restart: {helpers:?} (want only {pid})"
    );
    let before = line_count(&log);
    wait_for(Duration::from_secs(20), "writes after the restart", || {
        Ok(line_count(&log) > before + 20)
    })?;
    let running = rig.engine().ok(&["inspect", "-f", "{{.State.Running}}", &cid])?;
    ensure!(
        running.trim() == "true",
        "the container stopped: {}",
        rig.engine().ok(&["logs", &cid]).unwrap_or_default()
    );

    // The last Unmount after the restart takes everything down.
    rig.engine().ok(&["rm", "-f", &cid])?;
    wait_for(Duration::from_secs(60), "the detach at the container's end", || {
        Ok(rig.attachment("busy")?.is_null())
    })?;
    rig.nothing_left()?;
    rig.engine().ok(&["volume", "rm", "busy"])?;
    ensure!(
        rig.cinder.volumes_where("elara-tag", &rig.tag)?.is_empty(),
        "Cinder volumes left"
    );
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

/// The helper killed under a mounted volume: the attachment is marked failed (inspect and
/// /v1/health), nothing hangs, the next mount works. Then the target stopped while mounted: I/O
/// fails within a bounded time, unmount does not hang, and once it is back the volume works.
fn helper_and_target_failures(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let up = TARGET_UP.read().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::start(store, false)?;
    let d = &rig.d;
    d.ok(&["volume", "create", "vf", "--backend", "cinder1", "--size", "1G"])?;
    let mp = PathBuf::from(d.ok(&["volume", "mount", "vf"])?.trim());
    std::fs::write(mp.join("kept"), b"kept")?;
    ensure!(
        Command::new("sync").arg("-f").arg(mp.join("kept")).status()?.success(),
        "sync"
    );
    let pid = rig.attachment("vf")?["host"]["helper"]["pid"]
        .as_u64()
        .context("helper pid")?;

    // Kill the helper.
    ensure!(
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()?
            .success(),
        "kill {pid}"
    );
    wait_for(Duration::from_secs(30), "the attachment to be marked failed", || {
        Ok(rig.attachment("vf")?["state"] == "failed")
    })?;
    let att = rig.attachment("vf")?;
    ensure!(
        att["error"]
            .as_str()
            .is_some_and(|e| e.contains("qemu-storage-daemon") && e.contains("exited")),
        "failed attachment: {att}"
    );
    let health = rest_get(d, "/v1/health")?;
    let failed = health["failed_attachments"].as_array().cloned().unwrap_or_default();
    ensure!(
        failed.iter().any(|f| f["volume"] == "vf"),
        "/v1/health does not say so: {health}"
    );
    // The next mount (another holder) brings it up anew, with the data.
    let t = Instant::now();
    let mp2 = PathBuf::from(d.ok(&["volume", "mount", "vf", "--holder", "second"])?.trim());
    ensure!(
        t.elapsed() < Duration::from_secs(60),
        "the remount took {:?}",
        t.elapsed()
    );
    ensure!(
        std::fs::read(mp2.join("kept"))? == b"kept",
        "the data is not there after the remount"
    );
    let att = rig.attachment("vf")?;
    ensure!(
        att["state"] == "attached" && att["host"]["helper"]["pid"].as_u64() != Some(pid),
        "after the remount: {att}"
    );
    ensure!(
        rest_get(d, "/v1/health")?["failed_attachments"].is_null(),
        "health still lists a failed attachment"
    );
    ensure!(helpers_under(&d.dir).len() == 1, "helpers: {:?}", helpers_under(&d.dir));

    // The target goes away while mounted.
    drop(up);
    {
        let _only_us = TARGET_UP.write().unwrap_or_else(|e| e.into_inner());
        rig.tgt("stop")?;
        let t = Instant::now();
        let file = mp2.join("during-outage");
        let write = Command::new("sh")
            .arg("-c")
            .arg(format!("echo x > {0} && sync -f {0}", file.display()))
            .status()?;
        let took = t.elapsed();
        ensure!(!write.success(), "a write and sync succeeded with the target down");
        ensure!(took < Duration::from_secs(60), "the failing write took {took:?}");
        eprintln!("write+sync with the target down failed after {took:?}");
        let t = Instant::now();
        let out = d.cli(&["volume", "unmount", "vf", "--holder", "second"])?;
        let out2 = d.cli(&["volume", "unmount", "vf"])?;
        eprintln!(
            "unmounts with the target down: {:?} / {:?} after {:?}",
            out.status,
            out2.status,
            t.elapsed()
        );
        ensure!(
            t.elapsed() < Duration::from_secs(150),
            "unmount with the target down took {:?}",
            t.elapsed()
        );
        rig.tgt("start")?;
    }
    let _up = TARGET_UP.read().unwrap_or_else(|e| e.into_inner());
    // Whatever the unmount managed, once the target is back a mount works and holds the data.
    let t = Instant::now();
    loop {
        let att = rig.attachment("vf")?;
        if att.is_null() {
            break;
        }
        // A detach that failed while the target was down is finished by unmounting again.
        let _ = d.cli(&["volume", "unmount", "vf", "--holder", "second"]);
        let _ = d.cli(&["volume", "unmount", "vf"]);
        if t.elapsed() > Duration::from_secs(120) {
            bail!("the attachment is still there after the target came back: {att}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mp3 = PathBuf::from(d.ok(&["volume", "mount", "vf"])?.trim());
    ensure!(
        std::fs::read(mp3.join("kept"))? == b"kept",
        "the data is gone after the outage"
    );
    d.ok(&["volume", "unmount", "vf"])?;
    rig.nothing_left()?;
    d.ok(&["volume", "delete", "vf"])?;
    ensure!(
        rig.cinder.volumes_where("elara-tag", &rig.tag)?.is_empty(),
        "Cinder volumes left"
    );
    Ok(())
}

#[test]
fn helper_and_target_failures_embedded() -> anyhow::Result<()> {
    helper_and_target_failures(StoreKind::Embedded)
}

#[test]
fn helper_and_target_failures_etcd() -> anyhow::Result<()> {
    helper_and_target_failures(StoreKind::Etcd)
}

/// `elara driver check --attach` on cinder: its `attach` is brought up on this host — a real LUN
/// of the `lun` backend, logged in to, formatted, mounted, written and read — and it conforms.
#[test]
fn driver_check_attaches_a_real_lun() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _up = TARGET_UP.read().unwrap_or_else(|e| e.into_inner());
    let cinder = Cinder::from_env();
    let lun_type = std::env::var("ELARA_TEST_CINDER_LUN_TYPE").context("ELARA_TEST_CINDER_LUN_TYPE")?;
    let portal = std::env::var("ELARA_TEST_TGT_PORTAL").context("ELARA_TEST_TGT_PORTAL")?;
    let tag = unique("conf");
    let out = Command::new(elara_bin())
        .args(["driver", "check", "--attach"])
        .arg(drivers_dir().join("cinder.wasm"))
        .args(cinder.driver_check_args(&tag, &[("volume_type", &lun_type)]))
        .args(["--allow-host", &portal])
        .output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && report.contains("CONFORMS"),
        "driver check:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let attach = report
        .lines()
        .find(|l| l.starts_with("PASS") && l.contains(" attach "))
        .context("no passing attach check")?;
    ensure!(
        attach.contains("iscsi (") && attach.contains("attached, formatted") && attach.contains("read back, detached"),
        "attach: {attach}"
    );
    ensure!(
        cinder.volumes_where("elara-tag", &tag)?.is_empty(),
        "the check left Cinder volumes"
    );
    Ok(())
}
