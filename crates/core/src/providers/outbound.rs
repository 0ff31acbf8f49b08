//! Outbound rules shared by every provider: where its calls go (base URL, region), which
//! hosts may receive its credential, and the [`Injection`] a credential becomes. The
//! provider files hold each provider's own rule; this file dispatches. Pure: no I/O.

use base64::Engine;
use http::{HeaderName, HeaderValue};
use url::Url;
use zeroize::Zeroizing;

use super::ProviderDef;
use crate::providers::config::InjectTemplate;
use crate::secret::Secret;

/// Read access to a credential's fields (implemented by `creds::Credential`), so the
/// provider rules stay independent of how credentials are stored.
pub trait FieldSource {
    /// A secret field.
    fn secret_field(&self, name: &str) -> Option<&Secret>;
    /// A public string field.
    fn public_field(&self, name: &str) -> Option<&str>;
}

/// What injecting a credential into one request means.
#[derive(Default)]
pub struct Injection {
    /// Headers to set (values marked sensitive).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers set only when the app sent none of that name (Cartesia's API version).
    pub defaults: Vec<(HeaderName, HeaderValue)>,
    /// A query parameter to append (generic providers).
    pub query: Option<(String, Zeroizing<String>)>,
    /// A rewritten upstream path (Twilio `Accounts/_`).
    pub path: Option<String>,
    /// Byte strings that must never reach the app in a response (scrubbing).
    pub scrub: Vec<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Injection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injection")
            .field("headers", &self.headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
            .field("defaults", &self.defaults)
            .field("query", &self.query.as_ref().map(|(n, _)| n))
            .field("path", &self.path)
            .finish()
    }
}

/// Why a credential cannot be injected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// The host is not on the provider's list for this credential.
    #[error("{0} is not a host this provider's credential may be sent to")]
    HostNotAllowed(String),
    /// Twilio: the Account SID in the path is another account's.
    #[error("the path names account {found}, but this tenant's account is {expected}; use /2010-04-01/Accounts/_/… to have keyward fill it in")]
    AccountMismatch {
        /// The tenant's SID.
        expected: String,
        /// The SID in the path.
        found: String,
    },
    /// The credential lacks a field the injection needs.
    #[error("the credential has no {0} field, which this call needs")]
    MissingField(String),
    /// Google: no access token (the token manager supplies one).
    #[error("no Google access token is available for this tenant")]
    NoToken,
}

/// A host (lower case) and port a credential may be sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// This host and port.
    Exact(String, u16),
    /// Any subdomain of the suffix (which starts with a dot), on port 443.
    Suffix(&'static str),
}

impl HostRule {
    /// Whether `host` (lower case) and `port` fit the rule.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        match self {
            HostRule::Exact(h, p) => h == host && *p == port,
            // ^([a-z0-9-]+\.)+<suffix>$
            HostRule::Suffix(s) => {
                port == 443
                    && host.strip_suffix(s).is_some_and(|sub| {
                        !sub.is_empty()
                            && sub.split('.').all(|l| {
                                !l.is_empty()
                                    && l.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                            })
                    })
            }
        }
    }
}

pub(crate) fn exact(host: &str) -> HostRule {
    HostRule::Exact(host.to_string(), 443)
}

pub(crate) fn url_host_rule(u: &Url) -> Option<HostRule> {
    Some(HostRule::Exact(u.host_str()?.to_ascii_lowercase(), u.port_or_known_default()?))
}

/// A URL written as a literal in keyward's source (provider base URLs, Google's OAuth
/// endpoints).
// Invariant: only called with literals, each exercised by a unit test (the registry test
// parses every provider's base URL in every region; oauth's tests use its endpoints), so
// parsing cannot fail at run time.
#[allow(clippy::expect_used)]
pub fn literal_url(s: &str) -> Url {
    Url::parse(s).expect("a literal URL parses")
}

/// The region of a credential that names none.
pub(crate) const DEFAULT_REGION: &str = "us";

