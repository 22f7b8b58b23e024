//! Daemon benchmark (issue 4), one run, figures side by side:
//! - volume create rate through the REST API at 10 000 volumes (local driver: sparse files, so the
//!   backend work is metadata only), embedded store and etcd, beside etcd's own raw put rate;
//! - `volume list` time at 10 000 volumes (REST call, and the CLI end to end);
//! - daemon start-to-ready time with the built-in drivers already compiled in the cache, and idle RSS.
//!
//! Needs ELARA_TEST_ETCD (scripts/bench.sh starts etcd). `ELARA_BENCH_VOLUMES` overrides 10 000.

use std::time::{Duration, Instant};

use elara_tests::*;
use serde_json::json;

const CONCURRENCY: usize = 16;

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("ELARA_BENCH_VOLUMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Runtime::new()?;
    println!("elara daemon benchmark: {n} volumes, {CONCURRENCY} concurrent REST clients");
    println!("{:<44} {:>14} {:>14}", "", "embedded", "etcd");

    let mut rows: Vec<(String, String, String)> = vec![];
    let mut results = vec![];
    for store in STORES {
        let d = Daemon::start(DaemonOpts::new(store))?;
        let (rate, list_rest, list_cli) = rt.block_on(fill_and_list(&d, n))?;
        results.push((rate, list_rest, list_cli));
    }
    rows.push((
        "volume create (REST), volumes/s".into(),
        format!("{:.0}", results[0].0),
        format!("{:.0}", results[1].0),
    ));
    rows.push((
        format!("volume list at {n} (REST), ms"),
        ms(results[0].1),
        ms(results[1].1),
    ));
    rows.push((
        format!("`elara volume list` at {n} (CLI), ms"),
        ms(results[0].2),
        ms(results[1].2),
    ));

    // etcd's own put rate, same concurrency, same machine, same run.
    let etcd_rate = rt.block_on(async {
        let client = etcd_raw_client().await?;
        let prefix = format!("/bench-raw-{}/", std::process::id());
        let rate = elara_store::bench::etcd_raw_put_rate(&client, &prefix, n, CONCURRENCY, 400).await?;
        elara_store::bench::etcd_delete_prefix(&client, &prefix).await?;
        anyhow::Ok(rate)
    })?;
    rows.push((
        "etcd raw put (etcd-client), puts/s".into(),
        "-".into(),
        format!("{etcd_rate:.0}"),
    ));

    // Start-to-ready with the drivers cached, and idle RSS.
    let mut starts = vec![];
    let mut rss = vec![];
    for store in STORES {
        let mut d = Daemon::start(DaemonOpts::new(store))?; // first start compiles and caches
        let mut best = Duration::MAX;
        for _ in 0..3 {
            d.kill9();
            let t = Instant::now();
            d.restart()?;
            best = best.min(t.elapsed());
        }
        starts.push(best);
        std::thread::sleep(Duration::from_secs(2));
        rss.push(d.rss_kib().unwrap_or(0));
    }
    rows.push((
        "start to ready, drivers cached (best of 3), ms".into(),
        ms(starts[0]),
        ms(starts[1]),
    ));
    rows.push((
        "idle RSS, MiB".into(),
        format!("{:.1}", rss[0] as f64 / 1024.0),
        format!("{:.1}", rss[1] as f64 / 1024.0),
    ));

    for (name, a, b) in rows {
        println!("{name:<44} {a:>14} {b:>14}");
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

async fn fill_and_list(d: &Daemon, n: usize) -> anyhow::Result<(f64, Duration, Duration)> {
    let start = Instant::now();
    let mut tasks = vec![];
    for w in 0..CONCURRENCY {
        let socket = d.socket.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = rest::Conn::open(&socket).await?;
            for i in (w..n).step_by(CONCURRENCY) {
                let (status, body) = conn
                    .call(
                        "POST",
                        "/v1/volumes",
                        Some(json!({ "name": format!("bench{i:06}"), "size": "16M" })),
                    )
                    .await?;
                anyhow::ensure!(
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
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let mut conn = rest::Conn::open(&d.socket).await?;
    let t = Instant::now();
    let (status, body) = conn.call("GET", "/v1/volumes", None).await?;
    let list_rest = t.elapsed();
    anyhow::ensure!(status == 200, "list failed");
    let count = serde_json::from_slice::<serde_json::Value>(&body)?
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0);
    anyhow::ensure!(count == n, "listed {count} of {n}");
    let t = Instant::now();
    let out = d.cli(&["-o", "json", "volume", "list"])?;
    let list_cli = t.elapsed();
    anyhow::ensure!(out.status.success(), "CLI list failed");
    Ok((rate, list_rest, list_cli))
}
