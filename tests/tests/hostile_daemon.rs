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
    d.ok(&[
        "backend",
        "add",
        "bad",
        "--driver",
        "hostile",
        "--memory",
        "64M",
        "--call-timeout",
        "60s",
    ])?;

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
    assert!(
        spin_time > local_time,
        "the local calls ({local_time:?}) finished while the spinning call ran ({spin_time:?})"
    );
    assert!(
        err.contains("CPU") || err.contains("cpu") || err.contains("budget") || err.contains("interrupt"),
        "the spin is stopped by the CPU budget: {err}"
    );

    let err = d.fails(&["volume", "create", "panic", "--backend", "bad", "--size", "16M"])?;
    assert!(err.contains("panic"), "a panic is reported: {err}");
    let err = d.fails(&["volume", "create", "alloc", "--backend", "bad", "--size", "16M"])?;
    assert!(err.contains("memory"), "the memory cap stops a 4 GiB allocation: {err}");

    // Nothing half-made; both backends still serve.
    let vols = d.json(&["volume", "list"])?;
    assert_eq!(
        vols.as_array().unwrap().len(),
        0,
        "failed creates leave nothing: {vols}"
    );
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
    d.ok(&[
        "backend",
        "add",
        "flood",
        "--driver",
        "hostile",
        "--config",
        "pool_flood=200000",
    ])?;
    let add_time = t.elapsed();
    let t = Instant::now();
    let err = d.fails(&["volume", "create", "flooded", "--backend", "flood", "--size", "16M"])?;
    let refusal = t.elapsed();
    assert!(
        err.contains(
            "backend `flood` returned a bad pools: the report names 200000 pools; the limit is 256 per report"
        ),
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
    assert!(
        info < Duration::from_secs(2) && list < Duration::from_secs(2),
        "info {info:?}, backend list {list:?}"
    );

    // Within the limits: 200 pools of 64-character names, stored (in several transactions: more
    // than etcd's 128 operations); then a report of 50 removes the other 150.
    d.ok(&[
        "backend",
        "add",
        "many",
        "--driver",
        "hostile",
        "--config",
        "pool_flood=200",
        "--config",
        "pool_name_bytes=64",
    ])?;
    d.ok(&["pool", "refresh"])?;
    let pools = pools_of(&d, "many")?;
    assert_eq!(pools.len(), 200, "{pools:?}");
    assert!(pools.iter().all(|p| p.len() == 64), "{pools:?}");
    d.ok(&["backend", "update", "many", "--config", "pool_flood=50"])?;
    d.ok(&["pool", "refresh"])?;
    let mut pools = pools_of(&d, "many")?;
    pools.sort();
    let mut want: Vec<String> = (0..50)
        .map(|i| format!("{}-{i}", "p".repeat(64 - format!("-{i}").len())))
        .collect();
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

/// The pid of the daemon serving `d` (a child of this process whose command line names its
/// socket).
fn daemon_pid(d: &Daemon) -> anyhow::Result<u32> {
    let socket = d.socket.display().to_string();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "daemon") && args.iter().any(|a| a.contains(&socket)) {
            return Ok(pid);
        }
    }
    anyhow::bail!("no daemon process serves {socket}")
}

/// Open descriptors of process `pid`.
fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// CPU time (user + system, all threads) of process `pid`, in the kernel's 100 ticks a second.
fn cpu_of(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow::anyhow!("bad stat"))? + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|x| x.parse())
        .collect::<Result<_, _>>()?;
    Ok(Duration::from_millis((f[0] + f[1]) * 10))
}

/// `elara volume create NAME --backend bad` in the background: its stderr (it must fail) and how
/// long it took.
fn create_in_background(d: &Daemon, name: &str) -> std::thread::JoinHandle<(anyhow::Result<String>, Duration)> {
    let (socket, name) = (d.socket.clone(), name.to_string());
    std::thread::spawn(move || {
        let started = Instant::now();
        let out = std::process::Command::new(elara_bin())
            .arg("-s")
            .arg(&socket)
            .args(["volume", "create", &name, "--backend", "bad", "--size", "16M"])
            .output();
        let r = out.map_err(anyhow::Error::from).and_then(|o| {
            anyhow::ensure!(
                !o.status.success(),
                "the attack `{name}` succeeded: {}",
                String::from_utf8_lossy(&o.stdout)
            );
            Ok(String::from_utf8_lossy(&o.stderr).into_owned())
        });
        (r, started.elapsed())
    })
}

