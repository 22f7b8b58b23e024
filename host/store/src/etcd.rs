//! The etcd back end (clusters), on `etcd-client`.
//!
//! # Mapping
//! - [`Compare::Revision`] with revision `0` ("absent") → `create_revision == 0`; any other revision
//!   → `mod_revision == revision`. [`Compare::Exists`] → `create_revision > 0`.
//! - `list`/`list_keys` read the prefix range in pages of [`LIST_PAGE`] keys, every page pinned to
//!   the revision of the first one, so a listing is one consistent snapshot of any size.
//! - Leases: `lease_grant` (TTL rounded up to whole seconds; etcd may raise it to its minimum),
//!   one keep-alive round trip per [`Store::keep_alive`], `lease_revoke`, `lease_time_to_live`.
//! - `watch` starts at the revision after the one current when it is called, so no change made
//!   after the call is missed. A cancelled or compacted watch, a transport error or the end of the
//!   server stream is one error item, then the stream ends.
//! - Values over [`MAX_VALUE_SIZE`] are refused with `TooLarge` before calling etcd.
//! - Transport failures, timeouts and gRPC `Unavailable`/`DeadlineExceeded` map to
//!   [`StoreError::Unavailable`]. The client is cloneable and reconnects by itself; every call has
//!   a deadline ([`EtcdOptions::request_timeout`]) because a call on an unreachable cluster would
//!   otherwise wait for ever.
//! - `etcds://`: TLS (rustls) against the CA of [`EtcdTls`], with a client certificate for mutual
//!   TLS, and etcd user/password authentication ([`EtcdAuth`]). Both are checked at connect, and a
//!   failure is reported as what it is: [`StoreError::Tls`] (the server's certificate did not
//!   verify, or the server refused ours) or [`StoreError::Auth`] (wrong user or password, or none
//!   given to a cluster that wants one), at once, not as a timeout. An auth token etcd no longer
//!   accepts (etcd restarted, or its user database changed) is renewed with the same password and
//!   the call made once more.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, KvClient,
    LeaseClient, PutOptions, TlsOptions, TxnOp, WatchClient, WatchOptions,
};

use crate::{
    Compare, KeyValue, LeaseId, MAX_VALUE_SIZE, Op, Result, Revision, Store, StoreError, Txn, TxnResult, WatchEvent,
    WatchStream,
};

/// Keys per page when listing.
pub const LIST_PAGE: i64 = 500;
/// Largest gRPC response we accept: a full page of maximum-size values.
const MAX_RESPONSE_BYTES: usize = (LIST_PAGE as usize + 1) * (MAX_VALUE_SIZE + 64 * 1024);

#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// How long [`EtcdStore::connect`] waits for the cluster to answer. Default 5 s.
    pub connect_timeout: Duration,
    /// Deadline of every call. Default 10 s.
    pub request_timeout: Duration,
    /// TLS (`etcds://`); `None`: plain HTTP/2.
    pub tls: Option<EtcdTls>,
    /// etcd user and password; `None`: no authentication (or the client certificate's CN).
    pub auth: Option<EtcdAuth>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            tls: None,
            auth: None,
        }
    }
}

/// A PEM file's content and where it came from (error messages name the file).
#[derive(Clone)]
pub struct PemFile {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

impl fmt::Debug for PemFile {
    // The path only: a key's PEM is a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemFile").field("path", &self.path).finish()
    }
}

/// TLS to etcd: the CA the server's certificate must chain to, and our certificate and key for
/// mutual TLS (`--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PemFile,
    pub client: Option<(PemFile, PemFile)>,
}

impl EtcdTls {
    fn options(&self) -> TlsOptions {
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(&self.ca.pem));
        if let Some((cert, key)) = &self.client {
            tls = tls.identity(Identity::from_pem(&cert.pem, &key.pem));
        }
        tls
    }
}

/// A password that never shows in `Debug` output or logs.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn new(password: impl Into<String>) -> Self {
        Password(password.into())
    }
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// etcd user/password authentication.
#[derive(Debug, Clone)]
pub struct EtcdAuth {
    pub user: String,
    pub password: Password,
}

