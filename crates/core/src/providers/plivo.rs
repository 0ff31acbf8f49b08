//! Plivo (PROVIDERS-2.md §0, §4): HTTP Basic `auth_id:auth_token`, the account in the path
//! checked (`/v1/Account/_/…` filled in); callbacks signed V3 (URL, sorted query and form,
//! nonce; the owning and the main account's headers) or, when no V3 header is present,
//! V2 (URL and nonce only); numbers as routes.

use std::collections::BTreeMap;

use base64::Engine;
use url::Url;

use super::fields::{FieldDef, Rule, Schema};
use super::inbound::{ct_eq, hmac_sha256, single, Accepted, Delivery, Reject};
use super::outbound::{basic, exact, literal_url, need, FieldSource, HostRule, Injection, OutboundError};
use super::{Provider, WebhookKeys};
use crate::secret::Secret;

/// The Plivo rules.
#[derive(Debug)]
pub(crate) struct Plivo;

/// A nonce is remembered this long (keyward choice: V3 carries no timestamp).
const NONCE_KEEP: u64 = 3600;

impl Provider for Plivo {
    fn name(&self) -> &str {
        "plivo"
    }

    fn schema(&self) -> Schema {
        Schema {
            provider: "plivo".into(),
            fields: vec![
                FieldDef::public("auth_id", true, Rule::Pattern("^(MA|SA)[A-Z0-9]{18}$", auth_id)),
                FieldDef::secret("auth_token", true, Rule::Opaque),
                FieldDef::secret("main_auth_token", false, Rule::Opaque),
                FieldDef::secret("webhook_secret_previous", false, Rule::Opaque),
            ],
            cross: None,
        }
    }

    fn default_base_url(&self, _region: &str) -> Url {
        literal_url("https://api.plivo.com")
    }

    fn hosts(&self) -> Vec<HostRule> {
        ["api.plivo.com", "phlorunner.plivo.com", "stats.plivo.com", "lookup.plivo.com"]
            .into_iter()
            .map(exact)
            .collect()
    }

    fn inject(&self, cred: &dyn FieldSource, path: &str, _: Option<&Secret>) -> Result<Injection, OutboundError> {
        let id = cred.public_field("auth_id").ok_or_else(|| OutboundError::MissingField("auth_id".into()))?;
        let mut inj = basic(id, need(cred, "auth_token")?)?;
        inj.path = rewrite_account(path, id)?;
        Ok(inj)
    }

    // Two lists: the owning account's token (plus a previous one) for the plain headers,
    // the main account's token for the `-Ma-` headers; `keys[0..n]` own, the last the main.
    fn webhook_keys<'c>(&self, cred: &'c dyn FieldSource) -> Option<WebhookKeys<'c>> {
        let own = cred.secret_field("auth_token")?;
        let mut keys = vec![own.expose().as_bytes()];
        if let Some(p) = cred.secret_field("webhook_secret_previous") {
            keys.push(p.expose().as_bytes());
        }
        keys.push(cred.secret_field("main_auth_token").unwrap_or(own).expose().as_bytes());
        Some(WebhookKeys { keys, hmac: false })
    }

    // One key from a file serves both lists.
    fn offline_keys<'k>(&self, key: &'k [u8], _headers: &http::HeaderMap) -> WebhookKeys<'k> {
        WebhookKeys { keys: vec![key, key], hmac: false }
    }

    fn verify(&self, d: &Delivery<'_>, k: &WebhookKeys<'_>) -> Result<Accepted, Reject> {
        let (main, own) = k.keys.split_last().ok_or_else(|| Reject::BadSignature("no Plivo auth token".into()))?;
        verify(d, own, &[*main])
    }

    fn route_candidates(&self, d: &Delivery<'_>) -> Vec<(&'static str, String)> {
        let (q, f) = params(d);
        let get = |n: &str| f.get(n).or_else(|| q.get(n)).and_then(|v| v.first()).cloned();
        let number = match get("Direction").as_deref() {
            Some("inbound") => get("To"),
            Some("outbound") => get("From"),
            _ => None,
        };
        number.map(|n| ("plivo-number", n)).into_iter().collect()
    }

    // `_` is filled in with the tenant's auth_id like any call's.
    fn check_path(&self, _cred: &dyn FieldSource) -> Option<String> {
        Some("/v1/Account/_/".into())
    }
}

