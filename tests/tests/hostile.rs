//! Hostile drivers against the runtime (`elara-runtime`): every attack of
//! `tests/drivers/hostile` (built from source for wasm32-wasip2 by `scripts/build-drivers.sh`)
//! is contained with a clear error, the trapped instance is replaced so its backend keeps
//! serving, and a backend of the local driver keeps serving calls during and after the attack.
//!
//! The network tests talk to real TCP/HTTP listeners on 127.0.0.1 that count their connections,
//! so a denied request is one that never arrived.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use elara_runtime::{
    Backend, BackendSpec, CallError, Driver, DriverError, HostGrant, Limits, NodeInfo, Runtime, RuntimeConfig,
    VolumeSpec,
};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

// ---- building and loading the drivers ------------------------------------------------------

/// A runtime of its own per test, sharing the compiled-code cache.
fn runtime() -> Runtime {
    capture_logs();
    Runtime::new(RuntimeConfig {
        cache_dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-driver-cache"),
        max_instances: 32,
        ..Default::default()
    })
    .expect("runtime")
}

/// A hostile backend, a local backend, and the directories they live in.
struct World {
    rt: Runtime,
    hostile_driver: Driver,
    local: Backend,
    dir: TempDir,
}

impl World {
    async fn new() -> World {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let hostile_driver = rt
            .load_driver(&elara_tests::built_component("test-drivers", "hostile"))
            .await
            .expect("hostile loads");
        let local_driver = rt
            .load_driver(&elara_tests::built_component("drivers", "local"))
            .await
            .expect("local loads");
        let local = rt
            .open_backend(
                &local_driver,
                spec(
                    "local",
                    &dir.path().join("local-pool"),
                    vec![],
                    vec![],
                    Limits::default(),
                ),
            )
            .await
            .expect("local backend");
        World {
            rt,
            hostile_driver,
            local,
            dir,
        }
    }

    /// The outside world a hostile driver must not reach: `<dir>/outside/secret.txt`.
    fn outside(&self) -> PathBuf {
        let outside = self.dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), "top secret").unwrap();
        outside
    }

    async fn hostile(&self, name: &str, config: Vec<(&str, &str)>, grants: Vec<HostGrant>, limits: Limits) -> Backend {
        let config = config
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let pool = self.dir.path().join(format!("{name}-pool"));
        self.rt
            .open_backend(&self.hostile_driver, spec(name, &pool, config, grants, limits))
            .await
            .expect("hostile backend")
    }

    /// A full round of the local driver: create, stats, attach, delete.
    async fn local_round(&self, id: &str) {
        let v = self.local.create(&volume(id, "", &[])).await.expect("local create");
        assert_eq!(v.id, id);
        self.local.stats(id).await.expect("local stats");
        self.local.attach(id, &node()).await.expect("local attach");
        self.local.delete(id).await.expect("local delete");
    }
}

fn spec(name: &str, pool: &Path, config: Vec<(String, String)>, grants: Vec<HostGrant>, limits: Limits) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        pool_dir: pool.to_path_buf(),
        config,
        grants,
        limits,
    }
}

fn volume(id: &str, name: &str, labels: &[(&str, &str)]) -> VolumeSpec {
    VolumeSpec {
        id: id.into(),
        name: name.into(),
        size_bytes: 1 << 20,
        pool: "default".into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        qos: None,
    }
}

fn node() -> NodeInfo {
    NodeInfo {
        name: "test-node".into(),
        connector: vec![],
    }
}

/// Run one attack; it must fail with the driver's own `backend` error (the sandbox said no).
async fn refused(backend: &Backend, attack: &str, labels: &[(&str, &str)]) -> String {
    match backend.create(&volume("attack", attack, labels)).await {
        Err(CallError::Driver(DriverError::Backend(msg))) => {
            println!("{attack} {labels:?}: refused: {msg}");
            msg
        }
        Ok(v) => panic!("{attack} {labels:?} was not contained: {}", v.backend_ref),
        Err(e) => panic!("{attack} {labels:?}: expected a driver error, got {e}"),
    }
}

/// The backend still answers after an attack: a trapped instance was replaced.
async fn still_serves(backend: &Backend) {
    let v = backend
        .create(&volume("benign", "benign", &[]))
        .await
        .expect("a benign call after the attack");
    assert_eq!(v.backend_ref, "benign benign");
    backend.pools().await.expect("pools after the attack");
}

