//! The conformance suite against real driver components, built from source for wasm32-wasip2
//! by `scripts/build-drivers.sh` (once per test binary):
//! - the local driver conforms, and says in `info().notes` that its pools are per node and how
//!   it snapshots;
//! - `sloppy` (tests/drivers/sloppy), whose `create` is not idempotent, does not conform, and the
//!   report names the failed check and says why.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use elara_conformance::{CheckOptions, Outcome, run};
use elara_runtime::{Runtime, RuntimeConfig};

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Build every driver and test driver (once), then read `target/<dir>/<name>.wasm`.
fn component(dir: &str, name: &str) -> Vec<u8> {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root().join("scripts/build-drivers.sh"))
            .output()
            .expect("running scripts/build-drivers.sh");
        assert!(
            out.status.success(),
            "scripts/build-drivers.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let path = root().join("target").join(dir).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn runtime(cache: &Path) -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: cache.to_path_buf(),
        ..Default::default()
    })
    .expect("runtime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_driver_conforms() {
    let wasm = component("drivers", "local");
    let cache = tempfile::tempdir().unwrap();
    let rt = runtime(cache.path());
    let report = run(&rt, &wasm, CheckOptions::default()).await.expect("suite runs");
    println!("{report}");
    assert!(report.passed(), "the local driver must conform:\n{report}");
    assert_eq!(report.driver, "local");
    // Every operation the local driver declares was really exercised, not skipped.
    for name in [
        "create-idempotent",
        "snapshot-create",
        "create-from-snapshot",
        "resize",
        "stats",
        "attach",
    ] {
        let check = report
            .check(name)
            .unwrap_or_else(|| panic!("no check {name}:\n{report}"));
        assert_eq!(check.outcome, Outcome::Pass, "{name}: {}", check.detail);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_driver_notes_scope_and_snapshot_method() {
    let wasm = component("drivers", "local");
    let cache = tempfile::tempdir().unwrap();
    let rt = runtime(cache.path());
    let driver = rt.load_driver(&wasm).await.expect("local loads");
    let note =
        |info: &elara_runtime::DriverInfo, key: &str| info.notes.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    // Loaded without a pool directory: scope is known, the method depends on the filesystem.
    assert_eq!(
        note(driver.info(), "scope").as_deref(),
        Some("node"),
        "{:?}",
        driver.info().notes
    );
    assert!(
        note(driver.info(), "snapshot-method").is_some(),
        "{:?}",
        driver.info().notes
    );

    // On a backend the method is decided by the pool's filesystem, and agrees with the host's probe.
    let pool = tempfile::tempdir().unwrap();
    let backend = rt
        .open_backend(
            &driver,
            elara_runtime::BackendSpec {
                name: "local-notes".into(),
                pool_dir: pool.path().to_path_buf(),
                config: vec![],
                grants: vec![],
                limits: Default::default(),
            },
        )
        .await
        .expect("backend opens");
    let info = backend.info().await.expect("info");
    assert_eq!(note(&info, "scope").as_deref(), Some("node"));
    let method = note(&info, "snapshot-method").expect("snapshot-method note");
    assert!(method == "reflink" || method == "copy", "snapshot-method is {method:?}");
    let pools = backend.pools().await.expect("pools");
    let cap = pools[0]
        .capabilities
        .iter()
        .find(|(k, _)| k == "snapshot-method")
        .map(|(_, v)| v.as_str());
    assert_eq!(cap, Some(method.as_str()), "pool capability and info note agree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_driver_fails_with_a_readable_report() {
    let wasm = component("test-drivers", "sloppy");
    let cache = tempfile::tempdir().unwrap();
    let pool = tempfile::tempdir().unwrap();
    let rt = runtime(cache.path());
    let opts = CheckOptions {
        pool_dir: Some(pool.path().to_path_buf()),
        ..Default::default()
    };
    let report = run(&rt, &wasm, opts).await.expect("suite runs");
    let text = report.to_string();
    println!("{text}");
    assert!(
        !report.passed(),
        "a driver whose create is not idempotent must not conform:\n{text}"
    );

    // The failed check is named, and says what went wrong and what the contract expects.
    // (`create-conflict` fails too: the driver never looks for an existing id.)
    let failed: Vec<&str> = report.failures().map(|c| c.name.as_str()).collect();
    assert!(failed.contains(&"create-idempotent"), "{text}");
    assert!(
        failed
            .iter()
            .all(|f| ["create-idempotent", "create-conflict"].contains(f)),
        "{text}"
    );
    let check = report.check("create-idempotent").unwrap();
    assert!(check.detail.contains("made a second volume"), "{}", check.detail);
    assert!(check.detail.contains("-vol is listed 2 times"), "{}", check.detail);
    assert!(check.detail.contains("create must be idempotent"), "{}", check.detail);
    let line = text
        .lines()
        .find(|l| l.contains("create-idempotent"))
        .expect("a report line for the check");
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(text.trim_end().ends_with("DOES NOT CONFORM"), "{text}");

    // Everything the suite made was removed, the second volume included.
    let left: Vec<_> = std::fs::read_dir(pool.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the pool: {left:?}");
}
