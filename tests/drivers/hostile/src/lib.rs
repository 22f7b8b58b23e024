//! `hostile`: a driver that attacks its sandbox, one attack per call, for the runtime's
//! containment tests (`tests/tests/hostile.rs`).
//!
//! `create(spec)` runs the attack named by `spec.name`, with arguments from `spec.labels`. An
//! attack that the sandbox stops comes back as the driver error it met (`backend: <attack>:
//! <error>`); an attack that *works* returns a volume whose `backend-ref` starts with
//! `DONE:` and says what it got, so a test can never mistake a breach for containment.
//! Any other name creates nothing and returns a plain volume (a benign call).
//!
//! | name          | labels                  | what it does                                              |
//! |---------------|-------------------------|-----------------------------------------------------------|
//! | `read`        | `path`                  | reads the file (`/pool/../x`, `/etc/passwd`, a symlink out)|
//! | `write`       | `path`                  | creates the file and writes `pwned` into it                |
//! | `symlink`     | `target`, `link`        | makes a symlink in the pool pointing out, then reads it    |
//! | `clone-file`  | `src`, `dst`            | the host's `clone-file` with those paths                   |
//! | `http`        | `url`                   | GET over wasi:http (the SDK client)                        |
//! | `tcp`         | `addr`                  | TCP connect over wasi:sockets, sends `hello`, reads a line |
//! | `alloc`       | `bytes` (default 4 GiB) | allocates that much in 64 MiB chunks and keeps it          |
//! | `spin`        |                         | an infinite loop                                           |
//! | `sleep`       | `secs` (default 3600)   | sleeps (blocked in the host, not burning CPU)              |
//! | `panic`       |                         | panics                                                     |
//! | `log-flood`   | `bytes` (default 64 MiB)| logs that much through `log`, stdout and stderr, returns   |
//! | `log-huge`    | `bytes` (default 100 MiB)| one log message of that size                              |
//! | `huge-return` | `bytes` (default 100 MiB)| returns a volume whose `backend-ref` is that long         |
//! | `work`        | `secs`, `spin`, `report_for`, `step` | works `secs` s in 100 ms slices (spinning if `spin=1`, else sleeping), reporting `progress` after each slice for the first `report_for` s (default all), `done` growing by `step` bytes (default 1; 0 = never advancing) of `secs * 10 * step` |
//! | `progress-loop` | `step` (default 64 MiB), `total` (default u64::MAX), `change_total` | spins forever, reporting an ever-larger `done` (by `step` each time) of `total`; with `change_total=1` each report names a larger total too: progress bought with no work |
//! | `open-files`  | `count` (default 1 000 000) | opens `/pool/held` that many times and keeps every descriptor: the daemon's file descriptors |
//! | `fill`        | `bytes` (default 1 TiB) | writes `/pool/fill` in 1 MiB blocks until that much or an error: the pool's file system |
//!
//! `list-volumes` on a backend configured with `amplify=N` returns N volumes whose strings all
//! alias one 1 MiB buffer: a few MiB of guest memory that would become N MiB on the host.
//!
//! `pools` on a backend configured with `pool_flood=N` reports N pools named with
//! `pool_name_bytes` (default 120) characters each: rows for the host's store and its listings.

use elara_driver_sdk::prelude::*;
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicU64, Ordering};

struct Hostile;
elara_driver_sdk::export_driver!(Hostile);

/// `amplify` from the configuration: how many aliased volumes `list-volumes` returns.
static AMPLIFY: AtomicU64 = AtomicU64::new(0);
/// `pool_flood` and `pool_name_bytes` from the configuration: how many pools `pools` reports
/// (0: the one real pool), and how long their names are.
static POOL_FLOOD: AtomicU64 = AtomicU64::new(0);
static POOL_NAME_BYTES: AtomicU64 = AtomicU64::new(120);

fn label<'a>(spec: &'a VolumeSpec, key: &str) -> DriverResult<&'a str> {
    spec.labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| DriverError::invalid(key, "label missing for this attack"))
}

fn number(spec: &VolumeSpec, key: &str, default: u64) -> DriverResult<u64> {
    match label(spec, key) {
        Ok(v) => v.parse().map_err(|e| DriverError::invalid(key, format!("{e}"))),
        Err(_) => Ok(default),
    }
}

