//! A daemon on etcd with TLS and authentication (`etcds://`, `--store-ca/-cert/-key`,
//! `--store-password-file`): it runs with the right settings and shows no secret (CLI, REST, log,
//! process arguments), and with a wrong CA, client certificate or password it is refused at
//! start, promptly, with an error naming the store and saying what failed.
//!
//! Needs the TLS etcd of `ETCD_TLS=1 scripts/services/etcd.sh start DIR` and the env it prints;
//! without it these tests fail, unless `ELARA_SKIP_ETCD=1`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use elara_tests::*;

/// The TLS settings from the environment, or `None` when etcd tests are skipped.
fn tls_security() -> Option<elara_store::etcd::EtcdSecurity> {
    let security = etcd_security();
    if security.ca.is_none() {
        if std::env::var("ELARA_SKIP_ETCD").as_deref() == Ok("1") {
            eprintln!("ELARA_SKIP_ETCD=1: skipping this TLS etcd test");
            return None;
        }
        panic!(
            "ELARA_TEST_ETCD_CA is not set: start a TLS etcd with `ETCD_TLS=1 scripts/services/etcd.sh start DIR` \
             and export the lines it prints (or set ELARA_SKIP_ETCD=1)"
        );
    }
    assert!(
        security.cert.is_some()
            && security.key.is_some()
            && security.user.is_some()
            && security.password_file.is_some(),
        "ELARA_TEST_ETCD_CERT, _KEY, _USER and _PASSWORD_FILE go with ELARA_TEST_ETCD_CA: {security:?}"
    );
    Some(security)
}

fn password(security: &elara_store::etcd::EtcdSecurity) -> String {
    std::fs::read_to_string(security.password_file.as_ref().unwrap())
        .unwrap()
        .trim_end()
        .to_string()
}

/// A copy of `file` in `dir` with `mode`.
fn copy_with_mode(file: &Path, dir: &Path, mode: u32) -> PathBuf {
    let copy = dir.join(format!("{}-{mode:o}", file.file_name().unwrap().to_string_lossy()));
    std::fs::copy(file, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode)).unwrap();
    copy
}

/// `elara daemon` with `store` and `flags`, which must exit by itself (refused) within 20 s:
/// its stderr and how long it took.
fn refused_daemon(store: &str, flags: &[String]) -> (String, Duration) {
    let dir = tempfile::Builder::new()
        .prefix("elara-test-")
        .tempdir_in(work_dir())
        .unwrap();
    let start = Instant::now();
    let mut child = Command::new(elara_bin())
        .arg("-s")
        .arg(dir.path().join("elara.sock"))
        .arg("daemon")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--store", store, "--node", "n1", "--plugin-dir", "none"])
        .arg("--drivers-dir")
        .arg(drivers_dir())
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting elara daemon");
    let limit = Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon with store {store} {flags:?} was still running after {limit:?}: not refused at start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "the daemon exited successfully: {stderr}");
    (stderr, took)
}

/// The daemon flags of `security`, the password file and key replaced where given.
fn flags(security: &elara_store::etcd::EtcdSecurity) -> Vec<String> {
    let mut out = vec![];
    for (flag, path) in [
        ("--store-ca", &security.ca),
        ("--store-cert", &security.cert),
        ("--store-key", &security.key),
        ("--store-password-file", &security.password_file),
    ] {
        if let Some(path) = path {
            out.push(flag.to_string());
            out.push(path.display().to_string());
        }
    }
    out
}

/// A refused start says so promptly: the store connects within its 5 s timeout or fails first.
const PROMPT: Duration = Duration::from_secs(10);

#[test]
fn a_daemon_on_tls_etcd_shows_no_secret() -> anyhow::Result<()> {
    let Some(security) = tls_security() else {
        return Ok(());
    };
    let password = password(&security);
    let d = Daemon::start(DaemonOpts::new(StoreKind::Etcd))?;
    let url = d.store_url();
    assert!(url.starts_with("etcds://elara@"), "{url}");
    d.ok(&["volume", "create", "tlsvol", "--size", "16M"])?;
    let info = d.ok(&["info"])?;
    assert!(info.contains(&url), "info shows the store {url}:\n{info}");
    let json = d.json(&["info"])?;
    assert_eq!(json["store_location"], url.as_str());
    let listed = d.ok(&["-o", "json", "volume", "list"])?;
    assert!(listed.contains("tlsvol"));
    let pid = d.pid().expect("the daemon runs");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let log = std::fs::read_to_string(d.dir.join("daemon.log"))?;
    for (what, text) in [
        ("elara info", info),
        ("elara -o json info", json.to_string()),
        ("the process arguments", String::from_utf8_lossy(&cmdline).into_owned()),
        ("the daemon log", log),
    ] {
        assert!(!text.contains(&password), "{what} shows the etcd password");
        assert!(!text.contains("PRIVATE KEY"), "{what} shows a private key");
    }
    d.ok(&["volume", "delete", "tlsvol"])?;
    Ok(())
}

