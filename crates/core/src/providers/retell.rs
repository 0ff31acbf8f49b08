//! Retell AI (PROVIDERS-2.md §0, §2): API key as a bearer token; every Retell → server
//! request signed `x-retell-signature: v=<unix ms>,d=<hex HMAC-SHA256(body ‖ ms)>` with the
//! API key that carries the dashboard's webhook badge; agents and numbers as routes.

use serde_json::Value;
use url::Url;

use super::discovery::{Listing, Page};
use super::fields::{FieldDef, Rule, Schema};
use super::inbound::{ct_eq, hmac_sha256, lower_hex, single, Accepted, Delivery, Reject};
use super::outbound::{bearer, exact, literal_url, FieldSource, HostRule, Injection, OutboundError};
use super::{Provider, WebhookKeys};
use crate::secret::Secret;

/// The Retell rules.
#[derive(Debug)]
pub(crate) struct Retell;

/// ±5 minutes, in milliseconds (the SDK's window; edges pass).
const WINDOW_MS: u64 = 300_000;

impl Provider for Retell {
    fn name(&self) -> &str {
        "retell"
    }

    fn schema(&self) -> Schema {
        Schema {
            provider: "retell".into(),
            fields: vec![
                FieldDef::secret("api_key", true, Rule::Opaque),
                FieldDef::secret("webhook_secret", false, Rule::Opaque),
                FieldDef::secret("webhook_secret_previous", false, Rule::Opaque),
                FieldDef::public("org_id", false, Rule::Opaque),
            ],
            cross: None,
        }
    }

    fn default_base_url(&self, _region: &str) -> Url {
        literal_url("https://api.retellai.com")
    }

    fn hosts(&self) -> Vec<HostRule> {
        vec![exact("api.retellai.com")]
    }

    fn injection_per_credential(&self) -> bool {
        true
    }

    fn inject(&self, cred: &dyn FieldSource, _path: &str, _: Option<&Secret>) -> Result<Injection, OutboundError> {
        bearer(cred, "api_key")
    }

    // The webhook key is the API key itself unless another key carries the badge (§2.2).
    fn webhook_keys<'c>(&self, cred: &'c dyn FieldSource) -> Option<WebhookKeys<'c>> {
        let current = if cred.secret_field("webhook_secret").is_some() { "webhook_secret" } else { "api_key" };
        cred.secret_field(current)?;
        Some(WebhookKeys::from_fields(cred, &[current, "webhook_secret_previous"], false))
    }

    fn verify(&self, d: &Delivery<'_>, k: &WebhookKeys<'_>) -> Result<Accepted, Reject> {
        verify(d, &k.keys)
    }

    fn route_candidates(&self, d: &Delivery<'_>) -> Vec<(&'static str, String)> {
        route_ids(d.body)
    }

    fn check_path(&self, _cred: &dyn FieldSource) -> Option<String> {
        Some("/get-api-key-info".into())
    }

    fn discovery(&self, _cred: &dyn FieldSource) -> (Vec<(&'static str, String)>, Vec<Listing>) {
        let agents = Listing { label: AGENTS.into(), first: AGENTS.into(), read: agents_page };
        let numbers = Listing { label: NUMBERS.into(), first: NUMBERS.into(), read: numbers_page };
        (Vec::new(), vec![agents, numbers])
    }
}

/// `v=<digits>,d=<64 lowercase hex>` exactly, as retell-sdk 6.2.13 requires (§10 row 1).
fn parse(h: &str) -> Option<(&str, Vec<u8>)> {
    let (v, d) = h.split_once(',')?;
    let ms = v.strip_prefix("v=")?;
    let hex = d.strip_prefix("d=")?;
    if ms.is_empty() || ms.len() > 19 || !ms.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((ms, lower_hex(hex, 32)?))
}