impl ProviderDef {
    /// Where this provider's calls go for a credential (region-aware), or the configured
    /// `base_url` (borrowed: this runs for every request).
    pub fn base_url(&self, cred: Option<&dyn FieldSource>) -> std::borrow::Cow<'_, Url> {
        if let Some(u) = cred.and_then(|c| self.rules().credential_base_url(c)) {
            return std::borrow::Cow::Owned(u);
        }
        if let Some(u) = &self.overrides.base_url {
            return std::borrow::Cow::Borrowed(u);
        }
        match cred.and_then(|c| c.public_field("region")) {
            Some(region) if region != DEFAULT_REGION => std::borrow::Cow::Owned(self.rules().default_base_url(region)),
            _ => std::borrow::Cow::Borrowed(&self.default_url),
        }
    }

    /// Every host the provider can be reached at, whatever the region: used to find the
    /// provider of an absolute-form request.
    fn all_hosts(&self) -> Vec<HostRule> {
        let mut rules: Vec<HostRule> = self.overrides.base_url.as_ref().and_then(url_host_rule).into_iter().collect();
        rules.extend(self.rules().hosts());
        rules
    }

    /// Whether `host:port` belongs to this provider at all.
    pub fn claims_host(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.all_hosts().iter().any(|r| r.matches(&host, port))
    }

    /// Whether this credential may be sent to `host:port`. A region-bound credential goes
    /// only to its region's host (or the configured base URL).
    pub fn allows(&self, cred: &dyn FieldSource, host: &str, port: u16) -> bool {
        if self.rules().per_credential_host() {
            // Only the credential's own host, and only if the provider claims it (a stored
            // instance_url pointing elsewhere sends nothing).
            return self.rules().credential_base_url(cred).is_some_and(|u| {
                let (h, p) = (u.host_str().unwrap_or_default().to_ascii_lowercase(), u.port_or_known_default());
                h.eq_ignore_ascii_case(host) && p == Some(port) && self.claims_host(&h, port)
            });
        }
        if self.rules().region_bound() {
            // Compared in place (no copy of a configured base URL on the request path).
            let matches = |u: &Url| {
                u.host_str().is_some_and(|h| h.eq_ignore_ascii_case(host)) && u.port_or_known_default() == Some(port)
            };
            return matches(&self.base_url(Some(cred)));
        }
        // Destinations come lower-cased already: copied only when one does not.
        let lower = match host.bytes().any(|b| b.is_ascii_uppercase()) {
            true => std::borrow::Cow::Owned(host.to_ascii_lowercase()),
            false => std::borrow::Cow::Borrowed(host),
        };
        self.claims_host(&lower, port)
    }

    /// Whether the injection is the same for every request with one credential
    /// ([`Provider::injection_per_credential`]).
    pub fn injection_per_credential(&self) -> bool {
        self.rules().injection_per_credential()
    }

    /// The injection for one request to `path` (already validated by the router).
    pub fn inject(
        &self,
        cred: &dyn FieldSource,
        path: &str,
        access_token: Option<&Secret>,
    ) -> Result<Injection, OutboundError> {
        self.rules().inject(cred, path, access_token)
    }
}

pub(super) fn need<'a>(cred: &'a dyn FieldSource, name: &str) -> Result<&'a Secret, OutboundError> {
    cred.secret_field(name).ok_or_else(|| OutboundError::MissingField(name.to_string()))
}

/// A header value marked sensitive (never HPACK-indexed, redacted in hyper's Debug).
pub(super) fn sensitive(bytes: &[u8]) -> Result<HeaderValue, OutboundError> {
    sensitive_joined(&[bytes])
}

