//! [`Backend`]: a named, configured sandbox of a driver, with a small pool of idle instances.
//!
//! Every call takes an idle configured instance (or instantiates a new one and runs
//! `configure` on it), runs under the backend's limits, and returns the instance to the pool
//! only after a clean call (an `Ok` or a typed driver error). After a trap, an exceeded budget,
//! a timeout or any other wasmtime error the instance is dropped, so the next call gets a fresh
//! one. Calls never wait for each other: concurrent calls use distinct instances.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wasi_http::WasiHttpCtx;

use crate::bindings::{DriverWorld, DriverWorldPre};
use crate::hostfs::PoolDir;
use crate::net::{HttpHooks, NetPolicy};
use crate::runtime::ticks;
use crate::state::{CapturedStdio, CpuMeter, LogSink, MemoryLimiter, StoreState};
use crate::{
    BackendSpec, CallError, Connection, Driver, DriverError, DriverInfo, Limits, NodeInfo, Pool, Qos,
    Runtime, RuntimeError, Snapshot, SnapshotSpec, Volume, VolumeSpec, VolumeStats,
};

/// Idle configured instances kept per backend (each holds a pooling-allocator slot).
pub const MAX_IDLE_INSTANCES: usize = 4;

/// One live instance of a driver with its store.
pub(crate) struct Instance {
    store: Store<StoreState>,
    bindings: DriverWorld,
}

/// What every instance of one backend shares: name, pool dir, grants, limits.
pub(crate) struct Sandbox {
    runtime: Runtime,
    name: Arc<str>,
    pool: Option<Arc<PoolDir>>,
    policy: NetPolicy,
    limits: Limits,
}

impl Sandbox {
    /// The sandbox that answers `info` at load time: no pool dir, no grants.
    pub(crate) fn info_only(runtime: Runtime, sha256: &str, limits: Limits) -> Sandbox {
        let name: Arc<str> = format!("load:{}", &sha256[..12.min(sha256.len())]).into();
        Sandbox { runtime, policy: NetPolicy::new(name.clone(), Vec::new()), name, pool: None, limits }
    }

