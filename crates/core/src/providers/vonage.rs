//! Vonage (PROVIDERS-2.md §0, §5): an application JWT (RS256, minted per request from the
//! application's private key) for Voice, Messages, Verify v2 and Conversations, HTTP Basic
//! `api_key:api_secret` for everything else; signed callbacks are HS256 JWTs whose claims
//! bind the body hash and the account.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use url::Url;
use zeroize::Zeroizing;

use super::fields::{FieldDef, ParsedFields, Rule, Schema};
use super::inbound::{ct_eq, hmac_sha256, single, Accepted, Delivery, Reject};
use super::outbound::{basic, literal_url, sensitive_joined, FieldSource, HostRule, Injection, OutboundError};
use super::{Provider, WebhookKeys};
use crate::secret::Secret;

/// The Vonage rules.
#[derive(Debug)]
pub(crate) struct Vonage;

/// Lifetime of a minted application JWT, as the SDK sets it.
const JWT_TTL: u64 = 900;
/// `iat` of a signed callback may be this far from now (keyward choice; the SDK has none).
const IAT_WINDOW: u64 = 300;

const REGIONS: [&str; 6] = ["us-3", "us-4", "eu-3", "eu-4", "ap-3", "ap-4"];

impl Provider for Vonage {
    fn name(&self) -> &str {
        "vonage"
    }

    fn schema(&self) -> Schema {
        Schema {
            provider: "vonage".into(),
            fields: vec![
                FieldDef::public("api_key", false, Rule::Opaque),
                FieldDef::secret("api_secret", false, Rule::Opaque),
                FieldDef::public("application_id", false, Rule::Pattern("a lowercase UUID", uuid)),
                FieldDef::secret(
                    "private_key",
                    false,
                    Rule::Pattern("PEM with -----BEGIN PRIVATE KEY----- (PKCS#8, RSA)", |s| {
                        s.contains("-----BEGIN PRIVATE KEY-----")
                    }),
                ),
                FieldDef::secret("signature_secret", false, Rule::Opaque),
                FieldDef::secret("webhook_secret_previous", false, Rule::Opaque),
                FieldDef::public(
                    "region",
                    false,
                    Rule::Pattern("^(us-3|us-4|eu-3|eu-4|ap-3|ap-4)$", |s| REGIONS.contains(&s)),
                ),
            ],
            cross: Some(pairs),
        }
    }

    fn default_base_url(&self, region: &str) -> Url {
        if REGIONS.contains(&region) {
            literal_url(&format!("https://api-{region}.vonage.com"))
        } else {
            literal_url("https://api.nexmo.com")
        }
    }

    // `^([a-z0-9-]+\.)*(nexmo|vonage)\.com$` on 443: recording downloads and regional hosts.
    fn hosts(&self) -> Vec<HostRule> {
        vec![HostRule::Suffix(".nexmo.com"), HostRule::Suffix(".vonage.com")]
    }

    fn inject(&self, cred: &dyn FieldSource, path: &str, _: Option<&Secret>) -> Result<Injection, OutboundError> {
        // The JWT for the APIs that take it, else Basic; a credential with only one of the
        // pairs uses that one everywhere.
        let jwt_pair = cred.public_field("application_id").zip(cred.secret_field("private_key"));
        let basic_pair = cred.public_field("api_key").zip(cred.secret_field("api_secret"));
        match (jwt_pair, basic_pair) {
            (Some((app, key)), Some(_)) if uses_jwt(path) => application_jwt(app, key, crate::time::now_secs()),
            (_, Some((user, secret))) => basic(user, secret),
            (Some((app, key)), None) => application_jwt(app, key, crate::time::now_secs()),
            (None, None) => Err(OutboundError::MissingField("api_secret".into())),
        }
    }

