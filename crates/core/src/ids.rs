//! Identifiers parsed at the edge: tenants, provider names, route kinds and route ids.
//!
//! Every id that arrives from a URL, a CLI argument or a config key becomes one of these
//! types before anything else looks at it, so a path like `../x` never reaches the store.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid id. The message names the rule, never more than the id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {shown}: {rule}")]
pub struct IdError {
    what: &'static str,
    shown: String,
    rule: &'static str,
}

impl IdError {
    fn new(what: &'static str, raw: &str, rule: &'static str) -> Self {
        // Show the offending value escaped and truncated: it may hold control characters.
        let mut shown: String = raw.chars().take(80).flat_map(char::escape_debug).collect();
        if raw.chars().count() > 80 {
            shown.push('…');
        }
        IdError { what, shown: format!("\"{shown}\""), rule }
    }
}

const NAME_RULE: &str = "must match ^[a-z0-9][a-z0-9_-]{0,63}$";

/// `^[a-z0-9][a-z0-9_-]{0,63}$`, the rule shared by tenants, providers and route kinds.
fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit() => {}
        _ => return false,
    }
    b.len() <= 64 && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

macro_rules! name_type {
    ($(#[$m:meta])* $ty:ident, $what:literal) => {
        $(#[$m])*
        // Shared text: every request carries its tenant and provider into several places
        // (logs, metrics labels, the access record), and a clone is a count, not a copy.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(Arc<str>);

        impl $ty {
            /// Parses and validates.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                if is_name(s) {
                    Ok($ty(Arc::from(s)))
                } else {
                    Err(IdError::new($what, s, NAME_RULE))
                }
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as shared text.
            pub fn shared(&self) -> Arc<str> {
                self.0.clone()
            }
        }

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $ty::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A tenant: one organisation that brings its own credentials.
    TenantId,
    "tenant id"
);
name_type!(
    /// A provider name: built-in (`twilio`…) or declared in config.
    ProviderName,
    "provider"
);
name_type!(
    /// A route kind such as `twilio-account` or `vapi-assistant`.
    RouteKind,
    "route kind"
);

/// A route id: the provider's own identifier (an Account SID, an assistant UUID, a phone
/// number, a channel id). 1–256 characters from `[A-Za-z0-9._:+@=-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RouteId(String);

impl RouteId {
    /// Parses and validates.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok =
            !s.is_empty() && s.len() <= 256 && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"._:+@=-".contains(&c));
        if ok {
            Ok(RouteId(s.to_string()))
        } else {
            Err(IdError::new("route id", s, "must be 1-256 characters of [A-Za-z0-9._:+@=-]"))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for RouteId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tenant_ids_follow_the_contract_rule() {
        for ok in ["a", "acme", "0", "acme-corp_2", &"a".repeat(64)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "Acme", "-acme", "_a", "acme corp", "ac/me", "a\0b", "tenänt", &"a".repeat(65)] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_id_error_escapes_control_characters() {
        let e = TenantId::parse("a\r\nb").unwrap_err().to_string();
        assert!(e.contains("a\\r\\nb"), "{e}");
        assert!(e.contains("^[a-z0-9]"), "{e}");
    }

    #[test]
    fn route_ids_accept_provider_identifiers() {
        for ok in
            ["AC0123456789abcdef0123456789abcdef", "whatsapp:+14155551212", "2f3c7a0e-8a7c-4b7e-9f1c-0c6c2b6a5d11"]
        {
            assert!(RouteId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a b", "../x", &"x".repeat(257)] {
            assert!(RouteId::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn a_parsed_tenant_id_never_contains_path_or_control_characters(s in "\\PC{0,80}") {
            if let Ok(t) = TenantId::parse(&s) {
                prop_assert!(!t.as_str().contains('/'));
                prop_assert!(!t.as_str().contains('.'));
                prop_assert!(t.as_str().len() <= 64);
            }
        }
    }
}
