//! Providers: one file per provider, each implementing [`Provider`]: its credential schema,
//! where its calls go and how auth is injected, how its webhooks are verified and which
//! tenant they name, how a credential is checked live and which ids discovery lists. The
//! registry below ([`BUILTIN`]) is the only list of them; adding a provider means its file
//! and one line there. Generic providers declared in config implement the same trait.
//! Pure: no I/O.

mod cartesia;
pub mod config;
mod deepgram;
pub mod discovery;
mod elevenlabs;
pub mod fields;
mod generic;
mod google;
pub mod inbound;
mod oauth2;
mod openai;
pub mod outbound;
mod plivo;
mod resend;
mod retell;
mod rs256;
mod telnyx;
pub(crate) mod twilio;
mod vapi;
pub(crate) mod vonage;

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderMap;
use url::Url;
use zeroize::Zeroizing;

pub use discovery::{Listing, Page};
pub use fields::{FieldError, ParsedFields, Schema};
pub use inbound::{Accepted, Delivery, Reject, WebhookKeys};
pub use oauth2::{assertion, assertion_claims, preset, PRESETS};
pub use outbound::{FieldSource, HostRule, Injection, OutboundError};

use crate::ids::ProviderName;
use crate::secret::Secret;
use config::{BuiltinOverride, OAuth2Spec, ProvidersConfig, RateLimit};

/// One provider's rules. Every method is pure; the daemon does the I/O around them.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// The name used in URLs, config and the store.
    fn name(&self) -> &str;

    /// The credential fields and their validation.
    fn schema(&self) -> Schema;

    // ---- outbound ----

    /// Where calls go when no `base_url` is configured, for a credential's region (`us`
    /// when it names none).
    fn default_base_url(&self, region: &str) -> Url;

    /// Every host the provider is reached at, whatever the region (absolute-form routing
    /// and the credential's host allow-list).
    fn hosts(&self) -> Vec<HostRule>;

    /// Whether a credential is bound to its region's host alone (Vapi keys are).
    fn region_bound(&self) -> bool {
        false
    }

    /// The auth for one request to `path`; `access_token` is the token manager's, for
    /// providers that [use one](Provider::uses_access_token).
    fn inject(
        &self,
        cred: &dyn FieldSource,
        path: &str,
        access_token: Option<&Secret>,
    ) -> Result<Injection, OutboundError>;

    /// Whether [`Provider::inject`] depends on the credential alone (neither the path nor
    /// an access token): the daemon then makes it once per loaded credential and shares it
    /// between requests, instead of copying the secret into every request's injection.
    fn injection_per_credential(&self) -> bool {
        false
    }

    /// Whether calls carry an OAuth access token that keyward refreshes (Google).
    fn uses_access_token(&self) -> bool {
        false
    }

    /// Whether each credential names its own API host ([`Provider::credential_base_url`]),
    /// the only one its token may be sent to (Salesforce's `instance_url`).
    fn per_credential_host(&self) -> bool {
        false
    }

    /// The credential's own base URL, for [per-credential hosts](Provider::per_credential_host).
    fn credential_base_url(&self, _cred: &dyn FieldSource) -> Option<Url> {
        None
    }

    /// The query parameter by which an app names a URL the provider will call back
    /// (Deepgram's `callback`): keyward replaces its value with [`Provider::callback_url`].
    fn callback_param(&self) -> Option<&'static str> {
        None
    }

    /// keyward's own webhook URL for this tenant, carrying the proof its verifier checks
    /// (PROVIDERS-2.md §6.2); `None` when the credential holds no key for it.
    fn callback_url(&self, _cred: &dyn FieldSource, _public_base: &Url, _tenant: &str) -> Option<Zeroizing<String>> {
        None
    }

    // ---- inbound ----

    /// Whether the provider sends webhooks keyward can verify.
    fn has_webhooks(&self) -> bool {
        true
    }

    /// The keys a stored credential verifies deliveries with, current first, or `None`
    /// when it holds none (`no_credential`). The default is `webhook_secret` and
    /// `webhook_secret_previous`.
    fn webhook_keys<'c>(&self, cred: &'c dyn FieldSource) -> Option<WebhookKeys<'c>> {
        if cred.secret_field("webhook_secret").is_none() || !self.has_webhooks() {
            return None;
        }
        Some(WebhookKeys::from_fields(cred, &["webhook_secret", "webhook_secret_previous"], false))
    }

    /// The keys for an offline check with one key from a file (`keyward webhook verify`),
    /// where the credential's other fields are unknown and the delivery shows the mode.
    fn offline_keys<'k>(&self, key: &'k [u8], _headers: &HeaderMap) -> WebhookKeys<'k> {
        WebhookKeys { keys: vec![key], hmac: false }
    }

    /// Verifies one delivery with the given keys.
    fn verify(&self, d: &Delivery<'_>, keys: &WebhookKeys<'_>) -> Result<Accepted, Reject>;

    /// Route ids an (unverified) delivery names, for `/webhooks/{provider}` without a
    /// tenant in the path.
    fn route_candidates(&self, _d: &Delivery<'_>) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// In-body ids that must be the tenant's own, checked after verification (§1.8).
    fn check_body_ids(&self, _d: &Delivery<'_>, _cred: &dyn FieldSource) -> Result<(), String> {
        Ok(())
    }

    /// JSON field names whose values are masked before a delivery reaches the app.
    fn echoed_secret_fields(&self) -> &'static [&'static str] {
        &[]
    }

    // ---- live checks and discovery ----

    /// A cheap authenticated GET (path and query) that proves the credential works, or
    /// `None` when the provider has none.
    fn check_path(&self, cred: &dyn FieldSource) -> Option<String>;

    /// Whether a failed check answer still proves a valid credential (a sending-only
    /// Resend key answers 401 `restricted_api_key`).
    fn check_passes_anyway(&self, _status: u16, _body: &[u8]) -> bool {
        false
    }

    /// Ids the credential itself names, and the listings to read for more.
    fn discovery(&self, _cred: &dyn FieldSource) -> (Vec<(&'static str, String)>, Vec<Listing>) {
        (Vec::new(), Vec::new())
    }
}