    fn webhook_keys<'c>(&self, cred: &'c dyn FieldSource) -> Option<WebhookKeys<'c>> {
        cred.secret_field("signature_secret")?;
        Some(WebhookKeys::from_fields(cred, &["signature_secret", "webhook_secret_previous"], false))
    }

    fn verify(&self, d: &Delivery<'_>, k: &WebhookKeys<'_>) -> Result<Accepted, Reject> {
        verify(d, &k.keys).map(|(a, _)| a)
    }

    fn route_candidates(&self, d: &Delivery<'_>) -> Vec<(&'static str, String)> {
        // The claim is read unverified here; the tenant it names is checked after the MAC.
        let mut out = Vec::new();
        if let Some(app) = bearer_claims(d).and_then(|c| c["application_id"].as_str().map(str::to_string)) {
            out.push(("vonage-application", app));
        }
        if let Some(to) =
            serde_json::from_slice::<Value>(d.body).ok().and_then(|v| v["to"].as_str().map(str::to_string))
        {
            out.push(("vonage-number", to));
        }
        out
    }

    fn check_body_ids(&self, d: &Delivery<'_>, cred: &dyn FieldSource) -> Result<(), String> {
        let Some(claims) = bearer_claims(d) else { return Ok(()) };
        match (claims["api_key"].as_str(), cred.public_field("api_key")) {
            (Some(found), Some(own)) if found != own => {
                return Err(format!("the JWT's api_key {found} is not this tenant's"))
            }
            (None, _) => return Err("the JWT carries no api_key claim".into()),
            (Some(_), None) => return Err("this tenant's credential has no api_key to check the JWT's against".into()),
            _ => {}
        }
        match (claims["application_id"].as_str(), cred.public_field("application_id")) {
            (Some(found), Some(own)) if found != own => {
                Err(format!("the JWT's application_id {found} is not this tenant's"))
            }
            _ => Ok(()),
        }
    }

    fn check_path(&self, cred: &dyn FieldSource) -> Option<String> {
        // Relative to the credential's base URL: the Basic pair's balance lives on rest.nexmo.com,
        // which the live check reaches through `/account/get-balance` only when it is the base.
        if cred.public_field("application_id").is_some() {
            Some("/v1/calls?page_size=1".into())
        } else {
            Some("/account/get-balance".into())
        }
    }
}

fn uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
}

/// Each pair complete or absent, and at least one (§0 note 2).
fn pairs(p: &mut ParsedFields) -> Result<(), (Option<&'static str>, String)> {
    let basic = (p.has("api_key"), p.has("api_secret"));
    let jwt = (p.has("application_id"), p.has("private_key"));
    if basic.0 != basic.1 {
        let missing = if basic.0 { "api_secret" } else { "api_key" };
        return Err((Some(missing), "api_key and api_secret go together".into()));
    }
    if jwt.0 != jwt.1 {
        let missing = if jwt.0 { "private_key" } else { "application_id" };
        return Err((Some(missing), "application_id and private_key go together".into()));
    }
    if !basic.0 && !jwt.0 {
        return Err((None, "give api_key + api_secret, application_id + private_key, or both".into()));
    }
    if let Some(s) = p.secrets.get("signature_secret") {
        if s.expose().len() < 32 {
            p.warnings.push("vonage.signature_secret is under 32 characters".into());
        }
    }
    Ok(())
}

