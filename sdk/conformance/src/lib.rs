//! # elara-conformance: does a driver keep the Elara driver contract?
//!
//! [`run`] loads a driver component, opens a throw-away backend of it on a scratch pool
//! directory and walks it through the contract in `wit/driver.wit`: identity and configuration,
//! pool figures, and every operation twice over, because every call must be idempotent — a
//! retried `create` must return the same volume and never make a second one. Optional
//! operations must either work or answer `unsupported`, exactly as `info().features` says.
//!
//! Each check ends PASS, FAIL or SKIP with a reason; the [`Report`] prints as a table and
//! [`Report::passed`] says whether the driver conforms. `elara driver check FILE` runs it; a
//! driver author can run it from `cargo test` with [`check_wasm_file`]:
//!
//! ```no_run
//! let report = elara_conformance::check_wasm_file(
//!     "target/wasm32-wasip2/release/mydriver.wasm",
//!     elara_conformance::CheckOptions::default(),
//! );
//! assert!(report.passed(), "{report}");
//! ```
//!
//! The suite creates objects whose ids start with [`Report::id_prefix`] and deletes them at the
//! end, also after a failed check (best effort).

mod checks;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use elara_runtime::{HostGrant, Runtime, RuntimeConfig, RuntimeError};

/// Brings a driver's connection up on this host, uses it and takes it down: `elara driver check
/// --attach` hands the host's attach layer in, so `attach` is checked end to end (a LUN the host
/// logs in to, formats, mounts, writes and reads), not only for its shape.
pub trait BringUp: Send + Sync {
    /// What was shown (`ext4 mounted, 1 MiB written and read back`), or why it failed.
    fn exercise<'a>(
        &'a self,
        volume_id: &'a str,
        pool_dir: &'a Path,
        connection: &'a elara_runtime::Connection,
    ) -> BringUpFuture<'a>;
}

pub type BringUpFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + 'a>>;

/// What to run the suite with.
#[derive(Clone)]
pub struct CheckOptions {
    /// The backend configuration handed to `configure` (e.g. an endpoint and credentials).
    pub config: Vec<(String, String)>,
    /// Hosts the backend may reach over HTTP/TCP.
    pub grants: Vec<HostGrant>,
    /// The backend's pool directory; default: a fresh temporary directory, removed afterwards.
    pub pool_dir: Option<PathBuf>,
    /// Size of the test volumes in bytes (default 64 MiB). Drivers may round it up.
    pub size_bytes: u64,
    /// Bring every attach up on this host too (see [`BringUp`]); `None`: check its shape only.
    pub bring_up: Option<std::sync::Arc<dyn BringUp>>,
}

impl fmt::Debug for CheckOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The config may hold secrets: keys only.
        f.debug_struct("CheckOptions")
            .field("config_keys", &self.config.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("grants", &self.grants)
            .field("pool_dir", &self.pool_dir)
            .field("size_bytes", &self.size_bytes)
            .field("bring_up", &self.bring_up.is_some())
            .finish()
    }
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            config: Vec::new(),
            grants: Vec::new(),
            pool_dir: None,
            size_bytes: 64 << 20,
            bring_up: None,
        }
    }
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
        })
    }
}

/// One named check and how it ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckResult {
    /// Stable name, e.g. `create-idempotent`.
    pub name: String,
    pub outcome: Outcome,
    /// What was seen: for a failure, what the driver did and what the contract expects.
    pub detail: String,
    pub elapsed: Duration,
}

/// The result of a suite run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The driver's name and version from `info()` (empty if it could not be loaded).
    pub driver: String,
    pub version: String,
    /// Prefix of every id the suite used.
    pub id_prefix: String,
    pub checks: Vec<CheckResult>,
    pub elapsed: Duration,
}

