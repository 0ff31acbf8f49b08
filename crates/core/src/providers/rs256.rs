//! RS256 JWTs signed with a PKCS#8 RSA private key held as a [`Secret`]: Vonage's
//! application JWTs (PROVIDERS-2.md §5.1) and the assertions of the OAuth 2.0 JWT-bearer
//! grant (RFC 7523, PROVIDERS-2.md §9.1). ring signs; the key's DER is wiped after use.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::Value;
use zeroize::Zeroizing;

use super::outbound::OutboundError;
use crate::secret::Secret;

/// `base64url(header) . base64url(claims) . base64url(RSASSA-PKCS1-v1_5-SHA256)`.
pub(crate) fn sign(header: &Value, claims: &Value, pem: &Secret) -> Result<Zeroizing<String>, OutboundError> {
    let der = pem_der(pem.expose()).ok_or_else(|| OutboundError::MissingField("a PKCS#8 private_key".into()))?;
    let key = ring::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|_| OutboundError::MissingField("an RSA private_key (PKCS#8)".into()))?;
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(&ring::signature::RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), signing_input.as_bytes(), &mut sig)
        .map_err(|_| OutboundError::MissingField("a private_key that can sign".into()))?;
    Ok(Zeroizing::new(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))))
}

/// Whether `pem` holds an RSA key ring can sign with (checked when a credential is put,
/// so a bad key is refused then rather than at the first call).
pub(crate) fn is_rsa_pkcs8(pem: &str) -> bool {
    pem_der(pem).is_some_and(|der| ring::signature::RsaKeyPair::from_pkcs8(&der).is_ok())
}

/// The DER inside a `-----BEGIN PRIVATE KEY-----` block.
fn pem_der(pem: &str) -> Option<Zeroizing<Vec<u8>>> {
    let start = pem.find("-----BEGIN PRIVATE KEY-----")? + "-----BEGIN PRIVATE KEY-----".len();
    let end = pem[start..].find("-----END PRIVATE KEY-----")? + start;
    let b64: Zeroizing<String> = Zeroizing::new(pem[start..end].chars().filter(|c| !c.is_ascii_whitespace()).collect());
    STANDARD.decode(b64.as_bytes()).ok().map(Zeroizing::new)
}