/// The built-in providers, in documentation order: the registry.
pub static BUILTIN: [&(dyn Provider + 'static); 12] = [
    &vapi::Vapi,
    &twilio::Twilio,
    &google::Google,
    &resend::Resend,
    &elevenlabs::ElevenLabs,
    &retell::Retell,
    &telnyx::Telnyx,
    &plivo::Plivo,
    &vonage::Vonage,
    &deepgram::Deepgram,
    &cartesia::Cartesia,
    &openai::OpenAi,
];

/// One provider as configured: its rules, its schema and the operator's overrides.
#[derive(Debug)]
pub struct ProviderDef {
    /// Name.
    pub name: ProviderName,
    /// Credential schema.
    pub schema: Schema,
    rules: Rules,
    overrides: BuiltinOverride,
    oauth: Option<OAuth2Spec>,
    /// The base URL in the default region, parsed once (every request without an override
    /// and without another region borrows it).
    default_url: url::Url,
}

/// A provider's rules: a registry entry, or a generic provider built from config.
#[derive(Debug)]
enum Rules {
    Builtin(&'static dyn Provider),
    Generic(Box<dyn Provider>),
}

impl ProviderDef {
    fn new(name: ProviderName, rules: Rules, overrides: BuiltinOverride, oauth: Option<OAuth2Spec>) -> Self {
        let schema = match &rules {
            Rules::Builtin(p) => p.schema(),
            Rules::Generic(p) => p.schema(),
        };
        let default_url = match &rules {
            Rules::Builtin(p) => p.default_base_url(outbound::DEFAULT_REGION),
            Rules::Generic(p) => p.default_base_url(outbound::DEFAULT_REGION),
        };
        ProviderDef { name, schema, rules, overrides, oauth, default_url }
    }

    /// How its access tokens are obtained, for providers that [use one](Provider::uses_access_token).
    pub fn oauth(&self) -> Option<&OAuth2Spec> {
        self.oauth.as_ref()
    }

    /// The provider's rules.
    pub fn rules(&self) -> &dyn Provider {
        match &self.rules {
            Rules::Builtin(p) => *p,
            Rules::Generic(p) => &**p,
        }
    }

    /// Whether it is built in (rather than declared in config).
    pub fn is_builtin(&self) -> bool {
        matches!(self.rules, Rules::Builtin(_))
    }

    /// The per-tenant rate limit configured for this provider.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.overrides.rate_limit
    }

    /// Whether calls carry an access token from the token manager.
    pub fn uses_access_token(&self) -> bool {
        self.rules().uses_access_token()
    }
}

/// Every provider this daemon knows, by name.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    defs: BTreeMap<String, Arc<ProviderDef>>,
}

