//! The checks, in the order they run. Each returns `Ok(Verdict)` (pass with a note, or skip with
//! a reason) or `Err(why)` for a failure; later checks skip when an object they need was not made.

use std::fmt::Debug;
use std::path::{Component, Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use elara_runtime::{
    Backend, BackendSpec, CallError, Capacity, Connection, Driver, DriverError, DriverInfo, Features, Limits, NodeInfo,
    Qos, Runtime, RuntimeError, Snapshot, SnapshotSpec, Volume, VolumeKind, VolumeSpec,
};

use crate::{CheckOptions, CheckResult, Outcome, Report, describe_runtime_error};

/// How a check that did not fail ended.
enum Verdict {
    Pass(String),
    Skip(String),
}

type Check = Result<Verdict, String>;

fn pass(detail: impl Into<String>) -> Check {
    Ok(Verdict::Pass(detail.into()))
}

fn skip(reason: impl Into<String>) -> Check {
    Ok(Verdict::Skip(reason.into()))
}

/// The config key no driver declares, used to test that unknown keys are refused.
pub const UNKNOWN_KEY: &str = "elara-conformance-unknown-key";

/// `Ok(value)` or a failure naming the call and the error.
fn ok<T>(what: &str, result: Result<T, CallError>) -> Result<T, String> {
    result.map_err(|e| format!("{what} failed: {e}"))
}

/// The call must fail with the driver error of WIT name `kind`.
fn expect_err<T: Debug>(what: &str, kind: &str, result: Result<T, CallError>) -> Result<DriverError, String> {
    match result {
        Ok(v) => Err(format!("{what} succeeded ({v:?}); the contract expects `{kind}`")),
        Err(CallError::Driver(e)) if e.kind() == kind => Ok(e),
        Err(e) => Err(format!("{what} failed with `{e}`; the contract expects `{kind}`")),
    }
}

/// Optional operations: with the feature the call must work, without it answer `unsupported`.
fn optional<T: Debug>(feature: &str, has: bool, what: &str, result: Result<T, CallError>) -> Result<Option<T>, String> {
    if has {
        return result
            .map(Some)
            .map_err(|e| format!("{what} failed: {e} (info() declares the `{feature}` feature)"));
    }
    match result {
        Err(CallError::Driver(DriverError::Unsupported(_))) => Ok(None),
        Ok(v) => Err(format!(
            "{what} succeeded ({v:?}) but info() does not declare the `{feature}` feature: declare it, or answer `unsupported`"
        )),
        Err(e) => Err(format!(
            "{what} failed with `{e}`; without the `{feature}` feature the contract expects `unsupported`"
        )),
    }
}

/// A short random-enough prefix for this run's ids.
fn run_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("conf-{:08x}", (nanos as u64 ^ (std::process::id() as u64) << 32) as u32)
}

/// A relative path inside the pool dir, with no `..` and no root.
fn check_pool_path(pool_dir: &Path, path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!("path {path:?} must be relative to the pool dir, without `..`"));
    }
    let full = pool_dir.join(p);
    if !full.exists() {
        return Err(format!("path {path:?} does not exist in the pool dir"));
    }
    Ok(full)
}

pub(crate) struct Suite<'a> {
    runtime: &'a Runtime,
    opts: CheckOptions,
    pool_dir: PathBuf,
    prefix: String,
    results: Vec<CheckResult>,
    driver: Option<Driver>,
    backend: Option<Backend>,
    info: Option<DriverInfo>,
    pool: Option<String>,
    volume: Option<Volume>,
    snapshot: Option<Snapshot>,
}

