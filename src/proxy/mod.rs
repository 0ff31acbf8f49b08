//! The app listener: apps send provider calls with no credential; keyward picks the
//! tenant's credential, injects it as the provider expects, forwards over TLS and streams
//! the answer back (CONTRACT.md §4).
//!
//! Path of a request: [`route`] (pure: tenant, provider, path) → client policy → rate limit
//! → `creds.resolve` → host allow-list → provider injection → header hygiene → [`forward`]
//! → response hygiene and [`scrub`]bing → the app. WebSocket upgrades take the same path
//! and then become a byte tunnel.

mod scrub;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::Instrument;

use crate::creds::{CredError, Credentials};
use crate::error::PublicError;
use crate::http::target as route;
use crate::http::{headers, BoxError, ProxyBody, Upstream};
use crate::listen::Peer;
use crate::oauth::TokenManager;
use crate::policy::{ClientPolicy, Policy, RateLimiter};
use crate::tls::MtlsFiles;

/// Shared state of the app listener.
pub struct ProxyState {
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
}

impl std::fmt::Debug for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyState").finish()
    }
}

impl ProxyState {
    /// The client policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().map(|p| p.clone()).unwrap_or_default()
    }

    /// Replaces the client policy (config reload); requests in flight keep the old one.
    pub fn set_policy(&self, p: Policy) {
        if let Ok(mut cur) = self.policy.write() {
            *cur = Arc::new(p);
        }
    }
}

/// Credential headers an app may have sent; keyward's own injection replaces them.
const CLIENT_CREDENTIALS: [&str; 3] = ["authorization", "proxy-authorization", "xi-api-key"];

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

fn request_id() -> String {
    format!("{:x}-{:x}", std::process::id(), REQUEST_SEQ.fetch_add(1, Ordering::Relaxed))
}