impl Providers {
    /// Built-ins (with their overrides) plus the config's generic providers.
    pub fn from_config(cfg: &ProvidersConfig) -> Providers {
        let mut defs = BTreeMap::new();
        for p in BUILTIN {
            let ov = cfg.builtin.get(p.name()).cloned().unwrap_or_default();
            let oauth = p.uses_access_token().then(|| google_oauth(&ov));
            if let Ok(name) = ProviderName::parse(p.name()) {
                defs.insert(p.name().to_string(), Arc::new(ProviderDef::new(name, Rules::Builtin(p), ov, oauth)));
            }
        }
        for (name, g) in &cfg.generic {
            let ov = BuiltinOverride { rate_limit: g.rate_limit, ..BuiltinOverride::default() };
            let rules = Rules::Generic(Box::new(generic::Generic::new(name.as_str(), g.clone())));
            defs.insert(name.as_str().to_string(), Arc::new(ProviderDef::new(name.clone(), rules, ov, None)));
        }
        for (name, (spec, rate_limit)) in &cfg.oauth2 {
            let ov = BuiltinOverride { rate_limit: *rate_limit, ..BuiltinOverride::default() };
            let rules = Rules::Generic(Box::new(oauth2::OAuth2::new(name.as_str(), spec.clone())));
            let def = ProviderDef::new(name.clone(), rules, ov, Some(spec.clone()));
            defs.insert(name.as_str().to_string(), Arc::new(def));
        }
        Providers { defs }
    }

    /// Only the built-in providers, without overrides (tests and benchmarks).
    pub fn default_builtin() -> Providers {
        Providers::from_config(&ProvidersConfig::default())
    }

    /// Looks a provider up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<ProviderDef>> {
        self.defs.get(name)
    }

    /// Every provider name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.defs.keys().map(String::as_str)
    }
}

/// The built-in Google provider's OAuth machinery: the `google` preset with the
/// endpoints `[providers.google]` overrides.
fn google_oauth(ov: &BuiltinOverride) -> OAuth2Spec {
    let mut spec = oauth2::preset("google").unwrap_or_else(|| unreachable!("google is a preset"));
    let set = |slot: &mut String, u: &Option<Url>| {
        if let Some(u) = u {
            *slot = u.to_string();
        }
    };
    set(&mut spec.token_url, &ov.token_url);
    if let Some(u) = &ov.auth_url {
        spec.auth_url = Some(u.to_string());
    }
    if let Some(u) = &ov.revoke_url {
        spec.revoke_url = Some(u.to_string());
    }
    spec
}

/// The names of the built-in providers, in registry order.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|p| p.name())
}

#[cfg(test)]
mod tests {
    use super::outbound::tests::{fields, Fields};
    use super::*;

    fn public(p: &[(&'static str, &'static str)]) -> Fields {
        fields(&[], p)
    }

