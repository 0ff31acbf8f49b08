//! ElevenLabs (PROVIDERS.md §0, §6): API key in `xi-api-key`, region-aware hosts (data
//! residency); webhooks signed Stripe-style (`t=…,v0=…`); conversational agents listed for
//! discovery.

use http::HeaderName;
use serde_json::Value;
use url::Url;
use zeroize::Zeroizing;

use super::discovery::{Listing, Page};
use super::fields::{one_of, FieldDef, Rule, Schema};
use super::inbound::{stripe_style, Accepted, Delivery, Reject, StripeStyle};
use super::outbound::{
    exact, literal_url, need, sensitive, url_host_rule, FieldSource, HostRule, Injection, OutboundError,
};
use super::{Provider, WebhookKeys};
use crate::secret::Secret;

/// The ElevenLabs rules.
#[derive(Debug)]
pub(crate) struct ElevenLabs;

const REGIONS: [(&str, &str); 4] = [
    ("us", "https://api.elevenlabs.io"),
    ("eu", "https://api.eu.residency.elevenlabs.io"),
    ("in", "https://api.in.residency.elevenlabs.io"),
    ("sg", "https://api.sg.residency.elevenlabs.io"),
];

impl Provider for ElevenLabs {
    fn name(&self) -> &str {
        "elevenlabs"
    }

    fn schema(&self) -> Schema {
        Schema {
            provider: "elevenlabs".into(),
            fields: vec![
                FieldDef::secret("api_key", true, Rule::Opaque),
                FieldDef::secret("webhook_secret", false, Rule::Opaque),
                FieldDef::secret("webhook_secret_previous", false, Rule::Opaque),
                FieldDef::public(
                    "region",
                    false,
                    Rule::Pattern("^(us|eu|in|sg)$", |s| one_of(s, &["us", "eu", "in", "sg"])),
                ),
            ],
            cross: None,
        }
    }

    fn default_base_url(&self, region: &str) -> Url {
        literal_url(REGIONS.iter().find(|(r, _)| *r == region).map_or(REGIONS[0].1, |(_, u)| u))
    }

    fn hosts(&self) -> Vec<HostRule> {
        let mut rules: Vec<HostRule> =
            REGIONS.iter().filter_map(|(_, u)| Url::parse(u).ok()).filter_map(|u| url_host_rule(&u)).collect();
        rules.push(exact("api.us.elevenlabs.io"));
        rules
    }

    fn injection_per_credential(&self) -> bool {
        true
    }

    fn inject(&self, cred: &dyn FieldSource, _path: &str, _: Option<&Secret>) -> Result<Injection, OutboundError> {
        let key = need(cred, "api_key")?;
        Ok(Injection {
            headers: vec![(HeaderName::from_static("xi-api-key"), sensitive(key.expose().as_bytes())?)],
            scrub: vec![Zeroizing::new(key.expose().as_bytes().to_vec())],
            ..Injection::default()
        })
    }

    fn verify(&self, d: &Delivery<'_>, k: &WebhookKeys<'_>) -> Result<Accepted, Reject> {
        stripe_style(d, &k.keys, StripeStyle { header: "elevenlabs-signature", label: "v0", past: 1800, future: 300 })
    }

    fn route_candidates(&self, d: &Delivery<'_>) -> Vec<(&'static str, String)> {
        serde_json::from_slice::<Value>(d.body)
            .ok()
            .and_then(|v| v["data"]["agent_id"].as_str().map(|s| ("elevenlabs-agent", s.to_string())))
            .into_iter()
            .collect()
    }

    fn check_path(&self, _cred: &dyn FieldSource) -> Option<String> {
        Some("/v1/user".into())
    }

    fn discovery(&self, _cred: &dyn FieldSource) -> (Vec<(&'static str, String)>, Vec<Listing>) {
        let agents = Listing { label: "agents".into(), first: AGENTS.into(), read: agents_page };
        (Vec::new(), vec![agents])
    }
}

const AGENTS: &str = "/v1/convai/agents?page_size=100";

/// One page of agents; the next page follows `next_cursor` while `has_more`.
fn agents_page(body: &[u8]) -> Result<Page, String> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let found = v["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["agent_id"].as_str())
        .map(|id| ("elevenlabs-agent", id.to_string()))
        .collect();
    let cursor = v["next_cursor"].as_str().filter(|_| v["has_more"].as_bool() == Some(true));
    let next = cursor
        .map(|c| format!("{AGENTS}&cursor={}", url::form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>()));
    Ok(Page { found, next })
}
