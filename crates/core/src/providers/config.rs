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
