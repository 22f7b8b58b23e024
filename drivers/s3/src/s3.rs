//! A small S3 client: the dozen calls the driver makes, signed with AWS SigV4 by AWS's own signer
//! (`aws-sigv4`), sent with the SDK's blocking client over `wasi:http`, and S3's error replies
//! turned into typed [`S3Error`]s and then into the contract's [`DriverError`]s.
//!
//! Calls: ListBuckets, CreateBucket, DeleteBucket, Get/PutBucketTagging, ListObjectsV2,
//! DeleteObjects, CopyObject (UploadPartCopy in parts above 5 GiB), Get/Put/DeleteObject,
//! ListMultipartUploads and AbortMultipartUpload.

use std::time::Duration;

use base64::Engine;
use elara_driver_sdk::http::{Client, HttpError, RequestBuilder, Response, send_all};
use elara_driver_sdk::types::DriverError;
use elara_s3_wire::{ErrorDoc, ListBucketResult, PATH, Payload, QUERY, Signer};
use md5::{Digest, Md5};
use percent_encoding::utf8_percent_encode;
use serde::Deserialize;
use thiserror::Error;

/// Largest object a single CopyObject may copy, and the largest part (S3's limits).
pub const MAX_COPY_PART: u64 = 5 << 30;
/// Smallest part of a multipart copy (S3's limit, but for the last part).
pub const MIN_COPY_PART: u64 = 5 << 20;
/// Keys per ListObjectsV2 page and per DeleteObjects call (S3's maximum for both).
pub const PAGE: usize = 1000;