/// Where the TLS material and credentials are, as configured (`--store-ca`, `--store-cert`,
/// `--store-key`, `--store-user`, `--store-password-file`). [`EtcdSecurity::load`] reads and
/// checks the files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdSecurity {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

impl EtcdSecurity {
    /// Whether nothing is configured.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Check the settings against the URL (`tls`: `etcds://`; `url_user`: its `user@`) and read
    /// the files: the TLS material, and the user with its password. Every mistake is a
    /// [`StoreError::Settings`] naming the setting; nothing is contacted.
    pub fn load(&self, tls: bool, url_user: Option<&str>) -> Result<(Option<EtcdTls>, Option<EtcdAuth>)> {
        let tls = if tls {
            let ca_path = self.ca.as_ref().ok_or_else(|| {
                settings(
                    "store-ca",
                    "etcds:// needs the CA certificate that signed the etcd servers' certificates \
                     (--store-ca, ELARA_STORE_CA or ca in [store])",
                )
            })?;
            let ca = read_certificates("store-ca", ca_path)?;
            let client = match (&self.cert, &self.key) {
                (Some(cert), Some(key)) => Some((
                    read_certificates("store-cert", cert)?,
                    read_private_key("store-key", key)?,
                )),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(settings(
                        "store-key",
                        "--store-cert needs the key of that certificate (--store-key)",
                    ));
                }
                (None, Some(_)) => {
                    return Err(settings(
                        "store-cert",
                        "--store-key needs its certificate (--store-cert)",
                    ));
                }
            };
            Some(EtcdTls { ca, client })
        } else {
            for (field, set) in [
                ("store-ca", self.ca.is_some()),
                ("store-cert", self.cert.is_some()),
                ("store-key", self.key.is_some()),
            ] {
                if set {
                    return Err(settings(
                        field,
                        "TLS settings need an etcds:// store URL (etcd:// is plain HTTP)",
                    ));
                }
            }
            None
        };
        let user = match (url_user, self.user.as_deref()) {
            (Some(a), Some(b)) if a != b => {
                return Err(settings(
                    "store-user",
                    format!("the store URL names user {a:?} and --store-user {b:?}; give one"),
                ));
            }
            (a, b) => a.or(b),
        };
        let auth = match (user, &self.password_file) {
            (Some(user), Some(file)) => Some(EtcdAuth {
                user: user.to_string(),
                password: read_password(file)?,
            }),
            (None, None) => None,
            (Some(user), None) => {
                return Err(settings(
                    "store-password-file",
                    format!(
                        "etcd user {user:?} needs its password in a file (--store-password-file); \
                         a password is never taken from the command line or the URL"
                    ),
                ));
            }
            (None, Some(_)) => {
                return Err(settings(
                    "store-user",
                    "--store-password-file needs the user it is the password of (--store-user or user@ in the URL)",
                ));
            }
        };
        Ok((tls, auth))
    }
}

fn settings(field: &str, why: impl Into<String>) -> StoreError {
    StoreError::Settings {
        field: field.to_string(),
        why: why.into(),
    }
}

/// Read a file of `field`, refusing one that group or others may read when it holds a secret.
fn read_file(field: &str, path: &Path, secret: bool) -> Result<Vec<u8>> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| settings(field, format!("{shown}: {e}")))?;
    if !meta.is_file() {
        return Err(settings(field, format!("{shown} is not a regular file")));
    }
    let mode = meta.permissions().mode() & 0o777;
    if secret && mode & 0o077 != 0 {
        return Err(settings(
            field,
            format!(
                "{shown} is readable by group or others (mode {mode:04o}); it holds a secret: \
                 chmod 600 {shown}"
            ),
        ));
    }
    std::fs::read(path).map_err(|e| settings(field, format!("{shown}: {e}")))
}

