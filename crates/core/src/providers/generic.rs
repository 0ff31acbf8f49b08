//! Generic providers declared in config (`[providers.<name>]`): schema from `fields` /
//! `public_fields` (fields the inject template references are required), injection by
//! template, webhooks by one of the generic schemes, live checks by `verify_path`.

use url::Url;

use super::fields::{FieldDef, Rule, Schema};
use super::inbound::{standard_webhooks, stripe_style, Accepted, Delivery, Reject, StripeStyle};
use super::outbound::{exact, generic, url_host_rule, FieldSource, HostRule, Injection, OutboundError};
use super::{Provider, WebhookKeys};
use crate::providers::config::{template_fields, GenericProvider, InjectTemplate, WebhookScheme};
use crate::secret::Secret;

/// A provider declared in config.
#[derive(Debug)]
pub(crate) struct Generic {
    name: String,
    cfg: GenericProvider,
}

impl Generic {
    pub(crate) fn new(name: &str, cfg: GenericProvider) -> Self {
        Generic { name: name.to_string(), cfg }
    }
}

impl Provider for Generic {
    fn name(&self) -> &str {
        &self.name
    }

    fn schema(&self) -> Schema {
        schema(&self.name, &self.cfg)
    }

    fn default_base_url(&self, _region: &str) -> Url {
        self.cfg.base_url.clone()
    }

    // The base URL's host and port, then every listed host (on 443).
    fn hosts(&self) -> Vec<HostRule> {
        let mut rules: Vec<HostRule> = url_host_rule(&self.cfg.base_url).into_iter().collect();
        rules.extend(self.cfg.hosts.iter().map(|h| exact(h)));
        rules
    }

    fn injection_per_credential(&self) -> bool {
        true
    }

    fn inject(&self, cred: &dyn FieldSource, _path: &str, _: Option<&Secret>) -> Result<Injection, OutboundError> {
        generic(cred, &self.cfg.inject)
    }

    fn has_webhooks(&self) -> bool {
        self.cfg.webhook.is_some()
    }

    fn verify(&self, d: &Delivery<'_>, k: &WebhookKeys<'_>) -> Result<Accepted, Reject> {
        match &self.cfg.webhook {
            Some(WebhookScheme::StandardWebhooks { tolerance }) => standard_webhooks(d, &k.keys, tolerance.as_secs()),
            Some(WebhookScheme::Stripe { header, tolerance }) => {
                let t = tolerance.as_secs();
                stripe_style(d, &k.keys, StripeStyle { header, label: "v1", past: t, future: t })
            }
            None => Err(Reject::BadSignature(format!("provider {} has no webhook scheme configured", self.name))),
        }
    }

    fn check_path(&self, _cred: &dyn FieldSource) -> Option<String> {
        self.cfg.verify_path.clone()
    }
}

fn schema(name: &str, g: &GenericProvider) -> Schema {
    let templates: Vec<&str> = match &g.inject {
        InjectTemplate::Header { value, .. } | InjectTemplate::Query { value, .. } => vec![value],
        InjectTemplate::Basic { user, password } => vec![user, password],
    };
    let required: Vec<&str> = templates.iter().flat_map(|t| template_fields(t).unwrap_or_default()).collect();
    let mut fields: Vec<FieldDef> = g
        .fields
        .iter()
        .map(|f| FieldDef {
            name: f.clone(),
            secret: !g.public_fields.contains(f),
            required: required.contains(&f.as_str()),
            list: false,
            rule: Rule::Opaque,
        })
        .collect();
    if g.fields.iter().any(|f| f == "webhook_secret") && !g.fields.iter().any(|f| f == "webhook_secret_previous") {
        fields.push(FieldDef::secret("webhook_secret_previous", false, Rule::Opaque));
    }
    Schema { provider: name.to_string(), fields, cross: None }
}