/// Why an S3 call failed.
#[derive(Debug, Error)]
pub enum S3Error {
    /// S3 answered with an error document (or an error status without one).
    #[error("S3 {op} returned HTTP {status} {code}{}", message_suffix(.message))]
    Service {
        /// The S3 operation, e.g. `CreateBucket`.
        op: &'static str,
        status: u16,
        /// S3's error code, e.g. `NoSuchBucket`; `HTTP<status>` when the reply had no body.
        code: String,
        message: String,
        /// The bucket the call was about, if any.
        bucket: Option<String>,
    },
    /// The request did not get an answer: refused, unreachable, denied by the sandbox.
    #[error("S3 {op}: {source}")]
    Http {
        op: &'static str,
        #[source]
        source: HttpError,
    },
    /// The request could not be signed (a bad endpoint URL or header).
    #[error("signing the S3 {op} request: {reason}")]
    Signing { op: &'static str, reason: String },
    /// S3 answered 2xx with a body we cannot read.
    #[error("S3 {op}: unreadable reply: {reason}")]
    Reply { op: &'static str, reason: String },
}

fn message_suffix(m: &str) -> String {
    if m.is_empty() { String::new() } else { format!(": {m}") }
}

impl S3Error {
    /// S3's error code, for service errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            S3Error::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    fn is(&self, code: &str) -> bool {
        self.code() == Some(code)
    }
}

/// Where the names and keys of a call came from, so errors can name the user's field.
#[derive(Debug, Clone)]
pub struct Fields {
    /// The config key that made the bucket name: `bucket` (one bucket) or `bucket_prefix`.
    pub bucket: &'static str,
    /// The endpoint URL, for messages.
    pub endpoint: String,
}

impl S3Error {
    /// The contract's error for this failure. Bad credentials and bucket names S3 refuses are
    /// `invalid` naming the config key; an unreachable endpoint, a throttle or an S3 outage are
    /// `unavailable`; missing things are `not-found`; the rest is `backend` with S3's words.
    pub fn into_driver(self, fields: &Fields) -> DriverError {
        let text = self.to_string();
        let S3Error::Service {
            status, code, bucket, ..
        } = &self
        else {
            return match self {
                S3Error::Http { source, .. } => {
                    DriverError::from(source).with_context(format!("S3 at {}", fields.endpoint))
                }
                _ => DriverError::backend(text),
            };
        };
        match code.as_str() {
            "InvalidAccessKeyId" => DriverError::invalid(
                "access_key",
                format!(
                    "S3 at {} does not know this access key (InvalidAccessKeyId)",
                    fields.endpoint
                ),
            ),
            "SignatureDoesNotMatch" => DriverError::invalid(
                "secret_key",
                format!(
                    "S3 at {} rejected the request signature (SignatureDoesNotMatch): the secret key does not belong to the access key",
                    fields.endpoint
                ),
            ),
            "InvalidBucketName" => DriverError::invalid(
                fields.bucket,
                format!(
                    "S3 refused the bucket name {:?} (InvalidBucketName): use 3-63 lower-case letters, digits, dots and hyphens",
                    bucket.as_deref().unwrap_or("")
                ),
            ),
            "AccessDenied" | "AllAccessDisabled" => DriverError::backend(format!(
                "{text}: the access key is valid but not allowed to do this (check its S3 policy)"
            )),
            "NoSuchBucket" | "NoSuchKey" | "NoSuchUpload" | "NoSuchTagSet" | "NoSuchTagSetError" => {
                DriverError::not_found(text)
            }
            "BucketAlreadyExists" => DriverError::already_exists(format!(
                "{text}: bucket {:?} belongs to another S3 account; choose another `{}`",
                bucket.as_deref().unwrap_or(""),
                fields.bucket
            )),
            "SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout" => DriverError::unavailable(text),
            _ if (500..600).contains(status) => DriverError::unavailable(text),
            _ => DriverError::backend(text),
        }
    }
}

/// An S3 endpoint and the credentials to sign with.
#[derive(Clone)]
pub struct S3 {
    endpoint: String,
    region: String,
    access_key: String,
    secret_key: String,
    path_style: bool,
    pub fields: Fields,
    /// Objects larger than this are copied with UploadPartCopy in parts of this size.
    copy_part_size: u64,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the credentials.
        f.debug_struct("S3")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
}

/// A bucket's tags, (key, value).
pub type Tags = Vec<(String, String)>;

/// One server-side copy of [`S3::copy_objects`].
#[derive(Debug, Clone)]
pub struct Copy {
    pub src_bucket: String,
    pub src_key: String,
    pub dst_bucket: String,
    pub dst_key: String,
    pub size: u64,
}

/// `x-amz-copy-source`: `/bucket/key`, URL-encoded.
fn copy_source(bucket: &str, key: &str) -> String {
    format!(
        "/{}/{}",
        utf8_percent_encode(bucket, PATH),
        utf8_percent_encode(key, PATH)
    )
}

/// A CopyObject of `source` (see [`copy_source`]) to `dst_bucket/dst_key`, metadata included.
fn copy_request<'a>(dst_bucket: &'a str, dst_key: &'a str, source: String) -> Req<'a> {
    Req::new("CopyObject", "PUT", Some(dst_bucket))
        .key(dst_key)
        .header("x-amz-copy-source", source)
        .header("x-amz-metadata-directive", "COPY")
        .timeout(Duration::from_secs(600))
}

/// One page of ListObjectsV2.
#[derive(Debug, Default)]
pub struct Page {
    pub objects: Vec<Object>,
    /// Set when more objects follow.
    pub next: Option<String>,
}

/// A request to send.
struct Req<'a> {
    op: &'static str,
    method: &'static str,
    bucket: Option<&'a str>,
    key: Option<&'a str>,
    /// Already in order; values are encoded when the URL is built.
    query: Vec<(&'static str, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: Option<Duration>,
}

impl<'a> Req<'a> {
    fn new(op: &'static str, method: &'static str, bucket: Option<&'a str>) -> Self {
        Req {
            op,
            method,
            bucket,
            key: None,
            query: vec![],
            headers: vec![],
            body: vec![],
            timeout: None,
        }
    }
    fn key(mut self, key: &'a str) -> Self {
        self.key = Some(key);
        self
    }
    fn query(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.query.push((k, v.into()));
        self
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }
    /// A body with its Content-MD5 (S3 requires one on DeleteObjects and PutBucketTagging).
    fn body_md5(mut self, body: Vec<u8>) -> Self {
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&body));
        self.body = body;
        self.header("content-md5", md5)
    }
    fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
}

