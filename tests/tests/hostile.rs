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
        let hostile_driver = rt.load_driver(&elara_tests::built_component("test-drivers", "hostile")).await.expect("hostile loads");
        let local_driver = rt.load_driver(&elara_tests::built_component("drivers", "local")).await.expect("local loads");
        let local = rt
            .open_backend(&local_driver, spec("local", &dir.path().join("local-pool"), vec![], vec![], Limits::default()))
            .await
            .expect("local backend");
        World { rt, hostile_driver, local, dir }
    }

    /// The outside world a hostile driver must not reach: `<dir>/outside/secret.txt`.
    fn outside(&self) -> PathBuf {
        let outside = self.dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), "top secret").unwrap();
        outside
    }

    async fn hostile(&self, name: &str, config: Vec<(&str, &str)>, grants: Vec<HostGrant>, limits: Limits) -> Backend {
        let config = config.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
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
    BackendSpec { name: name.into(), pool_dir: pool.to_path_buf(), config, grants, limits }
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
    NodeInfo { name: "test-node".into(), connector: vec![] }
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
    let v = backend.create(&volume("benign", "benign", &[])).await.expect("a benign call after the attack");
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
    for (target, link) in [(abs("secret.txt"), "/pool/evil-abs"), ("../outside/secret.txt".to_string(), "/pool/evil-rel")] {
        let msg = refused(&hostile, "symlink", &[("target", &target), ("link", link)]).await;
        assert!(msg.starts_with(&format!("symlink: symlink {link} -> {target}: "))
            || msg.starts_with(&format!("symlink: reading {link} -> {target}: ")), "{msg}");
        assert!(!msg.contains("top secret"), "{msg}");
    }
    // The host's own file power (`clone-file`) is confined the same way, with `invalid` naming
    // the field.
    std::fs::write(pool.join("inside.img"), b"inside").unwrap();
    for (src, dst, want) in [
        ("../outside/secret.txt", "copy", "invalid src: `../outside/secret.txt`: `..` is not allowed"),
        ("/etc/passwd", "copy", "invalid src: `/etc/passwd`: absolute paths are not allowed"),
        ("link-file", "copy", "invalid src: `link-file`"),
        ("inside.img", "../outside/copied", "invalid dst: `../outside/copied`: `..` is not allowed"),
        ("inside.img", "link-dir/copied", "dst"),
    ] {
        let msg = refused(&hostile, "clone-file", &[("src", src), ("dst", dst)]).await;
        assert!(msg.contains(want), "clone-file {src} {dst}: {msg}");
    }

    // Nothing outside changed.
    let mut names: Vec<String> =
        std::fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["secret.txt"], "files appeared outside the pool");
    assert_eq!(std::fs::read_to_string(outside.join("secret.txt")).unwrap(), "top secret");
    assert!(!w.dir.path().join("pwned").exists() && !Path::new("/tmp/elara-hostile-pwned").exists());

    // Inside the pool everything works.
    let v = hostile.create(&volume("ok", "write", &[("path", "/pool/fine.txt")])).await.expect("write inside");
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
                    let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
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
    let grants = vec![format!("127.0.0.1:{a}").parse().unwrap(), format!("0:{b}").parse().unwrap()];
    let hostile = w.hostile("hostile-net", vec![], grants, Limits::default()).await;

    // The granted host works over HTTP and TCP (so the refusals below are the policy's doing).
    let v = hostile.create(&volume("ok", "http", &[("url", &format!("http://127.0.0.1:{a}/x"))])).await.unwrap();
    assert_eq!(v.backend_ref, format!("DONE: GET http://127.0.0.1:{a}/x: HTTP 200 \"ok\""));
    let v = hostile.create(&volume("ok", "tcp", &[("addr", &format!("127.0.0.1:{a}"))])).await.unwrap();
    assert_eq!(v.backend_ref, format!("DONE: TCP 127.0.0.1:{a} answered \"hi\\n\""));
    assert_eq!(granted.connections.load(Ordering::SeqCst), 2);

    let not_granted = "the host is not granted to this backend (grant it with --allow-host)";
    for url in [
        format!("http://127.0.0.1:{b}/"),   // granted host, other port
        format!("http://localhost:{a}/"),   // the granted address under a name that is not granted
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "https://example.com/".to_string(),
    ] {
        let msg = refused(&hostile, "http", &[("url", &url)]).await;
        assert_eq!(msg, format!("http: request to {url} denied by the host: {not_granted}"));
    }
    let url = format!("http://0:{b}/");
    let msg = refused(&hostile, "http", &[("url", &url)]).await;
    assert!(msg.contains("resolves only to addresses no grant may reach"), "{msg}");

    for addr in [format!("127.0.0.1:{b}"), format!("0.0.0.0:{b}"), format!("0:{b}"), format!("[::1]:{a}")] {
        let msg = refused(&hostile, "tcp", &[("addr", &addr)]).await;
        assert!(msg.starts_with(&format!("tcp: connect {addr}: ")), "{msg}");
    }
    assert_eq!(other.connections.load(Ordering::SeqCst), 0, "a denied connection reached the listener");

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
    assert!(reason.starts_with("memory limit of 268435456 bytes exceeded (the driver tried to grow its memory to "), "{reason}");
    still_serves(&hostile).await;
    // Again, with a smaller cap of its own.
    let small = w.hostile("hostile-mem-small", vec![], vec![], Limits { memory_bytes: 32 << 20, ..Limits::default() }).await;
    let reason = trapped(small.create(&volume("a", "alloc", &[("bytes", "134217728")])).await);
    assert!(reason.starts_with("memory limit of 33554432 bytes exceeded"), "{reason}");
    still_serves(&small).await;
    w.local_round("after-mem").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_while_other_backends_serve() {
    let w = World::new().await;
    let budget = Duration::from_secs(4);
    let hostile = w.hostile("hostile-spin", vec![], vec![], Limits { cpu_budget: budget, ..Limits::default() }).await;
    let spinner = hostile.clone();
    let spin = tokio::spawn(async move { spinner.create(&volume("s", "spin", &[])).await });

    // While it spins: the local backend and the hostile backend itself (another instance) answer.
    for i in 0..5 {
        w.local_round(&format!("during-spin-{i}")).await;
    }
    still_serves(&hostile).await;
    assert!(!spin.is_finished(), "the loop ended before the other calls were served: not concurrent");

    match spin.await.unwrap() {
        Err(CallError::CpuBudget { backend, budget: b }) => {
            assert_eq!((backend.as_str(), b), ("hostile-spin", budget));
        }
        other => panic!("expected the CPU budget to stop the loop, got {other:?}"),
    }
    let e = CallError::CpuBudget { backend: "hostile-spin".into(), budget };
    assert_eq!(e.to_string(), "driver of backend `hostile-spin` used more than its CPU budget of 4s in one call");
    still_serves(&hostile).await;
    w.local_round("after-spin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_never_returns_times_out_without_blocking_others() {
    let w = World::new().await;
    let timeout = Duration::from_secs(4);
    let hostile = w.hostile("hostile-sleep", vec![], vec![], Limits { call_timeout: timeout, ..Limits::default() }).await;
    let sleeper = hostile.clone();
    let sleep = tokio::spawn(async move { sleeper.create(&volume("s", "sleep", &[])).await });
    for i in 0..3 {
        w.local_round(&format!("during-sleep-{i}")).await;
        still_serves(&hostile).await;
    }
    assert!(!sleep.is_finished(), "the sleeping call ended before the other calls were served");
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
    let hostile = w.hostile("hostile-work", vec![], vec![], Limits { cpu_budget: budget, call_timeout: timeout, ..Limits::default() }).await;
    let work = |labels: &[(&str, &str)]| {
        let (hostile, spec) = (hostile.clone(), volume("w", "work", labels));
        async move { hostile.create(&spec).await }
    };

    // 4 s of guest CPU, and 4 s asleep in the host, each reporting every 100 ms: both finish.
    for spin in ["1", "0"] {
        let v = work(&[("secs", "4"), ("spin", spin)]).await.unwrap_or_else(|e| panic!("spin={spin}: {e}"));
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
    // Reports that never advance renew nothing.
    match work(&[("secs", "6"), ("spin", "1"), ("step", "0")]).await {
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
        assert!(reason.starts_with("wasm trap: wasm `unreachable` instruction executed"), "{reason}");
        assert!(reason.contains("hostile driver panics on purpose"), "the panic message is quoted: {reason}");
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
    let hostile = w.hostile("hostile-flood", vec![], vec![], Limits { log_bytes_per_call: cap, ..Limits::default() }).await;
    // 15 MiB through the log import, stdout and stderr in one call.
    let v = hostile.create(&volume("f", "log-flood", &[("bytes", "15728640")])).await.expect("a flood is not an error");
    assert_eq!(v.backend_ref, "logged 15728640 bytes");
    let after_one = logged("hostile-flood");
    assert!(after_one.bytes <= cap, "{} bytes of driver logs passed a cap of {cap}", after_one.bytes);
    assert!(after_one.bytes >= cap - 2048, "the cap, not less, is logged: {after_one:?}");
    assert_eq!(after_one.capped_warnings, 1, "one `log capped` warning per call");
    // The cap is per call.
    hostile.create(&volume("f", "log-flood", &[("bytes", "15728640")])).await.unwrap();
    let after_two = logged("hostile-flood");
    assert!(after_two.bytes <= 2 * cap && after_two.capped_warnings == 2, "{after_two:?}");

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
    assert!(reason.starts_with("the driver handed the host more than 67108864 bytes in one value"), "{reason}");
    // Just under the limit is fine.
    let v = hostile.create(&volume("h", "huge-return", &[("bytes", "1048576")])).await.unwrap();
    assert_eq!(v.backend_ref.len(), 1 << 20);
    still_serves(&hostile).await;

    // 100 000 volumes whose strings alias one 1 MiB buffer: ~3 MiB in the guest, 100 GiB if the
    // host copied them. Refused by the same limit.
    let amplify = w
        .hostile("hostile-amplify", vec![("amplify", "100000")], vec![], Limits { memory_bytes: 64 << 20, ..Limits::default() })
        .await;
    match amplify.list_volumes().await {
        Err(CallError::Trapped { reason, .. }) => {
            assert!(reason.starts_with("the driver handed the host more than 67108864 bytes"), "{reason}")
        }
        Ok(v) => panic!("not contained: {} volumes", v.len()),
        Err(e) => panic!("expected a trap, got {e}"),
    }
    still_serves(&amplify).await;
    w.local_round("after-huge").await;
}
