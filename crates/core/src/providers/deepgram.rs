//! Deepgram (PROVIDERS-2.md §0, §6): `Authorization: Token <api_key>` on REST calls and the
//! live-transcription / TTS WebSocket upgrades, US or EU host; Deepgram signs no callback,
//! so a callback proves itself with the Basic credentials keyward put into its URL.

use base64::Engine;
use url::Url;
use zeroize::Zeroizing;

use super::fields::{one_of, url_safe, FieldDef, Rule, Schema};
use super::inbound::{secret_eq, single, Accepted, Delivery, Reject};
use super::outbound::{authorization, exact, literal_url, need, FieldSource, HostRule, Injection, OutboundError};
use super::{Provider, WebhookKeys};
use crate::secret::Secret;

/// The Deepgram rules.
#[derive(Debug)]
pub(crate) struct Deepgram;

/// The user name keyward puts into callback URLs (§6.2).
pub(crate) const CALLBACK_USER: &str = "keyward";

impl Provider for Deepgram {
    fn name(&self) -> &str {
        "deepgram"
    }

    fn schema(&self) -> Schema {
        let secret = Rule::Pattern("^[A-Za-z0-9_-]{22,64}$", webhook_secret);
        Schema {
            provider: "deepgram".into(),
            fields: vec![
                FieldDef::secret("api_key", true, Rule::Opaque),
                FieldDef::secret("webhook_secret", false, secret),
                FieldDef::secret("webhook_secret_previous", false, secret),
                FieldDef::public("region", false, Rule::Pattern("^(us|eu)$", |s| one_of(s, &["us", "eu"]))),
            ],
            cross: None,
        }
    }

    fn default_base_url(&self, region: &str) -> Url {
        literal_url(if region == "eu" { "https://api.eu.deepgram.com" } else { "https://api.deepgram.com" })
    }

    // EU requests must not leave the EU, but a key is not bound to one host (§6.1); the
    // voice-agent host takes the same key.
    fn hosts(&self) -> Vec<HostRule> {
        vec![exact("api.deepgram.com"), exact("api.eu.deepgram.com"), exact("agent.deepgram.com")]
    }

    fn injection_per_credential(&self) -> bool {
        true
    }

    fn inject(&self, cred: &dyn FieldSource, _path: &str, _: Option<&Secret>) -> Result<Injection, OutboundError> {
        authorization("Token", need(cred, "api_key")?)
    }

    fn callback_param(&self) -> Option<&'static str> {
        Some("callback")
    }

    // `https://keyward:<webhook_secret>@<public host and path>/webhooks/deepgram/<tenant>`:
    // the app's own callback URL is never contacted (deliveries go to `forward_to`).
    fn callback_url(&self, cred: &dyn FieldSource, public_base: &Url, tenant: &str) -> Option<Zeroizing<String>> {
        let secret = cred.secret_field("webhook_secret")?;
        let host = public_base.host_str()?;
        let port = public_base.port().map(|p| format!(":{p}")).unwrap_or_default();
        let path = public_base.path().trim_end_matches('/');
        // The secret's alphabet ([A-Za-z0-9_-], the schema's rule) needs no escaping.
        Some(Zeroizing::new(format!(
            "{}://{CALLBACK_USER}:{}@{host}{port}{path}/webhooks/deepgram/{tenant}",
            public_base.scheme(),
            secret.expose()
        )))
    }

    fn verify(&self, d: &Delivery<'_>, k: &WebhookKeys<'_>) -> Result<Accepted, Reject> {
        verify_basic(d, &k.keys)
    }

    fn check_path(&self, _cred: &dyn FieldSource) -> Option<String> {
        Some("/v1/projects".into())
    }

    // A key scoped below project read answers 403 and still works (§6.1, UNCERTAIN).
    fn check_passes_anyway(&self, status: u16, _body: &[u8]) -> bool {
        status == 403
    }
}

fn webhook_secret(s: &str) -> bool {
    url_safe(s, 22..=64)
}

