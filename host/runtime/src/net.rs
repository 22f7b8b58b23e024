//! Outbound network policy of a backend: which hosts it may reach over HTTP(S) and TCP.
//!
//! * HTTP (`wasi:http`): [`HttpHooks::send_request`] refuses a request unless its host and port
//!   match a [`HostGrant`] by name. It then resolves the name itself and connects only to the
//!   addresses that resolution returned (so the name cannot be re-pointed between the check and
//!   the connect), after dropping addresses no name grant should ever reach (unspecified,
//!   multicast, broadcast, link-local such as cloud metadata at 169.254.169.254).
//! * TCP (`wasi:sockets`): [`NetPolicy::socket_allowed`] is the `socket_addr_check` of every
//!   instance. Only `connect` is allowed, and only to an address a grant resolves to, on the
//!   granted port (plus the implicit bind to an ephemeral port that precedes it). UDP and
//!   listening are refused; name lookup is enabled only for a backend with grants.

use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::{Pin, pin};
use std::sync::{Arc, OnceLock};
use std::task::{Poll, ready};
use std::time::Duration;

use http::uri::Scheme;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::HostGrant;

/// The grants of one backend, shared by all its instances.
#[derive(Clone, Debug)]
pub(crate) struct NetPolicy {
    backend: Arc<str>,
    grants: Arc<[HostGrant]>,
}

/// Whether an address a *name* resolved to may be connected to.
fn resolved_address_ok(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.is_link_local()),
        IpAddr::V6(v6) => {
            !(v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local()
                || v6.segments()[0] & 0xffc0 == 0xfe80)
        }
    }
}

/// Resolve `host:port` (name or IP literal) on a blocking thread.
async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    tokio::task::spawn_blocking(move || (host.as_str(), port).to_socket_addrs().map(|a| a.collect()))
        .await
        .map_err(std::io::Error::other)?
}

impl NetPolicy {
    pub(crate) fn new(backend: Arc<str>, grants: Vec<HostGrant>) -> Self {
        NetPolicy {
            backend,
            grants: grants.into(),
        }
    }

    /// Whether any host is granted at all (name lookup is enabled only then).
    pub(crate) fn has_grants(&self) -> bool {
        !self.grants.is_empty()
    }

    /// The addresses an HTTP request to `host:port` may connect to, or `HttpRequestDenied`.
    async fn http_addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, HttpError> {
        let Some(grant) = self.grants.iter().find(|g| g.matches(host, port)) else {
            tracing::warn!(target: "driver", backend = %self.backend, host, port,
                "outbound HTTP denied: host not granted");
            return Err(HttpError::HttpRequestDenied);
        };
        let is_literal = grant.host.parse::<IpAddr>().is_ok();
        let addrs = resolve(host, port).await.map_err(|e| {
            tracing::warn!(target: "driver", backend = %self.backend, host, error = %e,
                "outbound HTTP: name resolution failed");
            HttpError::DnsError {
                rcode: Some(e.to_string()),
                info_code: None,
            }
        })?;
        let allowed: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| is_literal || resolved_address_ok(a.ip()))
            .collect();
        if allowed.is_empty() {
            tracing::warn!(target: "driver", backend = %self.backend, host, ?addrs,
                "outbound HTTP denied: the granted name resolves only to forbidden addresses");
            return Err(HttpError::DestinationIpProhibited);
        }
        Ok(allowed)
    }

    /// `socket_addr_check`: TCP connect to an address some grant resolves to, on its port.
    pub(crate) async fn socket_allowed(&self, addr: SocketAddr, usage: SocketAddrUse) -> bool {
        // Before a connect on an unbound socket, wasmtime checks the implicit bind to an
        // ephemeral port on the unspecified address: that is no power (listen stays denied).
        if matches!(usage, SocketAddrUse::TcpBind) && addr.ip().is_unspecified() && addr.port() == 0 {
            return true;
        }
        if !matches!(usage, SocketAddrUse::TcpConnect) {
            tracing::warn!(target: "driver", backend = %self.backend, %addr, ?usage,
                "socket use denied: only outbound TCP connect is allowed");
            return false;
        }
        for grant in self.grants.iter() {
            if grant.port.is_some_and(|p| p != addr.port()) {
                continue;
            }
            let is_literal = grant.host.parse::<IpAddr>().is_ok();
            if let Ok(addrs) = resolve(&grant.host, addr.port()).await
                && addrs
                    .iter()
                    .any(|a| a.ip() == addr.ip() && (is_literal || resolved_address_ok(a.ip())))
            {
                return true;
            }
        }
        tracing::warn!(target: "driver", backend = %self.backend, %addr,
            "outbound TCP denied: address not granted");
        false
    }
}

