//! A small blocking HTTP client over `wasi:http`, for drivers that talk to a storage API.
//!
//! Driver exports are synchronous, so each request runs [`wstd`]'s async client to completion
//! on its own little event loop. The host only lets a driver reach the hosts its backend was
//! granted (`--allow-host`); any other host fails with [`HttpError::Denied`], which converts to
//! an `unavailable` [`DriverError`] that says so.
//!
//! ```ignore
//! use elara_driver_sdk::http::Client;
//! let client = Client::new();
//! let resp = client.get("http://10.0.0.5:8776/v3/volumes").header("X-Auth-Token", &token).send()?;
//! let volumes: serde_json::Value = resp.error_for_status()?.json()?;
//! let created = client.post(url).json(&body)?.send()?.error_for_status()?;
//! ```

use crate::types::DriverError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use thiserror::Error;
use wstd::http::{Body, ErrorCode, Method, Request};

/// Why a request failed.
#[derive(Debug, Error)]
pub enum HttpError {
    /// The URL could not be parsed or used.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A header name or value was not valid.
    #[error("invalid header {name:?}: {reason}")]
    InvalidHeader { name: String, reason: String },
    /// The host refused the request: the destination was not granted to this backend, or a
    /// granted name resolved only to addresses no grant may reach. `reason` says which.
    #[error("request to {url} denied by the host: {reason}")]
    Denied { url: String, reason: String },
    /// The server could not be reached or did not answer in time (worth retrying).
    #[error("{url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// The server answered with a non-success status (see [`Response::error_for_status`]).
    #[error("{method} {url} returned HTTP {status}: {body}")]
    Status {
        method: String,
        url: String,
        status: u16,
        body: String,
    },
    /// The request or response body could not be encoded or decoded as JSON.
    #[error("JSON: {0}")]
    Json(String),
    /// Any other failure of the transfer.
    #[error("{method} {url}: {reason}")]
    Transfer {
        method: String,
        url: String,
        reason: String,
    },
}

impl HttpError {
    /// The HTTP status, for [`HttpError::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Denied and unreachable are `unavailable` (the call may succeed later, or once granted);
/// a 404 is `not-found`, a 409 `already-exists`; everything else is `backend`.
impl From<HttpError> for DriverError {
    fn from(e: HttpError) -> Self {
        let msg = e.to_string();
        match e {
            HttpError::Denied { .. } | HttpError::Unreachable { .. } => DriverError::Unavailable(msg),
            HttpError::Status { status: 404, .. } => DriverError::NotFound(msg),
            HttpError::Status { status: 409, .. } => DriverError::AlreadyExists(msg),
            HttpError::Status { status: 502..=504, .. } => DriverError::Unavailable(msg),
            _ => DriverError::Backend(msg),
        }
    }
}

/// A blocking HTTP client. Cheap to create; holds only default headers and timeouts.
#[derive(Debug, Clone)]
pub struct Client {
    headers: Vec<(String, String)>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client with a 10 s connect timeout and a 60 s timeout for the first and each later
    /// chunk of the response.
    pub fn new() -> Self {
        Client {
            headers: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
        }
    }

    /// Set the connect timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Set the timeout for the response's first byte and between later chunks.
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }

    /// A header sent with every request of this client (e.g. an auth token).
    pub fn default_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Start a request with any method (`GET`, `POST`, ... or an extension method).
    pub fn request(&self, method: &str, url: &str) -> RequestBuilder {
        RequestBuilder {
            client: self.clone(),
            method: method.to_ascii_uppercase(),
            url: url.to_string(),
            headers: self.headers.clone(),
            body: Vec::new(),
            error: None,
        }
    }

    pub fn get(&self, url: &str) -> RequestBuilder {
        self.request("GET", url)
    }
    pub fn post(&self, url: &str) -> RequestBuilder {
        self.request("POST", url)
    }
    pub fn put(&self, url: &str) -> RequestBuilder {
        self.request("PUT", url)
    }
    pub fn patch(&self, url: &str) -> RequestBuilder {
        self.request("PATCH", url)
    }
    pub fn delete(&self, url: &str) -> RequestBuilder {
        self.request("DELETE", url)
    }
    pub fn head(&self, url: &str) -> RequestBuilder {
        self.request("HEAD", url)
    }
}

/// A request being built; [`RequestBuilder::send`] sends it and reads the whole response.
#[derive(Debug)]
pub struct RequestBuilder {
    client: Client,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The first error of the builder chain, reported by `send`.
    error: Option<HttpError>,
}

