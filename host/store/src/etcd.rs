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

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions, KvClient,
    LeaseClient, PutOptions, TxnOp, WatchClient, WatchOptions,
};

use crate::{
    Compare, KeyValue, LeaseId, MAX_VALUE_SIZE, Op, Result, Revision, Store, StoreError, Txn,
    TxnResult, WatchEvent, WatchStream,
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
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
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
}

impl EtcdStore {
    /// Connect to `endpoints` (`host:port` or `http://host:port`) and check that the cluster
    /// answers within the connect timeout; `Unavailable` otherwise.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        Self::connect_with(endpoints, EtcdOptions::default()).await
    }

    pub async fn connect_with(endpoints: &[String], options: EtcdOptions) -> Result<Self> {
        if endpoints.is_empty() || endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(StoreError::Other(format!(
                "etcd endpoints: need at least one non-empty host:port, got {endpoints:?}"
            )));
        }
        let connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let unavailable = |why: String| {
            StoreError::Unavailable(format!(
                "etcd at {} is not reachable: {why}",
                endpoints.join(",")
            ))
        };
        let client = tokio::time::timeout(
            options.connect_timeout,
            Client::connect(endpoints, Some(connect)),
        )
        .await
        .map_err(|_| unavailable(format!("no answer within {:?}", options.connect_timeout)))?
        .map_err(|e| unavailable(e.to_string()))?;
        let store = Self {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            lease: client.lease_client(),
            client,
            endpoints: endpoints.to_vec(),
            options,
        };
        // The client connects lazily: one read proves the cluster answers.
        let mut kv = store.kv.clone();
        let probe = kv.get(crate::PREFIX, Some(GetOptions::new().with_count_only()));
        tokio::time::timeout(store.options.connect_timeout, probe)
            .await
            .map_err(|_| {
                unavailable(format!(
                    "no answer within {:?}",
                    store.options.connect_timeout
                ))
            })?
            .map_err(|e| unavailable(e.to_string()))?;
        tracing::debug!(endpoints = %store.endpoints.join(","), "etcd store connected");
        Ok(store)
    }

    /// The underlying client, for callers that need raw etcd (benchmarks, tools).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Run one etcd call under the request deadline, mapping its error with `ctx`.
    async fn call<T>(
        &self,
        ctx: Ctx<'_>,
        fut: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.options.request_timeout, fut).await {
            Ok(result) => result.map_err(|e| map_error(e, &ctx)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd at {} did not answer within {:?}",
                self.endpoints.join(","),
                self.options.request_timeout
            ))),
        }
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
            let mut kv = self.kv.clone();
            let mut resp = self
                .call(Ctx::default(), kv.get(start.clone(), Some(opts)))
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
        let mut kv = self.kv.clone();
        let resp = self
            .call(
                Ctx::default(),
                kv.get(crate::PREFIX, Some(GetOptions::new().with_count_only())),
            )
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
        format!("etcd://{}", self.endpoints.join(","))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        crate::validate::key(key)?;
        let mut kv = self.kv.clone();
        let mut resp = self.call(Ctx::key(key), kv.get(key, None)).await?;
        resp.take_kvs()
            .into_iter()
            .next()
            .map(convert_kv)
            .transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        self.range(prefix, false)
            .await?
            .into_iter()
            .map(convert_kv)
            .collect()
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
        let mut kv = self.kv.clone();
        let resp = self
            .call(
                Ctx {
                    key: Some(key),
                    size,
                    lease,
                },
                kv.put(key, value, opts),
            )
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        crate::validate::key(key)?;
        let mut kv = self.kv.clone();
        let resp = self.call(Ctx::key(key), kv.delete(key, None)).await?;
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
                Compare::Exists { key } => {
                    EtcdCompare::create_revision(key.as_str(), CompareOp::Greater, 0)
                }
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
                .map(|op| {
                    if let Op::Put { value, .. } = op {
                        value.len()
                    } else {
                        0
                    }
                })
                .sum(),
            lease: txn.ops.iter().find_map(|op| {
                if let Op::Put { lease, .. } = op {
                    *lease
                } else {
                    None
                }
            }),
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
        let mut kv = self.kv.clone();
        let resp = self.call(ctx, kv.txn(request)).await?;
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
        let mut lease = self.lease.clone();
        let resp = self.call(Ctx::default(), lease.grant(secs, None)).await?;
        if !resp.error().is_empty() {
            return Err(StoreError::Other(format!(
                "etcd lease grant: {}",
                resp.error()
            )));
        }
        Ok(resp.id())
    }

    async fn keep_alive(&self, id: LeaseId) -> Result<()> {
        let mut lease = self.lease.clone();
        // One request, one answer; dropping the keeper and stream closes the gRPC stream.
        let result = tokio::time::timeout(self.options.request_timeout, lease.keep_alive(id)).await;
        match result {
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd at {} did not answer a keep-alive within {:?}",
                self.endpoints.join(","),
                self.options.request_timeout
            ))),
            Ok(Ok(_keeper_and_stream)) => Ok(()),
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(why))) if why.contains("not found") => {
                Err(StoreError::LeaseNotFound(id))
            }
            Ok(Err(e)) => Err(map_error(
                e,
                &Ctx {
                    lease: Some(id),
                    ..Ctx::default()
                },
            )),
        }
    }

    async fn revoke_lease(&self, id: LeaseId) -> Result<()> {
        let mut lease = self.lease.clone();
        self.call(
            Ctx {
                lease: Some(id),
                ..Ctx::default()
            },
            lease.revoke(id),
        )
        .await?;
        Ok(())
    }

    async fn lease_alive(&self, id: LeaseId) -> Result<bool> {
        let mut lease = self.lease.clone();
        match self
            .call(
                Ctx {
                    lease: Some(id),
                    ..Ctx::default()
                },
                lease.time_to_live(id, None),
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
        let opts = WatchOptions::new()
            .with_range(end)
            .with_start_revision(after + 1);
        let mut client = self.watch.clone();
        let (watcher, stream) = self
            .call(Ctx::default(), client.watch(start, Some(opts)))
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
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut st| async move {
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
                                    format!(
                                        "history compacted at revision {}",
                                        resp.compact_revision()
                                    )
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
            },
        )))
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

fn map_error(err: etcd_client::Error, ctx: &Ctx<'_>) -> StoreError {
    use tonic::Code;
    match err {
        etcd_client::Error::TransportError(e) => {
            StoreError::Unavailable(format!("etcd transport: {e}"))
        }
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
                Code::Unknown
                    if message.contains("transport") || message.contains("connection") =>
                {
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
