//! Google (PROVIDERS.md §0, §4): an OAuth access token, refreshed by keyward's token
//! manager, as a bearer token; push notifications authenticated by their channel token,
//! routed by channel id.

use url::Url;

use super::fields::{FieldDef, ParsedFields, Rule, Schema};
use super::outbound::{bearer_value, exact, literal_url, FieldSource, HostRule, Injection, OutboundError};
use super::{Provider, WebhookKeys};
use crate::secret::Secret;
use crate::status::CredStatus;

/// The Google (Calendar) rules.
#[derive(Debug)]
pub(crate) struct Google;

impl Provider for Google {
    fn name(&self) -> &str {
        "google"
    }

    fn schema(&self) -> Schema {
        schema()
    }

    fn default_base_url(&self, _region: &str) -> Url {
        literal_url("https://www.googleapis.com")
    }

    fn hosts(&self) -> Vec<HostRule> {
        vec![exact("www.googleapis.com")]
    }

    fn inject(&self, _cred: &dyn FieldSource, _path: &str, token: Option<&Secret>) -> Result<Injection, OutboundError> {
        bearer_value(token.ok_or(OutboundError::NoToken)?)
    }

    fn uses_access_token(&self) -> bool {
        true
    }

    fn verify(&self, d: &Delivery<'_>, k: &WebhookKeys<'_>) -> Result<Accepted, Reject> {
        verify(d, &k.keys)
    }

    fn route_candidates(&self, d: &Delivery<'_>) -> Vec<(&'static str, String)> {
        d.headers
            .get("x-goog-channel-id")
            .and_then(|v| v.to_str().ok())
            .map(|s| ("google-channel", s.to_string()))
            .into_iter()
            .collect()
    }

    fn check_path(&self, _cred: &dyn FieldSource) -> Option<String> {
        Some("/calendar/v3/users/me/calendarList?maxResults=1".into())
    }
}

fn channel_token(s: &str) -> bool {
    (22..=64).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

fn scope(s: &str) -> bool {
    !s.chars().any(char::is_whitespace)
}

fn status(p: &mut ParsedFields) -> Result<(), (Option<&'static str>, String)> {
    if !p.has("refresh_token") {
        // Stored, but unusable until the connect flow adds a refresh token (keyward choice).
        p.status = Some(CredStatus::Inactive);
        p.warnings.push(
            "google: no refresh_token yet; the credential stays inactive until the connect flow completes".into(),
        );
    }
    Ok(())
}

fn schema() -> Schema {
    Schema {
        provider: "google".into(),
        fields: vec![
            FieldDef::public("client_id", true, Rule::Opaque),
            FieldDef::secret("client_secret", true, Rule::Opaque),
            FieldDef::secret("refresh_token", false, Rule::Opaque),
            FieldDef::public_list("scopes", true, Rule::Pattern("a scope without spaces", scope)),
            FieldDef::secret("webhook_secret", false, Rule::Pattern("^[A-Za-z0-9_-]{22,64}$", channel_token)),
            FieldDef::secret("webhook_secret_previous", false, Rule::Pattern("^[A-Za-z0-9_-]{22,64}$", channel_token)),
        ],
        cross: Some(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn without_a_refresh_token_the_credential_starts_inactive() {
        let p = schema()
            .parse(json!({"client_id": "x.apps.googleusercontent.com", "client_secret": "s", "scopes": ["https://www.googleapis.com/auth/calendar"]}))
            .unwrap();
        assert_eq!(p.status, Some(CredStatus::Inactive));
    }

    #[test]
    fn scopes_must_be_a_non_empty_list_without_spaces() {
        let base = json!({"client_id": "x", "client_secret": "s", "refresh_token": "1//r"});
        let mut empty = base.clone();
        empty["scopes"] = json!([]);
        assert!(schema().parse(empty).is_err());
        let mut spaced = base;
        spaced["scopes"] = json!(["a b"]);
        assert!(schema().parse(spaced).is_err());
    }
}

// ---- inbound (PROVIDERS.md §4.3) ----

use super::inbound::{secret_eq, single, Accepted, Delivery, Reject};

/// Push notifications carry no signature: the channel token is the secret.
fn verify(d: &Delivery<'_>, keys: &[&[u8]]) -> Result<Accepted, Reject> {
    let id = single(d.headers, "x-goog-channel-id")?;
    if id.len() > 64 {
        return Err(Reject::BadSignature("X-Goog-Channel-ID is longer than 64 characters".into()));
    }
    let number = single(d.headers, "x-goog-message-number")?;
    if !number.bytes().all(|c| c.is_ascii_digit()) {
        return Err(Reject::BadSignature("X-Goog-Message-Number must be digits".into()));
    }
    single(d.headers, "x-goog-resource-id")?;
    single(d.headers, "x-goog-resource-uri")?;
    let state = single(d.headers, "x-goog-resource-state")?;
    if !["sync", "exists", "not_exists"].contains(&state) {
        return Err(Reject::BadSignature("X-Goog-Resource-State must be sync, exists or not_exists".into()));
    }
    let token = single(d.headers, "x-goog-channel-token")?;
    if !keys.iter().any(|k| secret_eq(token.as_bytes(), k)) {
        return Err(Reject::BadSignature("X-Goog-Channel-Token does not match the channel token".into()));
    }
    let event = format!("{id}:{number}");
    Ok(Accepted {
        replay_key: Some(format!("goog:{event}")),
        replay_keep: 3600,
        event_id: Some(event),
        strip: vec!["x-goog-channel-token"],
    })
}

#[cfg(test)]
mod inbound_tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue};

    fn vector(token: Option<&str>) -> HeaderMap {
        // PROVIDERS.md §10.5, with the suite's odd header casing.
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("X-GoOG-CHANNEL-ID", "myid"),
            ("X-Goog-MESSAGE-NUMBER", "1"),
            ("X-Goog-rESOURCE-STATE", "sync"),
            ("X-Goog-reSOURCE-URI", "http://example.com/"),
            ("X-Goog-resOURCE-ID", "http://example.com/resource_1"),
        ] {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_static(v));
        }
        if let Some(t) = token {
            h.insert("x-goog-channel-token", HeaderValue::from_str(t).unwrap());
        }
        h
    }

    #[test]
    fn the_channel_token_is_required() {
        let d =
            |h: &HeaderMap| verify(&Delivery { method: "POST", url: "", headers: h, body: b"", now: 0 }, &[b"mytoken"]);
        assert_eq!(d(&vector(None)).unwrap_err().code(), "bad_signature");
        let ok = d(&vector(Some("mytoken"))).unwrap();
        assert_eq!(ok.event_id.as_deref(), Some("myid:1"));
        assert!(d(&vector(Some("othertoken"))).is_err());
    }
}
