//! The Docker volume plugin against a real Docker engine (Debian `docker.io`), on both stores.
//!
//! Every test starts its own private `dockerd` (`scripts/services/docker.sh`: own socket, data
//! root and exec root) and its own Elara whose plugin is registered under a unique name with a spec
//! file in /etc/docker/plugins (see `elara_tests::docker`), so tests run in parallel and never meet
//! a real install. Containers run the image `elara-test/busybox`, imported from Debian's
//! busybox-static by the script (no registry).
//!
//! Shown here: create with options → `docker volume ls/inspect` → a container writes → another
//! reads the same bytes → two containers at once (one mount, two holders) → rm, with the loop
//! device and mount gone; dockerd restarted (live-restore, restart policy) and killed, and Elara
//! killed and restarted, while a container uses the volume, with the counts right and
//! `docker volume rm` working afterwards; a lost Unmount reclaimed; bad options refused by name
//! with nothing created; the raw protocol's idempotence; `Get`/`List`/`Path`/`Capabilities`
//! answered while the volume's driver is stuck.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use elara_tests::docker::{Engine, IMAGE, Plugin};
use elara_tests::*;
use serde_json::{Value, json};

/// One test's world. Fields drop in order: the engine first (its containers unmount through the
/// plugin while Elara still runs), then Elara, then the plugin's spec file.
struct Rig {
    engine: Engine,
    d: Daemon,
    plugin: Plugin,
}

