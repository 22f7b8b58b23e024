//! The optional TCP listener for the REST API: TLS (rustls) and a bearer token, always. Plain TCP
//! only with `--insecure-tcp`, loudly logged.
//!
//! The network may be hostile, so a connection costs a client something: at most
//! `tcp_max_connections` are served at once (more are closed on accept), the TLS handshake and
//! each request's headers must arrive within `tcp_header_timeout_secs` (which also closes a
//! keep-alive connection left idle that long), and only HTTP/1.1 is spoken (no HTTP/2 streams
//! to hold open). The unix socket and the Docker plugin have listeners of their own and keep
//! answering whatever happens here.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Semaphore, watch};

use crate::config::Config;
use crate::error::ApiError;

pub async fn serve(addr: SocketAddr, cfg: Config, app: Router, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let token_file = cfg.token_file.clone().context("--listen needs --token-file")?;
    let token = read_token(&token_file)?;
    if token.len() < 16 {
        anyhow::bail!("{}: the token must be at least 16 characters", token_file.display());
    }
    let expected = Arc::new(format!("Bearer {token}"));
    let app = app.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
        let expected = expected.clone();
        async move { check_token(&expected, req, next).await }
    }));
    let tls = match (&cfg.tls_cert, &cfg.tls_key, cfg.insecure_tcp) {
        (Some(cert), Some(key), _) => Some(tls_acceptor(cert, key)?),
        (_, _, true) => {
            tracing::warn!(%addr, "INSECURE: serving the REST API over plain TCP; the bearer token crosses the network in clear text");
            None
        }
        _ => anyhow::bail!("--listen needs --tls-cert and --tls-key, or --insecure-tcp"),
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let slots = Arc::new(Semaphore::new(cfg.tcp_max_connections));
    let timeout = std::time::Duration::from_secs(cfg.tcp_header_timeout_secs);
    tracing::info!(%addr, tls = tls.is_some(), max_connections = cfg.tcp_max_connections, "REST API on TCP");
    let mut refused_since_log = 0u64;
    let mut last_log = std::time::Instant::now() - std::time::Duration::from_secs(60);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                // Out of descriptors or a reset before accept: not fatal for the listener.
                Err(e) => {
                    tracing::warn!(%addr, "accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return Ok(()),
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            refused_since_log += 1;
            if last_log.elapsed() >= std::time::Duration::from_secs(10) {
                tracing::warn!(%addr, "{refused_since_log} TCP connection(s) refused: {} already open", cfg.tcp_max_connections);
                (refused_since_log, last_log) = (0, std::time::Instant::now());
            }
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = TowerToHyperService::new(app);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(timeout);
            let result = match tls {
                Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => builder.serve_connection(TokioIo::new(s), service).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake not done in {timeout:?}; closed");
                        return;
                    }
                },
                None => builder.serve_connection(TokioIo::new(stream), service).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
}

/// The bearer token from `path`, which only its owner may read: a token others can read is
/// anyone's.
fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("reading the token file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "token_file: {} has mode {mode:04o}, so other users can read the token; make it 0600 (chmod 600)",
            path.display()
        );
    }
    let token = std::fs::read_to_string(path).with_context(|| format!("reading the token file {}", path.display()))?;
    Ok(token.trim().to_string())
}

async fn check_token(expected: &str, req: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Constant-time comparison of the whole header.
    let ok = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !ok {
        return ApiError::new(
            401,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` header is required",
        )
        .into_response();
    }
    next.run(req).await
}

fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("opening {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("reading certificates from {}", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("opening {}", key.display()))?,
    ))
    .with_context(|| format!("reading the private key from {}", key.display()))?
    .context("no private key found")?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
