//! The one error type every door returns: an HTTP status, a machine code, the field at fault and why.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use elara_runtime::{CallError, DriverError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, thiserror::Error)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    /// `invalid`, `not-found`, `conflict`, `unsupported`, `unavailable`, `backend`, `internal`, ...
    pub code: String,
    /// The input field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ApiError,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            field: None,
            message: message.into(),
        }
    }
    pub fn invalid(field: &str, why: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            code: "invalid".into(),
            field: Some(field.into()),
            message: why.into(),
        }
    }
    pub fn not_found(what: &str, name: &str) -> Self {
        Self::new(404, "not-found", format!("{what} {name:?} does not exist"))
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "conflict", message)
    }
    pub fn busy(what: &str, name: &str, op: &str) -> Self {
        Self::new(
            409,
            "busy",
            format!("{what} {name:?} is busy with operation {op}; try again"),
        )
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "unavailable", message)
    }
    pub fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.into());
        self
    }
    /// A driver call's failure, naming the backend.
    pub fn from_call(backend: &str, err: CallError) -> Self {
        match err {
            CallError::Driver(DriverError::NotFound(m)) => {
                Self::new(404, "not-found", format!("backend {backend}: {m}"))
            }
            CallError::Driver(DriverError::AlreadyExists(m)) => {
                Self::new(409, "conflict", format!("backend {backend}: {m}"))
            }
            CallError::Driver(DriverError::Invalid(f)) => {
                ApiError::invalid(&f.field, format!("backend {backend}: {}", f.reason))
            }
            CallError::Driver(DriverError::Unsupported(m)) => {
                Self::new(501, "unsupported", format!("backend {backend}: {m}"))
            }
            CallError::Driver(DriverError::Unavailable(m)) => {
                Self::new(503, "unavailable", format!("backend {backend} is unavailable: {m}"))
            }
            CallError::Driver(DriverError::Backend(m)) => Self::new(502, "backend", format!("backend {backend}: {m}")),
            other => Self::new(502, "driver-failed", format!("backend {backend}: {other}")),
        }
    }
}

impl From<elara_store::StoreError> for ApiError {
    fn from(e: elara_store::StoreError) -> Self {
        match e {
            elara_store::StoreError::Unavailable(m) => Self::unavailable(format!("metadata store unavailable: {m}")),
            other => Self::internal(format!("metadata store: {other}")),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<ApiError>() {
            Ok(api) => api,
            Err(e) => Self::internal(format!("{e:#}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody { error: self })).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