impl Rig {
    fn start(store: StoreKind, dockerd_args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Rig> {
        let plugin = Plugin::new()?;
        let mut opts = DaemonOpts::new(store);
        opts.plugin_dir = Some(plugin.dir.clone());
        opts.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let d = Daemon::start(opts)?;
        let engine = Engine::start(dockerd_args)?;
        Ok(Rig { engine, d, plugin })
    }

    fn driver(&self) -> &str {
        &self.plugin.name
    }

    /// `docker volume create -d <this plugin> OPTS NAME`.
    fn create(&self, name: &str, opts: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["volume", "create", "-d", self.driver()];
        for o in opts {
            args.push("-o");
            args.push(o);
        }
        args.push(name);
        self.engine.ok(&args).map(drop)
    }

    /// Names of this plugin's volumes in `docker volume ls`.
    fn docker_volumes(&self) -> anyhow::Result<Vec<String>> {
        let filter = format!("driver={}", self.driver());
        Ok(self
            .engine
            .ok(&["volume", "ls", "-q", "-f", &filter])?
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// The holders of `vol` on this node, from Elara.
    fn holders(&self, vol: &str) -> anyhow::Result<Vec<String>> {
        let v = self.d.json(&["volume", "inspect", vol])?;
        let mut out = vec![];
        for a in v["attachments"].as_array().context("attachments")? {
            out.extend(a["holders"].as_object().context("holders")?.keys().cloned());
        }
        Ok(out)
    }

    /// The volume's image file in the local backend's pool.
    fn image(&self, vol: &str) -> anyhow::Result<PathBuf> {
        let v = self.d.json(&["volume", "inspect", vol])?;
        let id = v["id"].as_str().context("id")?;
        Ok(self.d.pool_dir("local").join("volumes").join(format!("{id}.img")))
    }

    /// The volume's mountpoint on this node (it must be attached).
    fn mountpoint(&self, vol: &str) -> anyhow::Result<String> {
        let v = self.d.json(&["volume", "inspect", vol])?;
        Ok(v["attachments"][0]["host"]["mountpoint"]
            .as_str()
            .with_context(|| format!("{vol} is not attached: {v}"))?
            .to_string())
    }

    /// Read a file inside a running container.
    fn exec_cat(&self, container: &str, path: &str) -> anyhow::Result<String> {
        Ok(self.engine.ok(&["exec", container, "cat", path])?.trim().to_string())
    }
}

/// Loop devices bound to `image`.
fn loops_of(image: &Path) -> Vec<String> {
    let want = image.display().to_string();
    loop_devices()
        .into_iter()
        .filter(|(_, b)| *b == want)
        .map(|(d, _)| d)
        .collect()
}

/// Whether anything is mounted at `path` in this namespace.
fn mounted(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path))
}

/// The volume is attached nowhere: no holders, no loop device on its image, no mount.
fn assert_released(r: &Rig, vol: &str, image: &Path) -> anyhow::Result<()> {
    let v = r.d.json(&["volume", "inspect", vol])?;
    ensure!(
        v["attachments"].as_array().is_some_and(|a| a.is_empty()),
        "{vol} still attached: {v}"
    );
    ensure!(v["status"] == "available", "{vol}: {v}");
    ensure!(
        loops_of(image).is_empty(),
        "{vol}: loop devices left on {}: {:?}",
        image.display(),
        loops_of(image)
    );
    let mounts: Vec<String> = mounts_under(&r.d.dir)
        .into_iter()
        .filter(|m| m.contains("/mounts/"))
        .collect();
    ensure!(mounts.is_empty(), "{vol}: mounts left: {mounts:?}");
    Ok(())
}

/// Poll `check` every 50 ms until it holds (a readiness check), failing after `limit`.
fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > limit {
            bail!("{what}: not within {limit:?} (last error: {last_err:?})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A container that counts into /data/tick every 0.2 s, carrying on from the value it finds.
/// It stops on SIGTERM (as PID 1 it would otherwise ignore it and make `docker stop` wait 10 s).
const TICKER: &str = "trap 'exit 0' TERM; i=$(cat /data/tick 2>/dev/null || echo 0); while true; do i=$((i+1)); echo $i > /data/tick; sleep 0.2; done";

fn tick(r: &Rig, container: &str) -> anyhow::Result<u64> {
    Ok(r.exec_cat(container, "/data/tick")?.parse()?)
}

/// Wait until the ticker's count passes `after` (it is running and writing to the volume).
fn wait_ticking(r: &Rig, container: &str, after: u64) -> anyhow::Result<u64> {
    let mut now = 0;
    wait_until(
        &format!("{container} ticks past {after}"),
        Duration::from_secs(60),
        || {
            now = tick(r, container)?;
            Ok(now > after)
        },
    )?;
    Ok(now)
}

// ---------------------------------------------------------------------------------------------

fn lifecycle(store: StoreKind) -> anyhow::Result<()> {
    let r = Rig::start(store, &[], &[])?;
    let drv = r.driver().to_string();
    r.create(
        "v1",
        &["size=64M", "label.app=db", "labels=tier=gold,team=ops", "fs=ext4"],
    )?;

    // docker volume ls / inspect show it, with its options and Elara's status.
    assert_eq!(r.docker_volumes()?, vec!["v1".to_string()]);
    let insp = r.engine.json(&["volume", "inspect", "v1"])?;
    let v = &insp[0];
    assert_eq!(v["Driver"], drv.as_str());
    assert_eq!(v["Name"], "v1");
    assert_eq!(
        v["Scope"],
        if store == StoreKind::Etcd { "global" } else { "local" },
        "{v}"
    );
    assert_eq!(v["Options"]["size"], "64M", "{v}");
    assert_eq!(v["Options"]["label.app"], "db", "{v}");
    assert_eq!(v["Status"]["size"], 64 << 20, "{v}");
    assert_eq!(
        v["Status"]["labels"],
        json!({"app": "db", "tier": "gold", "team": "ops"}),
        "{v}"
    );
    assert_eq!(v["Status"]["fs"], "ext4", "{v}");
    assert_eq!(v["Status"]["backend"], "local", "{v}");
    assert_eq!(v["Status"]["state"], "available", "{v}");
    assert!(
        !v["CreatedAt"].as_str().unwrap_or("0001").starts_with("0001"),
        "CreatedAt is set: {v}"
    );
    let ev = r.d.json(&["volume", "inspect", "v1"])?;
    assert_eq!(ev["size_bytes"], 64 << 20);
    let image = r.image("v1")?;
    assert!(image.exists(), "{} exists", image.display());

    // A container writes; once it is gone, nothing of the volume stays attached.
    let out = r.engine.ok(&[
        "run",
        "--rm",
        "-v",
        "v1:/data",
        IMAGE,
        "sh",
        "-c",
        "dd if=/dev/urandom of=/data/blob bs=64k count=16 2>/dev/null && sync && sha256sum /data/blob",
    ])?;
    let hash = out.split_whitespace().next().context("sha256sum output")?.to_string();
    assert_eq!(hash.len(), 64, "{out}");
    assert_released(&r, "v1", &image)?;

    // A second container reads the same bytes.
    let out = r
        .engine
        .ok(&["run", "--rm", "-v", "v1:/data:ro", IMAGE, "sha256sum", "/data/blob"])?;
    assert_eq!(out.split_whitespace().next(), Some(hash.as_str()));
    assert_released(&r, "v1", &image)?;

    // -o snapshot: a volume made from a snapshot of v1 holds the same bytes.
    r.d.ok(&["snapshot", "create", "v1", "--name", "s1"])?;
    r.create("v1copy", &["snapshot=s1"])?;
    let copy = r.engine.json(&["volume", "inspect", "v1copy"])?;
    assert_eq!(copy[0]["Status"]["snapshot"], "s1", "{copy}");
    assert_eq!(
        copy[0]["Status"]["size"],
        64 << 20,
        "a snapshot's size by default: {copy}"
    );
    let out = r
        .engine
        .ok(&["run", "--rm", "-v", "v1copy:/data", IMAGE, "sha256sum", "/data/blob"])?;
    assert_eq!(out.split_whitespace().next(), Some(hash.as_str()));
    r.engine.ok(&["volume", "rm", "v1copy"])?;
    r.d.ok(&["snapshot", "delete", "s1"])?;
    assert_eq!(r.docker_volumes()?, vec!["v1".to_string()]);

    // Two containers at once: one mount, one loop device, two holders; each sees the other's writes.
    r.engine.ok(&[
        "run",
        "-d",
        "--name",
        "c1",
        "-v",
        "v1:/data",
        IMAGE,
        "sh",
        "-c",
        "echo one > /data/one; while [ ! -e /data/stop1 ]; do sleep 0.1; done",
    ])?;
    r.engine.ok(&[
        "run",
        "-d",
        "--name",
        "c2",
        "-v",
        "v1:/data",
        IMAGE,
        "sh",
        "-c",
        "echo two > /data/two; while [ ! -e /data/stop2 ]; do sleep 0.1; done",
    ])?;
    wait_until("c1 sees c2's file", Duration::from_secs(30), || {
        Ok(r.exec_cat("c1", "/data/two")? == "two")
    })?;
    assert_eq!(r.exec_cat("c2", "/data/one")?, "one");
    let holders = r.holders("v1")?;
    assert_eq!(holders.len(), 2, "two Docker mounts: {holders:?}");
    assert!(holders.iter().all(|h| h.starts_with("docker:")), "{holders:?}");
    assert_eq!(loops_of(&image).len(), 1, "one loop device for two containers");
    let mp = r.mountpoint("v1")?;
    assert!(mounted(&mp), "{mp} is mounted");
    let path = r.plugin.call("VolumeDriver.Path", &json!({"Name": "v1"}))?;
    assert_eq!(path["Mountpoint"], mp.as_str(), "Path: {path}");

    // The first leaves: the mount stays for the second.
    r.engine.ok(&["exec", "c1", "touch", "/data/stop1"])?;
    assert_eq!(r.engine.ok(&["wait", "c1"])?.trim(), "0");
    r.engine.ok(&["rm", "c1"])?;
    assert_eq!(r.holders("v1")?.len(), 1);
    assert!(mounted(&mp), "still mounted for c2");
    assert_eq!(
        r.engine
            .ok(&["exec", "c2", "sha256sum", "/data/blob"])?
            .split_whitespace()
            .next(),
        Some(hash.as_str())
    );
    let err = r.engine.fails(&["volume", "rm", "v1"])?;
    assert!(
        err.contains("in use"),
        "dockerd refuses to remove a volume in use: {err}"
    );

    // The last leaves: unmounted and detached.
    r.engine.ok(&["exec", "c2", "touch", "/data/stop2"])?;
    assert_eq!(r.engine.ok(&["wait", "c2"])?.trim(), "0");
    r.engine.ok(&["rm", "c2"])?;
    assert_released(&r, "v1", &image)?;
    assert!(!mounted(&mp));

    // rm: gone from Docker, from Elara and from the pool.
    r.engine.ok(&["volume", "rm", "v1"])?;
    assert!(r.docker_volumes()?.is_empty());
    assert_eq!(r.d.json(&["volume", "list"])?, json!([]));
    assert!(!image.exists(), "{} removed", image.display());
    assert!(loops_of(&image).is_empty());
    Ok(())
}

#[test]
fn lifecycle_embedded() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    lifecycle(StoreKind::Embedded)
}

#[test]
fn lifecycle_etcd() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    lifecycle(StoreKind::Etcd)
}

// ---------------------------------------------------------------------------------------------

fn bad_options(store: StoreKind) -> anyhow::Result<()> {
    let r = Rig::start(store, &[], &[])?;
    let cases: &[(&str, &str)] = &[
        ("bogus=1", "bogus"),
        ("size=12X", "size"),
        ("size=-1G", "size"),
        ("size=0", "size"),
        ("size=", "size"),
        ("fs=btrfs", "fs"),
        ("iops=lots", "iops"),
        ("iops=500", "iops"), // the local driver cannot enforce QoS and says so
        ("backend=nowhere", "backend"),
        ("driver-name=nosuchdriver", "driver-name"),
        ("pool=nopool", "pool"),
        ("type=notype", "type"),
        ("snapshot=nosuch", "snapshot"),
        ("labels=novalue", "labels"),
    ];
    for (opt, field) in cases {
        let err = r
            .engine
            .fails(&["volume", "create", "-d", r.driver(), "-o", opt, "bad1"])?;
        assert!(err.starts_with("Error response from daemon: "), "{opt}: {err}");
        assert!(
            err.contains(&format!("{field}:")) || err.contains(&format!("{field} ")),
            "{opt}: the error names {field}: {err}"
        );
        let e = r.engine.fails(&["volume", "inspect", "bad1"])?;
        assert!(
            e.contains("no such volume") || e.contains("No such volume"),
            "{opt}: nothing created in Docker: {e}"
        );
    }
    // Nothing anywhere: Docker, Elara's store, the pool, ops in flight.
    assert!(r.docker_volumes()?.is_empty());
    assert_eq!(r.d.json(&["volume", "list"])?, json!([]));
    assert_eq!(r.d.json(&["op", "list"])?, json!([]));
    let pool = r.d.pool_dir("local").join("volumes");
    let files: Vec<_> = std::fs::read_dir(&pool)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "no image files: {files:?}");
    // And a good create still works after all that.
    r.create("good1", &["size=32M"])?;
    assert_eq!(r.docker_volumes()?, vec!["good1".to_string()]);
    Ok(())
}

