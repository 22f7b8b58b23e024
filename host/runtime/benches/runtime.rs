//! Runtime benchmark: what a driver call costs, side by side with its anchors, in one run.
//!
//!   cargo bench -p elara-runtime --bench runtime
//!
//! Rows:
//! - a trivial driver call (`stats` of `tests/drivers/trivial`, a constant) through a
//!   [`Backend`] — the path every daemon call takes: idle instance, limits, the wasm call;
//! - the same function as a native Rust call;
//! - the same request as JSON over a unix socket, the way Docker volume plugins (HTTP/1.1 +
//!   JSON) and CSI plugins (gRPC) are called: one persistent connection, newline-delimited JSON
//!   (the cheapest a socket can be), and HTTP/1.1 with keep-alive (hyper, as Docker does);
//! - instantiate + configure of a fresh instance, and opening a backend;
//! - loading a driver cold (compiling it) and from the compiled-code cache, for the trivial and
//!   the local driver.
//!
//! Each per-call figure is the median of 10 batches (and the fastest batch). Goals from issue 3:
//! a trivial call ≤ 0.5 µs, and ≥ 50× faster than the socket round trip.
//!
//! Env: ELARA_BENCH_CALLS (call-path iterations, 200000), ELARA_BENCH_SOCKET_CALLS (20000),
//! ELARA_BENCH_LOADS (cold loads, 3).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use elara_runtime::{Backend, BackendSpec, Limits, Runtime, RuntimeConfig, VolumeStats};
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};

