//! Telnyx (PROVIDERS-2.md §0, §3): API key as a bearer token (REST, Call Control and the
//! speech-to-text WebSocket); webhooks signed with Ed25519 over `timestamp|body` with the
//! account's public key; connections, messaging profiles and the organisation as routes.

use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::Value;
use url::Url;

use super::fields::{FieldDef, Rule, Schema};
use super::inbound::{single, strict_b64, timestamp, window, Accepted, Delivery, Reject};
use super::outbound::{bearer, exact, literal_url, FieldSource, HostRule, Injection, OutboundError};
use super::{Provider, WebhookKeys};
use crate::secret::Secret;

/// The Telnyx rules.
#[derive(Debug)]
pub(crate) struct Telnyx;

/// ±5 minutes, the SDK's tolerance (edges pass).
const TOLERANCE: u64 = 300;

impl Provider for Telnyx {
    fn name(&self) -> &str {
        "telnyx"
    }

    fn schema(&self) -> Schema {
        let key = Rule::Pattern("^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$ (base64 of 32 bytes)", public_key);
        Schema {
            provider: "telnyx".into(),
            fields: vec![
                FieldDef::secret("api_key", true, Rule::Opaque),
                // Not confidential, but it decides authenticity: echoed, audited like a secret.
                FieldDef::public("public_key", false, key),
                FieldDef::public("public_key_previous", false, key),
            ],
            cross: None,
        }
    }

    fn default_base_url(&self, _region: &str) -> Url {
        literal_url("https://api.telnyx.com/v2")
    }

    fn hosts(&self) -> Vec<HostRule> {
        vec![exact("api.telnyx.com")]
    }

    fn injection_per_credential(&self) -> bool {
        true
    }

    fn inject(&self, cred: &dyn FieldSource, _path: &str, _: Option<&Secret>) -> Result<Injection, OutboundError> {
        bearer(cred, "api_key")
    }

    fn webhook_keys<'c>(&self, cred: &'c dyn FieldSource) -> Option<WebhookKeys<'c>> {
        let keys: Vec<&[u8]> = ["public_key", "public_key_previous"]
            .iter()
            .filter_map(|f| cred.public_field(f))
            .map(str::as_bytes)
            .collect();
        (!keys.is_empty()).then_some(WebhookKeys { keys, hmac: false })
    }

    fn verify(&self, d: &Delivery<'_>, k: &WebhookKeys<'_>) -> Result<Accepted, Reject> {
        verify(d, &k.keys)
    }

    fn route_candidates(&self, d: &Delivery<'_>) -> Vec<(&'static str, String)> {
        route_ids(d.body)
    }

    fn check_path(&self, _cred: &dyn FieldSource) -> Option<String> {
        Some("/balance".into())
    }
}

fn public_key(s: &str) -> bool {
    s.len() == 44 && strict_b64(s).is_some_and(|k| k.len() == 32)
}

/// `telnyx-signature-ed25519` (strict base64 of 64 bytes) over `telnyx-timestamp` ‖ "|" ‖
/// body, with RFC 8032 strict verification; then the window. Keys are the stored base64
/// public keys. A GET with a query is refused: the signature does not cover the query.
pub(crate) fn verify(d: &Delivery<'_>, keys: &[&[u8]]) -> Result<Accepted, Reject> {
    let sig_b64 = single(d.headers, "telnyx-signature-ed25519")?;
    let ts_s = single(d.headers, "telnyx-timestamp")?;
    let ts = timestamp(ts_s, "telnyx-timestamp")?;
    if d.method.eq_ignore_ascii_case("GET") && d.url.contains('?') {
        return Err(Reject::BadSignature(
            "a Telnyx GET callback carries its fields in the query, which the signature does not cover; configure the callback as POST".into(),
        ));
    }
    let raw = strict_b64(sig_b64)
        .filter(|s| s.len() == 64)
        .ok_or_else(|| Reject::BadSignature("telnyx-signature-ed25519 is not strict base64 of 64 bytes".into()))?;
    let sig = Signature::from_slice(&raw).map_err(|_| Reject::BadSignature("the signature is malformed".into()))?;
    let mut msg = Vec::with_capacity(ts_s.len() + 1 + d.body.len());
    msg.extend_from_slice(ts_s.as_bytes());
    msg.push(b'|');
    msg.extend_from_slice(d.body);
    let mut usable = 0;
    let mut ok = false;
    for k in keys {
        let Some(bytes) = std::str::from_utf8(k).ok().and_then(strict_b64) else { continue };
        let Ok(arr) = <[u8; 32]>::try_from(bytes.as_slice()) else { continue };
        let Ok(key) = VerifyingKey::from_bytes(&arr) else { continue };
        usable += 1;
        ok |= key.verify_strict(&msg, &sig).is_ok();
    }
    if !ok {
        return Err(Reject::BadSignature(format!("the signature verifies under none of {usable} public keys")));
    }
    window(ts, d.now, TOLERANCE, TOLERANCE)?;
    let id = serde_json::from_slice::<Value>(d.body).ok().and_then(|v| v["data"]["id"].as_str().map(str::to_string));
    Ok(Accepted {
        replay_key: Some(format!("{ts_s}:{sig_b64}")),
        replay_keep: TOLERANCE * 2 + 300,
        event_id: id,
        strip: vec![],
    })
}

