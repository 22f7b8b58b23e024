//! [`Backend`]: a named, configured sandbox of a driver, with a small pool of idle instances.
//!
//! Every call takes an idle configured instance (or instantiates a new one and runs
//! `configure` on it), runs under the backend's limits, and returns the instance to the pool
//! only after a clean call (an `Ok` or a typed driver error). After a trap, an exceeded budget,
//! a timeout or any other wasmtime error the instance is dropped, so the next call gets a fresh
//! one. Calls never wait for each other: concurrent calls use distinct instances.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTableError;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wasi_http::WasiHttpCtx;

use crate::bindings::{DriverWorld, DriverWorldPre};
use crate::hostfs::PoolDir;
use crate::net::{HttpHooks, NetPolicy};
use crate::runtime::ticks;
use crate::state::{Advance, CapturedStdio, CpuMeter, LogSink, MemoryLimiter, ProgressFn, StoreState};
use crate::{
    BackendSpec, BadReturn, CallError, Connection, Driver, DriverError, DriverInfo, Limits, NodeInfo, Pool, Qos,
    Runtime, RuntimeError, Snapshot, SnapshotSpec, Volume, VolumeSpec, VolumeStats,
};

/// Idle configured instances kept per backend (each holds a pooling-allocator slot).
pub const MAX_IDLE_INSTANCES: usize = 4;

/// One live instance of a driver with its store.
pub(crate) struct Instance {
    store: Store<StoreState>,
    /// Boxed: the export handles are some 300 bytes, and an instance moves several times per call.
    bindings: Box<DriverWorld>,
}

/// What every instance of one backend shares: name, pool dir, grants, limits.
pub(crate) struct Sandbox {
    runtime: Runtime,
    name: Arc<str>,
    pool: Option<Arc<PoolDir>>,
    policy: NetPolicy,
    limits: Limits,
    /// `limits.cpu_budget` in epoch ticks.
    budget_ticks: u64,
}

impl Sandbox {
    /// The sandbox that answers `info` at load time: no pool dir, no grants.
    pub(crate) fn info_only(runtime: Runtime, sha256: &str, limits: Limits) -> Sandbox {
        let name: Arc<str> = format!("load:{}", &sha256[..12.min(sha256.len())]).into();
        Sandbox::new(runtime, name, None, Vec::new(), limits)
    }

    fn new(
        runtime: Runtime,
        name: Arc<str>,
        pool: Option<Arc<PoolDir>>,
        grants: Vec<crate::HostGrant>,
        limits: Limits,
    ) -> Sandbox {
        let budget_ticks = ticks(limits.cpu_budget, runtime.inner.cfg.epoch_tick);
        Sandbox {
            runtime,
            policy: NetPolicy::new(name.clone(), grants),
            name,
            pool,
            limits,
            budget_ticks,
        }
    }

    fn new_store(&self) -> Result<Store<StoreState>, CallError> {
        let log = Arc::new(Mutex::new(LogSink::new(
            self.name.clone(),
            self.limits.log_bytes_per_call,
        )));
        let mut b = WasiCtxBuilder::new();
        // No env, no args, no stdin (the default is an empty stdin); stdout/stderr into tracing.
        b.stdout(CapturedStdio {
            sink: log.clone(),
            stderr: false,
        });
        b.stderr(CapturedStdio {
            sink: log.clone(),
            stderr: true,
        });
        if let Some(pool) = &self.pool {
            b.preopened_dir(&pool.path, "/pool", FsPerms::ReadWrite)
                .map_err(|e| CallError::Runtime(format!("preopen {}: {e:#}", pool.path.display())))?;
        }
        let policy = self.policy.clone();
        b.allow_tcp(true)
            .allow_udp(false)
            .allow_ip_name_lookup(self.policy.has_grants());
        b.socket_addr_check(move |addr, usage| {
            let policy = policy.clone();
            Box::pin(async move { policy.socket_allowed(addr, usage).await })
        });
        let state = StoreState {
            wasi: b.build(),
            http: WasiHttpCtx::new(),
            table: {
                // Every open file, directory, socket and stream is an entry: the cap bounds the
                // daemon's descriptors one instance can hold. A full table traps the call.
                let mut table = wasmtime::component::ResourceTable::new();
                table.set_max_capacity(self.limits.max_open_resources);
                table
            },
            hooks: HttpHooks {
                policy: self.policy.clone(),
            },
            limiter: MemoryLimiter::new(self.limits.memory_bytes),
            cpu: CpuMeter {
                used_ticks: 0,
                budget_ticks: 1,
                exceeded: false,
            },
            log,
            pool: self.pool.clone(),
            progress: None,
            advance: Arc::new(Mutex::new(Advance::new(0, 1, Duration::ZERO))),
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
        self.begin_call(&mut store, 0);
        let run = pre.instantiate_async(&mut store);
        let bindings = match tokio::time::timeout(self.limits.call_timeout, run).await {
            Err(_) => {
                return Err(CallError::Timeout {
                    backend: self.name.to_string(),
                    after: self.limits.call_timeout,
                });
            }
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                return Err(match self.classify(&store, &e) {
                    CallError::Trapped { reason, .. } if e.downcast_ref::<Trap>().is_none() => CallError::Runtime(
                        format!("cannot instantiate the driver of backend `{}`: {reason}", self.name),
                    ),
                    other => other,
                });
            }
        };
        Ok(Instance {
            store,
            bindings: Box::new(bindings),
        })
    }