#[test]
fn bad_options_embedded() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    bad_options(StoreKind::Embedded)
}

#[test]
fn bad_options_etcd() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    bad_options(StoreKind::Etcd)
}

// ---------------------------------------------------------------------------------------------

/// The raw protocol as dockerd speaks it, including its retries: every call idempotent.
fn protocol(store: StoreKind) -> anyhow::Result<()> {
    let r = Rig::start(store, &[], &[])?;
    let call = |m: &str, b: Value| r.plugin.call(m, &b);
    let no_err = |v: &Value| v["Err"].as_str().is_none_or(str::is_empty);

    let act = call("Plugin.Activate", json!({}))?;
    assert_eq!(act["Implements"], json!(["VolumeDriver"]));
    let caps = call("VolumeDriver.Capabilities", json!({}))?;
    assert_eq!(
        caps["Capabilities"]["Scope"],
        if store == StoreKind::Etcd { "global" } else { "local" }
    );

    // Create with Opts null, then the same create again (a retry): both succeed, one volume.
    for _ in 0..2 {
        let c = call("VolumeDriver.Create", json!({"Name": "p1", "Opts": null}))?;
        assert!(no_err(&c), "{c}");
    }
    assert_eq!(r.d.json(&["volume", "list"])?.as_array().unwrap().len(), 1);
    let g = call("VolumeDriver.Get", json!({"Name": "p1"}))?;
    assert!(no_err(&g), "{g}");
    assert_eq!(g["Volume"]["Name"], "p1");
    assert_eq!(g["Volume"]["Mountpoint"], "");
    assert_eq!(g["Volume"]["Status"]["size"], 1u64 << 30, "default size: {g}");
    let l = call("VolumeDriver.List", json!({}))?;
    assert_eq!(l["Volumes"].as_array().map(|a| a.len()), Some(1), "{l}");
    assert_eq!(l["Volumes"][0]["Name"], "p1");

    // Mount twice with one ID (a retry), once with another: one attachment, two holders.
    let m1 = call("VolumeDriver.Mount", json!({"Name": "p1", "ID": "aaa"}))?;
    assert!(no_err(&m1), "{m1}");
    let mp = m1["Mountpoint"].as_str().context("Mountpoint")?.to_string();
    assert!(Path::new(&mp).is_absolute() && mounted(&mp), "{m1}");
    let again = call("VolumeDriver.Mount", json!({"Name": "p1", "ID": "aaa"}))?;
    assert_eq!(again["Mountpoint"], mp.as_str());
    assert_eq!(r.holders("p1")?, vec!["docker:aaa".to_string()]);
    let m2 = call("VolumeDriver.Mount", json!({"Name": "p1", "ID": "bbb"}))?;
    assert_eq!(m2["Mountpoint"], mp.as_str());
    assert_eq!(r.holders("p1")?.len(), 2);
    assert_eq!(
        call("VolumeDriver.Path", json!({"Name": "p1"}))?["Mountpoint"],
        mp.as_str()
    );
    assert_eq!(
        call("VolumeDriver.Get", json!({"Name": "p1"}))?["Volume"]["Mountpoint"],
        mp.as_str()
    );

    // Unmount twice with one ID: the other holder keeps it mounted.
    for _ in 0..2 {
        let u = call("VolumeDriver.Unmount", json!({"Name": "p1", "ID": "aaa"}))?;
        assert!(no_err(&u), "{u}");
        assert_eq!(r.holders("p1")?, vec!["docker:bbb".to_string()]);
        assert!(mounted(&mp));
    }
    let image = r.image("p1")?;
    for _ in 0..2 {
        let u = call("VolumeDriver.Unmount", json!({"Name": "p1", "ID": "bbb"}))?;
        assert!(no_err(&u), "{u}");
        assert_released(&r, "p1", &image)?;
    }
    assert_eq!(call("VolumeDriver.Path", json!({"Name": "p1"}))?["Mountpoint"], "");

    // Remove twice: both succeed.
    for _ in 0..2 {
        let rm = call("VolumeDriver.Remove", json!({"Name": "p1"}))?;
        assert!(no_err(&rm), "{rm}");
    }
    assert_eq!(r.d.json(&["volume", "list"])?, json!([]));
    let g = call("VolumeDriver.Get", json!({"Name": "p1"}))?;
    assert!(g["Err"].as_str().is_some_and(|e| e.contains("p1")), "{g}");

    // Errors name what is wrong and create nothing.
    let bad = call("VolumeDriver.Create", json!({"Name": "p2", "Opts": {"size": "huge"}}))?;
    assert!(bad["Err"].as_str().is_some_and(|e| e.starts_with("size:")), "{bad}");
    let m = call("VolumeDriver.Mount", json!({"Name": "nosuch", "ID": "x"}))?;
    assert!(m["Err"].as_str().is_some_and(|e| e.contains("nosuch")), "{m}");
    let raw = elara_tests::docker::plugin_call(&r.plugin.socket(), "VolumeDriver.Create", &json!("not an object"))?;
    assert!(raw["Err"].as_str().is_some_and(|e| e.contains("malformed")), "{raw}");
    assert_eq!(r.d.json(&["volume", "list"])?, json!([]));
    Ok(())
}

