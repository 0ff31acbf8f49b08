//! Cartesia (PROVIDERS-2.md §0, §7): API key as a bearer token with a default
//! `Cartesia-Version` the app may override, on REST calls and the TTS/STT WebSocket
//! upgrades; agent call webhooks carry a static shared secret in `x-webhook-secret`.

use http::{HeaderName, HeaderValue};
use url::Url;

use super::fields::{url_safe, FieldDef, ParsedFields, Rule, Schema};
use super::inbound::{secret_eq, single, Accepted, Delivery, Reject};
use super::outbound::{bearer, exact, literal_url, FieldSource, HostRule, Injection, OutboundError};
use super::{Provider, WebhookKeys};
use crate::secret::Secret;

/// The Cartesia rules.
#[derive(Debug)]
pub(crate) struct Cartesia;

/// keyward choice: the newest date the docs enumerate (§7.1; SDK 4.2.0 sends 2026-08-14,
/// which the docs do not list: open question §12.6).
const DEFAULT_VERSION: &str = "2026-03-01";

impl Provider for Cartesia {
    fn name(&self) -> &str {
        "cartesia"
    }

    fn schema(&self) -> Schema {
        let secret = Rule::Pattern("^[A-Za-z0-9_-]{22,128}$", webhook_secret);
        Schema {
            provider: "cartesia".into(),
            fields: vec![
                FieldDef::secret("api_key", true, Rule::Opaque),
                FieldDef::public("version", false, Rule::Pattern("^[0-9]{4}-[0-9]{2}-[0-9]{2}$", date)),
                FieldDef::secret("webhook_secret", false, secret),
                FieldDef::secret("webhook_secret_previous", false, secret),
            ],
            cross: Some(remarks),
        }
    }

    fn default_base_url(&self, _region: &str) -> Url {
        literal_url("https://api.cartesia.ai")
    }

    fn hosts(&self) -> Vec<HostRule> {
        vec![exact("api.cartesia.ai")]
    }

    fn injection_per_credential(&self) -> bool {
        true
    }

    fn inject(&self, cred: &dyn FieldSource, _path: &str, _: Option<&Secret>) -> Result<Injection, OutboundError> {
        let mut inj = bearer(cred, "api_key")?;
        let version = cred.public_field("version").unwrap_or(DEFAULT_VERSION);
        let value = HeaderValue::from_str(version).map_err(|_| OutboundError::MissingField("version".into()))?;
        // The app's own Cartesia-Version wins (§7.1).
        inj.defaults.push((HeaderName::from_static("cartesia-version"), value));
        Ok(inj)
    }

    fn verify(&self, d: &Delivery<'_>, k: &WebhookKeys<'_>) -> Result<Accepted, Reject> {
        verify(d, &k.keys)
    }

    fn check_path(&self, _cred: &dyn FieldSource) -> Option<String> {
        Some("/voices".into())
    }
}

fn webhook_secret(s: &str) -> bool {
    url_safe(s, 22..=128)
}

fn date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

// Admin keys only work on admin routes: refused as a tenant's credential (keyward choice).
fn remarks(p: &mut ParsedFields) -> Result<(), (Option<&'static str>, String)> {
    if p.secrets.get("api_key").is_some_and(|k| k.expose().starts_with("sk_car_admin_")) {
        return Err((Some("api_key"), "is a Cartesia admin key; store a standard API key (sk_car_…)".into()));
    }
    Ok(())
}

/// The whole `x-webhook-secret` value against each key, as digests (no MAC, no timestamp:
/// replay protection is impossible for this scheme). The header never reaches the app.
fn verify(d: &Delivery<'_>, keys: &[&[u8]]) -> Result<Accepted, Reject> {
    let given = single(d.headers, "x-webhook-secret")?;
    if !keys.iter().fold(false, |ok, k| ok | secret_eq(given.as_bytes(), k)) {
        return Err(Reject::BadSignature(format!("x-webhook-secret matches none of {} keys", keys.len())));
    }
    Ok(Accepted { strip: vec!["x-webhook-secret"], ..Accepted::default() })
}

#[cfg(test)]
mod tests {
    use super::super::outbound::tests::fields;
    use super::*;
    use http::HeaderMap;
    use serde_json::json;

    #[test]
    fn the_version_is_a_default_the_app_may_override() {
        let inj = Cartesia.inject(&fields(&[("api_key", "sk_car_1")], &[]), "/tts/bytes", None).unwrap();
        assert_eq!(inj.headers[0].1.as_bytes(), b"Bearer sk_car_1");
        assert_eq!(
            inj.defaults,
            vec![(HeaderName::from_static("cartesia-version"), HeaderValue::from_static(DEFAULT_VERSION))]
        );
        let pinned = Cartesia.inject(&fields(&[("api_key", "k")], &[("version", "2025-04-16")]), "/", None).unwrap();
        assert_eq!(pinned.defaults[0].1, "2025-04-16");
    }

    #[test]
    fn admin_keys_and_malformed_fields_are_refused() {
        let s = Cartesia.schema();
        assert!(s.parse(json!({"api_key": "sk_car_abc", "version": "2026-03-01"})).is_ok());
        let e = s.parse(json!({"api_key": "sk_car_admin_abc"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("api_key"));
        assert!(s.parse(json!({"api_key": "k", "version": "2026-3-1"})).is_err());
        assert!(s.parse(json!({"api_key": "k", "webhook_secret": "short"})).is_err());
    }

    #[test]
    fn the_shared_secret_must_match_whole_and_is_stripped() {
        let key: &[u8] = b"cartesia_webhook_secret_0123456789";
        let mut h = HeaderMap::new();
        let d = |h: &HeaderMap| verify(&Delivery { method: "POST", url: "", headers: h, body: b"{}", now: 0 }, &[key]);
        assert_eq!(d(&h).unwrap_err().code(), "bad_signature");
        h.insert("x-webhook-secret", HeaderValue::from_static("cartesia_webhook_secret_0123456789"));
        assert_eq!(d(&h).unwrap().strip, vec!["x-webhook-secret"]);
        h.insert("x-webhook-secret", HeaderValue::from_static("cartesia_webhook_secret_012345678"));
        assert_eq!(d(&h).unwrap_err().code(), "bad_signature");
    }
}