    /// Fresh limits for a call that may claim to move up to `progress_bound` bytes.
    fn begin_call(&self, store: &mut Store<StoreState>, progress_bound: u64) {
        store.data_mut().cpu = CpuMeter {
            used_ticks: 0,
            budget_ticks: self.budget_ticks,
            exceeded: false,
        };
        *store.data().advance.lock().unwrap() = Advance::new(
            progress_bound,
            self.limits.progress_bytes_per_renewal,
            self.limits.max_call,
        );
        store.data().log.lock().unwrap().reset();
        store.set_epoch_deadline(1);
    }

    /// Run one call on `inst` under the limits. The instance comes back only after a clean call.
    /// `progress_bound`: the most bytes the call's progress reports may claim (see [`Advance`]).
    async fn run<R, F, Fut>(
        &self,
        op: &str,
        mut inst: Instance,
        progress_bound: u64,
        f: F,
    ) -> Result<(Instance, R), CallError>
    where
        F: FnOnce(Instance) -> Fut,
        Fut: Future<Output = (Instance, wasmtime::Result<R>)>,
    {
        self.begin_call(&mut inst.store, progress_bound);
        let advance = inst.store.data().advance.clone();
        let started = tracing::enabled!(target: "driver", tracing::Level::TRACE).then(Instant::now);
        let mut call = std::pin::pin!(f(inst));
        // Most calls finish on their first poll (no host I/O, no epoch yield) and need no
        // timer: arming one costs more than a trivial call. A call that does not finish is put
        // under the wall-clock limit from there (late by at most one epoch tick of guest time).
        let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        let outcome = match first {
            Poll::Ready(r) => Ok(r),
            // Boxed so the timer does not grow (and get copied with) every call's future.
            Poll::Pending => Box::pin(self.within_call_timeout(call, &advance)).await,
        };
        match outcome {
            Err(after) => {
                tracing::warn!(target: "driver", backend = %self.name, op, timeout = ?after,
                    "driver call timed out; instance discarded");
                Err(CallError::Timeout {
                    backend: self.name.to_string(),
                    after,
                })
            }
            Ok((inst, Ok(r))) => {
                if let Some(started) = started {
                    tracing::trace!(target: "driver", backend = %self.name, op, elapsed = ?started.elapsed(), "driver call");
                }
                Ok((inst, r))
            }
            Ok((inst, Err(e))) => {
                let err = self.classify(&inst.store, &e);
                tracing::warn!(target: "driver", backend = %self.name, op, error = %err, "driver call failed; instance discarded");
                Err(err)
            }
        }
    }

    /// `call`'s output, or the limit that stopped it: `call_timeout` passed since the call began
    /// or last renewed its limits, or `max_call` since it began (see [`Advance`]).
    async fn within_call_timeout<T>(
        &self,
        call: impl Future<Output = T>,
        advance: &Mutex<Advance>,
    ) -> Result<T, Duration> {
        let deadline = tokio::time::sleep(self.limits.call_timeout.min(self.limits.max_call));
        tokio::pin!(call, deadline);
        loop {
            tokio::select! {
                out = &mut call => return Ok(out),
                _ = &mut deadline => {
                    let (when, ceiling) = advance.lock().unwrap().deadline(self.limits.call_timeout);
                    if when <= Instant::now() {
                        return Err(if ceiling { self.limits.max_call } else { self.limits.call_timeout });
                    }
                    deadline.as_mut().reset(when.into());
                }
            }
        }
    }

