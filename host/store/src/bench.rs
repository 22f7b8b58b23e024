//! The store benchmark's core, reusable by the daemon benchmark: put rate and list time of one
//! [`Store`], and etcd's own put rate through the raw client for comparison.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{Result, Store, StoreError};

/// What one back end did.
#[derive(Debug, Clone)]
pub struct StoreBench {
    pub kind: &'static str,
    pub keys: usize,
    pub concurrency: usize,
    /// Wall time of all the puts.
    pub put_time: Duration,
    pub puts_per_sec: f64,
    /// `list(prefix)` of all the keys, values included.
    pub list_time: Duration,
    /// `list_keys(prefix)` of all the keys.
    pub list_keys_time: Duration,
}

/// A record of `size` bytes that looks like a volume record.
pub fn sample_value(i: usize, size: usize) -> Vec<u8> {
    let mut v = format!(r#"{{"v":1,"name":"vol-{i:06}","size":10737418240,"pad":""#).into_bytes();
    v.resize(size.saturating_sub(2).max(v.len()), b'x');
    v.extend_from_slice(b"\"}");
    v
}

/// Put `keys` keys under `prefix` from `concurrency` tasks, then list them back.
pub async fn bench_store(
    store: Arc<dyn Store>,
    prefix: &str,
    keys: usize,
    concurrency: usize,
    value_size: usize,
) -> Result<StoreBench> {
    let concurrency = concurrency.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let store = store.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            for i in (worker..keys).step_by(concurrency) {
                store
                    .put(&format!("{prefix}{i:06}"), sample_value(i, value_size), None)
                    .await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| StoreError::Other(format!("bench task: {e}")))??;
    }
    let put_time = start.elapsed();

    let start = Instant::now();
    let listed = store.list(prefix).await?;
    let list_time = start.elapsed();
    let start = Instant::now();
    let listed_keys = store.list_keys(prefix).await?;
    let list_keys_time = start.elapsed();
    if listed.len() != keys || listed_keys.len() != keys {
        return Err(StoreError::Other(format!(
            "bench: listed {} records and {} keys, expected {keys}",
            listed.len(),
            listed_keys.len()
        )));
    }
    Ok(StoreBench {
        kind: store.kind(),
        keys,
        concurrency,
        put_time,
        puts_per_sec: keys as f64 / put_time.as_secs_f64(),
        list_time,
        list_keys_time,
    })
}

/// etcd's own put rate: the same puts through the raw `etcd-client` API, no Elara code in between.
pub async fn etcd_raw_put_rate(
    client: &etcd_client::Client,
    prefix: &str,
    keys: usize,
    concurrency: usize,
    value_size: usize,
) -> Result<f64> {
    let concurrency = concurrency.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let mut kv = client.kv_client();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            for i in (worker..keys).step_by(concurrency) {
                kv.put(format!("{prefix}{i:06}"), sample_value(i, value_size), None)
                    .await?;
            }
            Ok::<_, etcd_client::Error>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| StoreError::Other(format!("bench task: {e}")))?
            .map_err(|e| StoreError::Other(format!("etcd raw put: {e}")))?;
    }
    Ok(keys as f64 / start.elapsed().as_secs_f64())
}

/// Delete every key under `prefix` in one etcd range delete (bench clean-up).
pub async fn etcd_delete_prefix(client: &etcd_client::Client, prefix: &str) -> Result<()> {
    client
        .kv_client()
        .delete(prefix, Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .map_err(|e| StoreError::Other(format!("etcd delete prefix: {e}")))?;
    Ok(())
}
