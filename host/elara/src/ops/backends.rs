//! Drivers (code) and backends (named, configured instances of a driver, each its own sandbox).
//!
//! A driver's bytes are stored content-addressed in the metadata store (`blobs/<sha256>/<chunk>`)
//! so every node loads the same code; the [`Registry`] opens a backend's sandbox lazily on first use
//! on each node and re-opens it when its record or its driver changes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use elara_runtime::{Backend, BackendSpec, Driver, HostGrant, Limits, Runtime};
use elara_store::{Store, StoreExt};
use tokio::sync::Mutex;

use super::{Elara, absent, del, put, raced, rev};
use crate::error::{ApiError, ApiResult};
use crate::model::{BackendLimits, BackendRecord, DriverRecord, SCHEMA, Scope, keys, now};
use crate::validate::check_name;

/// Chunk size for driver bytes in the store (etcd keeps values under 1.5 MiB).
const CHUNK: usize = 1 << 20;

/// Open backend sandboxes on this node, keyed by backend name.
pub struct Registry {
    store: Arc<dyn Store>,
    runtime: Runtime,
    pools_dir: PathBuf,
    drivers: Mutex<HashMap<String, Driver>>,
    open: Mutex<HashMap<String, (i64, String, Backend)>>,
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, runtime: Runtime, pools_dir: PathBuf) -> Self {
        Registry {
            store,
            runtime,
            pools_dir,
            drivers: Mutex::default(),
            open: Mutex::default(),
        }
    }

    pub fn pool_dir(&self, backend: &str) -> PathBuf {
        self.pools_dir.join(backend)
    }

    /// The backend's record and an open sandbox for it.
    pub async fn get(&self, name: &str) -> ApiResult<(BackendRecord, Backend)> {
        let rec = self
            .store
            .get_json::<BackendRecord>(&keys::backend(name))
            .await?
            .ok_or_else(|| ApiError::not_found("backend", name).with_field("backend"))?;
        let driver_rec = self
            .store
            .get_json::<DriverRecord>(&keys::driver(&rec.value.driver))
            .await?
            .ok_or_else(|| {
                ApiError::internal(format!(
                    "backend {name} uses driver {:?}, which is not installed",
                    rec.value.driver
                ))
            })?;
        if let Some((revision, sha, backend)) = self.open.lock().await.get(name)
            && *revision == rec.revision
            && *sha == driver_rec.value.sha256
        {
            return Ok((rec.value, backend.clone()));
        }
        let driver = self.driver(&driver_rec.value).await?;
        let backend = self
            .runtime
            .open_backend(&driver, spec_for(&rec.value, self.pool_dir(name)))
            .await
            .map_err(|e| ApiError::new(502, "driver-failed", format!("backend {name}: {e}")))?;
        self.open.lock().await.insert(
            name.to_string(),
            (rec.revision, driver_rec.value.sha256.clone(), backend.clone()),
        );
        Ok((rec.value, backend))
    }

    /// A loaded driver, from memory or from the store's blobs.
    pub async fn driver(&self, rec: &DriverRecord) -> ApiResult<Driver> {
        if let Some(d) = self.drivers.lock().await.get(&rec.sha256) {
            return Ok(d.clone());
        }
        let bytes = load_blob(self.store.as_ref(), &rec.sha256, rec.chunks).await?;
        let driver = self
            .runtime
            .load_driver(&bytes)
            .await
            .map_err(|e| ApiError::internal(format!("driver {} ({}): {e}", rec.name, rec.sha256)))?;
        self.drivers.lock().await.insert(rec.sha256.clone(), driver.clone());
        Ok(driver)
    }

    pub async fn forget(&self, backend: &str) {
        self.open.lock().await.remove(backend);
    }
}

/// The network grants of a backend: what its sandbox may reach, and so what the host may connect
/// to for its volumes.
pub(crate) fn grants_of(rec: &BackendRecord) -> Vec<HostGrant> {
    rec.allow_hosts
        .iter()
        .filter_map(|h| h.parse::<HostGrant>().ok())
        .collect()
}

fn spec_for(rec: &BackendRecord, pool_dir: PathBuf) -> BackendSpec {
    BackendSpec {
        name: rec.name.clone(),
        pool_dir,
        config: rec.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        grants: grants_of(rec),
        limits: Limits {
            memory_bytes: rec.limits.memory_bytes,
            call_timeout: Duration::from_secs(rec.limits.call_timeout_secs),
            cpu_budget: Duration::from_secs(rec.limits.cpu_budget_secs),
            ..Limits::default()
        },
    }
}

