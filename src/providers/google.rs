//! Google: credential schema (PROVIDERS.md §0, §4).

use super::fields::{FieldDef, ParsedFields, Rule, Schema};
use crate::store::CredStatus;

fn channel_token(s: &str) -> bool {
    (22..=64).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

fn scope(s: &str) -> bool {
    !s.chars().any(char::is_whitespace)
}

fn status(p: &mut ParsedFields) -> Result<(), (Option<&'static str>, String)> {
    if !p.has("refresh_token") {
        // Stored, but unusable until the connect flow adds a refresh token (keyward choice).
        p.status = Some(CredStatus::Inactive);
        p.warnings.push(
            "google: no refresh_token yet; the credential stays inactive until the connect flow completes".into(),
        );
    }
    Ok(())
}

pub(crate) fn schema() -> Schema {
    Schema {
        provider: "google".into(),
        fields: vec![
            FieldDef::public("client_id", true, Rule::Opaque),
            FieldDef::secret("client_secret", true, Rule::Opaque),
            FieldDef::secret("refresh_token", false, Rule::Opaque),
            FieldDef::public_list("scopes", true, Rule::Pattern("a scope without spaces", scope)),
            FieldDef::secret("webhook_secret", false, Rule::Pattern("^[A-Za-z0-9_-]{22,64}$", channel_token)),
            FieldDef::secret("webhook_secret_previous", false, Rule::Pattern("^[A-Za-z0-9_-]{22,64}$", channel_token)),
        ],
        cross: Some(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn without_a_refresh_token_the_credential_starts_inactive() {
        let p = schema()
            .parse(json!({"client_id": "x.apps.googleusercontent.com", "client_secret": "s", "scopes": ["https://www.googleapis.com/auth/calendar"]}))
            .unwrap();
        assert_eq!(p.status, Some(CredStatus::Inactive));
    }

    #[test]
    fn scopes_must_be_a_non_empty_list_without_spaces() {
        let base = json!({"client_id": "x", "client_secret": "s", "refresh_token": "1//r"});
        let mut empty = base.clone();
        empty["scopes"] = json!([]);
        assert!(schema().parse(empty).is_err());
        let mut spaced = base;
        spaced["scopes"] = json!(["a b"]);
        assert!(schema().parse(spaced).is_err());
    }
}
