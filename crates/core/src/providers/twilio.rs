//! Twilio (PROVIDERS.md §0, §3): HTTP Basic with an API key or the auth token and the
//! `Accounts/_` rewrite; `X-Twilio-Signature` over URL and form (or `bodySHA256`); the
//! account and its phone numbers as routes.

use std::borrow::Cow;

use serde_json::Value;
use url::Url;

use super::discovery::{Listing, Page};
use super::fields::{prefixed_hex, FieldDef, ParsedFields, Rule, Schema};
use super::outbound::{literal_url, HostRule};
use super::{Provider, WebhookKeys};
use crate::secret::Secret;

/// The Twilio rules.
#[derive(Debug)]
pub(crate) struct Twilio;

impl Provider for Twilio {
    fn name(&self) -> &str {
        "twilio"
    }

    fn schema(&self) -> Schema {
        schema()
    }

    fn default_base_url(&self, _region: &str) -> Url {
        literal_url("https://api.twilio.com")
    }

    fn hosts(&self) -> Vec<HostRule> {
        vec![HostRule::Suffix(".twilio.com")]
    }

    fn inject(&self, cred: &dyn FieldSource, path: &str, _: Option<&Secret>) -> Result<Injection, OutboundError> {
        inject(cred, path)
    }

    fn webhook_keys<'c>(&self, cred: &'c dyn FieldSource) -> Option<WebhookKeys<'c>> {
        cred.secret_field("auth_token")?;
        Some(WebhookKeys::from_fields(cred, &["auth_token", "secondary_auth_token", "webhook_secret_previous"], false))
    }

    fn verify(&self, d: &Delivery<'_>, k: &WebhookKeys<'_>) -> Result<Accepted, Reject> {
        verify(d, &k.keys)
    }

    fn route_candidates(&self, d: &Delivery<'_>) -> Vec<(&'static str, String)> {
        account_sid(d).map(|s| ("twilio-account", s)).into_iter().collect()
    }

    fn check_body_ids(&self, d: &Delivery<'_>, cred: &dyn FieldSource) -> Result<(), String> {
        match (account_sid(d), cred.public_field("account_sid")) {
            (Some(found), Some(own)) if found != own => Err(format!("AccountSid {found} is not this tenant's account")),
            _ => Ok(()),
        }
    }

    fn check_path(&self, cred: &dyn FieldSource) -> Option<String> {
        Some(format!("/2010-04-01/Accounts/{}.json", cred.public_field("account_sid").unwrap_or("_")))
    }

    fn discovery(&self, cred: &dyn FieldSource) -> (Vec<(&'static str, String)>, Vec<Listing>) {
        let Some(sid) = cred.public_field("account_sid") else { return (Vec::new(), Vec::new()) };
        let numbers = Listing {
            label: "incoming numbers".into(),
            first: format!("/2010-04-01/Accounts/{sid}/IncomingPhoneNumbers.json?PageSize=1000"),
            read: incoming_numbers,
        };
        (vec![("twilio-account", sid.to_string())], vec![numbers])
    }
}

/// One page of `IncomingPhoneNumbers.json`; the next page only when it stays in the API.
fn incoming_numbers(body: &[u8]) -> Result<Page, String> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let found = v["incoming_phone_numbers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["phone_number"].as_str())
        .map(|num| ("twilio-number", num.to_string()))
        .collect();
    let next = v["next_page_uri"].as_str().filter(|u| u.starts_with("/2010-04-01/")).map(str::to_string);
    Ok(Page { found, next })
}

fn phone(s: &str) -> bool {
    let n = s.strip_prefix("whatsapp:").unwrap_or(s);
    let Some(digits) = n.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len()) && digits.bytes().all(|c| c.is_ascii_digit()) && !digits.starts_with('0')
}

