//! Credential schemas (PROVIDERS.md §0): which fields a provider takes, which are secret,
//! and how each is validated. Messages name the field and the rule, never the value.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::secret::Secret;
use crate::status::CredStatus;

/// A rejected credential input. Displays as `twilio.account_sid must match …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{provider}{}{message}", field.as_ref().map(|f| format!(".{f} ")).unwrap_or_else(|| ": ".to_string()))]
pub struct FieldError {
    /// Provider name.
    pub provider: String,
    /// The offending field, when one is to blame.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// How a field's value is checked.
#[derive(Clone, Copy)]
pub enum Rule {
    /// Any non-empty string.
    Opaque,
    /// A predicate, described by a pattern for the message.
    Pattern(&'static str, fn(&str) -> bool),
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::Opaque => f.write_str("Opaque"),
            Rule::Pattern(p, _) => write!(f, "Pattern({p})"),
        }
    }
}

/// One credential field.
#[derive(Debug, Clone)]
pub struct FieldDef {
    /// Name.
    pub name: String,
    /// Secret fields are sealed and only ever shown as hints.
    pub secret: bool,
    /// Must be present.
    pub required: bool,
    /// A list of strings rather than a string.
    pub list: bool,
    /// Validation of each string.
    pub rule: Rule,
}

impl FieldDef {
    /// A secret string field.
    pub fn secret(name: &str, required: bool, rule: Rule) -> Self {
        FieldDef { name: name.into(), secret: true, required, list: false, rule }
    }

    /// A public string field.
    pub fn public(name: &str, required: bool, rule: Rule) -> Self {
        FieldDef { name: name.into(), secret: false, required, list: false, rule }
    }

    /// A public list field.
    pub fn public_list(name: &str, required: bool, rule: Rule) -> Self {
        FieldDef { name: name.into(), secret: false, required, list: true, rule }
    }
}

/// Parsed, validated fields of one credential.
#[derive(Debug, Default)]
pub struct ParsedFields {
    /// Non-secret values (strings or lists of strings).
    pub public: BTreeMap<String, Value>,
    /// Secret values.
    pub secrets: BTreeMap<String, Secret>,
    /// Non-fatal remarks for the operator (returned, logged without values).
    pub warnings: Vec<String>,
    /// The status a new record starts with.
    pub status: Option<CredStatus>,
}

impl ParsedFields {
    /// Whether a field (public or secret) is present.
    pub fn has(&self, name: &str) -> bool {
        self.public.contains_key(name) || self.secrets.contains_key(name)
    }
}

/// Parsed but not stored fields answer like a stored credential (offline verification with
/// `--credential-file`).
impl super::outbound::FieldSource for ParsedFields {
    fn secret_field(&self, name: &str) -> Option<&Secret> {
        self.secrets.get(name)
    }

    fn public_field(&self, name: &str) -> Option<&str> {
        self.public.get(name).and_then(Value::as_str)
    }
}