/// `wasi:http` hooks of one instance: the allow-list and the pinned-address sender.
pub(crate) struct HttpHooks {
    pub(crate) policy: NetPolicy,
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send> {
        let policy = self.policy.clone();
        // A request that is refused, fails or is answered early still reads the guest's body
        // to its end (see `DrainOnDrop`).
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, DrainOnDrop::new(body).boxed_unsync());
        Box::new(async move {
            let uri = request.uri().clone();
            let host = uri.host().ok_or(HttpError::HttpRequestUriInvalid)?.to_string();
            let tls = uri.scheme() == Some(&Scheme::HTTPS);
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            let addrs = policy.http_addresses(&host, port).await?;
            tracing::debug!(target: "driver", backend = %policy.backend, method = %request.method(),
                %uri, ?addrs, "outbound HTTP allowed");
            send_pinned(request, options, &host, &addrs, tls).await
        })
    }
}

trait IoStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> IoStream for T {}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            let config =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default TLS versions")
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// A request body that, when dropped before its end, keeps reading (and discarding) what the
/// guest writes in a background task until the guest finishes the body or its instance goes.
///
/// The guest writes the body while it waits for the response. If the host dropped the body at
/// once (a refused request, a failed connect, a server that answers before reading the whole
/// body), the stream would close under the guest, and clients such as `wstd` then report the
/// closed stream ("connection reset") instead of the response or the real reason
/// (`HTTP request denied`, `connection refused`).
struct DrainOnDrop {
    inner: Option<WasiBody>,
    ended: bool,
}

impl DrainOnDrop {
    fn new(body: WasiBody) -> Self {
        DrainOnDrop {
            inner: Some(body),
            ended: false,
        }
    }
}

impl hyper::body::Body for DrainOnDrop {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, HttpError>>> {
        let this = self.get_mut();
        let Some(body) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(body).poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            this.ended = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.as_ref().map(|b| b.size_hint()).unwrap_or_default()
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        if self.ended || hyper::body::Body::is_end_stream(self) {
            return;
        }
        let (Some(mut body), Ok(rt)) = (self.inner.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        rt.spawn(async move {
            // Bounded in time in case the guest keeps an unfinished body open in an idle instance.
            let _ = tokio::time::timeout(Duration::from_secs(300), async {
                while let Some(Ok(_)) = body.frame().await {}
            })
            .await;
        });
    }
}

/// Send `req` over a connection to one of `addrs` (never resolving `host` again), with TLS to
/// `host` when `tls`. Modelled on `wasmtime_wasi_http::default_send_request`.
async fn send_pinned(
    mut req: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    host: &str,
    addrs: &[SocketAddr],
    tls: bool,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(Duration::from_secs(30));
    let first_byte_timeout = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(Duration::from_secs(600));

    let mut last_err = HttpError::DestinationNotFound;
    let mut stream = None;
    for addr in addrs {
        match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => last_err = HttpError::ConnectionRefused,
            Ok(Err(e)) => last_err = HttpError::Connect(e),
            Err(_) => last_err = HttpError::ConnectionTimeout,
        }
    }
    let stream = stream.ok_or(last_err)?;
    let stream: Box<dyn IoStream> = if tls {
        let name = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => rustls::pki_types::ServerName::from(ip),
            Err(_) => {
                rustls::pki_types::ServerName::try_from(host.to_string()).map_err(HttpError::InvalidDnsNameError)?
            }
        };
        let connector = tokio_rustls::TlsConnector::from(tls_config());
        Box::new(connector.connect(name, stream).await.map_err(HttpError::Tls)?)
    } else {
        Box::new(stream)
    };
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;

    // Origin-form request target: the authority is in the Host header already.
    *req.uri_mut() = http::Uri::builder()
        .path_and_query(req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;

    let send = async move {
        tokio::time::timeout(first_byte_timeout, sender.send_request(req))
            .await
            .map_err(|_| HttpError::ConnectionReadTimeout)?
            .map_err(HttpError::from)
    };
    let mut send = pin!(send);
    let mut conn = Some(conn);
    // Wait for the response while driving the connection's I/O.
    let res = std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(r),
        Poll::Pending => {
            let Some(c) = conn.as_mut() else {
                return Poll::Pending;
            };
            let r = ready!(Pin::new(c).poll(cx));
            conn = None;
            match r {
                Ok(()) => send.as_mut().poll(cx),
                Err(e) => Poll::Ready(Err(HttpError::from(e))),
            }
        }
    })
    .await?;
    let res = res.map(|body| body.map_err(HttpError::from).boxed_unsync());
    let io: IoFuture = Box::new(async move {
        match conn {
            Some(c) => c.await.map_err(HttpError::from),
            None => Ok(()),
        }
    });
    Ok((res, io))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_resolved_addresses() {
        for bad in [
            "0.0.0.0",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "fe80::1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!resolved_address_ok(bad.parse().unwrap()), "{bad}");
        }
        for ok in ["127.0.0.1", "10.1.2.3", "8.8.8.8", "::1", "2001:db8::1"] {
            assert!(resolved_address_ok(ok.parse().unwrap()), "{ok}");
        }
    }
}
