//! Harness for Elara's integration tests: real `elara` daemons on a real store (the embedded redb
//! file or the etcd that `scripts/test.sh` starts), driven through the real CLI and REST socket.
//!
//! Every store-backed test runs once per [`StoreKind`]; etcd runs get their own key namespace so
//! tests can share one etcd in parallel.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

pub mod cinder;
pub mod docker;
pub mod nfs;
pub mod s3;
pub mod secrets;

/// The two metadata stores every store-backed test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Embedded,
    Etcd,
}

pub const STORES: [StoreKind; 2] = [StoreKind::Embedded, StoreKind::Etcd];

/// The workspace root (tests/ is one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `target/<dir>/<name>.wasm` (`dir`: `drivers` or `test-drivers`), after building every driver
/// and test driver from source once per test binary (scripts/build-drivers.sh; fast when warm).
pub fn built_component(dir: &str, name: &str) -> Vec<u8> {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/build-drivers.sh"))
            .output()
            .expect("running scripts/build-drivers.sh");
        assert!(
            out.status.success(),
            "scripts/build-drivers.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let path = repo_root().join("target").join(dir).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// The `elara` binary under test: $ELARA_BIN, else target/debug/elara (scripts/test.sh builds it).
pub fn elara_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ELARA_BIN") {
        return PathBuf::from(p);
    }
    let p = target_dir().join("debug/elara");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p elara` (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Poll `cond` every 50 ms until it holds (a readiness check), failing after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !cond()? {
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Built-in driver components: $ELARA_DRIVERS_DIR, else target/drivers (scripts/build-drivers.sh).
pub fn drivers_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("ELARA_DRIVERS_DIR") {
        return PathBuf::from(p);
    }
    let p = target_dir().join("drivers");
    assert!(
        p.join("local.wasm").exists(),
        "{} has no local.wasm: run scripts/build-drivers.sh",
        p.display()
    );
    p
}

/// etcd endpoint for tests: $ELARA_TEST_ETCD (scripts/test.sh starts etcd and sets it).
pub fn etcd_endpoint() -> String {
    std::env::var("ELARA_TEST_ETCD").unwrap_or_else(|_| {
        panic!("ELARA_TEST_ETCD is not set: start etcd with `scripts/services/etcd.sh start .work/etcd` (scripts/test.sh does)")
    })
}

/// The test etcd's TLS files and credentials, when it runs with TLS and auth
/// (`ETCD_TLS=1 scripts/services/etcd.sh` prints `ELARA_TEST_ETCD_CA`, `_CERT`, `_KEY`, `_USER`,
/// `_PASSWORD_FILE`); empty for a plain etcd.
pub fn etcd_security() -> elara_store::etcd::EtcdSecurity {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    elara_store::etcd::EtcdSecurity {
        ca: var("ELARA_TEST_ETCD_CA").map(Into::into),
        cert: var("ELARA_TEST_ETCD_CERT").map(Into::into),
        key: var("ELARA_TEST_ETCD_KEY").map(Into::into),
        user: var("ELARA_TEST_ETCD_USER"),
        password_file: var("ELARA_TEST_ETCD_PASSWORD_FILE").map(Into::into),
    }
}

/// The store URL of etcd namespace `namespace`: `etcds://USER@host:port/ns` when the test etcd
/// has TLS, `etcd://host:port/ns` otherwise.
pub fn etcd_store_url(namespace: &str) -> String {
    let security = etcd_security();
    let scheme = if security.ca.is_some() { "etcds" } else { "etcd" };
    let user = security.user.map(|u| format!("{u}@")).unwrap_or_default();
    format!("{scheme}://{user}{}/{namespace}", etcd_endpoint())
}

/// The daemon flags for the test etcd's TLS files and password file (the user is in the URL).
pub fn etcd_daemon_args() -> Vec<String> {
    let security = etcd_security();
    let mut args = vec![];
    for (flag, path) in [
        ("--store-ca", security.ca),
        ("--store-cert", security.cert),
        ("--store-key", security.key),
        ("--store-password-file", security.password_file),
    ] {
        if let Some(path) = path {
            args.push(flag.to_string());
            args.push(path.display().to_string());
        }
    }
    args
}

/// A raw etcd client on the test etcd (TLS and auth as the daemons get them), for benchmarks
/// and tools that bypass the store.
pub async fn etcd_raw_client() -> anyhow::Result<etcd_client::Client> {
    let (tls, auth) = etcd_security().load(etcd_security().ca.is_some(), None)?;
    let mut options = etcd_client::ConnectOptions::new();
    let scheme = match tls {
        Some(tls) => {
            let mut t = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(&tls.ca.pem));
            if let Some((cert, key)) = &tls.client {
                t = t.identity(etcd_client::Identity::from_pem(&cert.pem, &key.pem));
            }
            options = options.with_tls(t);
            "https"
        }
        None => "http",
    };
    if let Some(auth) = auth {
        let password_file = etcd_security().password_file.context("ELARA_TEST_ETCD_PASSWORD_FILE")?;
        let password = std::fs::read_to_string(password_file)?;
        options = options.with_user(auth.user, password.trim_end_matches(['\r', '\n']));
    }
    let urls: Vec<String> = etcd_endpoint().split(',').map(|e| format!("{scheme}://{e}")).collect();
    Ok(etcd_client::Client::connect(urls, Some(options)).await?)
}

