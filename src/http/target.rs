//! Request routing for the app listener (CONTRACT.md §4): which tenant, which provider,
//! which upstream path. Pure: headers and URI in, a [`Target`] or an error out.
//!
//! Forms: `/{provider}/{path}` + `Keyward-Tenant`; `/t/{tenant}/{provider}/{path}`; and the
//! HTTP/1.1 absolute form `http://host/path` (keyward as `HTTP_PROXY`), whose host must
//! belong to a provider. Dot segments (`..`, `%2e%2e`, …) are refused anywhere in the
//! path, so a request can never climb out of its provider or tenant.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, Uri, Version};
use percent_encoding::percent_decode_str;

use keyward_core::ids::TenantId;
use keyward_core::providers::{ProviderDef, Providers};

/// Where a request goes, before the credential is known.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) tenant: TenantId,
    pub(crate) provider: Arc<ProviderDef>,
    /// The request's URI, which [`Target::path`] and [`Target::query`] borrow from (a clone
    /// shares its bytes: no copy per request).
    uri: Uri,
    /// Where the upstream path starts in `uri.path()`; `None` when it is just `/`.
    path_from: Option<usize>,
    /// Absolute form: the host and port the app named.
    pub(crate) authority: Option<(String, u16)>,
}

impl Target {
    /// Upstream path, still percent-encoded as received, starting with `/`.
    pub(crate) fn path(&self) -> &str {
        self.path_from.and_then(|i| self.uri.path().get(i..)).filter(|p| !p.is_empty()).unwrap_or("/")
    }

    /// Query string as received, without `?`.
    pub(crate) fn query(&self) -> Option<&str> {
        self.uri.query()
    }
}

/// Why a request cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RouteError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown provider \"{0}\"")]
    UnknownProvider(String),
    #[error("{0} belongs to no configured provider; keyward only forwards to provider hosts")]
    HostNotAllowed(String),
}

/// A name made once: looking a header up by `&str` parses and validates the name each time.
const TENANT_HEADER: HeaderName = HeaderName::from_static("keyward-tenant");

fn header_tenant(headers: &HeaderMap) -> Result<Option<TenantId>, RouteError> {
    let mut values = headers.get_all(&TENANT_HEADER).iter();
    let Some(v) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(RouteError::BadRequest("Keyward-Tenant appears more than once".into()));
    }
    let s = v.to_str().map_err(|_| RouteError::BadRequest("Keyward-Tenant must be ASCII".into()))?;
    TenantId::parse(s).map(Some).map_err(|e| RouteError::BadRequest(format!("Keyward-Tenant: {e}")))
}

/// PROVIDERS.md §3.1, for every provider: no `.`/`..` segments, no `//`, no `%2F`.
fn check_dot_segments(path: &str) -> Result<(), RouteError> {
    // Byte windows, not `str::contains`: that builds a substring searcher per call, which
    // costs more than scanning a path this short (every request).
    let b = path.as_bytes();
    if b.windows(2).any(|w| w == b"//") {
        return Err(RouteError::BadRequest("the path contains an empty segment (//); send a normalised path".into()));
    }
    if b.windows(3).any(|w| w[0] == b'%' && w[1] == b'2' && (w[2] | 0x20) == b'f') {
        return Err(RouteError::BadRequest("the path contains an encoded slash (%2F); keyward refuses it".into()));
    }
    // Segments split by byte, not by `str::split('/')`, whose searcher cost ~100
    // instructions a segment; one is decoded only when it holds a `%` (the usual case
    // borrows it as it is).
    for seg in b.split(|c| *c == b'/') {
        let decoded: std::borrow::Cow<'_, [u8]> =
            if seg.contains(&b'%') { percent_encoding::percent_decode(seg).into() } else { seg.into() };
        if decoded.contains(&0) {
            return Err(RouteError::BadRequest("the path contains NUL".into()));
        }
        // An encoded `\` inside a segment could become a separator upstream: check the
        // pieces it would split into too.
        if decoded.split(|c| *c == b'\\').any(|part| part == b"." || part == b"..") {
            return Err(RouteError::BadRequest(
                "the path contains a dot segment (. or ..); send a normalised path".into(),
            ));
        }
    }
    Ok(())
}

fn lookup(providers: &Providers, name: &str) -> Result<Arc<ProviderDef>, RouteError> {
    let decoded = percent_decode_str(name).decode_utf8_lossy();
    providers.get(&decoded).cloned().ok_or_else(|| RouteError::UnknownProvider(decoded.chars().take(64).collect()))
}

