//! The app listener: apps send provider calls with no credential; keyward picks the
//! tenant's credential, injects it as the provider expects, forwards over TLS and streams
//! the answer back (CONTRACT.md §4).
//!
//! Path of a request: [`route`] (pure: tenant, provider, path), then the phases of
//! [`phases`]: authorize → resolve → destination → token → build → send → respond.
//! WebSocket upgrades take the same path and then become a byte tunnel.

mod phases;
mod scrub;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{self};
use http::{Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::Instrument;

use crate::creds::Credentials;
use crate::error::PublicError;
use crate::http::target as route;
use crate::http::{headers, ProxyBody, Upstream};
use crate::listen::Peer;
use crate::oauth::TokenManager;
use crate::policy::{ClientPolicy, Policy, RateLimiter};
use crate::tls::MtlsFiles;

/// Shared state of the app listener.
pub(crate) struct ProxyState {
    /// Credentials.
    pub creds: Arc<Credentials>,
    /// Upstream clients.
    pub upstream: Upstream,
    /// `[[app.clients]]`, replaced on reload.
    pub policy: std::sync::RwLock<Arc<Policy>>,
    /// Token buckets.
    pub limiter: RateLimiter,
    /// Google access tokens.
    pub tokens: Option<Arc<TokenManager>>,
    /// Metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `[webhooks] public_base_url`, for callback URLs keyward writes into requests.
    pub public_base_url: Option<url::Url>,
    /// `[telemetry] access_log`
    pub access: Arc<crate::access::AccessLog>,
    /// `[telemetry] propagate_to_providers = "never"`
    pub strip_trace_context: bool,
}

impl std::fmt::Debug for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyState").finish()
    }
}

impl ProxyState {
    /// The client policy in force.
    pub(crate) fn policy(&self) -> Arc<Policy> {
        self.policy.read().map(|p| p.clone()).unwrap_or_default()
    }

    /// Replaces the client policy (config reload); requests in flight keep the old one.
    pub(crate) fn set_policy(&self, p: Policy) {
        if let Ok(mut cur) = self.policy.write() {
            *cur = Arc::new(p);
        }
    }
}

/// Credential headers an app may have sent; keyward's own injection replaces them
/// (`x-api-key`: Cartesia's older form, and a common one elsewhere).
const CLIENT_CREDENTIALS: [&str; 4] = ["authorization", "proxy-authorization", "xi-api-key", "x-api-key"];

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// A request's id (`pid-seq` in hex), formatted only when a log line or span records it.
struct RequestId(u32, u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}-{:x}", self.0, self.1)
    }
}

fn request_id() -> RequestId {
    RequestId(std::process::id(), REQUEST_SEQ.fetch_add(1, Ordering::Relaxed))
}