/// A unique name for this test run (namespaces, volume names).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), uuid_ish())
}

fn uuid_ish() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:x}{:x}", t, N.fetch_add(1, Ordering::Relaxed))
}

/// How to start a daemon.
#[derive(Debug, Clone)]
pub struct DaemonOpts {
    pub store: StoreKind,
    /// The etcd namespace (shared by daemons of one cluster test).
    pub namespace: String,
    pub node: String,
    /// Fault injection (`ELARA_CRASH_AT`).
    pub crash_at: Option<String>,
    /// Docker plugin directory (None: disabled).
    pub plugin_dir: Option<PathBuf>,
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl DaemonOpts {
    pub fn new(store: StoreKind) -> Self {
        DaemonOpts {
            store,
            namespace: unique("ns"),
            node: "node1".into(),
            crash_at: None,
            plugin_dir: None,
            extra_args: vec![],
            env: vec![],
        }
    }
}

/// A running `elara daemon` with its own data dir and socket. Killed (SIGKILL) on drop; its mounts
/// and loop devices are torn down by the test's own cleanup through the CLI.
pub struct Daemon {
    pub opts: DaemonOpts,
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Start a daemon in a fresh directory and wait until it is ready.
    pub fn start(opts: DaemonOpts) -> anyhow::Result<Daemon> {
        let tmp = tempfile::Builder::new().prefix("elara-test-").tempdir_in(work_dir())?;
        let dir = tmp.path().to_path_buf();
        let mut d = Daemon {
            socket: dir.join("elara.sock"),
            opts,
            dir,
            child: None,
            _tmp: Some(tmp),
        };
        d.spawn()?;
        Ok(d)
    }

    /// Start a second daemon of a cluster: same store namespace, its own node name and directory.
    pub fn start_peer(&self, node: &str) -> anyhow::Result<Daemon> {
        let mut opts = self.opts.clone();
        opts.node = node.into();
        opts.crash_at = None;
        opts.plugin_dir = None;
        Daemon::start(opts)
    }

    pub fn store_url(&self) -> String {
        match self.opts.store {
            StoreKind::Embedded => self.dir.join("store.redb").display().to_string(),
            StoreKind::Etcd => etcd_store_url(&self.opts.namespace),
        }
    }

    /// The daemon's store, opened directly (with the test etcd's TLS and credentials). The
    /// daemon must be stopped for the embedded store.
    pub async fn open_store(&self) -> anyhow::Result<std::sync::Arc<dyn elara_store::Store>> {
        let security = match self.opts.store {
            StoreKind::Embedded => Default::default(),
            StoreKind::Etcd => etcd_security(),
        };
        Ok(elara_store::open_with(&self.store_url(), &security).await?)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))?;
        let mut cmd = Command::new(elara_bin());
        cmd.arg("-s").arg(&self.socket).arg("daemon");
        cmd.arg("--data-dir")
            .arg(&self.dir)
            .arg("--store")
            .arg(self.store_url())
            .arg("--node")
            .arg(&self.opts.node);
        if self.opts.store == StoreKind::Etcd {
            cmd.args(etcd_daemon_args());
        }
        cmd.arg("--drivers-dir").arg(drivers_dir());
        cmd.arg("--plugin-dir")
            .arg(self.opts.plugin_dir.clone().unwrap_or_else(|| "none".into()));
        cmd.arg("--node-ttl-secs").arg("3").arg("--pool-refresh-secs").arg("5");
        cmd.args(&self.opts.extra_args);
        cmd.env("ELARA_LOG", "info,elara=debug");
        // Errors in the log as their messages: a backtrace per error (CI sets RUST_BACKTRACE=1)
        // would push the message out of the log tail a failed start reports.
        cmd.env("RUST_BACKTRACE", "0");
        cmd.env_remove("ELARA_CRASH_AT");
        if let Some(c) = &self.opts.crash_at {
            cmd.env("ELARA_CRASH_AT", c);
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        self.child = Some(cmd.spawn().context("starting elara daemon")?);
        self.wait_ready(Duration::from_secs(120))
    }

