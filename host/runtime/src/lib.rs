//! Elara's driver runtime: every storage driver is a WebAssembly component
//! (`elara:driver@0.1.1`, world `driver-world`, see `wit/driver.wit`) run in a wasmtime sandbox.
//!
//! * [`Runtime`] owns one wasmtime engine (pooling allocator, epoch interruption, a trimmed
//!   feature set without `component-model-async`) and caches compiled components on disk.
//!   [`Runtime::load_driver`] compiles (or loads from the cache) and validates a component.
//! * [`Backend`] is a named, configured sandbox of a [`Driver`] ([`Runtime::open_backend`]):
//!   its own pool directory (the guest's `/pool`, nothing else of the filesystem), its own
//!   network grants ([`HostGrant`]) and [`Limits`] (memory, CPU budget per call, wall-clock
//!   timeout, log volume). Its methods are the driver's exports; they return [`CallError`].
//!
//! Module map: `runtime` (engine, cache, loading), `backend` (instances, calls, limits),
//! `state` (store data, memory limiter, CPU meter, log capture), `net` (HTTP/TCP allow-list),
//! `hostfs` (the `host` import, confined to the pool dir), `config`, `error`, `bindings`.

mod backend;
pub mod bindings;
mod config;
mod error;
mod hostfs;
mod net;
mod runtime;
mod state;

pub use backend::{Backend, MAX_IDLE_INSTANCES, MAX_POOL_NAME, check_pools};
pub use config::{BackendSpec, HostGrant, HostGrantError, Limits, RuntimeConfig};
pub use error::{BadReturn, CallError, RuntimeError};
pub use runtime::{Driver, Runtime, WIT_VERSION};
pub use state::ProgressFn;

/// Raise this process's soft limit on open files to its hard limit, and return the new soft
/// limit. Drivers' files and sockets are the daemon's descriptors: with the usual soft limit of
/// 1024, a few backends at their [`Limits::max_open_resources`] would exhaust it, while the hard
/// limit is commonly a thousand times larger.
pub fn raise_open_files_limit() -> std::io::Result<Option<u64>> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        setrlimit(Resource::Nofile, lim).map_err(std::io::Error::from)?;
    }
    Ok(lim.current)
}

pub use bindings::elara::driver::host::{CopyMethod, FsStats};
pub use bindings::elara::driver::log::Level as LogLevel;
pub use bindings::elara::driver::types::{
    Capacity, ChapAuth, ConfigKey, Connection, DriverError, DriverInfo, Features, ImageFileConnection, InvalidField,
    IscsiConnection, NfsConnection, NodeInfo, Pool, Qos, S3Connection, Snapshot, SnapshotSpec, Volume, VolumeKind,
    VolumeSpec, VolumeStats,
};