#[test]
fn protocol_embedded() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    protocol(StoreKind::Embedded)
}

#[test]
fn protocol_etcd() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    protocol(StoreKind::Etcd)
}

/// dockerd retries a Create whose answer it lost. A retry that arrives while the first attempt is
/// still creating the volume (held after its intent by `ELARA_PAUSE_AT`) waits for it and answers
/// as it ends, rather than claiming success for a volume that may yet fail; one volume results.
fn create_retry_waits_for_the_first_attempt(store: StoreKind) -> anyhow::Result<()> {
    let pause = work_dir().join(unique("pause"));
    std::fs::write(&pause, b"")?;
    let reached = pause.with_extension("reached");
    let at = format!("create:after-intent={}", pause.display());
    let r = Rig::start(store, &[], &[("ELARA_PAUSE_AT", &at)])?;
    let create = || {
        r.plugin
            .call("VolumeDriver.Create", &json!({"Name": "r1", "Opts": {"size": "64M"}}))
    };
    let released = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let first = scope.spawn(create);
        wait_until("the first create to reach its pause", Duration::from_secs(60), || {
            Ok(reached.exists())
        })?;
        let retry = scope.spawn(|| (create(), released.load(std::sync::atomic::Ordering::SeqCst)));
        // A wrong answer (success before the first attempt ends) comes at once; give it 2 s.
        let answered_early = wait_until("an early answer to the retry", Duration::from_secs(2), || {
            Ok(retry.is_finished())
        })
        .is_ok();
        released.store(true, std::sync::atomic::Ordering::SeqCst);
        std::fs::remove_file(&pause)?;
        let (answer, after_release) = retry.join().expect("retry thread");
        let answer = answer?;
        ensure!(
            !answered_early && after_release,
            "the retry was answered while the first create was still running: {answer}"
        );
        ensure!(answer["Err"].as_str().is_none_or(str::is_empty), "retry: {answer}");
        let first = first.join().expect("first thread")?;
        ensure!(first["Err"].as_str().is_none_or(str::is_empty), "first create: {first}");
        Ok(())
    })?;
    let vols = r.d.json(&["volume", "list"])?;
    let vols = vols.as_array().context("volume list")?;
    ensure!(
        vols.len() == 1 && vols[0]["name"] == "r1" && vols[0]["state"] == "available",
        "volumes: {vols:?}"
    );
    Ok(())
}

