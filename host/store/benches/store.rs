//! Store benchmark: puts/sec and list time at 10 000 keys, embedded and etcd side by side, with
//! etcd's own put rate (raw etcd-client, no Elara code) measured in the same run.
//!
//!   scripts/services/etcd.sh start /tmp/elara-etcd     # prints ELARA_TEST_ETCD=127.0.0.1:2379
//!   ELARA_TEST_ETCD=127.0.0.1:2379 cargo bench -p elara-store --bench store
//!
//! Env: ELARA_BENCH_KEYS (10000), ELARA_BENCH_CONCURRENCY (comma list, "1,16"),
//! ELARA_BENCH_VALUE_BYTES (512). Without ELARA_TEST_ETCD only the embedded rows are printed.

use std::sync::Arc;

use elara_store::Store;
use elara_store::bench::{bench_store, etcd_delete_prefix, etcd_raw_put_rate};
use elara_store::embedded::EmbeddedStore;
use elara_store::etcd::EtcdStore;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys: usize = env_or("ELARA_BENCH_KEYS", 10_000);
    let value_bytes: usize = env_or("ELARA_BENCH_VALUE_BYTES", 512);
    let concurrencies: Vec<usize> = std::env::var("ELARA_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,16".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let etcd = match std::env::var("ELARA_TEST_ETCD") {
        Ok(ep) if !ep.is_empty() => {
            let eps: Vec<String> = ep.split(',').map(str::to_string).collect();
            // A TLS+auth etcd (ETCD_TLS=1 scripts/services/etcd.sh) by the env it prints.
            let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let security = elara_store::etcd::EtcdSecurity {
                ca: var("ELARA_TEST_ETCD_CA").map(Into::into),
                cert: var("ELARA_TEST_ETCD_CERT").map(Into::into),
                key: var("ELARA_TEST_ETCD_KEY").map(Into::into),
                user: var("ELARA_TEST_ETCD_USER"),
                password_file: var("ELARA_TEST_ETCD_PASSWORD_FILE").map(Into::into),
            };
            let (tls, auth) = security.load(security.ca.is_some(), None)?;
            let options = elara_store::etcd::EtcdOptions {
                tls,
                auth,
                ..Default::default()
            };
            Some(EtcdStore::connect_with(&eps, options).await?)
        }
        _ => {
            eprintln!("ELARA_TEST_ETCD not set: etcd rows skipped (start one with scripts/services/etcd.sh start DIR)");
            None
        }
    };

    println!("store benchmark: {keys} keys, {value_bytes}-byte values");
    println!(
        "{:<22} {:>5} {:>11} {:>10} {:>12} {:>15}",
        "back end", "conc", "puts/s", "put s", "list ms", "list_keys ms"
    );
    let run = uuid_ish();
    for &conc in &concurrencies {
        let dir = tempfile::tempdir()?;
        let embedded: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path().join("bench.redb"))?);
        let r = bench_store(embedded, "/bench/", keys, conc, value_bytes).await?;
        row("embedded (redb)", &r);

        if let Some(etcd) = &etcd {
            let prefix = format!("/elara-bench/{run}/{conc}/store/");
            let r = bench_store(Arc::new(etcd.clone()), &prefix, keys, conc, value_bytes).await?;
            row("etcd (elara-store)", &r);
            etcd_delete_prefix(etcd.client(), &prefix).await?;

            let raw_prefix = format!("/elara-bench/{run}/{conc}/raw/");
            let rate = etcd_raw_put_rate(etcd.client(), &raw_prefix, keys, conc, value_bytes).await?;
            println!(
                "{:<22} {:>5} {:>11.0} {:>10.2} {:>12} {:>15}",
                "etcd (raw client)",
                conc,
                rate,
                keys as f64 / rate,
                "-",
                "-"
            );
            etcd_delete_prefix(etcd.client(), &raw_prefix).await?;
        }
    }
    Ok(())
}

fn row(name: &str, r: &elara_store::bench::StoreBench) {
    println!(
        "{:<22} {:>5} {:>11.0} {:>10.2} {:>12.1} {:>15.1}",
        name,
        r.concurrency,
        r.puts_per_sec,
        r.put_time.as_secs_f64(),
        r.list_time.as_secs_f64() * 1e3,
        r.list_keys_time.as_secs_f64() * 1e3
    );
}

fn uuid_ish() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}-{}", nanos, std::process::id())
}
