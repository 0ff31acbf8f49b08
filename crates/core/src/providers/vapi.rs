//! Vapi (PROVIDERS.md §0, §2): API key as a bearer token, bound to the key's region; webhooks
//! signed by HMAC or carrying a static shared secret; assistants and phone numbers listed
//! for discovery.

use http::HeaderMap;
use serde_json::Value;
use url::Url;

use super::discovery::{Listing, Page};
use super::fields::{one_of, FieldDef, Rule, Schema};
use super::outbound::{bearer, exact, literal_url, FieldSource, HostRule, Injection, OutboundError};
use super::{Provider, WebhookKeys};
use crate::secret::Secret;

/// The Vapi rules.
#[derive(Debug)]
pub(crate) struct Vapi;

const US: &str = "https://api.vapi.ai";
const EU: &str = "https://api.eu.vapi.ai";

impl Provider for Vapi {
    fn name(&self) -> &str {
        "vapi"
    }

    fn schema(&self) -> Schema {
        schema()
    }

    fn default_base_url(&self, region: &str) -> Url {
        literal_url(if region == "eu" { EU } else { US })
    }

    fn hosts(&self) -> Vec<HostRule> {
        vec![exact("api.vapi.ai"), exact("api.eu.vapi.ai")]
    }

    // A Vapi key works in its own region only; sending it to the other is a leak.
    fn region_bound(&self) -> bool {
        true
    }

    fn injection_per_credential(&self) -> bool {
        true
    }

    fn inject(&self, cred: &dyn FieldSource, _path: &str, _: Option<&Secret>) -> Result<Injection, OutboundError> {
        bearer(cred, "api_key")
    }

    fn webhook_keys<'c>(&self, cred: &'c dyn FieldSource) -> Option<WebhookKeys<'c>> {
        if cred.secret_field("webhook_hmac_secret").is_some() {
            Some(WebhookKeys::from_fields(cred, &["webhook_hmac_secret", "webhook_secret_previous"], true))
        } else if cred.secret_field("webhook_secret").is_some() {
            Some(WebhookKeys::from_fields(cred, &["webhook_secret", "webhook_secret_previous"], false))
        } else {
            None
        }
    }

    // Offline, the delivery tells the mode: HMAC when it carries x-signature.
    fn offline_keys<'k>(&self, key: &'k [u8], headers: &HeaderMap) -> WebhookKeys<'k> {
        WebhookKeys { keys: vec![key], hmac: headers.contains_key("x-signature") }
    }

    fn verify(&self, d: &Delivery<'_>, k: &WebhookKeys<'_>) -> Result<Accepted, Reject> {
        if k.hmac {
            verify_hmac(d, &k.keys)
        } else {
            verify_static(d, &k.keys)
        }
    }

    fn route_candidates(&self, d: &Delivery<'_>) -> Vec<(&'static str, String)> {
        route_ids(d.body)
    }

    fn check_body_ids(&self, d: &Delivery<'_>, cred: &dyn FieldSource) -> Result<(), String> {
        let org = serde_json::from_slice::<Value>(d.body)
            .ok()
            .and_then(|v| v["message"]["call"]["orgId"].as_str().map(str::to_string));
        match (org, cred.public_field("org_id")) {
            (Some(found), Some(own)) if found != own => Err(format!("call.orgId {found} is not this tenant's org")),
            _ => Ok(()),
        }
    }

    fn echoed_secret_fields(&self) -> &'static [&'static str] {
        ECHOED_SECRETS
    }

    fn check_path(&self, _cred: &dyn FieldSource) -> Option<String> {
        Some("/assistant?limit=1".into())
    }

    fn discovery(&self, _cred: &dyn FieldSource) -> (Vec<(&'static str, String)>, Vec<Listing>) {
        let listing = |first: &str, read| Listing { label: first.to_string(), first: first.to_string(), read };
        (
            Vec::new(),
            vec![
                listing("/assistant?limit=1000", |b| id_list(b, "vapi-assistant")),
                listing("/phone-number?limit=1000", |b| id_list(b, "vapi-phone-number")),
            ],
        )
    }
}

/// A JSON list of objects with `id`s (one page: Vapi's lists are not paged at 1,000).
fn id_list(body: &[u8], kind: &'static str) -> Result<Page, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => Ok(Page {
            found: items.iter().filter_map(|i| i["id"].as_str()).map(|id| (kind, id.to_string())).collect(),
            next: None,
        }),
        _ => Err("not a JSON list".into()),
    }
}