/// Route ids in a delivery: JSON (API v2) payload ids, or TeXML's `AccountSid` form field.
fn route_ids(body: &[u8]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let p = &v["data"]["payload"];
        for (field, kind) in [
            ("connection_id", "telnyx-connection"),
            ("messaging_profile_id", "telnyx-messaging-profile"),
            ("organization_id", "telnyx-org"),
        ] {
            if let Some(id) = p[field].as_str() {
                out.push((kind, id.to_string()));
            }
        }
    } else if let Some((_, sid)) = url::form_urlencoded::parse(body).find(|(k, _)| k == "AccountSid") {
        out.push(("telnyx-org", sid.into_owned()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use ed25519_dalek::{Signer, SigningKey};
    use http::{HeaderMap, HeaderValue};

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    fn key(seed: u8) -> (SigningKey, String) {
        let sk = SigningKey::from_bytes(&[seed; 32]);
        let pk = B64.encode(sk.verifying_key().as_bytes());
        (sk, pk)
    }

    fn signed(sk: &SigningKey, ts: &str, body: &[u8]) -> HeaderMap {
        let mut msg = ts.as_bytes().to_vec();
        msg.push(b'|');
        msg.extend_from_slice(body);
        let mut h = HeaderMap::new();
        h.insert("telnyx-signature-ed25519", HeaderValue::from_str(&B64.encode(sk.sign(&msg).to_bytes())).unwrap());
        h.insert("telnyx-timestamp", HeaderValue::from_str(ts).unwrap());
        h
    }

    fn check(h: &HeaderMap, body: &[u8], pk: &str, now: u64) -> Result<Accepted, Reject> {
        verify(
            &Delivery { method: "POST", url: "https://x/webhooks/telnyx/acme", headers: h, body, now },
            &[pk.as_bytes()],
        )
    }

    #[test]
    fn ed25519_over_timestamp_bar_body_with_a_five_minute_window() {
        let (sk, pk) = key(7);
        let body = br#"{"data":{"event_type":"call.initiated","id":"ev-1","payload":{"connection_id":"c1"}}}"#;
        let h = signed(&sk, "1700000000", body);
        assert_eq!(check(&h, body, &pk, 1_700_000_000).unwrap().event_id.as_deref(), Some("ev-1"));
        assert!(check(&h, body, &pk, 1_700_000_300).is_ok());
        assert_eq!(check(&h, body, &pk, 1_700_000_301).unwrap_err().code(), "stale_timestamp");
        let (_, other) = key(8);
        assert_eq!(check(&h, body, &other, 1_700_000_000).unwrap_err().code(), "bad_signature");
        assert_eq!(check(&h, b"{}", &pk, 1_700_000_000).unwrap_err().code(), "bad_signature");
        // Timestamps int() would take, and lenient base64: refused.
        for ts in ["+1700000000", " 1700000000", "1_700_000_000"] {
            let mut bad = h.clone();
            bad.insert("telnyx-timestamp", HeaderValue::from_str(ts).unwrap());
            assert_eq!(check(&bad, body, &pk, 1_700_000_000).unwrap_err().code(), "bad_signature", "{ts}");
        }
        let mut loose = h.clone();
        let s = h["telnyx-signature-ed25519"].to_str().unwrap().to_string();
        loose
            .insert("telnyx-signature-ed25519", HeaderValue::from_str(&format!("{}\t{}", &s[..10], &s[10..])).unwrap());
        assert_eq!(check(&loose, body, &pk, 1_700_000_000).unwrap_err().code(), "bad_signature");
    }

    #[test]
    fn a_non_canonical_s_and_a_small_order_key_are_refused() {
        let (sk, pk) = key(9);
        let body = b"{}";
        let h = signed(&sk, "1700000000", body);
        let mut raw = B64.decode(h["telnyx-signature-ed25519"].to_str().unwrap()).unwrap();
        // S + L (the group order) is the same point but not canonical.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = raw[32 + i] as u16 + L[i] as u16 + carry;
            raw[32 + i] = v as u8;
            carry = v >> 8;
        }
        let mut h2 = h.clone();
        h2.insert("telnyx-signature-ed25519", HeaderValue::from_str(&B64.encode(&raw)).unwrap());
        assert_eq!(check(&h2, body, &pk, 1_700_000_000).unwrap_err().code(), "bad_signature");
        // The identity point as a public key (small order): no signature verifies under it.
        let identity = B64.encode({
            let mut k = [0u8; 32];
            k[0] = 1;
            k
        });
        assert_eq!(check(&h, body, &identity, 1_700_000_000).unwrap_err().code(), "bad_signature");
    }

    #[test]
    fn get_callbacks_with_a_query_are_refused_and_routes_are_read() {
        let (sk, pk) = key(3);
        let h = signed(&sk, "1700000000", b"");
        let d = Delivery {
            method: "GET",
            url: "https://x/webhooks/telnyx/acme?CallSid=1",
            headers: &h,
            body: b"",
            now: 1_700_000_000,
        };
        assert_eq!(verify(&d, &[pk.as_bytes()]).unwrap_err().code(), "bad_signature");
        let ids = route_ids(
            br#"{"data":{"payload":{"connection_id":"c1","messaging_profile_id":"mp1","organization_id":"org1"}}}"#,
        );
        assert_eq!(
            ids,
            vec![
                ("telnyx-connection", "c1".to_string()),
                ("telnyx-messaging-profile", "mp1".to_string()),
                ("telnyx-org", "org1".to_string())
            ]
        );
        assert_eq!(route_ids(b"AccountSid=acc-1&CallSid=x"), vec![("telnyx-org", "acc-1".to_string())]);
        assert!(public_key(&pk));
        assert!(!public_key(&pk[..43]));
    }
}
