//! The hostile driver installed in a real daemon (`elara driver install`), on both stores: while
//! one of its calls spins until its CPU budget runs out, the daemon keeps serving the local
//! backend; a panic and a 4 GiB allocation fail the create with a clear error and leave nothing;
//! afterwards both backends still serve. (Each attack in detail, at the runtime level:
//! tests/hostile.rs.)

use std::time::Instant;

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