/// `Authorization: Basic base64("keyward:" secret)`, compared as digests; the header is
/// dropped before forwarding. `metadata.request_id` is the event id and replay key.
fn verify_basic(d: &Delivery<'_>, keys: &[&[u8]]) -> Result<Accepted, Reject> {
    let a = single(d.headers, "authorization")?;
    let b64 = a
        .strip_prefix("Basic ")
        .ok_or_else(|| Reject::BadSignature("Authorization is not Basic credentials".into()))?;
    let raw = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| Reject::BadSignature("the Basic credentials are not strict base64".into()))?,
    );
    let colon = raw
        .iter()
        .position(|&c| c == b':')
        .ok_or_else(|| Reject::BadSignature("the Basic credentials have no user:password separator".into()))?;
    let (user, pw) = (&raw[..colon], &raw[colon + 1..]);
    let user_ok = secret_eq(user, CALLBACK_USER.as_bytes());
    let pw_ok = keys.iter().fold(false, |ok, k| ok | secret_eq(pw, k));
    if !(user_ok && pw_ok) {
        return Err(Reject::BadSignature(format!("the callback credentials match none of {} keys", keys.len())));
    }
    let request_id = serde_json::from_slice::<serde_json::Value>(d.body)
        .ok()
        .and_then(|v| v["metadata"]["request_id"].as_str().map(str::to_string));
    Ok(Accepted {
        replay_key: request_id.as_ref().map(|r| format!("request:{r}")),
        // Retries are UNCERTAIN (§12.5): a day covers any plausible redelivery.
        replay_keep: 86_400,
        event_id: request_id,
        strip: vec!["authorization"],
    })
}

#[cfg(test)]
mod tests {
    use super::super::outbound::tests::fields;
    use super::*;
    use http::{HeaderMap, HeaderValue};

    const SECRET: &[u8] = b"dg_callback_secret_0123456789";

    fn basic(user: &str, pw: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        h.insert("authorization", HeaderValue::from_str(&format!("Basic {v}")).unwrap());
        h
    }

    fn check(h: &HeaderMap, body: &[u8]) -> Result<Accepted, Reject> {
        verify_basic(&Delivery { method: "POST", url: "", headers: h, body, now: 0 }, &[SECRET])
    }

    #[test]
    fn callbacks_prove_themselves_with_the_credentials_keyward_embedded() {
        let body = br#"{"metadata":{"request_id":"req-1"},"results":{}}"#;
        let ok = check(&basic("keyward", "dg_callback_secret_0123456789"), body).unwrap();
        assert_eq!(ok.event_id.as_deref(), Some("req-1"));
        assert_eq!(ok.strip, vec!["authorization"]);
        for bad in [basic("keyward", "wrong"), basic("other", "dg_callback_secret_0123456789"), HeaderMap::new()] {
            assert_eq!(check(&bad, body).unwrap_err().code(), "bad_signature");
        }
        let mut token = HeaderMap::new();
        token.insert("authorization", HeaderValue::from_static("Token dg_callback_secret_0123456789"));
        assert_eq!(check(&token, body).unwrap_err().code(), "bad_signature");
    }

    #[test]
    fn the_callback_url_carries_the_password_keyward_checks() {
        let cred = fields(&[("api_key", "k"), ("webhook_secret", "dg_callback_secret_0123456789")], &[]);
        let base = Url::parse("https://hooks.example.com/edge/").unwrap();
        let url = Deepgram.callback_url(&cred, &base, "acme").unwrap();
        assert_eq!(
            url.as_str(),
            "https://keyward:dg_callback_secret_0123456789@hooks.example.com/edge/webhooks/deepgram/acme"
        );
        let with_port = Url::parse("http://127.0.0.1:8443").unwrap();
        assert!(Deepgram.callback_url(&cred, &with_port, "t").unwrap().starts_with("http://keyward:dg_"));
        assert!(Deepgram.callback_url(&fields(&[("api_key", "k")], &[]), &base, "acme").is_none());
    }

    #[test]
    fn the_key_goes_as_a_token_to_the_credentials_region() {
        let inj = Deepgram.inject(&fields(&[("api_key", "dgk")], &[]), "/v1/listen", None).unwrap();
        assert_eq!(inj.headers[0].1.as_bytes(), b"Token dgk");
        assert_eq!(Deepgram.default_base_url("eu").host_str(), Some("api.eu.deepgram.com"));
        assert_eq!(Deepgram.default_base_url("us").host_str(), Some("api.deepgram.com"));
    }
}
