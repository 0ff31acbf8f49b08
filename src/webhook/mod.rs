//! The webhook listener (CONTRACT.md §5): providers call keyward; keyward proves each
//! delivery genuine for one tenant before the app sees it.
//!
//! Routes: `POST|GET /webhooks/{provider}/{tenant}` and `POST|GET /webhooks/{provider}`.
//! A request is read whole (bounded by `webhooks.max_body`), the URL the provider signed is
//! rebuilt from `public_base_url` (or trusted proxies' `X-Forwarded-*`), [`verify`] yields a
//! [`Verified`] proof, and only then is the delivery forwarded to the app with keyward's
//! headers; the app's answer goes back to the provider.

mod forward;
pub mod offline;
pub(crate) mod replay;
pub(crate) mod verify;
pub(crate) mod verify_api;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use ipnet::IpNet;
use url::Url;

pub(crate) use forward::{AppClient, ForwardTo};
pub(crate) use replay::ReplayCache;
pub(crate) use verify::{Rejection, Verified};

use crate::creds::Credentials;
use crate::error::PublicError;
use crate::http::headers::{is_hop_by_hop, listed, strip_hop_by_hop};
use crate::http::ProxyBody;
use crate::listen::Peer;
use crate::tls::TlsFiles;
use keyward_core::ids::TenantId;
use keyward_core::providers::inbound::Delivery;

