//! [`Runtime`]: the wasmtime engine, the compiled-component cache and driver loading.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::backend::{Backend, Sandbox};
use crate::bindings::{DriverWorld, DriverWorldPre};
use crate::state::StoreState;
use crate::{BackendSpec, CallError, DriverInfo, Limits, RuntimeConfig, RuntimeError};

/// The WIT package version this runtime implements (`elara:driver@0.1.1`); drivers of any
/// `0.1.x` load (wasmtime links a `0.1.0` import to these `0.1.1` definitions).
pub const WIT_VERSION: &str = "0.1.1";

/// The driver runtime: one wasmtime engine (pooling allocator, epoch interruption), one linker
/// with WASI p2, `wasi:http` and the `elara:driver` host imports, and an epoch ticker thread.
/// Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StoreState>,
    pub(crate) cfg: RuntimeConfig,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// A loaded driver: its compiled component, identity and `info`. Cheap to clone.
#[derive(Clone)]
pub struct Driver {
    pub(crate) inner: Arc<DriverInner>,
}

pub(crate) struct DriverInner {
    sha256: String,
    info: DriverInfo,
    size: usize,
    from_cache: bool,
    pub(crate) pre: DriverWorldPre<StoreState>,
}

impl Driver {
    /// Hex sha256 of the component's bytes: its content address.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }
    /// What the driver said about itself in `info()` at load time.
    pub fn info(&self) -> &DriverInfo {
        &self.inner.info
    }
    /// Size of the component in bytes.
    pub fn size(&self) -> usize {
        self.inner.size
    }
    /// Whether the compiled code came from the on-disk cache (no compilation at load).
    pub fn loaded_from_cache(&self) -> bool {
        self.inner.from_cache
    }
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("name", &self.inner.info.name)
            .field("version", &self.inner.info.version)
            .field("sha256", &self.inner.sha256)
            .finish()
    }
}

fn other(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Other(e.to_string())
}

impl Runtime {
    /// Build the engine and linker, create the cache dir and start the epoch ticker.
    pub fn new(cfg: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        if cfg.max_instances == 0 {
            return Err(other("max_instances must be at least 1"));
        }
        if cfg.epoch_tick.is_zero() {
            return Err(other("epoch_tick must be greater than zero"));
        }
        std::fs::create_dir_all(&cfg.cache_dir)?;
        let n = cfg.max_instances;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            // A Rust component holds ~3 core instances, 1 memory and 2 tables; leave headroom.
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(4))
            .total_stacks(n)
            .max_memory_size(4 << 30);
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| other(format!("wasmtime engine: {e:#}")))?;

        let mut linker: Linker<StoreState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(other)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(other)?;
        DriverWorld::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(other)?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (engine2, stop2, tick) = (engine.clone(), stop_ticker.clone(), cfg.epoch_tick);
        std::thread::Builder::new().name("elara-epoch".into()).spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                engine2.increment_epoch();
            }
        })?;
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cfg,
                stop_ticker,
            }),
        })
    }

    /// The wasmtime engine (for tools that want to inspect components).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The configuration this runtime was built with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.cfg
    }

    /// The cache file of a component with this sha256 for this engine.
    pub fn cache_path(&self, sha256: &str) -> PathBuf {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.inner.engine.precompile_compatibility_hash().hash(&mut h);
        self.inner
            .cfg
            .cache_dir
            .join(format!("{sha256}-{:016x}.cwasm", h.finish()))
    }

    /// Compile `wasm` (or load it from the cache), check that it is an `elara:driver@0.1.x`
    /// driver, and call `info()` in a fresh sandbox with no pool dir and no grants.
    pub async fn load_driver(&self, wasm: &[u8]) -> Result<Driver, RuntimeError> {
        check_header(wasm)?;
        let sha256 = hex::encode(Sha256::digest(wasm));
        let cache = self.cache_path(&sha256);
        let engine = self.inner.engine.clone();
        let bytes = wasm.to_vec();
        let (component, from_cache) = tokio::task::spawn_blocking(move || compile_cached(&engine, &bytes, &cache))
            .await
            .map_err(other)??;
        check_world(&self.inner.engine, &component)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| RuntimeError::WrongWorld(format!("{e:#}")))?;
        let pre = DriverWorldPre::new(pre).map_err(|e| RuntimeError::WrongWorld(format!("{e:#}")))?;

        let sandbox = Sandbox::info_only(self.clone(), &sha256, Limits::default());
        let info = sandbox.info_once(&pre).await.map_err(RuntimeError::Info)?;
        Ok(Driver {
            inner: Arc::new(DriverInner {
                sha256,
                info,
                size: wasm.len(),
                from_cache,
                pre,
            }),
        })
    }

    /// Open a backend: create `pool_dir` if missing and validate the config by running
    /// `configure` on a fresh instance (kept as the backend's first idle instance).
    pub async fn open_backend(&self, driver: &Driver, spec: BackendSpec) -> Result<Backend, RuntimeError> {
        Backend::open(self.clone(), driver.clone(), spec).await
    }
}

