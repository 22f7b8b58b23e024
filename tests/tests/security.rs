//! What a REST client, a local user and the network get (SECURITY.md's tests), against the real
//! daemon on both stores:
//!
//! * the daemon's files are private, and modes an earlier install left open are fixed at start;
//! * every volume mount is `nosuid,nodev` (read from `/proc/self/mountinfo`), and a setuid-root
//!   binary left on a volume does not run setuid from the host path (unless a volume type lifts
//!   it, which shows the check can fail);
//! * a REST bind path is refused outside the roots, through a symlink, at a mount point, over a
//!   non-empty directory, and the unmount removes only the mount Elara made;
//! * the TCP listener refuses a world-readable token file, a missing or wrong token and plain
//!   HTTP, and 2 000 idle connections neither exhaust it nor slow the unix socket or Docker;
//! * no secret (backend config, backup target, a mounted volume's connection) appears in any REST
//!   GET, the daemon log, a process argument or a world-readable file;
//! * a driver component far over the 2 MB default body limit installs over REST.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use elara_tests::s3::S3Server;
use elara_tests::secrets::{rest_get, walk};
use elara_tests::*;

/// What group or others may do with the daemon's files: nothing, except its sockets (0660 on
/// purpose: a group may be given the API) and the test harness's own log.
fn open_modes(d: &Daemon) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    walk(&d.dir)
        .into_iter()
        .filter(|(p, m)| {
            let mode = m.permissions().mode() & 0o7777;
            let allowed = if m.file_type().is_socket() { 0o060 } else { 0 };
            !m.file_type().is_symlink() && p != &d.dir.join("daemon.log") && mode & 0o077 & !allowed != 0
        })
        .map(|(p, m)| format!("{} {:04o}", p.display(), m.permissions().mode() & 0o7777))
        .collect()
}

fn daemon_files_are_private(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut d = Daemon::start(DaemonOpts::new(store))?;
    d.ok(&["volume", "create", "v1", "--size", "32M"])?;
    let mp = PathBuf::from(d.ok(&["volume", "mount", "v1"])?.trim());
    std::fs::write(mp.join("f"), b"data")?;
    d.ok(&["snapshot", "create", "v1", "--name", "s1"])?;
    let target = d.dir.join("backups");
    d.ok(&["backup", "target", "add", "t1", target.to_str().context("utf-8")?])?;
    d.ok(&["backup", "create", "v1", "--target", "t1"])?;
    let open = open_modes(&d);
    ensure!(
        open.is_empty(),
        "files and directories others can reach:\n{}",
        open.join("\n")
    );
    let mounts = d.dir.join("mounts");
    ensure!(
        std::fs::metadata(&mounts)?.permissions().mode() & 0o777 == 0o700,
        "the mounts dir is not 0700"
    );

    // Modes an earlier install left open are fixed at start, and said so.
    d.ok(&["volume", "unmount", "v1"])?;
    d.kill9();
    let mut loosened = vec![
        d.dir.clone(),
        d.dir.join("pools"),
        d.dir.join("mounts"),
        d.dir.join("run"),
    ];
    if store == StoreKind::Embedded {
        loosened.push(d.dir.join("store.redb"));
    }
    for p in &loosened {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    }
    d.restart()?;
    for p in &loosened {
        let mode = std::fs::metadata(p)?.permissions().mode() & 0o777;
        ensure!(mode & 0o077 == 0, "{} is still {mode:04o} after a restart", p.display());
    }
    let log = std::fs::read_to_string(d.dir.join("daemon.log"))?;
    ensure!(log.contains("lets other users in"), "the fix was not logged");
    Ok(())
}

#[test]
fn daemon_files_are_private_embedded() -> anyhow::Result<()> {
    daemon_files_are_private(StoreKind::Embedded)
}

#[test]
fn daemon_files_are_private_etcd() -> anyhow::Result<()> {
    daemon_files_are_private(StoreKind::Etcd)
}

/// The per-mount options of the top-most mount at `p`.
fn mount_options(p: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4).map(Path::new) == Some(p)).then(|| f[5].to_string())
    })
}