/// Voice, Messages, Verify v2 and the Conversation API take the application JWT (§5.1).
fn uses_jwt(path: &str) -> bool {
    ["/v1/calls", "/v1/messages", "/v2/verify", "/v1/conversations", "/v0.1/messages", "/v1/legs"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")) || path.starts_with(&format!("{p}?")))
}

/// A minted JWT is reused for this long, a short part of its 900 s lifetime: signing with
/// a 2048-bit key costs ~0.8 ms of CPU (measured, release build), more than the rest of a
/// proxied call, and Vonage bounds a token by its `exp`, not by its `jti`.
const JWT_REUSE: u64 = 60;
/// Tokens kept at most (one per application key); past it the cache starts over.
const MAX_MINTED: usize = 4096;

struct Minted {
    jwt: Zeroizing<String>,
    iat: u64,
}

/// Minted tokens by SHA-256 of application id and key, so a new key mints at once.
static MINTED: std::sync::Mutex<Option<std::collections::HashMap<[u8; 32], Minted>>> = std::sync::Mutex::new(None);

/// `{"alg":"RS256","typ":"JWT"}` · `{application_id, iat, jti, exp}` · RSASSA-PKCS1-v1_5-SHA256,
/// with a new jti (UUIDv4) for each token minted, reused for [`JWT_REUSE`] seconds.
pub(crate) fn application_jwt(app: &str, pem: &Secret, now: u64) -> Result<Injection, OutboundError> {
    let jwt = minted(app, pem, now)?;
    Ok(Injection {
        headers: vec![(http::header::AUTHORIZATION, sensitive_joined(&[b"Bearer ", jwt.as_bytes()])?)],
        scrub: vec![Zeroizing::new(pem.expose().as_bytes().to_vec()), Zeroizing::new(jwt.as_bytes().to_vec())],
        ..Injection::default()
    })
}

fn minted(app: &str, pem: &Secret, now: u64) -> Result<Zeroizing<String>, OutboundError> {
    let mut h = Sha256::new();
    h.update(app.as_bytes());
    h.update([0]);
    h.update(pem.expose().as_bytes());
    let id: [u8; 32] = h.finalize().into();
    let fresh = |m: &Minted| now >= m.iat && now < m.iat + JWT_REUSE;
    if let Some(jwt) = MINTED.lock().ok().and_then(|c| c.as_ref()?.get(&id).filter(|m| fresh(m)).map(|m| m.jwt.clone()))
    {
        return Ok(jwt);
    }
    let header = json!({"alg": "RS256", "typ": "JWT"});
    let claims = json!({"application_id": app, "iat": now, "jti": uuid_v4(), "exp": now + JWT_TTL});
    let jwt = super::rs256::sign(&header, &claims, pem)?;
    if let Ok(mut c) = MINTED.lock() {
        let c = c.get_or_insert_with(std::collections::HashMap::new);
        if c.len() >= MAX_MINTED {
            c.clear();
        }
        c.insert(id, Minted { jwt: jwt.clone(), iat: now });
    }
    Ok(jwt)
}

fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    // Without an entropy source the clock's nanoseconds still give a jti that differs per
    // token, which is all Vonage asks of it; the call is not refused for that.
    if getrandom::fill(&mut b).is_err() {
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        b = n.to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// The claims of the delivery's bearer JWT, unverified (routing and post-MAC checks only).
fn bearer_claims(d: &Delivery<'_>) -> Option<Value> {
    let a = d.headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("bearer "))?;
    let p2 = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p2).ok()?).ok()
}

fn b64url_part(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// The payload hash a GET delivery is signed over: its query parameters as a compact JSON
/// object in their received order (§5.2, UNCERTAIN: Vonage support's description).
fn get_payload(url: &str) -> Vec<u8> {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut out = String::from("{");
    for (i, (k, v)) in url::form_urlencoded::parse(q.as_bytes()).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(k.into_owned()).to_string());
        out.push(':');
        out.push_str(&Value::String(v.into_owned()).to_string());
    }
    out.push('}');
    out.into_bytes()
}