/// Reject what is not a component before handing it to the compiler, with a clear reason.
fn check_header(wasm: &[u8]) -> Result<(), RuntimeError> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err(RuntimeError::Compile(
            "not WebAssembly: the file does not start with the `\\0asm` header".into(),
        ));
    }
    if wasm[4..8] == [1, 0, 0, 0] {
        return Err(RuntimeError::WrongWorld(
            "this is a core WebAssembly module, not a component: a driver is a component of world \
             `elara:driver/driver-world@0.1.x` (build it for the wasm32-wasip2 target)"
                .into(),
        ));
    }
    Ok(())
}

/// Load `cache` if it exists and deserialises, else compile and write it (temp file + rename).
fn compile_cached(engine: &Engine, wasm: &[u8], cache: &Path) -> Result<(Component, bool), RuntimeError> {
    if cache.exists() {
        // SAFETY: the cache dir holds only files this runtime serialised for an engine with
        // the same compatibility hash (part of the file name); wasmtime checks the header too.
        match unsafe { Component::deserialize_file(engine, cache) } {
            Ok(c) => return Ok((c, true)),
            Err(e) => tracing::warn!(path = %cache.display(), error = %e,
                "compiled-driver cache entry unusable; recompiling"),
        }
    }
    let component = Component::new(engine, wasm).map_err(|e| RuntimeError::Compile(format!("{e:#}")))?;
    match component.serialize() {
        Ok(bytes) => {
            let tmp = cache.with_extension(format!("tmp-{}", std::process::id()));
            let written = std::fs::write(&tmp, &bytes).and_then(|_| std::fs::rename(&tmp, cache));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(path = %cache.display(), error = %e, "could not write the compiled-driver cache");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not serialise the compiled driver"),
    }
    Ok((component, false))
}

/// Check exports and imports by name, so a wrong component gets an error naming what is off.
fn check_world(engine: &Engine, component: &Component) -> Result<(), RuntimeError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let want = "elara:driver/driver@0.1.";
    if !exports.iter().any(|e| e.starts_with(want)) {
        let other_version = exports.iter().find(|e| e.starts_with("elara:driver/driver@"));
        return Err(RuntimeError::WrongWorld(match other_version {
            Some(v) => {
                format!("the component exports `{v}`, but this runtime implements elara:driver@{WIT_VERSION} (0.1.x)")
            }
            None => format!(
                "the component does not export the interface `elara:driver/driver@0.1.x`; its exports are [{}]",
                exports.join(", ")
            ),
        }));
    }
    for (name, _) in ty.imports(engine) {
        let ok = name.starts_with("wasi:")
            || [
                "elara:driver/host@0.1.",
                "elara:driver/log@0.1.",
                "elara:driver/types@0.1.",
            ]
            .iter()
            .any(|p| name.starts_with(p));
        if !ok {
            return Err(RuntimeError::WrongWorld(format!(
                "the component imports `{name}`, which the Elara host does not provide \
                 (it provides wasi 0.2 and elara:driver/{{host,log,types}}@0.1.x)"
            )));
        }
    }
    Ok(())
}

/// Ticks of `tick` that make up `budget` (at least one).
pub(crate) fn ticks(budget: Duration, tick: Duration) -> u64 {
    (budget.as_nanos() / tick.as_nanos().max(1)).max(1) as u64
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Runtime>();
    is::<Driver>();
    is::<CallError>();
}