fn read_certificates(field: &str, path: &Path) -> Result<PemFile> {
    let pem = read_file(field, path, false)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| settings(field, format!("{}: not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(settings(field, format!("{} holds no PEM certificate", path.display())));
    }
    Ok(PemFile {
        path: path.to_path_buf(),
        pem,
    })
}

fn read_private_key(field: &str, path: &Path) -> Result<PemFile> {
    let pem = read_file(field, path, true)?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(_)) => Ok(PemFile {
            path: path.to_path_buf(),
            pem,
        }),
        Ok(None) => Err(settings(field, format!("{} holds no PEM private key", path.display()))),
        Err(e) => Err(settings(field, format!("{}: not PEM: {e}", path.display()))),
    }
}

/// The password: the file's content less one trailing newline.
fn read_password(path: &Path) -> Result<Password> {
    const FIELD: &str = "store-password-file";
    let bytes = read_file(FIELD, path, true)?;
    let text = String::from_utf8(bytes).map_err(|_| settings(FIELD, format!("{} is not UTF-8", path.display())))?;
    let password = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(settings(FIELD, format!("{} is empty", path.display())));
    }
    Ok(Password::new(password))
}

/// An etcd cluster. Cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    kv: KvClient,
    watch: WatchClient,
    lease: LeaseClient,
    endpoints: Vec<String>,
    options: EtcdOptions,
    /// Bumped each time the auth token is renewed: a call that saw an older one and was refused
    /// just tries again with the new token instead of renewing once more.
    token_generation: Arc<AtomicU64>,
    /// One renewal at a time.
    renewing: Arc<tokio::sync::Mutex<()>>,
}