fn pairs(p: &mut ParsedFields) -> Result<(), (Option<&'static str>, String)> {
    let sid = p.has("api_key_sid");
    let secret = p.has("api_key_secret");
    if sid != secret {
        let missing = if sid { "api_key_secret" } else { "api_key_sid" };
        return Err((
            Some(missing),
            "is required with api_key_sid/api_key_secret: they come together or not at all".into(),
        ));
    }
    if !p.has("auth_token") && !sid {
        return Err((
            None,
            "needs at least one complete pair: account_sid + auth_token, or api_key_sid + api_key_secret".into(),
        ));
    }
    if !p.has("auth_token") {
        p.warnings.push("twilio: without auth_token, webhooks for this tenant cannot be verified".into());
    }
    Ok(())
}

fn schema() -> Schema {
    Schema {
        provider: "twilio".into(),
        fields: vec![
            FieldDef::public("account_sid", true, Rule::Pattern("^AC[0-9a-fA-F]{32}$", |s| prefixed_hex(s, "AC", 32))),
            FieldDef::secret("auth_token", false, Rule::Opaque),
            FieldDef::public("api_key_sid", false, Rule::Pattern("^SK[0-9a-fA-F]{32}$", |s| prefixed_hex(s, "SK", 32))),
            FieldDef::secret("api_key_secret", false, Rule::Opaque),
            FieldDef::secret("secondary_auth_token", false, Rule::Opaque),
            FieldDef::secret("webhook_secret_previous", false, Rule::Opaque),
            FieldDef::public_list("phone_numbers", false, Rule::Pattern("^(whatsapp:)?\\+[1-9][0-9]{1,14}$", phone)),
        ],
        cross: Some(pairs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SID: &str = "AC0123456789abcdef0123456789abcdef";

    #[test]
    fn an_account_sid_and_auth_token_are_enough() {
        assert!(schema().parse(json!({"account_sid": SID, "auth_token": "t0k3n-canary-000000"})).is_ok());
    }

    #[test]
    fn an_api_key_needs_its_secret() {
        let e = schema()
            .parse(json!({"account_sid": SID, "api_key_sid": "SK0123456789abcdef0123456789abcdef"}))
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("api_key_secret"));
        let ok = schema()
            .parse(
                json!({"account_sid": SID, "api_key_sid": "SK0123456789abcdef0123456789abcdef", "api_key_secret": "s"}),
            )
            .unwrap();
        assert_eq!(ok.warnings.len(), 1, "no auth_token: webhooks cannot be verified");
    }

    #[test]
    fn a_bad_account_sid_gets_the_pattern_in_the_message() {
        let e = schema().parse(json!({"account_sid": "AC123", "auth_token": "t"})).unwrap_err().to_string();
        assert_eq!(e, "twilio.account_sid must match ^AC[0-9a-fA-F]{32}$");
    }

    #[test]
    fn no_pair_at_all_is_refused() {
        let e = schema().parse(json!({"account_sid": SID})).unwrap_err().to_string();
        assert!(e.contains("at least one complete pair"), "{e}");
    }

    #[test]
    fn phone_numbers_are_e164_or_whatsapp() {
        assert!(phone("+14155551212") && phone("whatsapp:+14155551212"));
        assert!(!phone("14155551212") && !phone("+0155") && !phone("+1") && !phone("+1234567890123456"));
    }
}

// ---- outbound ----

use super::outbound::{basic, need, FieldSource, Injection, OutboundError};

/// Basic auth (API key preferred over the auth token) and the `Accounts/_` rewrite: the
/// segment after `/2010-04-01/Accounts/` must be `_` (filled in) or the tenant's own SID.
fn inject(cred: &dyn FieldSource, path: &str) -> Result<Injection, OutboundError> {
    let sid = cred.public_field("account_sid").ok_or_else(|| OutboundError::MissingField("account_sid".into()))?;
    let mut inj = match (cred.public_field("api_key_sid"), cred.secret_field("api_key_secret")) {
        (Some(user), Some(secret)) => basic(user, secret)?,
        _ => basic(sid, need(cred, "auth_token")?)?,
    };
    inj.path = rewrite_account(path, sid)?;
    Ok(inj)
}

/// `Some(new path)` when `_` was replaced; an error when another account is named
/// (PROVIDERS.md §3.1: `Accounts` matched case-insensitively, the SID exactly).
fn rewrite_account(path: &str, sid: &str) -> Result<Option<String>, OutboundError> {
    let Some(rest) = path.strip_prefix("/2010-04-01/") else { return Ok(None) };
    let Some((accounts, rest)) = rest.split_once('/') else { return Ok(None) };
    if !accounts.eq_ignore_ascii_case("Accounts") {
        return Ok(None);
    }
    let (segment, tail) = rest.split_once('/').map_or((rest, None), |(s, t)| (s, Some(t)));
    let mismatch = |found: &str| OutboundError::AccountMismatch {
        expected: sid.to_string(),
        found: found.chars().take(40).filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect(),
    };
    if segment.contains('%') {
        return Err(mismatch(segment));
    }
    // `AC….json` names the account too: compare the part before the extension.
    let (named, ext) = segment.split_once('.').map_or((segment, None), |(n, e)| (n, Some(e)));
    if named == "_" {
        let mut out = format!("/2010-04-01/{accounts}/{sid}");
        if let Some(e) = ext {
            out.push('.');
            out.push_str(e);
        }
        if let Some(t) = tail {
            out.push('/');
            out.push_str(t);
        }
        return Ok(Some(out));
    }
    if named == sid {
        return Ok(None);
    }
    Err(mismatch(named))
}

#[cfg(test)]
mod outbound_tests {
    use super::*;

    const SID: &str = "AC0123456789abcdef0123456789abcdef";

    #[test]
    fn the_underscore_account_is_filled_in() {
        assert_eq!(
            rewrite_account("/2010-04-01/Accounts/_/Messages.json", SID).unwrap().unwrap(),
            format!("/2010-04-01/Accounts/{SID}/Messages.json")
        );
        assert_eq!(
            rewrite_account("/2010-04-01/Accounts/_.json", SID).unwrap().unwrap(),
            format!("/2010-04-01/Accounts/{SID}.json")
        );
        assert_eq!(
            rewrite_account("/2010-04-01/Accounts/_", SID).unwrap().unwrap(),
            format!("/2010-04-01/Accounts/{SID}")
        );
    }

    #[test]
    fn the_tenants_own_sid_passes_and_another_is_refused() {
        assert_eq!(rewrite_account(&format!("/2010-04-01/Accounts/{SID}/Calls.json"), SID).unwrap(), None);
        let other = "AC99999999999999999999999999999999";
        assert!(matches!(
            rewrite_account(&format!("/2010-04-01/Accounts/{other}/Calls.json"), SID),
            Err(OutboundError::AccountMismatch { .. })
        ));
        assert!(matches!(
            rewrite_account("/2010-04-01/Accounts/x/Calls.json", SID),
            Err(OutboundError::AccountMismatch { .. })
        ));
        assert_eq!(rewrite_account("/v1/Services", SID).unwrap(), None);
        assert_eq!(rewrite_account("/2010-04-01/Accounts.json", SID).unwrap(), None);
        assert!(rewrite_account("/2010-04-01/accounts/%41C0123/Calls.json", SID).is_err());
        assert!(
            rewrite_account(&format!("/2010-04-01/Accounts/{}/Calls.json", SID.to_uppercase()), SID).is_err(),
            "exact match"
        );
        assert!(rewrite_account("/2010-04-01/Accounts/_/Calls.json", SID).unwrap().is_some());
    }
}

// ---- inbound (PROVIDERS.md §3.2) ----

use super::inbound::{ct_eq, hmac_sha1, hmac_sha256, single, strict_b64, Accepted, Delivery, Reject};

/// A decoded form field: name and value, borrowed from the body where nothing was encoded.
pub type FormPair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// Decodes an `application/x-www-form-urlencoded` body the way Twilio signs it: split on
/// `&`, then on the first `=`, `+` is a space, `%XX` decoded, blank values kept. Plain
/// components borrow the body (a large delivery is mostly plain text: no copy).
pub fn decode_form(body: &[u8]) -> Result<Vec<FormPair<'_>>, String> {
    let mut out = Vec::new();
    for (k, v) in form_pairs(body) {
        out.push((decode_component(k)?, decode_component(v.unwrap_or_default())?));
    }
    Ok(out)
}

