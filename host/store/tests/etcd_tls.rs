//! etcd over TLS with client certificates and user/password authentication (`etcds://`).
//!
//! Needs the TLS etcd that `ETCD_TLS=1 scripts/services/etcd.sh start DIR` starts, and the env it
//! prints (`ELARA_TEST_ETCD`, `ELARA_TEST_ETCD_CA`, `_CERT`, `_KEY`, `_USER`, `_PASSWORD_FILE`,
//! `_ADMIN_CERT`, `_ADMIN_KEY`). Without it these tests fail, unless `ELARA_SKIP_ETCD=1`.
//!
//! Each way of getting it wrong (a CA that did not sign the server, no client certificate, a
//! client certificate of another CA, a wrong password, no user) is refused at connect with the
//! typed error that says what failed, well within the connect timeout; secret files others may
//! read are refused before anything is contacted; no password shows in a location or `Debug`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use elara_store::etcd::{EtcdOptions, EtcdSecurity, EtcdStore};
use elara_store::{Store, StoreError, StoreUrl};

/// The TLS etcd's settings from the environment, or `None` when `ELARA_SKIP_ETCD=1`.
struct TlsEtcd {
    endpoint: String,
    security: EtcdSecurity,
    admin_cert: PathBuf,
    admin_key: PathBuf,
}

fn tls_etcd() -> Option<TlsEtcd> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if var("ELARA_TEST_ETCD_CA").is_none() && var("ELARA_SKIP_ETCD").as_deref() == Some("1") {
        eprintln!("ELARA_SKIP_ETCD=1: skipping this TLS etcd test");
        return None;
    }
    let need = |name: &str| {
        var(name).unwrap_or_else(|| {
            panic!(
                "{name} is not set: start a TLS etcd with `ETCD_TLS=1 scripts/services/etcd.sh start DIR` \
                 and export the lines it prints (or set ELARA_SKIP_ETCD=1 to skip the etcd tests)"
            )
        })
    };
    Some(TlsEtcd {
        endpoint: need("ELARA_TEST_ETCD"),
        security: EtcdSecurity {
            ca: Some(need("ELARA_TEST_ETCD_CA").into()),
            cert: Some(need("ELARA_TEST_ETCD_CERT").into()),
            key: Some(need("ELARA_TEST_ETCD_KEY").into()),
            user: Some(need("ELARA_TEST_ETCD_USER")),
            password_file: Some(need("ELARA_TEST_ETCD_PASSWORD_FILE").into()),
        },
        admin_cert: need("ELARA_TEST_ETCD_ADMIN_CERT").into(),
        admin_key: need("ELARA_TEST_ETCD_ADMIN_KEY").into(),
    })
}

impl TlsEtcd {
    fn endpoints(&self) -> Vec<String> {
        self.endpoint.split(',').map(str::to_string).collect()
    }

    fn password(&self) -> String {
        let path = self.security.password_file.as_ref().unwrap();
        std::fs::read_to_string(path).unwrap().trim_end().to_string()
    }

    /// Connect with `security`; the error and how long it took.
    async fn connect(&self, security: &EtcdSecurity) -> (Result<EtcdStore, StoreError>, Duration) {
        let start = Instant::now();
        let result = match security.load(true, None) {
            Ok((tls, auth)) => {
                let options = EtcdOptions {
                    tls,
                    auth,
                    ..Default::default()
                };
                EtcdStore::connect_with(&self.endpoints(), options).await
            }
            Err(e) => Err(e),
        };
        (result, start.elapsed())
    }
}

/// Refused well before the 5 s connect timeout: the cause is known at once, not waited for.
const PROMPT: Duration = Duration::from_secs(3);

/// A throwaway CA in `dir` (`NAME.pem`, `NAME.key`), and `client` signed by it.
fn other_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=other-ca",
        "-keyout",
        "other-ca.key",
        "-out",
        "other-ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=elara-client",
        "-keyout",
        "other-client.key",
        "-out",
        "other-client.csr",
    ]);
    // An X.509 v3 certificate (an extension makes it one), like the real client's.
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "other-client.csr",
        "-CA",
        "other-ca.pem",
        "-CAkey",
        "other-ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "client.ext",
        "-out",
        "other-client.pem",
    ]);
    let key = dir.join("other-client.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (dir.join("other-ca.pem"), dir.join("other-client.pem"), key)
}

