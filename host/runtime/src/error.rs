//! Errors of the runtime: [`CallError`] for a call into a backend, [`RuntimeError`] for loading
//! drivers and opening backends.

use std::time::Duration;

use crate::DriverError;

/// Why a call into a backend failed.
#[derive(thiserror::Error, Debug)]
pub enum CallError {
    /// The driver's own typed error (its `result` came back `err`). The instance stays in
    /// service. Displayed as the driver's message, e.g. `invalid size: must be > 0`.
    #[error("{}", .0.message())]
    Driver(DriverError),
    /// The instance trapped (panic, `unreachable`, out of memory, ...). It was discarded; the
    /// next call gets a fresh instance.
    #[error("driver of backend `{backend}` trapped: {reason}")]
    Trapped {
        /// The backend's name.
        backend: String,
        /// What happened, e.g. `memory limit of 268435456 bytes exceeded ...` or the panic message.
        reason: String,
    },
    /// The call used more than its budget of guest execution time. The instance was discarded.
    #[error("driver of backend `{backend}` used more than its CPU budget of {budget:?} in one call")]
    CpuBudget {
        /// The backend's name.
        backend: String,
        /// The budget that was exceeded ([`crate::Limits::cpu_budget`]).
        budget: Duration,
    },
    /// The call took longer than the wall-clock limit. The instance was discarded.
    #[error("call to backend `{backend}` timed out after {after:?}")]
    Timeout {
        /// The backend's name.
        backend: String,
        /// The limit that was reached ([`crate::Limits::call_timeout`]).
        after: Duration,
    },
    /// Anything else that went wrong in the runtime (instantiation failed, pool exhausted, ...).
    #[error("runtime error: {0}")]
    Runtime(String),
    /// The driver returned something the host refuses to take (e.g. a pool report over the
    /// limits). Nothing of it was used; the instance stays in service.
    #[error("{0}")]
    BadReturn(BadReturn),
}

/// A driver's return value that the host refused, naming the backend, the field and why.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("backend `{backend}` returned a bad {field}: {reason}")]
pub struct BadReturn {
    /// The backend's name.
    pub backend: String,
    /// Which part of the return value, e.g. `pools` or `pools[3].name`.
    pub field: String,
    /// Why it was refused, with the limit.
    pub reason: String,
}

impl CallError {
    /// The driver's typed error, if this is one.
    pub fn driver_error(&self) -> Option<&DriverError> {
        match self {
            CallError::Driver(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a driver could not be loaded or a backend could not be opened.
#[derive(thiserror::Error, Debug)]
pub enum RuntimeError {
    /// The bytes are not a valid WebAssembly component (or failed to compile).
    #[error("driver does not compile: {0}")]
    Compile(String),
    /// A valid component, but not an `elara:driver@0.1.x` driver: the message names what is missing.
    #[error("not an Elara driver: {0}")]
    WrongWorld(String),
    /// The driver rejected the backend's configuration (or failed while validating it).
    #[error("configuration rejected: {0}")]
    Configure(CallError),
    /// `info()` failed on a fresh instance.
    #[error("driver `info` failed: {0}")]
    Info(CallError),
    /// A filesystem error (cache dir, pool dir).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Anything else (engine setup, invalid spec, ...).
    #[error("{0}")]
    Other(String),
}

impl DriverError {
    /// A one-line message a user can act on, e.g. `invalid size: must be > 0` or
    /// `not found: vol-1`.
    pub fn message(&self) -> String {
        match self {
            DriverError::NotFound(m) => format!("not found: {m}"),
            DriverError::AlreadyExists(m) => format!("already exists: {m}"),
            DriverError::Invalid(f) => format!("invalid {}: {}", f.field, f.reason),
            DriverError::Unsupported(m) => format!("unsupported: {m}"),
            DriverError::Unavailable(m) => format!("unavailable: {m}"),
            DriverError::Backend(m) => format!("backend error: {m}"),
        }
    }

    /// The variant's WIT name (`not-found`, `already-exists`, `invalid`, `unsupported`,
    /// `unavailable`, `backend`), for mapping to statuses and for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            DriverError::NotFound(_) => "not-found",
            DriverError::AlreadyExists(_) => "already-exists",
            DriverError::Invalid(_) => "invalid",
            DriverError::Unsupported(_) => "unsupported",
            DriverError::Unavailable(_) => "unavailable",
            DriverError::Backend(_) => "backend",
        }
    }
}