#[test]
fn create_retry_waits_for_the_first_attempt_embedded() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    create_retry_waits_for_the_first_attempt(StoreKind::Embedded)
}

#[test]
fn create_retry_waits_for_the_first_attempt_etcd() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    create_retry_waits_for_the_first_attempt(StoreKind::Etcd)
}

// ---------------------------------------------------------------------------------------------

/// dockerd restarted with `--live-restore` while a container uses the volume: the container keeps
/// running and writing, dockerd re-mounts with the same mount ID (one holder, not two).
fn dockerd_restart_live(store: StoreKind) -> anyhow::Result<()> {
    let r = Rig::start(store, &["--live-restore"], &[])?;
    r.create("rv", &["size=64M"])?;
    let image = r.image("rv")?;
    r.engine.ok(&[
        "run", "-d", "--name", "ticker", "-v", "rv:/data", IMAGE, "sh", "-c", TICKER,
    ])?;
    let t0 = wait_ticking(&r, "ticker", 0)?;
    let before = r.holders("rv")?;
    assert_eq!(before.len(), 1, "{before:?}");
    let pid = r.engine.ok(&["inspect", "-f", "{{.State.Pid}}", "ticker"])?;

    r.engine.restart()?;
    assert_eq!(
        r.engine
            .ok(&["inspect", "-f", "{{.State.Running}} {{.State.Pid}}", "ticker"])?
            .trim(),
        format!("true {}", pid.trim())
    );
    wait_ticking(&r, "ticker", t0)?;
    assert_eq!(r.holders("rv")?, before, "the restored container keeps its one mount");
    assert_eq!(r.engine.json(&["volume", "inspect", "rv"])?[0]["Status"]["mounts"], 1);

    // Another container meanwhile: sees the ticks, and leaves the count as it found it.
    let seen: u64 = r
        .engine
        .ok(&["run", "--rm", "-v", "rv:/data", IMAGE, "cat", "/data/tick"])?
        .trim()
        .parse()?;
    assert!(seen > t0);
    assert_eq!(r.holders("rv")?, before);

    // The last container leaves: released, and docker volume rm works.
    r.engine.ok(&["rm", "-f", "ticker"])?;
    assert_released(&r, "rv", &image)?;
    r.engine.ok(&["volume", "rm", "rv"])?;
    assert_eq!(r.d.json(&["volume", "list"])?, json!([]));
    assert!(!image.exists());
    Ok(())
}

#[test]
fn dockerd_restart_live_restore_embedded() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    dockerd_restart_live(StoreKind::Embedded)
}

#[test]
fn dockerd_restart_live_restore_etcd() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    dockerd_restart_live(StoreKind::Etcd)
}