/// The host (an IPv6 literal with its brackets) and port of an authority `http` has parsed,
/// as `Authority::host` and `port_u16` give them, in one pass: those search the string again
/// with `char` patterns on each call, ~1,000 instructions a request (docs/benchmarks.md).
/// The pool's destinations and the router's absolute form both take it from here.
pub(crate) fn host_and_port(authority: &str) -> (&str, Option<u16>) {
    let after_user = memchr::memrchr(b'@', authority.as_bytes()).map_or(authority, |i| &authority[i + 1..]);
    let end = if after_user.starts_with('[') {
        memchr::memchr(b']', after_user.as_bytes()).map_or(after_user.len(), |i| i + 1)
    } else {
        memchr::memchr(b':', after_user.as_bytes()).unwrap_or(after_user.len())
    };
    let (host, rest) = after_user.split_at(end);
    (host, rest.strip_prefix(':').and_then(|p| p.parse().ok()))
}

/// Appends `:` and `port` in decimal to a URL being built: by hand, because `write!` goes
/// through the formatting machinery (~300 instructions) for at most six bytes, and both
/// the proxy's upstream URI and the webhook's app URL are built on every request.
pub(crate) fn push_port(url: &mut String, port: u16) {
    let (mut digits, mut at, mut p) = ([0u8; 5], 5, port);
    loop {
        at -= 1;
        digits[at] = b'0' + (p % 10) as u8;
        p /= 10;
        if p == 0 {
            break;
        }
    }
    url.push(':');
    url.push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
}