fn schema() -> Schema {
    Schema {
        provider: "vapi".into(),
        fields: vec![
            FieldDef::secret("api_key", true, Rule::Opaque),
            FieldDef::secret("webhook_secret", false, Rule::Opaque),
            FieldDef::secret("webhook_hmac_secret", false, Rule::Opaque),
            FieldDef::secret("webhook_secret_previous", false, Rule::Opaque),
            FieldDef::public("org_id", false, Rule::Opaque),
            FieldDef::public("region", false, Rule::Pattern("^(us|eu)$", |s| one_of(s, &["us", "eu"]))),
        ],
        cross: None,
    }
}

// ---- inbound (PROVIDERS.md §2.2) ----

use super::inbound::{ct_eq, hmac_sha256, lower_hex, secret_eq, single, timestamp, window, Accepted, Delivery, Reject};

/// How long (seconds) a timestamp-less delivery's replay key is kept: 30 days.
const UNTIMED_REPLAY_KEEP: u64 = 30 * 86_400;

/// Whether a body begins with `<digits>.`, the shape of `{x-timestamp}.{body}` (a Vapi
/// body is a JSON object and never does).
fn moved_timestamp(body: &[u8]) -> bool {
    let digits = body.iter().take_while(|b| b.is_ascii_digit()).count();
    digits > 0 && body.get(digits) == Some(&b'.')
}

/// HMAC mode: `x-signature` (optionally `sha256=`-prefixed lower hex) over
/// `{x-timestamp}.{body}`, or the body alone without a timestamp.
fn verify_hmac(d: &Delivery<'_>, keys: &[&[u8]]) -> Result<Accepted, Reject> {
    let raw = single(d.headers, "x-signature")?;
    let hexsig = raw.strip_prefix("sha256=").unwrap_or(raw);
    let sig = lower_hex(hexsig, 32)
        .ok_or_else(|| Reject::BadSignature("x-signature must be 64 lower-case hex digits".into()))?;
    let ts = if d.headers.contains_key("x-timestamp") { Some(single(d.headers, "x-timestamp")?) } else { None };
    if ts.is_none() && moved_timestamp(d.body) {
        // "{ts}.{body}" signed with a timestamp, sent without its header: verifying the
        // body alone would skip the time window and mint a fresh replay key.
        return Err(Reject::BadSignature(
            "the body starts with \"<digits>.\": a {x-timestamp}.{body} signature sent without its x-timestamp header"
                .into(),
        ));
    }
    let ok = keys.iter().any(|k| {
        let mac = match ts {
            Some(t) => hmac_sha256(k, &[t.as_bytes(), b".", d.body]),
            None => hmac_sha256(k, &[d.body]),
        };
        ct_eq(&mac, &sig)
    });
    if !ok {
        return Err(Reject::BadSignature(format!(
            "x-signature matches no key (of {}) over {}",
            keys.len(),
            if ts.is_some() { "{x-timestamp}.{body}" } else { "the body (no x-timestamp)" }
        )));
    }
    if let Some(t) = ts {
        let n = timestamp(t, "x-timestamp")?;
        // Seconds or milliseconds (UNCERTAIN upstream): 10^11 s is the year 5138.
        let secs = if n >= 100_000_000_000 { n / 1000 } else { n };
        window(secs, d.now, 300, 300)?;
    }
    Ok(Accepted {
        replay_key: Some(format!("hmac:{}:{hexsig}", ts.unwrap_or(""))),
        // Without a timestamp there is no window: the key is kept as long as the cache
        // holds it (its bound evicts the oldest first).
        replay_keep: if ts.is_some() { 900 } else { UNTIMED_REPLAY_KEEP },
        event_id: None,
        strip: vec![],
    })
}

/// Static-secret mode: `X-Vapi-Secret` (whole) or `Authorization: Bearer <secret>`.
fn verify_static(d: &Delivery<'_>, keys: &[&[u8]]) -> Result<Accepted, Reject> {
    let mut cands: Vec<&[u8]> = Vec::new();
    if d.headers.contains_key("x-vapi-secret") {
        cands.push(single(d.headers, "x-vapi-secret")?.as_bytes());
    }
    if d.headers.contains_key("authorization") {
        let a = single(d.headers, "authorization")?;
        cands.push(a.strip_prefix("Bearer ").unwrap_or(a).as_bytes());
    }
    if cands.is_empty() {
        return Err(Reject::BadSignature("no X-Vapi-Secret or Authorization header".into()));
    }
    let mut ok = false;
    for c in &cands {
        for k in keys {
            ok |= secret_eq(c, k);
        }
    }
    if !ok {
        return Err(Reject::BadSignature("the shared secret does not match".into()));
    }
    Ok(Accepted { replay_key: None, replay_keep: 0, event_id: None, strip: vec!["x-vapi-secret", "authorization"] })
}