/// Without live-restore: dockerd stops the container on the way down (Unmount) and a restart
/// policy starts it again (a new Mount ID); then dockerd is killed outright and comes back. On
/// that path dockerd 20.10 stops the orphaned container but never sends its Unmount: Elara's
/// reclaim sweep (5 s grace here, 60 s by default) releases the volume once no container has it.
fn dockerd_restart_policy_and_crash(store: StoreKind) -> anyhow::Result<()> {
    let r = Rig::start(store, &[], &[("ELARA_DOCKER_RECLAIM_SECS", RUNNING_RECLAIM_SECS)])?;
    r.create("pv", &["size=64M"])?;
    let image = r.image("pv")?;
    r.engine.ok(&[
        "run",
        "-d",
        "--restart",
        "always",
        "--name",
        "ticker",
        "-v",
        "pv:/data",
        IMAGE,
        "sh",
        "-c",
        TICKER,
    ])?;
    let t0 = wait_ticking(&r, "ticker", 0)?;
    let before = r.holders("pv")?;
    assert_eq!(before.len(), 1);

    r.engine.restart()?;
    // Carries on from the stored count: the same data, mounted again.
    wait_ticking(&r, "ticker", t0)?;
    let after = r.holders("pv")?;
    assert_eq!(
        after.len(),
        1,
        "the old mount was released, the new one counted: {after:?}"
    );
    assert_ne!(after, before, "a new Docker mount ID");
    assert_eq!(loops_of(&image).len(), 1);

    // dockerd dies (SIGKILL). The container lives on under its shim, the volume stays mounted.
    r.engine.ok(&["update", "--restart", "no", "ticker"])?;
    let t1 = tick(&r, "ticker")?;
    r.engine.crash()?;
    assert_eq!(r.holders("pv")?, after);
    // Back up without live-restore: dockerd stops the orphaned container and unmounts its volume.
    r.engine.restart()?;
    wait_until("the orphaned container is stopped", Duration::from_secs(60), || {
        Ok(r.engine.ok(&["inspect", "-f", "{{.State.Running}}", "ticker"])?.trim() == "false")
    })?;
    wait_until("its mount is reclaimed", Duration::from_secs(60), || {
        Ok(r.holders("pv")?.is_empty())
    })?;
    assert_released(&r, "pv", &image)?;
    let seen: u64 = r
        .engine
        .ok(&["run", "--rm", "-v", "pv:/data", IMAGE, "cat", "/data/tick"])?
        .trim()
        .parse()?;
    assert!(seen >= t1, "no tick lost: {seen} >= {t1}");
    r.engine.ok(&["rm", "ticker"])?;
    r.engine.ok(&["volume", "rm", "pv"])?;
    assert_eq!(r.d.json(&["volume", "list"])?, json!([]));
    Ok(())
}

#[test]
fn dockerd_restart_policy_and_crash_embedded() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    dockerd_restart_policy_and_crash(StoreKind::Embedded)
}

#[test]
fn dockerd_restart_policy_and_crash_etcd() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    dockerd_restart_policy_and_crash(StoreKind::Etcd)
}

// ---------------------------------------------------------------------------------------------

/// Elara killed (SIGKILL) and restarted while a container uses the volume: the container keeps
/// writing, the count survives, new mounts and the final unmount go through, and the reclaim
/// sweep (set to 1 s here) leaves the live container's mount alone.
fn elara_restart(store: StoreKind) -> anyhow::Result<()> {
    let mut r = Rig::start(store, &[], &[("ELARA_DOCKER_RECLAIM_SECS", RUNNING_RECLAIM_SECS)])?;
    r.create("ev", &["size=64M"])?;
    let image = r.image("ev")?;
    r.engine.ok(&[
        "run", "-d", "--name", "ticker", "-v", "ev:/data", IMAGE, "sh", "-c", TICKER,
    ])?;
    let t0 = wait_ticking(&r, "ticker", 0)?;
    let before = r.holders("ev")?;
    assert_eq!(before.len(), 1);

    r.d.kill9();
    let t1 = wait_ticking(&r, "ticker", t0)?; // the kernel mount does not need Elara
    r.d.restart()?;
    assert_eq!(r.holders("ev")?, before, "the count survives the restart");
    wait_ticking(&r, "ticker", t1)?;
    let insp = r.engine.json(&["volume", "inspect", "ev"])?;
    assert_eq!(insp[0]["Mountpoint"], r.mountpoint("ev")?.as_str(), "{insp}");

    // Two sweeps after the holder is past its grace: the running container keeps its mount.
    wait_for_sweeps(&r.d, 2)?;
    assert_eq!(r.holders("ev")?, before, "a live container's mount is never reclaimed");
    assert_eq!(loops_of(&image).len(), 1);

    let seen: u64 = r
        .engine
        .ok(&["run", "--rm", "-v", "ev:/data", IMAGE, "cat", "/data/tick"])?
        .trim()
        .parse()?;
    assert!(seen > t1);
    assert_eq!(r.holders("ev")?, before);
    r.engine.ok(&["rm", "-f", "ticker"])?;
    assert_released(&r, "ev", &image)?;
    r.engine.ok(&["volume", "rm", "ev"])?;
    assert_eq!(r.d.json(&["volume", "list"])?, json!([]));
    assert!(!image.exists());
    Ok(())
}

/// Grace (and period) of the reclaim sweep in tests that start containers while it runs: longer
/// than a container takes from its Mount to running on a loaded machine. With 1 s, a busy run saw
/// a fresh mount reclaimed before runc used it ("error mounting …: no such file or directory").
const RUNNING_RECLAIM_SECS: &str = "5";

/// Wait until the daemon's log shows `n` more completed reclaim sweeps than now.
fn wait_for_sweeps(d: &Daemon, n: usize) -> anyhow::Result<()> {
    let count = || {
        std::fs::read_to_string(d.dir.join("daemon.log"))
            .unwrap_or_default()
            .matches("Docker reclaim sweep done")
            .count()
    };
    let start = count();
    wait_until(&format!("{n} reclaim sweeps"), Duration::from_secs(60), || {
        Ok(count() >= start + n)
    })
}

#[test]
fn elara_restart_embedded() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    elara_restart(StoreKind::Embedded)
}

