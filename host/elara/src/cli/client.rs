//! The CLI's HTTP client: JSON over the daemon's unix socket. Errors come back as the API's
//! `{"error": {...}}` body and are shown naming the field.

use std::path::PathBuf;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ApiError, ErrorBody};

pub struct Client {
    pub socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Self {
        Client { socket }
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.with_context(|| {
            format!(
                "cannot reach the elara daemon at {} (is it running? start it with `elara daemon`)",
                self.socket.display()
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://elara{path}"))
            .header("host", "elara");
        let body = match body {
            Some((bytes, ctype)) => {
                req = req.header("content-type", ctype);
                Full::new(Bytes::from(bytes))
            }
            None => Full::new(Bytes::new()),
        };
        let resp = sender
            .send_request(req.body(body)?)
            .await
            .context("sending the request to the daemon")?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// A JSON call; a non-2xx answer becomes an error carrying the API's message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let body = body.map(|b| (serde_json::to_vec(b).expect("serializable"), "application/json"));
        let (status, bytes) = self.request(method, path, body).await?;
        decode(status, &bytes)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call("GET", path, None::<&Value>).await
    }
    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> anyhow::Result<T> {
        self.call("POST", path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.call::<Value>("DELETE", path, None::<&Value>).await.map(|_| ())
    }
}

pub fn decode<T: DeserializeOwned>(status: u16, bytes: &[u8]) -> anyhow::Result<T> {
    if !(200..300).contains(&status) {
        if let Ok(body) = serde_json::from_slice::<ErrorBody>(bytes) {
            return Err(anyhow::Error::new(ApiError { status, ..body.error }));
        }
        anyhow::bail!("the daemon answered {status}: {}", String::from_utf8_lossy(bytes));
    }
    let bytes = if bytes.is_empty() { b"null".as_slice() } else { bytes };
    serde_json::from_slice(bytes).context("decoding the daemon's answer")
}

/// Percent-encode a path segment or query value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