/// The non-empty `name[=value]` pieces of a form, found with memchr: a 64 KiB delivery is
/// scanned once per use at memory speed rather than byte by byte.
fn form_pairs(mut rest: &[u8]) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let end = memchr::memchr(b'&', rest).unwrap_or(rest.len());
        let pair = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        if !pair.is_empty() {
            return Some(match memchr::memchr(b'=', pair) {
                Some(i) => (&pair[..i], Some(&pair[i + 1..])),
                None => (pair, None),
            });
        }
    })
}

fn decode_component(raw: &[u8]) -> Result<Cow<'_, str>, String> {
    let not_utf8 = || "the form body is not valid UTF-8 after decoding".to_string();
    // Fast path: nothing to decode. One SIMD pass for both bytes (two passes of the slice's
    // `contains` were 5 % of a 64 KiB delivery's CPU).
    if memchr::memchr2(b'%', b'+', raw).is_none() {
        return std::str::from_utf8(raw).map(Cow::Borrowed).map_err(|_| not_utf8());
    }
    let mut plus = raw.to_vec();
    for b in plus.iter_mut().filter(|b| **b == b'+') {
        *b = b' ';
    }
    let decoded: Cow<'_, [u8]> = percent_encoding::percent_decode(&plus).into();
    String::from_utf8(decoded.into_owned()).map(Cow::Owned).map_err(|_| not_utf8())
}

