//! One app request as named phases (pingora's `ProxyHttp` is the model):
//! [`authorize`] (client policy, rate limit) → [`resolve`] (the tenant's credential) →
//! [`destination`] (where it goes, checked against the credential's hosts) → [`token`]
//! (Google's access token, where the provider injects one) → [`build`] (the injection, the
//! upstream request) → [`send`] (with the token-refresh retry) → [`respond`] (hop-by-hop
//! hygiene and scrubbing, or the WebSocket tunnel). Each phase returns a typed value the
//! next one takes, so a phase cannot be skipped and each can be tested alone.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use zeroize::Zeroizing;

use super::{is_websocket, scrub, ProxyState, CLIENT_CREDENTIALS};
use crate::creds::{CredError, Credential, MadeInjection};
use crate::error::PublicError;
use crate::http::target::Target;
use crate::http::{headers, BoxError, ProxyBody, UpstreamBody};
use crate::listen::Peer;
use keyward_core::providers::Injection;
use keyward_core::secret::Secret;

/// Byte strings that must not reach the app in a response.
type ScrubList = scrub::Patterns;

/// Client policy, then the tenant's rate limit for the provider.
pub(super) fn authorize(state: &ProxyState, peer: &Peer, target: &Target) -> Result<(), PublicError> {
    let pname = target.provider.name.as_str();
    if !state.policy().allows(peer, &target.tenant, pname) {
        return Err(PublicError::new(
            StatusCode::FORBIDDEN,
            "tenant_not_allowed",
            format!("this client may not use {pname} for tenant {}", target.tenant),
        ));
    }
    if let Some(limit) = target.provider.rate_limit() {
        state.limiter.check(&target.tenant, pname, limit).map_err(PublicError::rate_limited)?;
    }
    Ok(())
}