/// §5.2: HS256 only, the MAC over `p1.p2` under any key, then `payload_hash` = SHA-256 of
/// the body, then `iat` within ±300 s and `exp`/`nbf`. The JWT is not forwarded.
pub(crate) fn verify(d: &Delivery<'_>, keys: &[&[u8]]) -> Result<(Accepted, Value), Reject> {
    let a = single(d.headers, "authorization")?;
    let token = a
        .strip_prefix("Bearer ")
        .or_else(|| a.strip_prefix("bearer "))
        .ok_or_else(|| Reject::BadSignature("Authorization is not a Bearer JWT".into()))?;
    let parts: Vec<&str> = token.split('.').collect();
    let [p1, p2, p3] = parts[..] else {
        return Err(Reject::BadSignature("the JWT does not have three parts".into()));
    };
    if !(b64url_part(p1) && b64url_part(p2) && b64url_part(p3)) {
        return Err(Reject::BadSignature("the JWT is not base64url".into()));
    }
    let decode =
        |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| Reject::BadSignature("the JWT is not base64url".into()));
    let header: Value = serde_json::from_slice(&decode(p1)?).unwrap_or(Value::Null);
    if header["alg"] != "HS256" {
        return Err(Reject::BadSignature(format!("the JWT's alg is {}, not HS256", header["alg"])));
    }
    let sig = decode(p3)?;
    let signing_input = format!("{p1}.{p2}");
    if !keys.iter().fold(false, |ok, k| ok | ct_eq(&hmac_sha256(k, &[signing_input.as_bytes()]), &sig)) {
        return Err(Reject::BadSignature(format!("the JWT's HS256 signature matches none of {} keys", keys.len())));
    }
    let claims: Value = serde_json::from_slice(&decode(p2)?)
        .map_err(|_| Reject::BadSignature("the JWT's claims are not JSON".into()))?;
    let payload = if d.method.eq_ignore_ascii_case("GET") { get_payload(d.url) } else { d.body.to_vec() };
    let want = hex::encode(Sha256::digest(&payload));
    let hash = claims["payload_hash"].as_str().unwrap_or_default();
    if hash.len() != 64
        || !hash.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        || !ct_eq(hash.as_bytes(), want.as_bytes())
    {
        return Err(Reject::BadSignature("payload_hash is not the SHA-256 of the body".into()));
    }
    let iat = claims["iat"].as_u64().ok_or_else(|| Reject::BadSignature("the JWT has no integer iat".into()))?;
    if iat.abs_diff(d.now) > IAT_WINDOW {
        return Err(Reject::StaleTimestamp(format!(
            "iat {iat} is {} s from now; the window allows {IAT_WINDOW} s",
            iat.abs_diff(d.now)
        )));
    }
    if claims["exp"].as_u64().is_some_and(|exp| d.now >= exp) {
        return Err(Reject::StaleTimestamp("the JWT has expired (exp)".into()));
    }
    if claims["nbf"].as_u64().is_some_and(|nbf| d.now < nbf) {
        return Err(Reject::StaleTimestamp("the JWT is not valid yet (nbf)".into()));
    }
    let jti = claims["jti"].as_str().map(str::to_string);
    Ok((
        Accepted {
            replay_key: jti.as_ref().map(|j| format!("jti:{j}")),
            replay_keep: 2 * IAT_WINDOW + 300,
            event_id: jti,
            strip: vec!["authorization"],
        },
        claims,
    ))
}