const BATCHES: usize = 10;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Build the drivers (a no-op when they are up to date) and read one.
fn driver_bytes(dir: &str, name: &str) -> Vec<u8> {
    let path = root().join("target").join(dir).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn build_drivers() {
    let out = Command::new("bash")
        .arg(root().join("scripts/build-drivers.sh"))
        .output()
        .expect("build-drivers.sh");
    assert!(
        out.status.success(),
        "scripts/build-drivers.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Median and minimum of per-iteration times over `BATCHES` batches of `per_batch` iterations.
struct Timing {
    median: Duration,
    min: Duration,
}

fn per_iter(batches: &mut [Duration], per_batch: usize) -> Timing {
    batches.sort();
    let div = |d: Duration| d / per_batch as u32;
    Timing {
        median: div(batches[batches.len() / 2]),
        min: div(batches[0]),
    }
}

fn fmt(d: Duration) -> String {
    let ns = d.as_secs_f64() * 1e9;
    if ns < 1_000.0 {
        format!("{ns:.1} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

// ---- the trivial function, natively --------------------------------------------------------

/// What the trivial driver's `stats` returns, as a native function.
#[inline(never)]
fn native_stats(volume_id: &str) -> VolumeStats {
    let _ = std::hint::black_box(volume_id);
    VolumeStats {
        size_bytes: 1 << 30,
        used_bytes: 4096,
        objects: None,
    }
}

fn bench_native(calls: usize) -> Timing {
    let per_batch = calls * 10;
    let mut batches = Vec::new();
    for _ in 0..BATCHES {
        let t = Instant::now();
        for _ in 0..per_batch {
            std::hint::black_box(native_stats(std::hint::black_box("vol-1")));
        }
        batches.push(t.elapsed());
    }
    per_iter(&mut batches, per_batch)
}

// ---- JSON over a unix socket ------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct StatsRequest {
    op: String,
    volume_id: String,
}

#[derive(Serialize, Deserialize)]
struct StatsReply {
    size_bytes: u64,
    used_bytes: u64,
    objects: Option<u64>,
}

fn reply(req: &StatsRequest) -> StatsReply {
    assert_eq!(req.op, "stats");
    let s = native_stats(&req.volume_id);
    StatsReply {
        size_bytes: s.size_bytes,
        used_bytes: s.used_bytes,
        objects: s.objects,
    }
}

/// Newline-delimited JSON on one persistent connection; the server is a thread of its own.
fn bench_json_socket(dir: &Path, calls: usize) -> Timing {
    let path = dir.join("json.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let stream = stream.unwrap();
            std::thread::spawn(move || {
                let mut w = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    let req: StatsRequest = serde_json::from_str(&line).unwrap();
                    let mut out = serde_json::to_vec(&reply(&req)).unwrap();
                    out.push(b'\n');
                    if w.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let stream = UnixStream::connect(&path).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    let mut call = || {
        let mut req = serde_json::to_vec(&StatsRequest {
            op: "stats".into(),
            volume_id: "vol-1".into(),
        })
        .unwrap();
        req.push(b'\n');
        w.write_all(&req).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        let reply: StatsReply = serde_json::from_str(&line).unwrap();
        assert_eq!(reply.used_bytes, 4096);
    };
    for _ in 0..calls / 10 {
        call();
    }
    let per_batch = calls / BATCHES;
    let mut batches = Vec::new();
    for _ in 0..BATCHES {
        let t = Instant::now();
        for _ in 0..per_batch {
            call();
        }
        batches.push(t.elapsed());
    }
    per_iter(&mut batches, per_batch)
}

/// HTTP/1.1 POST with a JSON body over a unix socket, keep-alive, hyper on both ends: how the
/// Docker daemon calls a volume plugin (`POST /VolumeDriver.Get`).
async fn bench_http_socket(dir: &Path, calls: usize) -> Timing {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let path = dir.join("http.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = req.into_body().collect().await?.to_bytes();
                    let req: StatsRequest = serde_json::from_slice(&body).unwrap();
                    let out = serde_json::to_vec(&reply(&req)).unwrap();
                    let resp = hyper::Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(out)))
                        .unwrap();
                    Ok::<_, hyper::Error>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut call = async || {
        let body = serde_json::to_vec(&StatsRequest {
            op: "stats".into(),
            volume_id: "vol-1".into(),
        })
        .unwrap();
        let req = hyper::Request::post("/VolumeDriver.Stats")
            .header("host", "plugin")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let reply: StatsReply = serde_json::from_slice(&body).unwrap();
        assert_eq!(reply.used_bytes, 4096);
    };
    for _ in 0..calls / 10 {
        call().await;
    }
    let per_batch = calls / BATCHES;
    let mut batches = Vec::new();
    for _ in 0..BATCHES {
        let t = Instant::now();
        for _ in 0..per_batch {
            call().await;
        }
        batches.push(t.elapsed());
    }
    per_iter(&mut batches, per_batch)
}

// ---- through the runtime ----------------------------------------------------------------------

fn backend_spec(name: &str, pool: &Path) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        pool_dir: pool.to_path_buf(),
        config: vec![],
        grants: vec![],
        limits: Limits::default(),
    }
}

async fn bench_calls(backend: &Backend, calls: usize) -> Timing {
    for _ in 0..calls / 10 {
        backend.stats("vol-1").await.unwrap();
    }
    let per_batch = calls / BATCHES;
    let mut batches = Vec::new();
    for _ in 0..BATCHES {
        let t = Instant::now();
        for _ in 0..per_batch {
            std::hint::black_box(backend.stats("vol-1").await.unwrap());
        }
        batches.push(t.elapsed());
    }
    per_iter(&mut batches, per_batch)
}

/// The same calls straight through wasmtime on one instance (the floor under `bench_calls`).
async fn bench_raw(backend: &Backend, calls: usize) -> Timing {
    backend.bench_raw_stats("vol-1", calls / 10).await.unwrap();
    let per_batch = calls / BATCHES;
    let mut batches = Vec::new();
    for _ in 0..BATCHES {
        let t = Instant::now();
        backend.bench_raw_stats("vol-1", per_batch).await.unwrap();
        batches.push(t.elapsed());
    }
    per_iter(&mut batches, per_batch)
}

/// A fresh instance: instantiate + `configure` (what the first call after a trap pays).
async fn bench_instantiate(backend: &Backend, n: usize) -> Timing {
    let per_batch = n / BATCHES;
    let mut batches = Vec::new();
    for _ in 0..BATCHES {
        let mut total = Duration::ZERO;
        for _ in 0..per_batch {
            backend.clear_idle();
            let t = Instant::now();
            backend.prewarm(1).await.unwrap();
            total += t.elapsed();
        }
        batches.push(total);
    }
    per_iter(&mut batches, per_batch)
}

async fn bench_open(rt: &Runtime, driver: &elara_runtime::Driver, dir: &Path, n: usize) -> Timing {
    let per_batch = n / BATCHES;
    let mut batches = Vec::new();
    for b in 0..BATCHES {
        let t = Instant::now();
        for i in 0..per_batch {
            let pool = dir.join(format!("open-{b}-{i}"));
            std::hint::black_box(rt.open_backend(driver, backend_spec("open", &pool)).await.unwrap());
        }
        batches.push(t.elapsed());
    }
    per_iter(&mut batches, per_batch)
}

/// Load `wasm` `n` times with an empty cache (compiling), then `n * 5` times from the cache.
async fn bench_load(wasm: &[u8], dir: &Path, n: usize) -> (Duration, Duration) {
    let mut cold = Duration::ZERO;
    for i in 0..n {
        let rt = Runtime::new(RuntimeConfig {
            cache_dir: dir.join(format!("cold-{i}")),
            ..Default::default()
        })
        .unwrap();
        let t = Instant::now();
        let d = rt.load_driver(wasm).await.unwrap();
        cold += t.elapsed();
        assert!(!d.loaded_from_cache());
    }
    let rt = Runtime::new(RuntimeConfig {
        cache_dir: dir.join("cold-0"),
        ..Default::default()
    })
    .unwrap();
    let warm_n = n * 5;
    let mut warm = Duration::ZERO;
    for _ in 0..warm_n {
        let t = Instant::now();
        let d = rt.load_driver(wasm).await.unwrap();
        warm += t.elapsed();
        assert!(d.loaded_from_cache());
    }
    (cold / n as u32, warm / warm_n as u32)
}

fn main() {
    let calls: usize = env_or("ELARA_BENCH_CALLS", 200_000);
    let socket_calls: usize = env_or("ELARA_BENCH_SOCKET_CALLS", 20_000);
    let loads: usize = env_or("ELARA_BENCH_LOADS", 3).max(1);
    build_drivers();
    let trivial = driver_bytes("test-drivers", "trivial");
    let local = driver_bytes("drivers", "local");
    let dir = tempfile::tempdir().unwrap();

    let native = bench_native(calls);
    let json = bench_json_socket(dir.path(), socket_calls);

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let http = bench_http_socket(dir.path(), socket_calls).await;

        let rt = Runtime::new(RuntimeConfig {
            cache_dir: dir.path().join("cache"),
            ..Default::default()
        })
        .unwrap();
        let driver = rt.load_driver(&trivial).await.unwrap();
        let backend = rt
            .open_backend(&driver, backend_spec("bench", &dir.path().join("pool")))
            .await
            .unwrap();
        let call = bench_calls(&backend, calls).await;
        let raw = bench_raw(&backend, calls).await;
        let inst = bench_instantiate(&backend, 2_000).await;
        let open = bench_open(&rt, &driver, dir.path(), 500).await;
        let (trivial_cold, trivial_cached) = bench_load(&trivial, &dir.path().join("load-trivial"), loads).await;
        let (local_cold, local_cached) = bench_load(&local, &dir.path().join("load-local"), loads).await;

        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!();
        println!(
            "elara-runtime benchmark (wasmtime 48.0.8; trivial driver {} bytes, local driver {} bytes)",
            trivial.len(),
            local.len()
        );
        println!(
            "{:<58} {:>11} {:>11} {:>12}",
            "per call", "median", "fastest", "vs runtime"
        );
        let row = |name: &str, t: &Timing| {
            let ratio = t.median.as_secs_f64() / call.median.as_secs_f64();
            let ratio = if ratio < 0.1 {
                format!("{ratio:.3}×")
            } else {
                format!("{ratio:.1}×")
            };
            println!("{:<58} {:>11} {:>11} {:>12}", name, fmt(t.median), fmt(t.min), ratio)
        };
        row("trivial driver call through the runtime (Backend::stats)", &call);
        row("  of which wasmtime's own async call (no Elara bookkeeping)", &raw);
        row("the same, native Rust call", &native);
        row("the same, JSON line over a unix socket (persistent conn)", &json);
        row("the same, HTTP/1.1 + JSON over a unix socket (keep-alive)", &http);
        println!();
        println!("{:<58} {:>11} {:>11}", "instances and backends", "median", "fastest");
        println!(
            "{:<58} {:>11} {:>11}",
            "fresh instance: instantiate + configure",
            fmt(inst.median),
            fmt(inst.min)
        );
        println!(
            "{:<58} {:>11} {:>11}",
            "open a backend (pool dir, instance, configure)",
            fmt(open.median),
            fmt(open.min)
        );
        println!();
        println!(
            "{:<58} {:>11} {:>11} {:>10}",
            "driver load (compile or cache, validate, info)", "cold", "cached", "speed-up"
        );
        for (name, cold, cached) in [
            ("trivial", trivial_cold, trivial_cached),
            ("local", local_cold, local_cached),
        ] {
            println!(
                "{:<58} {:>11} {:>11} {:>9.0}×",
                format!("{name} driver"),
                fmt(cold),
                fmt(cached),
                cold.as_secs_f64() / cached.as_secs_f64()
            );
        }
        println!();
        let goal_call = us(call.median) <= 0.5;
        let ratio = json.median.as_secs_f64() / call.median.as_secs_f64();
        println!(
            "goal: trivial call ≤ 0.5 µs: {:.3} µs — {}",
            us(call.median),
            if goal_call { "met" } else { "NOT met" }
        );
        println!(
            "goal: ≥ 50× faster than a unix-socket JSON round trip: {ratio:.0}× (HTTP: {:.0}×) — {}",
            http.median.as_secs_f64() / call.median.as_secs_f64(),
            if ratio >= 50.0 { "met" } else { "NOT met" }
        );
    });
}