/// The parts written once, into the buffer that becomes a sensitive header value. The
/// buffer is wiped when the last clone of the value is dropped (a plain `Bytes` would
/// free it with the secret still in it). The parts are checked first, so a refused
/// secret is never copied.
pub(super) fn sensitive_joined(parts: &[&[u8]]) -> Result<HeaderValue, OutboundError> {
    let header_safe = |b: &u8| (*b >= 0x20 && *b != 0x7f) || *b == b'\t';
    if !parts.iter().all(|p| p.iter().all(header_safe)) {
        return Err(OutboundError::MissingField("a header-safe secret".into()));
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(parts.iter().map(|p| p.len()).sum()));
    for p in parts {
        buf.extend_from_slice(p);
    }
    let mut v = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .map_err(|_| OutboundError::MissingField("a header-safe secret".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

pub(crate) fn bearer(cred: &dyn FieldSource, field: &str) -> Result<Injection, OutboundError> {
    bearer_value(need(cred, field)?)
}

pub(crate) fn bearer_value(secret: &Secret) -> Result<Injection, OutboundError> {
    authorization("Bearer", secret)
}

/// `Authorization: <scheme> <secret>` (Bearer; Deepgram's `Token`), the secret scrubbed.
pub(crate) fn authorization(scheme: &str, secret: &Secret) -> Result<Injection, OutboundError> {
    Ok(Injection {
        headers: vec![(
            http::header::AUTHORIZATION,
            sensitive_joined(&[scheme.as_bytes(), b" ", secret.expose().as_bytes()])?,
        )],
        scrub: vec![Zeroizing::new(secret.expose().as_bytes().to_vec())],
        ..Injection::default()
    })
}

/// `Authorization: Basic base64(user:password)`; both the password and the encoded pair
/// are scrubbed from responses.
pub(super) fn basic(user: &str, password: &Secret) -> Result<Injection, OutboundError> {
    let pair = Zeroizing::new(format!("{user}:{}", password.expose()));
    let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()));
    Ok(Injection {
        headers: vec![(http::header::AUTHORIZATION, sensitive_joined(&[b"Basic ", encoded.as_bytes()])?)],
        scrub: vec![Zeroizing::new(password.expose().as_bytes().to_vec()), Zeroizing::new(encoded.as_bytes().to_vec())],
        ..Injection::default()
    })
}

/// Renders `Bearer {api_key}`-style templates; every secret used is scrubbed.
fn render(
    cred: &dyn FieldSource,
    template: &str,
    scrub: &mut Vec<Zeroizing<Vec<u8>>>,
) -> Result<Zeroizing<String>, OutboundError> {
    let mut out = Zeroizing::new(String::with_capacity(template.len() + 64));
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(rest.get(..start).unwrap_or(""));
        let after = rest.get(start + 1..).unwrap_or("");
        let end = after.find('}').unwrap_or(after.len());
        let name = after.get(..end).unwrap_or("");
        if let Some(s) = cred.secret_field(name) {
            out.push_str(s.expose());
            scrub.push(Zeroizing::new(s.expose().as_bytes().to_vec()));
        } else if let Some(p) = cred.public_field(name) {
            out.push_str(p);
        } else {
            return Err(OutboundError::MissingField(name.to_string()));
        }
        rest = after.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    Ok(out)
}

/// The URL-encoded forms of a secret sent in a query, when they differ from it: form
/// encoding (as keyward writes the query: `+` for space) and plain percent-encoding (as
/// providers re-encode URLs).
pub(crate) fn url_forms(secret: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let form: String = url::form_urlencoded::byte_serialize(secret).collect();
    // Sized up front: growing would leave copies of the secret in freed memory.
    let mut pct = String::with_capacity(secret.len() * 3);
    for b in secret {
        if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
            pct.push(char::from(*b));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            pct.push('%');
            pct.push(char::from(HEX[usize::from(b >> 4)]));
            pct.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    let mut out: Vec<Zeroizing<Vec<u8>>> = Vec::new();
    for f in [form, pct] {
        if f.as_bytes() != secret && !out.iter().any(|o| o.as_slice() == f.as_bytes()) {
            out.push(Zeroizing::new(f.into_bytes()));
        }
    }
    out
}

pub(crate) fn generic(cred: &dyn FieldSource, inject: &InjectTemplate) -> Result<Injection, OutboundError> {
    let mut scrub = Vec::new();
    match inject {
        InjectTemplate::Header { name, value } => {
            let v = render(cred, value, &mut scrub)?;
            let name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| OutboundError::MissingField(name.clone()))?;
            scrub.push(Zeroizing::new(v.as_bytes().to_vec()));
            Ok(Injection { headers: vec![(name, sensitive(v.as_bytes())?)], scrub, ..Injection::default() })
        }
        InjectTemplate::Basic { user, password } => {
            let u = render(cred, user, &mut scrub)?;
            let p = render(cred, password, &mut scrub)?;
            let mut inj = basic(&u, &Secret::new(p.to_string()))?;
            inj.scrub.extend(scrub);
            Ok(inj)
        }
        InjectTemplate::Query { name, value } => {
            let v = render(cred, value, &mut scrub)?;
            // What travels in the URL is the encoded form, and that is what a provider
            // echoing the URL (a Location, an error message) repeats.
            let encoded: Vec<_> = scrub.iter().flat_map(|s| url_forms(s)).collect();
            scrub.extend(encoded);
            Ok(Injection { query: Some((name.clone(), v)), scrub, ..Injection::default() })
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::providers::config::ProvidersConfig;
    use crate::providers::Providers;

    #[test]
    fn an_authorization_value_is_the_scheme_and_the_secret_marked_sensitive_or_refused() {
        let inj = authorization("Bearer", &Secret::new("sk-1\tz".into())).unwrap();
        let (name, v) = &inj.headers[0];
        assert_eq!((name.as_str(), v.as_bytes()), ("authorization", &b"Bearer sk-1\tz"[..]));
        assert!(v.is_sensitive());
        for bad in ["sk\n1", "sk\r1", "sk\x7f", "sk\x001"] {
            assert!(authorization("Bearer", &Secret::new(bad.into())).is_err(), "{bad:?}");
        }
    }
    use std::collections::BTreeMap;

    /// A credential's fields for tests of the provider rules.
    pub(crate) struct Fields(BTreeMap<&'static str, Secret>, BTreeMap<&'static str, &'static str>);

    impl FieldSource for Fields {
        fn secret_field(&self, name: &str) -> Option<&Secret> {
            self.0.get(name)
        }
        fn public_field(&self, name: &str) -> Option<&str> {
            self.1.get(name).copied()
        }
    }

    pub(crate) fn fields(secrets: &[(&'static str, &str)], public: &[(&'static str, &'static str)]) -> Fields {
        Fields(
            secrets.iter().map(|(k, v)| (*k, Secret::new((*v).to_string()))).collect(),
            public.iter().copied().collect(),
        )
    }

    fn header(inj: &Injection, name: &str) -> String {
        let (_, v) = inj.headers.iter().find(|(n, _)| n == name).unwrap();
        assert!(v.is_sensitive(), "{name} is marked sensitive");
        v.to_str().unwrap().to_string()
    }

    #[test]
    fn each_builtin_injects_the_header_its_provider_expects() {
        let p = Providers::from_config(&ProvidersConfig::default());
        let key = fields(&[("api_key", "k-123")], &[]);
        assert_eq!(header(&p.get("vapi").unwrap().inject(&key, "/", None).unwrap(), "authorization"), "Bearer k-123");
        assert_eq!(header(&p.get("resend").unwrap().inject(&key, "/", None).unwrap(), "authorization"), "Bearer k-123");
        assert_eq!(header(&p.get("elevenlabs").unwrap().inject(&key, "/", None).unwrap(), "xi-api-key"), "k-123");
        let tok = Secret::new("ya29.token".into());
        assert_eq!(
            header(&p.get("google").unwrap().inject(&key, "/", Some(&tok)).unwrap(), "authorization"),
            "Bearer ya29.token"
        );
        assert_eq!(p.get("google").unwrap().inject(&key, "/", None).unwrap_err(), OutboundError::NoToken);
    }

    #[test]
    fn vapi_keys_go_only_to_their_region() {
        let p = Providers::from_config(&ProvidersConfig::default());
        let vapi = p.get("vapi").unwrap();
        let eu = fields(&[("api_key", "k")], &[("region", "eu")]);
        let us = fields(&[("api_key", "k")], &[]);
        assert_eq!(vapi.base_url(Some(&eu)).as_str(), "https://api.eu.vapi.ai/");
        assert!(vapi.allows(&eu, "api.eu.vapi.ai", 443));
        assert!(!vapi.allows(&eu, "api.vapi.ai", 443));
        assert!(vapi.allows(&us, "api.vapi.ai", 443));
        assert!(vapi.claims_host("api.eu.vapi.ai", 443) && vapi.claims_host("API.VAPI.AI", 443));
        assert!(!vapi.claims_host("api.vapi.ai", 8443));
    }

    #[test]
    fn twilio_claims_its_subdomains_only() {
        let p = Providers::from_config(&ProvidersConfig::default());
        let tw = p.get("twilio").unwrap();
        assert!(tw.claims_host("api.twilio.com", 443) && tw.claims_host("messaging.twilio.com", 443));
        assert!(!tw.claims_host("twilio.com.evil.example", 443));
        assert!(!tw.claims_host("eviltwilio.com", 443));
        assert!(!tw.claims_host(".twilio.com", 443));
        assert!(!tw.claims_host("a..twilio.com", 443) && !tw.claims_host("a_b.twilio.com", 443));
        assert!(tw.claims_host("api.dublin.ie1.twilio.com", 443));
        for other in ["vapi", "google", "resend", "elevenlabs"] {
            assert!(!p.get(other).unwrap().claims_host("169.254.169.254", 443));
        }
    }

    #[test]
    fn elevenlabs_follows_its_region_and_lists_residency_hosts() {
        let p = Providers::from_config(&ProvidersConfig::default());
        let el = p.get("elevenlabs").unwrap();
        let sg = fields(&[("api_key", "k")], &[("region", "sg")]);
        assert_eq!(el.base_url(Some(&sg)).host_str(), Some("api.sg.residency.elevenlabs.io"));
        for h in [
            "api.elevenlabs.io",
            "api.us.elevenlabs.io",
            "api.eu.residency.elevenlabs.io",
            "api.in.residency.elevenlabs.io",
        ] {
            assert!(el.claims_host(h, 443), "{h}");
        }
    }

    #[test]
    fn generic_templates_render_and_scrub_every_secret_used() {
        let mut t = InjectTemplate::Basic { user: "{account}".into(), password: "{api_key}".into() };
        let f = fields(&[("api_key", "sk-9")], &[("account", "acct")]);
        let inj = generic(&f, &t).unwrap();
        assert_eq!(
            header(&inj, "authorization"),
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("acct:sk-9"))
        );
        assert!(inj.scrub.iter().any(|s| s.as_slice() == b"sk-9"));
        t = InjectTemplate::Query { name: "key".into(), value: "{api_key}".into() };
        let inj = generic(&f, &t).unwrap();
        assert_eq!(inj.query.as_ref().map(|(n, v)| (n.as_str(), v.as_str())), Some(("key", "sk-9")));
        t = InjectTemplate::Header { name: "x-api-key".into(), value: "Token {missing}".into() };
        assert_eq!(generic(&f, &t).unwrap_err(), OutboundError::MissingField("missing".into()));
    }
}