/// The tenant's credential for the provider and how long finding it took (one clock for
/// the metric and the access log); a tenant keyward has never seen is `unknown_tenant`
/// rather than `no_credential`.
pub(super) async fn resolve(
    state: &ProxyState,
    target: &Target,
) -> Result<(Arc<Credential>, std::time::Duration), PublicError> {
    use tracing::Instrument;
    let span = crate::telemetry::trace_span!("keyward.credential.resolve", keyward.cache = tracing::field::Empty);
    let started = Instant::now();
    let resolved = state.creds.resolve(&target.tenant, target.provider.name.as_str()).instrument(span.clone()).await;
    let trace = crate::otlp::trace_id(&span);
    let took = started.elapsed();
    crate::metrics::observe(&state.metrics.credential_resolve, took.as_secs_f64(), trace);
    match resolved {
        Ok(c) => Ok((c, took)),
        Err(CredError::NotFound { .. }) if !state.creds.tenant_exists(&target.tenant).await? => Err(PublicError::new(
            StatusCode::NOT_FOUND,
            "unknown_tenant",
            format!("keyward has no tenant {}", target.tenant),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Where a call goes: scheme, host (lower case), port and the base URL's path prefix;
/// borrowed from the target or the provider's base URL where it can be (every request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Destination<'a> {
    scheme: &'static str,
    host: Cow<'a, str>,
    port: u16,
    prefix: Cow<'a, str>,
}

impl<'a> Destination<'a> {
    /// The absolute-form authority the app named, else the provider's base URL for this
    /// credential.
    fn of(target: &'a Target, cred: &'a Credential) -> Destination<'a> {
        match &target.authority {
            Some((h, p)) => {
                Destination { scheme: "https", host: Cow::Borrowed(h), port: *p, prefix: Cow::Borrowed("") }
            }
            None => {
                let base = target.provider.base_url(Some(cred));
                let scheme = if base.scheme() == "http" { "http" } else { "https" };
                let port = base.port_or_known_default().unwrap_or(443);
                let lower = |h: &str| h.bytes().all(|b| !b.is_ascii_uppercase());
                match base {
                    Cow::Borrowed(u) => {
                        let host = u.host_str().unwrap_or_default();
                        Destination {
                            scheme,
                            host: if lower(host) { Cow::Borrowed(host) } else { Cow::Owned(host.to_ascii_lowercase()) },
                            port,
                            prefix: Cow::Borrowed(u.path().trim_end_matches('/')),
                        }
                    }
                    Cow::Owned(u) => Destination {
                        scheme,
                        host: Cow::Owned(u.host_str().unwrap_or_default().to_ascii_lowercase()),
                        port,
                        prefix: Cow::Owned(u.path().trim_end_matches('/').to_string()),
                    },
                }
            }
        }
    }

    /// The upstream URI for `path` and `query` (as received), with the injection's path
    /// rewrite and query parameter applied. Written into one buffer that becomes the URI
    /// without another copy (this runs for every request).
    fn uri(&self, path: &str, query: Option<&str>, injection: &Injection) -> Result<Uri, PublicError> {
        let path = injection.path.as_deref().unwrap_or(path);
        let query = query.unwrap_or_default();
        let default_port = if self.scheme == "https" { 443 } else { 80 };
        let port_len = if self.port == default_port { 0 } else { 2 + self.port.checked_ilog10().unwrap_or(0) as usize };
        let ipv6 = self.host.contains(':');
        let brackets = if ipv6 { 2 } else { 0 };
        // Exact unless a query parameter is injected: a `String` whose length is its
        // capacity becomes the URI's bytes without a second allocation.
        let mut s = String::with_capacity(
            self.scheme.len()
                + 3
                + brackets
                + self.host.len()
                + port_len
                + self.prefix.len()
                + path.len()
                + if query.is_empty() { 0 } else { 1 + query.len() },
        );
        s.push_str(self.scheme);
        s.push_str("://");
        if ipv6 {
            s.push('[');
            s.push_str(&self.host);
            s.push(']');
        } else {
            s.push_str(&self.host);
        }
        if self.port != default_port {
            crate::http::target::push_port(&mut s, self.port);
        }
        s.push_str(&self.prefix);
        s.push_str(path);
        let mut sep = '?';
        if !query.is_empty() {
            s.push('?');
            s.push_str(query);
            sep = '&';
        }
        if let Some((name, value)) = &injection.query {
            s.push(sep);
            // Starting at the end: the serializer adds no separator of its own.
            let start = s.len();
            url::form_urlencoded::Serializer::for_suffix(&mut s, start).append_pair(name, value);
            s.shrink_to_fit();
        }
        Uri::try_from(s)
            .map_err(|_| PublicError::bad_request("the request path or query cannot be forwarded (invalid characters)"))
    }
}

/// The app's headers as the provider gets them: hop-by-hop, client credentials, `Keyward-*`,
/// `Host` and anything the injection sets are dropped; `TE: trailers` is kept; a WebSocket
/// upgrade is restated; the injection is added. `Accept-Encoding` is keyward's, not the
/// app's: `identity`, so every textual answer can be scanned for an echoed secret (an app
/// asking for gzip would otherwise switch scrubbing off). Audio is not compressible anyway;
/// JSON costs more bytes on the provider link, which is the price of scanning it.
pub(super) fn upstream_headers(from_app: &HeaderMap, injection: Injected, websocket: bool) -> HeaderMap {
    // Borrowed, and no allocation unless the app sent `Connection`.
    let listed: Vec<&str> = headers::listed(from_app).collect();
    let mut out = HeaderMap::with_capacity(from_app.len() + 2);
    for (name, value) in from_app {
        let n = name.as_str();
        if headers::is_hop_by_hop(n)
            || CLIENT_CREDENTIALS.contains(&n)
            || n.starts_with("keyward-")
            || name == header::HOST
            || listed.iter().any(|l| l.eq_ignore_ascii_case(n))
            || injection.headers.iter().any(|(n, _)| n == name)
            || name == header::ACCEPT_ENCODING
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    if let Some(te) = from_app.get(header::TE) {
        if te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            out.insert(header::TE, te.clone());
        }
    }
    if websocket {
        out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    match injection {
        // A shared value's clone shares its bytes (no copy of the secret).
        Injected::Made(made) => {
            add(&mut out, made.injection.defaults.iter().cloned(), made.injection.headers.iter().cloned());
        }
        Injected::Own(own) => add(&mut out, own.defaults.into_iter(), own.headers.into_iter()),
    }
    out
}

type Header = (HeaderName, HeaderValue);

fn add(out: &mut HeaderMap, defaults: impl Iterator<Item = Header>, headers: impl Iterator<Item = Header>) {
    for (n, v) in defaults {
        if !out.contains_key(&n) {
            out.insert(n, v);
        }
    }
    for (n, v) in headers {
        out.insert(n, v);
    }
}

/// A request's injection: the credential's, made once, or one made for this request.
pub(super) enum Injected {
    /// The credential's, for a provider that injects from the credential alone.
    Made(Arc<MadeInjection>),
    /// Made for this request (its path or access token is part of it).
    Own(Injection),
}

impl std::ops::Deref for Injected {
    type Target = Injection;

    fn deref(&self) -> &Injection {
        match self {
            Injected::Made(made) => &made.injection,
            Injected::Own(own) => own,
        }
    }
}

/// What [`build`] hands to [`send`].
pub(super) struct Prepared {
    request: Request<ProxyBody>,
    /// A copy for one retry with a fresh access token, when the request can be replayed;
    /// boxed, since only Google's requests have one and every request's future holds this.
    retry: Option<Box<(Method, Uri, HeaderMap)>>,
    /// The app side of a WebSocket upgrade.
    client_upgrade: Option<OnUpgrade>,
    scrub: ScrubList,
}

/// A Google access token for the tenant, for a provider that injects one; `None` for
/// every other provider (no await then).
pub(super) async fn token(state: &ProxyState, target: &Target) -> Result<Option<Secret>, PublicError> {
    match &state.tokens {
        // Boxed: the token manager's future is ~5.8 KiB (a refresh may run inside it), and
        // inlined it would sit in every request's future, paid per in-flight request even
        // for providers without tokens (1,000 connections: +3 MiB RSS).
        Some(src) if target.provider.uses_access_token() => {
            Ok(Some(Box::pin(src.token(&target.tenant, target.provider.name.as_str())).await?))
        }
        _ => Ok(None),
    }
}

/// Where the call goes, once checked against the credential's hosts (before any token is
/// fetched for it).
pub(super) fn destination<'a>(target: &'a Target, cred: &'a Credential) -> Result<Destination<'a>, PublicError> {
    let dest = Destination::of(target, cred);
    if !target.provider.allows(cred, &dest.host, dest.port) {
        return Err(PublicError::new(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            format!(
                "{}:{} is not a host this tenant's {} credential may be sent to",
                dest.host, dest.port, target.provider.name
            ),
        ));
    }
    Ok(dest)
}

/// Injects and builds the upstream request. Not async: a future would keep the app's
/// request (264 bytes) a second time beside the caller's.
pub(super) fn build(
    state: &ProxyState,
    target: &Target,
    cred: &Credential,
    dest: &Destination<'_>,
    token: Option<Secret>,
    mut req: Request<Incoming>,
    count_in: Option<Arc<std::sync::atomic::AtomicU64>>,
) -> Result<Prepared, PublicError> {
    let provider = &target.provider;
    let (injection, mut scrub) = if token.is_none() && provider.injection_per_credential() {
        let made = cred.injection(provider)?;
        let scrub = ScrubList::Shared(made.scrub.clone());
        (Injected::Made(made), scrub)
    } else {
        let mut own = provider.inject(cred, target.path(), token.as_ref())?;
        let scrub = ScrubList::Own(std::mem::take(&mut own.scrub));
        (Injected::Own(own), scrub)
    };
    let callback = callback_query(state, target, cred, &mut scrub)?;
    let query = callback.as_deref().map(String::as_str).or(target.query());
    let uri = dest.uri(target.path(), query, &injection)?;
    let websocket = is_websocket(&req);
    let mut headers = upstream_headers(req.headers(), injection, websocket);
    if state.strip_trace_context {
        headers.remove("traceparent");
        headers.remove("tracestate");
    }
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let retry = (provider.uses_access_token() && replayable(&parts.method, &parts.headers))
        .then(|| Box::new((parts.method.clone(), uri.clone(), headers.clone())));
    let body = crate::access::count_body(body.map_err(|e| Box::new(e) as BoxError).boxed_unsync(), count_in);
    let mut request = Request::new(body);
    *request.method_mut() = parts.method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    // The upstream connection negotiates its own HTTP version (ALPN).
    Ok(Prepared { request, retry, client_upgrade, scrub })
}

/// A provider that calls back a URL the app names (Deepgram's `callback`): the value is
/// replaced by keyward's own webhook URL for the tenant, with the proof its verifier will
/// check, so neither the app's URL nor a secret the app holds is involved
/// (PROVIDERS-2.md §6.2). Other parameters keep their bytes.
fn callback_query(
    state: &ProxyState,
    target: &Target,
    cred: &Credential,
    scrub: &mut ScrubList,
) -> Result<Option<Zeroizing<String>>, PublicError> {
    let (Some(param), Some(query)) = (target.provider.rules().callback_param(), target.query()) else {
        return Ok(None);
    };
    let named = |seg: &str| {
        let name = seg.split_once('=').map_or(seg, |(n, _)| n);
        url::form_urlencoded::parse(name.as_bytes()).next().is_some_and(|(n, _)| n == param)
    };
    if !query.split('&').any(named) {
        return Ok(None);
    }
    let Some(base) = &state.public_base_url else {
        return Err(PublicError::bad_request(format!(
            "a {param} URL needs [webhooks] public_base_url: keyward replaces it with its own webhook URL"
        )));
    };
    let Some(url) = target.provider.rules().callback_url(cred, base, target.tenant.as_str()) else {
        return Err(PublicError::bad_request(format!(
            "this tenant's {} credential has no webhook_secret, which keyward puts into {param} URLs; add one with cred put",
            target.provider.name
        )));
    };
    if let Some(secret) = keyward_core::providers::FieldSource::secret_field(cred, "webhook_secret") {
        scrub.to_mut().push(Zeroizing::new(secret.expose().as_bytes().to_vec()));
    }
    let encoded: String = url::form_urlencoded::byte_serialize(url.as_bytes()).collect();
    let encoded = Zeroizing::new(encoded);
    let mut out = Zeroizing::new(String::with_capacity(query.len() + encoded.len()));
    for (i, seg) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        if named(seg) {
            out.push_str(param);
            out.push('=');
            out.push_str(&encoded);
        } else {
            out.push_str(seg);
        }
    }
    Ok(Some(out))
}

/// Idempotent and without a body: safe to send twice, nothing to buffer.
fn replayable(method: &Method, h: &HeaderMap) -> bool {
    let bodiless = !h.contains_key(header::TRANSFER_ENCODING)
        && h.get(header::CONTENT_LENGTH).is_none_or(|v| v.as_bytes() == b"0");
    bodiless && matches!(*method, Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS)
}

/// What [`send`] hands to [`respond`].
pub(super) struct Sent {
    pub(super) response: Response<UpstreamBody>,
    /// To the (last) response head.
    pub(super) upstream_elapsed: std::time::Duration,
    client_upgrade: Option<OnUpgrade>,
    scrub: ScrubList,
}

/// Sends the request; a token-managed provider's 401 gets one retry with a fresh token.
///
/// Not an `async fn`: one of those keeps its arguments twice in its future (the argument
/// and the body's own binding of it), and this future is part of every request's.
#[allow(clippy::manual_async_fn)] // on purpose, as `proxy::handle`
pub(super) fn send<'a>(
    state: &'a ProxyState,
    target: &'a Target,
    cred: &'a Credential,
    mut p: Prepared,
) -> impl std::future::Future<Output = Result<Sent, PublicError>> + 'a {
    async move {
        let websocket = p.client_upgrade.is_some();
        let started = Instant::now();
        let span = crate::telemetry::trace_span!(
            "keyward.upstream",
            otel.kind = "client",
            server.address = p.request.uri().host().unwrap_or(""),
            http.request.method = p.request.method().as_str(),
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let sent = {
            use tracing::Instrument;
            state.upstream.send(p.request, websocket).instrument(span.clone()).await
        };
        match &sent {
            Ok(r) => span.record("http.response.status_code", i64::from(r.status().as_u16())),
            Err(_) => span.record("otel.status_code", "ERROR"),
        };
        let mut response = sent?;
        crate::metrics::observe(
            &state
                .metrics
                .upstream_latency
                .get_or_create(&crate::metrics::ProviderLabels { provider: (&target.provider.name).into() }),
            started.elapsed().as_secs_f64(),
            crate::otlp::trace_id(&span),
        );
        drop(span);
        if let (StatusCode::UNAUTHORIZED, Some(retry)) = (response.status(), p.retry) {
            if let Some(again) = Box::pin(retry_with_fresh_token(state, target, cred, *retry, &mut p.scrub)).await? {
                response = again;
            }
        }
        Ok(Sent { response, upstream_elapsed: started.elapsed(), client_upgrade: p.client_upgrade, scrub: p.scrub })
    }
}

/// Google: a 401 may mean the access token was revoked early. Forget it, get a fresh one
/// and send the request once more (it was replayable: idempotent, no body).
async fn retry_with_fresh_token(
    state: &ProxyState,
    target: &Target,
    cred: &Credential,
    (method, uri, mut headers): (Method, Uri, HeaderMap),
    scrub: &mut ScrubList,
) -> Result<Option<Response<UpstreamBody>>, PublicError> {
    let Some(tokens) = &state.tokens else { return Ok(None) };
    tokens.invalidate(&target.tenant, target.provider.name.as_str()).await;
    let fresh = Box::pin(tokens.token(&target.tenant, target.provider.name.as_str())).await?;
    let again = target.provider.inject(cred, target.path(), Some(&fresh))?;
    scrub.to_mut().extend(again.scrub);
    for (n, v) in again.headers {
        headers.insert(n, v);
    }
    let mut request =
        Request::new(http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    tracing::info!(tenant = %target.tenant, "Google answered 401; retrying once with a fresh access token");
    Ok(Some(state.upstream.send(request, false).await?))
}

/// The provider's answer as the app gets it: a WebSocket tunnel when the upgrade was
/// accepted, else the response with hop-by-hop headers dropped and the credential
/// scrubbed from headers and (text) body.
pub(super) fn respond(sent: Sent) -> Response<ProxyBody> {
    let Sent { mut response, client_upgrade, scrub, .. } = sent;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            return tunnel(client_upgrade, &mut response, &scrub);
        }
    }
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_keyward(&mut parts.headers);
    scrub::scrub_headers(&mut parts.headers, &scrub);
    // Each looked up once: the two decide both the refusal and the scan.
    let (identity, textual) = (scrub::is_identity(&parts.headers), scrub::is_textual(&parts.headers));
    if !identity && textual {
        // Asked for identity and compressed anyway: it cannot be scanned, so it is not relayed.
        tracing::warn!(
            status = parts.status.as_u16(),
            "a provider compressed a textual answer keyward asked for uncompressed; refused"
        );
        return PublicError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_connect_failed",
            "the provider sent a compressed text answer although keyward asked for identity; it cannot be checked for echoed secrets",
        )
        .into_response()
        .map(|b| b.map_err(|never| match never {}).boxed_unsync());
    }
    // Binary bodies stream untouched, but their trailers are still masked.
    let body = scrub::Scrubbed::new(body, scrub, identity && textual).boxed_unsync();
    Response::from_parts(parts, body)
}