    /// Readiness: `/v1/health` answers. Fails at once if the daemon exits.
    pub fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "elara daemon exited ({status}) before it was ready:\n{}",
                    self.log_tail()
                );
            }
            if self.socket.exists() && self.cli(&["node", "info"]).map(|o| o.status.success()).unwrap_or(false) {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("elara daemon not ready after {limit:?}:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Whether the daemon process has exited (e.g. at a crash point).
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()).is_some()
    }

    /// Wait for the daemon to die by itself (a crash point), bounded.
    pub fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while !self.exited() {
            if start.elapsed() > limit {
                bail!("daemon did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the daemon process, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restart after a kill (same data dir, store and node), without fault injection.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.opts.crash_at = None;
        self.spawn()
    }

    /// Run `elara -s SOCKET ARGS...`.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(elara_bin())
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()?)
    }

    /// Run the CLI and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = self.cli(args)?;
        if !o.status.success() {
            bail!(
                "`elara {}` failed: {}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&o.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Run the CLI expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = self.cli(args)?;
        if o.status.success() {
            bail!(
                "`elara {}` succeeded but should have failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&o.stderr).into_owned())
    }

    /// Wait (bounded) until no op is in flight: the reconciler settled everything after a restart.
    pub fn wait_ops_settled(&self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let ops = self.json(&["op", "list"])?;
            if ops.as_array().is_some_and(|a| a.is_empty()) {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("ops still in flight after {limit:?}: {ops}\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Run the CLI with `-o json` and parse the output.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        let out = self.ok(&full)?;
        serde_json::from_str(&out).with_context(|| format!("parsing output of `elara {}`: {out}", args.join(" ")))
    }

    /// The local backend's pool directory on this daemon.
    pub fn pool_dir(&self, backend: &str) -> PathBuf {
        self.dir.join("pools").join(backend)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // Leave no mount or loop device behind from this daemon's data dir.
        cleanup_host(&self.dir);
    }
}

/// Stop the daemon's attach helpers (they outlive it on purpose), unmount everything under `dir`
/// and detach loop devices backed by files under it.
pub fn cleanup_host(dir: &Path) {
    let d = dir.display().to_string();
    for pid in helpers_under(dir) {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    }
    for m in mounts_under(dir).into_iter().rev() {
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
    for (dev, backing) in loop_devices() {
        if backing.starts_with(&d) {
            let _ = Command::new("losetup").arg("-d").arg(&dev).status();
        }
    }
}

/// Pids of attach helpers (`qemu-storage-daemon`, `elara nfs-fuse`) serving volumes of the daemon
/// whose data dir is `dir`: their command lines name paths under it.
pub fn helpers_under(dir: &Path) -> Vec<u32> {
    let d = dir.display().to_string();
    let mut pids = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let helper = args.first().is_some_and(|a| a.ends_with("qemu-storage-daemon"))
            || args.get(1).is_some_and(|a| a == "nfs-fuse");
        if helper && args.iter().any(|a| a.contains(&d)) {
            pids.push(pid);
        }
    }
    pids
}

/// Lines in a file (0 while it does not exist yet): how far a container's append loop has come.
pub fn line_count(p: &Path) -> usize {
    std::fs::read_to_string(p).map(|t| t.lines().count()).unwrap_or(0)
}

/// Mountpoints at or below `dir`, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&d))
        .collect()
}

/// (device, backing file) of every bound loop device.
pub fn loop_devices() -> Vec<(String, String)> {
    let mut out = vec![];
    if let Ok(entries) = std::fs::read_dir("/sys/block") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with("loop") {
                continue;
            }
            if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
                out.push((
                    format!("/dev/{name}"),
                    b.trim().trim_end_matches(" (deleted)").to_string(),
                ));
            }
        }
    }
    out
}

/// Where test daemons keep their data: `<repo>/.work/tests` (on the same filesystem as the build).
pub fn work_dir() -> PathBuf {
    let p = repo_root().join(".work/tests");
    std::fs::create_dir_all(&p).expect("creating .work/tests");
    p
}

/// Skip a test unless run as root (loop devices and mounts need it), saying why.
pub fn require_root() -> bool {
    if nix_is_root() {
        return true;
    }
    eprintln!("SKIP: this test needs root (loop devices, mkfs, mount)");
    false
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A minimal async REST client over the daemon's unix socket (benchmarks use it to avoid
/// measuring process start-up).
pub mod rest {
    use std::path::PathBuf;

    use anyhow::Context;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;

    pub struct Conn {
        sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    }

    impl Conn {
        pub async fn open(socket: &PathBuf) -> anyhow::Result<Conn> {
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .context("connecting to the daemon")?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Conn { sender })
        }

        /// One request on this keep-alive connection; returns (status, body).
        pub async fn call(
            &mut self,
            method: &str,
            path: &str,
            body: Option<serde_json::Value>,
        ) -> anyhow::Result<(u16, Bytes)> {
            self.sender.ready().await?;
            let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
            let req = hyper::Request::builder()
                .method(method)
                .uri(format!("http://elara{path}"))
                .header("host", "elara")
                .header("content-type", "application/json")
                .body(Full::new(body))?;
            let resp = self.sender.send_request(req).await?;
            let status = resp.status().as_u16();
            Ok((status, resp.into_body().collect().await?.to_bytes()))
        }
    }
}
