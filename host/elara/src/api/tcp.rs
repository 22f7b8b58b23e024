//! The optional TCP listener for the REST API: TLS (rustls) and a bearer token, always. Plain TCP
//! only with `--insecure-tcp`, loudly logged.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::ApiError;

pub async fn serve(addr: SocketAddr, cfg: Config, app: Router, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let token_file = cfg.token_file.clone().context("--listen needs --token-file")?;
    let token = std::fs::read_to_string(&token_file).with_context(|| format!("reading {}", token_file.display()))?.trim().to_string();
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
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, tls = tls.is_some(), "REST API on TCP");
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => r?,
            _ = stop.changed() => return Ok(()),
        };
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let result = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => builder.serve_connection(TokioIo::new(s), service).await,
                    Err(e) => {
                        tracing::debug!(%peer, "TLS handshake failed: {e}");
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

async fn check_token(expected: &str, req: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    let given = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    // Constant-time comparison of the whole header.
    let ok = given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !ok {
        return ApiError::new(401, "unauthorized", "a valid `Authorization: Bearer <token>` header is required").into_response();
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
