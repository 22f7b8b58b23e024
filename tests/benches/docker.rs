//! Docker benchmark (issue 5), one run, figures side by side with their anchors:
//! - `docker run --rm -v VOL:/data elara-test/busybox true` end to end (the docker CLI, as a user
//!   runs it) with an Elara volume, beside the same with a Docker built-in `local` volume and with
//!   no volume at all; goal: Elara ≤ 1.2× local. Runs alternate so drift hits both alike.
//! - `docker volume ls` with 1 000 Elara volumes (the CLI end to end, and the plugin's `List` call
//!   alone); goal < 200 ms.
//!
//! Each store gets its own Elara and its own private dockerd (`scripts/services/docker.sh`).
//! Needs root and ELARA_TEST_ETCD (etcd started by `scripts/services/etcd.sh`). Use a release
//! daemon for product figures: `ELARA_BIN=target/release/elara`. `ELARA_BENCH_RUNS` (default 30)
//! and `ELARA_BENCH_VOLUMES` (default 1000) override the sizes.

use std::time::{Duration, Instant};

use anyhow::ensure;
use elara_tests::docker::{Engine, IMAGE, Plugin};
use elara_tests::*;
use serde_json::json;

struct Figures {
    run_elara: Vec<Duration>,
    run_local: Vec<Duration>,
    run_none: Vec<Duration>,
    ls_cli: Vec<Duration>,
    list_call: Vec<Duration>,
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("ELARA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let n: usize = std::env::var("ELARA_BENCH_VOLUMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    if !require_root() {
        return Ok(());
    }
    let version = std::process::Command::new("dockerd").arg("--version").output()?;
    println!(
        "elara docker benchmark: {runs} runs each, {n} volumes; {}; elara binary {}",
        String::from_utf8_lossy(&version.stdout).trim(),
        elara_bin().display()
    );

    let mut all = vec![];
    for store in STORES {
        all.push(measure(store, runs, n)?);
    }

    println!("{:<62} {:>12} {:>12}", "", "embedded", "etcd");
    let row = |name: &str, f: &dyn Fn(&Figures) -> String| {
        println!("{name:<62} {:>12} {:>12}", f(&all[0]), f(&all[1]));
    };
    row("docker run --rm -v VOL:/data true, Elara volume: median ms", &|f| {
        ms(median(&f.run_elara))
    });
    row("  same, Docker `local` volume (anchor): median ms", &|f| {
        ms(median(&f.run_local))
    });
    row("  same, no volume: median ms", &|f| ms(median(&f.run_none)));
    row("  Elara / local, medians (goal <= 1.20x)", &|f| {
        format!("{:.2}x", ratio(median(&f.run_elara), median(&f.run_local)))
    });
    row("  Elara p90 ms / local p90 ms", &|f| {
        format!("{}/{}", ms0(p90(&f.run_elara)), ms0(p90(&f.run_local)))
    });
    row(
        &format!("docker volume ls, {n} Elara volumes: median ms (goal < 200)"),
        &|f| ms(median(&f.ls_cli)),
    );
    row(&format!("  plugin List call alone, {n} volumes: median ms"), &|f| {
        ms(median(&f.list_call))
    });
    Ok(())
}

fn measure(store: StoreKind, runs: usize, n: usize) -> anyhow::Result<Figures> {
    let plugin = Plugin::new()?;
    let mut opts = DaemonOpts::new(store);
    opts.plugin_dir = Some(plugin.dir.clone());
    let d = Daemon::start(opts)?;
    let engine = Engine::start(&[])?;
    let drv = plugin.name.clone();
    engine.ok(&["volume", "create", "-d", &drv, "-o", "size=1G", "evol"])?;
    engine.ok(&["volume", "create", "lvol"])?;

    let run = |vol: Option<&str>| -> anyhow::Result<Duration> {
        let mut args = vec!["run", "--rm"];
        let spec;
        if let Some(v) = vol {
            spec = format!("{v}:/data");
            args.extend(["-v", spec.as_str()]);
        }
        args.extend([IMAGE, "true"]);
        let t = Instant::now();
        engine.ok(&args)?;
        Ok(t.elapsed())
    };
    // Warm up: the first Elara mount formats the volume; caches fill.
    for _ in 0..3 {
        run(Some("evol"))?;
        run(Some("lvol"))?;
        run(None)?;
    }
    let (mut run_elara, mut run_local, mut run_none) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        run_elara.push(run(Some("evol"))?);
        run_local.push(run(Some("lvol"))?);
        run_none.push(run(None)?);
    }
    let v = d.json(&["volume", "inspect", "evol"])?;
    ensure!(
        v["attachments"].as_array().is_some_and(|a| a.is_empty()),
        "evol released after the runs: {v}"
    );

    // 1 000 volumes through the REST API (the local driver makes sparse files), then list them.
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut tasks = vec![];
        for w in 0..8 {
            let socket = d.socket.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn = rest::Conn::open(&socket).await?;
                for i in (w..n.saturating_sub(1)).step_by(8) {
                    let (status, body) = conn
                        .call(
                            "POST",
                            "/v1/volumes",
                            Some(json!({ "name": format!("b{i:05}"), "size": "1G" })),
                        )
                        .await?;
                    ensure!(
                        status == 201,
                        "create failed: {status} {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    })?;
    let filter = format!("driver={drv}");
    let listed = engine.ok(&["volume", "ls", "-q", "-f", &filter])?.lines().count();
    ensure!(listed == n, "docker volume ls shows {listed} of {n} Elara volumes");
    let (mut ls_cli, mut list_call) = (vec![], vec![]);
    for _ in 0..10 {
        let t = Instant::now();
        let out = engine.ok(&["volume", "ls"])?;
        ls_cli.push(t.elapsed());
        ensure!(
            out.lines().filter(|l| l.starts_with(drv.as_str())).count() == n,
            "all {n} listed"
        );
        let t = Instant::now();
        let reply = plugin.call("VolumeDriver.List", &json!({}))?;
        list_call.push(t.elapsed());
        ensure!(reply["Volumes"].as_array().map(|a| a.len()) == Some(n));
    }
    Ok(Figures {
        run_elara,
        run_local,
        run_none,
        ls_cli,
        list_call,
    })
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

fn p90(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[(s.len() * 9 / 10).min(s.len() - 1)]
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn ms0(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}