#[tokio::test]
async fn connects_with_tls_and_password_and_shows_no_secret() {
    let Some(etcd) = tls_etcd() else { return };
    let (store, took) = etcd.connect(&etcd.security).await;
    let store = store.expect("connect over TLS with the right CA, certificate and password");
    let key = format!("/elara-test/{}/tls", uuid::Uuid::new_v4());
    store.put(&key, b"v".to_vec(), None).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap().unwrap().value, b"v");
    store.delete(&key).await.unwrap();

    let password = etcd.password();
    let location = store.location();
    assert_eq!(location, format!("etcds://elara@{}", etcd.endpoint));
    assert!(!location.contains(&password));
    let (tls, auth) = etcd.security.load(true, None).unwrap();
    let shown = format!(
        "{:?}",
        EtcdOptions {
            tls,
            auth,
            ..Default::default()
        }
    );
    assert!(!shown.contains(&password), "Debug shows the password: {shown}");
    assert!(!shown.contains("PRIVATE KEY"), "Debug shows the key: {shown}");
    eprintln!("TLS + auth connect: {took:?}");
}

#[tokio::test]
async fn open_with_etcds_url_namespaces_and_shows_the_user_only() {
    let Some(etcd) = tls_etcd() else { return };
    let ns = format!("tls-{}", uuid::Uuid::new_v4());
    let url = format!("etcds://elara@{}/{ns}", etcd.endpoint);
    let security = EtcdSecurity {
        user: None,
        ..etcd.security.clone()
    };
    let store = elara_store::open_with(&url, &security).await.unwrap();
    assert_eq!(store.kind(), "etcd");
    assert_eq!(store.location(), url);
    store.put("/elara/v1/x", b"1".to_vec(), None).await.unwrap();
    assert_eq!(store.list_keys("/elara/v1/").await.unwrap(), ["/elara/v1/x"]);
    store.delete("/elara/v1/x").await.unwrap();
}

#[tokio::test]
async fn a_ca_that_did_not_sign_the_server_is_a_tls_error() {
    let Some(etcd) = tls_etcd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = other_ca(dir.path());
    let security = EtcdSecurity {
        ca: Some(other_ca.clone()),
        ..etcd.security.clone()
    };
    let (result, took) = etcd.connect(&security).await;
    match result {
        Err(StoreError::Tls { store, why }) => {
            assert!(store.contains(&etcd.endpoint), "{store}");
            assert!(why.contains("server's certificate did not verify"), "{why}");
            assert!(why.contains(&other_ca.display().to_string()), "names the CA: {why}");
        }
        Err(other) => panic!("expected a TLS error, got {other:?}"),
        Ok(_) => panic!("connected trusting a CA that did not sign the server"),
    }
    assert!(took < PROMPT, "refused at once, not after a timeout: {took:?}");
}

#[tokio::test]
async fn no_client_certificate_is_a_tls_error() {
    let Some(etcd) = tls_etcd() else { return };
    let security = EtcdSecurity {
        cert: None,
        key: None,
        ..etcd.security.clone()
    };
    let (result, took) = etcd.connect(&security).await;
    match result {
        Err(StoreError::Tls { why, .. }) => {
            eprintln!("{why}");
            assert!(why.contains("the server refused"), "{why}");
            assert!(why.contains("without a client certificate"), "{why}");
        }
        Err(other) => panic!("expected a TLS error, got {other:?}"),
        Ok(_) => panic!("connected without a client certificate to a --client-cert-auth etcd"),
    }
    assert!(took < PROMPT, "refused at once, not after a timeout: {took:?}");
}

