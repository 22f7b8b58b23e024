//! The S3 calls a backup target needs (PutObject, GetObject, DeleteObject, ListObjectsV2,
//! CreateBucket), path-style, signed with AWS SigV4 by `aws-sigv4` and sent with hyper.
//! Bodies are sent `UNSIGNED-PAYLOAD` (integrity comes from the content-addressed block ids, which
//! every restore and verify checks). Plain `http://` endpoints only for now.

use std::time::Duration;

use elara_s3_wire::{ErrorDoc, ListBucketResult, PATH, Payload, QUERY, Signer};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::utf8_percent_encode;
use thiserror::Error;

/// Attempts per call: transient failures (connection reset, 5xx) are retried with a short backoff.
const ATTEMPTS: u32 = 4;

/// Why an S3 call failed.
#[derive(Debug, Error)]
pub enum S3Error {
    #[error("S3 {op} {key} returned HTTP {status}: {code} {message}")]
    Service {
        op: &'static str,
        key: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("S3 {op} {key}: {reason}")]
    Http {
        op: &'static str,
        key: String,
        reason: String,
    },
    #[error("signing the S3 {op} request: {reason}")]
    Signing { op: &'static str, reason: String },
    #[error("S3 {op}: unreadable reply: {reason}")]
    Reply { op: &'static str, reason: String },
}

/// A client bound to one bucket and key prefix.
#[derive(Clone)]
pub struct S3Client {
    endpoint: String,
    region: String,
    access_key: String,
    secret_key: String,
    bucket: String,
    /// Key prefix, empty or ending in `/`.
    prefix: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl S3Client {
    pub fn new(endpoint: &str, region: &str, access_key: &str, secret_key: &str, bucket: &str, prefix: &str) -> Self {
        let prefix = prefix.trim_matches('/');
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        S3Client {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region: region.to_string(),
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            http: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(32)
                .build(connector),
        }
    }

    pub fn describe(&self) -> String {
        format!("s3://{}/{} at {}", self.bucket, self.prefix, self.endpoint)
    }

    fn url(&self, key: Option<&str>, query: &[(&str, String)]) -> String {
        let mut url = format!("{}/{}/", self.endpoint, utf8_percent_encode(&self.bucket, PATH));
        if let Some(k) = key {
            url.push_str(&utf8_percent_encode(&format!("{}{k}", self.prefix), PATH).to_string());
        }
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(k);
            url.push('=');
            url.push_str(&utf8_percent_encode(v, QUERY).to_string());
        }
        url
    }

    /// Sign and send once; any status is returned with its body.
    async fn send_once(
        &self,
        op: &'static str,
        method: &str,
        url: &str,
        body: &Bytes,
    ) -> Result<(u16, Bytes), S3Error> {
        let signer = Signer {
            access_key: &self.access_key,
            secret_key: &self.secret_key,
            region: &self.region,
        };
        let signing = |reason: String| S3Error::Signing { op, reason };
        let headers = signer.headers(method, url, &[], Payload::Unsigned).map_err(signing)?;
        let mut req = hyper::Request::builder().method(method).uri(url);
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        if method == "PUT" || method == "POST" {
            req = req.header("content-length", body.len().to_string());
        }
        let req = req.body(Full::new(body.clone())).map_err(|e| signing(e.to_string()))?;
        let http = |e: &dyn std::fmt::Display| S3Error::Http {
            op,
            key: url.to_string(),
            reason: e.to_string(),
        };
        let resp = tokio::time::timeout(Duration::from_secs(120), self.http.request(req))
            .await
            .map_err(|e| http(&e))?
            .map_err(|e| http(&e))?;
        let status = resp.status().as_u16();
        let bytes = tokio::time::timeout(Duration::from_secs(300), resp.into_body().collect())
            .await
            .map_err(|e| http(&e))?
            .map_err(|e| http(&e))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// Send with retries of transient failures; a non-2xx answer (other than `ok_status`) is an error.
    async fn send(
        &self,
        op: &'static str,
        method: &str,
        key: Option<&str>,
        query: &[(&str, String)],
        body: Bytes,
        ok_status: &[u16],
    ) -> Result<(u16, Bytes), S3Error> {
        let url = self.url(key, query);
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            match self.send_once(op, method, &url, &body).await {
                Ok((status, bytes)) if (200..300).contains(&status) || ok_status.contains(&status) => {
                    return Ok((status, bytes));
                }
                Ok((status, bytes)) => {
                    let err = service_error(op, key.unwrap_or(&self.bucket), status, &bytes);
                    if status < 500 {
                        return Err(err);
                    }
                    last = Some(err);
                }
                Err(e @ S3Error::Http { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
            tracing::debug!(op, url, "S3 call failed; retrying");
        }
        Err(last.expect("at least one attempt"))
    }

    /// Create the bucket unless the credentials own it already.
    pub async fn ensure_bucket(&self) -> Result<(), S3Error> {
        let url = self.url(None, &[]);
        let (status, body) = self.send_once("CreateBucket", "PUT", &url, &Bytes::new()).await?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        let err = service_error("CreateBucket", &self.bucket, status, &body);
        match &err {
            S3Error::Service { code, .. } if code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" => {
                Ok(())
            }
            _ => Err(err),
        }
    }

    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), S3Error> {
        self.send("PutObject", "PUT", Some(key), &[], data, &[]).await.map(drop)
    }

    /// The object, or `None` if there is no such key.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, S3Error> {
        let (status, body) = self
            .send("GetObject", "GET", Some(key), &[], Bytes::new(), &[404])
            .await?;
        Ok((status != 404).then_some(body))
    }

    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        self.send("DeleteObject", "DELETE", Some(key), &[], Bytes::new(), &[404])
            .await
            .map(drop)
    }

    /// Every key under `prefix` (relative to the client's own prefix), all pages.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, S3Error> {
        let full = format!("{}{prefix}", self.prefix);
        let mut out = vec![];
        let mut token: Option<String> = None;
        loop {
            let mut q = vec![("list-type", "2".to_string()), ("prefix", full.clone())];
            if let Some(t) = &token {
                q.insert(0, ("continuation-token", t.clone()));
            }
            let (status, body) = self
                .send("ListObjectsV2", "GET", None, &q, Bytes::new(), &[404])
                .await?;
            if status == 404 {
                // `target add` made the bucket: without it the target is lost (deleted, or
                // another server), which is never the same as an empty target.
                return Err(service_error("ListObjectsV2", &self.bucket, status, &body));
            }
            let page: ListBucketResult = quick_xml::de::from_reader(body.as_ref()).map_err(|e| S3Error::Reply {
                op: "ListObjectsV2",
                reason: e.to_string(),
            })?;
            token = page.next_page().map(str::to_string);
            out.extend(
                page.contents
                    .into_iter()
                    .filter_map(|c| c.key.strip_prefix(&self.prefix).map(str::to_string)),
            );
            if token.is_none() {
                return Ok(out);
            }
        }
    }
}

fn service_error(op: &'static str, key: &str, status: u16, body: &[u8]) -> S3Error {
    let doc = ErrorDoc::parse(body);
    let code = if doc.code.is_empty() {
        format!("HTTP{status}")
    } else {
        doc.code
    };
    S3Error::Service {
        op,
        key: key.to_string(),
        status,
        code,
        message: doc.message,
    }
}