#[test]
fn a_wrong_ca_is_refused_at_start_as_a_certificate_failure() {
    let Some(security) = tls_security() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A CA of its own, which did not sign the server.
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=other-ca",
        ])
        .arg("-keyout")
        .arg(dir.path().join("other-ca.key"))
        .arg("-out")
        .arg(dir.path().join("other-ca.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let wrong = elara_store::etcd::EtcdSecurity {
        ca: Some(dir.path().join("other-ca.pem")),
        ..security
    };
    let store = etcd_store_url(&unique("ns"));
    let (stderr, took) = refused_daemon(&store, &flags(&wrong));
    assert!(stderr.contains(&store), "names the store {store}: {stderr}");
    assert!(stderr.contains("TLS certificate verification failed"), "{stderr}");
    assert!(stderr.contains("server's certificate did not verify"), "{stderr}");
    assert!(took < PROMPT, "refused promptly, not after retries: {took:?}");
}

#[test]
fn no_client_certificate_is_refused_at_start_as_a_certificate_failure() {
    let Some(security) = tls_security() else {
        return;
    };
    let wrong = elara_store::etcd::EtcdSecurity {
        cert: None,
        key: None,
        ..security
    };
    let store = etcd_store_url(&unique("ns"));
    let (stderr, took) = refused_daemon(&store, &flags(&wrong));
    assert!(stderr.contains(&store), "names the store {store}: {stderr}");
    assert!(stderr.contains("TLS certificate verification failed"), "{stderr}");
    assert!(stderr.contains("the server refused"), "{stderr}");
    assert!(took < PROMPT, "refused promptly, not after retries: {took:?}");
}

#[test]
fn a_wrong_password_is_refused_at_start_as_an_authentication_failure() {
    let Some(security) = tls_security() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wrong.password");
    std::fs::write(&file, "wrong-password-1234\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let wrong = elara_store::etcd::EtcdSecurity {
        password_file: Some(file),
        ..security
    };
    let store = etcd_store_url(&unique("ns"));
    let (stderr, took) = refused_daemon(&store, &flags(&wrong));
    assert!(stderr.contains(&store), "names the store {store}: {stderr}");
    assert!(stderr.contains("authentication failed"), "{stderr}");
    assert!(stderr.contains("refused user \"elara\""), "{stderr}");
    assert!(!stderr.contains("wrong-password-1234"), "echoes the password: {stderr}");
    assert!(took < PROMPT, "refused promptly, not after retries: {took:?}");
}

#[test]
fn secret_files_others_may_read_are_refused_at_start_naming_the_file() {
    let Some(security) = tls_security() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = etcd_store_url(&unique("ns"));
    let loose_password = copy_with_mode(security.password_file.as_ref().unwrap(), dir.path(), 0o644);
    let loose_key = copy_with_mode(security.key.as_ref().unwrap(), dir.path(), 0o640);
    for (setting, file, wrong) in [
        (
            "store-password-file",
            &loose_password,
            elara_store::etcd::EtcdSecurity {
                password_file: Some(loose_password.clone()),
                ..security.clone()
            },
        ),
        (
            "store-key",
            &loose_key,
            elara_store::etcd::EtcdSecurity {
                key: Some(loose_key.clone()),
                ..security.clone()
            },
        ),
    ] {
        let (stderr, _) = refused_daemon(&store, &flags(&wrong));
        assert!(stderr.contains(setting), "{setting}: {stderr}");
        assert!(stderr.contains(&file.display().to_string()), "names the file: {stderr}");
        assert!(stderr.contains("readable by group or others"), "{stderr}");
    }
}

#[test]
fn a_password_in_the_store_url_is_refused_and_not_shown() {
    let Some(security) = tls_security() else {
        return;
    };
    let store = format!("etcds://elara:url-password-5678@{}/{}", etcd_endpoint(), unique("ns"));
    let (stderr, _) = refused_daemon(&store, &flags(&security));
    assert!(stderr.contains("--store-password-file"), "{stderr}");
    assert!(!stderr.contains("url-password-5678"), "shows the password: {stderr}");
}
