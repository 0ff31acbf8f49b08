//! OpenAI (PROVIDERS-2.md §0, §8): API key as a bearer token plus the organisation and
//! project headers when the credential names them, on REST calls and Realtime WebSocket
//! upgrades alike; webhooks signed with Standard Webhooks and a `whsec_` key.

use http::HeaderName;
use url::Url;

use super::fields::{one_of, FieldDef, ParsedFields, Rule, Schema};
use super::inbound::{standard_webhooks, Accepted, Delivery, Reject};
use super::outbound::{bearer, exact, literal_url, FieldSource, HostRule, Injection, OutboundError};
use super::resend::whsec;
use super::{Provider, WebhookKeys};
use crate::secret::Secret;

/// The OpenAI rules.
#[derive(Debug)]
pub(crate) struct OpenAi;

const US: &str = "https://api.openai.com/v1";
// EU data-residency projects (not in the SDK; PROVIDERS-2.md §8.1 marks it UNCERTAIN).
const EU: &str = "https://eu.api.openai.com/v1";

impl Provider for OpenAi {
    fn name(&self) -> &str {
        "openai"
    }

    fn schema(&self) -> Schema {
        schema()
    }

    fn default_base_url(&self, region: &str) -> Url {
        literal_url(if region == "eu" { EU } else { US })
    }

    fn hosts(&self) -> Vec<HostRule> {
        vec![exact("api.openai.com"), exact("eu.api.openai.com")]
    }

    // The EU host takes a key only when the credential says it belongs there (§8.1,
    // keyward choice), and an EU key never goes to the US host.
    fn region_bound(&self) -> bool {
        true
    }

    fn injection_per_credential(&self) -> bool {
        true
    }

    fn inject(&self, cred: &dyn FieldSource, _path: &str, _: Option<&Secret>) -> Result<Injection, OutboundError> {
        let mut inj = bearer(cred, "api_key")?;
        for (field, header) in [("organization", "openai-organization"), ("project", "openai-project")] {
            if let Some(v) = cred.public_field(field) {
                let value = http::HeaderValue::from_str(v).map_err(|_| OutboundError::MissingField(field.into()))?;
                inj.headers.push((HeaderName::from_static(header), value));
            }
        }
        Ok(inj)
    }

    fn verify(&self, d: &Delivery<'_>, k: &WebhookKeys<'_>) -> Result<Accepted, Reject> {
        // `webhook-*` names, `v1,` entries only, ±300 s (§8.2; §10 rows 11–13).
        standard_webhooks(d, &k.keys, 300)
    }

    fn check_path(&self, _cred: &dyn FieldSource) -> Option<String> {
        Some("/models".into())
    }

    // A restricted key may answer 403 on /models and still be a working key (§8.1).
    fn check_passes_anyway(&self, status: u16, _body: &[u8]) -> bool {
        status == 403
    }
}

fn org(s: &str) -> bool {
    s.strip_prefix("org-").is_some_and(|r| !r.is_empty() && r.bytes().all(|c| c.is_ascii_alphanumeric()))
}

fn project(s: &str) -> bool {
    s.strip_prefix("proj_").is_some_and(|r| !r.is_empty() && r.bytes().all(|c| c.is_ascii_alphanumeric()))
}

fn remarks(p: &mut ParsedFields) -> Result<(), (Option<&'static str>, String)> {
    if p.secrets.get("api_key").is_some_and(|k| !k.expose().starts_with("sk-")) {
        p.warnings.push("openai.api_key does not start with sk-; check it is an OpenAI API key".into());
    }
    Ok(())
}

fn schema() -> Schema {
    // keyward choice: the `whsec_` prefix is required for OpenAI (§0, §10 row 12).
    let whsec_rule = Rule::Pattern("^whsec_[A-Za-z0-9+/]+={0,2}$ (strict base64 after the prefix)", whsec);
    Schema {
        provider: "openai".into(),
        fields: vec![
            FieldDef::secret("api_key", true, Rule::Opaque),
            FieldDef::public("organization", false, Rule::Pattern("^org-[A-Za-z0-9]+$", org)),
            FieldDef::public("project", false, Rule::Pattern("^proj_[A-Za-z0-9]+$", project)),
            FieldDef::public("region", false, Rule::Pattern("^(us|eu)$", |s| one_of(s, &["us", "eu"]))),
            FieldDef::secret("webhook_secret", false, whsec_rule),
            FieldDef::secret("webhook_secret_previous", false, whsec_rule),
        ],
        cross: Some(remarks),
    }
}

#[cfg(test)]
mod tests {
    use super::super::outbound::tests::fields;
    use super::*;
    use serde_json::json;

    #[test]
    fn the_key_goes_with_the_organisation_and_project_headers_when_set() {
        let bare = OpenAi.inject(&fields(&[("api_key", "sk-proj-abc")], &[]), "/models", None).unwrap();
        let names: Vec<&str> = bare.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["authorization"]);
        let full = OpenAi
            .inject(
                &fields(&[("api_key", "sk-proj-abc")], &[("organization", "org-A1"), ("project", "proj_B2")]),
                "/models",
                None,
            )
            .unwrap();
        let got: Vec<(&str, &[u8])> = full.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        assert_eq!(
            got,
            [
                ("authorization", &b"Bearer sk-proj-abc"[..]),
                ("openai-organization", &b"org-A1"[..]),
                ("openai-project", &b"proj_B2"[..])
            ]
        );
    }

    #[test]
    fn fields_are_validated_and_webhook_secrets_need_the_prefix() {
        assert!(schema().parse(json!({"api_key": "sk-1", "organization": "org-abc", "project": "proj_x1"})).is_ok());
        for bad in [
            json!({"api_key": "sk-1", "organization": "abc"}),
            json!({"api_key": "sk-1", "project": "proj-x"}),
            json!({"api_key": "sk-1", "webhook_secret": "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}),
            json!({"api_key": "sk-1", "region": "ap"}),
        ] {
            assert!(schema().parse(bad.clone()).is_err(), "{bad}");
        }
        let p = schema().parse(json!({"api_key": "key-1"})).unwrap();
        assert_eq!(p.warnings.len(), 1);
    }
}