/// Routes one request.
pub(crate) fn route(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
    providers: &Providers,
) -> Result<Target, RouteError> {
    let path = uri.path();
    check_dot_segments(path)?;

    // Absolute form (HTTP/1.x only: HTTP/2 requests always carry an authority).
    if version <= Version::HTTP_11 {
        if let Some(auth) = uri.authority() {
            let (host, port) = host_and_port(auth.as_str());
            let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
            let port = port.unwrap_or(443);
            let tenant = header_tenant(headers)?.ok_or_else(|| {
                RouteError::BadRequest("an absolute-form (HTTP_PROXY) request needs a Keyward-Tenant header".into())
            })?;
            let provider = providers
                .names()
                .filter_map(|n| providers.get(n))
                .find(|p| p.claims_host(&host, port))
                .cloned()
                .ok_or_else(|| RouteError::HostNotAllowed(format!("{host}:{port}")))?;
            return Ok(Target {
                tenant,
                provider,
                uri: uri.clone(),
                path_from: Some(0),
                authority: Some((host, port)),
            });
        }
    }

    let rest = path.strip_prefix('/').unwrap_or(path);
    let (tenant, provider, upstream) = if let Some(after) = rest.strip_prefix("t/") {
        let mut parts = after.splitn(3, '/');
        let t = parts.next().unwrap_or("");
        let p = parts.next().unwrap_or("");
        let up = parts.next();
        let t = percent_decode_str(t)
            .decode_utf8()
            .map_err(|_| RouteError::BadRequest("the tenant segment is not UTF-8".into()))?;
        let tenant = TenantId::parse(&t).map_err(|e| RouteError::BadRequest(e.to_string()))?;
        if let Some(h) = header_tenant(headers)? {
            if h != tenant {
                return Err(RouteError::BadRequest(
                    "Keyward-Tenant names a different tenant than the /t/{tenant}/ path".into(),
                ));
            }
        }
        if p.is_empty() {
            return Err(RouteError::BadRequest("use /t/{tenant}/{provider}/{path}".into()));
        }
        (tenant, lookup(providers, p)?, up)
    } else {
        let (p, up) = rest.split_once('/').map_or((rest, None), |(p, up)| (p, Some(up)));
        if p.is_empty() {
            return Err(RouteError::BadRequest(
                "use /{provider}/{path} with Keyward-Tenant, or /t/{tenant}/{provider}/{path}".into(),
            ));
        }
        let provider = lookup(providers, p)?;
        let tenant = header_tenant(headers)?.ok_or_else(|| {
            RouteError::BadRequest("send Keyward-Tenant: <tenant id>, or use /t/{tenant}/{provider}/{path}".into())
        })?;
        (tenant, provider, up)
    };
    // `upstream` is a suffix of `path`: its path starts at the `/` before it.
    let path_from = upstream.map(|up| path.len() - up.len() - 1);
    Ok(Target { tenant, provider, uri: uri.clone(), path_from, authority: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use keyward_core::providers::config::ProvidersConfig;

    fn providers() -> Providers {
        Providers::from_config(&ProvidersConfig::default())
    }

    #[test]
    fn push_port_writes_every_width() {
        for port in [0u16, 1, 9, 10, 80, 443, 8080, 9999, 10000, 65535] {
            let mut url = String::from("https://h");
            push_port(&mut url, port);
            assert_eq!(url, format!("https://h:{port}"));
        }
    }

    fn hdrs(tenant: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = tenant {
            h.insert(TENANT_HEADER, HeaderValue::from_str(t).unwrap());
        }
        h
    }

    fn r(uri: &str, tenant: Option<&str>) -> Result<Target, RouteError> {
        route(Version::HTTP_11, &uri.parse().unwrap(), &hdrs(tenant), &providers())
    }

    #[test]
    fn the_three_forms_route_to_the_same_place() {
        let a = r("/twilio/2010-04-01/Accounts/_/Messages.json?x=1", Some("acme")).unwrap();
        let b = r("/t/acme/twilio/2010-04-01/Accounts/_/Messages.json?x=1", None).unwrap();
        let c = r("http://api.twilio.com/2010-04-01/Accounts/_/Messages.json?x=1", Some("acme")).unwrap();
        for t in [&a, &b, &c] {
            assert_eq!(t.tenant.as_str(), "acme");
            assert_eq!(t.provider.name.as_str(), "twilio");
            assert_eq!(t.path(), "/2010-04-01/Accounts/_/Messages.json");
            assert_eq!(t.query(), Some("x=1"));
        }
        assert_eq!(c.authority, Some(("api.twilio.com".to_string(), 443)));
    }

    #[test]
    fn dot_segments_are_refused_in_every_spelling() {
        for p in [
            "/vapi/../../v1/tenants",
            "/vapi/%2e%2e/x",
            "/vapi/%2E%2E/x",
            "/vapi/.%2e/x",
            "/t/acme/../globex/vapi/x",
            "/vapi/./x",
            "/vapi/%2e/x",
            "/vapi/a/%00",
            "/vapi/%2e%2e%2fx",
            "/vapi/x%5c..%5cy",
        ] {
            assert!(matches!(r(p, Some("acme")), Err(RouteError::BadRequest(_))), "{p}");
        }
        assert!(r("/vapi/assistant/a..b", Some("acme")).is_ok(), "dots inside a segment are fine");
        assert!(
            matches!(r("/vapi/x\\..\\y", Some("acme")), Err(RouteError::BadRequest(_))),
            "a raw backslash splits too"
        );
    }

    #[test]
    fn the_upstream_path_is_what_follows_the_provider() {
        for (uri, path) in [
            ("/vapi/assistant/a?x=1", "/assistant/a"),
            ("/vapi/", "/"),
            ("/vapi", "/"),
            ("/t/acme/vapi", "/"),
            ("/t/acme/vapi/", "/"),
            ("/t/acme/vapi/call/1", "/call/1"),
            ("http://api.vapi.ai", "/"),
            ("http://api.vapi.ai/call", "/call"),
        ] {
            assert_eq!(r(uri, Some("acme")).unwrap().path(), path, "{uri}");
        }
        assert_eq!(r("/vapi/a", Some("acme")).unwrap().query(), None);
    }

    #[test]
    fn hosts_outside_every_provider_are_refused() {
        assert!(matches!(
            r("http://169.254.169.254/latest/meta-data", Some("acme")),
            Err(RouteError::HostNotAllowed(_))
        ));
        assert!(matches!(r("http://api.twilio.com.evil.example/x", Some("acme")), Err(RouteError::HostNotAllowed(_))));
    }

    #[test]
    fn the_tenant_must_be_named_once_and_agree() {
        assert!(matches!(r("/vapi/assistant", None), Err(RouteError::BadRequest(_))));
        assert!(matches!(r("/vapi/assistant", Some("Bad Tenant")), Err(RouteError::BadRequest(_))));
        assert!(matches!(r("/t/acme/vapi/assistant", Some("globex")), Err(RouteError::BadRequest(_))));
        assert!(matches!(r("/t/ACME/vapi/assistant", None), Err(RouteError::BadRequest(_))));
        assert!(matches!(r("/nope/x", Some("acme")), Err(RouteError::UnknownProvider(_))));
        let mut two = hdrs(Some("acme"));
        two.append(TENANT_HEADER, HeaderValue::from_static("globex"));
        assert!(route(Version::HTTP_11, &"/vapi/x".parse().unwrap(), &two, &providers()).is_err());
    }

    #[test]
    fn http2_requests_route_by_path_even_with_an_authority() {
        let t = route(
            Version::HTTP_2,
            &"http://localhost/vapi/assistant".parse().unwrap(),
            &hdrs(Some("acme")),
            &providers(),
        )
        .unwrap();
        assert_eq!(t.provider.name.as_str(), "vapi");
        assert_eq!(t.authority, None);
    }

    #[test]
    fn host_and_port_agree_with_http_on_every_authority_shape() {
        for a in [
            "api.vapi.ai",
            "api.vapi.ai:8443",
            "host:",
            "host:99999",
            "[::1]",
            "[::1]:8080",
            "[fe80::1%25eth0]:1",
            "user@host",
            "user:pw@host",
            "user:pw@[::1]:7",
            "a@b@host:9",
            "127.0.0.1:0",
        ] {
            let parsed: http::uri::Authority = a.parse().unwrap();
            assert_eq!(host_and_port(parsed.as_str()), (parsed.host(), parsed.port_u16()), "{a}");
        }
    }
}
