//! Vapi: credential schema (PROVIDERS.md §0, §2).

use super::fields::{one_of, FieldDef, Rule, Schema};

pub(crate) fn schema() -> Schema {
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

/// HMAC mode: `x-signature` (optionally `sha256=`-prefixed lower hex) over
/// `{x-timestamp}.{body}`, or the body alone without a timestamp.
pub(crate) fn verify_hmac(d: &Delivery<'_>, keys: &[&[u8]]) -> Result<Accepted, Reject> {
    let raw = single(d.headers, "x-signature")?;
    let hexsig = raw.strip_prefix("sha256=").unwrap_or(raw);
    let sig = lower_hex(hexsig, 32)
        .ok_or_else(|| Reject::BadSignature("x-signature must be 64 lower-case hex digits".into()))?;
    let ts = if d.headers.contains_key("x-timestamp") { Some(single(d.headers, "x-timestamp")?) } else { None };
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
        replay_keep: 900,
        event_id: None,
        strip: vec![],
    })
}

/// Static-secret mode: `X-Vapi-Secret` (whole) or `Authorization: Bearer <secret>`.
pub(crate) fn verify_static(d: &Delivery<'_>, keys: &[&[u8]]) -> Result<Accepted, Reject> {
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
pub(crate) fn route_ids(body: &[u8]) -> Vec<(&'static str, String)> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return vec![] };
    let call = &v["message"]["call"];
    [("vapi-assistant", "assistantId"), ("vapi-phone-number", "phoneNumberId"), ("vapi-org", "orgId")]
        .iter()
        .filter_map(|(kind, field)| call[*field].as_str().map(|s| (*kind, s.to_string())))
        .collect()
}

/// Field names whose values Vapi may echo and the app must not receive.
pub(crate) const ECHOED_SECRETS: &[&str] = &[
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