/// Local-backend rounds (create, inspect, delete) until `attack` ends or `limit` passes (then
/// the test fails): the attack's outcome and the rounds' latencies (median, max).
fn serve_during(
    d: &Daemon,
    attack: std::thread::JoinHandle<(anyhow::Result<String>, Duration)>,
    limit: Duration,
) -> anyhow::Result<(String, Duration, Duration, Duration)> {
    let t0 = Instant::now();
    let mut samples = Vec::new();
    while !attack.is_finished() {
        anyhow::ensure!(t0.elapsed() < limit, "the attack still runs after {:?}", t0.elapsed());
        let name = format!("during{}", samples.len());
        let t = Instant::now();
        d.ok(&["volume", "create", &name, "--size", "16M"])?;
        d.ok(&["volume", "inspect", &name])?;
        d.ok(&["volume", "delete", &name])?;
        samples.push(t.elapsed());
    }
    let (err, took) = attack.join().expect("attack thread");
    samples.sort();
    anyhow::ensure!(!samples.is_empty(), "no local round ran during the attack");
    Ok((err?, took, samples[samples.len() / 2], *samples.last().unwrap()))
}

/// A progress loop and an open-files loop against a real daemon: its soft descriptor limit is
/// its hard one, the open-files attack is stopped at the cap with the daemon's descriptors
/// bounded, the progress loop by the CPU budget (the daemon's 30 s), and the local backend keeps
/// answering meanwhile.
fn resource_attacks_in_daemon(store: StoreKind) -> anyhow::Result<()> {
    let d = Daemon::start(DaemonOpts::new(store))?;
    let wasm = d.dir.join("hostile.wasm");
    std::fs::write(&wasm, built_component("test-drivers", "hostile"))?;
    d.ok(&["driver", "install", &wasm.display().to_string()])?;
    d.ok(&["backend", "add", "bad", "--driver", "hostile"])?;
    let pid = daemon_pid(&d)?;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let nofile: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        nofile.get(3),
        nofile.get(4),
        "the daemon's soft open-files limit is its hard one: {nofile:?}"
    );

    let before = fds_of(pid);
    let attack = create_in_background(&d, "open-files");
    let mut peak = before;
    while !attack.is_finished() {
        peak = peak.max(fds_of(pid));
        std::thread::sleep(Duration::from_millis(1));
    }
    let (err, took) = attack.join().expect("attack thread");
    let err = err?;
    let after = fds_of(pid);
    println!("{store:?}: open-files: stopped after {took:?}; daemon fds before {before}, peak {peak}, after {after}");
    assert!(
        err.contains("the driver holds more than 1024 open resources at once"),
        "{err}"
    );
    assert!(
        peak <= before + 1024 + 64,
        "the daemon held {peak} descriptors (before: {before})"
    );
    assert!(
        after <= before + 16,
        "the trapped instance's descriptors stay open: {after}, {before} before"
    );

    // The local rounds' latency without an attack, to compare.
    let mut idle = Vec::new();
    for i in 0..5 {
        let (name, t) = (format!("idle{i}"), Instant::now());
        d.ok(&["volume", "create", &name, "--size", "16M"])?;
        d.ok(&["volume", "inspect", &name])?;
        d.ok(&["volume", "delete", &name])?;
        idle.push(t.elapsed());
    }
    idle.sort();
    let (idle_median, idle_max) = (idle[idle.len() / 2], idle[idle.len() - 1]);
    let cpu0 = cpu_of(pid)?;
    let attack = create_in_background(&d, "progress-loop");
    let budget = Duration::from_secs(30);
    let (err, took, median, max) = serve_during(&d, attack, 3 * budget)?;
    let cpu = cpu_of(pid)? - cpu0;
    println!(
        "{store:?}: progress-loop: stopped after {took:?}, daemon CPU {cpu:?}; local rounds meanwhile median {median:?}, \
         max {max:?} (without an attack: median {idle_median:?}, max {idle_max:?})"
    );
    assert!(
        err.contains("CPU budget of 30s"),
        "the CPU budget stops the progress loop: {err}"
    );
    assert!(took < 3 * budget, "stopped after {took:?}");
    assert!(
        max < Duration::from_secs(5),
        "a local round took {max:?} during the attack"
    );

    d.ok(&["volume", "create", "fine", "--backend", "bad", "--size", "16M"])?;
    d.ok(&["volume", "delete", "fine"])?;
    Ok(())
}

#[test]
fn resource_attacks_in_daemon_embedded() -> anyhow::Result<()> {
    resource_attacks_in_daemon(StoreKind::Embedded)
}

#[test]
fn resource_attacks_in_daemon_etcd() -> anyhow::Result<()> {
    resource_attacks_in_daemon(StoreKind::Etcd)
}