#[test]
fn elara_restart_etcd() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    elara_restart(StoreKind::Etcd)
}

/// A container removed while Elara is down: dockerd's Unmount never arrives (it retries for
/// about 30 s, then gives up). `docker volume rm` reclaims the stale mount; on another volume the
/// sweep reclaims it by itself once no container has it mounted.
fn lost_unmount(store: StoreKind) -> anyhow::Result<()> {
    let mut r = Rig::start(store, &[], &[("ELARA_DOCKER_RECLAIM_SECS", "0")])?;
    r.create("la", &["size=32M"])?;
    r.create("lb", &["size=32M"])?;
    let (ia, ib) = (r.image("la")?, r.image("lb")?);
    r.engine.ok(&[
        "run", "-d", "--name", "user", "-v", "la:/a", "-v", "lb:/b", IMAGE, "sleep", "3600",
    ])?;
    assert_eq!(r.holders("la")?.len(), 1);
    assert_eq!(r.holders("lb")?.len(), 1);

    r.d.kill9();
    // Blocks while dockerd retries the Unmounts against the dead socket, then removes the container.
    r.engine.ok(&["rm", "-f", "user"])?;
    r.d.restart()?;
    assert_eq!(r.holders("la")?.len(), 1, "the Unmount was lost");
    assert_eq!(r.holders("lb")?.len(), 1, "the Unmount was lost");

    // docker volume rm: dockerd knows no container uses it, so the stale mount is dropped.
    r.engine.ok(&["volume", "rm", "la"])?;
    assert!(loops_of(&ia).is_empty() && !ia.exists());

    // The sweep (1 s grace here) finds no container holding lb and releases it by itself.
    r.d.opts.env = vec![("ELARA_DOCKER_RECLAIM_SECS".into(), "1".into())];
    r.d.restart()?;
    wait_until("the sweep releases lb", Duration::from_secs(60), || {
        Ok(r.holders("lb")?.is_empty())
    })?;
    assert_released(&r, "lb", &ib)?;
    r.engine.ok(&["volume", "rm", "lb"])?;
    assert_eq!(r.d.json(&["volume", "list"])?, json!([]));
    Ok(())
}

#[test]
fn lost_unmount_reclaimed_embedded() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    lost_unmount(StoreKind::Embedded)
}

#[test]
fn lost_unmount_reclaimed_etcd() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    lost_unmount(StoreKind::Etcd)
}

// ---------------------------------------------------------------------------------------------

fn test_driver(name: &str) -> PathBuf {
    let dir = std::env::var_os("ELARA_TEST_DRIVERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_root().join("target"))
                .join("test-drivers")
        });
    let p = dir.join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run scripts/build-drivers.sh", p.display());
    p
}

/// While a driver call hangs (the hostile test driver sleeping inside `create`), dockerd's
/// `volume ls` and `volume inspect` and the plugin's Get, List, Path and Capabilities still
/// answer: they read the store alone. A hang would fail the test through the command timeout.
fn store_only_answers(store: StoreKind) -> anyhow::Result<()> {
    let r = Rig::start(store, &[], &[])?;
    r.d.ok(&["driver", "install", &test_driver("hostile").display().to_string()])?;
    r.d.ok(&[
        "backend",
        "add",
        "stuck",
        "--driver",
        "hostile",
        "--call-timeout",
        "10m",
    ])?;
    r.create("calm", &["backend=stuck"])?;
    // A create whose driver call sleeps for an hour, in the background.
    let mut hung: Child = Command::new(elara_bin())
        .args([
            "-s",
            &r.d.socket.display().to_string(),
            "volume",
            "create",
            "sleep",
            "--backend",
            "stuck",
            "--label",
            "secs=3600",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| {
        wait_until("the hung create is in the driver", Duration::from_secs(30), || {
            Ok(r.d
                .json(&["volume", "list"])?
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v["name"] == "sleep" && v["state"] == "creating")))
        })?;
        let timed = |args: &[&str]| -> anyhow::Result<String> {
            let out = Command::new("timeout")
                .arg("20")
                .arg("docker")
                .args(args)
                .env("DOCKER_HOST", &r.engine.host)
                .output()?;
            ensure!(
                out.status.success(),
                "`docker {}`: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let ls = timed(&["volume", "ls", "-q", "-f", &format!("driver={}", r.driver())])?;
        assert!(ls.contains("calm") && ls.contains("sleep"), "{ls}");
        let insp: Value = serde_json::from_str(&timed(&["volume", "inspect", "calm", "sleep"])?)?;
        assert_eq!(insp[0]["Status"]["backend"], "stuck");
        assert_eq!(insp[1]["Status"]["state"], "creating");
        for (method, body) in [
            ("VolumeDriver.Get", json!({"Name": "calm"})),
            ("VolumeDriver.List", json!({})),
            ("VolumeDriver.Path", json!({"Name": "calm"})),
            ("VolumeDriver.Capabilities", json!({})),
        ] {
            let v = r.plugin.call(method, &body)?;
            ensure!(v["Err"].as_str().is_none_or(str::is_empty), "{method}: {v}");
        }
        anyhow::Ok(())
    })();
    let _ = hung.kill();
    let _ = hung.wait();
    result
}

#[test]
fn store_only_answers_embedded() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    store_only_answers(StoreKind::Embedded)
}