impl RequestBuilder {
    /// Add a header (repeatable: headers with the same name are all sent).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// The raw request body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// A JSON body, with `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(bytes) => {
                self.body = bytes;
                self.header("content-type", "application/json")
            }
            Err(e) => {
                self.error.get_or_insert(HttpError::Json(e.to_string()));
                self
            }
        }
    }

    /// Send the request and read the whole response body. Any status is `Ok`: use
    /// [`Response::error_for_status`] to turn 4xx/5xx into an error.
    pub fn send(self) -> Result<Response, HttpError> {
        wstd::runtime::block_on(self.send_async())
    }

    /// [`RequestBuilder::send`] as a future, for [`send_all`].
    async fn send_async(self) -> Result<Response, HttpError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let method = self.method.clone();
        let url = self.url.clone();
        let request = self.build()?;
        let mut client = wstd::http::Client::new();
        client.set_connect_timeout(self.client.connect_timeout);
        client.set_first_byte_timeout(self.client.response_timeout);
        client.set_between_bytes_timeout(self.client.response_timeout);
        let response = client.send(request).await.map_err(|e| classify(&method, &url, e))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = response.into_body();
        let body = body.contents().await.map_err(|e| classify(&method, &url, e))?.to_vec();
        Ok(Response {
            status,
            headers,
            body,
            method,
            url,
        })
    }

    fn build(&self) -> Result<Request<Body>, HttpError> {
        let method = Method::from_bytes(self.method.as_bytes()).map_err(|e| HttpError::Transfer {
            method: self.method.clone(),
            url: self.url.clone(),
            reason: format!("invalid method: {e}"),
        })?;
        let uri: wstd::http::Uri = self.url.parse().map_err(|e| HttpError::InvalidUrl {
            url: self.url.clone(),
            reason: format!("{e}"),
        })?;
        if uri.scheme().is_none() || uri.authority().is_none() {
            return Err(HttpError::InvalidUrl {
                url: self.url.clone(),
                reason: "expected an absolute URL such as http://host:port/path".into(),
            });
        }
        let mut builder = Request::builder().method(method).uri(uri);
        // Without a length the body goes out chunked, and some servers (Cinder's eventlet WSGI)
        // then read it as empty.
        if !self.body.is_empty()
            && !self
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        {
            builder = builder.header("content-length", self.body.len());
        }
        for (name, value) in &self.headers {
            let n = wstd::http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| HttpError::InvalidHeader {
                name: name.clone(),
                reason: e.to_string(),
            })?;
            let v = wstd::http::HeaderValue::from_str(value).map_err(|e| HttpError::InvalidHeader {
                name: name.clone(),
                reason: e.to_string(),
            })?;
            builder = builder.header(n, v);
        }
        builder
            .body(Body::from(self.body.clone()))
            .map_err(|e| HttpError::Transfer {
                method: self.method.clone(),
                url: self.url.clone(),
                reason: e.to_string(),
            })
    }
}

/// Send many requests concurrently, at most `limit` in flight, and read each whole response:
/// for calls that fan out (e.g. one server-side copy per object). The results are in the order
/// of `requests`; each request keeps its own client's timeouts.
///
/// ```ignore
/// let results = elara_driver_sdk::http::send_all(keys.iter().map(|k| client.put(&url(k))).collect(), 16);
/// ```
pub fn send_all(requests: Vec<RequestBuilder>, limit: usize) -> Vec<Result<Response, HttpError>> {
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    let n = requests.len();
    let queue = Rc::new(RefCell::new(requests.into_iter().enumerate().collect::<VecDeque<_>>()));
    type Slots = Vec<Option<Result<Response, HttpError>>>;
    let results: Rc<RefCell<Slots>> = Rc::new(RefCell::new((0..n).map(|_| None).collect()));
    wstd::runtime::block_on(async {
        // `limit` workers, each taking the next request when its last one is answered.
        let workers: Vec<_> = (0..limit.clamp(1, n.max(1)))
            .map(|_| {
                let (queue, results) = (queue.clone(), results.clone());
                wstd::runtime::spawn(async move {
                    loop {
                        let next = queue.borrow_mut().pop_front();
                        let Some((i, request)) = next else { break };
                        let result = request.send_async().await;
                        results.borrow_mut()[i] = Some(result);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await;
        }
    });
    results
        .take()
        .into_iter()
        .map(|r| r.expect("every request was sent"))
        .collect()
}

/// Sort a wasi:http failure into denied / unreachable / other.
fn classify(method: &str, url: &str, e: wstd::http::Error) -> HttpError {
    let reason = format!("{e:#}");
    match e.downcast_ref::<ErrorCode>() {
        Some(ErrorCode::HttpRequestDenied) => HttpError::Denied {
            url: url.to_string(),
            reason: "the host is not granted to this backend (grant it with --allow-host)".into(),
        },
        Some(ErrorCode::DestinationIpProhibited) => HttpError::Denied {
            url: url.to_string(),
            reason: "the granted name resolves only to addresses no grant may reach \
                     (link-local, unspecified, multicast or broadcast)"
                .into(),
        },
        Some(
            ErrorCode::DnsTimeout
            | ErrorCode::DnsError(_)
            | ErrorCode::DestinationNotFound
            | ErrorCode::DestinationUnavailable
            | ErrorCode::DestinationIpUnroutable
            | ErrorCode::ConnectionRefused
            | ErrorCode::ConnectionTerminated
            | ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::ConnectionLimitReached
            | ErrorCode::TlsProtocolError
            | ErrorCode::HttpResponseTimeout,
        ) => HttpError::Unreachable {
            url: url.to_string(),
            reason,
        },
        _ => HttpError::Transfer {
            method: method.to_string(),
            url: url.to_string(),
            reason,
        },
    }
}

/// A whole response: status, headers (names lower-case) and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The request's method and URL, for error messages.
    method: String,
    url: String,
}

impl Response {
    /// 200-299.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError::Json(e.to_string()))
    }

    /// `Ok(self)` for 2xx, else [`HttpError::Status`] with the start of the body.
    pub fn error_for_status(self) -> Result<Self, HttpError> {
        if self.is_success() {
            return Ok(self);
        }
        let mut body = self.text();
        if body.len() > 512 {
            let mut cut = 512;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
            body.push_str("...");
        }
        Err(HttpError::Status {
            method: self.method,
            url: self.url,
            status: self.status,
            body,
        })
    }
}

/// JSON helpers, re-exported so drivers need not add serde themselves.
pub mod json {
    pub use serde::{Deserialize, Serialize};
    pub use serde_json::{Value, from_slice, from_str, json, to_string, to_vec};
}