/// For `fuzz/`: a signed-callback JWT made of arbitrary header and claims bytes (MACed with
/// the tenant's key when `mac` is set, so the fuzzer reaches the claim checks), verified
/// against `body` at `now`. Returns whether it was accepted, and panics if an accepted
/// token breaks what verification promises: HS256, the body's hash, `iat` in the window.
pub fn fuzz_callback_jwt(header: &[u8], claims: &[u8], body: &[u8], mac: bool, now: u64) -> bool {
    const KEY: &[u8] = b"fuzz-signature-secret";
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let sig = if mac { hmac_sha256(KEY, &[signing_input.as_bytes()]).to_vec() } else { claims.to_vec() };
    let Ok(auth) = http::HeaderValue::from_str(&format!("Bearer {signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    else {
        return false;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, auth);
    let d = Delivery { method: "POST", url: "https://hooks.test/webhooks/vonage", headers: &headers, body, now };
    let Ok((_, c)) = verify(&d, &[KEY]) else { return false };
    let h: Value = serde_json::from_slice(header).unwrap_or(Value::Null);
    assert!(mac && h["alg"] == "HS256", "accepted without the MAC or with another alg");
    assert_eq!(c["payload_hash"].as_str(), Some(hex::encode(Sha256::digest(body)).as_str()));
    assert!(c["iat"].as_u64().is_some_and(|iat| iat.abs_diff(now) <= IAT_WINDOW));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    const SECRET: &[u8] = b"vonage-signature-secret-0123456789ab";

    fn hs256(claims: &Value, key: &[u8], alg: &str) -> String {
        let p1 = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        let p2 = URL_SAFE_NO_PAD.encode(claims.to_string());
        let sig = hmac_sha256(key, &[format!("{p1}.{p2}").as_bytes()]);
        format!("{p1}.{p2}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn check(jwt: &str, body: &[u8], now: u64) -> Result<(Accepted, Value), Reject> {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_str(&format!("Bearer {jwt}")).unwrap());
        verify(&Delivery { method: "POST", url: "https://h/webhooks/vonage/acme", headers: &h, body, now }, &[SECRET])
    }

    #[test]
    fn the_claims_bind_the_body_and_the_time() {
        let body = br#"{"to":"447700900000","status":"answered"}"#;
        let hash = hex::encode(Sha256::digest(body));
        let claims =
            json!({"iat": 1700000000, "jti": "j-1", "iss": "Vonage", "payload_hash": hash, "api_key": "abc123"});
        let (ok, c) = check(&hs256(&claims, SECRET, "HS256"), body, 1_700_000_000).unwrap();
        assert_eq!((ok.event_id.as_deref(), c["api_key"].as_str()), (Some("j-1"), Some("abc123")));
        assert_eq!(ok.strip, vec!["authorization"]);
        assert!(check(&hs256(&claims, SECRET, "HS256"), body, 1_700_000_300).is_ok());
        assert_eq!(check(&hs256(&claims, SECRET, "HS256"), body, 1_700_000_301).unwrap_err().code(), "stale_timestamp");
        assert_eq!(check(&hs256(&claims, SECRET, "HS256"), b"{}", 1_700_000_000).unwrap_err().code(), "bad_signature");
        assert_eq!(check(&hs256(&claims, b"other", "HS256"), body, 1_700_000_000).unwrap_err().code(), "bad_signature");
        // alg none / RS256 are refused whatever the signature.
        assert_eq!(check(&hs256(&claims, SECRET, "none"), body, 1_700_000_000).unwrap_err().code(), "bad_signature");
        let no_hash = json!({"iat": 1700000000, "jti": "j-2"});
        assert_eq!(check(&hs256(&no_hash, SECRET, "HS256"), body, 1_700_000_000).unwrap_err().code(), "bad_signature");
        let expired = json!({"iat": 1700000000, "exp": 1700000000, "payload_hash": hash});
        assert_eq!(
            check(&hs256(&expired, SECRET, "HS256"), body, 1_700_000_000).unwrap_err().code(),
            "stale_timestamp"
        );
    }

    #[test]
    fn voice_messages_verify_and_conversations_take_the_jwt_the_rest_basic() {
        for p in ["/v1/calls", "/v1/calls/abc/talk", "/v1/messages", "/v2/verify/x", "/v1/conversations?x=1"] {
            assert!(uses_jwt(p), "{p}");
        }
        for p in ["/account/get-balance", "/v2/applications", "/v1/callsx", "/number/search"] {
            assert!(!uses_jwt(p), "{p}");
        }
        assert!(uuid("0f9ab8c2-7e1d-4c3b-9a5f-1234567890ab") && !uuid("0F9AB8C2-7E1D-4C3B-9A5F-1234567890AB"));
        let u = uuid_v4();
        assert!(uuid(&u) && u.as_bytes()[14] == b'4', "{u}");
    }
}