/// The MAC first, then the millisecond window (§10 row 2: forgeries read `bad_signature`).
/// `d.now` has whole seconds: the window is measured from its start.
pub(crate) fn verify(d: &Delivery<'_>, keys: &[&[u8]]) -> Result<Accepted, Reject> {
    let h = single(d.headers, "x-retell-signature")?;
    let (ms_s, mac) = parse(h)
        .ok_or_else(|| Reject::BadSignature("x-retell-signature must be v=<unix ms>,d=<64 lowercase hex>".into()))?;
    let ok = keys.iter().fold(false, |ok, k| ok | ct_eq(&hmac_sha256(k, &[d.body, ms_s.as_bytes()]), &mac));
    if !ok {
        return Err(Reject::BadSignature(format!("the signature matches none of {} keys", keys.len())));
    }
    let ms: u64 = ms_s.parse().map_err(|_| Reject::BadSignature("the timestamp is out of range".into()))?;
    let now_ms = d.now.saturating_mul(1000);
    if ms.abs_diff(now_ms) > WINDOW_MS {
        return Err(Reject::StaleTimestamp(format!(
            "timestamp {ms} ms is {} ms from now; the window allows {WINDOW_MS} ms",
            ms.abs_diff(now_ms)
        )));
    }
    let v: Value = serde_json::from_slice(d.body).unwrap_or(Value::Null);
    let call_id = v["call"]["call_id"].as_str();
    let event = v["event"].as_str();
    let hex = &h[h.len() - 64..];
    Ok(Accepted {
        replay_key: Some(format!("{ms_s}:{hex}")),
        // The window both ways, and a margin for clock steps.
        replay_keep: 2 * WINDOW_MS / 1000 + 300,
        event_id: Some(match (call_id, event) {
            (Some(c), Some(e)) => format!("{c}:{e}"),
            _ => hex.to_string(),
        }),
        strip: vec![],
    })
}

/// `retell-agent` and `retell-number` ids a delivery names (§2.2 routes).
fn route_ids(body: &[u8]) -> Vec<(&'static str, String)> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut out = Vec::new();
    let agent =
        v["call"]["agent_id"].as_str().or(v["call_inbound"]["agent_id"].as_str()).or(v["chat"]["agent_id"].as_str());
    if let Some(a) = agent {
        out.push(("retell-agent", a.to_string()));
    }
    let number = v["call_inbound"]["to_number"].as_str().or_else(|| match v["call"]["direction"].as_str() {
        Some("inbound") => v["call"]["to_number"].as_str(),
        Some("outbound") => v["call"]["from_number"].as_str(),
        _ => None,
    });
    if let Some(n) = number {
        out.push(("retell-number", n.to_string()));
    }
    out
}

/// One page of a v2 listing (retell-sdk 6.2.13 `agent.list`, `phone_number.list`):
/// `{"items":[…],"has_more":…,"pagination_key":…}`; the next page follows the key.
fn list_of(body: &[u8], first: &str, field: &str, kind: &'static str) -> Result<Page, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "not JSON".to_string())?;
    let items = v["items"].as_array().ok_or_else(|| "no items list".to_string())?;
    let found = items.iter().filter_map(|x| x[field].as_str()).map(|id| (kind, id.to_string())).collect();
    let key = v["pagination_key"].as_str().filter(|_| v["has_more"].as_bool() == Some(true));
    let next = key.map(|k| {
        format!("{first}?pagination_key={}", url::form_urlencoded::byte_serialize(k.as_bytes()).collect::<String>())
    });
    Ok(Page { found, next })
}

const AGENTS: &str = "/v2/list-agents";
const NUMBERS: &str = "/v2/list-phone-numbers";

fn agents_page(body: &[u8]) -> Result<Page, String> {
    list_of(body, AGENTS, "agent_id", "retell-agent")
}