#[test]
fn store_only_answers_etcd() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    store_only_answers(StoreKind::Etcd)
}

// ---------------------------------------------------------------------------------------------

/// The managed plugin (v2) built from this checkout by `packaging/docker-plugin/build.sh`:
/// `docker plugin create` + `enable` without a registry, then volumes through it. Elara runs
/// inside the plugin's container, with its own embedded store in the plugin's rootfs.
#[test]
fn managed_plugin() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let engine = Engine::start(&[])?;
    let out_dir = tempfile::Builder::new().prefix("plugin-pkg-").tempdir_in(work_dir())?;
    let name = "elara-managed-test:latest";
    let built = Command::new("bash")
        .arg(repo_root().join("packaging/docker-plugin/build.sh"))
        .args(["--install", name])
        .arg(out_dir.path())
        .env("DOCKER_HOST", &engine.host)
        .env("ELARA_BIN", elara_bin())
        .env("ELARA_DRIVERS_DIR", drivers_dir())
        .output()?;
    ensure!(
        built.status.success(),
        "build.sh --install failed: {}{}\n{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr),
        engine.log_tail()
    );
    let result = (|| {
        let p = engine.json(&["plugin", "inspect", name])?;
        assert_eq!(p[0]["Enabled"], true, "{p}");
        assert_eq!(p[0]["Config"]["Interface"]["Types"][0], "docker.volumedriver/1.0");
        assert_eq!(p[0]["Config"]["PropagatedMount"], "/var/lib/elara/mounts");

        engine.ok(&[
            "volume",
            "create",
            "-d",
            name,
            "-o",
            "size=64M",
            "-o",
            "label.app=web",
            "mv1",
        ])?;
        let v = engine.json(&["volume", "inspect", "mv1"])?;
        assert_eq!(v[0]["Scope"], "local");
        assert_eq!(v[0]["Status"]["size"], 64 << 20, "{v}");
        assert_eq!(v[0]["Status"]["labels"]["app"], "web", "{v}");
        let err = engine.fails(&["volume", "create", "-d", name, "-o", "size=lots", "mv2"])?;
        assert!(
            err.contains("Error response from daemon") && err.contains("size:"),
            "{err}"
        );

        let out = engine.ok(&[
            "run",
            "--rm",
            "-v",
            "mv1:/data",
            IMAGE,
            "sh",
            "-c",
            "echo managed > /data/f && sync && cat /data/f",
        ])?;
        assert_eq!(out.trim(), "managed");
        assert_eq!(
            engine
                .ok(&["run", "--rm", "-v", "mv1:/data:ro", IMAGE, "cat", "/data/f"])?
                .trim(),
            "managed"
        );
        // Nothing of the volume stays attached between containers: no loop device on an image in
        // this engine's plugin store.
        let dir = engine.dir.display().to_string();
        let loops: Vec<_> = loop_devices()
            .into_iter()
            .filter(|(_, b)| b.starts_with(&dir))
            .collect();
        ensure!(loops.is_empty(), "loop devices left: {loops:?}");
        engine.ok(&["volume", "rm", "mv1"])?;
        let filter = format!("driver={name}");
        ensure!(engine.ok(&["volume", "ls", "-q", "-f", &filter])?.trim().is_empty());
        anyhow::Ok(())
    })();
    let _ = engine.docker(&["plugin", "disable", "-f", name]);
    let _ = engine.docker(&["plugin", "rm", "-f", name]);
    result
}

// ---------------------------------------------------------------------------------------------

/// `Plugin.Activate` and `Capabilities` answer at once while the store is still connecting (an
/// etcd endpoint that accepts connections and stays silent); `Capabilities` already says
/// `global`, from the configuration.
#[test]
fn activate_while_store_connecting() -> anyhow::Result<()> {
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = silent.local_addr()?;
    let held = std::thread::spawn(move || {
        // Accept and hold connections without a byte of HTTP/2: a store that does not answer yet.
        let mut conns = vec![];
        for c in silent.incoming().take(8).flatten() {
            conns.push(c);
        }
    });
    let plugin = Plugin::new()?;
    let dir = tempfile::Builder::new().prefix("elara-test-").tempdir_in(work_dir())?;
    let mut child = Command::new(elara_bin())
        .arg("-s")
        .arg(dir.path().join("elara.sock"))
        .arg("daemon")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--store", &format!("etcd://{addr}/ns"), "--node", "n1"])
        .arg("--drivers-dir")
        .arg(drivers_dir())
        .arg("--plugin-dir")
        .arg(&plugin.dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| {
        wait_until("the plugin socket", Duration::from_secs(30), || {
            Ok(plugin.socket().exists())
        })?;
        let t = Instant::now();
        let act = plugin.call("Plugin.Activate", &json!({}))?;
        let caps = plugin.call("VolumeDriver.Capabilities", &json!({}))?;
        let took = t.elapsed();
        assert_eq!(act["Implements"], json!(["VolumeDriver"]));
        assert_eq!(caps["Capabilities"]["Scope"], "global");
        // Still connecting: the daemon has not given up on the store yet.
        ensure!(
            child.try_wait()?.is_none(),
            "the daemon is still starting after Activate and Capabilities ({took:?})"
        );
        anyhow::Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    drop(held);
    result
}
