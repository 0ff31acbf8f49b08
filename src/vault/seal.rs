//! AES-256-GCM seal/open, the blob format, and tenant data keys.
//!
//! Blob format v1: `[0x01][key id: 8][nonce: 12][ciphertext ‖ tag: 16]`. The key id is also
//! part of the AAD, so rewriting it in the header makes the blob fail to open.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use zeroize::Zeroizing;

use super::VaultError;
use keyward_core::ids::TenantId;
use keyward_core::secret::{KeyBytes, SecretBytes};

const BLOB_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 8 + 12;
const TAG_LEN: usize = 16;

/// An 8-byte key identifier, shown as 16 hex digits. Master key ids are derived from the
/// key (stable across restarts); data key ids are random.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// What a credential record's AAD binds.
#[derive(Debug, Clone, Copy)]
pub struct RecordAad<'a> {
    /// Owner.
    pub tenant: &'a TenantId,
    /// Provider name.
    pub provider: &'a str,
    /// Record version (monotonic per credential).
    pub version: u64,
    /// Digest of the record's state (status, deletion, fields, last check); `None` for
    /// records sealed before state binding and for auxiliary values.
    pub state: Option<[u8; 32]>,
}

impl RecordAad<'_> {
    fn bytes(&self, key_id: KeyId) -> Vec<u8> {
        let mut aad = if self.state.is_some() { b"keyward/cred/v2\0".to_vec() } else { b"keyward/cred/v1\0".to_vec() };
        aad.extend_from_slice(self.tenant.as_str().as_bytes());
        aad.push(0);
        aad.extend_from_slice(self.provider.as_bytes());
        aad.push(0);
        aad.extend_from_slice(&self.version.to_be_bytes());
        aad.extend_from_slice(&key_id.0);
        if let Some(s) = &self.state {
            aad.extend_from_slice(s);
        }
        aad
    }
}

/// The key id a blob claims to be sealed under.
pub(crate) fn blob_key_id(blob: &[u8]) -> Result<KeyId, VaultError> {
    if blob.len() < HEADER_LEN + TAG_LEN {
        return Err(VaultError::Malformed("too short"));
    }
    if blob.first() != Some(&BLOB_VERSION) {
        return Err(VaultError::Malformed("unknown format version"));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(blob.get(1..9).ok_or(VaultError::Malformed("too short"))?);
    Ok(KeyId(id))
}

pub(super) fn seal_raw(key: &KeyBytes, key_id: KeyId, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.expose()));
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|_| VaultError::Rng)?;
    let mut full_aad = aad.to_vec();
    full_aad.extend_from_slice(&key_id.0);
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &full_aad })
        // Encryption fails only for inputs beyond GCM's 64 GiB limit; records are bytes long.
        .map_err(|_| VaultError::Malformed("plaintext too long"))?;
    let mut blob = Vec::with_capacity(HEADER_LEN + ct.len());
    blob.push(BLOB_VERSION);
    blob.extend_from_slice(&key_id.0);
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&ct);
    Ok(blob)
}

pub(super) fn open_raw(key: &KeyBytes, aad: &[u8], blob: &[u8]) -> Result<SecretBytes, VaultError> {
    let key_id = blob_key_id(blob)?;
    let nonce = blob.get(9..HEADER_LEN).ok_or(VaultError::Malformed("too short"))?;
    let ct = blob.get(HEADER_LEN..).ok_or(VaultError::Malformed("too short"))?;
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.expose()));
    let mut full_aad = aad.to_vec();
    full_aad.extend_from_slice(&key_id.0);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &full_aad })
        .map(Zeroizing::new)
        .map_err(|_| VaultError::Integrity(key_id))
}

/// A tenant's data key. Plaintext only in memory, wiped on drop.
#[derive(Clone)]
pub struct DataKey {
    id: KeyId,
    key: KeyBytes,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKey({})", self.id)
    }
}

impl DataKey {
    /// A fresh random data key with a random id.
    pub fn generate() -> Result<Self, VaultError> {
        let key = KeyBytes::random().map_err(|_| VaultError::Rng)?;
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|_| VaultError::Rng)?;
        Ok(DataKey { id: KeyId(id), key })
    }

    pub(super) fn from_parts(id: KeyId, key: KeyBytes) -> Self {
        DataKey { id, key }
    }

    pub(super) fn key(&self) -> &KeyBytes {
        &self.key
    }

    /// This key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Seals one record's secret plaintext.
    pub fn seal(&self, aad: RecordAad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        seal_raw(&self.key, self.id, &aad.bytes(self.id), plaintext)
    }

    /// Opens a record sealed by [`DataKey::seal`] with the same AAD.
    pub fn open(&self, aad: RecordAad<'_>, blob: &[u8]) -> Result<SecretBytes, VaultError> {
        let id = blob_key_id(blob)?;
        if id != self.id {
            return Err(VaultError::Integrity(id));
        }
        open_raw(&self.key, &aad.bytes(self.id), blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn a_sealed_record_opens_with_the_same_aad() {
        let k = DataKey::generate().unwrap();
        let acme = t("acme");
        let aad = RecordAad { tenant: &acme, provider: "twilio", version: 3, state: None };
        let blob = k.seal(aad, b"{\"auth_token\":\"x\"}").unwrap();
        assert_eq!(&k.open(aad, &blob).unwrap()[..], b"{\"auth_token\":\"x\"}");
    }

    #[test]
    fn a_blob_moved_to_another_tenant_provider_or_version_fails_to_open() {
        let k = DataKey::generate().unwrap();
        let (acme, globex) = (t("acme"), t("globex"));
        let aad = RecordAad { tenant: &acme, provider: "twilio", version: 3, state: None };
        let blob = k.seal(aad, b"secret").unwrap();
        for other in [
            RecordAad { tenant: &globex, ..aad },
            RecordAad { provider: "vapi", ..aad },
            RecordAad { version: 4, ..aad },
            RecordAad { version: 2, ..aad },
        ] {
            assert!(matches!(k.open(other, &blob), Err(VaultError::Integrity(_))));
        }
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let k = DataKey::generate().unwrap();
        let acme = t("acme");
        let aad = RecordAad { tenant: &acme, provider: "vapi", version: 1, state: None };
        let a = k.seal(aad, b"same").unwrap();
        let b = k.seal(aad, b"same").unwrap();
        assert_ne!(a.get(9..21), b.get(9..21));
        assert_ne!(a, b);
    }

    #[test]
    fn a_flipped_bit_or_rewritten_key_id_fails_to_open() {
        let k = DataKey::generate().unwrap();
        let acme = t("acme");
        let aad = RecordAad { tenant: &acme, provider: "vapi", version: 1, state: None };
        let blob = k.seal(aad, b"payload").unwrap();
        for i in 0..blob.len() {
            let mut b = blob.clone();
            b[i] ^= 0x01;
            assert!(k.open(aad, &b).is_err(), "bit flip at {i} went unnoticed");
        }
        assert!(k.open(aad, &blob[..10]).is_err());
        assert!(k.open(aad, &[]).is_err());
    }
}