/// `name + value` for sorted unique names, each with its sorted unique values: the pieces
/// in order, which the MAC takes one after another (a 64 KiB form is not copied again).
fn signed_params<'a>(params: &'a [FormPair<'_>]) -> Vec<&'a str> {
    let mut map: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> = std::collections::BTreeMap::new();
    for (k, v) in params {
        map.entry(k.as_ref()).or_default().insert(v.as_ref());
    }
    let mut out = Vec::with_capacity(2 * params.len());
    for (k, vs) in map {
        for v in vs {
            out.push(k);
            out.push(v);
        }
    }
    out
}

/// The URL as received first, then its other port form: with the port removed, or with
/// the scheme's default port made explicit. Trying the received form first means one MAC
/// in the common case.
pub fn port_variants(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else { return vec![url.to_string()] };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (host, port) = match authority.rfind(':') {
        Some(i)
            if !authority[i + 1..].is_empty()
                && authority[i + 1..].bytes().all(|c| c.is_ascii_digit())
                && !authority.ends_with(']') =>
        {
            (&authority[..i], Some(&authority[i + 1..]))
        }
        _ => (authority, None),
    };
    let without = format!("{scheme}://{host}{tail}");
    match port {
        Some(p) => vec![format!("{scheme}://{host}:{p}{tail}"), without],
        None => {
            let default = if scheme.eq_ignore_ascii_case("https") { "443" } else { "80" };
            vec![without, format!("{scheme}://{host}:{default}{tail}")]
        }
    }
}

fn query_param<'a>(url: &'a str, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    let q = url.split_once('?')?.1;
    let q = q.split('#').next().unwrap_or(q);
    url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v)
}

fn is_form(d: &Delivery<'_>) -> bool {
    d.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")
    })
}

