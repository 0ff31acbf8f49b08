//! The upstream side: one pooled hyper client over rustls (webpki roots plus
//! `upstream.extra_ca`), HTTP/2 where the provider offers it through ALPN, connect and
//! request timeouts, and no redirect following (the client never follows them). A second,
//! HTTP/1.1-only client carries WebSocket upgrades.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use std::path::PathBuf;

use super::body::ProxyBody;
use crate::tls::{self, TlsError};

type HttpsClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

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

/// The pooled upstream clients.
#[derive(Clone)]
pub(crate) struct Upstream {
    client: HttpsClient,
    upgrade_client: HttpsClient,
    request_timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("request_timeout", &self.request_timeout).finish()
    }
}

fn build(cfg: &UpstreamConfig, allow_http: bool, h2: bool) -> Result<HttpsClient, TlsError> {
    // hyper-rustls sets the ALPN list itself from enable_http1/enable_http2.
    let tls = tls::client_config(cfg.extra_ca.as_deref(), &[])?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let builder = if allow_http { builder.https_or_http() } else { builder.https_only() };
    let connector = if h2 {
        builder.enable_http1().enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
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
    /// Builds both clients.
    pub(crate) fn new(cfg: &UpstreamConfig, allow_http: bool) -> Result<Upstream, TlsError> {
        Ok(Upstream {
            client: build(cfg, allow_http, true)?,
            upgrade_client: build(cfg, allow_http, false)?,
            request_timeout: cfg.request_timeout,
        })
    }

    /// Sends one request and waits for the response head (bounded by the request
    /// timeout); the body streams afterwards.
    pub(crate) async fn send(
        &self,
        req: Request<ProxyBody>,
        upgrade: bool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let client = if upgrade { &self.upgrade_client } else { &self.client };
        match tokio::time::timeout(self.request_timeout, client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(self.request_timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                tracing::debug!(error = ?e, "upstream request failed");
                if is_tls(&e) {
                    Err(UpstreamError::Tls(
                        "the TLS handshake with the provider failed (certificate or protocol)".into(),
                    ))
                } else if e.is_connect() {
                    Err(UpstreamError::Connect("could not connect to the provider".into()))
                } else {
                    Err(UpstreamError::Connect("the provider closed the connection or sent an invalid response".into()))
                }
            }
        }
    }
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
}
