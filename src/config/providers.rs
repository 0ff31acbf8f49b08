//! `[providers.*]`: overrides of built-in providers and generic providers.

use std::collections::BTreeMap;

use super::build::Ctx;
use super::raw::*;
use super::*;

pub(super) fn build_providers(
    ctx: &Ctx<'_>,
    raw: BTreeMap<String, toml::Value>,
    allow_http: bool,
) -> Result<ProvidersConfig, ConfigError> {
    let mut out = ProvidersConfig::default();
    for (name, value) in raw {
        let key = format!("providers.{name}");
        let pname = ProviderName::parse(&name).map_err(|e| ctx.err(&key, e.to_string()))?;
        if name == "google" {
            let g: RawGoogle = typed(ctx, &key, value)?;
            let url = |k: &str, v: &Option<String>| {
                v.as_deref().map(|s| ctx.url(&format!("{key}.{k}"), s, allow_http)).transpose()
            };
            out.builtin.insert(
                name.clone(),
                BuiltinOverride {
                    base_url: url("base_url", &g.base_url)?,
                    rate_limit: ctx.rate(&format!("{key}.rate_limit"), g.rate_limit)?,
                    token_url: url("token_url", &g.token_url)?,
                    auth_url: url("auth_url", &g.auth_url)?,
                    revoke_url: url("revoke_url", &g.revoke_url)?,
                },
            );
        } else if keyward_core::providers::builtin_names().any(|b| b == name) {
            let b: RawBuiltin = typed(ctx, &key, value)?;
            out.builtin.insert(
                name.clone(),
                BuiltinOverride {
                    base_url: b
                        .base_url
                        .as_deref()
                        .map(|s| ctx.url(&format!("{key}.base_url"), s, allow_http))
                        .transpose()?,
                    rate_limit: ctx.rate(&format!("{key}.rate_limit"), b.rate_limit)?,
                    ..BuiltinOverride::default()
                },
            );
        } else if value.get("oauth2").is_some() {
            let mut o: RawOAuthProvider = typed(ctx, &key, value)?;
            let rate = ctx.rate(&format!("{key}.rate_limit"), o.rate_limit.take())?;
            out.oauth2.insert(pname, (build_oauth2(ctx, &key, o, allow_http)?, rate));
        } else {
            let g: RawGeneric = typed(ctx, &key, value)?;
            out.generic.insert(pname, build_generic(ctx, &key, g, allow_http)?);
        }
    }
    Ok(out)
}

fn build_generic(ctx: &Ctx<'_>, key: &str, g: RawGeneric, allow_http: bool) -> Result<GenericProvider, ConfigError> {
    let base_url = ctx.url(&format!("{key}.base_url"), &g.base_url, allow_http)?;
    if g.fields.is_empty() {
        return Err(ctx.err(&format!("{key}.fields"), "declare at least one credential field"));
    }
    for f in &g.fields {
        if f.is_empty() || !f.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_') {
            return Err(ctx.err(&format!("{key}.fields"), format!("\"{f}\" is not a field name; use [a-z0-9_]")));
        }
    }
    for f in &g.public_fields {
        if !g.fields.contains(f) {
            return Err(ctx.err(&format!("{key}.public_fields"), format!("\"{f}\" is not listed in fields")));
        }
    }
    let check_template = |k: &str, t: &str| -> Result<(), ConfigError> {
        for name in template_fields(t).map_err(|m| ctx.err(k, m))? {
            if !g.fields.iter().any(|f| f == name) {
                return Err(ctx.err(k, format!("{{{name}}} is not one of the declared fields")));
            }
        }
        Ok(())
    };
    let ik = format!("{key}.inject");
    let inject = match (g.inject.header, g.inject.value, g.inject.basic, g.inject.query) {
        (Some(h), Some(v), None, None) => {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(ctx.err(&format!("{ik}.header"), format!("\"{h}\" is not a header name")));
            }
            check_template(&format!("{ik}.value"), &v)?;
            InjectTemplate::Header { name: h.to_ascii_lowercase(), value: v }
        }
        (None, None, Some([u, p]), None) => {
            check_template(&format!("{ik}.basic"), &u)?;
            check_template(&format!("{ik}.basic"), &p)?;
            InjectTemplate::Basic { user: u, password: p }
        }
        (None, Some(v), None, Some(q)) => {
            if q.is_empty() {
                return Err(ctx.err(&format!("{ik}.query"), "must not be empty"));
            }
            check_template(&format!("{ik}.value"), &v)?;
            InjectTemplate::Query { name: q, value: v }
        }
        _ => {
            return Err(ctx.err(
                &ik,
                "write one of { header = \"…\", value = \"…\" }, { basic = [\"{user}\", \"{key}\"] } or { query = \"…\", value = \"…\" }",
            ))
        }
    };
    let webhook = g
        .webhook
        .map(|w| -> Result<WebhookScheme, ConfigError> {
            let wk = format!("{key}.webhook");
            let tolerance =
                ctx.duration(&format!("{wk}.tolerance"), w.tolerance.as_deref(), Duration::from_secs(300))?;
            match w.scheme.as_str() {
                "standard-webhooks" => {
                    if w.header.is_some() {
                        return Err(ctx.err(&format!("{wk}.header"), "standard-webhooks uses fixed webhook-* headers"));
                    }
                    Ok(WebhookScheme::StandardWebhooks { tolerance })
                }
                "stripe" => Ok(WebhookScheme::Stripe {
                    header: w.header.unwrap_or_else(|| "stripe-signature".into()).to_ascii_lowercase(),
                    tolerance,
                }),
                other => Err(ctx.err(
                    &format!("{wk}.scheme"),
                    format!("\"{other}\" is not a scheme; use \"standard-webhooks\" or \"stripe\""),
                )),
            }
        })
        .transpose()?;
    if webhook.is_some() && !g.fields.iter().any(|f| f == "webhook_secret") {
        return Err(ctx.err(&format!("{key}.fields"), "a provider with a webhook scheme needs a webhook_secret field"));
    }
    let mut hosts: Vec<String> = g.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    for h in &hosts {
        if h.is_empty() || h.contains('/') || h.contains('@') {
            return Err(ctx.err(&format!("{key}.hosts"), format!("\"{h}\" is not a host name")));
        }
    }
    if let Some(h) = base_url.host_str() {
        let h = h.to_ascii_lowercase();
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    if let Some(p) = &g.verify_path {
        if !p.starts_with('/') || p.contains("..") {
            return Err(ctx.err(&format!("{key}.verify_path"), "must be a path starting with / (e.g. \"/v1/me\")"));
        }
    }
    Ok(GenericProvider {
        base_url,
        hosts,
        fields: g.fields,
        public_fields: g.public_fields,
        inject,
        webhook,
        rate_limit: ctx.rate(&format!("{key}.rate_limit"), g.rate_limit)?,
        verify_path: g.verify_path,
    })
}