/// Verifies `X-Twilio-Signature` against each key, on both port variants of the URL.
fn verify(d: &Delivery<'_>, keys: &[&[u8]]) -> Result<Accepted, Reject> {
    let sha256 = match d.headers.get("x-twilio-webhooks-signature-settings") {
        None => false,
        Some(v) => {
            let s = v.to_str().unwrap_or("");
            let alg = s
                .split(',')
                .filter_map(|p| p.trim().split_once('='))
                .find(|(k, _)| k.eq_ignore_ascii_case("algorithm"))
                .map(|(_, v)| v);
            match alg {
                None | Some("HMAC_SHA1") => false,
                Some("HMAC_SHA256") => true,
                Some(other) => {
                    return Err(Reject::BadSignature(format!(
                        "X-Twilio-Webhooks-Signature-Settings names an unknown algorithm {:?}",
                        other.chars().take(32).collect::<String>()
                    )))
                }
            }
        }
    };
    let sig_b64 = single(d.headers, "x-twilio-signature")?;
    let want_len = if sha256 { 32 } else { 20 };
    let sig = strict_b64(sig_b64)
        .filter(|s| s.len() == want_len)
        .ok_or_else(|| Reject::BadSignature(format!("X-Twilio-Signature is not base64 of a {want_len}-byte MAC")))?;
    let form;
    let extra = if let Some(expected) = query_param(d.url, "bodySHA256") {
        let actual = hex::encode(sha2::Sha256::digest(d.body));
        if !ct_eq(actual.as_bytes(), expected.as_bytes()) {
            return Err(Reject::BadSignature("bodySHA256 in the URL does not match the body".into()));
        }
        Vec::new()
    } else if d.method.eq_ignore_ascii_case("POST") && is_form(d) {
        form = decode_form(d.body).map_err(Reject::BadSignature)?;
        signed_params(&form)
    } else if d.body.is_empty() {
        Vec::new()
    } else {
        // The MAC would cover the URL alone: any body could ride on a GET's signature.
        return Err(Reject::BadSignature(
            "the body is not covered by the signature: Twilio signs a body only as a form POST or with bodySHA256 in the URL"
                .into(),
        ));
    };
    let variants = port_variants(d.url);
    let mut parts: Vec<&[u8]> = Vec::with_capacity(1 + extra.len());
    for u in &variants {
        parts.clear();
        parts.push(u.as_bytes());
        parts.extend(extra.iter().map(|p| p.as_bytes()));
        for k in keys {
            let ok = if sha256 { ct_eq(&hmac_sha256(k, &parts), &sig) } else { ct_eq(&hmac_sha1(k, &parts), &sig) };
            if ok {
                // Replay key and event id come from what the MAC covers (URL, form or body
                // digest), never from I-Twilio-Idempotency-Token, which is not signed: a
                // replay with a fresh token must still be a replay, and the app's dedupe on
                // Keyward-Event-Id must still hold.
                let digest = sha2::Sha256::digest(&sig);
                return Ok(Accepted {
                    replay_key: Some(format!("sig:{}", hex::encode(digest))),
                    replay_keep: 900,
                    event_id: Some(format!("tw_{}", hex::encode(&digest[..16]))),
                    strip: vec![],
                });
            }
        }
    }
    Err(Reject::BadSignature(format!(
        "HMAC-{} matches neither URL variant ({}) with any of {} key(s); check webhooks.public_base_url against the URL configured in Twilio",
        if sha256 { "SHA256" } else { "SHA1" },
        variants.join(" , "),
        keys.len()
    )))
}

use sha2::Digest;

/// The `AccountSid` a delivery names (form body for POST, query for GET). Only that one
/// field is decoded.
fn account_sid(d: &Delivery<'_>) -> Option<String> {
    if d.method.eq_ignore_ascii_case("POST") && is_form(d) {
        form_pairs(d.body)
            .find_map(|(k, v)| (k == b"AccountSid").then(|| decode_component(v?).ok().map(Cow::into_owned)).flatten())
    } else {
        query_param(d.url, "AccountSid").map(|v| v.into_owned())
    }
}