async fn load_blob(store: &dyn Store, sha256: &str, chunks: usize) -> ApiResult<Vec<u8>> {
    let kvs = store.list(&keys::blob_chunks(sha256)).await?;
    if kvs.len() != chunks {
        return Err(ApiError::internal(format!(
            "driver blob {sha256} has {} of {chunks} chunks in the store",
            kvs.len()
        )));
    }
    let bytes: Vec<u8> = kvs.into_iter().flat_map(|kv| kv.value).collect();
    let got = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if got != sha256 {
        return Err(ApiError::internal(format!(
            "driver blob {sha256} is corrupt in the store (sha256 {got})"
        )));
    }
    Ok(bytes)
}

/// Redact secret config values (as the driver declares them) for output.
pub fn redact(rec: &BackendRecord, driver: Option<&DriverRecord>) -> BackendRecord {
    let secret_keys: Vec<String> = driver
        .and_then(|d| d.info.get("config_keys").and_then(|k| k.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter(|k| k.get("secret").and_then(|s| s.as_bool()).unwrap_or(false))
        .filter_map(|k| k.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .collect();
    let mut out = rec.clone();
    for (k, v) in out.config.iter_mut() {
        if secret_keys.contains(k) || crate::redact::looks_secret(k) {
            *v = crate::redact::MASK.into();
        }
    }
    out
}

/// What `driver install` takes.
pub struct InstallDriver {
    pub name: Option<String>,
    pub bytes: Vec<u8>,
    pub upgrade: bool,
    pub builtin: bool,
}

impl Elara {
    /// Validate a driver component and record it; the bytes go to the store first (content
    /// addressed, so a crash leaves at most unreferenced chunks that the next install reuses).
    pub async fn install_driver(&self, req: InstallDriver) -> ApiResult<DriverRecord> {
        if req.bytes.is_empty() {
            return Err(ApiError::invalid("file", "is empty"));
        }
        let driver = self
            .runtime
            .load_driver(&req.bytes)
            .await
            .map_err(|e| ApiError::invalid("file", format!("not a usable Elara driver: {e}")))?;
        let info = driver.info().clone();
        let name = req.name.clone().unwrap_or_else(|| info.name.clone());
        check_name("name", &name)?;
        let key = keys::driver(&name);
        let existing = self.get::<DriverRecord>(&key).await?;
        if let Some(old) = &existing {
            if old.value.sha256 == driver.sha256() {
                return Ok(old.value.clone());
            }
            if !req.upgrade {
                return Err(ApiError::conflict(format!(
                    "driver {name:?} is already installed with sha256 {}; use --upgrade to replace it",
                    old.value.sha256
                ))
                .with_field("name"));
            }
        }
        let chunks: Vec<&[u8]> = req.bytes.chunks(CHUNK).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            self.store
                .put(&keys::blob_chunk(driver.sha256(), i), chunk.to_vec(), None)
                .await?;
        }
        let rec = DriverRecord {
            v: SCHEMA,
            name: name.clone(),
            sha256: driver.sha256().to_string(),
            size: req.bytes.len(),
            chunks: chunks.len(),
            wit_version: elara_runtime::WIT_VERSION.to_string(),
            info: serde_json::to_value(&info).map_err(|e| ApiError::internal(e.to_string()))?,
            builtin: req.builtin,
            installed_at: now(),
        };
        let cmp = match &existing {
            Some(old) => rev(key.clone(), old.revision),
            None => absent(key.clone()),
        };
        if !self.txn(vec![cmp], vec![put(key, &rec)]).await? {
            return Err(raced("driver", &name));
        }
        if let Some(old) = existing {
            self.gc_blob(&old.value.sha256).await?;
        }
        tracing::info!(driver = %name, sha256 = %rec.sha256, "driver installed");
        Ok(rec)
    }

    pub async fn list_drivers(&self) -> ApiResult<Vec<DriverRecord>> {
        Ok(self
            .store
            .list_json::<DriverRecord>(&keys::drivers())
            .await?
            .into_iter()
            .map(|r| r.value)
            .collect())
    }

    pub async fn driver_record(&self, name: &str) -> ApiResult<DriverRecord> {
        Ok(self
            .get::<DriverRecord>(&keys::driver(name))
            .await?
            .ok_or_else(|| ApiError::not_found("driver", name))?
            .value)
    }

    pub async fn remove_driver(&self, name: &str) -> ApiResult<()> {
        let rec = self
            .get::<DriverRecord>(&keys::driver(name))
            .await?
            .ok_or_else(|| ApiError::not_found("driver", name))?;
        let users: Vec<String> = self
            .list_backends_raw()
            .await?
            .into_iter()
            .filter(|b| b.driver == name)
            .map(|b| b.name)
            .collect();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "driver {name:?} is used by backends {users:?}; remove them first"
            )));
        }
        if !self
            .txn(
                vec![rev(keys::driver(name), rec.revision)],
                vec![del(keys::driver(name))],
            )
            .await?
        {
            return Err(raced("driver", name));
        }
        self.gc_blob(&rec.value.sha256).await
    }

    /// Drop a blob no driver record refers to any more.
    async fn gc_blob(&self, sha256: &str) -> ApiResult<()> {
        if self.list_drivers().await?.iter().any(|d| d.sha256 == sha256) {
            return Ok(());
        }
        for key in self.store.list_keys(&keys::blob_chunks(sha256)).await? {
            self.store.delete(&key).await?;
        }
        Ok(())
    }

    /// Install the built-in drivers shipped beside the binary, and the default `local` backend.
    pub async fn install_builtin(&self) -> anyhow::Result<()> {
        let Some(dir) = self.cfg.drivers_dir.clone() else {
            tracing::warn!("no built-in drivers directory found (set --drivers-dir); none installed");
            return Ok(());
        };
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        {
            let name = path.file_stem().unwrap_or_default().to_string_lossy().to_string();
            let bytes = std::fs::read(&path)?;
            let current = self.get::<DriverRecord>(&keys::driver(&name)).await?;
            // A user-installed driver of the same name is left alone.
            if current.as_ref().is_some_and(|c| !c.value.builtin) {
                continue;
            }
            let req = InstallDriver {
                name: Some(name.clone()),
                bytes,
                upgrade: true,
                builtin: true,
            };
            if let Err(e) = self.install_driver(req).await {
                tracing::error!(driver = %name, "built-in driver not installed: {e}");
            }
        }
        let made = keys::default_backend_made();
        if self.store.get(&made).await?.is_none() && self.store.get(&keys::driver("local")).await?.is_some() {
            let req = AddBackend {
                name: "local".into(),
                driver: "local".into(),
                ..Default::default()
            };
            match self.add_backend(req).await {
                Ok(_) => {}
                Err(e) if e.status == 409 => {}
                Err(e) => anyhow::bail!("creating the default backend `local`: {e}"),
            }
            self.store.put(&made, b"1".to_vec(), None).await?;
        }
        Ok(())
    }
}