impl S3 {
    /// A client for `endpoint` (`http(s)://host[:port]`, no path).
    pub fn new(
        endpoint: &str,
        region: &str,
        access_key: &str,
        secret_key: &str,
        path_style: bool,
        bucket_field: &'static str,
    ) -> Self {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        S3 {
            fields: Fields {
                bucket: bucket_field,
                endpoint: endpoint.clone(),
            },
            endpoint,
            region: region.to_string(),
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            path_style,
            copy_part_size: MAX_COPY_PART,
        }
    }

    /// Copy objects larger than `bytes` in parts of `bytes` (clamped to S3's 5 MiB..5 GiB).
    pub fn with_copy_part_size(mut self, bytes: u64) -> Self {
        self.copy_part_size = bytes.clamp(MIN_COPY_PART, MAX_COPY_PART);
        self
    }

    /// The URL of a request: path-style `endpoint/bucket/key`, or virtual-hosted
    /// `scheme://bucket.host/key`.
    fn url(&self, bucket: Option<&str>, key: Option<&str>, query: &[(&str, String)]) -> String {
        let mut url = match bucket {
            Some(b) if !self.path_style => {
                let (scheme, rest) = self.endpoint.split_once("://").unwrap_or(("http", &self.endpoint));
                format!("{scheme}://{b}.{rest}/")
            }
            Some(b) => format!("{}/{}/", self.endpoint, utf8_percent_encode(b, PATH)),
            None => format!("{}/", self.endpoint),
        };
        if let Some(k) = key {
            url.push_str(&utf8_percent_encode(k, PATH).to_string());
        }
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(k);
            // `?delete`, `?tagging`, `?uploads`: sub-resources without a value.
            if !v.is_empty() {
                url.push('=');
                url.push_str(&utf8_percent_encode(v, QUERY).to_string());
            }
        }
        url
    }

    /// The signed request, ready to send.
    fn signed(&self, req: &Req<'_>) -> Result<RequestBuilder, S3Error> {
        let url = self.url(req.bucket, req.key, &req.query);
        let signer = Signer {
            access_key: &self.access_key,
            secret_key: &self.secret_key,
            region: &self.region,
        };
        let signature = signer
            .headers(req.method, &url, &req.headers, Payload::Bytes(&req.body))
            .map_err(|reason| S3Error::Signing { op: req.op, reason })?;

        let mut client = Client::new();
        if let Some(t) = req.timeout {
            client = client.response_timeout(t);
        }
        let mut builder = client.request(req.method, &url);
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        for (k, v) in &signature {
            builder = builder.header(k, v);
        }
        if req.method != "GET" && req.method != "HEAD" {
            // Without a length the body goes out chunked, which S3 refuses on uploads (411) and
            // RGW on DELETE (501). The body is whole in memory: say how long it is.
            builder = builder.header("content-length", &req.body.len().to_string());
        }
        Ok(builder.body(req.body.clone()))
    }

    /// Send and turn a non-2xx reply into [`S3Error::Service`].
    fn send(&self, req: Req<'_>) -> Result<Response, S3Error> {
        let resp = self
            .signed(&req)?
            .send()
            .map_err(|source| S3Error::Http { op: req.op, source })?;
        check_status(&req, resp)
    }

    /// Send many requests, `concurrency` at a time; results in the order of `reqs`.
    fn send_many(&self, reqs: &[Req<'_>], concurrency: usize) -> Vec<Result<Response, S3Error>> {
        let mut results: Vec<Option<Result<Response, S3Error>>> = Vec::with_capacity(reqs.len());
        let mut ready = Vec::new();
        for (i, req) in reqs.iter().enumerate() {
            match self.signed(req) {
                Ok(b) => {
                    results.push(None);
                    ready.push((i, b));
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let (index, builders): (Vec<usize>, Vec<RequestBuilder>) = ready.into_iter().unzip();
        for (i, sent) in index.into_iter().zip(send_all(builders, concurrency)) {
            let req = &reqs[i];
            results[i] = Some(
                sent.map_err(|source| S3Error::Http { op: req.op, source })
                    .and_then(|r| check_status(req, r)),
            );
        }
        results
            .into_iter()
            .map(|r| r.expect("every request has a result"))
            .collect()
    }

    /// Names of every bucket the credentials own (also the cheapest check of the credentials).
    pub fn list_buckets(&self) -> Result<Vec<String>, S3Error> {
        let resp = self.send(Req::new("ListBuckets", "GET", None))?;
        let parsed: ListAllMyBucketsResult = parse("ListBuckets", &resp.body)?;
        Ok(parsed.buckets.bucket.into_iter().map(|b| b.name).collect())
    }

    /// Create a bucket; one the credentials already own counts as made.
    pub fn create_bucket(&self, bucket: &str) -> Result<(), S3Error> {
        let mut req = Req::new("CreateBucket", "PUT", Some(bucket));
        if self.region != "us-east-1" {
            req.body = format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                escape(&self.region)
            )
            .into_bytes();
        }
        match self.send(req) {
            Err(e) if e.is("BucketAlreadyOwnedByYou") => Ok(()),
            other => other.map(drop),
        }
    }

    /// Whether a bucket exists (and the credentials may list it).
    pub fn bucket_exists(&self, bucket: &str) -> Result<bool, S3Error> {
        let req = Req::new("ListObjectsV2", "GET", Some(bucket))
            .query("list-type", "2")
            .query("max-keys", "0");
        match self.send(req) {
            Ok(_) => Ok(true),
            Err(e) if e.is("NoSuchBucket") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Delete an empty bucket; a missing one counts as deleted.
    pub fn delete_bucket(&self, bucket: &str) -> Result<(), S3Error> {
        match self.send(Req::new("DeleteBucket", "DELETE", Some(bucket))) {
            Err(e) if e.is("NoSuchBucket") => Ok(()),
            other => other.map(drop),
        }
    }

    /// The bucket's tags, or `None` if it has none. A missing bucket is an error (`NoSuchBucket`).
    pub fn get_bucket_tagging(&self, bucket: &str) -> Result<Option<Tags>, S3Error> {
        self.get_bucket_taggings(&[bucket], 1).remove(0)
    }

    /// [`S3::get_bucket_tagging`] of many buckets, `concurrency` at a time, in their order.
    pub fn get_bucket_taggings(&self, buckets: &[&str], concurrency: usize) -> Vec<Result<Option<Tags>, S3Error>> {
        let reqs: Vec<Req<'_>> = buckets
            .iter()
            .map(|b| Req::new("GetBucketTagging", "GET", Some(b)).query("tagging", ""))
            .collect();
        self.send_many(&reqs, concurrency)
            .into_iter()
            .map(|result| match result {
                Ok(resp) => {
                    let t: Tagging = parse("GetBucketTagging", &resp.body)?;
                    Ok(Some(t.tag_set.tag.into_iter().map(|t| (t.key, t.value)).collect()))
                }
                Err(e) if e.is("NoSuchTagSet") || e.is("NoSuchTagSetError") => Ok(None),
                Err(e) => Err(e),
            })
            .collect()
    }

    /// Replace the bucket's tags.
    pub fn put_bucket_tagging(&self, bucket: &str, tags: &[(String, String)]) -> Result<(), S3Error> {
        let mut xml = String::from("<Tagging xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><TagSet>");
        for (k, v) in tags {
            xml.push_str(&format!(
                "<Tag><Key>{}</Key><Value>{}</Value></Tag>",
                escape(k),
                escape(v)
            ));
        }
        xml.push_str("</TagSet></Tagging>");
        let req = Req::new("PutBucketTagging", "PUT", Some(bucket))
            .query("tagging", "")
            .body_md5(xml.into_bytes());
        self.send(req).map(drop)
    }

    /// One page (up to 1 000 objects) of the keys under `prefix`.
    pub fn list_objects(&self, bucket: &str, prefix: &str, continuation: Option<&str>) -> Result<Page, S3Error> {
        let mut req = Req::new("ListObjectsV2", "GET", Some(bucket));
        // The order of query parameters does not matter: the signer sorts them.
        if let Some(c) = continuation {
            req = req.query("continuation-token", c);
        }
        req = req.query("list-type", "2").query("max-keys", PAGE.to_string());
        if !prefix.is_empty() {
            req = req.query("prefix", prefix);
        }
        let resp = self.send(req)?;
        let parsed: ListBucketResult = parse("ListObjectsV2", &resp.body)?;
        let next = if parsed.is_truncated {
            parsed.next_continuation_token.filter(|t| !t.is_empty())
        } else {
            None
        };
        if parsed.is_truncated && next.is_none() {
            return Err(S3Error::Reply {
                op: "ListObjectsV2",
                reason: "truncated listing without a continuation token".into(),
            });
        }
        Ok(Page {
            objects: parsed
                .contents
                .into_iter()
                .map(|c| Object {
                    key: c.key,
                    size: c.size,
                })
                .collect(),
            next,
        })
    }

    /// Delete up to 1 000 keys in one call; keys that are already gone count as deleted.
    pub fn delete_objects(&self, bucket: &str, keys: &[String]) -> Result<(), S3Error> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut xml = String::from("<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Quiet>true</Quiet>");
        for k in keys {
            xml.push_str(&format!("<Object><Key>{}</Key></Object>", escape(k)));
        }
        xml.push_str("</Delete>");
        let req = Req::new("DeleteObjects", "POST", Some(bucket))
            .query("delete", "")
            .body_md5(xml.into_bytes());
        let resp = self.send(req)?;
        let result: DeleteResult = parse("DeleteObjects", &resp.body)?;
        match result.error.into_iter().find(|e| e.code != "NoSuchKey") {
            None => Ok(()),
            Some(e) => Err(S3Error::Service {
                op: "DeleteObjects",
                status: 200,
                code: e.code,
                message: format!("{} (key {:?})", e.message, e.key),
                bucket: Some(bucket.to_string()),
            }),
        }
    }

    /// Server-side copy of one object, its metadata included (s3fs keeps mode, owner and times
    /// there). Objects above the copy part size (5 GiB unless set) are copied in parts.
    pub fn copy_object(
        &self,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        size: u64,
    ) -> Result<(), S3Error> {
        let source = copy_source(src_bucket, src_key);
        if size > self.copy_part_size {
            return self.copy_multipart(&source, src_bucket, src_key, dst_bucket, dst_key, size);
        }
        let resp = self.send(copy_request(dst_bucket, dst_key, source))?;
        // A copy can fail after S3 sent 200: the error is then in the body.
        check_embedded_error("CopyObject", dst_bucket, &resp.body)
    }

    /// Server-side copies of many objects, `concurrency` at a time (CopyObject of each; objects
    /// above the copy part size one after another, in parts). The first failure is returned, after every copy
    /// in flight has ended.
    pub fn copy_objects(&self, copies: &[Copy], concurrency: usize) -> Result<(), S3Error> {
        let (big, small): (Vec<&Copy>, Vec<&Copy>) = copies.iter().partition(|c| c.size > self.copy_part_size);
        let reqs: Vec<Req<'_>> = small
            .iter()
            .map(|c| copy_request(&c.dst_bucket, &c.dst_key, copy_source(&c.src_bucket, &c.src_key)))
            .collect();
        for (req, result) in reqs.iter().zip(self.send_many(&reqs, concurrency)) {
            // A copy can fail after S3 sent 200: the error is then in the body.
            check_embedded_error("CopyObject", req.bucket.unwrap_or_default(), &result?.body)?;
        }
        for c in big {
            self.copy_object(&c.src_bucket, &c.src_key, &c.dst_bucket, &c.dst_key, c.size)?;
        }
        Ok(())
    }

    fn copy_multipart(
        &self,
        source: &str,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        size: u64,
    ) -> Result<(), S3Error> {
        // Carry the source's metadata (s3fs's mode/uid/gid/mtime) over to the new upload.
        let head = self.send(Req::new("HeadObject", "HEAD", Some(src_bucket)).key(src_key))?;
        let mut init = Req::new("CreateMultipartUpload", "POST", Some(dst_bucket))
            .key(dst_key)
            .query("uploads", "");
        for (k, v) in &head.headers {
            if k.starts_with("x-amz-meta-") || k == "content-type" {
                init = init.header(k, v.clone());
            }
        }
        let resp = self.send(init)?;
        let upload: InitiateMultipartUploadResult = parse("CreateMultipartUpload", &resp.body)?;
        let id = upload.upload_id;
        let result = (|| {
            let mut parts = String::from("<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
            let (mut start, mut number) = (0u64, 1u32);
            while start < size {
                let end = (start + self.copy_part_size).min(size) - 1;
                let req = Req::new("UploadPartCopy", "PUT", Some(dst_bucket))
                    .key(dst_key)
                    .query("partNumber", number.to_string())
                    .query("uploadId", id.clone())
                    .header("x-amz-copy-source", source.to_string())
                    .header("x-amz-copy-source-range", format!("bytes={start}-{end}"))
                    .timeout(Duration::from_secs(600));
                let resp = self.send(req)?;
                check_embedded_error("UploadPartCopy", dst_bucket, &resp.body)?;
                let part: CopyPartResult = parse("UploadPartCopy", &resp.body)?;
                parts.push_str(&format!(
                    "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag></Part>",
                    escape(&part.etag)
                ));
                start = end + 1;
                number += 1;
            }
            parts.push_str("</CompleteMultipartUpload>");
            let mut req = Req::new("CompleteMultipartUpload", "POST", Some(dst_bucket))
                .key(dst_key)
                .query("uploadId", id.clone());
            req.body = parts.into_bytes();
            let resp = self.send(req.timeout(Duration::from_secs(600)))?;
            check_embedded_error("CompleteMultipartUpload", dst_bucket, &resp.body)
        })();
        if result.is_err() {
            let _ = self.abort_upload(dst_bucket, dst_key, &id);
        }
        result
    }

    /// Uploads begun and never completed under `prefix` (s3fs leaves them when killed mid-write):
    /// (key, upload id). One page; call until empty after aborting.
    pub fn list_uploads(&self, bucket: &str, prefix: &str) -> Result<Vec<(String, String)>, S3Error> {
        let mut req = Req::new("ListMultipartUploads", "GET", Some(bucket))
            .query("uploads", "")
            .query("max-uploads", PAGE.to_string());
        if !prefix.is_empty() {
            req = req.query("prefix", prefix);
        }
        let resp = self.send(req)?;
        let parsed: ListMultipartUploadsResult = parse("ListMultipartUploads", &resp.body)?;
        Ok(parsed.upload.into_iter().map(|u| (u.key, u.upload_id)).collect())
    }

    /// Abort a multipart upload; one that is gone counts as aborted.
    pub fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<(), S3Error> {
        let req = Req::new("AbortMultipartUpload", "DELETE", Some(bucket))
            .key(key)
            .query("uploadId", upload_id);
        match self.send(req) {
            Err(e) if e.is("NoSuchUpload") => Ok(()),
            other => other.map(drop),
        }
    }

    /// An object's body, or `None` if there is no such key.
    pub fn get_object(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, S3Error> {
        self.get_objects(bucket, &[key], 1).remove(0)
    }

    /// [`S3::get_object`] of many keys, `concurrency` at a time, in their order.
    pub fn get_objects(
        &self,
        bucket: &str,
        keys: &[&str],
        concurrency: usize,
    ) -> Vec<Result<Option<Vec<u8>>, S3Error>> {
        let reqs: Vec<Req<'_>> = keys
            .iter()
            .map(|k| Req::new("GetObject", "GET", Some(bucket)).key(k))
            .collect();
        self.send_many(&reqs, concurrency)
            .into_iter()
            .map(|result| match result {
                Ok(resp) => Ok(Some(resp.body)),
                Err(e) if e.is("NoSuchKey") => Ok(None),
                Err(e) => Err(e),
            })
            .collect()
    }

    /// Write a small object.
    pub fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), S3Error> {
        let mut req = Req::new("PutObject", "PUT", Some(bucket))
            .key(key)
            .header("content-type", content_type);
        req.body = body;
        self.send(req).map(drop)
    }

    /// Delete one object; a missing one counts as deleted.
    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<(), S3Error> {
        match self.send(Req::new("DeleteObject", "DELETE", Some(bucket)).key(key)) {
            Err(e) if e.is("NoSuchKey") => Ok(()),
            other => other.map(drop),
        }
    }
}

/// `Ok` for 2xx, else the error document as [`S3Error::Service`].
fn check_status(req: &Req<'_>, resp: Response) -> Result<Response, S3Error> {
    if resp.is_success() {
        return Ok(resp);
    }
    Err(service_error(req.op, req.bucket, resp.status, &resp.body))
}

fn service_error(op: &'static str, bucket: Option<&str>, status: u16, body: &[u8]) -> S3Error {
    let doc = ErrorDoc::parse(body);
    let code = if doc.code.is_empty() {
        // HEAD replies and some proxies carry no error document.
        match status {
            404 if bucket.is_some() => "NoSuchKey".to_string(),
            _ => format!("HTTP{status}"),
        }
    } else {
        doc.code
    };
    S3Error::Service {
        op,
        status,
        code,
        message: doc.message,
        bucket: doc.bucket_name.or_else(|| bucket.map(str::to_string)),
    }
}

fn check_embedded_error(op: &'static str, bucket: &str, body: &[u8]) -> Result<(), S3Error> {
    let text = String::from_utf8_lossy(body);
    if text.contains("<Error>") {
        return Err(service_error(op, Some(bucket), 500, body));
    }
    Ok(())
}

fn parse<T: for<'de> Deserialize<'de>>(op: &'static str, body: &[u8]) -> Result<T, S3Error> {
    quick_xml::de::from_reader(body).map_err(|e| S3Error::Reply {
        op,
        reason: e.to_string(),
    })
}

/// XML-escape text for a request body.
fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct ListAllMyBucketsResult {
    #[serde(rename = "Buckets")]
    buckets: Buckets,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Buckets {
    #[serde(rename = "Bucket")]
    bucket: Vec<BucketEntry>,
}

#[derive(Debug, Deserialize)]
struct BucketEntry {
    #[serde(rename = "Name")]
    name: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Tagging {
    #[serde(rename = "TagSet")]
    tag_set: TagSet,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct TagSet {
    #[serde(rename = "Tag")]
    tag: Vec<Tag>,
}

#[derive(Debug, Deserialize)]
struct Tag {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value", default)]
    value: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct DeleteResult {
    #[serde(rename = "Error")]
    error: Vec<DeleteError>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct DeleteError {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Code")]
    code: String,
    #[serde(rename = "Message")]
    message: String,
}

#[derive(Debug, Deserialize)]
struct InitiateMultipartUploadResult {
    #[serde(rename = "UploadId")]
    upload_id: String,
}

#[derive(Debug, Deserialize)]
struct CopyPartResult {
    #[serde(rename = "ETag")]
    etag: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct ListMultipartUploadsResult {
    #[serde(rename = "Upload")]
    upload: Vec<Upload>,
}

#[derive(Debug, Deserialize)]
struct Upload {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "UploadId")]
    upload_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(path_style: bool) -> S3 {
        S3::new("http://127.0.0.1:7480/", "us-east-1", "AK", "SK", path_style, "bucket")
    }

    #[test]
    fn urls_encode_keys_and_query_values() {
        let s3 = client(true);
        assert_eq!(
            s3.url(
                Some("b"),
                Some("dir/a b+c%.txt"),
                &[("list-type", "2".into()), ("prefix", "x/y z".into())]
            ),
            "http://127.0.0.1:7480/b/dir/a%20b%2Bc%25.txt?list-type=2&prefix=x%2Fy%20z"
        );
        assert_eq!(
            s3.url(Some("b"), None, &[("delete", String::new())]),
            "http://127.0.0.1:7480/b/?delete"
        );
        assert_eq!(
            client(false).url(Some("b"), Some("k"), &[]),
            "http://b.127.0.0.1:7480/k"
        );
    }

    #[test]
    fn parses_listing_and_errors() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix></Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><NextContinuationToken>tok+/=</NextContinuationToken><Contents><Key>a</Key><Size>3</Size></Contents><Contents><Key>b/c</Key><Size>0</Size></Contents></ListBucketResult>"#;
        let r: ListBucketResult = parse("ListObjectsV2", xml).unwrap();
        assert!(r.is_truncated);
        assert_eq!(r.next_continuation_token.as_deref(), Some("tok+/="));
        assert_eq!(r.contents.len(), 2);
        assert_eq!(r.contents[0].size, 3);

        let err = service_error(
            "CreateBucket",
            Some("Bad_Bucket"),
            400,
            br#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidBucketName</Code><BucketName>Bad_Bucket</BucketName><RequestId>tx</RequestId></Error>"#,
        );
        let fields = Fields {
            bucket: "bucket",
            endpoint: "http://x".into(),
        };
        match err.into_driver(&fields) {
            DriverError::Invalid(f) => {
                assert_eq!(f.field, "bucket");
                assert!(f.reason.contains("Bad_Bucket"), "{}", f.reason);
            }
            other => panic!("{other:?}"),
        }
        let denied = service_error(
            "ListBuckets",
            None,
            403,
            b"<Error><Code>InvalidAccessKeyId</Code></Error>",
        );
        assert!(matches!(denied.into_driver(&fields), DriverError::Invalid(f) if f.field == "access_key"));
        let sig = service_error(
            "ListBuckets",
            None,
            403,
            b"<Error><Code>SignatureDoesNotMatch</Code></Error>",
        );
        assert!(matches!(sig.into_driver(&fields), DriverError::Invalid(f) if f.field == "secret_key"));
        let head = service_error("HeadObject", Some("b"), 404, b"");
        assert!(matches!(head.into_driver(&fields), DriverError::NotFound(_)));
    }

    #[test]
    fn parses_buckets_tags_and_delete_results() {
        let xml = br#"<ListAllMyBucketsResult><Owner><ID>x</ID></Owner><Buckets><Bucket><Name>a</Name><CreationDate>2024</CreationDate></Bucket><Bucket><Name>b</Name></Bucket></Buckets></ListAllMyBucketsResult>"#;
        let r: ListAllMyBucketsResult = parse("ListBuckets", xml).unwrap();
        assert_eq!(
            r.buckets.bucket.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let empty: ListAllMyBucketsResult = parse(
            "ListBuckets",
            b"<ListAllMyBucketsResult><Buckets/></ListAllMyBucketsResult>",
        )
        .unwrap();
        assert!(empty.buckets.bucket.is_empty());
        let t: Tagging = parse(
            "GetBucketTagging",
            b"<Tagging><TagSet><Tag><Key>k</Key><Value>v</Value></Tag></TagSet></Tagging>",
        )
        .unwrap();
        assert_eq!(t.tag_set.tag[0].key, "k");
        let d: DeleteResult = parse(
            "DeleteObjects",
            b"<DeleteResult><Deleted><Key>a</Key></Deleted></DeleteResult>",
        )
        .unwrap();
        assert!(d.error.is_empty());
    }
}