    fn new_store(&self) -> Result<Store<StoreState>, CallError> {
        let log = Arc::new(Mutex::new(LogSink::new(self.name.clone(), self.limits.log_bytes_per_call)));
        let mut b = WasiCtxBuilder::new();
        // No env, no args, no stdin (the default is an empty stdin); stdout/stderr into tracing.
        b.stdout(CapturedStdio { sink: log.clone(), stderr: false });
        b.stderr(CapturedStdio { sink: log.clone(), stderr: true });
        if let Some(pool) = &self.pool {
            b.preopened_dir(&pool.path, "/pool", FsPerms::ReadWrite)
                .map_err(|e| CallError::Runtime(format!("preopen {}: {e:#}", pool.path.display())))?;
        }
        let policy = self.policy.clone();
        b.allow_tcp(true).allow_udp(false).allow_ip_name_lookup(self.policy.has_grants());
        b.socket_addr_check(move |addr, usage| {
            let policy = policy.clone();
            Box::pin(async move { policy.socket_allowed(addr, usage).await })
        });
        let state = StoreState {
            wasi: b.build(),
            http: WasiHttpCtx::new(),
            table: wasmtime::component::ResourceTable::new(),
            hooks: HttpHooks { policy: self.policy.clone() },
            limiter: MemoryLimiter::new(self.limits.memory_bytes),
            cpu: CpuMeter { used_ticks: 0, budget_ticks: 1, exceeded: false },
            log,
            pool: self.pool.clone(),
        };
        let mut store = Store::new(&self.runtime.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        // Bounds what the host allocates when lifting a return value or import arguments.
        store.set_hostcall_fuel(self.limits.max_transfer_bytes);
        store.epoch_deadline_callback(|mut cx| {
            let cpu = &mut cx.data_mut().cpu;
            cpu.used_ticks += 1;
            if cpu.used_ticks > cpu.budget_ticks {
                cpu.exceeded = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            // Yield to tokio each tick so timeouts fire and other tasks on this thread run.
            Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
        });
        store.set_epoch_deadline(1);
        Ok(store)
    }

    async fn instantiate(&self, pre: &DriverWorldPre<StoreState>) -> Result<Instance, CallError> {
        let mut store = self.new_store()?;
        self.begin_call(&mut store);
        let run = pre.instantiate_async(&mut store);
        let bindings = match tokio::time::timeout(self.limits.call_timeout, run).await {
            Err(_) => return Err(CallError::Timeout { backend: self.name.to_string(), after: self.limits.call_timeout }),
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                return Err(match self.classify(&store, &e) {
                    CallError::Trapped { reason, .. } if e.downcast_ref::<Trap>().is_none() => {
                        CallError::Runtime(format!("cannot instantiate the driver of backend `{}`: {reason}", self.name))
                    }
                    other => other,
                });
            }
        };
        Ok(Instance { store, bindings })
    }

    fn begin_call(&self, store: &mut Store<StoreState>) {
        let budget_ticks = ticks(self.limits.cpu_budget, self.runtime.inner.cfg.epoch_tick);
        store.data_mut().cpu = CpuMeter { used_ticks: 0, budget_ticks, exceeded: false };
        store.data().log.lock().unwrap().reset();
        store.set_epoch_deadline(1);
    }

    /// Run one call on `inst` under the limits. The instance comes back only after a clean call.
    async fn run<R, F, Fut>(&self, op: &str, mut inst: Instance, f: F) -> Result<(Instance, R), CallError>
    where
        F: FnOnce(Instance) -> Fut,
        Fut: Future<Output = (Instance, wasmtime::Result<R>)>,
    {
        self.begin_call(&mut inst.store);
        let started = Instant::now();
        match tokio::time::timeout(self.limits.call_timeout, f(inst)).await {
            Err(_) => {
                tracing::warn!(target: "driver", backend = %self.name, op, timeout = ?self.limits.call_timeout,
                    "driver call timed out; instance discarded");
                Err(CallError::Timeout { backend: self.name.to_string(), after: self.limits.call_timeout })
            }
            Ok((inst, Ok(r))) => {
                tracing::trace!(target: "driver", backend = %self.name, op, elapsed = ?started.elapsed(), "driver call");
                Ok((inst, r))
            }
            Ok((inst, Err(e))) => {
                let err = self.classify(&inst.store, &e);
                tracing::warn!(target: "driver", backend = %self.name, op, error = %err, "driver call failed; instance discarded");
                Err(err)
            }
        }
    }

    /// Turn a wasmtime error into a [`CallError`] that says what happened.
    fn classify(&self, store: &Store<StoreState>, e: &wasmtime::Error) -> CallError {
        let data = store.data();
        let backend = self.name.to_string();
        if data.cpu.exceeded {
            return CallError::CpuBudget { backend, budget: self.limits.cpu_budget };
        }
        let mut reason = if let Some(desired) = data.limiter.exceeded {
            format!(
                "memory limit of {} bytes exceeded (the driver tried to grow its memory to {desired} bytes)",
                self.limits.memory_bytes
            )
        } else if let Some(trap) = e.downcast_ref::<Trap>() {
            trap.to_string()
        } else if e.chain().any(|c| c.to_string().contains("fuel allocated for hostcalls has been exhausted")) {
            // wasmtime's `HostcallFuelExhausted` (private type): see `Limits::max_transfer_bytes`.
            format!(
                "the driver handed the host more than {} bytes in one value (a return value or the \
                 arguments of one host call)",
                self.limits.max_transfer_bytes
            )
        } else {
            e.root_cause().to_string()
        };
        if let Some(last) = data.log.lock().unwrap().last_stderr() {
            reason.push_str("; driver stderr: ");
            reason.push_str(&last);
        }
        CallError::Trapped { backend, reason }
    }

    /// `info()` on a fresh instance that is dropped afterwards.
    pub(crate) async fn info_once(&self, pre: &DriverWorldPre<StoreState>) -> Result<DriverInfo, CallError> {
        let inst = self.instantiate(pre).await?;
        let (_, info) = self
            .run("info", inst, |mut i| async move {
                let r = i.bindings.elara_driver_driver().call_info(&mut i.store).await;
                (i, r)
            })
            .await?;
        Ok(info)
    }
}

/// A backend: a named, configured sandbox of a driver. Cheap to clone; clones share the
/// instance pool.
#[derive(Clone)]
pub struct Backend {
    inner: Arc<BackendInner>,
}

struct BackendInner {
    sandbox: Sandbox,
    driver: Driver,
    config: Arc<Vec<(String, String)>>,
    idle: Mutex<Vec<Instance>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("name", &self.name()).field("driver", &self.inner.driver).finish()
    }
}