impl EtcdStore {
    /// Connect to `endpoints` (`host:port` or `http://host:port`) and check that the cluster
    /// answers within the connect timeout; `Unavailable` otherwise.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        Self::connect_with(endpoints, EtcdOptions::default()).await
    }

    /// Connect with TLS and credentials (`options.tls`, `options.auth`) and prove the cluster
    /// answers one read: `Tls`, `Auth` or `Unavailable` when it does not, within the connect
    /// timeout.
    pub async fn connect_with(endpoints: &[String], options: EtcdOptions) -> Result<Self> {
        if endpoints.is_empty() || endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(StoreError::Other(format!(
                "etcd endpoints: need at least one non-empty host:port, got {endpoints:?}"
            )));
        }
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| endpoint_url(e, options.tls.is_some()))
            .collect();
        let location = location(endpoints, &options);
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some(tls) = &options.tls {
            connect = connect.with_tls(tls.options());
            preflight_tls(&urls, tls, &options, &location).await?;
        }
        if let Some(auth) = &options.auth {
            connect = connect.with_user(auth.user.as_str(), auth.password.expose());
        }
        let connect_timeout = options.connect_timeout;
        let no_answer = || {
            StoreError::Unavailable(format!(
                "etcd at {location} is not reachable: no answer within {connect_timeout:?}"
            ))
        };
        // With a user, this already authenticates (one round trip).
        let client = tokio::time::timeout(options.connect_timeout, Client::connect(&urls, Some(connect)))
            .await
            .map_err(|_| no_answer())?
            .map_err(|e| connect_error(&e, &location, &options))?;
        let store = Self {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
            watch: client.watch_client().max_decoding_message_size(MAX_RESPONSE_BYTES),
            lease: client.lease_client(),
            client,
            endpoints: endpoints.to_vec(),
            options,
            token_generation: Arc::default(),
            renewing: Arc::default(),
        };
        // The client connects lazily: one read proves the cluster answers and lets us read.
        let mut kv = store.kv.clone();
        let probe = kv.get(crate::PREFIX, Some(GetOptions::new().with_count_only()));
        tokio::time::timeout(store.options.connect_timeout, probe)
            .await
            .map_err(|_| no_answer())?
            .map_err(|e| connect_error(&e, &location, &store.options))?;
        tracing::debug!(store = %location, "etcd store connected");
        Ok(store)
    }

    /// The underlying client, for callers that need raw etcd (benchmarks, tools).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Run one etcd call under the request deadline, mapping its error with `ctx`.
    async fn call<T, F, Fut>(&self, ctx: Ctx<'_>, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.attempt(op).await?.map_err(|e| map_error(e, &ctx))
    }

    /// `op` under the request deadline; once more after renewing the auth token when etcd no
    /// longer accepts it. The outer error is the deadline or a failed renewal; the inner one is
    /// etcd's answer, for the caller to map.
    async fn attempt<T, F, Fut>(&self, op: F) -> Result<std::result::Result<T, etcd_client::Error>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut renewed = false;
        let seen = self.token_generation.load(Ordering::Acquire);
        loop {
            match tokio::time::timeout(self.options.request_timeout, op()).await {
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd at {} did not answer within {:?}",
                        self.location(),
                        self.options.request_timeout
                    )));
                }
                Ok(Err(e)) if !renewed && self.options.auth.is_some() && token_rejected(&e) => {
                    tracing::info!(store = %self.location(), "etcd refused the auth token ({e}); authenticating again");
                    self.renew_token(seen).await?;
                    renewed = true;
                }
                Ok(result) => return Ok(result),
            }
        }
    }

    /// A new auth token for every client of this store, unless another call renewed it since
    /// generation `seen`.
    async fn renew_token(&self, seen: u64) -> Result<()> {
        let Some(auth) = &self.options.auth else {
            return Ok(());
        };
        let _one_at_a_time = self.renewing.lock().await;
        if self.token_generation.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        let mut client = self.client.auth_client();
        // etcd refuses an Authenticate request that carries the token it no longer knows. Calls
        // made meanwhile go without one, are refused as "user name is empty", and come back here.
        client.remove_client_auth();
        let renew = client.set_client_auth(auth.user.clone(), auth.password.expose().to_string());
        tokio::time::timeout(self.options.request_timeout, renew)
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "etcd at {} did not answer authentication within {:?}",
                    self.location(),
                    self.options.request_timeout
                ))
            })?
            .map_err(|e| connect_error(&e, &self.location(), &self.options))?;
        self.token_generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Every key in `[start, end)` (prefix range), paged, at one revision.
    async fn range(&self, prefix: &str, keys_only: bool) -> Result<Vec<etcd_client::KeyValue>> {
        let (mut start, end) = prefix_range(prefix);
        let mut revision = 0;
        let mut out = Vec::new();
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE)
                .with_revision(revision);
            if keys_only {
                opts = opts.with_keys_only();
            }
            let mut resp = self
                .call(Ctx::default(), || {
                    let (mut kv, start, opts) = (self.kv.clone(), start.clone(), opts.clone());
                    async move { kv.get(start, Some(opts)).await }
                })
                .await?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let more = resp.more();
            let page = resp.take_kvs();
            let Some(last) = page.last() else { break };
            start = last.key().to_vec();
            start.push(0);
            out.extend(page);
            if !more {
                break;
            }
        }
        Ok(out)
    }

    /// The cluster's current revision.
    async fn current_revision(&self) -> Result<Revision> {
        let resp = self
            .call(Ctx::default(), || {
                let mut kv = self.kv.clone();
                async move { kv.get(crate::PREFIX, Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn location(&self) -> String {
        location(&self.endpoints, &self.options)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        crate::validate::key(key)?;
        let mut resp = self
            .call(Ctx::key(key), || {
                let mut kv = self.kv.clone();
                async move { kv.get(key, None).await }
            })
            .await?;
        resp.take_kvs().into_iter().next().map(convert_kv).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        self.range(prefix, false).await?.into_iter().map(convert_kv).collect()
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        self.range(prefix, true)
            .await?
            .into_iter()
            .map(|kv| key_string(kv.key()))
            .collect()
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        crate::validate::put(key, &value, self.max_value_size())?;
        let size = value.len();
        let opts = lease.map(|id| PutOptions::new().with_lease(id));
        let resp = self
            .call(
                Ctx {
                    key: Some(key),
                    size,
                    lease,
                },
                || {
                    let (mut kv, value, opts) = (self.kv.clone(), value.clone(), opts.clone());
                    async move { kv.put(key, value, opts).await }
                },
            )
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        crate::validate::key(key)?;
        let resp = self
            .call(Ctx::key(key), || {
                let mut kv = self.kv.clone();
                async move { kv.delete(key, None).await }
            })
            .await?;
        Ok(resp.deleted() > 0)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        crate::validate::txn(&txn, self.max_value_size())?;
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|c| match c {
                Compare::Revision { key, revision: 0 } => {
                    EtcdCompare::create_revision(key.as_str(), CompareOp::Equal, 0)
                }
                Compare::Revision { key, revision } => {
                    EtcdCompare::mod_revision(key.as_str(), CompareOp::Equal, *revision)
                }
                Compare::Exists { key } => EtcdCompare::create_revision(key.as_str(), CompareOp::Greater, 0),
            })
            .collect();
        // For error messages: the first key written, the total size, the first lease used.
        let ctx = Ctx {
            key: txn.ops.first().map(|op| match op {
                Op::Put { key, .. } | Op::Delete { key } => key.as_str(),
            }),
            size: txn
                .ops
                .iter()
                .map(|op| if let Op::Put { value, .. } = op { value.len() } else { 0 })
                .sum(),
            lease: txn
                .ops
                .iter()
                .find_map(|op| if let Op::Put { lease, .. } = op { *lease } else { None }),
        };
        let ops: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => TxnOp::put(
                    key.as_str(),
                    value.clone(),
                    lease.map(|id| PutOptions::new().with_lease(id)),
                ),
                Op::Delete { key } => TxnOp::delete(key.as_str(), None),
            })
            .collect();
        let request = etcd_client::Txn::new().when(compares).and_then(ops);
        let resp = self
            .call(ctx, || {
                let (mut kv, request) = (self.kv.clone(), request.clone());
                async move { kv.txn(request).await }
            })
            .await?;
        Ok(TxnResult {
            succeeded: resp.succeeded(),
            revision: resp.header().map(|h| h.revision()).unwrap_or(0),
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        if ttl.is_zero() {
            return Err(StoreError::Other("lease ttl must be positive".into()));
        }
        // etcd counts whole seconds; round up so a lease never lives shorter than asked.
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let secs = i64::try_from(secs).unwrap_or(i64::MAX);
        let resp = self
            .call(Ctx::default(), || {
                let mut lease = self.lease.clone();
                async move { lease.grant(secs, None).await }
            })
            .await?;
        if !resp.error().is_empty() {
            return Err(StoreError::Other(format!("etcd lease grant: {}", resp.error())));
        }
        Ok(resp.id())
    }

    async fn keep_alive(&self, id: LeaseId) -> Result<()> {
        // One request, one answer; dropping the keeper and stream closes the gRPC stream.
        let result = self
            .attempt(|| {
                let mut lease = self.lease.clone();
                async move { lease.keep_alive(id).await }
            })
            .await?;
        match result {
            Ok(_keeper_and_stream) => Ok(()),
            Err(etcd_client::Error::LeaseKeepAliveError(why)) if why.contains("not found") => {
                Err(StoreError::LeaseNotFound(id))
            }
            Err(e) => Err(map_error(
                e,
                &Ctx {
                    lease: Some(id),
                    ..Ctx::default()
                },
            )),
        }
    }

    async fn revoke_lease(&self, id: LeaseId) -> Result<()> {
        self.call(
            Ctx {
                lease: Some(id),
                ..Ctx::default()
            },
            || {
                let mut lease = self.lease.clone();
                async move { lease.revoke(id).await }
            },
        )
        .await?;
        Ok(())
    }

    async fn lease_alive(&self, id: LeaseId) -> Result<bool> {
        match self
            .call(
                Ctx {
                    lease: Some(id),
                    ..Ctx::default()
                },
                || {
                    let mut lease = self.lease.clone();
                    async move { lease.time_to_live(id, None).await }
                },
            )
            .await
        {
            Ok(resp) => Ok(resp.ttl() > 0),
            Err(StoreError::LeaseNotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream> {
        let after = self.current_revision().await?;
        let (start, end) = prefix_range(prefix);
        let opts = WatchOptions::new().with_range(end).with_start_revision(after + 1);
        let (watcher, stream) = self
            .call(Ctx::default(), || {
                let (mut client, start, opts) = (self.watch.clone(), start.clone(), opts.clone());
                async move { client.watch(start, Some(opts)).await }
            })
            .await?;
        struct State {
            // Kept so that the request half of the gRPC stream stays open while we watch.
            _watcher: etcd_client::Watcher,
            stream: etcd_client::WatchStream,
            pending: VecDeque<Result<WatchEvent>>,
            ended: bool,
            prefix: String,
        }
        let state = State {
            _watcher: watcher,
            stream,
            pending: VecDeque::new(),
            ended: false,
            prefix: prefix.to_string(),
        };
        Ok(Box::pin(futures::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(item) = st.pending.pop_front() {
                    return Some((item, st));
                }
                if st.ended {
                    return None;
                }
                match st.stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled() || resp.compact_revision() > 0 {
                            st.ended = true;
                            let why = if resp.compact_revision() > 0 {
                                format!("history compacted at revision {}", resp.compact_revision())
                            } else {
                                resp.cancel_reason().to_string()
                            };
                            st.pending.push_back(Err(StoreError::Unavailable(format!(
                                "etcd watch on {:?} cancelled: {why}; list again and start a new watch",
                                st.prefix
                            ))));
                            continue;
                        }
                        for event in resp.events() {
                            st.pending.push_back(convert_event(event));
                        }
                    }
                    Ok(None) => {
                        st.ended = true;
                        st.pending.push_back(Err(StoreError::Unavailable(format!(
                            "etcd watch on {:?} closed by the server",
                            st.prefix
                        ))));
                    }
                    Err(e) => {
                        st.ended = true;
                        st.pending.push_back(Err(map_error(e, &Ctx::default())));
                    }
                }
            }
        })))
    }

    fn max_value_size(&self) -> usize {
        MAX_VALUE_SIZE
    }
}

/// What a failing call was about, for the error it turns into.
#[derive(Default)]
struct Ctx<'a> {
    key: Option<&'a str>,
    size: usize,
    lease: Option<LeaseId>,
}

