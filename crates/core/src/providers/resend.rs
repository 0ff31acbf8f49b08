//! Resend (PROVIDERS.md §0, §5): API key as a bearer token; webhooks signed with Standard
//! Webhooks (svix) and a `whsec_` key.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use url::Url;
use zeroize::Zeroizing;

use super::fields::{FieldDef, ParsedFields, Rule, Schema};
use super::inbound::{standard_webhooks, Accepted, Delivery, Reject};
use super::outbound::{bearer, exact, literal_url, FieldSource, HostRule, Injection, OutboundError};
use super::{Provider, WebhookKeys};
use crate::secret::Secret;

/// The Resend rules.
#[derive(Debug)]
pub(crate) struct Resend;

impl Provider for Resend {
    fn name(&self) -> &str {
        "resend"
    }

    fn schema(&self) -> Schema {
        schema()
    }

    fn default_base_url(&self, _region: &str) -> Url {
        literal_url("https://api.resend.com")
    }

    fn hosts(&self) -> Vec<HostRule> {
        vec![exact("api.resend.com")]
    }

    fn injection_per_credential(&self) -> bool {
        true
    }

    fn inject(&self, cred: &dyn FieldSource, _path: &str, _: Option<&Secret>) -> Result<Injection, OutboundError> {
        bearer(cred, "api_key")
    }

    fn verify(&self, d: &Delivery<'_>, k: &WebhookKeys<'_>) -> Result<Accepted, Reject> {
        standard_webhooks(d, &k.keys, 300)
    }

    fn check_path(&self, _cred: &dyn FieldSource) -> Option<String> {
        Some("/domains".into())
    }

    // A sending-only key cannot list domains but is a valid key (PROVIDERS.md §5.1).
    fn check_passes_anyway(&self, status: u16, body: &[u8]) -> bool {
        status == 401 && String::from_utf8_lossy(body).contains("restricted_api_key")
    }
}

/// Standard alphabet, padding optional but canonical: how `whsec_` keys are decoded.
pub(crate) const WHSEC_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub(crate) fn whsec(s: &str) -> bool {
    let Some(b) = s.strip_prefix("whsec_") else {
        return false;
    };
    let body = b.trim_end_matches('=');
    b.len() - body.len() <= 2
        && !body.is_empty()
        && body.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
        && WHSEC_B64.decode(b).map(Zeroizing::new).is_ok()
}

fn remarks(p: &mut ParsedFields) -> Result<(), (Option<&'static str>, String)> {
    if p.secrets.get("api_key").is_some_and(|k| !k.expose().starts_with("re_")) {
        p.warnings.push("resend.api_key does not start with re_; check it is a Resend API key".into());
    }
    for f in ["webhook_secret", "webhook_secret_previous"] {
        if let Some(s) = p.secrets.get(f) {
            // Decoded into memory wiped on drop: the decoded bytes are the secret itself.
            let len = s
                .expose()
                .strip_prefix("whsec_")
                .and_then(|b| WHSEC_B64.decode(b).ok().map(Zeroizing::new))
                .map_or(0, |k| k.len());
            if len < 24 {
                p.warnings.push(format!("resend.{f} decodes to {len} bytes; Standard Webhooks asks for at least 24"));
            }
        }
    }
    Ok(())
}

fn schema() -> Schema {
    let pattern = Rule::Pattern("^whsec_[A-Za-z0-9+/]+={0,2}$ (strict base64 after the prefix)", whsec);
    Schema {
        provider: "resend".into(),
        fields: vec![
            FieldDef::secret("api_key", true, Rule::Opaque),
            FieldDef::secret("webhook_secret", false, pattern),
            FieldDef::secret("webhook_secret_previous", false, pattern),
        ],
        cross: Some(remarks),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whsec_keys_must_be_strict_base64() {
        assert!(whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        assert!(!whsec("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        assert!(!whsec("whsec_MfKQ9r8G!YqrTwjUPD8ILPZIo2LaLaSw"));
        assert!(!whsec("whsec_"));
        assert!(!whsec("whsec_a==="));
    }

    #[test]
    fn a_key_without_re_prefix_is_accepted_with_a_warning() {
        let p = schema().parse(json!({"api_key": "not-a-resend-key"})).unwrap();
        assert_eq!(p.warnings.len(), 1);
        let p = schema().parse(json!({"api_key": "re_123", "webhook_secret": "whsec_AAAA"})).unwrap();
        assert!(p.warnings.iter().any(|w| w.contains("3 bytes")), "{:?}", p.warnings);
    }
}