    /// Turn a wasmtime error into a [`CallError`] that says what happened.
    fn classify(&self, store: &Store<StoreState>, e: &wasmtime::Error) -> CallError {
        let data = store.data();
        let backend = self.name.to_string();
        if data.cpu.exceeded {
            return CallError::CpuBudget {
                backend,
                budget: self.limits.cpu_budget,
            };
        }
        let mut reason = if let Some(desired) = data.limiter.exceeded {
            format!(
                "memory limit of {} bytes exceeded (the driver tried to grow its memory to {desired} bytes)",
                self.limits.memory_bytes
            )
        } else if let Some(trap) = e.downcast_ref::<Trap>() {
            trap.to_string()
        } else if e
            .chain()
            .any(|c| matches!(c.downcast_ref::<ResourceTableError>(), Some(ResourceTableError::Full)))
        {
            format!(
                "the driver holds more than {} open resources at once (files, directories, sockets, \
                 streams, HTTP requests): the backend's limit on open resources",
                self.limits.max_open_resources
            )
        } else if e.chain().any(|c| {
            c.to_string()
                .contains("fuel allocated for hostcalls has been exhausted")
        }) {
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
            .run("info", inst, 0, |mut i| async move {
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
        f.debug_struct("Backend")
            .field("name", &self.name())
            .field("driver", &self.inner.driver)
            .finish()
    }
}

/// Run a driver export on an instance: `driver_call!(self, "op", |d, s| d.call_x(s, args))`,
/// or with a progress sink and the most bytes the call can move:
/// `driver_call!(self, "op", Some(progress), size, |d, s| ...)`.
/// The call's future is boxed: wasmtime's call future is large, and a boxed one is not copied
/// as the layers of the call path are built (an allocation is cheaper than the copies).
macro_rules! driver_call {
    ($self:ident, $op:literal, |$d:ident, $s:ident| $call:expr) => {
        driver_call!($self, $op, None, 0, |$d, $s| $call)
    };
    ($self:ident, $op:literal, $progress:expr, $bound:expr, |$d:ident, $s:ident| $call:expr) => {
        $self
            .call($op, $progress, $bound, move |mut inst: Instance| {
                Box::pin(async move {
                    let r = {
                        let $d = inst.bindings.elara_driver_driver();
                        let $s = &mut inst.store;
                        $call.await
                    };
                    (inst, r)
                })
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
        let sandbox = Sandbox::new(
            runtime,
            name,
            Some(Arc::new(pool)),
            spec.grants.clone(),
            spec.limits.clone(),
        );
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

    /// Instantiate and configure instances until `n` are idle (at most [`MAX_IDLE_INSTANCES`]),
    /// so the next calls do not pay for it. Returns how many are idle.
    pub async fn prewarm(&self, n: usize) -> Result<usize, CallError> {
        let n = n.min(MAX_IDLE_INSTANCES);
        while self.idle_instances() < n {
            let inst = self.fresh_instance().await?;
            self.release(inst);
        }
        Ok(self.idle_instances())
    }

    /// Drop every idle instance, freeing their slots in the pooling allocator; the next call
    /// instantiates afresh. Returns how many were dropped.
    pub fn clear_idle(&self) -> usize {
        let idle = std::mem::take(&mut *self.inner.idle.lock().unwrap());
        idle.len()
    }

    /// Benchmark hook: `n` `stats` calls on one instance straight through wasmtime, without
    /// the per-call bookkeeping of [`Backend::stats`] (idle pool, budgets, timeout), to show
    /// what that bookkeeping costs. Not for production use.
    #[doc(hidden)]
    pub async fn bench_raw_stats(&self, volume_id: &str, n: usize) -> Result<(), CallError> {
        let (inst, ()) = self
            .inner
            .sandbox
            .run("bench", self.take_instance().await?, 0, |mut i| async move {
                let mut r = Ok(());
                for _ in 0..n {
                    if let Err(e) = i
                        .bindings
                        .elara_driver_driver()
                        .call_stats(&mut i.store, volume_id)
                        .await
                    {
                        r = Err(e);
                        break;
                    }
                }
                (i, r)
            })
            .await?;
        self.release(inst);
        Ok(())
    }

    async fn take_instance(&self) -> Result<Instance, CallError> {
        let idle = self.inner.idle.lock().unwrap().pop();
        match idle {
            Some(i) => Ok(i),
            // Boxed: instantiating is a large future, and every call's future would otherwise
            // carry (and copy) its size.
            None => Box::pin(self.fresh_instance()).await,
        }
    }

    /// A new instance with `configure` already run on it.
    async fn fresh_instance(&self) -> Result<Instance, CallError> {
        let sb = &self.inner.sandbox;
        let inst = sb.instantiate(&self.inner.driver.inner.pre).await?;
        let config = self.inner.config.clone();
        let (inst, r) = sb
            .run("configure", inst, 0, |mut i| async move {
                let r = i
                    .bindings
                    .elara_driver_driver()
                    .call_configure(&mut i.store, &config)
                    .await;
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

    /// Run `f` on an idle (or fresh) instance; `progress`, if any, receives what the call
    /// reports, which may claim at most `progress_bound` bytes.
    async fn call<R, F, Fut>(
        &self,
        op: &'static str,
        progress: Option<ProgressFn>,
        progress_bound: u64,
        f: F,
    ) -> Result<R, CallError>
    where
        F: FnOnce(Instance) -> Fut,
        Fut: Future<Output = (Instance, wasmtime::Result<R>)>,
    {
        let mut inst = self.take_instance().await?;
        inst.store.data_mut().progress = progress;
        let (mut inst, r) = self.inner.sandbox.run(op, inst, progress_bound, f).await?;
        inst.store.data_mut().progress = None;
        self.release(inst);
        Ok(r)
    }

    /// `info()`, asked of a live instance of this backend.
    pub async fn info(&self) -> Result<DriverInfo, CallError> {
        driver_call!(self, "info", |d, s| d.call_info(s))
    }

    /// Capacity and capabilities of every pool. A report the host cannot take (more than
    /// [`Limits::max_pools`] pools, a bad or repeated name: see [`check_pools`]) is refused whole.
    pub async fn pools(&self) -> Result<Vec<Pool>, CallError> {
        let pools = flat(driver_call!(self, "pools", |d, s| d.call_pools(s)))?;
        check_pools(self.name(), &pools, self.limits().max_pools).map_err(|e| {
            tracing::warn!(target: "driver", backend = %self.name(), "pool report refused: {e}");
            CallError::BadReturn(e)
        })?;
        Ok(pools)
    }

    /// Every volume the backend holds.
    pub async fn list_volumes(&self) -> Result<Vec<Volume>, CallError> {
        flat(driver_call!(self, "list-volumes", |d, s| d.call_list_volumes(s)))
    }

    /// Create a volume (idempotent on `spec.id`).
    pub async fn create(&self, spec: &VolumeSpec) -> Result<Volume, CallError> {
        flat(driver_call!(self, "create", None, spec.size_bytes, |d, s| d.call_create(s, spec)))
    }

    /// Create a volume with the contents of a snapshot.
    pub async fn create_from_snapshot(&self, spec: &VolumeSpec, snapshot_id: &str) -> Result<Volume, CallError> {
        flat(driver_call!(
            self,
            "create-from-snapshot",
            None,
            spec.size_bytes,
            |d, s| d.call_create_from_snapshot(s, spec, snapshot_id)
        ))
    }

    /// [`Backend::create_from_snapshot`], with the copy's progress (`done`, `total` bytes) handed
    /// to `progress` as the driver (or the host's `clone-file`) reports it.
    pub async fn create_from_snapshot_with_progress(
        &self,
        spec: &VolumeSpec,
        snapshot_id: &str,
        progress: ProgressFn,
    ) -> Result<Volume, CallError> {
        flat(driver_call!(
            self,
            "create-from-snapshot",
            Some(progress),
            spec.size_bytes,
            |d, s| d.call_create_from_snapshot(s, spec, snapshot_id)
        ))
    }

    /// Delete a volume (succeeds if it does not exist).
    pub async fn delete(&self, volume_id: &str) -> Result<(), CallError> {
        flat(driver_call!(self, "delete", |d, s| d.call_delete(s, volume_id)))
    }

    /// Grow a volume.
    pub async fn resize(&self, volume_id: &str, size_bytes: u64) -> Result<Volume, CallError> {
        flat(driver_call!(self, "resize", None, size_bytes, |d, s| d
            .call_resize(s, volume_id, size_bytes)))
    }

    /// Create a snapshot (idempotent on `spec.id`).
    pub async fn snapshot_create(&self, spec: &SnapshotSpec) -> Result<Snapshot, CallError> {
        // The spec gives no size: the declared limit bounds what its progress may claim.
        let bound = self.limits().max_progress_bytes;
        flat(driver_call!(self, "snapshot-create", None, bound, |d, s| d
            .call_snapshot_create(s, spec)))
    }

    /// [`Backend::snapshot_create`], with the copy's progress (`done`, `total` bytes) handed to
    /// `progress` as the driver (or the host's `clone-file`) reports it.
    pub async fn snapshot_create_with_progress(
        &self,
        spec: &SnapshotSpec,
        progress: ProgressFn,
    ) -> Result<Snapshot, CallError> {
        let bound = self.limits().max_progress_bytes;
        flat(driver_call!(self, "snapshot-create", Some(progress), bound, |d, s| d
            .call_snapshot_create(s, spec)))
    }

    /// Delete a snapshot (succeeds if it does not exist).
    pub async fn snapshot_delete(&self, snapshot_id: &str) -> Result<(), CallError> {
        flat(driver_call!(self, "snapshot-delete", |d, s| d.call_snapshot_delete(s, snapshot_id)))
    }

    /// Make a volume reachable from `node`.
    pub async fn attach(&self, volume_id: &str, node: &NodeInfo) -> Result<Connection, CallError> {
        flat(driver_call!(self, "attach", |d, s| d.call_attach(s, volume_id, node)))
    }

    /// Undo `attach`.
    pub async fn detach(&self, volume_id: &str, node: &NodeInfo) -> Result<(), CallError> {
        flat(driver_call!(self, "detach", |d, s| d.call_detach(s, volume_id, node)))
    }

    /// Usage figures of a volume.
    pub async fn stats(&self, volume_id: &str) -> Result<VolumeStats, CallError> {
        flat(driver_call!(self, "stats", |d, s| d.call_stats(s, volume_id)))
    }

    /// Set QoS limits on a volume.
    pub async fn set_qos(&self, volume_id: &str, qos: &Qos) -> Result<(), CallError> {
        let qos = *qos;
        flat(driver_call!(self, "set-qos", |d, s| d.call_set_qos(s, volume_id, qos)))
    }
}

/// The longest pool name a report may carry: a pool name becomes part of a store key and shows
/// in listings. Cinder's `host@backend#pool` names, with a full host name, fit.
pub const MAX_POOL_NAME: usize = 128;

/// Check a driver's pool report before the host stores any of it: at most `max_pools` pools,
/// each named with 1 to [`MAX_POOL_NAME`] bytes of printable characters other than `/` (a pool
/// name is a segment of its store key), no name twice.
pub fn check_pools(backend: &str, pools: &[Pool], max_pools: usize) -> Result<(), BadReturn> {
    let bad = |field: String, reason: String| BadReturn {
        backend: backend.to_string(),
        field,
        reason,
    };
    if pools.len() > max_pools {
        return Err(bad(
            "pools".into(),
            format!(
                "the report names {} pools; the limit is {max_pools} per report",
                pools.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(pools.len());
    for (i, p) in pools.iter().enumerate() {
        let field = format!("pools[{i}].name");
        let name = &p.name;
        if name.is_empty() || name.len() > MAX_POOL_NAME {
            let shown: String = name.chars().take(40).collect();
            return Err(bad(
                field,
                format!(
                    "{shown:?}… is {} bytes long; a pool name has 1 to {MAX_POOL_NAME}",
                    name.len()
                ),
            ));
        }
        if let Some(c) = name.chars().find(|c| c.is_control() || *c == '/') {
            return Err(bad(
                field,
                format!("{name:?} contains {c:?}; a pool name has no `/` and no control characters"),
            ));
        }
        if !seen.insert(name.as_str()) {
            return Err(bad(field, format!("{name:?} is named twice in one report")));
        }
    }
    Ok(())
}
