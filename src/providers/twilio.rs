//! Twilio: credential schema (PROVIDERS.md §0, §3).

use super::fields::{prefixed_hex, FieldDef, ParsedFields, Rule, Schema};

fn phone(s: &str) -> bool {
    let n = s.strip_prefix("whatsapp:").unwrap_or(s);
    let Some(digits) = n.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len()) && digits.bytes().all(|c| c.is_ascii_digit()) && !digits.starts_with('0')
}

fn pairs(p: &mut ParsedFields) -> Result<(), (Option<&'static str>, String)> {
    let sid = p.has("api_key_sid");
    let secret = p.has("api_key_secret");
    if sid != secret {
        let missing = if sid { "api_key_secret" } else { "api_key_sid" };
        return Err((
            Some(missing),
            "is required with api_key_sid/api_key_secret: they come together or not at all".into(),
        ));
    }
    if !p.has("auth_token") && !sid {
        return Err((
            None,
            "needs at least one complete pair: account_sid + auth_token, or api_key_sid + api_key_secret".into(),
        ));
    }
    if !p.has("auth_token") {
        p.warnings.push("twilio: without auth_token, webhooks for this tenant cannot be verified".into());
    }
    Ok(())
}

pub(crate) fn schema() -> Schema {
    Schema {
        provider: "twilio".into(),
        fields: vec![
            FieldDef::public("account_sid", true, Rule::Pattern("^AC[0-9a-fA-F]{32}$", |s| prefixed_hex(s, "AC", 32))),
            FieldDef::secret("auth_token", false, Rule::Opaque),
            FieldDef::public("api_key_sid", false, Rule::Pattern("^SK[0-9a-fA-F]{32}$", |s| prefixed_hex(s, "SK", 32))),
            FieldDef::secret("api_key_secret", false, Rule::Opaque),
            FieldDef::secret("secondary_auth_token", false, Rule::Opaque),
            FieldDef::secret("webhook_secret_previous", false, Rule::Opaque),
            FieldDef::public_list("phone_numbers", false, Rule::Pattern("^(whatsapp:)?\\+[1-9][0-9]{1,14}$", phone)),
        ],
        cross: Some(pairs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SID: &str = "AC0123456789abcdef0123456789abcdef";

    #[test]
    fn an_account_sid_and_auth_token_are_enough() {
        assert!(schema().parse(json!({"account_sid": SID, "auth_token": "t0k3n-canary-000000"})).is_ok());
    }

    #[test]
    fn an_api_key_needs_its_secret() {
        let e = schema()
            .parse(json!({"account_sid": SID, "api_key_sid": "SK0123456789abcdef0123456789abcdef"}))
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("api_key_secret"));
        let ok = schema()
            .parse(
                json!({"account_sid": SID, "api_key_sid": "SK0123456789abcdef0123456789abcdef", "api_key_secret": "s"}),
            )
            .unwrap();
        assert_eq!(ok.warnings.len(), 1, "no auth_token: webhooks cannot be verified");
    }

    #[test]
    fn a_bad_account_sid_gets_the_pattern_in_the_message() {
        let e = schema().parse(json!({"account_sid": "AC123", "auth_token": "t"})).unwrap_err().to_string();
        assert_eq!(e, "twilio.account_sid must match ^AC[0-9a-fA-F]{32}$");
    }

    #[test]
    fn no_pair_at_all_is_refused() {
        let e = schema().parse(json!({"account_sid": SID})).unwrap_err().to_string();
        assert!(e.contains("at least one complete pair"), "{e}");
    }

    #[test]
    fn phone_numbers_are_e164_or_whatsapp() {
        assert!(phone("+14155551212") && phone("whatsapp:+14155551212"));
        assert!(!phone("14155551212") && !phone("+0155") && !phone("+1") && !phone("+1234567890123456"));
    }
}

// ---- outbound ----

use super::outbound::{basic, need, FieldSource, Injection, OutboundError};

/// Basic auth (API key preferred over the auth token) and the `Accounts/_` rewrite: the
/// segment after `/2010-04-01/Accounts/` must be `_` (filled in) or the tenant's own SID.
pub(super) fn inject(cred: &dyn FieldSource, path: &str) -> Result<Injection, OutboundError> {
    let sid = cred.public_field("account_sid").ok_or_else(|| OutboundError::MissingField("account_sid".into()))?;
    let mut inj = match (cred.public_field("api_key_sid"), cred.secret_field("api_key_secret")) {
        (Some(user), Some(secret)) => basic(user, secret)?,
        _ => basic(sid, need(cred, "auth_token")?)?,
    };
    inj.path = rewrite_account(path, sid)?;
    Ok(inj)
}

/// `Some(new path)` when `_` was replaced; an error when another account is named
/// (PROVIDERS.md §3.1: `Accounts` matched case-insensitively, the SID exactly).
fn rewrite_account(path: &str, sid: &str) -> Result<Option<String>, OutboundError> {
    let Some(rest) = path.strip_prefix("/2010-04-01/") else { return Ok(None) };
    let Some((accounts, rest)) = rest.split_once('/') else { return Ok(None) };
    if !accounts.eq_ignore_ascii_case("Accounts") {
        return Ok(None);
    }
    let (segment, tail) = rest.split_once('/').map_or((rest, None), |(s, t)| (s, Some(t)));
    let mismatch = |found: &str| OutboundError::AccountMismatch {
        expected: sid.to_string(),
        found: found.chars().take(40).filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect(),
    };
    if segment.contains('%') {
        return Err(mismatch(segment));
    }
    // `AC….json` names the account too: compare the part before the extension.
    let (named, ext) = segment.split_once('.').map_or((segment, None), |(n, e)| (n, Some(e)));
    if named == "_" {
        let mut out = format!("/2010-04-01/{accounts}/{sid}");
        if let Some(e) = ext {
            out.push('.');
            out.push_str(e);
        }
        if let Some(t) = tail {
            out.push('/');
            out.push_str(t);
        }
        return Ok(Some(out));
    }
    if named == sid {
        return Ok(None);
    }
    Err(mismatch(named))
}

#[cfg(test)]
mod outbound_tests {
    use super::*;

    const SID: &str = "AC0123456789abcdef0123456789abcdef";

    #[test]
    fn the_underscore_account_is_filled_in() {
        assert_eq!(
            rewrite_account("/2010-04-01/Accounts/_/Messages.json", SID).unwrap().unwrap(),
            format!("/2010-04-01/Accounts/{SID}/Messages.json")
        );
        assert_eq!(
            rewrite_account("/2010-04-01/Accounts/_.json", SID).unwrap().unwrap(),
            format!("/2010-04-01/Accounts/{SID}.json")
        );
        assert_eq!(
            rewrite_account("/2010-04-01/Accounts/_", SID).unwrap().unwrap(),
            format!("/2010-04-01/Accounts/{SID}")
        );
    }

    #[test]
    fn the_tenants_own_sid_passes_and_another_is_refused() {
        assert_eq!(rewrite_account(&format!("/2010-04-01/Accounts/{SID}/Calls.json"), SID).unwrap(), None);
        let other = "AC99999999999999999999999999999999";
        assert!(matches!(
            rewrite_account(&format!("/2010-04-01/Accounts/{other}/Calls.json"), SID),
            Err(OutboundError::AccountMismatch { .. })
        ));
        assert!(matches!(
            rewrite_account("/2010-04-01/Accounts/x/Calls.json", SID),
            Err(OutboundError::AccountMismatch { .. })
        ));
        assert_eq!(rewrite_account("/v1/Services", SID).unwrap(), None);
        assert_eq!(rewrite_account("/2010-04-01/Accounts.json", SID).unwrap(), None);
        assert!(rewrite_account("/2010-04-01/accounts/%41C0123/Calls.json", SID).is_err());
        assert!(
            rewrite_account(&format!("/2010-04-01/Accounts/{}/Calls.json", SID.to_uppercase()), SID).is_err(),
            "exact match"
        );
        assert!(rewrite_account("/2010-04-01/Accounts/_/Calls.json", SID).unwrap().is_some());
    }
}