/// `id -u` copied onto the volume as a setuid-root binary, run as nobody through an fd of its
/// directory (the 0700 mounts dir would stop nobody by the path alone): the euid it prints.
fn setuid_run_as_nobody(dir: &Path) -> anyhow::Result<String> {
    let bin = dir.join("suid-id");
    std::fs::copy("/usr/bin/id", &bin)?;
    std::os::unix::fs::chown(&bin, Some(0), Some(0))?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o4755))?;
    let script = format!(
        "exec 3<'{}' && exec setpriv --reuid=65534 --regid=65534 --clear-groups /proc/self/fd/3/suid-id -u",
        dir.display()
    );
    let out = Command::new("bash").args(["-c", &script]).output()?;
    ensure!(
        out.status.success(),
        "running the setuid binary: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn mounts_are_nosuid_nodev(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let paths = tempfile::Builder::new().prefix("paths-").tempdir_in(work_dir())?;
    let root = paths.path().canonicalize()?;
    let mut opts = DaemonOpts::new(store);
    opts.extra_args = vec!["--mount-path-root".into(), root.display().to_string()];
    let d = Daemon::start(opts)?;
    d.ok(&["volume", "create", "plain", "--size", "32M"])?;
    let bind = root.join("plain");
    let mp = PathBuf::from(
        d.ok(&["volume", "mount", "plain", "--path", bind.to_str().context("utf-8")?])?
            .trim(),
    );
    for p in [&mp, &bind] {
        let o = mount_options(p).with_context(|| format!("{} is not mounted", p.display()))?;
        ensure!(
            o.split(',').any(|f| f == "nosuid") && o.split(',').any(|f| f == "nodev"),
            "{}: {o}",
            p.display()
        );
    }
    ensure!(
        setuid_run_as_nobody(&mp)? == "65534",
        "a setuid binary ran setuid from the host mount"
    );
    // Nobody cannot even reach the mount point by its path: the mounts dir is 0700.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "ls"])
        .arg(&mp)
        .output()?;
    ensure!(!out.status.success(), "nobody listed {}", mp.display());

    // A volume type lifts nosuid: the same binary then runs as root, so the check above can fail.
    d.ok(&["type", "create", "suid", "--spec", "mount:nosuid=false"])?;
    ensure!(
        d.fails(&["type", "create", "bad", "--spec", "mount:nodev=maybe"])?
            .contains("mount:nodev"),
        "a bad flag value was taken"
    );
    d.ok(&["volume", "create", "lifted", "--size", "32M", "--type", "suid"])?;
    let lifted = PathBuf::from(d.ok(&["volume", "mount", "lifted"])?.trim());
    let o = mount_options(&lifted).context("lifted is not mounted")?;
    ensure!(
        !o.split(',').any(|f| f == "nosuid") && o.split(',').any(|f| f == "nodev"),
        "lifted: {o}"
    );
    ensure!(
        setuid_run_as_nobody(&lifted)? == "0",
        "with nosuid lifted the binary should run as root"
    );
    d.ok(&["volume", "unmount", "lifted"])?;
    d.ok(&["volume", "unmount", "plain"])?;
    ensure!(mount_options(&bind).is_none(), "the bind path is still mounted");
    Ok(())
}

#[test]
fn mounts_are_nosuid_nodev_embedded() -> anyhow::Result<()> {
    mounts_are_nosuid_nodev(StoreKind::Embedded)
}

#[test]
fn mounts_are_nosuid_nodev_etcd() -> anyhow::Result<()> {
    mounts_are_nosuid_nodev(StoreKind::Etcd)
}

