//! The upstream side: keyward's own pool ([`super::pool`]), which speaks HTTP/2 where the
//! provider offers it through ALPN (the default: at saturation one multiplexed connection
//! batches many responses per read, which measured cheaper than per-request keep-alive
//! connections, docs/benchmarks.md), or HTTP/1.1 keep-alive connections driven in each
//! request's own task (the provider offers no `h2`, or `[upstream] http2 = false`); rustls
//! with webpki roots plus `upstream.extra_ca`, connect and request timeouts, and no redirect
//! following. A hyper-util client, HTTP/1.1 only, carries WebSocket upgrades (rare, and
//! its connection is handed over to the tunnel).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use std::path::PathBuf;

use super::body::{BoxError, ProxyBody};
use super::pool::{Dial, Pool, PoolError, PooledBody};
use crate::tls::{self, TlsError};

type HttpsClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// How long an idle upstream connection is kept: under the keep-alive timeouts providers'
/// front ends commonly use (60 s and more), so keyward closes first rather than writing
/// into a connection the far side is closing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(55);

/// Why an upstream call failed, before any response arrived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// TCP connect failed or timed out, or the connection broke before a response.
    #[error("{0}")]
    Connect(String),
    /// The TLS handshake failed (certificate, protocol).
    #[error("{0}")]
    Tls(String),
    /// No response headers within `upstream.request_timeout`.
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

/// The upstream connections.
#[derive(Clone)]
pub(crate) struct Upstream {
    pool: Pool,
    upgrade_client: HttpsClient,
    request_timeout: Duration,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("request_timeout", &self.request_timeout).finish()
    }
}

/// A provider's response body, from whichever carrier brought it.
pub(crate) enum UpstreamBody {
    Pooled(PooledBody),
    Hyper(Incoming),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Pooled(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Hyper(b) => {
                Pin::new(b).poll_frame(cx).map(|f| f.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Pooled(b) => b.is_end_stream(),
            UpstreamBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Pooled(b) => b.size_hint(),
            UpstreamBody::Hyper(b) => b.size_hint(),
        }
    }
}

/// The WebSocket upgrade client.
fn build(cfg: &UpstreamConfig, allow_http: bool) -> Result<HttpsClient, TlsError> {
    // hyper-rustls sets the ALPN list itself from enable_http1/enable_http2.
    let tls = tls::client_config(cfg.extra_ca.as_deref(), &[])?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let builder = if allow_http { builder.https_or_http() } else { builder.https_only() };
    let connector = builder.enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(256)
        .build(connector))
}

/// Walks an error's sources looking for a rustls error (TLS failures arrive wrapped in
/// io errors inside the connector's error).
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        // io::Error's `source()` skips its own payload: step into it with `get_ref()`.
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

