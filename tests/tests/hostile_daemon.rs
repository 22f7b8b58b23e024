//! The hostile driver installed in a real daemon (`elara driver install`), on both stores: while
//! one of its calls spins until its CPU budget runs out, the daemon keeps serving the local
//! backend; a panic and a 4 GiB allocation fail the create with a clear error and leave nothing;
//! afterwards both backends still serve. A backend that floods its pool report (200 000 pools) is
//! refused whole, stores nothing, and `info` and listings stay fast; a report within the limits
//! is stored, and a later shorter one removes the pools it no longer names. (Each attack in
//! detail, at the runtime level: tests/hostile.rs.)

use std::time::{Duration, Instant};

use elara_tests::*;

fn hostile_in_daemon(store: StoreKind) -> anyhow::Result<()> {
    let d = Daemon::start(DaemonOpts::new(store))?;
    let wasm = d.dir.join("hostile.wasm");
    std::fs::write(&wasm, built_component("test-drivers", "hostile"))?;
    d.ok(&["driver", "install", &wasm.display().to_string()])?;
    d.ok(&["backend", "add", "bad", "--driver", "hostile", "--memory", "64M", "--call-timeout", "60s"])?;

    // A call that never returns on its own, in the background.
    let spin = {
        let socket = d.socket.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let out = std::process::Command::new(elara_bin())
                .arg("-s")
                .arg(&socket)
                .args(["volume", "create", "spin", "--backend", "bad", "--size", "16M"])
                .output();
            let r = out.map_err(anyhow::Error::from).and_then(|o| {
                anyhow::ensure!(!o.status.success(), "the spinning create succeeded");
                Ok(String::from_utf8_lossy(&o.stderr).into_owned())
            });
            (r, started.elapsed())
        })
    };
    // Meanwhile the local backend serves: create, inspect, delete.
    let t = Instant::now();
    for i in 0..3 {
        let name = format!("ok{i}");
        d.ok(&["volume", "create", &name, "--size", "16M"])?;
        d.ok(&["volume", "inspect", &name])?;
        d.ok(&["volume", "delete", &name])?;
    }
    let local_time = t.elapsed();
    let (err, spin_time) = spin.join().expect("spin thread");
    let err = err?;
    assert!(spin_time > local_time, "the local calls ({local_time:?}) finished while the spinning call ran ({spin_time:?})");
    assert!(err.contains("CPU") || err.contains("cpu") || err.contains("budget") || err.contains("interrupt"), "the spin is stopped by the CPU budget: {err}");

    let err = d.fails(&["volume", "create", "panic", "--backend", "bad", "--size", "16M"])?;
    assert!(err.contains("panic"), "a panic is reported: {err}");
    let err = d.fails(&["volume", "create", "alloc", "--backend", "bad", "--size", "16M"])?;
    assert!(err.contains("memory"), "the memory cap stops a 4 GiB allocation: {err}");

    // Nothing half-made; both backends still serve.
    let vols = d.json(&["volume", "list"])?;
    assert_eq!(vols.as_array().unwrap().len(), 0, "failed creates leave nothing: {vols}");
    d.ok(&["volume", "create", "fine", "--backend", "bad", "--size", "16M"])?;
    d.ok(&["volume", "create", "fine2", "--size", "16M"])?;
    d.ok(&["volume", "delete", "fine"])?;
    d.ok(&["volume", "delete", "fine2"])?;
    Ok(())
}

#[test]
fn hostile_in_daemon_embedded() -> anyhow::Result<()> {
    hostile_in_daemon(StoreKind::Embedded)
}

#[test]
fn hostile_in_daemon_etcd() -> anyhow::Result<()> {
    hostile_in_daemon(StoreKind::Etcd)
}

/// Pools of `backend` in `elara pool list`.
fn pools_of(d: &Daemon, backend: &str) -> anyhow::Result<Vec<String>> {
    let pools = d.json(&["pool", "list"])?;
    Ok(pools
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["backend"] == backend)
        .map(|p| p["pool"]["name"].as_str().unwrap_or_default().to_string())
        .collect())
}

/// How long one CLI call takes, asserting it succeeds.
fn timed(d: &Daemon, args: &[&str]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    d.ok(args)?;
    Ok(t.elapsed())
}

fn pool_flood_in_daemon(store: StoreKind) -> anyhow::Result<()> {
    let d = Daemon::start(DaemonOpts::new(store))?;
    let wasm = d.dir.join("hostile.wasm");
    std::fs::write(&wasm, built_component("test-drivers", "hostile"))?;
    d.ok(&["driver", "install", &wasm.display().to_string()])?;
    let (info_before, list_before) = (timed(&d, &["info"])?, timed(&d, &["backend", "list"])?);

    // 200 000 pools of 120-character names: the backend is added (its first report failing is
    // logged), and a create on it is refused with the reason.
    let t = Instant::now();
    d.ok(&["backend", "add", "flood", "--driver", "hostile", "--config", "pool_flood=200000"])?;
    let add_time = t.elapsed();
    let t = Instant::now();
    let err = d.fails(&["volume", "create", "flooded", "--backend", "flood", "--size", "16M"])?;
    let refusal = t.elapsed();
    assert!(
        err.contains("backend `flood` returned a bad pools: the report names 200000 pools; the limit is 256 per report"),
        "{err}"
    );
    d.ok(&["pool", "refresh"])?;
    assert!(pools_of(&d, "flood")?.is_empty(), "a refused report stored pools");
    let (info, list) = (timed(&d, &["info"])?, timed(&d, &["backend", "list"])?);
    println!(
        "{store:?}: pool flood: backend add {add_time:?}, create refused in {refusal:?}; info {info:?} (before {info_before:?}), \
         backend list {list:?} (before {list_before:?})"
    );
    assert!(refusal < Duration::from_secs(10), "refusing the flood took {refusal:?}");
    assert!(info < Duration::from_secs(2) && list < Duration::from_secs(2), "info {info:?}, backend list {list:?}");

    // Within the limits: 200 pools of 64-character names, stored (in several transactions: more
    // than etcd's 128 operations); then a report of 50 removes the other 150.
    d.ok(&["backend", "add", "many", "--driver", "hostile", "--config", "pool_flood=200", "--config", "pool_name_bytes=64"])?;
    d.ok(&["pool", "refresh"])?;
    let pools = pools_of(&d, "many")?;
    assert_eq!(pools.len(), 200, "{pools:?}");
    assert!(pools.iter().all(|p| p.len() == 64), "{pools:?}");
    d.ok(&["backend", "update", "many", "--config", "pool_flood=50"])?;
    d.ok(&["pool", "refresh"])?;
    let mut pools = pools_of(&d, "many")?;
    pools.sort();
    let mut want: Vec<String> = (0..50).map(|i| format!("{}-{i}", "p".repeat(64 - format!("-{i}").len()))).collect();
    want.sort();
    assert_eq!(pools, want, "the pools the report no longer names are gone");

    // The local backend serves throughout.
    d.ok(&["volume", "create", "fine", "--size", "16M"])?;
    d.ok(&["volume", "delete", "fine"])?;
    Ok(())
}

#[test]
fn pool_flood_in_daemon_embedded() -> anyhow::Result<()> {
    pool_flood_in_daemon(StoreKind::Embedded)
}

#[test]
fn pool_flood_in_daemon_etcd() -> anyhow::Result<()> {
    pool_flood_in_daemon(StoreKind::Etcd)
}