fn numbers_page(body: &[u8]) -> Result<Page, String> {
    list_of(body, NUMBERS, "phone_number", "retell-number")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    const KEY: &[u8] = b"key_test_retell";

    fn signed(body: &[u8], ms: &str, key: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        let mac = hex::encode(hmac_sha256(key, &[body, ms.as_bytes()]));
        h.insert("x-retell-signature", HeaderValue::from_str(&format!("v={ms},d={mac}")).unwrap());
        h
    }

    fn check(h: &HeaderMap, body: &[u8], now: u64) -> Result<Accepted, Reject> {
        verify(&Delivery { method: "POST", url: "", headers: h, body, now }, &[KEY])
    }

    #[test]
    fn the_mac_covers_body_then_milliseconds_and_the_window_is_in_milliseconds() {
        let body = br#"{"event":"call_started","call":{"call_id":"c1","agent_id":"ag1"}}"#;
        let ms = "1700000000000";
        let ok = check(&signed(body, ms, KEY), body, 1_700_000_000).unwrap();
        assert_eq!(ok.event_id.as_deref(), Some("c1:call_started"));
        // Edges pass, one millisecond beyond is stale.
        assert!(check(&signed(body, "1700000300000", KEY), body, 1_700_000_000).is_ok());
        assert!(check(&signed(body, "1699999700000", KEY), body, 1_700_000_000).is_ok());
        assert_eq!(
            check(&signed(body, "1700000300001", KEY), body, 1_700_000_000).unwrap_err().code(),
            "stale_timestamp"
        );
        // A forgery is bad_signature even when stale.
        assert_eq!(check(&signed(body, "1", b"other"), body, 1_700_000_000).unwrap_err().code(), "bad_signature");
        // Re-serialised JSON does not verify.
        let spaced = br#"{"event": "call_started","call":{"call_id":"c1","agent_id":"ag1"}}"#;
        assert_eq!(check(&signed(body, ms, KEY), spaced, 1_700_000_000).unwrap_err().code(), "bad_signature");
    }

    #[test]
    fn only_the_sdk_header_shape_is_accepted() {
        let body = b"{}";
        let good = signed(body, "1700000000000", KEY);
        let mac = good["x-retell-signature"].to_str().unwrap().split_once(",d=").unwrap().1.to_string();
        for bad in [
            format!("d={mac},v=1700000000000"),
            format!("v=1700000000000,d={}", mac.to_uppercase()),
            format!("v=1700000000000,d={mac},x=1"),
            format!("v=-1,d={mac}"),
            format!("v=1700000000000, d={mac}"),
            "v=1700000000000".to_string(),
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-retell-signature", HeaderValue::from_str(&bad).unwrap());
            assert_eq!(check(&h, body, 1_700_000_000).unwrap_err().code(), "bad_signature", "{bad}");
        }
    }

    #[test]
    fn the_api_key_is_the_webhook_key_unless_a_webhook_secret_is_set() {
        use super::super::outbound::tests::fields;
        let only_key = fields(&[("api_key", "k1")], &[]);
        assert_eq!(Retell.webhook_keys(&only_key).unwrap().keys, vec![&b"k1"[..]]);
        let both = fields(&[("api_key", "k1"), ("webhook_secret", "k2"), ("webhook_secret_previous", "k0")], &[]);
        assert_eq!(Retell.webhook_keys(&both).unwrap().keys, vec![&b"k2"[..], &b"k0"[..]]);
    }

    #[test]
    fn routes_come_from_the_call_the_inbound_call_or_the_chat() {
        let out = route_ids(br#"{"event":"call_ended","call":{"agent_id":"a1","direction":"outbound","from_number":"+1555","to_number":"+1666"}}"#);
        assert_eq!(out, vec![("retell-agent", "a1".to_string()), ("retell-number", "+1555".to_string())]);
        let inbound = route_ids(br#"{"event":"call_inbound","call_inbound":{"from_number":"+1","to_number":"+1777"}}"#);
        assert_eq!(inbound, vec![("retell-number", "+1777".to_string())]);
        assert_eq!(route_ids(br#"{"chat":{"agent_id":"a2"}}"#), vec![("retell-agent", "a2".to_string())]);
        assert!(route_ids(b"not json").is_empty());
    }

    #[test]
    fn discovery_follows_the_pagination_key_while_has_more() {
        let more = agents_page(br#"{"items":[{"agent_id":"a1"}],"has_more":true,"pagination_key":"k 1"}"#).unwrap();
        assert_eq!(more.found, vec![("retell-agent", "a1".to_string())]);
        assert_eq!(more.next.as_deref(), Some("/v2/list-agents?pagination_key=k+1"));
        let last =
            numbers_page(br#"{"items":[{"phone_number":"+1555"}],"has_more":false,"pagination_key":"x"}"#).unwrap();
        assert_eq!((last.found, last.next), (vec![("retell-number", "+1555".to_string())], None));
        assert!(agents_page(b"[]").is_err());
    }
}