/// Run a driver export on an instance: `driver_call!(self, "op", |d, s| d.call_x(s, args))`.
macro_rules! driver_call {
    ($self:ident, $op:literal, |$d:ident, $s:ident| $call:expr) => {
        $self
            .call($op, move |mut inst: Instance| async move {
                let r = {
                    let $d = inst.bindings.elara_driver_driver();
                    let $s = &mut inst.store;
                    $call.await
                };
                (inst, r)
            })
            .await
    };
}

/// Flatten a call whose export returns `result<T, driver-error>`.
fn flat<T>(r: Result<Result<T, DriverError>, CallError>) -> Result<T, CallError> {
    r?.map_err(CallError::Driver)
}

impl Backend {
    pub(crate) async fn open(runtime: Runtime, driver: Driver, spec: BackendSpec) -> Result<Backend, RuntimeError> {
        if spec.name.trim().is_empty() {
            return Err(RuntimeError::Other("backend name must not be empty".into()));
        }
        let pool_path = spec.pool_dir.clone();
        let pool = tokio::task::spawn_blocking(move || PoolDir::open(&pool_path))
            .await
            .map_err(|e| RuntimeError::Other(e.to_string()))??;
        let name: Arc<str> = spec.name.clone().into();
        let sandbox = Sandbox {
            runtime,
            policy: NetPolicy::new(name.clone(), spec.grants.clone()),
            name,
            pool: Some(Arc::new(pool)),
            limits: spec.limits.clone(),
        };
        let backend = Backend {
            inner: Arc::new(BackendInner {
                sandbox,
                driver,
                config: Arc::new(spec.config),
                idle: Mutex::new(Vec::new()),
            }),
        };
        let first = backend.fresh_instance().await.map_err(RuntimeError::Configure)?;
        backend.release(first);
        Ok(backend)
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.inner.sandbox.name
    }

    /// The driver this backend runs.
    pub fn driver(&self) -> &Driver {
        &self.inner.driver
    }