impl<'a> Suite<'a> {
    pub(crate) async fn run(
        runtime: &'a Runtime,
        wasm: &[u8],
        opts: CheckOptions,
        pool_dir: PathBuf,
        started: Instant,
    ) -> Report {
        let mut s = Suite {
            runtime,
            opts,
            pool_dir,
            prefix: run_prefix(),
            results: Vec::new(),
            driver: None,
            backend: None,
            info: None,
            pool: None,
            volume: None,
            snapshot: None,
        };
        macro_rules! step {
            ($name:expr, $call:expr) => {{
                let t = Instant::now();
                let verdict = $call;
                s.record($name, verdict, t);
            }};
        }
        step!("load", s.load(wasm).await);
        step!("info", s.check_info().await);
        step!("configure-unknown-key", s.check_unknown_key().await);
        step!("configure-required-keys", s.check_required_keys().await);
        step!("open-backend", s.open().await);
        step!("pools", s.check_pools().await);
        step!("create", s.check_create().await);
        step!("create-idempotent", s.check_create_idempotent().await);
        step!("create-conflict", s.check_create_conflict().await);
        step!("create-invalid-size", s.check_invalid_size().await);
        step!("not-found", s.check_not_found().await);
        step!("stats", s.check_stats().await);
        step!("resize", s.check_resize().await);
        step!("snapshot-create", s.check_snapshot().await);
        step!("create-from-snapshot", s.check_clone().await);
        step!("attach", s.check_attach().await);
        step!("detach", s.check_detach().await);
        step!("set-qos", s.check_qos().await);
        step!("snapshot-delete", s.check_snapshot_delete().await);
        step!("delete", s.check_delete().await);
        step!("cleanup", s.check_cleanup().await);
        let (driver, version) = s
            .info
            .as_ref()
            .map(|i| (i.name.clone(), i.version.clone()))
            .unwrap_or_default();
        Report {
            driver,
            version,
            id_prefix: s.prefix,
            checks: s.results,
            elapsed: started.elapsed(),
        }
    }

    fn record(&mut self, name: &str, verdict: Check, started: Instant) {
        let (outcome, detail) = match verdict {
            Ok(Verdict::Pass(d)) => (Outcome::Pass, d),
            Ok(Verdict::Skip(d)) => (Outcome::Skip, d),
            Err(d) => (Outcome::Fail, d),
        };
        if outcome == Outcome::Fail {
            tracing::warn!(check = name, "conformance check failed: {detail}");
        }
        self.results.push(CheckResult {
            name: name.into(),
            outcome,
            detail,
            elapsed: started.elapsed(),
        });
    }