impl<'a> Ctx<'a> {
    fn key(key: &'a str) -> Self {
        Self {
            key: Some(key),
            ..Self::default()
        }
    }
}

/// `http://host:port` or `https://host:port` for an endpoint given as `host:port` (or with
/// either scheme, which TLS decides).
fn endpoint_url(endpoint: &str, tls: bool) -> String {
    let bare = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .unwrap_or(endpoint);
    format!("{}://{bare}", if tls { "https" } else { "http" })
}

/// The store as shown to people: scheme, user and endpoints; never a password.
fn location(endpoints: &[String], options: &EtcdOptions) -> String {
    let bare: Vec<&str> = endpoints
        .iter()
        .map(|e| {
            e.strip_prefix("https://")
                .or_else(|| e.strip_prefix("http://"))
                .unwrap_or(e)
        })
        .collect();
    let scheme = if options.tls.is_some() { "etcds" } else { "etcd" };
    let user = options
        .auth
        .as_ref()
        .map(|a| format!("{}@", a.user))
        .unwrap_or_default();
    format!("{scheme}://{user}{}", bare.join(","))
}

/// An error with its whole cause chain (tonic's transport error says only "transport error";
/// the reason, e.g. rustls' "invalid peer certificate: UnknownIssuer", is in its sources).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// Whether a failure is the TLS layer's: a certificate that did not verify or an alert from the
/// server (ours refused).
fn is_tls_failure(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    ["certificate", "handshake", "alert", "tls", "the server refused"]
        .iter()
        .any(|w| text.contains(w))
}