/// An OAuth 2.0 provider: the preset's values, each key of the table overriding one; a
/// custom provider (no preset) names its endpoints and base URL itself.
fn build_oauth2(ctx: &Ctx<'_>, key: &str, o: RawOAuthProvider, allow_http: bool) -> Result<OAuth2Spec, ConfigError> {
    use keyward_core::providers::config::{ClientAuth, Grant, Revoke};
    let ok = format!("{key}.oauth2");
    let r = o.oauth2;
    let mut spec = match r.preset.as_deref() {
        Some(p) => keyward_core::providers::preset(p).ok_or_else(|| {
            let names = keyward_core::providers::PRESETS.join(", ");
            ctx.err(
                &format!("{ok}.preset"),
                format!("\"{p}\" is not a preset; use one of {names}, or leave it out and name the endpoints"),
            )
        })?,
        None => {
            let need = |k: &str, v: &Option<String>| {
                v.clone().ok_or_else(|| {
                    ctx.err(&format!("{ok}.{k}"), format!("a custom OAuth 2.0 provider (no preset) needs {k}"))
                })
            };
            if o.base_url.is_none() {
                return Err(
                    ctx.err(&format!("{key}.base_url"), "a custom OAuth 2.0 provider (no preset) needs base_url")
                );
            }
            let mut s = keyward_core::providers::preset("google").unwrap_or_else(|| unreachable!("google is a preset"));
            s.preset = None;
            s.token_url = need("token_url", &r.token_url)?;
            s.auth_url = None;
            s.revoke_url = None;
            s.revoke = Revoke::None;
            s.auth_params.clear();
            s.hosts.clear();
            s.verify_path = None;
            s
        }
    };
    // Endpoints may hold {directory}; checked with it filled in.
    let endpoint = |k: &str, v: &str| -> Result<String, ConfigError> {
        let filled = OAuth2Spec::fill(v, None);
        ctx.url(&format!("{ok}.{k}"), &filled, allow_http)?;
        Ok(v.to_string())
    };
    if let Some(u) = &r.token_url {
        spec.token_url = endpoint("token_url", u)?;
    }
    if let Some(u) = &r.auth_url {
        spec.auth_url = Some(endpoint("auth_url", u)?);
    }
    if let Some(u) = &r.revoke_url {
        spec.revoke_url = Some(endpoint("revoke_url", u)?);
        if spec.revoke == Revoke::None {
            spec.revoke = Revoke::Form;
        }
    }
    if let Some(b) = &o.base_url {
        spec.base_url = ctx.url(&format!("{key}.base_url"), b, allow_http)?;
    }
    if let Some(hosts) = &r.hosts {
        for h in hosts {
            if h.is_empty() || h.contains('/') || h.contains('@') || h.contains(':') {
                return Err(ctx.err(&format!("{ok}.hosts"), format!("\"{h}\" is not a host name")));
            }
        }
        spec.hosts.extend(hosts.iter().map(|h| keyward_core::providers::HostRule::Exact(h.to_ascii_lowercase(), 443)));
    }
    if let Some(p) = r.pkce {
        spec.pkce = p;
    }
    if let Some(c) = r.client_auth.as_deref() {
        spec.client_auth = match c {
            "client_secret_basic" => ClientAuth::Basic,
            "client_secret_post" => ClientAuth::Post,
            other => {
                return Err(ctx.err(
                    &format!("{ok}.client_auth"),
                    format!(
                    "\"{other}\" is not a client authentication; use \"client_secret_basic\" or \"client_secret_post\""
                ),
                ))
            }
        };
    }
    if let Some(g) = r.grant.as_deref() {
        spec.grant = match g {
            "authorization_code" => Grant::AuthorizationCode,
            "client_credentials" => Grant::ClientCredentials,
            "jwt_bearer" => Grant::JwtBearer,
            other => {
                return Err(ctx.err(
                    &format!("{ok}.grant"),
                    format!(
                    "\"{other}\" is not a grant; use \"authorization_code\", \"client_credentials\" or \"jwt_bearer\""
                ),
                ))
            }
        };
    }
    if spec.grant == Grant::AuthorizationCode && spec.auth_url.is_none() {
        return Err(ctx.err(
            &format!("{ok}.auth_url"),
            "the authorization_code grant needs auth_url (the connect flow starts there)",
        ));
    }
    if let Some(p) = &o.verify_path {
        if !p.starts_with('/') || p.contains("..") {
            return Err(ctx.err(&format!("{key}.verify_path"), "must be a path starting with / (e.g. \"/v1/me\")"));
        }
        spec.verify_path = Some(p.clone());
    }
    Ok(spec)
}