fn auth_id(s: &str) -> bool {
    s.len() == 20
        && (s.starts_with("MA") || s.starts_with("SA"))
        && s.bytes().skip(2).all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// `/v1/Account/{id}/…` must name the tenant's own account (`_` is filled in; a main account
/// reaches its subaccounts through `…/Account/{MA…}/Subaccount/…`, which passes).
fn rewrite_account(path: &str, id: &str) -> Result<Option<String>, OutboundError> {
    let Some(rest) = path.strip_prefix("/v1/Account/") else { return Ok(None) };
    let (seg, tail) = rest.split_once('/').map_or((rest, ""), |(s, t)| (s, t));
    let mismatch = || OutboundError::AccountMismatch {
        expected: id.to_string(),
        found: seg.chars().take(40).filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect(),
    };
    if seg.contains('%') {
        return Err(mismatch());
    }
    match seg {
        "_" => Ok(Some(format!("/v1/Account/{id}/{tail}"))),
        s if s == id => Ok(None),
        _ => Err(mismatch()),
    }
}

/// Decoded query and (POST form) body: `+` is a space, `%XX` bytes, UTF-8; blanks and
/// repeats kept, values of a name sorted (PROVIDERS-2.md §4.2, §10 row 6).
type Params = BTreeMap<String, Vec<String>>;

fn decode(s: &[u8]) -> Params {
    let mut out: Params = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(s) {
        out.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

fn params(d: &Delivery<'_>) -> (Params, Params) {
    let query = d.url.split_once('?').map(|(_, q)| q.split('#').next().unwrap_or(q)).unwrap_or("");
    let form = d.method.eq_ignore_ascii_case("POST")
        && d.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    (decode(query.as_bytes()), if form { decode(d.body) } else { BTreeMap::new() })
}

/// `scheme://authority/path` of the URL Plivo called: query and fragment removed, port as given.
fn base_of(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    &url[..end]
}

/// The V3 string before `.nonce` (§4.2).
fn v3_string(d: &Delivery<'_>) -> String {
    let (q, f) = params(d);
    let join = |m: &Params, sep: &str, eq: &str| {
        m.iter().flat_map(|(n, vs)| vs.iter().map(move |v| format!("{n}{eq}{v}"))).collect::<Vec<_>>().join(sep)
    };
    let qs = join(&q, "&", "=");
    let mut s = base_of(d.url).to_string();
    if d.method.eq_ignore_ascii_case("GET") {
        if !qs.is_empty() {
            s.push('?');
            s.push_str(&qs);
        }
        return s;
    }
    if !qs.is_empty() || !f.is_empty() {
        s.push('?');
        s.push_str(&qs);
    }
    if !qs.is_empty() && !f.is_empty() {
        s.push('.');
    }
    s.push_str(&join(&f, "", ""));
    s
}

fn entries(h: &http::HeaderMap, name: &str) -> Result<Option<Vec<Vec<u8>>>, Reject> {
    if !h.contains_key(name) {
        return Ok(None);
    }
    let v = single(h, name)?;
    Ok(Some(v.split(',').filter_map(|e| base64::engine::general_purpose::STANDARD.decode(e.trim()).ok()).collect()))
}

/// V3 when either V3 header is present, else V2; constant-time comparison of decoded MACs.
pub(crate) fn verify(d: &Delivery<'_>, own: &[&[u8]], main: &[&[u8]]) -> Result<Accepted, Reject> {
    let v3 = entries(d.headers, "x-plivo-signature-v3")?;
    let ma3 = entries(d.headers, "x-plivo-signature-ma-v3")?;
    let (own_sigs, main_sigs, nonce_header, msg, scheme) = if v3.is_some() || ma3.is_some() {
        let nonce = single(d.headers, "x-plivo-signature-v3-nonce")?;
        (v3, ma3, nonce, format!("{}.{nonce}", v3_string(d)), "V3")
    } else {
        let v2 = entries(d.headers, "x-plivo-signature-v2")?;
        let ma2 = entries(d.headers, "x-plivo-signature-ma-v2")?;
        if v2.is_none() && ma2.is_none() {
            return Err(Reject::BadSignature("no X-Plivo-Signature-V3 or -V2 header".into()));
        }
        let nonce = single(d.headers, "x-plivo-signature-v2-nonce")?;
        // V2 covers the URL (no query) and the nonce only.
        (v2, ma2, nonce, format!("{}{nonce}", base_of(d.url)), "V2")
    };
    let mut matched: Option<Vec<u8>> = None;
    for (sigs, keys) in [(&own_sigs, own), (&main_sigs, main)] {
        for sig in sigs.iter().flatten() {
            for k in keys {
                let mac = hmac_sha256(k, &[msg.as_bytes()]);
                if ct_eq(&mac, sig) && matched.is_none() {
                    matched = Some(sig.clone());
                }
            }
        }
    }
    let Some(sig) = matched else {
        return Err(Reject::BadSignature(format!("no {scheme} signature matches the account's auth tokens")));
    };
    let (q, f) = params(d);
    let get = |n: &str| f.get(n).or_else(|| q.get(n)).and_then(|v| v.first()).cloned();
    let event = match (get("CallUUID"), get("Event").or_else(|| get("CallStatus"))) {
        (Some(c), Some(e)) => Some(format!("{c}:{e}")),
        (Some(c), None) => Some(c),
        _ => None,
    };
    Ok(Accepted {
        replay_key: Some(format!("{nonce_header}:{}", hex::encode(sig))),
        replay_keep: NONCE_KEEP,
        event_id: event,
        strip: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    const TOKEN: &[u8] = b"MjAxNjExMTEtcGxpdm8tdG9rZW4tMDAwMDAwMDA";
    const URL: &str = "https://hooks.example.com/webhooks/plivo/acme?b=2&a=1&a=0";

    fn sign(s: &str, key: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(hmac_sha256(key, &[s.as_bytes()]))
    }

    fn form_headers(extra: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/x-www-form-urlencoded"));
        for (k, v) in extra {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_v3_string_sorts_decoded_query_and_form_and_joins_them_as_the_sdk_does() {
        let h = form_headers(&[]);
        let body = b"To=%2B14155550100&From=%2B1&Direction=inbound&CallUUID=u-1&Empty=";
        let d = Delivery { method: "POST", url: URL, headers: &h, body, now: 0 };
        assert_eq!(
            v3_string(&d),
            "https://hooks.example.com/webhooks/plivo/acme?a=0&a=1&b=2.CallUUIDu-1DirectioninboundEmptyFrom+1To+14155550100"
        );
        let get = Delivery { method: "GET", url: URL, headers: &h, body: b"", now: 0 };
        assert_eq!(v3_string(&get), "https://hooks.example.com/webhooks/plivo/acme?a=0&a=1&b=2");
        let bare = Delivery { method: "POST", url: "https://h/x", headers: &h, body: b"A=1", now: 0 };
        assert_eq!(v3_string(&bare), "https://h/x?A1");
        // Non-ASCII query values are decoded as UTF-8 (plivo-node; §10 row 6).
        let utf = Delivery { method: "GET", url: "https://h/x?n=%C3%A9", headers: &h, body: b"", now: 0 };
        assert_eq!(v3_string(&utf), "https://h/x?n=é");
    }

    #[test]
    fn v3_verifies_with_the_own_or_main_token_and_v2_only_without_v3() {
        let body = b"CallUUID=u-1&Event=Hangup";
        let h0 = form_headers(&[]);
        let s = v3_string(&Delivery { method: "POST", url: URL, headers: &h0, body, now: 0 });
        let nonce = "05429567804466091622";
        let good = sign(&format!("{s}.{nonce}"), TOKEN);
        let h =
            form_headers(&[("x-plivo-signature-v3", &format!("junk,{good}")), ("x-plivo-signature-v3-nonce", nonce)]);
        let d = Delivery { method: "POST", url: URL, headers: &h, body, now: 0 };
        let ok = verify(&d, &[TOKEN], &[b"main"]).unwrap();
        assert_eq!(ok.event_id.as_deref(), Some("u-1:Hangup"));
        assert!(verify(&d, &[b"other"], &[b"main"]).is_err());
        // The main account's header under the main token only.
        let main = sign(&format!("{s}.{nonce}"), b"main-token");
        let hm = form_headers(&[("x-plivo-signature-ma-v3", &main), ("x-plivo-signature-v3-nonce", nonce)]);
        let dm = Delivery { method: "POST", url: URL, headers: &hm, body, now: 0 };
        assert!(verify(&dm, &[TOKEN], &[b"main-token"]).is_ok());
        assert!(verify(&dm, &[b"main-token"], &[TOKEN]).is_err());
        // A changed form value breaks V3.
        let dt = Delivery { method: "POST", url: URL, headers: &h, body: b"CallUUID=u-1&Event=Answer", now: 0 };
        assert_eq!(verify(&dt, &[TOKEN], &[TOKEN]).unwrap_err().code(), "bad_signature");
        // V2: URL without query, nonce appended with no separator.
        let v2 = sign(&format!("https://hooks.example.com/webhooks/plivo/acme{nonce}"), TOKEN);
        let h2 = form_headers(&[("x-plivo-signature-v2", &v2), ("x-plivo-signature-v2-nonce", nonce)]);
        assert!(verify(&Delivery { method: "POST", url: URL, headers: &h2, body, now: 0 }, &[TOKEN], &[TOKEN]).is_ok());
        // A V3 header present (even wrong) means V2 is not consulted.
        let mut both = h2.clone();
        both.insert("x-plivo-signature-v3", HeaderValue::from_static("AAAA"));
        both.insert("x-plivo-signature-v3-nonce", HeaderValue::from_static("1"));
        assert!(
            verify(&Delivery { method: "POST", url: URL, headers: &both, body, now: 0 }, &[TOKEN], &[TOKEN]).is_err()
        );
        assert!(verify(&Delivery { method: "POST", url: URL, headers: &h0, body, now: 0 }, &[TOKEN], &[TOKEN]).is_err());
    }

    #[test]
    fn the_account_in_the_path_is_the_tenants() {
        let id = "MA0123456789ABCDEFGH";
        assert_eq!(rewrite_account("/v1/Account/_/Call/", id).unwrap().unwrap(), format!("/v1/Account/{id}/Call/"));
        assert_eq!(rewrite_account(&format!("/v1/Account/{id}/Subaccount/"), id).unwrap(), None);
        assert!(rewrite_account("/v1/Account/MAOTHER0000000000000/Call/", id).is_err());
        assert!(rewrite_account("/v1/Account/MA%30123/Call/", id).is_err());
        assert_eq!(rewrite_account("/v1/Number/", id).unwrap(), None);
        assert!(auth_id(id) && auth_id("SA0123456789ABCDEFGH") && !auth_id("XA0123456789ABCDEFGH") && !auth_id("MA01"));
    }
}