/// What a TLS failure means, in words: whose certificate failed and why.
fn tls_reason(text: &str, tls: &EtcdTls) -> String {
    let lower = text.to_ascii_lowercase();
    if text.starts_with("the server refused") {
        text.to_string()
    } else if lower.contains("invalid peer certificate") || lower.contains("unknownissuer") {
        format!(
            "the server's certificate did not verify against the CA {} ({text})",
            tls.ca.path.display()
        )
    } else if lower.contains("alert") {
        let ours = match &tls.client {
            Some((cert, _)) => format!("the client certificate {}", cert.path.display()),
            None => "a connection without a client certificate (--store-cert, --store-key)".into(),
        };
        format!("the server refused {ours} ({text})")
    } else {
        text.to_string()
    }
}

/// The words for a connection the server ended right after a good handshake.
fn return_refusal(detail: &str, tls: &EtcdTls) -> String {
    if detail.to_ascii_lowercase().contains("alert") {
        return detail.to_string();
    }
    let ours = match &tls.client {
        Some((cert, _)) => format!(
            "the client certificate {} (is it signed by a CA the server trusts?)",
            cert.path.display()
        ),
        None => "a connection without a client certificate (--store-cert, --store-key)".into(),
    };
    format!("the server refused {ours}: it closed the connection after the TLS handshake without answering ({detail})")
}