/// The attack failed: report what stopped it.
fn stopped(attack: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError::backend(format!("{attack}: {e}"))
}

/// `symlink(2)` through libc (wasi-libc on wasm32-wasip2; `std::os::wasi::fs::symlink_path` is
/// unstable).
fn symlink(target: &str, link: &str) -> std::io::Result<()> {
    use std::ffi::{CString, c_char, c_int};
    unsafe extern "C" {
        fn symlink(target: *const c_char, link: *const c_char) -> c_int;
    }
    let (t, l) = (CString::new(target)?, CString::new(link)?);
    // SAFETY: two valid NUL-terminated strings that outlive the call.
    if unsafe { symlink(t.as_ptr(), l.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn volume(spec: &VolumeSpec, backend_ref: String) -> Volume {
    Volume {
        id: spec.id.clone(),
        pool: spec.pool.clone(),
        size_bytes: spec.size_bytes,
        backend_ref,
    }
}

fn done(spec: &VolumeSpec, what: String) -> DriverResult<Volume> {
    Ok(volume(spec, format!("DONE: {what}")))
}

fn attack(spec: &VolumeSpec) -> DriverResult<Volume> {
    let name = spec.name.as_str();
    match name {
        "read" => {
            let path = label(spec, "path")?;
            let data = std::fs::read(path).map_err(|e| stopped(name, format!("reading {path}: {e}")))?;
            done(
                spec,
                format!(
                    "read {} bytes of {path}: {:?}",
                    data.len(),
                    String::from_utf8_lossy(&data)
                ),
            )
        }
        "write" => {
            let path = label(spec, "path")?;
            std::fs::write(path, b"pwned").map_err(|e| stopped(name, format!("writing {path}: {e}")))?;
            done(spec, format!("wrote {path}"))
        }
        "symlink" => {
            let (target, link) = (label(spec, "target")?, label(spec, "link")?);
            symlink(target, link).map_err(|e| stopped(name, format!("symlink {link} -> {target}: {e}")))?;
            let data = std::fs::read(link).map_err(|e| stopped(name, format!("reading {link} -> {target}: {e}")))?;
            done(
                spec,
                format!(
                    "read {} bytes through {link}: {:?}",
                    data.len(),
                    String::from_utf8_lossy(&data)
                ),
            )
        }
        "clone-file" => {
            let (src, dst) = (label(spec, "src")?, label(spec, "dst")?);
            let method =
                host::clone_file(src, dst).map_err(|e| stopped(name, format!("{} {}", e.kind(), e.message())))?;
            done(spec, format!("cloned {src} to {dst} by {method:?}"))
        }
        "http" => {
            let url = label(spec, "url")?;
            let resp = elara_driver_sdk::http::Client::new()
                .get(url)
                .send()
                .map_err(|e| stopped(name, e))?;
            done(spec, format!("GET {url}: HTTP {} {:?}", resp.status, resp.text()))
        }
        "tcp" => {
            let addr = label(spec, "addr")?;
            let mut stream =
                std::net::TcpStream::connect(addr).map_err(|e| stopped(name, format!("connect {addr}: {e}")))?;
            stream
                .write_all(b"hello\n")
                .map_err(|e| stopped(name, format!("write to {addr}: {e}")))?;
            let mut line = String::new();
            BufReader::new(stream)
                .read_line(&mut line)
                .map_err(|e| stopped(name, format!("read from {addr}: {e}")))?;
            done(spec, format!("TCP {addr} answered {line:?}"))
        }
        "alloc" => {
            let total = number(spec, "bytes", 4 << 30)?;
            const CHUNK: usize = 64 << 20;
            let mut kept: Vec<Vec<u8>> = Vec::new();
            let mut have = 0u64;
            while have < total {
                let mut chunk = Vec::<u8>::with_capacity(CHUNK);
                // Touch it so nothing is optimised away.
                chunk.push(1);
                kept.push(std::hint::black_box(chunk));
                have += CHUNK as u64;
            }
            done(spec, format!("allocated {have} bytes in {} chunks", kept.len()))
        }
        "spin" => {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "sleep" => {
            let secs = number(spec, "secs", 3600)?;
            std::thread::sleep(std::time::Duration::from_secs(secs));
            done(spec, format!("slept {secs} s"))
        }
        "work" => {
            use std::time::{Duration, Instant};
            let secs = number(spec, "secs", 10)?;
            let spin = number(spec, "spin", 0)? == 1;
            let report_for = Duration::from_secs(number(spec, "report_for", secs)?);
            let step = number(spec, "step", 1)?;
            let (start, slice) = (Instant::now(), Duration::from_millis(100));
            let mut advanced = 0;
            while start.elapsed() < Duration::from_secs(secs) {
                let began = Instant::now();
                if spin {
                    while began.elapsed() < slice {
                        std::hint::black_box(0u64);
                    }
                } else {
                    std::thread::sleep(slice);
                }
                if start.elapsed() < report_for {
                    advanced += step;
                    elara_driver_sdk::log::progress(advanced, secs * 10 * step.max(1));
                }
            }
            done(spec, format!("worked {secs} s"))
        }
        "progress-loop" => {
            let step = number(spec, "step", 64 << 20)?;
            let total = number(spec, "total", u64::MAX)?;
            let change_total = number(spec, "change_total", 0)? == 1;
            let mut reported = 0u64;
            loop {
                reported = reported.saturating_add(step);
                let total = if change_total {
                    reported.saturating_add(step)
                } else {
                    total
                };
                elara_driver_sdk::log::progress(std::hint::black_box(reported), total);
            }
        }
        "open-files" => {
            let count = number(spec, "count", 1_000_000)?;
            std::fs::write("/pool/held", b"held").map_err(|e| stopped(name, format!("creating /pool/held: {e}")))?;
            let mut held = Vec::new();
            for i in 0..count {
                match std::fs::File::open("/pool/held") {
                    Ok(f) => held.push(f),
                    Err(e) => return Err(stopped(name, format!("open number {} of /pool/held: {e}", i + 1))),
                }
            }
            done(spec, format!("holds {} open files", held.len()))
        }
        "fill" => {
            let total = number(spec, "bytes", 1 << 40)?;
            let mut f =
                std::fs::File::create("/pool/fill").map_err(|e| stopped(name, format!("creating /pool/fill: {e}")))?;
            let block = vec![b'f'; 1 << 20];
            let mut written = 0u64;
            while written < total {
                f.write_all(&block)
                    .map_err(|e| stopped(name, format!("writing /pool/fill after {written} bytes: {e}")))?;
                written += block.len() as u64;
            }
            done(spec, format!("wrote {written} bytes"))
        }
        "panic" => panic!("hostile driver panics on purpose"),
        "log-flood" => {
            let total = number(spec, "bytes", 64 << 20)? as usize;
            let line = "x".repeat(1023);
            let mut out = std::io::stdout();
            let mut err = std::io::stderr();
            let mut sent = 0;
            while sent < total {
                elara_driver_sdk::info!("{line}");
                let _ = writeln!(out, "{line}");
                let _ = writeln!(err, "{line}");
                sent += 3 * 1024;
            }
            Ok(volume(spec, format!("logged {sent} bytes")))
        }
        "log-huge" => {
            let bytes = number(spec, "bytes", 100 << 20)? as usize;
            elara_driver_sdk::log::write(elara_driver_sdk::log::Level::Info, &"y".repeat(bytes));
            Ok(volume(spec, format!("logged one message of {bytes} bytes")))
        }
        "huge-return" => {
            let bytes = number(spec, "bytes", 100 << 20)? as usize;
            Ok(volume(spec, "z".repeat(bytes)))
        }
        _ => Ok(volume(spec, format!("benign {}", spec.id))),
    }
}

/// `n` volumes whose strings all point at one shared 1 MiB buffer. Never freed: the host
/// either refuses the result (and discards the instance) or copies it.
fn amplified(n: u64) -> Vec<Volume> {
    let shared: &'static mut [u8] = Box::leak(vec![b'a'; 1 << 20].into_boxed_slice());
    let (ptr, len) = (shared.as_mut_ptr(), shared.len());
    // SAFETY: none, deliberately (test-only): the Strings alias one leaked buffer. The bindings
    // hand their pointers to the host; if the host ever accepted the result, the post-return
    // would free the buffer many times and trap inside this sandbox.
    let alias = || unsafe { String::from_raw_parts(ptr, len, len) };
    (0..n)
        .map(|i| Volume {
            id: format!("amp-{i}"),
            pool: "default".into(),
            size_bytes: 1,
            backend_ref: alias(),
        })
        .collect()
}

impl Guest for Hostile {
    fn info() -> DriverInfo {
        DriverInfo {
            name: "hostile".into(),
            version: "0.1.0".into(),
            kind: VolumeKind::File,
            features: Features::empty(),
            config_keys: vec![
                ConfigKey::optional(
                    "amplify",
                    "list-volumes returns this many volumes aliasing one 1 MiB string",
                    Some("0"),
                ),
                ConfigKey::optional(
                    "pool_flood",
                    "pools reports this many pools (0: the one real pool)",
                    Some("0"),
                ),
                ConfigKey::optional("pool_name_bytes", "the length of each flooded pool's name", Some("120")),
            ],
            notes: vec![("purpose".into(), "sandbox containment tests".into())],
        }
    }

    fn configure(config: Vec<(String, String)>) -> DriverResult<()> {
        let cfg = Config::parse(config, &Self::info().config_keys)?;
        AMPLIFY.store(cfg.u64("amplify")?.unwrap_or(0), Ordering::Relaxed);
        POOL_FLOOD.store(cfg.u64("pool_flood")?.unwrap_or(0), Ordering::Relaxed);
        POOL_NAME_BYTES.store(cfg.u64("pool_name_bytes")?.unwrap_or(120), Ordering::Relaxed);
        Ok(())
    }

    fn pools() -> DriverResult<Vec<Pool>> {
        let stats = host::pool_stats()?;
        let flood = POOL_FLOOD.load(Ordering::Relaxed);
        if flood > 0 {
            let width = POOL_NAME_BYTES.load(Ordering::Relaxed) as usize;
            return Ok((0..flood)
                .map(|i| {
                    let id = format!("-{i}");
                    let name = format!("{}{id}", "p".repeat(width.saturating_sub(id.len()).max(1)));
                    Pool {
                        name,
                        total: Capacity::Bytes(stats.total_bytes),
                        free: Capacity::Bytes(stats.available_bytes),
                        provisioned_bytes: 0,
                        reserved_percentage: 0,
                        thin_provisioning: true,
                        thick_provisioning: false,
                        max_over_subscription_ratio: "1.0".into(),
                        capabilities: vec![],
                    }
                })
                .collect());
        }
        Ok(vec![Pool {
            name: "default".into(),
            total: Capacity::Bytes(stats.total_bytes),
            free: Capacity::Bytes(stats.available_bytes),
            provisioned_bytes: 0,
            reserved_percentage: 0,
            thin_provisioning: true,
            thick_provisioning: false,
            max_over_subscription_ratio: "1.0".into(),
            capabilities: vec![],
        }])
    }

    fn list_volumes() -> DriverResult<Vec<Volume>> {
        Ok(amplified(AMPLIFY.load(Ordering::Relaxed)))
    }

    fn create(spec: VolumeSpec) -> DriverResult<Volume> {
        attack(&spec)
    }

    fn create_from_snapshot(_: VolumeSpec, _: String) -> DriverResult<Volume> {
        Err(DriverError::unsupported("clones"))
    }
    fn delete(_: String) -> DriverResult<()> {
        Ok(())
    }
    fn resize(_: String, _: u64) -> DriverResult<Volume> {
        Err(DriverError::unsupported("resize"))
    }
    fn snapshot_create(_: SnapshotSpec) -> DriverResult<Snapshot> {
        Err(DriverError::unsupported("snapshots"))
    }
    fn snapshot_delete(_: String) -> DriverResult<()> {
        Err(DriverError::unsupported("snapshots"))
    }
    fn attach(volume_id: String, _: NodeInfo) -> DriverResult<Connection> {
        Ok(Connection::Directory(volume_id))
    }
    fn detach(_: String, _: NodeInfo) -> DriverResult<()> {
        Ok(())
    }
    fn stats(_: String) -> DriverResult<VolumeStats> {
        Err(DriverError::unsupported("stats"))
    }
    fn set_qos(_: String, _: Qos) -> DriverResult<()> {
        Err(DriverError::unsupported("QoS"))
    }
}