fn rest_bind_paths(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let paths = tempfile::Builder::new().prefix("paths-").tempdir_in(work_dir())?;
    let root = paths.path().canonicalize()?;
    let mut opts = DaemonOpts::new(store);
    opts.extra_args = vec!["--mount-path-root".into(), root.display().to_string()];
    let d = Daemon::start(opts)?;
    d.ok(&["volume", "create", "vb", "--size", "32M"])?;
    std::os::unix::fs::symlink("/etc", root.join("to-etc"))?;
    std::fs::create_dir(root.join("full"))?;
    std::fs::write(root.join("full/keep"), b"mine")?;
    std::fs::create_dir(root.join("mp"))?;
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "foreign",
            root.join("mp").to_str().context("utf-8")?,
        ],
    )?;
    let s = |p: &Path| p.display().to_string();
    let cases = [
        ("/etc".to_string(), "not under a mount path root"),
        ("/root/.ssh".to_string(), "not under a mount path root"),
        (format!("{}/../etc", root.display()), "`..`"),
        (s(&root.join("to-etc")), "symlink"),
        (s(&root.join("to-etc/x")), "symlink"),
        (s(&root.join("mp")), "mount point"),
        (s(&root.join("mp/inside")), "mount point"),
        (s(&root.join("full")), "not empty"),
        ("relative".to_string(), "absolute"),
    ];
    for (path, why) in &cases {
        let err = d.fails(&["volume", "mount", "vb", "--path", path])?;
        ensure!(
            err.contains("path") && err.contains(why),
            "{path}: expected {why:?}, got {err}"
        );
    }
    // Nothing was mounted (the only mount under the root is the foreign one), and no holder
    // was left behind.
    let under = mounts_under(&root);
    ensure!(
        under == vec![s(&root.join("mp"))],
        "mounts under the root after the refusals: {under:?}"
    );
    ensure!(
        mount_options(Path::new("/etc")).is_none(),
        "something is mounted at /etc"
    );
    let v = d.json(&["volume", "inspect", "vb"])?;
    ensure!(
        v["attachments"].as_array().is_none_or(|a| a.is_empty()),
        "a refused mount left an attachment: {v}"
    );
    ensure!(!Path::new("/etc/x").exists() && std::fs::read(root.join("full/keep"))? == b"mine");

    // A good path: mounted; a foreign mount stacked on it is not Elara's to unmount.
    let ok = root.join("ok");
    d.ok(&["volume", "mount", "vb", "--path", s(&ok).as_str(), "--holder", "h1"])?;
    d.ok(&["volume", "mount", "vb", "--holder", "h2"])?;
    run("mount", &["-t", "tmpfs", "-o", "size=1m", "over", s(&ok).as_str()])?;
    let err = d.fails(&["volume", "unmount", "vb", "--holder", "h1"])?;
    ensure!(err.contains("another mount"), "{err}");
    ensure!(
        mount_options(&ok).is_some(),
        "the foreign mount over the bind path was unmounted"
    );
    run("umount", &[s(&ok).as_str()])?;
    d.ok(&["volume", "unmount", "vb", "--holder", "h1"])?;
    ensure!(mount_options(&ok).is_none(), "Elara's bind mount is still there");
    d.ok(&["volume", "unmount", "vb", "--holder", "h2"])?;
    // The foreign tmpfs at mp is untouched.
    ensure!(
        mount_options(&root.join("mp")).is_some(),
        "the foreign mount at mp is gone"
    );
    run("umount", &[s(&root.join("mp")).as_str()])?;
    Ok(())
}

#[test]
fn rest_bind_paths_embedded() -> anyhow::Result<()> {
    rest_bind_paths(StoreKind::Embedded)
}

#[test]
fn rest_bind_paths_etcd() -> anyhow::Result<()> {
    rest_bind_paths(StoreKind::Etcd)
}

fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd).args(args).output()?;
    ensure!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A free TCP port on 127.0.0.1, below the ephemeral range (32768 up): a port from `bind(:0)`
/// can be taken as the source port of another test's connection before the daemon binds it
/// (the other TCP test opens 2 000 of them).
fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20000 + (std::process::id() % 400) as u16 * 16;
    for _ in 0..64 {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 4000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port found from {base}")
}

/// `curl` over TCP: the HTTP status, or None if no HTTP answer came.
fn curl_tcp(url: &str, ca: &Path, token: Option<&str>) -> anyhow::Result<Option<u16>> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(ca);
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = cmd.arg(url).output()?;
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    Ok((code != 0).then_some(code))
}