// ---- filesystem ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_escapes_are_refused() {
    let w = World::new().await;
    let outside = w.outside();
    let hostile = w.hostile("hostile-fs", vec![], vec![], Limits::default()).await;
    let pool = w.dir.path().join("hostile-fs-pool");
    // Symlinks out of the pool, planted from the host side.
    std::os::unix::fs::symlink(outside.join("secret.txt"), pool.join("link-file")).unwrap();
    std::os::unix::fs::symlink(&outside, pool.join("link-dir")).unwrap();
    let abs = |p: &str| outside.join(p).to_str().unwrap().to_string();

    for path in [
        "/pool/../outside/secret.txt".to_string(),
        "/pool/../../../../etc/passwd".to_string(),
        abs("secret.txt"),
        "/etc/passwd".to_string(),
        "/pool/link-file".to_string(),
        "/pool/link-dir/secret.txt".to_string(),
    ] {
        let msg = refused(&hostile, "read", &[("path", &path)]).await;
        assert!(msg.starts_with(&format!("read: reading {path}: ")), "{msg}");
        assert!(!msg.contains("top secret") && !msg.contains("root:"), "{msg}");
    }
    for path in [
        "/pool/../outside/pwned".to_string(),
        "/pool/../pwned".to_string(),
        abs("pwned"),
        "/pool/link-dir/pwned".to_string(),
        "/tmp/elara-hostile-pwned".to_string(),
    ] {
        let msg = refused(&hostile, "write", &[("path", &path)]).await;
        assert!(msg.starts_with(&format!("write: writing {path}: ")), "{msg}");
    }
    // Symlinks the driver makes itself: absolute and relative targets out of the pool.
    for (target, link) in [
        (abs("secret.txt"), "/pool/evil-abs"),
        ("../outside/secret.txt".to_string(), "/pool/evil-rel"),
    ] {
        let msg = refused(&hostile, "symlink", &[("target", &target), ("link", link)]).await;
        assert!(
            msg.starts_with(&format!("symlink: symlink {link} -> {target}: "))
                || msg.starts_with(&format!("symlink: reading {link} -> {target}: ")),
            "{msg}"
        );
        assert!(!msg.contains("top secret"), "{msg}");
    }
    // The host's own file power (`clone-file`) is confined the same way, with `invalid` naming
    // the field.
    std::fs::write(pool.join("inside.img"), b"inside").unwrap();
    for (src, dst, want) in [
        (
            "../outside/secret.txt",
            "copy",
            "invalid src: `../outside/secret.txt`: `..` is not allowed",
        ),
        (
            "/etc/passwd",
            "copy",
            "invalid src: `/etc/passwd`: absolute paths are not allowed",
        ),
        ("link-file", "copy", "invalid src: `link-file`"),
        (
            "inside.img",
            "../outside/copied",
            "invalid dst: `../outside/copied`: `..` is not allowed",
        ),
        ("inside.img", "link-dir/copied", "dst"),
    ] {
        let msg = refused(&hostile, "clone-file", &[("src", src), ("dst", dst)]).await;
        assert!(msg.contains(want), "clone-file {src} {dst}: {msg}");
    }

    // Nothing outside changed.
    let mut names: Vec<String> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["secret.txt"], "files appeared outside the pool");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        "top secret"
    );
    assert!(!w.dir.path().join("pwned").exists() && !Path::new("/tmp/elara-hostile-pwned").exists());

    // Inside the pool everything works.
    let v = hostile
        .create(&volume("ok", "write", &[("path", "/pool/fine.txt")]))
        .await
        .expect("write inside");
    assert!(v.backend_ref.starts_with("DONE: wrote"), "{}", v.backend_ref);
    assert_eq!(std::fs::read_to_string(pool.join("fine.txt")).unwrap(), "pwned");
    still_serves(&hostile).await;
    w.local_round("after-fs").await;
}

// ---- network ---------------------------------------------------------------------------------

/// A listener on 127.0.0.1 that counts connections; answers HTTP requests with `200 ok` and
/// anything else with the line `hi`.
struct Listener {
    port: u16,
    connections: Arc<AtomicUsize>,
}