/// Joins the app's and the provider's upgraded connections into a byte tunnel (in the
/// background) and answers the app's upgrade with the provider's 101 headers.
fn tunnel(client: OnUpgrade, upstream: &mut Response<UpstreamBody>, scrub: &ScrubList) -> Response<ProxyBody> {
    let upstream_upgrade = hyper::upgrade::on(&mut *upstream);
    tokio::spawn(async move {
        match tokio::try_join!(client, upstream_upgrade) {
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
    let mut out = Response::new(http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let mut h = upstream.headers().clone();
    headers::strip_keyward(&mut h);
    scrub::scrub_headers(&mut h, scrub);
    *out.headers_mut() = h;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    fn dest<'a>(scheme: &'static str, host: &'a str, port: u16, prefix: &'a str) -> Destination<'a> {
        Destination { scheme, host: host.into(), port, prefix: prefix.into() }
    }

    #[test]
    fn the_upstream_uri_keeps_the_path_as_received_and_adds_the_injected_query() {
        let inj = Injection { query: Some(("key".into(), Zeroizing::new("a b&c".into()))), ..Injection::default() };
        let uri = dest("https", "api.example", 443, "/v2").uri("/calls/%2A", Some("x=1"), &inj).unwrap();
        assert_eq!(uri.to_string(), "https://api.example/v2/calls/%2A?x=1&key=a+b%26c");
        let uri = dest("https", "api.example", 443, "").uri("/calls", None, &inj).unwrap();
        assert_eq!(uri.to_string(), "https://api.example/calls?key=a+b%26c");
        let uri = dest("http", "::1", 8080, "").uri("/a", None, &Injection::default()).unwrap();
        assert_eq!(uri.to_string(), "http://[::1]:8080/a");
        for (port, text) in [(1, "https://a.example:1/"), (10, "https://a.example:10/"), (80, "https://a.example:80/")]
        {
            assert_eq!(
                dest("https", "a.example", port, "").uri("/", None, &Injection::default()).unwrap().to_string(),
                text
            );
        }
        let uri = dest("http", "a.example", 65535, "").uri("/", None, &Injection::default()).unwrap();
        assert_eq!(uri.port_u16(), Some(65535));
        let rewritten = Injection { path: Some("/2010-04-01/Accounts/AC1/Calls.json".into()), ..Injection::default() };
        let uri = dest("https", "api.twilio.com", 443, "").uri("/2010-04-01/Accounts/_/Calls.json", None, &rewritten);
        assert_eq!(uri.unwrap().path(), "/2010-04-01/Accounts/AC1/Calls.json");
        assert_eq!(
            dest("https", "a.example", 443, "").uri("/a b", None, &Injection::default()).unwrap_err().code,
            "bad_request"
        );
    }

    #[test]
    fn the_provider_never_sees_the_apps_credentials_or_hop_headers() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("authorization", "Bearer app-secret"),
            ("xi-api-key", "app"),
            ("keyward-tenant", "acme"),
            ("host", "localhost"),
            ("connection", "X-Hop, keep-alive"),
            ("x-hop", "1"),
            ("te", "trailers"),
            ("content-type", "application/json"),
            ("accept-encoding", "gzip, br"),
            ("x-multi", "first"),
            ("x-multi", "second"),
            ("keyward-request-id", "r1"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let inj = Injection {
            headers: vec![(header::AUTHORIZATION, HeaderValue::from_static("Bearer injected"))],
            ..Injection::default()
        };
        let out = upstream_headers(&h, Injected::Own(inj), false);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept-encoding", "authorization", "content-type", "te", "x-multi"]);
        let multi: Vec<&[u8]> = out.get_all("x-multi").iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(multi, [&b"first"[..], &b"second"[..]], "repeated values kept, in order");
        assert_eq!(out["authorization"], "Bearer injected");
        assert_eq!(out["accept-encoding"], "identity", "keyward's choice, not the app's");
        let ws = upstream_headers(&HeaderMap::new(), Injected::Own(Injection::default()), true);
        assert_eq!((ws["connection"].as_bytes(), ws["upgrade"].as_bytes()), (&b"upgrade"[..], &b"websocket"[..]));
    }

    #[test]
    fn only_idempotent_bodiless_requests_are_replayed() {
        let mut h = HeaderMap::new();
        assert!(replayable(&Method::GET, &h));
        assert!(!replayable(&Method::POST, &h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(replayable(&Method::DELETE, &h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(!replayable(&Method::GET, &h));
        let mut chunked = HeaderMap::new();
        chunked.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(!replayable(&Method::GET, &chunked));
    }
}
