//! # elara-s3-wire: what Elara's two S3 clients share
//!
//! The s3 driver (a wasm component, HTTP over `wasi:http`) and the daemon's backup target (HTTP
//! over hyper) send their requests differently, but sign them, encode keys and read S3's XML
//! the same way. That part lives here, with no I/O, so it builds for both.

use std::time::SystemTime;

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode,
    sign,
};
use aws_sigv4::sign::v4;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

/// Percent-encoding of query values (RFC 3986 unreserved characters kept).
pub const QUERY: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
/// Percent-encoding of a path: as [`QUERY`], keeping `/`.
pub const PATH: &AsciiSet = &QUERY.remove(b'/');

/// Who signs, and where.
#[derive(Debug, Clone, Copy)]
pub struct Signer<'a> {
    pub access_key: &'a str,
    pub secret_key: &'a str,
    pub region: &'a str,
}

/// The body as the signature covers it.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// Hashed into the signature.
    Bytes(&'a [u8]),
    /// `UNSIGNED-PAYLOAD`.
    Unsigned,
}

impl Signer<'_> {
    /// The headers to add to `method url` (which carries `headers`) to sign it with SigV4 for
    /// S3 (single percent-encoding, no path normalisation, `x-amz-content-sha256`). An error is
    /// the signer's reason.
    pub fn headers(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        payload: Payload<'_>,
    ) -> Result<Vec<(String, String)>, String> {
        let identity =
            aws_credential_types::Credentials::new(self.access_key, self.secret_key, None, None, "elara").into();
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let body = match payload {
            Payload::Bytes(b) => SignableBody::Bytes(b),
            Payload::Unsigned => SignableBody::UnsignedPayload,
        };
        let signable = SignableRequest::new(method, url, headers.iter().map(|(k, v)| (k.as_str(), v.as_str())), body)
            .map_err(|e| e.to_string())?;
        let (instructions, _) = sign(signable, &params).map_err(|e| e.to_string())?.into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }
}

/// S3's error document (of a failed call, or embedded in a 200 reply).
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ErrorDoc {
    #[serde(rename = "Code")]
    pub code: String,
    #[serde(rename = "Message")]
    pub message: String,
    #[serde(rename = "BucketName")]
    pub bucket_name: Option<String>,
}

impl ErrorDoc {
    /// The document in `body`; empty fields where there is none (HEAD replies, some proxies).
    pub fn parse(body: &[u8]) -> ErrorDoc {
        quick_xml::de::from_reader(body).unwrap_or_default()
    }
}

/// A ListObjectsV2 page.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ListBucketResult {
    #[serde(rename = "IsTruncated")]
    pub is_truncated: bool,
    #[serde(rename = "NextContinuationToken")]
    pub next_continuation_token: Option<String>,
    #[serde(rename = "Contents")]
    pub contents: Vec<Contents>,
}

impl ListBucketResult {
    /// The token for the next page, if there is one.
    pub fn next_page(&self) -> Option<&str> {
        self.next_continuation_token
            .as_deref()
            .filter(|t| self.is_truncated && !t.is_empty())
    }
}

/// One object of a listing.
#[derive(Debug, Deserialize)]
pub struct Contents {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "Size")]
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_listing_and_an_error() {
        let page: ListBucketResult = quick_xml::de::from_str(
            "<ListBucketResult><IsTruncated>true</IsTruncated><NextContinuationToken>t1</NextContinuationToken>\
             <Contents><Key>a/b</Key><Size>5</Size></Contents></ListBucketResult>",
        )
        .unwrap();
        assert_eq!(
            (page.contents[0].key.as_str(), page.contents[0].size, page.next_page()),
            ("a/b", 5, Some("t1"))
        );
        let e = ErrorDoc::parse(
            b"<Error><Code>NoSuchBucket</Code><Message>gone</Message><BucketName>b</BucketName></Error>",
        );
        assert_eq!(
            (e.code.as_str(), e.message.as_str(), e.bucket_name.as_deref()),
            ("NoSuchBucket", "gone", Some("b"))
        );
        assert!(ErrorDoc::parse(b"").code.is_empty());
    }

    #[test]
    fn signs_with_the_content_hash() {
        let s = Signer {
            access_key: "AK",
            secret_key: "SK",
            region: "us-east-1",
        };
        let h = s
            .headers("PUT", "http://127.0.0.1:1/b/k", &[], Payload::Bytes(b"x"))
            .unwrap();
        let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
        assert!(
            names.contains(&"authorization") && names.contains(&"x-amz-content-sha256"),
            "{names:?}"
        );
        let u = s
            .headers("GET", "http://127.0.0.1:1/b/k", &[], Payload::Unsigned)
            .unwrap();
        assert!(
            u.iter()
                .any(|(k, v)| k == "x-amz-content-sha256" && v == "UNSIGNED-PAYLOAD"),
            "{u:?}"
        );
    }
}