fn tcp_listener_holds(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let tls = tempfile::Builder::new().prefix("tls-").tempdir_in(work_dir())?;
    let (cert, key, token_file) = (
        tls.path().join("cert.pem"),
        tls.path().join("key.pem"),
        tls.path().join("token"),
    );
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            key.to_str().context("utf-8")?,
            "-out",
            cert.to_str().context("utf-8")?,
        ],
    )?;
    let token = "elara-test-token-0123456789abcdef";
    std::fs::write(&token_file, token)?;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644))?;
    let port = free_port()?;
    let plugins = tempfile::Builder::new().prefix("plugins-").tempdir_in(work_dir())?;
    let mut opts = DaemonOpts::new(store);
    opts.plugin_dir = Some(plugins.path().to_path_buf());
    opts.extra_args = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tls-cert",
        cert.to_str().context("utf-8")?,
        "--tls-key",
        key.to_str().context("utf-8")?,
        "--token-file",
        token_file.to_str().context("utf-8")?,
        "--tcp-max-connections",
        "64",
        "--tcp-header-timeout-secs",
        "2",
    ]
    .map(String::from)
    .to_vec();
    // A token file others can read: the daemon refuses it at start, naming it.
    let refused = Daemon::start(opts.clone())
        .err()
        .context("the daemon started with a 0644 token file")?;
    ensure!(format!("{refused:#}").contains("token_file"), "{refused:#}");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
    let d = Daemon::start(opts)?;

    let url = format!("https://127.0.0.1:{port}/v1/info");
    ensure!(
        curl_tcp(&url, &cert, Some(token))? == Some(200),
        "the right token was not served"
    );
    ensure!(
        curl_tcp(&url, &cert, None)? == Some(401),
        "no token was not refused with 401"
    );
    ensure!(
        curl_tcp(&url, &cert, Some("wrong-token-wrong-token-wrong"))? == Some(401),
        "a wrong token was not refused"
    );
    let plain = curl_tcp(&format!("http://127.0.0.1:{port}/v1/info"), &cert, Some(token))?;
    ensure!(plain.is_none_or(|c| c != 200), "plain HTTP was served: {plain:?}");

    // 2 000 idle connections (the test needs the descriptors for them).
    run(
        "prlimit",
        &["--pid", &std::process::id().to_string(), "--nofile=8192:8192"],
    )?;
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..2000 {
        let s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        idle.push(s);
    }
    let opened = started.elapsed();
    // Meanwhile the unix socket and the Docker plugin answer at once.
    let t = Instant::now();
    let (code, _) = rest_get(&d.socket, "/v1/health")?;
    let unix_latency = t.elapsed();
    ensure!(code == 200, "the unix socket answered {code} during the flood");
    let plugin_sock = plugins.path().join("elara.sock");
    let t = Instant::now();
    let out = Command::new("curl")
        .args(["-sS", "-m", "10", "-X", "POST", "--unix-socket"])
        .arg(&plugin_sock)
        .arg("http://elara/Plugin.Activate")
        .output()?;
    let docker_latency = t.elapsed();
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("VolumeDriver"),
        "Docker's socket did not answer: {out:?}"
    );
    // Every idle connection is closed by the server: at once beyond the cap, after the header
    // timeout within it.
    let t = Instant::now();
    let mut closed = 0;
    for s in &mut idle {
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            other => bail!("an idle connection was not closed: {other:?}"),
        }
    }
    let reaped = t.elapsed();
    drop(idle);
    ensure!(closed == 2000);
    ensure!(
        curl_tcp(&url, &cert, Some(token))? == Some(200),
        "TCP did not serve again after the flood"
    );
    // A client that sends half its headers and stalls is closed after the header timeout too.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port))?;
    slow.set_read_timeout(Some(Duration::from_secs(20)))?;
    slow.write_all(b"\x16\x03\x01")?; // the start of a TLS record, never finished
    let t = Instant::now();
    let mut b = [0u8; 1];
    ensure!(
        matches!(slow.read(&mut b), Ok(0) | Err(_)),
        "a stalled handshake was kept open"
    );
    let stalled = t.elapsed();
    eprintln!(
        "tcp flood: 2000 idle connections opened in {opened:?}; unix socket answered in {unix_latency:?}, \
         Docker's in {docker_latency:?}; all closed within {reaped:?} (header timeout 2 s); a stalled TLS handshake closed after {stalled:?}"
    );
    Ok(())
}

#[test]
fn tcp_listener_holds_embedded() -> anyhow::Result<()> {
    tcp_listener_holds(StoreKind::Embedded)
}

#[test]
fn tcp_listener_holds_etcd() -> anyhow::Result<()> {
    tcp_listener_holds(StoreKind::Etcd)
}

