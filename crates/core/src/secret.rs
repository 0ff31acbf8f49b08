//! Secret types: the only shape plaintext keys, tokens and HMAC secrets take in memory.
//!
//! `Secret` wraps `secrecy::SecretString`: redacted `Debug`, no `Display`, no `Serialize`,
//! wiped on drop. The one way out is [`Secret::expose`]; `grep expose` audits every use.
//! This module must not depend on anything else in the crate.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// A secret string (API key, auth token, webhook secret, refresh token…).
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Takes ownership of `value`; the original allocation is moved, not copied.
    pub fn new(value: String) -> Self {
        Secret(SecretString::from(value))
    }

    /// The plaintext. Every call site is a place a secret leaves its box: keep them few.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Byte length, which is not secret enough to matter for hints and validation.
    pub fn len(&self) -> usize {
        self.expose().len()
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }

    /// The operator-facing hint: `…` and the last four characters. Secrets shorter than
    /// [`HINT_MIN_LEN`] get a bare `…`, since four characters of a short secret are too
    /// large a share of it (keyward choice).
    pub fn hint(&self) -> String {
        let s = self.expose();
        let count = s.chars().count();
        if count < HINT_MIN_LEN {
            return "…".to_string();
        }
        let tail: String = s.chars().skip(count - 4).collect();
        format!("…{tail}")
    }
}

/// Below this many characters a secret's hint shows nothing of it.
pub const HINT_MIN_LEN: usize = 16;

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

/// 32 bytes of key material (a master key or a tenant data key), wiped on drop.
#[derive(Clone)]
pub struct KeyBytes(Zeroizing<[u8; 32]>);

impl KeyBytes {
    /// Wraps key material; the caller's array should itself be a `Zeroizing` temporary.
    pub fn new(bytes: [u8; 32]) -> Self {
        KeyBytes(Zeroizing::new(bytes))
    }

    /// Fresh random key material from the OS RNG.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut k = KeyBytes(Zeroizing::new([0u8; 32]));
        getrandom::fill(&mut k.0[..])?;
        Ok(k)
    }

    /// The raw bytes, for the cipher only.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyBytes([REDACTED])")
    }
}

/// Secret bytes of any length (decrypted record plaintext), wiped on drop.
pub type SecretBytes = Zeroizing<Vec<u8>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_secret() {
        let s = Secret::new("canary-abcdef-123456".to_string());
        assert_eq!(format!("{s:?}"), "Secret([REDACTED])");
        assert_eq!(format!("{:?}", Some(&s)), "Some(Secret([REDACTED]))");
        let k = KeyBytes::new([7u8; 32]);
        assert!(!format!("{k:?}").contains('7'));
    }

    #[test]
    fn hint_shows_only_the_last_four_characters_of_a_long_secret() {
        let s = Secret::new("0123456789abcdef9f3a".to_string());
        assert_eq!(s.hint(), "…9f3a");
    }

    #[test]
    fn hint_shows_nothing_of_a_short_secret() {
        assert_eq!(Secret::new("short".into()).hint(), "…");
        assert_eq!(Secret::new("0123456789abcde".into()).hint(), "…");
    }

    #[test]
    fn hint_counts_characters_not_bytes() {
        let s = Secret::new("ééééééééééééééééabcd".to_string());
        assert_eq!(s.hint(), "…abcd");
    }
}