async fn listener() -> Listener {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut r = BufReader::new(r);
                let mut line = String::new();
                if r.read_line(&mut line).await.is_err() {
                    return;
                }
                if line.starts_with("GET ") {
                    while r.read_line(&mut line).await.is_ok_and(|n| n > 2) {}
                    let _ = w
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                        .await;
                } else {
                    let _ = w.write_all(b"hi\n").await;
                }
                let _ = w.shutdown().await;
                // Read whatever else the client sends (a chunked-body trailer) until it closes,
                // so closing never resets the connection under the client.
                let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
            });
        }
    });
    Listener { port, connections }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_reaches_only_granted_hosts() {
    let w = World::new().await;
    let (granted, other) = (listener().await, listener().await);
    let (a, b) = (granted.port, other.port);
    // `0` is a name (glibc resolves it to 0.0.0.0, which a connect takes to this host): a
    // granted name that resolves to an address no grant may reach.
    let grants = vec![
        format!("127.0.0.1:{a}").parse().unwrap(),
        format!("0:{b}").parse().unwrap(),
    ];
    let hostile = w.hostile("hostile-net", vec![], grants, Limits::default()).await;

    // The granted host works over HTTP and TCP (so the refusals below are the policy's doing).
    let v = hostile
        .create(&volume("ok", "http", &[("url", &format!("http://127.0.0.1:{a}/x"))]))
        .await
        .unwrap();
    assert_eq!(
        v.backend_ref,
        format!("DONE: GET http://127.0.0.1:{a}/x: HTTP 200 \"ok\"")
    );
    let v = hostile
        .create(&volume("ok", "tcp", &[("addr", &format!("127.0.0.1:{a}"))]))
        .await
        .unwrap();
    assert_eq!(v.backend_ref, format!("DONE: TCP 127.0.0.1:{a} answered \"hi\\n\""));
    assert_eq!(granted.connections.load(Ordering::SeqCst), 2);

    let not_granted = "the host is not granted to this backend (grant it with --allow-host)";
    for url in [
        format!("http://127.0.0.1:{b}/"), // granted host, other port
        format!("http://localhost:{a}/"), // the granted address under a name that is not granted
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "https://example.com/".to_string(),
    ] {
        let msg = refused(&hostile, "http", &[("url", &url)]).await;
        assert_eq!(msg, format!("http: request to {url} denied by the host: {not_granted}"));
    }
    let url = format!("http://0:{b}/");
    let msg = refused(&hostile, "http", &[("url", &url)]).await;
    assert!(msg.contains("resolves only to addresses no grant may reach"), "{msg}");

    for addr in [
        format!("127.0.0.1:{b}"),
        format!("0.0.0.0:{b}"),
        format!("0:{b}"),
        format!("[::1]:{a}"),
    ] {
        let msg = refused(&hostile, "tcp", &[("addr", &addr)]).await;
        assert!(msg.starts_with(&format!("tcp: connect {addr}: ")), "{msg}");
    }
    assert_eq!(
        other.connections.load(Ordering::SeqCst),
        0,
        "a denied connection reached the listener"
    );

    // A backend without grants reaches nothing, not even the listener the other one may use.
    let closed = w.hostile("hostile-closed", vec![], vec![], Limits::default()).await;
    refused(&closed, "http", &[("url", &format!("http://127.0.0.1:{a}/"))]).await;
    refused(&closed, "tcp", &[("addr", &format!("127.0.0.1:{a}"))]).await;
    assert_eq!(granted.connections.load(Ordering::SeqCst), 2);
    still_serves(&hostile).await;
    w.local_round("after-net").await;
}

// ---- memory, CPU, time -----------------------------------------------------------------------