#[cfg(test)]
mod inbound_tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    const U: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const P: &[u8] =
        b"CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212";
    const J: &[u8] = br#"{"property": "value", "boolean": true}"#;
    const H: &str = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";

    fn check(url: &str, body: &[u8], form: bool, sig: &str) -> Result<Accepted, Reject> {
        let mut h = HeaderMap::new();
        h.insert("x-twilio-signature", HeaderValue::from_str(sig).unwrap());
        h.insert(
            "content-type",
            HeaderValue::from_static(if form { "application/x-www-form-urlencoded" } else { "application/json" }),
        );
        verify(&Delivery { method: "POST", url, headers: &h, body, now: 0 }, &[b"12345"])
    }

    #[test]
    fn twilio_public_vectors() {
        assert!(check(U, P, true, "RSOYDt4T1cUTdK1PDd93/VVr8B8=").is_ok(), "tw-1");
        assert!(
            check("https://mycompany.com:1234/myapp.php?foo=1&bar=2", P, true, "RSOYDt4T1cUTdK1PDd93/VVr8B8=").is_ok(),
            "tw-2"
        );
        assert!(
            check("http://mycompany.com:1234/myapp.php?foo=1&bar=2", P, true, "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=").is_ok(),
            "tw-3"
        );
        assert!(check(U, P, true, "kvajT1Ptam85bY51eRf/AJRuM3w=").is_ok(), "tw-4");
        assert!(
            check("http://mycompany.com/myapp.php?foo=1&bar=2", P, true, "0ZXoZLH/DfblKGATFgpif+LLRf4=").is_ok(),
            "tw-5"
        );
        assert!(check(&format!("{U}&bodySHA256={H}"), J, false, "a9nBmqA0ju/hNViExpshrM61xv4=").is_ok(), "tw-6");
        assert!(
            check(&format!("https://mycompany.com/myapp.php?bodySHA256={H}"), J, false, "y77kIzt2vzLz71DgmJGsen2scGs=")
                .is_ok(),
            "tw-7"
        );
        assert!(
            check(U, b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234", true, "IK+Dwps556ElfBT0I3Rgjkr1wJU=")
                .is_ok(),
            "tw-8"
        );
        assert_eq!(check(U, P, true, "NOTRSOYDt4T1cUTdK1PDd93/VVr8B8=").unwrap_err().code(), "bad_signature", "tw-9");
        assert_eq!(check(U, J, false, "RSOYDt4T1cUTdK1PDd93/VVr8B8=").unwrap_err().code(), "bad_signature", "tw-10");
    }

    #[test]
    fn the_signed_string_matches_the_documented_one() {
        let params = decode_form(P).unwrap();
        assert_eq!(
            signed_params(&params).concat(),
            "CallSidCA1234567890ABCDECaller+14158675309Digits1234From+14158675309To+18005551212"
        );
        assert_eq!(signed_params(&decode_form(b"Key=&A=1").unwrap()).concat(), "A1Key");
    }

    #[test]
    fn a_tampered_body_or_bodysha256_fails() {
        assert!(check(
            &format!("{U}&bodySHA256={H}"),
            br#"{"property": "value", "boolean": false}"#,
            false,
            "a9nBmqA0ju/hNViExpshrM61xv4="
        )
        .is_err());
        let mut tampered = P.to_vec();
        tampered[10] ^= 1;
        assert!(check(U, &tampered, true, "RSOYDt4T1cUTdK1PDd93/VVr8B8=").is_err());
    }

    #[test]
    fn port_variants_cover_both_forms() {
        assert_eq!(port_variants("https://h.example/a?b"), ["https://h.example/a?b", "https://h.example:443/a?b"]);
        assert_eq!(port_variants("http://h.example:8080/a"), ["http://h.example:8080/a", "http://h.example/a"]);
    }

    #[test]
    fn broken_form_encoding_is_a_clear_error() {
        assert!(decode_form(b"a=%FF%FE").is_err());
        assert_eq!(
            decode_form(b"a=%zz&&b").unwrap(),
            [(Cow::Borrowed("a"), Cow::Owned("%zz".to_string())), (Cow::Borrowed("b"), Cow::Borrowed(""))]
        );
    }

    #[test]
    fn the_account_sid_comes_from_the_form_or_the_query() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/x-www-form-urlencoded"));
        let d = Delivery { method: "POST", url: "https://x/y", headers: &h, body: b"AccountSid=AC1&x=2", now: 0 };
        assert_eq!(account_sid(&d).as_deref(), Some("AC1"));
        let d = Delivery {
            method: "GET",
            url: "https://x/y?AccountSid=AC2",
            headers: &HeaderMap::new(),
            body: b"",
            now: 0,
        };
        assert_eq!(account_sid(&d).as_deref(), Some("AC2"));
    }
}