fn boxed_error(e: PublicError) -> Response<ProxyBody> {
    e.into_response().map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

/// An HTTP/1.1 WebSocket upgrade (`Connection: upgrade` and `Upgrade: websocket`).
fn is_websocket(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && headers::connection_lists(req.headers(), "upgrade")
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Handles one app request.
///
/// This and the functions below on every request's path return an `async move` block
/// rather than being `async fn`s: an `async fn` keeps each argument twice in its future
/// (the argument and the body's binding of it), and the request alone is 264 bytes; the
/// future is allocated and copied per request (docs/benchmarks.md).
#[allow(clippy::manual_async_fn)] // on purpose, as said above
pub(crate) fn handle(
    state: Arc<ProxyState>,
    peer: Peer,
    req: Request<Incoming>,
) -> impl std::future::Future<Output = Result<Response<ProxyBody>, Infallible>> {
    async move {
        let rid = request_id();
        let otel = crate::telemetry::server_span!("keyward.proxy", req.method().as_str(), keyward.request_id = %rid);
        crate::otlp::continue_trace(&otel, req.headers());
        let span = if otel.is_disabled() {
            tracing::info_span!("request", request_id = %rid)
        } else {
            tracing::info_span!(parent: &otel, "request", request_id = %rid)
        };
        let start = state.access.enabled().then(|| {
            let mut s = crate::access::Start::new("proxy", rid.to_string(), &peer, &req);
            if let Some(t) = crate::otlp::trace_id(&otel) {
                s.trace_id = Some(t);
            }
            s
        });
        let mut facts = crate::access::Facts::new(&state.access, !otel.is_disabled());
        // Both entered: the log span for log lines, the trace span so that the phases' spans
        // find it as their parent (the OpenTelemetry layer sees only trace spans).
        let resp = proxy(&state, &peer, req, &mut facts).instrument(span).instrument(otel.clone()).await;
        // The error label is keyward's own code (a bounded set), never a header value.
        let (resp, error) = match resp {
            Ok(r) => (r, ""),
            Err(e) => {
                let code = e.code;
                (boxed_error(e), code)
            }
        };
        let status = resp.status().as_u16();
        if let (Some(f), Some(t), Some(p)) = (&state.metrics.proxy_requests_by_tenant, &facts.tenant, &facts.provider) {
            f.get_or_create(&crate::metrics::TenantRequestLabels { tenant: t.into(), provider: p.into(), status })
                .inc();
        }
        let labels = crate::metrics::RequestLabels {
            provider: facts.provider.as_ref().map_or_else(crate::metrics::Name::none, Into::into),
            status,
            error,
        };
        state.metrics.count_request(labels);
        if !otel.is_disabled() {
            crate::access::describe_span(&otel, &facts, status, error);
        }
        let record = start.map(|s| (state.access.clone(), s));
        Ok(crate::access::attach(resp, record, facts, error, otel))
    }
}

/// Routing, then the phases in order. One future for both: each level of future keeps the
/// app's request (264 bytes) again, and the whole is copied once more per level.
#[allow(clippy::manual_async_fn)] // on purpose: see `handle`
fn proxy<'a>(
    state: &'a ProxyState,
    peer: &'a Peer,
    req: Request<Incoming>,
    facts: &'a mut crate::access::Facts,
) -> impl std::future::Future<Output = Result<Response<ProxyBody>, PublicError>> + 'a {
    async move {
        if req.method() == Method::CONNECT {
            return Err(PublicError::method_not_allowed(
            "CONNECT tunnels are not supported: keyward must see each request to inject the credential; send plain http:// URLs through it (HTTP_PROXY) and it calls the provider over HTTPS",
        ));
        }
        if req.uri().path() == "/v1/webhooks/verify" {
            return Box::pin(crate::webhook::verify_api::handle(&state.creds, &state.policy(), peer, req)).await;
        }
        let target = route::route(req.version(), req.uri(), req.headers(), &state.creds.providers())?;
        facts.tenant = Some(target.tenant.clone());
        facts.provider = Some(target.provider.name.clone());
        phases::authorize(state, peer, &target)?;
        let (cred, took) = phases::resolve(state, &target).await?;
        facts.resolve = Some(took);
        let dest = phases::destination(&target, &cred)?;
        let token = phases::token(state, &target).await?;
        let prepared = phases::build(state, &target, &cred, &dest, token, req, facts.bytes_in.clone())?;
        let sent = phases::send(state, &target, &cred, prepared).await?;
        facts.upstream = Some(sent.upstream_elapsed);
        facts.upstream_status = Some(sent.response.status().as_u16());
        Ok(phases::respond(sent))
    }
}

/// `[app]`
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Unix socket path.
    pub unix: Option<PathBuf>,
    /// Unix socket mode.
    pub unix_mode: u32,
    /// mTLS TCP address.
    pub tcp: Option<SocketAddr>,
    /// Certificates for `tcp`.
    pub tls: Option<MtlsFiles>,
    /// Client policy; empty means every local client may use every tenant.
    pub clients: Vec<ClientPolicy>,
    /// Open connections at most, per listener.
    pub max_connections: usize,
}

/// Response scrubbing over any body, for `fuzz/`.
pub(crate) fn fuzz_scrubbed<B>(
    body: B,
    patterns: Vec<zeroize::Zeroizing<Vec<u8>>>,
) -> impl http_body::Body<Data = bytes::Bytes>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    scrub::Scrubbed::new(body, patterns.into(), true)
}