fn secrets_stay_inside(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let s3 = S3Server::from_env();
    let secret = s3.secret_key.clone();
    let d = Daemon::start(DaemonOpts::new(store))?;
    let tag = unique("sec").to_lowercase().replace('_', "-");
    // The backend's secret from a file, not argv.
    let config = d.dir.join("s3-backend.conf");
    std::fs::write(
        &config,
        format!(
            "endpoint={}\nregion={}\naccess_key={}\nsecret_key={}\nbucket_prefix={tag}\n",
            s3.endpoint, s3.region, s3.access_key, s3.secret_key
        ),
    )?;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))?;
    d.ok(&[
        "backend",
        "add",
        "s3a",
        "--driver",
        "s3",
        "--config-file",
        config.to_str().context("utf-8")?,
        "--allow-host",
        &s3.host_port(),
    ])?;
    std::fs::remove_file(&config)?;
    // The backup target's secret from the environment, not argv.
    let out = Command::new(elara_bin())
        .arg("-s")
        .arg(&d.socket)
        .args([
            "backup",
            "target",
            "add",
            "tg",
            &format!("s3://{tag}-backups/p"),
            "--endpoint",
            &s3.endpoint,
        ])
        .env("ELARA_BACKUP_ACCESS_KEY", &s3.access_key)
        .env("ELARA_BACKUP_SECRET_KEY", &s3.secret_key)
        .output()?;
    ensure!(
        out.status.success(),
        "backup target add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.ok(&["volume", "create", "objs", "--backend", "s3a", "--size", "1G"])?;
    let mp = PathBuf::from(d.ok(&["volume", "mount", "objs"])?.trim());
    std::fs::write(mp.join("hello"), b"world")?;
    d.ok(&["volume", "create", "blk", "--size", "32M"])?;
    d.ok(&["volume", "mount", "blk"])?;

    // The store's password too, when the suite's etcd runs with auth (scripts/test.sh).
    let store_password = match (store, std::env::var("ELARA_TEST_ETCD_PASSWORD_FILE")) {
        (StoreKind::Etcd, Ok(f)) => std::fs::read_to_string(f)?.trim().to_string(),
        _ => String::new(),
    };
    let mut secrets = vec![secret.as_str()];
    if !store_password.is_empty() {
        secrets.push(&store_password);
    }
    let (leaks, swept) = elara_tests::secrets::sweep(&d, &secrets)?;
    ensure!(swept > 20, "too few GETs swept: {swept}");
    d.ok(&["volume", "unmount", "objs"])?;
    d.ok(&["volume", "unmount", "blk"])?;
    s3.purge(&tag)?;
    let log = std::fs::read_to_string(d.dir.join("daemon.log"))?;
    ensure!(
        !log.contains(&secret),
        "the secret is in the daemon log after the unmounts"
    );
    ensure!(leaks.is_empty(), "the secret leaked to:\n{}", leaks.join("\n"));
    eprintln!("secrets sweep: {swept} REST GETs, the daemon's processes, world-readable files and its log: clean");
    Ok(())
}

#[test]
fn secrets_stay_inside_embedded() -> anyhow::Result<()> {
    secrets_stay_inside(StoreKind::Embedded)
}

#[test]
fn secrets_stay_inside_etcd() -> anyhow::Result<()> {
    secrets_stay_inside(StoreKind::Etcd)
}

/// A valid component padded with a custom section to `size` bytes (custom sections are ignored
/// by every reader, so it is still the same driver).
fn padded_component(wasm: &[u8], size: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let name = b"elara-test-padding";
    let payload = size.saturating_sub(wasm.len() + name.len() + 16);
    let mut body = vec![];
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.resize(body.len() + payload, 0x5a);
    let mut out = wasm.to_vec();
    out.push(0);
    leb(body.len(), &mut out);
    out.extend(body);
    out
}

fn big_driver_installs(store: StoreKind) -> anyhow::Result<()> {
    let d = Daemon::start(DaemonOpts::new(store))?;
    let big = padded_component(&std::fs::read(drivers_dir().join("local.wasm"))?, 24 << 20);
    let file = d.dir.join("big-local.wasm");
    std::fs::write(&file, &big)?;
    let rec = d.json(&[
        "driver",
        "install",
        file.to_str().context("utf-8")?,
        "--name",
        "biglocal",
    ])?;
    ensure!(
        rec["size"].as_u64() == Some(big.len() as u64),
        "installed size {} != {}",
        rec["size"],
        big.len()
    );
    Ok(())
}

#[test]
fn big_driver_installs_embedded() -> anyhow::Result<()> {
    big_driver_installs(StoreKind::Embedded)
}

#[test]
fn big_driver_installs_etcd() -> anyhow::Result<()> {
    big_driver_installs(StoreKind::Etcd)
}
