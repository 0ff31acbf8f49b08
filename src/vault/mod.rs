//! The crypto boundary: the master keyring, tenant data keys, and seal/open.
//!
//! Envelope encryption: each tenant has a data key (DEK), wrapped by a master key; the
//! tenant's records are sealed by its DEK. AES-256-GCM with a fresh random 96-bit nonce per
//! seal; the AAD binds tenant, provider, record version and key id, so a blob moved into
//! another slot or an older blob put back fails to open. No I/O here except reading (and,
//! for `keygen`, creating) key files. Plaintext leaves only as `SecretBytes`.

mod keyring;
mod kms;
mod seal;

pub(crate) use keyring::WrapSource;
pub(crate) use keyring::{read_private, KeySource, MasterKeyConfig};
pub use keyring::{write_new_key_file, KeyCheck, Keyring};
pub(crate) use kms::pkcs11::Pkcs11Config;
pub(crate) use kms::transit::{TransitAuth, TransitConfig};
pub(crate) use seal::{DataKey, KeyId, RecordAad};

use std::path::PathBuf;

/// Everything that can go wrong with keys and ciphertexts. Messages never contain key
/// material; they name files, variables and key ids.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// A key file is readable by group or others.
    #[error(
        "master key file {path} has mode {mode:04o}; keyward refuses keys other users can read: run `chmod 600 {path}`"
    )]
    KeyFileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file is missing or unreadable.
    #[error("cannot read master key file {path}: {reason} (create one with `keyward keygen --out {path}`)")]
    KeyFileRead {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The environment variable is not set.
    #[error("environment variable {0} is not set; it must hold the master key (base64 of 32 bytes)")]
    EnvMissing(String),
    /// `$CREDENTIALS_DIRECTORY` is not set although `master_key.credential` is used.
    #[error("master_key.credential = \"{0}\" needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=); it is not set")]
    NoCredentialsDirectory(String),
    /// The key is not base64 of exactly 32 bytes.
    #[error("master key from {source_name} is not valid: {reason}; a master key is base64 of exactly 32 random bytes (`keyward keygen`)")]
    BadKey {
        /// Where it came from.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// Refusing to overwrite an existing key file.
    #[error("{0} already exists; keyward keygen never overwrites a key (move it away first)")]
    KeyFileExists(PathBuf),
    /// Writing a key file failed.
    #[error("cannot write key file {path}: {reason}")]
    KeyFileWrite {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// A blob names a master key that is not in the keyring.
    #[error("record sealed under master key {0}, which is neither the active key nor in master_key.previous")]
    UnknownKey(KeyId),
    /// Authentication failed: wrong key, tampered blob, or a blob in the wrong slot.
    #[error("ciphertext does not open under key {0}: wrong key, or the record was altered or moved")]
    Integrity(KeyId),
    /// The blob is not in keyward's format.
    #[error("ciphertext is malformed ({0})")]
    Malformed(&'static str),
    /// The OS RNG failed.
    #[error("the operating system's random number generator failed")]
    Rng,
    /// The KMS cannot be reached right now (retry: it answers 503 `key_unavailable`).
    #[error("{0}; the tenant key cannot be unwrapped until it answers")]
    KmsUnavailable(String),
    /// The KMS refused a wrapped key (another tenant's, or another key's).
    #[error("{0}: the wrapped key does not belong to this tenant or key")]
    KmsRefused(String),
    /// The store's key check value does not open under the configured master key.
    #[error("this store's key check does not open under {tried} (the store was set up with {store}): {reason}; configure the master key this store was created with, or list it under previous; nothing was changed")]
    WrongMasterKey {
        /// The active source, described.
        tried: String,
        /// The source and key the check value names.
        store: String,
        /// Why it did not open.
        reason: String,
    },
    /// The KMS answered, but not as expected (policy, unknown key, configuration).
    #[error("{0}")]
    Kms(String),
}

impl VaultError {
    /// The public error code (CONTRACT.md §6, §8.1).
    pub fn code(&self) -> &'static str {
        match self {
            VaultError::KmsUnavailable(_) => "key_unavailable",
            _ => "internal",
        }
    }
}