/// `[A-Za-z0-9_-]` of a length in `len`: the URL-safe secrets keyward asks for where a
/// provider's own format is free (Deepgram callback passwords, Cartesia webhook secrets).
pub(crate) fn url_safe(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&s.len()) && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// Cross-field rules and derived status, run after the per-field checks.
pub type CrossCheck = fn(&mut ParsedFields) -> Result<(), (Option<&'static str>, String)>;

/// A provider's credential schema.
#[derive(Debug, Clone)]
pub struct Schema {
    /// Provider name, for messages.
    pub provider: String,
    /// Fields in display order.
    pub fields: Vec<FieldDef>,
    /// Cross-field rules.
    pub cross: Option<CrossCheck>,
}

impl Schema {
    /// Validates a JSON object into [`ParsedFields`]. The input is consumed so secret
    /// strings move into [`Secret`]s without copies.
    pub fn parse(&self, input: Value) -> Result<ParsedFields, FieldError> {
        let err = |field: Option<&str>, message: String| FieldError {
            provider: self.provider.clone(),
            field: field.map(str::to_string),
            message,
        };
        let Value::Object(map) = input else {
            return Err(err(None, "credential fields must be a JSON object of strings".into()));
        };
        let mut out = ParsedFields::default();
        for (name, value) in map {
            let Some(def) = self.fields.iter().find(|f| f.name == name) else {
                let known: Vec<&str> = self.fields.iter().map(|f| f.name.as_str()).collect();
                let shown: String = name.chars().take(64).flat_map(char::escape_debug).collect();
                return Err(err(
                    None,
                    format!("unknown field \"{shown}\"; {} takes {}", self.provider, known.join(", ")),
                ));
            };
            let check = |s: &str| -> Result<(), FieldError> {
                if s.is_empty() {
                    return Err(err(Some(&name), "must not be empty".into()));
                }
                // A PEM block's closing newline is part of the format (Google's key files
                // and openssl write one), not a paste error.
                let pem = s.starts_with("-----BEGIN ") && s.trim_end().ends_with("-----");
                if def.secret && !pem && s.trim() != s {
                    return Err(err(
                        Some(&name),
                        "has leading or trailing whitespace; paste the secret exactly".into(),
                    ));
                }
                if s.contains('\0') {
                    return Err(err(Some(&name), "must not contain NUL".into()));
                }
                if let Rule::Pattern(p, f) = def.rule {
                    if !f(s) {
                        return Err(err(Some(&name), format!("must match {p}")));
                    }
                }
                Ok(())
            };
            match (def.list, value) {
                (false, Value::String(s)) => {
                    check(&s)?;
                    if def.secret {
                        out.secrets.insert(name, Secret::new(s));
                    } else {
                        out.public.insert(name, Value::String(s));
                    }
                }
                (true, Value::Array(items)) => {
                    if def.required && items.is_empty() {
                        return Err(err(Some(&name), "must be a non-empty list".into()));
                    }
                    for item in &items {
                        match item {
                            Value::String(s) => check(s)?,
                            _ => return Err(err(Some(&name), "must be a list of strings".into())),
                        }
                    }
                    out.public.insert(name, Value::Array(items));
                }
                (false, _) => return Err(err(Some(&name), "must be a string".into())),
                (true, _) => return Err(err(Some(&name), "must be a list of strings".into())),
            }
        }
        for def in &self.fields {
            if def.required && !out.has(&def.name) {
                return Err(err(Some(&def.name), "is required".into()));
            }
        }
        if let Some(cross) = self.cross {
            cross(&mut out).map_err(|(f, m)| err(f, m))?;
        }
        Ok(out)
    }
}

// ---- small pattern helpers (no regex engine needed for these shapes) ----

/// `^<prefix>[0-9a-fA-F]{n}$`
pub fn prefixed_hex(s: &str, prefix: &str, n: usize) -> bool {
    s.strip_prefix(prefix).is_some_and(|rest| rest.len() == n && rest.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// `^(a|b|…)$`
pub fn one_of(s: &str, options: &[&str]) -> bool {
    options.contains(&s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        Schema {
            provider: "demo".into(),
            fields: vec![
                FieldDef::secret("api_key", true, Rule::Opaque),
                FieldDef::public("region", false, Rule::Pattern("^(us|eu)$", |s| one_of(s, &["us", "eu"]))),
                FieldDef::public_list("numbers", false, Rule::Opaque),
            ],
            cross: None,
        }
    }

    #[test]
    fn valid_fields_split_into_public_and_secret() {
        let p = schema().parse(json!({"api_key": "k-123", "region": "eu", "numbers": ["1"]})).unwrap();
        assert_eq!(p.secrets["api_key"].expose(), "k-123");
        assert_eq!(p.public["region"], json!("eu"));
    }

    #[test]
    fn each_bad_input_names_the_field_and_never_the_secret() {
        let cases = [
            (json!({"api_key": "canary-secret", "bogus": "x"}), "unknown field \"bogus\""),
            (json!({"region": "us"}), "demo.api_key is required"),
            (json!({"api_key": ""}), "demo.api_key must not be empty"),
            (json!({"api_key": " canary-secret"}), "demo.api_key has leading or trailing whitespace"),
            (json!({"api_key": 5}), "demo.api_key must be a string"),
            (json!({"api_key": "canary-secret", "region": "mars"}), "demo.region must match ^(us|eu)$"),
            (json!({"api_key": "canary-secret", "numbers": "1"}), "demo.numbers must be a list of strings"),
            (json!(["canary-secret"]), "must be a JSON object"),
        ];
        for (input, want) in cases {
            let e = schema().parse(input).unwrap_err().to_string();
            assert!(e.contains(want), "{e} does not contain {want}");
            assert!(!e.contains("canary-secret"), "{e}");
        }
    }

    #[test]
    fn prefixed_hex_checks_length_and_alphabet() {
        assert!(prefixed_hex("AC0123456789abcdef0123456789ABCDEF", "AC", 32));
        assert!(!prefixed_hex("AC0123456789abcdef0123456789ABCDE", "AC", 32));
        assert!(!prefixed_hex("SK0123456789abcdef0123456789ABCDEF", "AC", 32));
        assert!(!prefixed_hex("AC0123456789abcdef0123456789ABCDEG", "AC", 32));
    }
}