/// Counts and rate-limits rejection logs per (provider, reason).
#[derive(Debug, Default)]
pub(crate) struct RejectionLog {
    inner: Mutex<HashMap<(String, &'static str), LogSlot>>,
}

/// Counters of one (provider, reason).
#[derive(Debug)]
struct LogSlot {
    total: u64,
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

/// At most this many rejection lines per (provider, reason) per window.
const LOG_BURST: u32 = 5;
const LOG_WINDOW: Duration = Duration::from_secs(10);

impl RejectionLog {
    /// Counts a rejection and logs it unless the window's budget is spent.
    pub(crate) fn record(&self, provider: &str, tenant: Option<&TenantId>, r: &Rejection) {
        let Ok(mut m) = self.inner.lock() else { return };
        let now = Instant::now();
        let e = m.entry((provider.to_string(), r.code)).or_insert(LogSlot {
            total: 0,
            window_start: now,
            logged: 0,
            suppressed: 0,
        });
        e.total += 1;
        if now.duration_since(e.window_start) > LOG_WINDOW {
            if e.suppressed > 0 {
                tracing::warn!(
                    provider,
                    reason = r.code,
                    suppressed = e.suppressed,
                    "webhook rejections suppressed from the log in the last window"
                );
            }
            e.window_start = now;
            e.logged = 0;
            e.suppressed = 0;
        }
        if e.logged < LOG_BURST {
            e.logged += 1;
            tracing::warn!(provider, tenant = tenant.map(TenantId::as_str).unwrap_or("-"), reason = r.code, detail = %r.detail, "webhook rejected");
        } else {
            e.suppressed += 1;
        }
    }
}

/// Shared state of the webhook listener.
#[derive(Debug)]
pub(crate) struct WebhookState {
    /// Credentials and routes.
    pub creds: Arc<Credentials>,
    /// Replay protection.
    pub replay: replay::Replay,
    /// The app.
    pub app: AppClient,
    /// The URL providers call.
    pub public_base_url: Url,
    /// Largest body.
    pub max_body: u64,
    /// How long the body may take to arrive.
    pub body_read_timeout: std::time::Duration,
    /// Who may set X-Forwarded-*.
    pub trusted_proxies: Vec<IpNet>,
    /// Rejection counters and log limiter.
    pub rejections: RejectionLog,
    /// Pending Google connect flows (the callback lands here).
    pub connect: Arc<crate::oauth::connect::ConnectFlows>,
    /// Google tokens (code exchange).
    pub tokens: Arc<crate::oauth::TokenManager>,
    /// Metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `[telemetry] access_log`
    pub access: Arc<crate::access::AccessLog>,
}

impl WebhookState {
    fn count(&self, provider: &keyward_core::ids::ProviderName, reason: Option<&'static str>) {
        let labels = crate::metrics::WebhookLabels {
            provider: provider.into(),
            result: if reason.is_some() { "rejected" } else { "verified" },
            reason: reason.unwrap_or(""),
        };
        self.metrics.count_webhook(labels);
    }
}

fn boxed(e: PublicError) -> Response<ProxyBody> {
    e.into_response().map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

fn rejection_response(r: &Rejection) -> Response<ProxyBody> {
    let status = StatusCode::UNAUTHORIZED;
    boxed(PublicError::new(status, r.code, public_detail(r)))
}

/// What the provider is told: the code's meaning, not the operator detail (which can
/// name URL variants and configuration).
fn public_detail(r: &Rejection) -> &'static str {
    match r.code {
        "bad_signature" => "the delivery's signature did not verify",
        "stale_timestamp" => "the delivery's timestamp is outside the accepted window",
        "replayed" => "this delivery was already accepted",
        "unresolved_tenant" => "the delivery could not be matched to a tenant",
        _ => "no webhook key is configured for this delivery",
    }
}

impl WebhookState {
    /// The URL the provider called: public base (or a trusted proxy's forwarded scheme and
    /// host) plus the request-target byte for byte.
    fn signed_url(&self, peer: &Peer, req_headers: &HeaderMap, path_and_query: &str) -> String {
        let trusted = match peer {
            Peer::Tcp { addr, .. } => {
                let ip: IpAddr = addr.ip();
                self.trusted_proxies.iter().any(|n| n.contains(&ip))
            }
            _ => false,
        };
        signed_url(&self.public_base_url, trusted, req_headers, path_and_query)
    }
}

/// The URL the provider signed: `public_base_url` with the request's path and query; a
/// trusted proxy's `X-Forwarded-Proto` (http or https) and `X-Forwarded-Host` (no `/`, `@`
/// or space) replace scheme and authority.
pub(crate) fn signed_url(base: &Url, trusted: bool, req_headers: &HeaderMap, path_and_query: &str) -> String {
    let forwarded = |name: &str| req_headers.get(name).and_then(|v| v.to_str().ok()).filter(|_| trusted);
    let scheme = forwarded("x-forwarded-proto").filter(|p| *p == "http" || *p == "https").unwrap_or(base.scheme());
    let host = forwarded("x-forwarded-host").filter(|h| !h.is_empty() && !h.contains(['/', '@', ' ']));
    let prefix = base.path().trim_end_matches('/');
    // One allocation, sized up front: this runs for every delivery.
    let mut url = String::with_capacity(scheme.len() + 3 + 64 + prefix.len() + path_and_query.len());
    url.push_str(scheme);
    url.push_str("://");
    match (host, base.host_str(), base.port()) {
        (Some(h), _, _) => url.push_str(h),
        (None, Some(h), port) => {
            url.push_str(h);
            if let Some(p) = port {
                crate::http::target::push_port(&mut url, p);
            }
        }
        (None, None, _) => {}
    }
    url.push_str(prefix);
    url.push_str(path_and_query);
    url
}

/// Handles one request on the webhook listener.
///
/// `handle`, `route` and `forward` return `async move` blocks rather than being `async fn`s,
/// for the reason given at `proxy::handle`: an `async fn` keeps each by-value argument twice
/// in its future, and the future is allocated and copied per delivery.
#[allow(clippy::manual_async_fn)] // on purpose, as said above
pub(crate) fn handle(
    state: Arc<WebhookState>,
    peer: Peer,
    req: Request<Incoming>,
) -> impl std::future::Future<Output = Result<Response<ProxyBody>, Infallible>> {
    async move {
        use tracing::Instrument;
        // A provider's `traceparent` is not continued: the caller is outside the trust boundary,
        // so each delivery starts its own trace.
        let otel = crate::telemetry::server_span!("keyward.webhook", req.method().as_str());
        let start = state.access.enabled().then(|| {
            let mut s = crate::access::Start::new("webhook", delivery_id(), &peer, &req);
            s.trace_id = crate::otlp::trace_id(&otel);
            s
        });
        let mut facts = crate::access::Facts::default();
        let resp = route(&state, &peer, req, &mut facts).instrument(otel.clone()).await;
        if start.is_none() && otel.is_disabled() {
            return Ok(resp);
        }
        // The code keyward answered with (its own bounded set), not a header the app set.
        let error = match resp.headers().get("keyward-error") {
            Some(v) if facts.upstream_status.is_none() => v.to_str().unwrap_or("").to_string(),
            _ => String::new(),
        };
        if !otel.is_disabled() {
            crate::access::describe_span(&otel, &facts, resp.status().as_u16(), &error);
        }
        let record = start.map(|s| (state.access.clone(), s));
        Ok(crate::access::attach(resp, record, facts, &error, otel))
    }
}

/// A delivery's id for the access log: `w` + pid + sequence, in hex.
fn delivery_id() -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("w{:x}-{:x}", std::process::id(), SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

async fn oauth_callback(state: &WebhookState, provider: &str, req: &Request<Incoming>) -> Response<ProxyBody> {
    use crate::oauth::connect::page;
    let query = req.uri().query().unwrap_or("");
    let flows = &state.connect;
    let (status, body) = match flows
        .callback(&state.creds, &state.tokens, provider, query, &state.public_base_url)
        .await
    {
        Ok(tenant) => {
            let action = format!("oauth.{provider}.connect");
            state.creds.audit_note("oauth-callback", &action, Some(tenant.as_str()), Some(provider), "ok").await;
            tracing::info!(tenant = %tenant, provider, "OAuth provider connected");
            let what = if provider == "google" { "Google Calendar".to_string() } else { provider.to_string() };
            (
                StatusCode::OK,
                page(true, provider, &format!("{what} is connected for tenant {tenant}. You can close this window.")),
            )
        }
        Err(e) => {
            tracing::warn!(provider, reason = %e.0, "OAuth connect callback failed");
            (StatusCode::BAD_REQUEST, page(false, provider, &e.0))
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

/// `/oauth/{provider}/callback`'s provider (a plain name: no percent-escapes).
fn oauth_callback_provider(path: &str) -> Option<&str> {
    let p = path.strip_prefix("/oauth/")?.strip_suffix("/callback")?;
    keyward_core::ids::ProviderName::parse(p).is_ok().then_some(p)
}

#[allow(clippy::manual_async_fn)] // on purpose: see `handle`
fn route<'a>(
    state: &'a WebhookState,
    peer: &'a Peer,
    req: Request<Incoming>,
    facts: &'a mut crate::access::Facts,
) -> impl std::future::Future<Output = Response<ProxyBody>> + 'a {
    async move {
        if let Some(provider) = oauth_callback_provider(req.uri().path()) {
            if state.tokens.spec(provider).is_some() {
                if req.method() != Method::GET {
                    return boxed(PublicError::method_not_allowed("the OAuth callback is GET"));
                }
                let provider = provider.to_string();
                // Boxed: the callback's code exchange is a large future, and rare.
                return Box::pin(oauth_callback(state, &provider, &req)).await;
            }
        }
        // Segments are decoded (a plain one is borrowed, not copied); exactly two or three.
        // Split by byte: `str::split('/')` sets up a searcher per segment.
        let mut segs = req
            .uri()
            .path()
            .as_bytes()
            .split(|b| *b == b'/')
            .skip(1)
            .map(|s| percent_encoding::percent_decode(s).decode_utf8_lossy());
        let (provider, tenant) = match (segs.next(), segs.next(), segs.next(), segs.next()) {
            (Some(w), Some(p), t, None) if w == "webhooks" => (p, t),
            _ => {
                return boxed(PublicError::not_found(
                    "keyward serves webhooks at /webhooks/{provider} and /webhooks/{provider}/{tenant}",
                ))
            }
        };
        if req.method() != Method::POST && req.method() != Method::GET {
            return boxed(PublicError::method_not_allowed("webhooks are POST or GET"));
        }
        let Some(def) = state.creds.providers().get(&provider).cloned().filter(|d| d.has_webhooks()) else {
            return boxed(PublicError::new(
                StatusCode::NOT_FOUND,
                "unknown_provider",
                "no such provider with webhooks",
            ));
        };
        facts.provider = Some(def.name.clone());
        // An unknown or invalid tenant in the path reads like a tenant without a key.
        let path_tenant = match tenant.map(|t| TenantId::parse(&t)) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => {
                let r = Rejection { code: "no_credential", detail: "the path names no valid tenant".into() };
                state.rejections.record(def.name.as_str(), None, &r);
                state.count(&def.name, Some(r.code));
                return rejection_response(&r);
            }
        };

        // Read the whole body, bounded: nothing is buffered past the limit.
        let (parts, body) = req.into_parts();
        if let Some(len) = crate::http::body::content_length(&parts.headers) {
            if len > state.max_body {
                return boxed(PublicError::too_large(state.max_body));
            }
        }
        // A deadline for the whole body: a sender trickling bytes must not hold a connection
        // (and a descriptor) for ever.
        let collect = Limited::new(body, usize::try_from(state.max_body).unwrap_or(usize::MAX)).collect();
        let body = match tokio::time::timeout(state.body_read_timeout, collect).await {
            Ok(Ok(c)) => c.to_bytes(),
            Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                return boxed(PublicError::too_large(state.max_body))
            }
            Ok(Err(_)) => return boxed(PublicError::bad_request("the request body could not be read")),
            Err(_) => {
                let mut e = PublicError::bad_request(format!(
                    "the request body did not arrive within {} s (webhooks.body_read_timeout)",
                    state.body_read_timeout.as_secs()
                ));
                e.status = http::StatusCode::REQUEST_TIMEOUT;
                return boxed(e);
            }
        };
        if state.access.enabled() || crate::telemetry::traces_on() {
            facts.bytes_in = Some(Arc::new((body.len() as u64).into()));
        }
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let url = state.signed_url(peer, &parts.headers, pq);
        let delivery = Delivery {
            method: parts.method.as_str(),
            url: &url,
            headers: &parts.headers,
            body: &body,
            now: keyward_core::time::now_secs(),
        };
        let verifying = Instant::now();
        let span = crate::telemetry::trace_span!(
            "keyward.webhook.verify",
            keyward.provider = def.name.as_str(),
            keyward.result = tracing::field::Empty,
            keyward.reason = tracing::field::Empty,
        );
        let verdict = {
            use tracing::Instrument;
            verify::verify(&state.creds, Some(&state.replay), &def, path_tenant.clone(), &delivery)
                .instrument(span.clone())
                .await
        };
        facts.resolve = Some(verifying.elapsed());
        match &verdict {
            Ok(_) => span.record("keyward.result", "verified"),
            Err(r) => span.record("keyward.result", "rejected").record("keyward.reason", r.code),
        };
        drop(span);
        let verified = match verdict {
            Ok(v) => v,
            Err(r) => {
                state.rejections.record(def.name.as_str(), path_tenant.as_ref(), &r);
                state.count(&def.name, Some(r.code));
                return rejection_response(&r);
            }
        };
        state.count(&def.name, None);
        facts.tenant = Some(verified.tenant.clone());
        forward(state, verified, parts.method, pq, parts.headers, body, facts).await
    }
}

#[allow(clippy::manual_async_fn)] // on purpose: see `handle`
fn forward<'a>(
    state: &'a WebhookState,
    v: Verified,
    method: Method,
    pq: &'a str,
    headers: HeaderMap,
    body: Bytes,
    facts: &'a mut crate::access::Facts,
) -> impl std::future::Future<Output = Response<ProxyBody>> + 'a {
    async move {
        let Ok(uri) = state.app.uri(pq) else {
            return boxed(PublicError::bad_request("the request path cannot be forwarded"));
        };
        let named: Vec<&str> = listed(&headers).collect();
        let mut out = HeaderMap::with_capacity(headers.len() + 4);
        for (name, value) in &headers {
            let n = name.as_str();
            if n.starts_with("keyward-")
                || is_hop_by_hop(n)
                || name == header::HOST
                || named.iter().any(|l| l.eq_ignore_ascii_case(n))
                || v.strip.contains(&n)
            {
                continue;
            }
            out.append(name.clone(), value.clone());
        }
        let set = |h: &mut HeaderMap, n: &'static str, val: &str| {
            if let Ok(v) = HeaderValue::from_str(val) {
                h.insert(HeaderName::from_static(n), v);
            }
        };
        set(&mut out, "keyward-tenant", v.tenant.as_str());
        set(&mut out, "keyward-provider", v.provider.name.as_str());
        if let Some(id) = &v.event_id {
            set(&mut out, "keyward-event-id", id);
        }
        set(&mut out, "keyward-verified", "1");
        let needs_mask = keyward_core::redact::contains_any(&body, &v.mask);
        let body = if !needs_mask {
            body
        } else {
            let mut b = body.to_vec();
            keyward_core::redact::mask(&mut b, &v.mask);
            Bytes::from(b)
        };
        let mut req = Request::new(Full::new(body).map_err(|never| match never {}).boxed_unsync());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = out;
        let forwarding = Instant::now();
        let span = crate::telemetry::trace_span!(
            "keyward.webhook.forward",
            otel.kind = "client",
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        // The app continues keyward's trace: this span is its parent.
        crate::otlp::inject(&span, req.headers_mut());
        let sent = {
            use tracing::Instrument;
            state.app.send(req).instrument(span.clone()).await
        };
        match &sent {
            Ok(r) => span.record("http.response.status_code", i64::from(r.status().as_u16())),
            Err(_) => span.record("otel.status_code", "ERROR"),
        };
        drop(span);
        facts.upstream = Some(forwarding.elapsed());
        let Verified { reservation, tenant, provider, .. } = v;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(tenant = %tenant, provider = %provider.name, error = %e, "verified webhook could not be forwarded to the app");
                // The replay key is released: the provider's retry passes.
                if let Some(r) = reservation {
                    r.release().await;
                }
                return boxed(e.into());
            }
        };
        facts.upstream_status = Some(resp.status().as_u16());
        if let Some(r) = reservation {
            if resp.status().is_success() {
                r.commit().await;
            } else {
                r.release().await;
            }
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Response::from_parts(parts, body.boxed_unsync())
    }
}

/// `[webhooks]`
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// The URL providers call, which Twilio signs. No trailing slash.
    pub public_base_url: Url,
    /// The app.
    pub forward_to: ForwardTo,
    /// Largest body accepted.
    pub max_body: u64,
    /// Peers allowed to set X-Forwarded-Proto / X-Forwarded-Host.
    pub trusted_proxies: Vec<IpNet>,
    /// TLS on the listener.
    pub tls: Option<TlsFiles>,
    /// How long the app may take to answer a forwarded delivery.
    pub forward_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// Open connections at most from one remote IP.
    pub max_connections_per_source: usize,
    /// How long a delivery's body may take to arrive.
    pub body_read_timeout: Duration,
    /// A connection with nothing in flight this long is closed.
    pub idle_timeout: Duration,
}