    /// The backend's limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.sandbox.limits
    }

    /// Number of idle configured instances right now (for metrics and tests).
    pub fn idle_instances(&self) -> usize {
        self.inner.idle.lock().unwrap().len()
    }

    /// A new instance with `configure` already run on it.
    async fn fresh_instance(&self) -> Result<Instance, CallError> {
        let sb = &self.inner.sandbox;
        let inst = sb.instantiate(&self.inner.driver.inner.pre).await?;
        let config = self.inner.config.clone();
        let (inst, r) = sb
            .run("configure", inst, |mut i| async move {
                let r = i.bindings.elara_driver_driver().call_configure(&mut i.store, &config).await;
                (i, r)
            })
            .await?;
        r.map_err(CallError::Driver)?;
        Ok(inst)
    }

    fn release(&self, inst: Instance) {
        let mut idle = self.inner.idle.lock().unwrap();
        if idle.len() < MAX_IDLE_INSTANCES {
            idle.push(inst);
        }
    }

    async fn call<R, F, Fut>(&self, op: &'static str, f: F) -> Result<R, CallError>
    where
        F: FnOnce(Instance) -> Fut,
        Fut: Future<Output = (Instance, wasmtime::Result<R>)>,
    {
        let idle = self.inner.idle.lock().unwrap().pop();
        let inst = match idle {
            Some(i) => i,
            None => self.fresh_instance().await?,
        };
        let (inst, r) = self.inner.sandbox.run(op, inst, f).await?;
        self.release(inst);
        Ok(r)
    }

    /// `info()`, asked of a live instance of this backend.
    pub async fn info(&self) -> Result<DriverInfo, CallError> {
        driver_call!(self, "info", |d, s| d.call_info(s))
    }

    /// Capacity and capabilities of every pool.
    pub async fn pools(&self) -> Result<Vec<Pool>, CallError> {
        flat(driver_call!(self, "pools", |d, s| d.call_pools(s)))
    }

    /// Every volume the backend holds.
    pub async fn list_volumes(&self) -> Result<Vec<Volume>, CallError> {
        flat(driver_call!(self, "list-volumes", |d, s| d.call_list_volumes(s)))
    }

    /// Create a volume (idempotent on `spec.id`).
    pub async fn create(&self, spec: &VolumeSpec) -> Result<Volume, CallError> {
        let spec = spec.clone();
        flat(driver_call!(self, "create", |d, s| d.call_create(s, &spec)))
    }

    /// Create a volume with the contents of a snapshot.
    pub async fn create_from_snapshot(&self, spec: &VolumeSpec, snapshot_id: &str) -> Result<Volume, CallError> {
        let (spec, snap) = (spec.clone(), snapshot_id.to_string());
        flat(driver_call!(self, "create-from-snapshot", |d, s| d.call_create_from_snapshot(s, &spec, &snap)))
    }

    /// Delete a volume (succeeds if it does not exist).
    pub async fn delete(&self, volume_id: &str) -> Result<(), CallError> {
        let id = volume_id.to_string();
        flat(driver_call!(self, "delete", |d, s| d.call_delete(s, &id)))
    }

    /// Grow a volume.
    pub async fn resize(&self, volume_id: &str, size_bytes: u64) -> Result<Volume, CallError> {
        let id = volume_id.to_string();
        flat(driver_call!(self, "resize", |d, s| d.call_resize(s, &id, size_bytes)))
    }

    /// Create a snapshot (idempotent on `spec.id`).
    pub async fn snapshot_create(&self, spec: &SnapshotSpec) -> Result<Snapshot, CallError> {
        let spec = spec.clone();
        flat(driver_call!(self, "snapshot-create", |d, s| d.call_snapshot_create(s, &spec)))
    }

    /// Delete a snapshot (succeeds if it does not exist).
    pub async fn snapshot_delete(&self, snapshot_id: &str) -> Result<(), CallError> {
        let id = snapshot_id.to_string();
        flat(driver_call!(self, "snapshot-delete", |d, s| d.call_snapshot_delete(s, &id)))
    }

    /// Make a volume reachable from `node`.
    pub async fn attach(&self, volume_id: &str, node: &NodeInfo) -> Result<Connection, CallError> {
        let (id, node) = (volume_id.to_string(), node.clone());
        flat(driver_call!(self, "attach", |d, s| d.call_attach(s, &id, &node)))
    }

    /// Undo `attach`.
    pub async fn detach(&self, volume_id: &str, node: &NodeInfo) -> Result<(), CallError> {
        let (id, node) = (volume_id.to_string(), node.clone());
        flat(driver_call!(self, "detach", |d, s| d.call_detach(s, &id, &node)))
    }

    /// Usage figures of a volume.
    pub async fn stats(&self, volume_id: &str) -> Result<VolumeStats, CallError> {
        let id = volume_id.to_string();
        flat(driver_call!(self, "stats", |d, s| d.call_stats(s, &id)))
    }

    /// Set QoS limits on a volume.
    pub async fn set_qos(&self, volume_id: &str, qos: &Qos) -> Result<(), CallError> {
        let (id, qos) = (volume_id.to_string(), *qos);
        flat(driver_call!(self, "set-qos", |d, s| d.call_set_qos(s, &id, qos)))
    }
}