impl Report {
    /// True when no check failed (skips are fine: they follow the driver's declared features).
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.outcome != Outcome::Fail)
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| c.outcome == Outcome::Fail)
    }

    /// The check of that name, if it ran.
    pub fn check(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.name == name)
    }

    fn count(&self, outcome: Outcome) -> usize {
        self.checks.iter().filter(|c| c.outcome == outcome).count()
    }

    /// A report of a run that could not get going (the file is unreadable, the runtime failed).
    fn setup_failure(name: &str, detail: String, started: Instant) -> Report {
        Report {
            driver: String::new(),
            version: String::new(),
            id_prefix: String::new(),
            checks: vec![CheckResult {
                name: name.into(),
                outcome: Outcome::Fail,
                detail,
                elapsed: started.elapsed(),
            }],
            elapsed: started.elapsed(),
        }
    }
}

fn fmt_duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2}s", d.as_secs_f64())
    } else if d >= Duration::from_millis(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{}µs", d.as_micros())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.driver.is_empty() {
            writeln!(f, "conformance of an unloaded driver")?;
        } else {
            writeln!(f, "conformance of driver {} {}", self.driver, self.version)?;
        }
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(5).max(5);
        writeln!(f, "{:<6} {:<width$} {:>9}  DETAIL", "RESULT", "CHECK", "TIME")?;
        for c in &self.checks {
            let mut lines = c.detail.lines();
            let first = lines.next().unwrap_or("");
            writeln!(
                f,
                "{:<6} {:<width$} {:>9}  {first}",
                c.outcome.to_string(),
                c.name,
                fmt_duration(c.elapsed)
            )?;
            for line in lines {
                writeln!(f, "{:<6} {:<width$} {:>9}  {line}", "", "", "")?;
            }
        }
        write!(
            f,
            "{} checks: {} passed, {} failed, {} skipped in {} — {}",
            self.checks.len(),
            self.count(Outcome::Pass),
            self.count(Outcome::Fail),
            self.count(Outcome::Skip),
            fmt_duration(self.elapsed),
            if self.passed() { "CONFORMS" } else { "DOES NOT CONFORM" }
        )
    }
}

/// What kept the suite from running at all. A driver that does not load or rejects its
/// configuration is not an error here: it is a failed check in the [`Report`].
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    #[error("creating a scratch pool directory: {0}")]
    PoolDir(#[source] std::io::Error),
}

/// Run the suite against the driver component `wasm` on `runtime`.
pub async fn run(runtime: &Runtime, wasm: &[u8], opts: CheckOptions) -> Result<Report, ConformanceError> {
    let started = Instant::now();
    // Keep the temporary pool directory alive for the whole run.
    let (_scratch, pool_dir) = match &opts.pool_dir {
        Some(dir) => (None, dir.clone()),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("elara-conformance-")
                .tempdir()
                .map_err(ConformanceError::PoolDir)?;
            let path = dir.path().to_path_buf();
            (Some(dir), path)
        }
    };
    Ok(checks::Suite::run(runtime, wasm, opts, pool_dir, started).await)
}

/// Run the suite on a `.wasm` file, blocking, with a runtime of its own (compiled-code cache in
/// a temporary directory). For a driver's own `cargo test`. Problems reading the file or
/// starting the runtime come back as a failed `setup` check.
pub fn check_wasm_file(path: impl AsRef<Path>, opts: CheckOptions) -> Report {
    let started = Instant::now();
    let path = path.as_ref();
    let wasm = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => return Report::setup_failure("setup", format!("reading {}: {e}", path.display()), started),
    };
    let cache = match tempfile::Builder::new().prefix("elara-conformance-cache-").tempdir() {
        Ok(dir) => dir,
        Err(e) => return Report::setup_failure("setup", format!("creating a cache directory: {e}"), started),
    };
    let tokio = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Report::setup_failure("setup", format!("starting tokio: {e}"), started),
    };
    tokio.block_on(async {
        let runtime = match Runtime::new(RuntimeConfig {
            cache_dir: cache.path().to_path_buf(),
            ..Default::default()
        }) {
            Ok(rt) => rt,
            Err(e) => return Report::setup_failure("setup", format!("starting the driver runtime: {e}"), started),
        };
        match run(&runtime, &wasm, opts).await {
            Ok(report) => report,
            Err(e) => Report::setup_failure("setup", e.to_string(), started),
        }
    })
}

/// Describe a runtime error for a report line.
fn describe_runtime_error(e: &RuntimeError) -> String {
    e.to_string()
}