/// What `backend add` / `backend update` take.
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct AddBackend {
    pub name: String,
    pub driver: String,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Memory cap, e.g. `256M`.
    pub memory: Option<String>,
    /// Wall-clock limit per driver call, e.g. `5m`.
    pub call_timeout: Option<String>,
}

/// Changes for `backend update`: config keys to set (empty value removes), grants and limits.
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct UpdateBackend {
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    pub allow_hosts: Option<Vec<String>>,
    pub memory: Option<String>,
    pub call_timeout: Option<String>,
}

impl Elara {
    async fn build_backend(
        &self,
        name: &str,
        driver_name: &str,
        config: BTreeMap<String, String>,
        allow_hosts: Vec<String>,
        limits: BackendLimits,
    ) -> ApiResult<BackendRecord> {
        let driver_rec = self
            .get::<DriverRecord>(&keys::driver(driver_name))
            .await?
            .ok_or_else(|| {
                ApiError::invalid(
                    "driver",
                    format!("no driver named {driver_name:?} is installed (see `elara driver list`)"),
                )
            })?
            .value;
        for h in &allow_hosts {
            h.parse::<HostGrant>()
                .map_err(|e| ApiError::invalid("allow-host", format!("{h:?}: {e}")))?;
        }
        let node_scoped = driver_rec
            .info
            .get("notes")
            .and_then(|n| n.as_array())
            .is_some_and(|notes| notes.iter().any(|p| p[0] == "scope" && p[1] == "node"));
        let rec = BackendRecord {
            v: SCHEMA,
            name: name.to_string(),
            driver: driver_name.to_string(),
            config,
            allow_hosts,
            limits,
            scope: if node_scoped { Scope::Node } else { Scope::Cluster },
            created_at: now(),
            updated_at: now(),
        };
        // Validate in a throw-away sandbox: the driver's `configure` judges the config.
        let driver = self.backends.driver(&driver_rec).await?;
        self.runtime
            .open_backend(&driver, spec_for(&rec, self.backends.pool_dir(name)))
            .await
            .map_err(|e| match e {
                elara_runtime::RuntimeError::Configure(call) => ApiError::from_call(name, call),
                other => ApiError::new(502, "driver-failed", format!("backend {name}: {other}")),
            })?;
        Ok(rec)
    }