/// Whether etcd refused the auth token itself (not the user): it forgot it (a restarted member,
/// the token's TTL, the user's password changed), its user database changed since it was issued
/// (JWT tokens), or a call went without one while another renewed it ("user name is empty", for
/// a store that has credentials). A new token fixes each.
fn token_rejected(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            let m = status.message();
            m.contains("invalid auth token")
                || m.contains("revision of auth store is old")
                || m.contains("user name is empty")
        }
        _ => false,
    }
}

/// A TLS handshake of our own with each endpoint before the real client: etcd-client's balanced
/// channel keeps retrying a handshake that fails and reports only the timeout, which would hide
/// *why* (a certificate that does not verify). One endpoint that shakes hands is enough.
async fn preflight_tls(urls: &[String], tls: &EtcdTls, options: &EtcdOptions, location: &str) -> Result<()> {
    let mut failures = Vec::new();
    for url in urls {
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
            .and_then(|e| e.tls_config(tls.options()))
            .map_err(|e| StoreError::Tls {
                store: location.to_string(),
                why: format!("{url}: {}", chain(&e)),
            })?
            .connect_timeout(options.connect_timeout);
        let exchange = async {
            // `connect` is eager: TCP, the TLS handshake, then HTTP/2's.
            let channel = endpoint.connect().await.map_err(|e| chain(&e))?;
            first_request(channel, url).await.map_err(|why| {
                // The handshake was good from our side, and the server hung up before a single
                // HTTP answer: that is a TLS server refusing the client's certificate (Go's
                // does not always get its alert through before it closes).
                return_refusal(&why, tls)
            })
        };
        match tokio::time::timeout(options.connect_timeout, exchange).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(why)) => failures.push((url, why)),
            Err(_) => failures.push((url, format!("no answer within {:?}", options.connect_timeout))),
        }
    }
    if let Some((url, text)) = failures.iter().find(|(_, t)| is_tls_failure(t)) {
        return Err(StoreError::Tls {
            store: location.to_string(),
            why: format!("{url}: {}", tls_reason(text, tls)),
        });
    }
    let all: Vec<String> = failures.iter().map(|(u, t)| format!("{u}: {t}")).collect();
    Err(StoreError::Unavailable(format!(
        "etcd at {location} is not reachable: {}",
        all.join("; ")
    )))
}

/// One HTTP/2 request on a fresh TLS channel: with TLS 1.3 a server that refuses our client
/// certificate says so (an alert) only after the handshake, on the first read. Any HTTP answer,
/// even a gRPC error, proves the TLS layer is good.
async fn first_request(mut channel: tonic::transport::Channel, url: &str) -> std::result::Result<(), String> {
    use tower_service::Service;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("{url}/etcdserverpb.Maintenance/Status"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::empty_body())
        .map_err(|e| e.to_string())?;
    futures::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| chain(&e))?;
    channel.call(request).await.map(drop).map_err(|e| chain(&e))
}

