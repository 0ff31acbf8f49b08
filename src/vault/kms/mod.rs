//! Master keys held by a KMS or an HSM: keyward asks it to wrap and unwrap tenant data
//! keys, and the key that does so never enters keyward's memory. One file per source; a
//! new source (a cloud KMS) is one more file implementing [`Kms`].

pub(crate) mod pkcs11;
pub(crate) mod transit;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{KeyId, VaultError};

/// The future a KMS call returns (boxed: the trait is used as `dyn Kms`; one allocation
/// beside a network or HSM round trip is nothing).
pub(crate) type KmsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, VaultError>> + Send + 'a>>;

/// A master key that stays in a KMS. `context` binds a wrapped value to its use (the
/// tenant, or the store's check value): a value wrapped for one context does not unwrap
/// for another.
pub(crate) trait Kms: Send + Sync + fmt::Debug {
    /// What this source's wrapped values start with; the keyring picks the source by it.
    fn magic(&self) -> &'static [u8];
    /// `source key (where)`, for logs, errors and `key status` (never a secret).
    fn describe(&self) -> String;
    /// The source's kind as `key status` and the audit log name it: `vault-transit`, `pkcs11`.
    fn kind(&self) -> &'static str;
    /// The key's name within the source.
    fn key_name(&self) -> &str;
    /// Stable id of the key, derived from where it lives (not from key material).
    fn key_id(&self) -> KeyId;
    /// The key version a wrapped value names (transit `vault:vN`); 1 for single-version keys.
    fn version_of(&self, blob: &[u8]) -> Option<u32>;
    /// The version new values are wrapped under; older ones are re-wrapped by rotation.
    fn latest_version(&self) -> KmsFuture<'_, u32>;
    /// Wraps `plaintext` for `context`.
    fn wrap<'a>(&'a self, context: &'a [u8], plaintext: &'a [u8]) -> KmsFuture<'a, Vec<u8>>;
    /// Unwraps a value from [`Kms::wrap`] for `context`.
    fn unwrap<'a>(&'a self, context: &'a [u8], blob: &'a [u8]) -> KmsFuture<'a, Zeroizing<Vec<u8>>>;
    /// Re-wraps under the latest version without the plaintext leaving the KMS, where the
    /// source can (transit `rewrap`); `None`: unwrap and wrap instead.
    fn rewrap<'a>(&'a self, _context: &'a [u8], _blob: &'a [u8]) -> Option<KmsFuture<'a, Vec<u8>>> {
        None
    }
    /// Whether the last call reached the KMS, shared with readiness.
    fn reach(&self) -> &Reach;
    /// One cheap call that proves the KMS answers with this key (the recovery probe).
    fn probe(&self) -> KmsFuture<'_, ()> {
        Box::pin(async move { self.wrap(b"keyward/probe", b"probe").await.map(|_| ()) })
    }
}

/// Whether a KMS answered its last call; logs each change once, so an outage is one warning
/// and its end one line, not a line per request.
#[derive(Debug)]
pub(crate) struct Reach(Arc<AtomicBool>);

impl Reach {
    pub(crate) fn new() -> Reach {
        Reach(Arc::new(AtomicBool::new(true)))
    }

    /// The flag readiness reads.
    pub(crate) fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }

    /// Records a call's outcome: reached unless it failed as [`VaultError::KmsUnavailable`].
    pub(crate) fn record<T>(&self, describe: impl FnOnce() -> String, r: &Result<T, VaultError>) {
        let reached = !matches!(r, Err(VaultError::KmsUnavailable(_)));
        if self.0.swap(reached, Ordering::SeqCst) != reached {
            if reached {
                tracing::info!(kms = %describe(), "KMS reachable again");
            } else {
                tracing::warn!(kms = %describe(), "KMS unreachable: warm tenants are served, cold ones answer key_unavailable");
            }
        }
    }
}

/// A key id from where a key lives (`parts` joined), domain-separated per source kind.
pub(crate) fn location_id(kind: &str, parts: &[&str]) -> KeyId {
    let mut h = Sha256::new();
    h.update(b"keyward kms key id v1\0");
    h.update(kind.as_bytes());
    for p in parts {
        h.update(b"\0");
        h.update(p.as_bytes());
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&h.finalize()[..8]);
    KeyId(id)
}