    fn id(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    fn features(&self) -> Features {
        self.info.as_ref().map(|i| i.features).unwrap_or(Features::empty())
    }

    fn has(&self, f: Features) -> bool {
        self.features().contains(f)
    }

    fn node(&self) -> NodeInfo {
        NodeInfo {
            name: "conformance-node".into(),
            connector: vec![
                ("hostname".into(), "conformance-node".into()),
                ("ip".into(), "127.0.0.1".into()),
            ],
        }
    }

    fn spec(&self, id: &str, size: u64) -> VolumeSpec {
        VolumeSpec {
            id: id.into(),
            name: format!("{id}-name"),
            size_bytes: size,
            pool: self.pool.clone().unwrap_or_default(),
            labels: vec![("elara-conformance".into(), "true".into())],
            qos: None,
        }
    }

    fn backend_spec(&self, name: &str, config: Vec<(String, String)>) -> BackendSpec {
        BackendSpec {
            name: name.into(),
            pool_dir: self.pool_dir.clone(),
            config,
            grants: self.opts.grants.clone(),
            limits: Limits::default(),
        }
    }

    /// The backend, or a skip of a check that needs it.
    fn backend(&self) -> Result<&Backend, Verdict> {
        self.backend
            .as_ref()
            .ok_or_else(|| Verdict::Skip("needs the backend from `open-backend`".into()))
    }

    async fn ids_listed(&self) -> Result<Vec<String>, String> {
        let backend = self.backend.as_ref().ok_or("no backend")?;
        Ok(ok("list-volumes", backend.list_volumes().await)?
            .into_iter()
            .map(|v| v.id)
            .collect())
    }

    // ---- identity and configuration ------------------------------------------------------

    async fn load(&mut self, wasm: &[u8]) -> Check {
        let driver = self
            .runtime
            .load_driver(wasm)
            .await
            .map_err(|e| format!("the component does not load: {}", describe_runtime_error(&e)))?;
        let detail = format!(
            "{} bytes, sha256 {}",
            wasm.len(),
            &driver.sha256()[..16.min(driver.sha256().len())]
        );
        self.info = Some(driver.info().clone());
        self.driver = Some(driver);
        pass(detail)
    }

    async fn check_info(&mut self) -> Check {
        let Some(info) = &self.info else {
            return skip("the driver did not load");
        };
        let mut problems = Vec::new();
        if info.name.trim().is_empty() {
            problems.push("name is empty".to_string());
        }
        if info.version.trim().is_empty() {
            problems.push("version is empty".to_string());
        }
        let mut names: Vec<&str> = info.config_keys.iter().map(|k| k.name.as_str()).collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            problems.push(format!("config key {:?} is declared twice", w[0]));
        }
        for k in &info.config_keys {
            if k.name.trim().is_empty() {
                problems.push("a config key has an empty name".into());
            }
            if k.description.trim().is_empty() {
                problems.push(format!("config key {:?} has no description", k.name));
            }
            if k.required && k.default_value.is_some() {
                problems.push(format!("config key {:?} is required yet has a default", k.name));
            }
        }
        if info.features.contains(Features::CLONE) && !info.features.contains(Features::SNAPSHOT) {
            problems.push("the `clone` feature (create-from-snapshot) needs the `snapshot` feature".into());
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let kind = match info.kind {
            VolumeKind::Block => "block",
            VolumeKind::File => "file",
            VolumeKind::Object => "object",
        };
        pass(format!(
            "{} {} ({kind}); features: [{}]; config keys: [{}]",
            info.name,
            info.version,
            info.features.names().join(", "),
            info.config_keys
                .iter()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    async fn check_unknown_key(&mut self) -> Check {
        let Some(driver) = &self.driver else {
            return skip("the driver did not load");
        };
        let mut config = self.opts.config.clone();
        config.push((UNKNOWN_KEY.into(), "1".into()));
        let spec = self.backend_spec("conformance-unknown-key", config);
        match self.runtime.open_backend(driver, spec).await {
            Ok(_) => Err(format!(
                "configure accepted the unknown key {UNKNOWN_KEY:?}: unknown keys must be refused with `invalid` naming the key, so typos do not pass silently"
            )),
            Err(RuntimeError::Configure(CallError::Driver(DriverError::Invalid(f)))) if f.field == UNKNOWN_KEY => {
                pass(format!("refused: {}", f.reason))
            }
            Err(RuntimeError::Configure(CallError::Driver(DriverError::Invalid(f)))) => Err(format!(
                "refused, but naming the field {:?} instead of the unknown key {UNKNOWN_KEY:?} ({})",
                f.field, f.reason
            )),
            Err(e) => Err(format!(
                "expected `invalid` naming {UNKNOWN_KEY:?}, got: {}",
                describe_runtime_error(&e)
            )),
        }
    }

    async fn check_required_keys(&mut self) -> Check {
        let (Some(driver), Some(info)) = (&self.driver, &self.info) else {
            return skip("the driver did not load");
        };
        let required: Vec<&str> = info
            .config_keys
            .iter()
            .filter(|k| k.required)
            .map(|k| k.name.as_str())
            .collect();
        if required.is_empty() {
            return skip("the driver declares no required config keys");
        }
        let mut problems = Vec::new();
        for key in &required {
            let config: Vec<(String, String)> = self.opts.config.iter().filter(|(k, _)| k != key).cloned().collect();
            let spec = self.backend_spec("conformance-missing-key", config);
            match self.runtime.open_backend(driver, spec).await {
                Ok(_) => problems.push(format!("configure accepted a config without the required key {key:?}")),
                Err(RuntimeError::Configure(CallError::Driver(DriverError::Invalid(f)))) if f.field == *key => {}
                Err(e) => problems.push(format!(
                    "without {key:?}: expected `invalid` naming {key:?}, got: {}",
                    describe_runtime_error(&e)
                )),
            }
        }
        if problems.is_empty() {
            pass(format!("each missing required key is named: {}", required.join(", ")))
        } else {
            Err(problems.join("\n"))
        }
    }

    async fn open(&mut self) -> Check {
        let Some(driver) = &self.driver else {
            return skip("the driver did not load");
        };
        let spec = self.backend_spec("conformance", self.opts.config.clone());
        let backend = self.runtime.open_backend(driver, spec).await.map_err(|e| {
            format!(
                "opening a backend with the given config failed: {}",
                describe_runtime_error(&e)
            )
        })?;
        let info = ok("info on the configured backend", backend.info().await)?;
        let loaded = self.info.as_ref().expect("loaded");
        if info.name != loaded.name || info.kind != loaded.kind || info.features != loaded.features {
            return Err(format!(
                "info() differs once configured: name {:?}/{:?}, features [{}]/[{}]; the host records info() at install time",
                loaded.name,
                info.name,
                loaded.features.names().join(", "),
                info.features.names().join(", ")
            ));
        }
        self.backend = Some(backend);
        pass(format!("pool dir {}", self.pool_dir.display()))
    }

    // ---- pools -------------------------------------------------------------------------

    async fn check_pools(&mut self) -> Check {
        let backend = match self.backend() {
            Ok(b) => b,
            Err(v) => return Ok(v),
        };
        let pools = ok("pools", backend.pools().await)?;
        if pools.is_empty() {
            return Err("pools() returned no pool: volumes could never be placed".into());
        }
        let mut problems = Vec::new();
        let mut names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        names.sort();
        if names.windows(2).any(|w| w[0] == w[1]) {
            problems.push("pool names are not unique".to_string());
        }
        for p in &pools {
            if p.name.trim().is_empty() {
                problems.push("a pool has an empty name".into());
            }
            if let (Capacity::Bytes(total), Capacity::Bytes(free)) = (&p.total, &p.free)
                && free > total
            {
                problems.push(format!("pool {}: free {free} > total {total}", p.name));
            }
            if p.reserved_percentage > 100 {
                problems.push(format!(
                    "pool {}: reserved-percentage {} > 100",
                    p.name, p.reserved_percentage
                ));
            }
            let ratio = p.max_over_subscription_ratio.trim();
            if ratio != "auto" && !ratio.parse::<f64>().is_ok_and(|r| r.is_finite() && r >= 1.0) {
                problems.push(format!(
                    "pool {}: max-over-subscription-ratio {ratio:?} is neither `auto` nor a number >= 1.0",
                    p.name
                ));
            }
            if !p.thin_provisioning && !p.thick_provisioning {
                problems.push(format!("pool {}: neither thin nor thick provisioning", p.name));
            }
            if p.capabilities.iter().any(|(k, _)| k.trim().is_empty()) {
                problems.push(format!("pool {}: a capability has an empty name", p.name));
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let first = &pools[0];
        let detail = format!(
            "{} pool(s); {}: total {:?}, free {:?}, provisioned {}",
            pools.len(),
            first.name,
            first.total,
            first.free,
            first.provisioned_bytes
        );
        self.pool = Some(first.name.clone());
        pass(detail)
    }

    // ---- create ------------------------------------------------------------------------

    async fn check_create(&mut self) -> Check {
        if self.pool.is_none() {
            return skip("needs a pool from `pools`");
        }
        let backend = match self.backend() {
            Ok(b) => b,
            Err(v) => return Ok(v),
        };
        let spec = self.spec(&self.id("vol"), self.opts.size_bytes);
        let volume = ok("create", backend.create(&spec).await)?;
        let mut problems = Vec::new();
        if volume.id != spec.id {
            problems.push(format!("returned id {:?}, not the requested {:?}", volume.id, spec.id));
        }
        if volume.size_bytes < spec.size_bytes {
            problems.push(format!(
                "returned size {} < requested {}",
                volume.size_bytes, spec.size_bytes
            ));
        }
        if volume.pool != spec.pool {
            problems.push(format!("returned pool {:?}, not {:?}", volume.pool, spec.pool));
        }
        let listed = self.ids_listed().await?;
        if !listed.contains(&spec.id) {
            problems.push(format!("list-volumes does not show {}", spec.id));
        }
        self.volume = Some(volume.clone());
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        pass(format!(
            "{} ({} bytes, {})",
            volume.id, volume.size_bytes, volume.backend_ref
        ))
    }

    async fn check_create_idempotent(&mut self) -> Check {
        let Some(first) = self.volume.clone() else {
            return skip("needs the volume from `create`");
        };
        let backend = match self.backend() {
            Ok(b) => b,
            Err(v) => return Ok(v),
        };
        let before = self.ids_listed().await?;
        let spec = self.spec(&first.id, self.opts.size_bytes);
        let again = backend.create(&spec).await.map_err(|e| {
            format!("a repeated create with the same id and spec failed with `{e}`; it must return the existing volume")
        })?;
        let after = self.ids_listed().await?;
        let mut problems = Vec::new();
        if after.len() != before.len() {
            let times = after.iter().filter(|id| **id == first.id).count();
            let new: Vec<&str> = after
                .iter()
                .filter(|id| !before.contains(id))
                .map(String::as_str)
                .collect();
            let seen = if times > 1 {
                format!("{} is listed {times} times", first.id)
            } else {
                format!("new: {}", new.join(", "))
            };
            problems.push(format!(
                "a repeated create with the same id made a second volume: list-volumes went from {} to {} volumes ({seen}). \
                 create must be idempotent: a retry after a crash or timeout must return the existing volume",
                before.len(),
                after.len(),
            ));
        }
        if again != first {
            problems.push(format!(
                "the repeated create returned {again:?}, the first {first:?}; both must be the same volume"
            ));
        }
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        pass(format!("same volume, list-volumes still has {}", after.len()))
    }

    async fn check_create_conflict(&mut self) -> Check {
        let Some(first) = self.volume.clone() else {
            return skip("needs the volume from `create`");
        };
        let backend = match self.backend() {
            Ok(b) => b,
            Err(v) => return Ok(v),
        };
        let spec = self.spec(&first.id, self.opts.size_bytes * 2);
        let e = expect_err(
            "create with an existing id and a different size",
            "already-exists",
            backend.create(&spec).await,
        )?;
        pass(e.message())
    }

    async fn check_invalid_size(&mut self) -> Check {
        if self.pool.is_none() {
            return skip("needs a pool from `pools`");
        }
        let backend = match self.backend() {
            Ok(b) => b,
            Err(v) => return Ok(v),
        };
        let spec = self.spec(&self.id("zero"), 0);
        let result = backend.create(&spec).await;
        if result.is_ok() {
            // Do not leave it behind.
            let _ = backend.delete(&spec.id).await;
        }
        match expect_err("create with size 0", "invalid", result)? {
            DriverError::Invalid(f) if f.field.trim().is_empty() => Err(format!(
                "refused with `invalid`, but without naming the field ({})",
                f.reason
            )),
            DriverError::Invalid(f) => pass(format!("invalid {}: {}", f.field, f.reason)),
            other => Err(format!("unexpected {other:?}")),
        }
    }

    async fn check_not_found(&mut self) -> Check {
        let backend = match self.backend() {
            Ok(b) => b,
            Err(v) => return Ok(v),
        };
        let missing = self.id("missing");
        let node = self.node();
        let mut problems = Vec::new();
        if let Err(e) = expect_err(
            "attach of a missing volume",
            "not-found",
            backend.attach(&missing, &node).await,
        ) {
            problems.push(e);
        }
        if self.has(Features::STATS)
            && let Err(e) = expect_err("stats of a missing volume", "not-found", backend.stats(&missing).await)
        {
            problems.push(e);
        }
        if self.has(Features::RESIZE) {
            let r = backend.resize(&missing, self.opts.size_bytes).await;
            if let Err(e) = expect_err("resize of a missing volume", "not-found", r) {
                problems.push(e);
            }
        }
        if self.has(Features::SNAPSHOT) {
            let spec = SnapshotSpec {
                id: self.id("missing-snap"),
                volume_id: missing.clone(),
                name: "missing".into(),
            };
            if let Err(e) = expect_err(
                "snapshot-create of a missing volume",
                "not-found",
                backend.snapshot_create(&spec).await,
            ) {
                problems.push(e);
            }
        }
        if problems.is_empty() {
            pass("calls on a missing volume answer `not-found`")
        } else {
            Err(problems.join("\n"))
        }
    }

    async fn check_stats(&mut self) -> Check {
        let Some(volume) = self.volume.clone() else {
            return skip("needs the volume from `create`");
        };
        let backend = match self.backend() {
            Ok(b) => b,
            Err(v) => return Ok(v),
        };
        if !self.has(Features::STATS) {
            // Without the feature, stats may still answer (estimated) or be unsupported.
            return match backend.stats(&volume.id).await {
                Ok(s) => pass(format!("no `stats` feature; answered {s:?}")),
                Err(CallError::Driver(DriverError::Unsupported(_))) => {
                    pass("no `stats` feature; answered `unsupported`")
                }
                Err(e) => Err(format!("stats failed with `{e}`; expected figures or `unsupported`")),
            };
        }
        let stats = ok("stats", backend.stats(&volume.id).await)?;
        if stats.size_bytes < self.opts.size_bytes {
            return Err(format!(
                "stats size {} < created size {}",
                stats.size_bytes, self.opts.size_bytes
            ));
        }
        pass(format!(
            "size {}, used {}, objects {:?}",
            stats.size_bytes, stats.used_bytes, stats.objects
        ))
    }

    async fn check_resize(&mut self) -> Check {
        let Some(volume) = self.volume.clone() else {
            return skip("needs the volume from `create`");
        };
        let backend = match self.backend() {
            Ok(b) => b,
            Err(v) => return Ok(v),
        };
        let bigger = volume.size_bytes * 2;
        let has = self.has(Features::RESIZE);
        let Some(grown) = optional("resize", has, "resize (grow)", backend.resize(&volume.id, bigger).await)? else {
            return pass("`unsupported`, as info() says");
        };
        if grown.size_bytes < bigger {
            return Err(format!("resize to {bigger} returned size {}", grown.size_bytes));
        }
        let again = ok(
            "a repeated resize to the same size",
            backend.resize(&volume.id, bigger).await,
        )?;
        if again.size_bytes != grown.size_bytes {
            return Err(format!(
                "a repeated resize returned size {}, the first {}",
                again.size_bytes, grown.size_bytes
            ));
        }
        let shrink = backend.resize(&volume.id, volume.size_bytes).await;
        let e = expect_err("resize to a smaller size", "invalid", shrink)?;
        self.volume = Some(grown.clone());
        pass(format!(
            "grew to {}, repeat ok, shrink refused ({})",
            grown.size_bytes,
            e.message()
        ))
    }

    // ---- snapshots -----------------------------------------------------------------------

    async fn check_snapshot(&mut self) -> Check {
        let Some(volume) = self.volume.clone() else {
            return skip("needs the volume from `create`");
        };
        let backend = match self.backend() {
            Ok(b) => b,
            Err(v) => return Ok(v),
        };
        let spec = SnapshotSpec {
            id: self.id("snap"),
            volume_id: volume.id.clone(),
            name: "conformance".into(),
        };
        let has = self.has(Features::SNAPSHOT);
        let Some(first) = optional("snapshot", has, "snapshot-create", backend.snapshot_create(&spec).await)? else {
            return pass("`unsupported`, as info() says");
        };
        self.snapshot = Some(first.clone());
        let backend = self.backend.as_ref().expect("checked");
        let again = backend.snapshot_create(&spec).await.map_err(|e| {
            format!(
                "a repeated snapshot-create with the same id failed with `{e}`; it must return the existing snapshot"
            )
        })?;
        let mut problems = Vec::new();
        if first.id != spec.id || first.volume_id != volume.id {
            problems.push(format!("returned {first:?} for {spec:?}"));
        }
        if again != first {
            problems.push(format!(
                "the repeated snapshot-create returned {again:?}, the first {first:?}"
            ));
        }
        if problems.is_empty() {
            pass(format!(
                "{} ({} bytes, {}), repeat returns it",
                first.id, first.size_bytes, first.backend_ref
            ))
        } else {
            Err(problems.join("\n"))
        }
    }

    async fn check_clone(&mut self) -> Check {
        let backend = match self.backend() {
            Ok(b) => b,
            Err(v) => return Ok(v),
        };
        let has = self.has(Features::CLONE);
        let snapshot_id = match (&self.snapshot, has) {
            (Some(s), _) => s.id.clone(),
            (None, true) => return skip("needs the snapshot from `snapshot-create`"),
            // Without the feature any id must be refused as unsupported.
            (None, false) => self.id("snap"),
        };
        if self.pool.is_none() {
            return skip("needs a pool from `pools`");
        }
        let size = self
            .snapshot
            .as_ref()
            .map_or(self.opts.size_bytes, |s| s.size_bytes.max(1));
        let spec = self.spec(&self.id("clone"), size);
        let before = self.ids_listed().await?;
        let first = backend.create_from_snapshot(&spec, &snapshot_id).await;
        let Some(first) = optional("clone", has, "create-from-snapshot", first)? else {
            return pass("`unsupported`, as info() says");
        };
        let again = backend.create_from_snapshot(&spec, &snapshot_id).await.map_err(|e| {
            format!("a repeated create-from-snapshot failed with `{e}`; it must return the existing volume")
        })?;
        let after = self.ids_listed().await?;
        let deleted = backend.delete(&spec.id).await;
        let mut problems = Vec::new();
        if after.len() != before.len() + 1 {
            problems.push(format!(
                "create-from-snapshot twice with the same id changed list-volumes from {} to {} volumes; expected exactly one new volume",
                before.len(),
                after.len()
            ));
        }
        if again != first {
            problems.push(format!(
                "the repeated create-from-snapshot returned {again:?}, the first {first:?}"
            ));
        }
        if first.size_bytes < size {
            problems.push(format!("returned size {} < requested {size}", first.size_bytes));
        }
        if let Err(e) = deleted {
            problems.push(format!("deleting the clone failed: {e}"));
        }
        if problems.is_empty() {
            pass(format!("{} from {snapshot_id}, repeat returns it, deleted", first.id))
        } else {
            Err(problems.join("\n"))
        }
    }

    // ---- attach / detach / qos ---------------------------------------------------------------

    async fn check_attach(&mut self) -> Check {
        let Some(volume) = self.volume.clone() else {
            return skip("needs the volume from `create`");
        };
        let backend = match self.backend() {
            Ok(b) => b,
            Err(v) => return Ok(v),
        };
        let node = self.node();
        let first = ok("attach", backend.attach(&volume.id, &node).await)?;
        let again = ok("a repeated attach", backend.attach(&volume.id, &node).await)?;
        if again != first {
            return Err(format!(
                "a repeated attach returned {again:?}, the first {first:?}; both must be the same connection"
            ));
        }
        let kind = self.info.as_ref().map(|i| i.kind);
        let (name, fits) = match &first {
            Connection::ImageFile(c) => {
                check_pool_path(&self.pool_dir, &c.path)?;
                ("image-file", kind == Some(VolumeKind::Block))
            }
            Connection::Directory(path) => {
                check_pool_path(&self.pool_dir, path)?;
                ("directory", kind == Some(VolumeKind::File))
            }
            Connection::Nfs(_) => ("nfs", kind == Some(VolumeKind::File)),
            Connection::Iscsi(_) => ("iscsi", kind == Some(VolumeKind::Block)),
            Connection::S3(_) => ("s3", kind == Some(VolumeKind::Object)),
            Connection::Other(_) => ("other", true),
        };
        if !fits {
            return Err(format!(
                "a `{name}` connection does not fit the driver's volume kind {kind:?}"
            ));
        }
        if let Some(host) = self.opts.bring_up.clone() {
            let shown = host
                .exercise(&volume.id, &self.pool_dir, &first)
                .await
                .map_err(|e| format!("{name} connection, brought up on this host: {e}"))?;
            return pass(format!("{name} connection, the same twice; on this host: {shown}"));
        }
        pass(format!("{name} connection, the same twice"))
    }

    async fn check_detach(&mut self) -> Check {
        let Some(volume) = self.volume.clone() else {
            return skip("needs the volume from `create`");
        };
        let backend = match self.backend() {
            Ok(b) => b,
            Err(v) => return Ok(v),
        };
        let node = self.node();
        ok("detach", backend.detach(&volume.id, &node).await)?;
        ok(
            "a repeated detach (not attached any more)",
            backend.detach(&volume.id, &node).await,
        )?;
        pass("twice ok")
    }

    async fn check_qos(&mut self) -> Check {
        let Some(volume) = self.volume.clone() else {
            return skip("needs the volume from `create`");
        };
        let backend = match self.backend() {
            Ok(b) => b,
            Err(v) => return Ok(v),
        };
        let qos = Qos {
            iops: Some(1000),
            bandwidth_bytes_per_sec: Some(50 << 20),
        };
        let has = self.has(Features::QOS);
        match optional("qos", has, "set-qos", backend.set_qos(&volume.id, &qos).await)? {
            Some(()) => pass("limits set"),
            None => pass("`unsupported`, as info() says"),
        }
    }

    // ---- deletes and cleanup ---------------------------------------------------------------

    async fn check_snapshot_delete(&mut self) -> Check {
        let backend = match self.backend() {
            Ok(b) => b,
            Err(v) => return Ok(v),
        };
        let Some(snapshot) = self.snapshot.clone() else {
            if self.has(Features::SNAPSHOT) {
                return skip("needs the snapshot from `snapshot-create`");
            }
            let r = backend.snapshot_delete(&self.id("snap")).await;
            optional("snapshot", false, "snapshot-delete", r)?;
            return pass("`unsupported`, as info() says");
        };
        ok("snapshot-delete", backend.snapshot_delete(&snapshot.id).await)?;
        ok(
            "a repeated snapshot-delete (already gone)",
            backend.snapshot_delete(&snapshot.id).await,
        )?;
        self.snapshot = None;
        pass("twice ok")
    }

    async fn check_delete(&mut self) -> Check {
        let Some(volume) = self.volume.clone() else {
            return skip("needs the volume from `create`");
        };
        let backend = match self.backend() {
            Ok(b) => b,
            Err(v) => return Ok(v),
        };
        ok("delete", backend.delete(&volume.id).await)?;
        ok("a repeated delete (already gone)", backend.delete(&volume.id).await)?;
        self.volume = None;
        let listed = self.ids_listed().await?;
        if listed.contains(&volume.id) {
            return Err(format!("list-volumes still shows {} after delete", volume.id));
        }
        pass("twice ok, gone from list-volumes")
    }

    /// Best-effort removal of everything this run may have made, then the check that nothing
    /// with the run's prefix is left.
    async fn check_cleanup(&mut self) -> Check {
        let backend = match self.backend() {
            Ok(b) => b,
            Err(v) => return Ok(v),
        };
        for what in ["clone", "zero"] {
            let _ = backend.delete(&self.id(what)).await;
        }
        if self.has(Features::SNAPSHOT) {
            let _ = backend.snapshot_delete(&self.id("snap")).await;
        }
        let _ = backend.delete(&self.id("vol")).await;
        let left: Vec<String> = self
            .ids_listed()
            .await?
            .into_iter()
            .filter(|id| id.starts_with(&self.prefix))
            .collect();
        if !left.is_empty() {
            // Try once more so a failing driver does not leak into a shared pool.
            for id in &left {
                let _ = backend.delete(id).await;
            }
            return Err(format!(
                "after deleting everything the suite made, list-volumes still has: {}",
                left.join(", ")
            ));
        }
        pass(format!("no volume with prefix {} left", self.prefix))
    }
}