    #[test]
    fn the_registry_names_each_provider_once_and_each_owns_its_hosts() {
        let names: Vec<&str> = builtin_names().collect();
        let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for p in BUILTIN {
            assert!(ProviderName::parse(p.name()).is_ok(), "{}", p.name());
            assert_eq!(p.schema().provider, p.name());
            for region in ["us", "eu", "in", "sg"] {
                let u = p.default_base_url(region);
                let (host, port) = (u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0));
                assert!(p.hosts().iter().any(|r| r.matches(host, port)), "{} does not claim {u}", p.name());
            }
        }
        let all = Providers::default_builtin();
        assert_eq!(all.names().collect::<Vec<_>>().len(), BUILTIN.len());
        assert!(all.get("google").is_some_and(|d| d.uses_access_token() && d.is_builtin()));
    }

    #[test]
    fn an_injection_made_once_per_credential_is_the_same_for_every_path_and_token() {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let token = Secret::new("ya29.other".into());
        let mut claimed = 0;
        for p in BUILTIN.iter().filter(|p| p.injection_per_credential()) {
            claimed += 1;
            let schema = p.schema();
            let secrets: Vec<(&'static str, String)> = schema
                .fields
                .iter()
                .filter(|f| f.secret)
                .map(|f| (leak(f.name.clone()), format!("s-{}", f.name)))
                .collect();
            let secrets: Vec<(&'static str, &str)> = secrets.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let public: Vec<(&'static str, &'static str)> = schema
                .fields
                .iter()
                .filter(|f| !f.secret)
                .map(|f| (leak(f.name.clone()), leak(format!("p-{}", f.name))))
                .collect();
            let cred = fields(&secrets, &public);
            let seen = |path, tok| {
                let i = p.inject(&cred, path, tok).unwrap_or_else(|e| panic!("{}: {e}", p.name()));
                let pairs = |h: &[(http::HeaderName, http::HeaderValue)]| {
                    h.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect::<Vec<_>>()
                };
                let query = i.query.as_ref().map(|(n, v)| (n.clone(), v.to_string()));
                let scrub: Vec<Vec<u8>> = i.scrub.iter().map(|s| s.to_vec()).collect();
                (pairs(&i.headers), pairs(&i.defaults), query, i.path.clone(), scrub)
            };
            let first = seen("/", None);
            assert!(!first.0.is_empty() || first.2.is_some(), "{} injects nothing", p.name());
            assert_eq!(first.3, None, "{} rewrites the path", p.name());
            for (path, tok) in [("/v1/calls/abc", None), ("/2010-04-01/Accounts/_/Calls.json", Some(&token))] {
                assert!(first == seen(path, tok), "{}'s injection depends on the request", p.name());
            }
        }
        assert!(claimed >= 8, "{claimed}");
    }

    fn listings(provider: &str, cred: &Fields) -> (Vec<(&'static str, String)>, Vec<Listing>) {
        Providers::default_builtin().get(provider).map(|d| d.rules().discovery(cred)).unwrap_or_default()
    }

    #[test]
    fn twilio_discovery_knows_the_account_and_follows_its_own_next_pages_only() {
        let (known, l) = listings("twilio", &public(&[("account_sid", "AC1")]));
        assert_eq!(known, vec![("twilio-account", "AC1".to_string())]);
        assert_eq!(l[0].first, "/2010-04-01/Accounts/AC1/IncomingPhoneNumbers.json?PageSize=1000");
        let page = (l[0].read)(
            br#"{"incoming_phone_numbers":[{"phone_number":"+15550001"}],"next_page_uri":"/2010-04-01/Accounts/AC1/IncomingPhoneNumbers.json?Page=1"}"#,
        );
        assert_eq!(page.as_ref().map(|p| p.found.clone()), Ok(vec![("twilio-number", "+15550001".to_string())]));
        assert!(page.is_ok_and(|p| p.next.is_some()));
        let elsewhere = (l[0].read)(br#"{"incoming_phone_numbers":[],"next_page_uri":"https://evil.example/x"}"#);
        assert_eq!(elsewhere.map(|p| p.next), Ok(None));
        assert!(listings("twilio", &public(&[])).1.is_empty());
    }

    #[test]
    fn elevenlabs_discovery_follows_the_cursor_while_has_more() {
        let (_, l) = listings("elevenlabs", &public(&[]));
        let more = (l[0].read)(br#"{"agents":[{"agent_id":"a1"}],"has_more":true,"next_cursor":"c d"}"#);
        assert_eq!(more.map(|p| p.next), Ok(Some("/v1/convai/agents?page_size=100&cursor=c+d".to_string())));
        let last = (l[0].read)(br#"{"agents":[{"agent_id":"a2"}],"has_more":false,"next_cursor":"x"}"#);
        assert_eq!(last.map(|p| (p.found, p.next)), Ok((vec![("elevenlabs-agent", "a2".to_string())], None)));
    }

    #[test]
    fn vapi_discovery_reads_two_lists_and_refuses_anything_else() {
        let (_, l) = listings("vapi", &public(&[]));
        assert_eq!(
            l.iter().map(|x| x.label.as_str()).collect::<Vec<_>>(),
            ["/assistant?limit=1000", "/phone-number?limit=1000"]
        );
        assert_eq!(
            (l[1].read)(br#"[{"id":"pn1"}]"#).map(|p| p.found),
            Ok(vec![("vapi-phone-number", "pn1".to_string())])
        );
        assert_eq!((l[0].read)(br#"{"error":1}"#), Err("not a JSON list".to_string()));
    }

    #[test]
    fn only_providers_with_a_check_path_can_be_checked() {
        let all = Providers::default_builtin();
        for name in builtin_names() {
            assert!(all.get(name).and_then(|d| d.rules().check_path(&public(&[]))).is_some(), "{name}");
        }
        let resend = all.get("resend").map(|d| d.rules().check_passes_anyway(401, br#"{"name":"restricted_api_key"}"#));
        assert_eq!(resend, Some(true));
        assert_eq!(all.get("vapi").map(|d| d.rules().check_passes_anyway(401, b"restricted_api_key")), Some(false));
    }
}
