//! The provider settings of `[providers.*]`: built-in overrides and generic providers,
//! as validated values (the TOML layer in the daemon parses into these).

use std::collections::BTreeMap;
use std::time::Duration;

use url::Url;

use crate::ids::ProviderName;

/// A per-tenant token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens per second.
    pub per_second: f64,
    /// Bucket size.
    pub burst: u32,
}

/// Overrides for a built-in provider.
#[derive(Debug, Clone, Default)]
pub struct BuiltinOverride {
    /// Replaces the provider's default base URL; its host joins the allow-list.
    pub base_url: Option<Url>,
    /// Per-tenant rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Google only: token endpoint.
    pub token_url: Option<Url>,
    /// Google only: authorization endpoint.
    pub auth_url: Option<Url>,
    /// Google only: revocation endpoint.
    pub revoke_url: Option<Url>,
}

/// How a generic provider's credential is injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InjectTemplate {
    /// A header whose value is a template like `Bearer {api_key}`.
    Header {
        /// Header name.
        name: String,
        /// Template.
        value: String,
    },
    /// HTTP Basic with user and password templates.
    Basic {
        /// User template.
        user: String,
        /// Password template.
        password: String,
    },
    /// A query parameter.
    Query {
        /// Parameter name.
        name: String,
        /// Template.
        value: String,
    },
}

/// Generic webhook schemes (PROVIDERS.md §7, §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookScheme {
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    StandardWebhooks {
        /// Clock tolerance.
        tolerance: Duration,
    },
    /// Stripe-style `t=…,v1=…` in one header.
    Stripe {
        /// Header name.
        header: String,
        /// Clock tolerance.
        tolerance: Duration,
    },
}

/// `[providers.<name>]` for a provider that is not built in.
#[derive(Debug, Clone)]
pub struct GenericProvider {
    /// Where calls go.
    pub base_url: Url,
    /// Hosts the credential may be sent to (the base URL's host is always included).
    pub hosts: Vec<String>,
    /// Credential fields.
    pub fields: Vec<String>,
    /// Fields that are not secret.
    pub public_fields: Vec<String>,
    /// How to inject.
    pub inject: InjectTemplate,
    /// How to verify webhooks, if the provider sends them.
    pub webhook: Option<WebhookScheme>,
    /// Per-tenant rate limit.
    pub rate_limit: Option<RateLimit>,
    /// A cheap authenticated GET (path and query) for live verification.
    pub verify_path: Option<String>,
}

/// All `[providers.*]` sections.
#[derive(Debug, Clone, Default)]
pub struct ProvidersConfig {
    /// Overrides of built-in providers, by name.
    pub builtin: BTreeMap<String, BuiltinOverride>,
    /// Generic providers, by name.
    pub generic: BTreeMap<ProviderName, GenericProvider>,
    /// OAuth 2.0 providers declared in config (CONTRACT.md §8.3), by name.
    pub oauth2: BTreeMap<ProviderName, (OAuth2Spec, Option<RateLimit>)>,
}

/// The field names referenced as `{name}` in a template.
pub fn template_fields(t: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(start) = rest.find('{') {
        let after = rest.get(start + 1..).unwrap_or("");
        let end = after.find('}').ok_or_else(|| format!("\"{t}\" has an unclosed {{"))?;
        let name = after.get(..end).unwrap_or("");
        if name.is_empty() {
            return Err(format!("\"{t}\" has an empty {{}}"));
        }
        out.push(name);
        rest = after.get(end + 1..).unwrap_or("");
    }
    if out.is_empty() {
        return Err(format!("\"{t}\" references no credential field; write e.g. \"Bearer {{api_key}}\""));
    }
    Ok(out)
}

/// How an OAuth 2.0 provider's credential obtains access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// A tenant's user consents once (the connect flow); keyward keeps the refresh token.
    AuthorizationCode,
    /// The client's own credentials buy the token (Zoom server-to-server).
    ClientCredentials,
    /// An RS256 assertion signed with the credential's private key (RFC 7523; Google
    /// service accounts).
    JwtBearer,
}

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic base64(client_id:client_secret)`.
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// How a refresh token is revoked when its credential is deleted (PROVIDERS-2.md §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoke {
    /// The provider has no revocation endpoint (Microsoft).
    None,
    /// `POST revoke_url` with the form `token=…` (RFC 7009; Google, Salesforce).
    Form,
    /// The form `token=…` with the client's authentication as at the token endpoint
    /// (Calendly: in the body; Zoom: Basic).
    FormWithClient,
    /// `DELETE revoke_url/{token}` (HubSpot v1).
    DeletePath,
}

/// One OAuth 2.0 provider: a preset with the operator's overrides, or custom endpoints.
/// `auth_url` and `token_url` may contain `{directory}`, filled from the credential's
/// `directory` field (Microsoft's tenant: `common` when absent).
#[derive(Debug, Clone)]
pub struct OAuth2Spec {
    /// The preset it started from, if any.
    pub preset: Option<&'static str>,
    /// Authorization endpoint (the connect flow); required for `authorization_code`.
    pub auth_url: Option<String>,
    /// Token endpoint.
    pub token_url: String,
    /// Revocation endpoint, when [`OAuth2Spec::revoke`] is not `None`.
    pub revoke_url: Option<String>,
    /// How to revoke.
    pub revoke: Revoke,
    /// Where API calls go.
    pub base_url: Url,
    /// More API hosts a token may be sent to (on 443).
    pub hosts: Vec<crate::providers::HostRule>,
    /// Whether the connect flow sends a PKCE S256 challenge.
    pub pkce: bool,
    /// Client authentication at the token endpoint.
    pub client_auth: ClientAuth,
    /// The grant.
    pub grant: Grant,
    /// Whether the refresh request repeats the scopes (Microsoft).
    pub scope_on_refresh: bool,
    /// Scopes always requested beside the credential's (Microsoft's `offline_access`,
    /// without which no refresh token is issued).
    pub required_scopes: Vec<String>,
    /// Extra authorization-request parameters (Google's `access_type=offline`).
    pub auth_params: Vec<(String, String)>,
    /// Whether calls go to the token answer's `instance_url`, stored per tenant and the
    /// only host that tenant's token is sent to (Salesforce).
    pub instance_url: bool,
    /// Zoom's server-to-server form of the client-credentials grant
    /// (`grant_type=account_credentials&account_id=…`).
    pub account_credentials: bool,
    /// A cheap authenticated GET for live checks.
    pub verify_path: Option<String>,
}

impl OAuth2Spec {
    /// `url` with `{directory}` filled from the credential (`common` by default).
    pub fn fill(url: &str, directory: Option<&str>) -> String {
        url.replace("{directory}", directory.unwrap_or("common"))
    }

    /// Every scope to request: the required ones first, then the credential's.
    pub fn scopes<'a>(&'a self, cred: &'a [String]) -> Vec<&'a str> {
        let mut out: Vec<&str> = self.required_scopes.iter().map(String::as_str).collect();
        for s in cred {
            if !out.contains(&s.as_str()) {
                out.push(s);
            }
        }
        out
    }
}
