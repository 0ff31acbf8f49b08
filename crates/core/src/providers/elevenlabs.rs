//! ElevenLabs: credential schema (PROVIDERS.md §0, §6).

use super::fields::{one_of, FieldDef, Rule, Schema};

pub(crate) fn schema() -> Schema {
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