/// A trap: the instance is gone, the error says why.
fn trapped(r: Result<elara_runtime::Volume, CallError>) -> String {
    match r {
        Err(CallError::Trapped { backend, reason }) => {
            println!("trapped ({backend}): {reason}");
            reason
        }
        Ok(v) => panic!("not contained: {}", &v.backend_ref[..v.backend_ref.len().min(200)]),
        Err(e) => panic!("expected a trap, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocating_4_gib_hits_the_memory_cap() {
    let w = World::new().await;
    let hostile = w.hostile("hostile-mem", vec![], vec![], Limits::default()).await;
    let reason = trapped(hostile.create(&volume("a", "alloc", &[])).await);
    assert!(
        reason.starts_with("memory limit of 268435456 bytes exceeded (the driver tried to grow its memory to "),
        "{reason}"
    );
    still_serves(&hostile).await;
    // Again, with a smaller cap of its own.
    let small = w
        .hostile(
            "hostile-mem-small",
            vec![],
            vec![],
            Limits {
                memory_bytes: 32 << 20,
                ..Limits::default()
            },
        )
        .await;
    let reason = trapped(small.create(&volume("a", "alloc", &[("bytes", "134217728")])).await);
    assert!(
        reason.starts_with("memory limit of 33554432 bytes exceeded"),
        "{reason}"
    );
    still_serves(&small).await;
    w.local_round("after-mem").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_while_other_backends_serve() {
    let w = World::new().await;
    let budget = Duration::from_secs(4);
    let hostile = w
        .hostile(
            "hostile-spin",
            vec![],
            vec![],
            Limits {
                cpu_budget: budget,
                ..Limits::default()
            },
        )
        .await;
    let spinner = hostile.clone();
    let spin = tokio::spawn(async move { spinner.create(&volume("s", "spin", &[])).await });

    // While it spins: the local backend and the hostile backend itself (another instance) answer.
    for i in 0..5 {
        w.local_round(&format!("during-spin-{i}")).await;
    }
    still_serves(&hostile).await;
    assert!(
        !spin.is_finished(),
        "the loop ended before the other calls were served: not concurrent"
    );

    match spin.await.unwrap() {
        Err(CallError::CpuBudget { backend, budget: b }) => {
            assert_eq!((backend.as_str(), b), ("hostile-spin", budget));
        }
        other => panic!("expected the CPU budget to stop the loop, got {other:?}"),
    }
    let e = CallError::CpuBudget {
        backend: "hostile-spin".into(),
        budget,
    };
    assert_eq!(
        e.to_string(),
        "driver of backend `hostile-spin` used more than its CPU budget of 4s in one call"
    );
    still_serves(&hostile).await;
    w.local_round("after-spin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_never_returns_times_out_without_blocking_others() {
    let w = World::new().await;
    let timeout = Duration::from_secs(4);
    let hostile = w
        .hostile(
            "hostile-sleep",
            vec![],
            vec![],
            Limits {
                call_timeout: timeout,
                ..Limits::default()
            },
        )
        .await;
    let sleeper = hostile.clone();
    let sleep = tokio::spawn(async move { sleeper.create(&volume("s", "sleep", &[])).await });
    for i in 0..3 {
        w.local_round(&format!("during-sleep-{i}")).await;
        still_serves(&hostile).await;
    }
    assert!(
        !sleep.is_finished(),
        "the sleeping call ended before the other calls were served"
    );
    match sleep.await.unwrap() {
        Err(e @ CallError::Timeout { .. }) => {
            assert_eq!(e.to_string(), "call to backend `hostile-sleep` timed out after 4s");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    still_serves(&hostile).await;
}

/// A call that reports advancing progress may outlast its CPU budget and wall-clock timeout:
/// they bound the time between advances. Once the reports stop, or when they do not advance, the
/// limits stop it as they stop any other call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_renews_the_limits_and_a_stall_is_still_stopped() {
    let w = World::new().await;
    let (budget, timeout) = (Duration::from_secs(1), Duration::from_secs(2));
    let hostile = w
        .hostile(
            "hostile-work",
            vec![],
            vec![],
            Limits {
                cpu_budget: budget,
                call_timeout: timeout,
                ..Limits::default()
            },
        )
        .await;
    // Each 100 ms slice reports one renewal's worth of bytes (64 MiB), of a total the volume's
    // size allows (the call's bound): a copy of 6 s × 640 MiB/s.
    let step = Limits::default().progress_bytes_per_renewal;
    let work = |labels: &[(&str, &str)]| {
        let mut spec = volume("w", "work", labels);
        spec.labels.push(("step".into(), step.to_string()));
        spec.size_bytes = 60 * step;
        let hostile = hostile.clone();
        async move { hostile.create(&spec).await }
    };

    // 4 s of guest CPU, and 4 s asleep in the host, each reporting every 100 ms: both finish.
    for spin in ["1", "0"] {
        let v = work(&[("secs", "4"), ("spin", spin)])
            .await
            .unwrap_or_else(|e| panic!("spin={spin}: {e}"));
        assert_eq!(v.backend_ref, "DONE: worked 4 s");
    }
    // Reports stop after 1 s: the budget (spinning) or the timeout (sleeping) stops the call.
    match work(&[("secs", "6"), ("spin", "1"), ("report_for", "1")]).await {
        Err(CallError::CpuBudget { budget: b, .. }) => assert_eq!(b, budget),
        other => panic!("a spin that stopped reporting: expected the CPU budget, got {other:?}"),
    }
    match work(&[("secs", "6"), ("spin", "0"), ("report_for", "1")]).await {
        Err(CallError::Timeout { after, .. }) => assert_eq!(after, timeout),
        other => panic!("a sleep that stopped reporting: expected the timeout, got {other:?}"),
    }
    // Reports that never advance renew nothing (`step` 0 comes first and wins).
    match work(&[("step", "0"), ("secs", "6"), ("spin", "1")]).await {
        Err(CallError::CpuBudget { .. }) => {}
        other => panic!("progress that does not advance: expected the CPU budget, got {other:?}"),
    }
    still_serves(&hostile).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_reported_with_its_message() {
    let w = World::new().await;
    let hostile = w.hostile("hostile-panic", vec![], vec![], Limits::default()).await;
    for _ in 0..2 {
        let reason = trapped(hostile.create(&volume("p", "panic", &[])).await);
        assert!(
            reason.starts_with("wasm trap: wasm `unreachable` instruction executed"),
            "{reason}"
        );
        assert!(
            reason.contains("hostile driver panics on purpose"),
            "the panic message is quoted: {reason}"
        );
        still_serves(&hostile).await;
    }
    w.local_round("after-panic").await;
}

// ---- logs and return values ------------------------------------------------------------------

/// Bytes of driver log messages and `log capped` warnings seen per backend.
#[derive(Default, Clone, Copy, Debug)]
struct LogCount {
    bytes: usize,
    capped_warnings: usize,
}

fn log_counts() -> &'static Mutex<HashMap<String, LogCount>> {
    static COUNTS: OnceLock<Mutex<HashMap<String, LogCount>>> = OnceLock::new();
    COUNTS.get_or_init(Default::default)
}

/// A `tracing` layer that counts what the runtime logs for drivers (target `driver`).
struct CountDriverLogs;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountDriverLogs {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "driver" {
            return;
        }
        // A driver's own output has a `stream` field (`log`, `stdout`, `stderr`); the runtime's
        // other `driver` events (`driver call` traces, the `log capped` warning) do not.
        let output = event.metadata().fields().field("stream").is_some();
        #[derive(Default)]
        struct Fields {
            backend: String,
            message: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "backend" {
                    self.backend = value.to_string();
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "message" => self.message = format!("{value:?}"),
                    "backend" => self.backend = format!("{value:?}"),
                    _ => {}
                }
            }
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let mut counts = log_counts().lock().unwrap();
        let c = counts.entry(f.backend).or_default();
        if output {
            c.bytes += f.message.len();
        } else if f.message.starts_with("log capped") {
            c.capped_warnings += 1;
        }
    }
}

fn capture_logs() {
    use tracing_subscriber::layer::SubscriberExt;
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(CountDriverLogs));
    });
}

fn logged(backend: &str) -> LogCount {
    log_counts().lock().unwrap().get(backend).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_is_capped_per_call() {
    let w = World::new().await;
    let cap = 64 << 10;
    let hostile = w
        .hostile(
            "hostile-flood",
            vec![],
            vec![],
            Limits {
                log_bytes_per_call: cap,
                ..Limits::default()
            },
        )
        .await;
    // 15 MiB through the log import, stdout and stderr in one call.
    let v = hostile
        .create(&volume("f", "log-flood", &[("bytes", "15728640")]))
        .await
        .expect("a flood is not an error");
    assert_eq!(v.backend_ref, "logged 15728640 bytes");
    let after_one = logged("hostile-flood");
    assert!(
        after_one.bytes <= cap,
        "{} bytes of driver logs passed a cap of {cap}",
        after_one.bytes
    );
    assert!(
        after_one.bytes >= cap - 2048,
        "the cap, not less, is logged: {after_one:?}"
    );
    assert_eq!(after_one.capped_warnings, 1, "one `log capped` warning per call");
    // The cap is per call.
    hostile
        .create(&volume("f", "log-flood", &[("bytes", "15728640")]))
        .await
        .unwrap();
    let after_two = logged("hostile-flood");
    assert!(
        after_two.bytes <= 2 * cap && after_two.capped_warnings == 2,
        "{after_two:?}"
    );

    // One message larger than what the host copies out of a guest in one value.
    let reason = trapped(hostile.create(&volume("f", "log-huge", &[])).await);
    assert_eq!(
        reason,
        "the driver handed the host more than 67108864 bytes in one value (a return value or the arguments of one host call)"
    );
    still_serves(&hostile).await;
    w.local_round("after-flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_return_value_is_refused() {
    let w = World::new().await;
    let hostile = w.hostile("hostile-huge", vec![], vec![], Limits::default()).await;
    let reason = trapped(hostile.create(&volume("h", "huge-return", &[])).await);
    assert!(
        reason.starts_with("the driver handed the host more than 67108864 bytes in one value"),
        "{reason}"
    );
    // Just under the limit is fine.
    let v = hostile
        .create(&volume("h", "huge-return", &[("bytes", "1048576")]))
        .await
        .unwrap();
    assert_eq!(v.backend_ref.len(), 1 << 20);
    still_serves(&hostile).await;

    // 100 000 volumes whose strings alias one 1 MiB buffer: ~3 MiB in the guest, 100 GiB if the
    // host copied them. Refused by the same limit.
    let amplify = w
        .hostile(
            "hostile-amplify",
            vec![("amplify", "100000")],
            vec![],
            Limits {
                memory_bytes: 64 << 20,
                ..Limits::default()
            },
        )
        .await;
    match amplify.list_volumes().await {
        Err(CallError::Trapped { reason, .. }) => {
            assert!(
                reason.starts_with("the driver handed the host more than 67108864 bytes"),
                "{reason}"
            )
        }
        Ok(v) => panic!("not contained: {} volumes", v.len()),
        Err(e) => panic!("expected a trap, got {e}"),
    }
    still_serves(&amplify).await;
    w.local_round("after-huge").await;
}

// ---- progress, descriptors, pool reports, the pool's file system ------------------------------

/// CPU time this test process has used, all threads (the runtime runs in it): utime + stime of
/// /proc/self/stat, in the kernel's fixed 100 ticks a second.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the `(comm)`, which may hold spaces: state is the first, utime the 12th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|x| x.parse().unwrap())
        .collect();
    Duration::from_millis((f[0] + f[1]) * 10)
}

/// Open file descriptors of this test process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Latencies of benign local-backend rounds (create, stats, attach, delete).
#[derive(Debug)]
struct Latency {
    rounds: usize,
    median: Duration,
    max: Duration,
}

fn latency(mut samples: Vec<Duration>) -> Latency {
    assert!(!samples.is_empty(), "no benign round was measured");
    samples.sort();
    Latency {
        rounds: samples.len(),
        median: samples[samples.len() / 2],
        max: *samples.last().unwrap(),
    }
}

/// `rounds` benign rounds of the local backend, each timed.
async fn benign_rounds(w: &World, tag: &str, rounds: usize) -> Latency {
    let mut samples = Vec::new();
    for i in 0..rounds {
        let t = std::time::Instant::now();
        w.local_round(&format!("{tag}-{i}")).await;
        samples.push(t.elapsed());
    }
    latency(samples)
}

/// Run `attack` in the background and benign local rounds until it ends (or `limit` passes: then
/// the test fails, the attack still running). Returns the attack's result, how long it ran,
/// the CPU the process used meanwhile and the benign rounds' latency.
async fn during<T: Send + 'static>(
    w: &World,
    tag: &str,
    limit: Duration,
    attack: impl std::future::Future<Output = T> + Send + 'static,
) -> (T, Duration, Duration, Latency) {
    let (cpu0, t0) = (process_cpu(), std::time::Instant::now());
    let mut task = tokio::spawn(attack);
    let mut samples = Vec::new();
    let out = loop {
        assert!(
            t0.elapsed() < limit,
            "{tag}: the attack still runs after {:?}",
            t0.elapsed()
        );
        let t = std::time::Instant::now();
        w.local_round(&format!("{tag}-{}", samples.len())).await;
        samples.push(t.elapsed());
        // Finish promptly once the attack ends, whatever the local round's pace.
        if let Ok(out) = tokio::time::timeout(Duration::from_millis(50), &mut task).await {
            break out.unwrap();
        }
    };
    (out, t0.elapsed(), process_cpu() - cpu0, latency(samples))
}

/// A driver that reports an ever-growing `done` in a loop, with a total of u64::MAX, gets no
/// more renewals than the bytes the call can move pay for, and none past the per-call ceiling:
/// it is stopped within a small multiple of its CPU budget while the local backend keeps its
/// normal latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_loop_is_stopped_within_its_budget_while_others_serve() {
    let w = World::new().await;
    let budget = Duration::from_secs(2);
    let hostile = w
        .hostile(
            "hostile-progress",
            vec![],
            vec![],
            Limits {
                cpu_budget: budget,
                ..Limits::default()
            },
        )
        .await;
    let baseline = benign_rounds(&w, "before-progress", 10).await;
    println!("benign latency before the attack: {baseline:?}");

    // On a 1 MiB volume: u64::MAX counts as 1 MiB, less than one renewal's 64 MiB.
    let attacker = hostile.clone();
    let (r, took, cpu, lat) = during(&w, "progress-loop", 3 * budget, async move {
        attacker.create(&volume("p", "progress-loop", &[])).await
    })
    .await;
    println!(
        "progress-loop (total u64::MAX, 1 MiB volume): stopped after {took:?}, {cpu:?} of CPU; benign latency meanwhile {lat:?}"
    );
    match r {
        Err(CallError::CpuBudget { budget: b, .. }) => assert_eq!(b, budget),
        other => panic!("expected the CPU budget to stop the progress loop, got {other:?}"),
    }
    assert!(
        took < 3 * budget,
        "stopped after {took:?}, more than 3 × the budget of {budget:?}"
    );
    assert!(
        lat.rounds >= 3,
        "the local backend answered only {} rounds during the attack",
        lat.rounds
    );
    assert!(
        lat.max < Duration::from_secs(2) && lat.median < baseline.max.max(Duration::from_millis(50)) * 10,
        "benign calls slowed down: {lat:?} (before: {baseline:?})"
    );

    // A later report naming another total renews nothing, however large the volume.
    let attacker = hostile.clone();
    let (r, took, cpu, lat) = during(&w, "progress-total", 3 * budget, async move {
        let mut spec = volume("p", "progress-loop", &[("change_total", "1")]);
        spec.size_bytes = 1 << 40;
        attacker.create(&spec).await
    })
    .await;
    println!(
        "progress-loop (a new total each report, 1 TiB volume): stopped after {took:?}, {cpu:?} of CPU; benign latency {lat:?}"
    );
    assert!(
        matches!(r, Err(CallError::CpuBudget { .. })),
        "expected the CPU budget, got {r:?}"
    );

    // A total the volume allows (1 TiB: 16 384 renewals' worth), reported in a tight loop: the
    // renewals are spent at once, then the budget stops it.
    let attacker = hostile.clone();
    let (r, took, cpu, lat) = during(&w, "progress-1tib", 3 * budget, async move {
        let mut spec = volume("p", "progress-loop", &[("total", &(1u64 << 40).to_string())]);
        spec.size_bytes = 1 << 40;
        attacker.create(&spec).await
    })
    .await;
    println!("progress-loop (1 TiB of a 1 TiB volume): stopped after {took:?}, {cpu:?} of CPU; benign latency {lat:?}");
    assert!(
        matches!(r, Err(CallError::CpuBudget { .. })),
        "expected the CPU budget, got {r:?}"
    );
    assert!(took < 3 * budget, "stopped after {took:?}");

    // The same total paced to renew just in time (64 MiB every 100 ms of spinning) ends at the
    // per-call ceiling.
    let ceiling = Duration::from_secs(3);
    let capped = w
        .hostile(
            "hostile-ceiling",
            vec![],
            vec![],
            Limits {
                cpu_budget: budget,
                max_call: ceiling,
                ..Limits::default()
            },
        )
        .await;
    let step = Limits::default().progress_bytes_per_renewal.to_string();
    let (r, took, cpu, lat) = during(&w, "progress-ceiling", 3 * ceiling, async move {
        let mut spec = volume("p", "work", &[("secs", "3600"), ("spin", "1"), ("step", &step)]);
        spec.size_bytes = 1 << 40;
        capped.create(&spec).await
    })
    .await;
    println!(
        "paced progress (1 TiB volume, ceiling {ceiling:?}): stopped after {took:?}, {cpu:?} of CPU; benign latency {lat:?}"
    );
    match r {
        Err(CallError::Timeout { after, .. }) => assert_eq!(after, ceiling, "the ceiling, not the timeout, stops it"),
        other => panic!("expected the per-call ceiling to stop the paced reports, got {other:?}"),
    }
    assert!(
        took >= ceiling && took < ceiling + Duration::from_secs(1),
        "stopped after {took:?}"
    );
    assert_eq!(
        Limits::default().max_call,
        Duration::from_secs(2 * 3600),
        "the default ceiling is 2 h"
    );
    still_serves(&hostile).await;
    w.local_round("after-progress").await;
}

