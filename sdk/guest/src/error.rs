//! Typed error helpers for [`DriverError`], the error every driver export returns.
//!
//! ```ignore
//! return Err(DriverError::invalid("size", "must be greater than 0"));
//! let data = std::fs::read(&path).context(format!("reading {path}"))?; // io::Error → DriverError
//! ```

use crate::types::{DriverError, InvalidField};
use std::fmt::Display;

/// The result type of every driver export.
pub type DriverResult<T> = Result<T, DriverError>;

impl DriverError {
    /// The object named in `what` does not exist (HTTP 404).
    pub fn not_found(what: impl Into<String>) -> Self {
        DriverError::NotFound(what.into())
    }

    /// An object with that id exists with a different spec (HTTP 409).
    pub fn already_exists(what: impl Into<String>) -> Self {
        DriverError::AlreadyExists(what.into())
    }

    /// An input was rejected: `field` as the user knows it (`size`, a config key, ...) and why,
    /// in words the user can act on (HTTP 400).
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DriverError::Invalid(InvalidField {
            field: field.into(),
            reason: reason.into(),
        })
    }

    /// The driver or its backing storage cannot do this (HTTP 501).
    pub fn unsupported(what: impl Into<String>) -> Self {
        DriverError::Unsupported(what.into())
    }

    /// The backing storage cannot be reached now; the call may be retried (HTTP 503).
    pub fn unavailable(what: impl Into<String>) -> Self {
        DriverError::Unavailable(what.into())
    }

    /// The backing storage refused or failed; carries its own message (HTTP 502).
    pub fn backend(what: impl Into<String>) -> Self {
        DriverError::Backend(what.into())
    }

    /// The variant's name as in the WIT: `not-found`, `already-exists`, `invalid`, ...
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

    /// The human-readable message (for `invalid`: `field: reason`).
    pub fn message(&self) -> String {
        match self {
            DriverError::NotFound(m)
            | DriverError::AlreadyExists(m)
            | DriverError::Unsupported(m)
            | DriverError::Unavailable(m)
            | DriverError::Backend(m) => m.clone(),
            DriverError::Invalid(f) => format!("{}: {}", f.field, f.reason),
        }
    }

    /// The same error with `prefix: ` put before its message (the field of `invalid` is kept).
    pub fn with_context(self, prefix: impl Display) -> Self {
        match self {
            DriverError::NotFound(m) => DriverError::NotFound(format!("{prefix}: {m}")),
            DriverError::AlreadyExists(m) => DriverError::AlreadyExists(format!("{prefix}: {m}")),
            DriverError::Unsupported(m) => DriverError::Unsupported(format!("{prefix}: {m}")),
            DriverError::Unavailable(m) => DriverError::Unavailable(format!("{prefix}: {m}")),
            DriverError::Backend(m) => DriverError::Backend(format!("{prefix}: {m}")),
            DriverError::Invalid(f) => DriverError::Invalid(InvalidField {
                field: f.field,
                reason: format!("{prefix}: {}", f.reason),
            }),
        }
    }
}

/// Maps filesystem and socket errors to the variant a host can act on: a missing file is
/// `not-found`, an existing one `already-exists`, a refused or timed-out connection
/// `unavailable` (retry later), an operation the platform lacks `unsupported`, and everything
/// else (permissions, a full disk, I/O errors) `backend`.
impl From<std::io::Error> for DriverError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let msg = e.to_string();
        match e.kind() {
            K::NotFound => DriverError::NotFound(msg),
            K::AlreadyExists => DriverError::AlreadyExists(msg),
            K::Unsupported => DriverError::Unsupported(msg),
            K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::TimedOut
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
            | K::Interrupted
            | K::WouldBlock
            | K::ResourceBusy => DriverError::Unavailable(msg),
            K::StorageFull | K::QuotaExceeded => {
                DriverError::Backend(format!("no space left on the backing storage: {msg}"))
            }
            K::PermissionDenied => DriverError::Backend(format!("permission denied: {msg}")),
            _ => DriverError::Backend(msg),
        }
    }
}

impl From<serde_json::Error> for DriverError {
    fn from(e: serde_json::Error) -> Self {
        DriverError::Backend(format!("JSON: {e}"))
    }
}

/// Adds context to any error that converts into a [`DriverError`].
pub trait ResultExt<T> {
    /// Convert the error into a [`DriverError`] and prefix its message with `what`
    /// (e.g. `"reading /pool/volumes/v1.json"`).
    fn context(self, what: impl Display) -> DriverResult<T>;
}

impl<T, E: Into<DriverError>> ResultExt<T> for Result<T, E> {
    fn context(self, what: impl Display) -> DriverResult<T> {
        self.map_err(|e| e.into().with_context(what))
    }
}