fn boxed_error(e: PublicError) -> Response<ProxyBody> {
    e.into_response().map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

/// Header names listed in `Connection` (they are hop-by-hop too).
fn is_websocket(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && headers::connection_listed(req.headers()).iter().any(|t| t == "upgrade")
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Handles one app request.
pub async fn handle(
    state: Arc<ProxyState>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let rid = request_id();
    let span = tracing::info_span!("request", request_id = %rid);
    let method = req.method().clone();
    let (resp, tenant, provider) = proxy(&state, &peer, req).instrument(span.clone()).await;
    let resp = resp.unwrap_or_else(boxed_error);
    let error = resp.headers().get("keyward-error").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let labels = crate::metrics::RequestLabels {
        provider: provider.clone().unwrap_or_else(|| "-".into()),
        status: resp.status().as_u16(),
        error,
    };
    state.metrics.proxy_requests.get_or_create(&labels).inc();
    if let (Some(f), Some(t), Some(p)) = (&state.metrics.proxy_requests_by_tenant, &tenant, &provider) {
        f.get_or_create(&crate::metrics::TenantRequestLabels {
            tenant: t.clone(),
            provider: p.clone(),
            status: resp.status().as_u16(),
        })
        .inc();
    }
    span.in_scope(|| {
        tracing::info!(
            target: "keyward::access",
            method = %method,
            tenant = tenant.as_deref().unwrap_or("-"),
            provider = provider.as_deref().unwrap_or("-"),
            status = resp.status().as_u16(),
            error = resp.headers().get("keyward-error").and_then(|v| v.to_str().ok()).unwrap_or(""),
            micros = started.elapsed().as_micros() as u64,
            "proxied"
        )
    });
    Ok(resp)
}

type Outcome = (Result<Response<ProxyBody>, PublicError>, Option<String>, Option<String>);

async fn proxy(state: &ProxyState, peer: &Peer, req: Request<Incoming>) -> Outcome {
    if req.method() == Method::CONNECT {
        let e = PublicError::method_not_allowed(
            "CONNECT tunnels are not supported: keyward must see each request to inject the credential; send plain http:// URLs through it (HTTP_PROXY) and it calls the provider over HTTPS",
        );
        return (Err(e), None, None);
    }
    if req.uri().path() == "/v1/webhooks/verify" {
        return (crate::webhook::verify_api::handle(&state.creds, &state.policy(), peer, req).await, None, None);
    }
    let providers = state.creds.providers();
    let target = match route::route(req.version(), req.uri(), req.headers(), &providers) {
        Ok(t) => t,
        Err(e) => return (Err(e.into()), None, None),
    };
    let tenant = Some(target.tenant.to_string());
    let provider_name = Some(target.provider.name.to_string());
    let result = forward_one(state, peer, target, req).await;
    (result, tenant, provider_name)
}

async fn forward_one(
    state: &ProxyState,
    peer: &Peer,
    target: route::Target,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, PublicError> {
    let provider = &target.provider;
    let pname = provider.name.as_str();
    if !state.policy().allows(peer, &target.tenant, pname) {
        return Err(PublicError::new(
            StatusCode::FORBIDDEN,
            "tenant_not_allowed",
            format!("this client may not use {pname} for tenant {}", target.tenant),
        ));
    }
    if let Some(limit) = provider.rate_limit() {
        if let Err(wait) = state.limiter.check(&target.tenant, pname, limit) {
            return Err(PublicError::rate_limited(wait));
        }
    }
    let cred = match state.creds.resolve(&target.tenant, pname).await {
        Ok(c) => c,
        Err(CredError::NotFound { .. }) if !state.creds.tenant_exists(&target.tenant).await? => {
            return Err(PublicError::new(
                StatusCode::NOT_FOUND,
                "unknown_tenant",
                format!("keyward has no tenant {}", target.tenant),
            ));
        }
        Err(e) => return Err(e.into()),
    };

    // Where the call goes, and whether the credential may go there.
    let (scheme, host, port, prefix) = match &target.authority {
        Some((h, p)) => ("https".to_string(), h.clone(), *p, String::new()),
        None => {
            let base = provider.base_url(Some(&*cred));
            let host = base.host_str().unwrap_or_default().to_ascii_lowercase();
            let port = base.port_or_known_default().unwrap_or(443);
            (base.scheme().to_string(), host, port, base.path().trim_end_matches('/').to_string())
        }
    };
    if !provider.allows(&*cred, &host, port) {
        return Err(PublicError::new(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            format!("{host}:{port} is not a host this tenant's {pname} credential may be sent to"),
        ));
    }
    let token = match &state.tokens {
        Some(src) if provider.uses_access_token() => Some(src.token(&target.tenant).await?),
        _ => None,
    };
    let injection = provider.inject(&*cred, &target.path, token.as_ref())?;

    // The upstream URI.
    let path = injection.path.clone().unwrap_or_else(|| target.path.clone());
    let mut query = target.query.clone().unwrap_or_default();
    if let Some((name, value)) = &injection.query {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(&url::form_urlencoded::Serializer::new(String::new()).append_pair(name, value).finish());
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    let host_part = if host.contains(':') { format!("[{host}]") } else { host.clone() };
    let authority = if port == default_port { host_part } else { format!("{host_part}:{port}") };
    let pq = if query.is_empty() { format!("{prefix}{path}") } else { format!("{prefix}{path}?{query}") };
    let uri: Uri = format!("{scheme}://{authority}{pq}")
        .parse()
        .map_err(|_| PublicError::bad_request("the request path or query cannot be forwarded (invalid characters)"))?;

    // Headers: drop hop-by-hop, client credentials, Keyward-*, Host; add the injection.
    let websocket = is_websocket(&req);
    let listed = headers::connection_listed(req.headers());
    let injected_names: Vec<HeaderName> = injection.headers.iter().map(|(n, _)| n.clone()).collect();
    let mut headers = HeaderMap::with_capacity(req.headers().len() + 2);
    for (name, value) in req.headers() {
        let n = name.as_str();
        if headers::is_hop_by_hop(n)
            || CLIENT_CREDENTIALS.contains(&n)
            || n.starts_with("keyward-")
            || name == header::HOST
            || listed.iter().any(|l| l == n)
            || injected_names.contains(name)
        {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if let Some(te) = req.headers().get(header::TE) {
        if te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            headers.insert(header::TE, te.clone());
        }
    }
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    for (n, v) in injection.headers {
        headers.insert(n, v);
    }

    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    // Google: a 401 may mean the access token was revoked early. Retry once with a fresh
    // token, only for idempotent requests without a body (nothing to replay).
    let is_google = provider.uses_access_token();
    let bodiless = !parts.headers.contains_key(header::TRANSFER_ENCODING)
        && parts.headers.get(header::CONTENT_LENGTH).is_none_or(|v| v.as_bytes() == b"0");
    let retry = (is_google
        && bodiless
        && matches!(parts.method, Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS))
    .then(|| (parts.method.clone(), uri.clone(), headers.clone()));
    let mut up = Request::new(body.map_err(|e| Box::new(e) as BoxError).boxed_unsync());
    *up.method_mut() = parts.method;
    *up.uri_mut() = uri;
    *up.headers_mut() = headers;
    // The upstream connection negotiates its own version (ALPN).

    let mut extra_scrub = Vec::new();
    let sent = Instant::now();
    let mut resp = state.upstream.send(up, websocket).await?;
    state
        .metrics
        .upstream_latency
        .get_or_create(&crate::metrics::ProviderLabels { provider: pname.to_string() })
        .observe(sent.elapsed().as_secs_f64());
    if let (StatusCode::UNAUTHORIZED, Some((method, uri, mut headers)), Some(tokens)) =
        (resp.status(), retry, &state.tokens)
    {
        tokens.invalidate(&target.tenant).await;
        let fresh = tokens.token(&target.tenant).await?;
        let again_inj = provider.inject(&*cred, &target.path, Some(&fresh))?;
        extra_scrub.extend(again_inj.scrub);
        for (n, v) in again_inj.headers {
            headers.insert(n, v);
        }
        let mut again =
            Request::new(http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync());
        *again.method_mut() = method;
        *again.uri_mut() = uri;
        *again.headers_mut() = headers;
        tracing::info!(tenant = %target.tenant, "Google answered 401; retrying once with a fresh access token");
        resp = state.upstream.send(again, false).await?;
    }
    let mut scrub = injection.scrub;
    scrub.extend(extra_scrub);

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((c, u)) => {
                        let mut c = hyper_util::rt::TokioIo::new(c);
                        let mut u = hyper_util::rt::TokioIo::new(u);
                        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                            tracing::debug!(error = %e, "websocket tunnel closed with an error");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
                }
            });
            let mut out =
                Response::new(http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync());
            *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let mut h = resp.headers().clone();
            scrub::scrub_headers(&mut h, &scrub);
            *out.headers_mut() = h;
            return Ok(out);
        }
    }

    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    scrub::scrub_headers(&mut parts.headers, &scrub);
    let body: ProxyBody = if scrub::is_scannable(&parts.headers) {
        scrub::Scrubbed::new(body.map_err(|e| Box::new(e) as BoxError), scrub).boxed_unsync()
    } else {
        body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
    };
    Ok(Response::from_parts(parts, body))
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
}