/// A driver that opens files in a loop and holds them is stopped at the backend's limit on open
/// resources: the process's descriptors stay bounded, the instance's are released, and the
/// other backends keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holding_open_files_is_stopped_at_the_resource_cap() {
    let w = World::new().await;
    let cap = 256;
    let hostile = w
        .hostile(
            "hostile-fds",
            vec![],
            vec![],
            Limits {
                max_open_resources: cap,
                ..Limits::default()
            },
        )
        .await;
    // Below the cap, files open as usual.
    let v = hostile
        .create(&volume("f", "open-files", &[("count", "100")]))
        .await
        .expect("100 open files");
    assert_eq!(v.backend_ref, "DONE: holds 100 open files");

    let before = open_fds();
    let peak = Arc::new(AtomicUsize::new(before));
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (peak, watching) = (peak.clone(), watching.clone());
        std::thread::spawn(move || {
            while watching.load(Ordering::SeqCst) {
                peak.fetch_max(open_fds(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let attacker = hostile.clone();
    let (r, took, _, lat) = during(&w, "open-files", Duration::from_secs(60), async move {
        attacker.create(&volume("f", "open-files", &[])).await
    })
    .await;
    watching.store(false, Ordering::SeqCst);
    watcher.join().unwrap();
    let (peak, after) = (peak.load(Ordering::SeqCst), open_fds());
    println!(
        "open-files (1 000 000 asked, cap {cap}): stopped after {took:?}; fds before {before}, peak {peak}, after {after}; benign latency {lat:?}"
    );
    let reason = trapped(r);
    assert!(
        reason.starts_with(&format!("the driver holds more than {cap} open resources at once")),
        "{reason}"
    );
    assert!(
        peak <= before + cap + 64,
        "the process held {peak} descriptors (before: {before}, cap {cap})"
    );
    assert!(
        after <= before + 8,
        "the trapped instance's descriptors were not released: {after} open, {before} before"
    );
    still_serves(&hostile).await;
    w.local_round("after-fds").await;
    // The default is large enough for real drivers and still bounded.
    assert_eq!(Limits::default().max_open_resources, 1024);
}

/// A pool report over the cap (200 000 pools with 120-character names: 24 MB, under the transfer
/// limit), or with a name that is too long, empty, has a `/` or comes twice, is refused whole,
/// naming the backend, the field and the limit; a report within the limits is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_flood_is_refused_whole() {
    let w = World::new().await;
    let flood = w
        .hostile(
            "hostile-pools",
            vec![("pool_flood", "200000")],
            vec![],
            Limits::default(),
        )
        .await;
    let flooder = flood.clone();
    let (r, took, cpu, lat) = during(&w, "pool-flood", Duration::from_secs(30), async move {
        flooder.pools().await
    })
    .await;
    println!("pool flood (200 000 pools): refused after {took:?}, {cpu:?} of CPU; benign latency meanwhile {lat:?}");
    match r {
        Err(CallError::BadReturn(e)) => {
            assert_eq!(
                e.to_string(),
                "backend `hostile-pools` returned a bad pools: the report names 200000 pools; the limit is 256 per report"
            );
        }
        Ok(p) => panic!("a report of {} pools was taken", p.len()),
        Err(e) => panic!("expected the report to be refused, got {e}"),
    }
    assert!(took < Duration::from_secs(10), "refusing took {took:?}");

    let at_cap = w
        .hostile(
            "hostile-pools-256",
            vec![("pool_flood", "256")],
            vec![],
            Limits::default(),
        )
        .await;
    assert_eq!(at_cap.pools().await.expect("256 pools are within the limit").len(), 256);

    let long = w
        .hostile(
            "hostile-pool-name",
            vec![("pool_flood", "3"), ("pool_name_bytes", "129")],
            vec![],
            Limits::default(),
        )
        .await;
    match long.pools().await {
        Err(CallError::BadReturn(e)) => {
            assert_eq!(
                (e.backend.as_str(), e.field.as_str()),
                ("hostile-pool-name", "pools[0].name")
            );
            assert!(e.reason.ends_with("is 129 bytes long; a pool name has 1 to 128"), "{e}");
        }
        other => panic!("a 129-byte pool name was taken: {other:?}"),
    }
    // The same checks, on reports made here (what a driver could return).
    let pool = |name: &str| elara_runtime::Pool {
        name: name.into(),
        total: elara_runtime::Capacity::Unknown,
        free: elara_runtime::Capacity::Unknown,
        provisioned_bytes: 0,
        reserved_percentage: 0,
        thin_provisioning: true,
        thick_provisioning: false,
        max_over_subscription_ratio: "1.0".into(),
        capabilities: vec![],
    };
    for (pools, field, why) in [
        (vec![pool("")], "pools[0].name", "a pool name has 1 to 128"),
        (
            vec![pool("a"), pool("../../backends/x")],
            "pools[1].name",
            "contains '/'",
        ),
        (vec![pool("a\nb")], "pools[0].name", "no control characters"),
        (vec![pool("same"), pool("same")], "pools[1].name", "named twice"),
    ] {
        let e = elara_runtime::check_pools("b", &pools, 256).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.reason.contains(why), "{e}");
    }
    assert!(elara_runtime::check_pools("b", &[pool("host@lvm#lvm"), pool("default")], 256).is_ok());
    // The refusal left the instance in service.
    let v = flood
        .create(&volume("benign", "benign", &[]))
        .await
        .expect("a benign call after the refused report");
    assert_eq!(v.backend_ref, "benign benign");
    w.local_round("after-pools").await;
}

/// A pool dir has no size budget of its own (see SECURITY.md): a driver can write until its file
/// system is full. On a file system of its own (here an 8 MiB tmpfs) that stops the driver with
/// ENOSPC and nothing else: the local backend, elsewhere, keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_a_pool_on_its_own_file_system_hurts_only_that_pool() {
    if !elara_tests::require_root() {
        return;
    }
    let w = World::new().await;
    let pool = w.dir.path().join("hostile-fill-pool");
    std::fs::create_dir_all(&pool).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m,mode=0700", "elara-test-fill"])
        .arg(&pool)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(pool.clone());
    let hostile = w.hostile("hostile-fill", vec![], vec![], Limits::default()).await;
    let attacker = hostile.clone();
    let (r, took, _, lat) = during(&w, "fill", Duration::from_secs(60), async move {
        attacker.create(&volume("f", "fill", &[])).await
    })
    .await;
    println!("fill (1 TiB asked, 8 MiB file system): stopped after {took:?}; benign latency {lat:?}");
    match r {
        // WASI reports the ENOSPC of a stream write as a plain I/O error.
        Err(CallError::Driver(DriverError::Backend(msg))) => {
            let written: u64 = msg
                .strip_prefix("fill: writing /pool/fill after ")
                .and_then(|m| m.split_once(' '))
                .and_then(|(n, _)| n.parse().ok())
                .unwrap_or_else(|| panic!("{msg}"));
            assert!(
                written <= 8 << 20,
                "{written} bytes written to an 8 MiB file system: {msg}"
            );
        }
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    std::fs::remove_file(pool.join("fill")).unwrap();
    still_serves(&hostile).await;
    w.local_round("after-fill").await;
}