impl Upstream {
    /// Builds the pool and the upgrade client.
    pub(crate) fn new(cfg: &UpstreamConfig, allow_http: bool) -> Result<Upstream, TlsError> {
        let alpn: &[&[u8]] = if cfg.http2 { &[b"h2", b"http/1.1"] } else { &[b"http/1.1"] };
        let tls = tls::client_config(cfg.extra_ca.as_deref(), alpn)?;
        let dial = Dial::Net { tls: Some(tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))), allow_http };
        Ok(Upstream {
            pool: Pool::new(dial, cfg.connect_timeout, IDLE_TIMEOUT),
            upgrade_client: build(cfg, allow_http)?,
            request_timeout: cfg.request_timeout,
            connect_timeout: cfg.connect_timeout,
        })
    }

    /// Sends one request and waits for the response head (bounded by the request
    /// timeout); the body streams afterwards.
    ///
    /// Made of combinators, not an `async` block: a block keeps the request it was given
    /// beside the future it hands it to (rustc never lays the two over each other), and this
    /// future sits inside every request's.
    pub(crate) fn send(
        &self,
        req: Request<ProxyBody>,
        upgrade: bool,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send + '_ {
        use futures_util::future::{Either, FutureExt};
        let sent = if upgrade {
            // Boxed, with its mapping: hyper-util's future would otherwise size every
            // request's future, and upgrades are rare.
            Either::Left(Box::pin(async move {
                // Host and port only: the path or query may carry a secret.
                let target = Target::of(req.uri());
                self.upgrade_client
                    .request(req)
                    .await
                    .map(|r| r.map(UpstreamBody::Hyper))
                    .map_err(|e| self.hyper_error(e, target))
            }))
        } else {
            Either::Right(
                self.pool.send(req).map(|r| r.map(|r| r.map(UpstreamBody::Pooled)).map_err(|e| self.pool_error(e))),
            )
        };
        let timeout = self.request_timeout;
        tokio::time::timeout(timeout, sent).map(move |r| r.unwrap_or(Err(UpstreamError::Timeout(timeout))))
    }

    fn pool_error(&self, failed: super::pool::Failed) -> UpstreamError {
        let super::pool::Failed { error: e, target } = failed;
        tracing::debug!(error = ?e, "upstream request failed");
        let why = cause(&e);
        match e {
            PoolError::Tls(_) => UpstreamError::Tls(format!(
                "the TLS handshake with {target} failed: {why} (a provider behind a private CA needs [upstream] extra_ca)"
            )),
            PoolError::Connect(_) | PoolError::ConnectTimeout | PoolError::BadTarget(_) => {
                UpstreamError::Connect(format!(
                    "could not connect to {target}: {why} (check the provider's base_url and that this host can reach it; [upstream] connect_timeout = {:?})",
                    self.connect_timeout
                ))
            }
            PoolError::Http(_) | PoolError::H2(_) => {
                UpstreamError::Connect(format!("{target} closed the connection or sent an invalid response: {why}"))
            }
        }
    }

    fn hyper_error(&self, e: hyper_util::client::legacy::Error, target: Target) -> UpstreamError {
        tracing::debug!(error = ?e, "upstream request failed");
        let why = cause(&e);
        if is_tls(&e) {
            UpstreamError::Tls(format!(
                "the TLS handshake with {target} failed: {why} (a provider behind a private CA needs [upstream] extra_ca)"
            ))
        } else if e.is_connect() {
            UpstreamError::Connect(format!(
                "could not connect to {target}: {why} (check the provider's base_url and that this host can reach it; [upstream] connect_timeout = {:?})",
                self.connect_timeout
            ))
        } else {
            UpstreamError::Connect(format!("{target} closed the connection or sent an invalid response: {why}"))
        }
    }
}

/// `host:port` of a request (never its path or query: they may carry a secret), written
/// only when an error names it: the authority is shared with the URI, not copied.
struct Target {
    authority: Option<http::uri::Authority>,
    default_port: u16,
}

impl Target {
    fn of(uri: &http::Uri) -> Target {
        let default_port = if uri.scheme_str() == Some("http") { 80 } else { 443 };
        Target { authority: uri.authority().cloned(), default_port }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.authority {
            Some(a) => write!(f, "{}:{}", a.host(), a.port_u16().unwrap_or(self.default_port)),
            None => f.write_str("the provider"),
        }
    }
}

/// Why a request failed, from the innermost error that says: DNS, refused, reset, timed
/// out, or the TLS library's reason. Never the request itself.
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut last = String::new();
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            let kind = match io.kind() {
                std::io::ErrorKind::ConnectionRefused => Some("connection refused"),
                std::io::ErrorKind::ConnectionReset => Some("connection reset"),
                std::io::ErrorKind::TimedOut => Some("timed out"),
                std::io::ErrorKind::UnexpectedEof => Some("the connection closed early"),
                std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
                    Some("no route to the host")
                }
                _ => None,
            };
            if let Some(k) = kind {
                return k.into();
            }
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return tls.to_string();
        }
        let text = err.to_string();
        if text.contains("dns error") || text.contains("failed to lookup address") {
            return "the host name did not resolve (DNS)".into();
        }
        if text.contains("tcp connect error") && err.source().is_none() {
            return "the TCP connection failed".into();
        }
        last = text;
        next = err.source();
    }
    last.chars().take(200).collect()
}

/// `[upstream]`
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout (until response headers).
    pub request_timeout: Duration,
    /// One more CA to trust.
    pub extra_ca: Option<PathBuf>,
    /// Offer HTTP/2 to providers (one multiplexed connection per host; default) rather
    /// than HTTP/1.1 keep-alive connections only.
    pub http2: bool,
}