/// Route ids named by a Vapi payload: `message.call.{assistantId, phoneNumberId, orgId}`.
fn route_ids(body: &[u8]) -> Vec<(&'static str, String)> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return vec![] };
    let call = &v["message"]["call"];
    [("vapi-assistant", "assistantId"), ("vapi-phone-number", "phoneNumberId"), ("vapi-org", "orgId")]
        .iter()
        .filter_map(|(kind, field)| call[*field].as_str().map(|s| (*kind, s.to_string())))
        .collect()
}

/// Field names whose values Vapi may echo and the app must not receive.
const ECHOED_SECRETS: &[&str] = &[
    "twilioAuthToken",
    "twilioApiSecret",
    "vonageApiSecret",
    "vonageApplicationPrivateKey",
    "telnyxApiKey",
    "serverUrlSecret",
    "secret",
];

#[cfg(test)]
mod inbound_tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn hmac_over_timestamp_and_body_in_seconds_or_milliseconds() {
        let body = br#"{"message":{"type":"status-update"}}"#;
        let mac = hex::encode(hmac_sha256(b"hmac-key", &[b"1700000000", b".", body]));
        let ok = h(&[("x-signature", &mac), ("x-timestamp", "1700000000")]);
        assert!(verify_hmac(
            &Delivery { method: "POST", url: "", headers: &ok, body, now: 1700000100 },
            &[b"hmac-key"]
        )
        .is_ok());
        let prefixed = h(&[("x-signature", &format!("sha256={mac}")), ("x-timestamp", "1700000000")]);
        assert!(verify_hmac(
            &Delivery { method: "POST", url: "", headers: &prefixed, body, now: 1700000000 },
            &[b"hmac-key"]
        )
        .is_ok());
        assert_eq!(
            verify_hmac(&Delivery { method: "POST", url: "", headers: &ok, body, now: 1700000301 }, &[b"hmac-key"])
                .unwrap_err()
                .code(),
            "stale_timestamp"
        );
        let ms_mac = hex::encode(hmac_sha256(b"hmac-key", &[b"1700000000123", b".", body]));
        let ms = h(&[("x-signature", &ms_mac), ("x-timestamp", "1700000000123")]);
        assert!(verify_hmac(
            &Delivery { method: "POST", url: "", headers: &ms, body, now: 1700000000 },
            &[b"hmac-key"]
        )
        .is_ok());
        assert!(verify_hmac(
            &Delivery { method: "POST", url: "", headers: &ok, body: b"{}", now: 1700000000 },
            &[b"hmac-key"]
        )
        .is_err());
        let upper = h(&[("x-signature", &mac.to_uppercase()), ("x-timestamp", "1700000000")]);
        assert!(verify_hmac(
            &Delivery { method: "POST", url: "", headers: &upper, body, now: 1700000000 },
            &[b"hmac-key"]
        )
        .is_err());
    }

    #[test]
    fn the_static_secret_arrives_in_x_vapi_secret_or_bearer() {
        let d = |hm: &HeaderMap| {
            verify_static(&Delivery { method: "POST", url: "", headers: hm, body: b"{}", now: 0 }, &[b"s3cret"]).is_ok()
        };
        assert!(d(&h(&[("x-vapi-secret", "s3cret")])));
        assert!(d(&h(&[("authorization", "Bearer s3cret")])));
        assert!(!d(&h(&[("x-vapi-secret", "Bearer s3cret")])), "X-Vapi-Secret is compared whole");
        assert!(!d(&h(&[("x-vapi-secret", "wrong")])));
        assert!(!d(&h(&[])));
        assert!(!d(&h(&[("x-vapi-secret", "s3cret"), ("x-vapi-secret", "s3cret")])), "a duplicated header is refused");
    }

    #[test]
    fn route_ids_come_from_the_call() {
        let ids = route_ids(br#"{"message":{"call":{"assistantId":"a1","orgId":"o1"}}}"#);
        assert_eq!(ids, [("vapi-assistant", "a1".to_string()), ("vapi-org", "o1".to_string())]);
        assert!(route_ids(b"not json").is_empty());
    }
}
