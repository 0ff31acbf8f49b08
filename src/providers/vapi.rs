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