/// The error of connecting (or of the first read): a TLS failure, an authentication failure, or
/// an unreachable cluster, said as such.
fn connect_error(err: &etcd_client::Error, location: &str, options: &EtcdOptions) -> StoreError {
    let text = chain(err);
    let auth = |why: String| StoreError::Auth {
        store: location.to_string(),
        why,
    };
    if let etcd_client::Error::GRpcStatus(status) = err {
        let message = status.message();
        let user = options.auth.as_ref().map(|a| a.user.as_str());
        if message.contains("authentication failed") {
            return auth(format!(
                "etcd refused user {:?} with the password from {} ({message})",
                user.unwrap_or_default(),
                "--store-password-file"
            ));
        }
        if message.contains("user name is empty") || message.contains("user name not found") {
            return auth(format!(
                "the cluster requires authentication and no user was given: set --store-user and \
                 --store-password-file ({message})"
            ));
        }
        if status.code() == tonic::Code::PermissionDenied {
            let who = match user {
                Some(u) => format!("user {u:?}"),
                None => "this client (no user given; its certificate's CN is no etcd user with access)".into(),
            };
            return auth(format!(
                "{who} may not read {} ({message}): grant its role read-write on Elara's keys, or give \
                 --store-user and --store-password-file",
                crate::PREFIX
            ));
        }
        if status.code() == tonic::Code::Unauthenticated || token_rejected(err) {
            return auth(message.to_string());
        }
    }
    if let Some(tls) = &options.tls
        && is_tls_failure(&text)
    {
        return StoreError::Tls {
            store: location.to_string(),
            why: tls_reason(&text, tls),
        };
    }
    let unreachable = match err {
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        ),
        _ => true,
    };
    if unreachable {
        StoreError::Unavailable(format!("etcd at {location} is not reachable: {text}"))
    } else {
        StoreError::Other(format!("etcd at {location}: {text}"))
    }
}

fn map_error(err: etcd_client::Error, ctx: &Ctx<'_>) -> StoreError {
    use tonic::Code;
    match err {
        etcd_client::Error::TransportError(e) => StoreError::Unavailable(format!("etcd transport: {e}")),
        etcd_client::Error::IoError(e) => StoreError::Unavailable(format!("etcd i/o: {e}")),
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            if message.contains("lease not found") {
                return StoreError::LeaseNotFound(ctx.lease.unwrap_or_default());
            }
            if message.contains("request is too large") {
                return StoreError::TooLarge {
                    key: ctx.key.unwrap_or_default().to_string(),
                    size: ctx.size,
                    limit: MAX_VALUE_SIZE,
                };
            }
            match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                    StoreError::Unavailable(format!("etcd: {message}"))
                }
                // tonic reports broken connections as Unknown with a transport message.
                Code::Unknown if message.contains("transport") || message.contains("connection") => {
                    StoreError::Unavailable(format!("etcd: {message}"))
                }
                code => StoreError::Other(format!("etcd ({code:?}): {message}")),
            }
        }
        other => StoreError::Other(format!("etcd: {other}")),
    }
}

/// `[start, end)` of a prefix; the empty prefix is the whole key space (`"\0"`, `"\0"`).
fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    let bytes = prefix.as_bytes();
    for i in (0..bytes.len()).rev() {
        if bytes[i] < 0xff {
            let mut end = bytes[..=i].to_vec();
            end[i] += 1;
            return (bytes.to_vec(), end);
        }
    }
    (bytes.to_vec(), vec![0])
}

fn key_string(key: &[u8]) -> Result<String> {
    String::from_utf8(key.to_vec()).map_err(|_| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        why: "key is not UTF-8".into(),
    })
}

fn convert_kv(kv: etcd_client::KeyValue) -> Result<KeyValue> {
    let key = key_string(kv.key())?;
    let mod_revision = kv.mod_revision();
    let lease = (kv.lease() != 0).then_some(kv.lease());
    let (_, value) = kv.into_key_value();
    Ok(KeyValue {
        key,
        value,
        mod_revision,
        lease,
    })
}

fn convert_event(event: &etcd_client::Event) -> Result<WatchEvent> {
    let kv = event
        .kv()
        .ok_or_else(|| StoreError::Other("etcd watch event without a key".into()))?;
    match event.event_type() {
        EventType::Put => convert_kv(kv.clone()).map(WatchEvent::Put),
        EventType::Delete => Ok(WatchEvent::Delete {
            key: key_string(kv.key())?,
            revision: kv.mod_revision(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_range;

    #[test]
    fn prefix_range_increments_the_last_byte() {
        assert_eq!(prefix_range("/a/"), (b"/a/".to_vec(), b"/a0".to_vec()));
        assert_eq!(prefix_range(""), (vec![0], vec![0]));
    }
}
