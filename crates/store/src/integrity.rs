//! The store's integrity key: what makes the audit chain and the routes tamper-evident
//! against someone who can write the store but does not hold the master key. The key is
//! random per store, kept sealed under the master key in the key check value (so master-key
//! rotation re-seals it rather than changing it), and handed to the store when the daemon
//! opens it. A plain hash would not do: whoever can write the rows can recompute it.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The key and the first audit entry it covers (entries of a store written before keyed
/// chains existed keep their plain hashes).
#[derive(Clone)]
pub struct Integrity {
    key: Zeroizing<[u8; 32]>,
    keyed_from: u64,
}

impl std::fmt::Debug for Integrity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integrity").field("keyed_from", &self.keyed_from).finish_non_exhaustive()
    }
}

impl Integrity {
    /// A key covering audit entries from `keyed_from` on.
    pub fn new(key: [u8; 32], keyed_from: u64) -> Self {
        Integrity { key: Zeroizing::new(key), keyed_from: keyed_from.max(1) }
    }

    /// The raw key, for sealing it under the master key.
    pub fn key_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// The first keyed audit entry.
    pub fn keyed_from(&self) -> u64 {
        self.keyed_from
    }

    /// HMAC-SHA256 over a domain label and length-prefixed parts (so no two inputs of
    /// different shapes collide).
    pub fn mac(&self, domain: &str, parts: &[&[u8]]) -> [u8; 32] {
        let Ok(mut m) = Hmac::<Sha256>::new_from_slice(&*self.key) else { return [0; 32] };
        m.update(domain.as_bytes());
        m.update(&[0]);
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    /// Whether `mac` is this key's MAC over `parts` (constant time).
    pub fn check(&self, domain: &str, parts: &[&[u8]], mac: &[u8]) -> bool {
        let Ok(mut m) = Hmac::<Sha256>::new_from_slice(&*self.key) else { return false };
        m.update(domain.as_bytes());
        m.update(&[0]);
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m.verify_slice(mac).is_ok()
    }

    /// A route's MAC: binds kind, id and owner.
    pub(crate) fn route_mac(&self, kind: &str, id: &str, tenant: &str) -> [u8; 32] {
        self.mac("keyward/route/v1", &[kind.as_bytes(), id.as_bytes(), tenant.as_bytes()])
    }

    /// Whether a stored route's MAC holds.
    pub(crate) fn route_ok(&self, kind: &str, id: &str, tenant: &str, mac: &[u8]) -> bool {
        self.check("keyward/route/v1", &[kind.as_bytes(), id.as_bytes(), tenant.as_bytes()], mac)
    }
}

/// Holder of a store's integrity key, set once the daemon has opened the key check value.
#[derive(Debug, Default)]
pub(crate) struct IntegritySlot(std::sync::RwLock<Option<Integrity>>);

impl IntegritySlot {
    pub(crate) fn set(&self, i: Integrity) {
        if let Ok(mut g) = self.0.write() {
            *g = Some(i);
        }
    }

    pub(crate) fn get(&self) -> Option<Integrity> {
        self.0.read().ok().and_then(|g| g.clone())
    }

    /// The key, or the error every write and authenticated read gives without one.
    pub(crate) fn require(&self) -> Result<Integrity, crate::StoreError> {
        self.get().ok_or_else(|| {
            crate::StoreError::Unavailable("the store's integrity key is not loaded (open it through keyward)".into())
        })
    }
}