#[tokio::test]
async fn a_client_certificate_of_another_ca_is_a_tls_error() {
    let Some(etcd) = tls_etcd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = other_ca(dir.path());
    let security = EtcdSecurity {
        cert: Some(cert.clone()),
        key: Some(key),
        ..etcd.security.clone()
    };
    let (result, took) = etcd.connect(&security).await;
    match result {
        Err(StoreError::Tls { why, .. }) => {
            eprintln!("{why}");
            assert!(why.contains("the server refused"), "{why}");
            assert!(
                why.contains(&cert.display().to_string()),
                "names the certificate: {why}"
            );
        }
        Err(other) => panic!("expected a TLS error, got {other:?}"),
        Ok(_) => panic!("connected with a client certificate the server's CA did not sign"),
    }
    assert!(took < PROMPT, "refused at once, not after a timeout: {took:?}");
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_error() {
    let Some(etcd) = tls_etcd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let security = EtcdSecurity {
        password_file: Some(wrong),
        ..etcd.security.clone()
    };
    let (result, took) = etcd.connect(&security).await;
    match result {
        Err(StoreError::Auth { store, why }) => {
            assert!(store.contains(&etcd.endpoint), "{store}");
            assert!(why.contains("refused user \"elara\""), "{why}");
            assert!(!why.contains("not-the-password"), "the password is not echoed: {why}");
        }
        Err(other) => panic!("expected an authentication error, got {other:?}"),
        Ok(_) => panic!("connected with a wrong password"),
    }
    assert!(took < PROMPT, "refused at once, not after a timeout: {took:?}");
}

#[tokio::test]
async fn no_user_is_an_auth_error() {
    let Some(etcd) = tls_etcd() else { return };
    let security = EtcdSecurity {
        user: None,
        password_file: None,
        ..etcd.security.clone()
    };
    let (result, took) = etcd.connect(&security).await;
    match result {
        Err(StoreError::Auth { why, .. }) => {
            assert!(why.contains("--store-user"), "says what to give: {why}");
        }
        Err(other) => panic!("expected an authentication error, got {other:?}"),
        Ok(_) => panic!("read Elara's keys without a user on an `auth enable` etcd"),
    }
    assert!(took < PROMPT, "refused at once, not after a timeout: {took:?}");
}

#[tokio::test]
async fn secret_files_others_may_read_are_refused_before_connecting() {
    let Some(etcd) = tls_etcd() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (field, source) in [
        ("store-password-file", etcd.security.password_file.clone().unwrap()),
        ("store-key", etcd.security.key.clone().unwrap()),
    ] {
        for mode in [0o640, 0o604, 0o644] {
            let copy = dir.path().join(format!("{field}-{mode:o}"));
            std::fs::copy(&source, &copy).unwrap();
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode)).unwrap();
            let mut security = etcd.security.clone();
            match field {
                "store-key" => security.key = Some(copy.clone()),
                _ => security.password_file = Some(copy.clone()),
            }
            match security.load(true, None) {
                Err(StoreError::Settings { field: f, why }) => {
                    assert_eq!(f, field);
                    assert!(why.contains(&copy.display().to_string()), "names the file: {why}");
                    assert!(why.contains("readable by group or others"), "{why}");
                }
                other => panic!("{field} mode {mode:o}: expected a settings error, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_token_etcd_stops_accepting_is_renewed() {
    let Some(etcd) = tls_etcd() else { return };
    // root by the admin certificate's CN, to manage a user of this test's own (changing elara's
    // tokens would reach every other test running on this etcd).
    let ca = std::fs::read(etcd.security.ca.as_ref().unwrap()).unwrap();
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(ca))
        .identity(etcd_client::Identity::from_pem(
            std::fs::read(&etcd.admin_cert).unwrap(),
            std::fs::read(&etcd.admin_key).unwrap(),
        ));
    let urls: Vec<String> = etcd.endpoints().iter().map(|e| format!("https://{e}")).collect();
    let admin = etcd_client::Client::connect(urls, Some(etcd_client::ConnectOptions::new().with_tls(tls)))
        .await
        .expect("connect as root by the admin certificate");
    let mut auth = admin.auth_client();
    let user = format!("tmp-{}", uuid::Uuid::new_v4());
    let password = uuid::Uuid::new_v4().to_string();
    auth.user_add(user.as_str(), password.as_str(), None).await.unwrap();
    auth.user_grant_role(user.as_str(), "elara").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, &password).unwrap();
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let security = EtcdSecurity {
        user: Some(user.clone()),
        password_file: Some(password_file),
        ..etcd.security.clone()
    };

    let result = async {
        let (store, _) = etcd.connect(&security).await;
        let store = store?;
        let key = format!("/elara-test/{}/token", uuid::Uuid::new_v4());
        store.put(&key, b"1".to_vec(), None).await?;
        // A password change (here to the same one) makes etcd forget the user's tokens: every
        // later call with the old one is "invalid auth token".
        auth.user_change_password(user.as_str(), password.as_str())
            .await
            .expect("change the test user's password");
        store.put(&key, b"2".to_vec(), None).await?;
        let value = store.get(&key).await?.map(|kv| kv.value);
        store.delete(&key).await?;
        Ok::<_, StoreError>(value)
    }
    .await;
    auth.user_delete(user.as_str()).await.unwrap();
    assert_eq!(result.expect("calls after etcd forgot the token"), Some(b"2".to_vec()));
}

// ---------------------------------------------------------------------------------------------
// Settings, without etcd

#[test]
fn a_password_in_the_url_is_refused_and_not_echoed() {
    for url in [
        "etcds://elara:hunter2@127.0.0.1:2379/ns",
        "etcd://elara:hunter2@127.0.0.1:2379",
    ] {
        match StoreUrl::parse(url) {
            Err(StoreError::Settings { field, why }) => {
                assert_eq!(field, "store");
                assert!(why.contains("--store-password-file"), "{why}");
                assert!(!why.contains("hunter2"), "echoes the password: {why}");
            }
            other => panic!("{url}: expected a settings error, got {other:?}"),
        }
    }
}

#[test]
fn store_urls_parse_and_show_as_given() {
    let url = StoreUrl::parse("etcds://elara@h1:2379,h2:2379/team-a").unwrap();
    assert_eq!(
        url,
        StoreUrl::Etcd {
            tls: true,
            user: Some("elara".into()),
            endpoints: vec!["h1:2379".into(), "h2:2379".into()],
            namespace: Some("team-a".into()),
        }
    );
    assert_eq!(url.to_string(), "etcds://elara@h1:2379,h2:2379/team-a");
    assert!(url.is_cluster());
    let plain = StoreUrl::parse("etcd://127.0.0.1:2379").unwrap();
    assert_eq!(plain.to_string(), "etcd://127.0.0.1:2379");
    let file = StoreUrl::parse("file:///var/lib/elara/store.redb").unwrap();
    assert_eq!(file, StoreUrl::Embedded("/var/lib/elara/store.redb".into()));
    assert!(!file.is_cluster());
    for bad in [
        "etcd://",
        "etcd://h1",
        "etcd://h1:2379,",
        "etcds://@h1:2379",
        "etcd://h1:99999",
        "etcd://h 1:2379",
    ] {
        match StoreUrl::parse(bad) {
            Err(StoreError::Settings { field, why }) => {
                assert_eq!(field, "store", "{bad}: {why}");
            }
            other => panic!("{bad}: expected a settings error, got {other:?}"),
        }
    }
}

#[test]
fn inconsistent_settings_name_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, "x").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cases: [(EtcdSecurity, bool, Option<&str>, &str); 6] = [
        (EtcdSecurity::default(), true, None, "store-ca"),
        (
            EtcdSecurity {
                ca: Some(file.clone()),
                ..Default::default()
            },
            false,
            None,
            "store-ca",
        ),
        (
            EtcdSecurity {
                ca: Some(file.clone()),
                cert: Some(file.clone()),
                ..Default::default()
            },
            true,
            None,
            "store-ca", // not PEM
        ),
        (
            EtcdSecurity {
                user: Some("elara".into()),
                ..Default::default()
            },
            false,
            None,
            "store-password-file",
        ),
        (
            EtcdSecurity {
                password_file: Some(file.clone()),
                ..Default::default()
            },
            false,
            None,
            "store-user",
        ),
        (
            EtcdSecurity {
                user: Some("a".into()),
                password_file: Some(file.clone()),
                ..Default::default()
            },
            false,
            Some("b"),
            "store-user",
        ),
    ];
    for (security, tls, url_user, field) in cases {
        match security.load(tls, url_user) {
            Err(StoreError::Settings { field: f, why }) => {
                assert_eq!(f, field, "{security:?}: {why}")
            }
            other => panic!("{security:?}: expected a settings error on {field}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn credentials_for_the_embedded_store_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let security = EtcdSecurity {
        user: Some("elara".into()),
        ..Default::default()
    };
    let path = dir.path().join("store.redb");
    match elara_store::open_with(&path.display().to_string(), &security).await {
        Err(StoreError::Settings { field, .. }) => assert_eq!(field, "store"),
        Err(other) => panic!("expected a settings error, got {other:?}"),
        Ok(_) => panic!("opened the embedded store with etcd credentials"),
    }
    assert!(!path.exists(), "nothing was created");
}