    pub async fn add_backend(&self, req: AddBackend) -> ApiResult<BackendRecord> {
        check_name("name", &req.name)?;
        let key = keys::backend(&req.name);
        if self.store.get(&key).await?.is_some() {
            return Err(ApiError::conflict(format!("backend {:?} already exists", req.name)).with_field("name"));
        }
        let limits = limits_from(
            &BackendLimits::default(),
            req.memory.as_deref(),
            req.call_timeout.as_deref(),
        )?;
        let rec = self
            .build_backend(&req.name, &req.driver, req.config, req.allow_hosts, limits)
            .await?;
        if !self.txn(vec![absent(key.clone())], vec![put(key, &rec)]).await? {
            return Err(ApiError::conflict(format!("backend {:?} already exists", req.name)).with_field("name"));
        }
        tracing::info!(backend = %rec.name, driver = %rec.driver, "backend added");
        if let Err(e) = self.refresh_backend_pools(&rec.name).await {
            tracing::warn!(backend = %rec.name, "first pool report failed: {e}");
        }
        Ok(rec)
    }

    pub async fn update_backend(&self, name: &str, req: UpdateBackend) -> ApiResult<BackendRecord> {
        let cur = self
            .get::<BackendRecord>(&keys::backend(name))
            .await?
            .ok_or_else(|| ApiError::not_found("backend", name))?;
        let mut config = cur.value.config.clone();
        for (k, v) in req.config {
            if v.is_empty() {
                config.remove(&k);
            } else {
                config.insert(k, v);
            }
        }
        let limits = limits_from(&cur.value.limits, req.memory.as_deref(), req.call_timeout.as_deref())?;
        let hosts = req.allow_hosts.unwrap_or_else(|| cur.value.allow_hosts.clone());
        let mut rec = self
            .build_backend(name, &cur.value.driver, config, hosts, limits)
            .await?;
        rec.created_at = cur.value.created_at;
        if !self
            .txn(
                vec![rev(keys::backend(name), cur.revision)],
                vec![put(keys::backend(name), &rec)],
            )
            .await?
        {
            return Err(raced("backend", name));
        }
        self.backends.forget(name).await;
        Ok(rec)
    }

    pub async fn list_backends_raw(&self) -> ApiResult<Vec<BackendRecord>> {
        Ok(self
            .store
            .list_json::<BackendRecord>(&keys::backends())
            .await?
            .into_iter()
            .map(|r| r.value)
            .collect())
    }

    /// Backends as shown to users: secrets redacted.
    pub async fn list_backends(&self) -> ApiResult<Vec<BackendRecord>> {
        let drivers = self.list_drivers().await?;
        Ok(self
            .list_backends_raw()
            .await?
            .iter()
            .map(|b| redact(b, drivers.iter().find(|d| d.name == b.driver)))
            .collect())
    }

    pub async fn backend_view(&self, name: &str) -> ApiResult<BackendRecord> {
        let rec = self
            .get::<BackendRecord>(&keys::backend(name))
            .await?
            .ok_or_else(|| ApiError::not_found("backend", name))?;
        let driver = self.get::<DriverRecord>(&keys::driver(&rec.value.driver)).await?;
        Ok(redact(&rec.value, driver.as_ref().map(|d| &d.value)))
    }

    pub async fn remove_backend(&self, name: &str) -> ApiResult<()> {
        let rec = self
            .get::<BackendRecord>(&keys::backend(name))
            .await?
            .ok_or_else(|| ApiError::not_found("backend", name))?;
        let owned: Vec<String> = self
            .list_volumes_raw()
            .await?
            .into_iter()
            .filter(|v| v.backend == name)
            .map(|v| v.name)
            .collect();
        if !owned.is_empty() {
            return Err(ApiError::conflict(format!(
                "backend {name:?} still owns {} volume(s) ({}); delete them first",
                owned.len(),
                owned.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let snaps = self
            .list_snapshots_raw()
            .await?
            .into_iter()
            .filter(|s| s.backend == name)
            .count();
        if snaps > 0 {
            return Err(ApiError::conflict(format!(
                "backend {name:?} still owns {snaps} snapshot(s); delete them first"
            )));
        }
        let mut ops = vec![del(keys::backend(name))];
        for k in self.store.list_keys(&keys::backend_pools(name)).await? {
            ops.push(del(k));
        }
        if !self.txn(vec![rev(keys::backend(name), rec.revision)], ops).await? {
            return Err(raced("backend", name));
        }
        self.backends.forget(name).await;
        Ok(())
    }
}

fn limits_from(base: &BackendLimits, memory: Option<&str>, timeout: Option<&str>) -> ApiResult<BackendLimits> {
    let mut l = base.clone();
    if let Some(m) = memory {
        l.memory_bytes = crate::validate::parse_size("memory", m)?;
        if l.memory_bytes < 16 << 20 {
            return Err(ApiError::invalid("memory", "must be at least 16M"));
        }
    }
    if let Some(t) = timeout {
        l.call_timeout_secs = crate::validate::parse_duration("call-timeout", t)?.as_secs().max(1);
    }
    Ok(l)
}
