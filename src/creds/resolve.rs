//! Reading credentials: the bounded cache of decrypted credentials and tenant data keys,
//! its invalidation (local writes and other replicas' changes), and the cold path that
//! reads the store and opens the sealed record.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::Value;

use super::*;

/// Decrypted credentials (and tenant data keys) kept in memory at most, by default. A full
/// cache drops an arbitrary entry per insert: memory stays bounded however many tenants
/// are active, and a dropped entry costs one cold lookup (about 2 µs) when next used.
pub(crate) const DEFAULT_CACHE_ENTRIES: usize = 10_000;

fn insert_bounded<K: std::hash::Hash + Eq + Clone, V>(map: &mut HashMap<K, V>, key: K, value: V, cap: usize) {
    if map.len() >= cap && !map.contains_key(&key) {
        if let Some(victim) = map.keys().next().cloned() {
            map.remove(&victim);
        }
    }
    map.insert(key, value);
}

/// A cache key as borrowed strings, so a lookup allocates nothing: `(String, String)`
/// borrows as `dyn KeyPair`, hashed and compared like the tuple (each string in turn).
pub(super) trait KeyPair {
    fn tenant(&self) -> &str;
    fn provider(&self) -> &str;
}

impl KeyPair for (String, String) {
    fn tenant(&self) -> &str {
        &self.0
    }
    fn provider(&self) -> &str {
        &self.1
    }
}

impl KeyPair for (&str, &str) {
    fn tenant(&self) -> &str {
        self.0
    }
    fn provider(&self) -> &str {
        self.1
    }
}

impl<'a> std::borrow::Borrow<dyn KeyPair + 'a> for (String, String) {
    fn borrow(&self) -> &(dyn KeyPair + 'a) {
        self
    }
}

impl std::hash::Hash for dyn KeyPair + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The same sequence as `(String, String)`'s derived hash.
        self.tenant().hash(state);
        self.provider().hash(state);
    }
}

impl PartialEq for dyn KeyPair + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.tenant() == other.tenant() && self.provider() == other.provider()
    }
}

impl Eq for dyn KeyPair + '_ {}

impl Credentials {
    pub(super) fn invalidate(&self, tenant: &str, provider: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut c) = self.cache.write() {
            c.remove(&(tenant, provider) as &dyn KeyPair);
        }
    }

    /// Follows changes other replicas make to a shared store (fleet mode) and drops the
    /// cached values they touch; after a reconnect (or if changes were missed) everything.
    pub fn watch_changes(self: &Arc<Self>) {
        let Some(mut rx) = self.store.subscribe() else { return };
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let change = rx.recv().await;
                let Some(c) = me.upgrade() else { return };
                match change {
                    Ok(keyward_store::Change::Credential { tenant, provider }) => c.invalidate(&tenant, &provider),
                    Ok(keyward_store::Change::Tenant(t)) => {
                        if let Ok(mut d) = c.deks.write() {
                            d.remove(&t);
                        }
                        c.invalidate_all();
                    }
                    Ok(keyward_store::Change::All) | Err(RecvError::Lagged(_)) => {
                        if let Ok(mut d) = c.deks.write() {
                            d.clear();
                        }
                        c.invalidate_all();
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }

    /// Drops every cached credential (config reload, key rotation, fleet resync).
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut c) = self.cache.write() {
            c.clear();
        }
    }

    pub(super) async fn data_key(&self, tenant: &TenantId) -> Result<Option<Arc<TenantKey>>, CredError> {
        if let Some(k) = self.deks.read().ok().and_then(|d| d.get(tenant.as_str()).cloned()) {
            if self.fresh(&k) {
                return Ok(Some(k));
            }
        }
        let Some(rec) = self.store.get_tenant(tenant).await? else {
            return Ok(None);
        };
        let dek =
            Arc::new(TenantKey::new(rec.wrapped_key.clone(), self.keyring.unwrap(tenant, &rec.wrapped_key).await?));
        if let Ok(mut d) = self.deks.write() {
            insert_bounded(&mut d, tenant.as_str().to_string(), dek.clone(), self.capacity);
        }
        Ok(Some(dek))
    }

    /// The decrypted credential for a request. Errors say why it cannot be used.
    pub async fn resolve(&self, tenant: &TenantId, provider: &str) -> Result<Arc<Credential>, CredError> {
        let cred = self.resolve_any(tenant, provider).await?;
        match cred.status {
            CredStatus::Active => Ok(cred),
            CredStatus::Inactive => Err(CredError::Inactive {
                tenant: tenant.to_string(),
                provider: provider.to_string(),
                reason: "complete it (Google: run the connect flow) before use".into(),
            }),
            CredStatus::Revoked => {
                Err(CredError::Revoked { tenant: tenant.to_string(), provider: provider.to_string() })
            }
        }
    }

    /// The decrypted credential whatever its status (webhook verification still works for a
    /// revoked credential: revocation concerns outbound auth).
    pub async fn resolve_any(&self, tenant: &TenantId, provider: &str) -> Result<Arc<Credential>, CredError> {
        let borrowed = (tenant.as_str(), provider);
        if let Some(c) = self.cache.read().ok().and_then(|c| c.get(&borrowed as &dyn KeyPair).cloned()) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            if crate::telemetry::traces_on() {
                tracing::Span::current().record("keyward.cache", "hit");
            }
            return Ok(c);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        if crate::telemetry::traces_on() {
            tracing::Span::current().record("keyward.cache", "miss");
        }
        let gen = self.generation.load(Ordering::SeqCst);
        // Boxed: the store's read (sled or PostgreSQL, then the unwrap) is a large future
        // that would otherwise size every request's future, hits included.
        let c = Arc::new(Box::pin(self.load(tenant, provider)).await?);
        if let Ok(mut cache) = self.cache.write() {
            if self.generation.load(Ordering::SeqCst) == gen {
                insert_bounded(
                    &mut cache,
                    (tenant.as_str().to_string(), provider.to_string()),
                    c.clone(),
                    self.capacity,
                );
            }
        }
        Ok(c)
    }

    /// Reads and opens one credential, bypassing the cache.
    pub(super) async fn load(&self, tenant: &TenantId, provider: &str) -> Result<Credential, CredError> {
        let not_found = || CredError::not_found(tenant, provider);
        let name = self.provider_name(provider)?;
        let rec = self.store.get_credential(tenant, &name).await?.ok_or_else(not_found)?;
        if rec.deleted_at.is_some() {
            return Err(not_found());
        }
        let dek = self.data_key(tenant).await?.ok_or_else(not_found)?;
        let aad = RecordAad { tenant, provider, version: rec.version, state: integrity::aad_state(&rec) };
        let plain = dek.dek.open(aad, &rec.sealed).map_err(|e| match e {
            VaultError::Integrity(_) => CredError::Store(StoreError::Tampered(format!(
                "credential {tenant}/{provider} does not open: its ciphertext, or the state it is bound to (status, deletion, public fields, last check), was altered or moved"
            ))),
            other => other.into(),
        })?;
        self.check_not_rolled_back(&rec)?;
        let map: serde_json::Map<String, Value> = serde_json::from_slice(&plain)
            .map_err(|_| StoreError::Corrupt(format!("credential {tenant}/{provider}")))?;
        let secrets = map
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, Secret::new(s))),
                _ => None,
            })
            .collect();
        Ok(Credential {
            tenant: tenant.clone(),
            provider: provider.to_string(),
            version: rec.version,
            status: rec.status,
            public: rec.fields,
            secrets,
            injection: std::sync::OnceLock::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{insert_bounded, KeyPair};
    use std::collections::HashMap;

    #[test]
    fn a_borrowed_key_finds_what_the_owned_key_stored() {
        let mut m: HashMap<(String, String), u32> = HashMap::new();
        m.insert(("acme".into(), "vapi".into()), 1);
        m.insert(("acm".into(), "evapi".into()), 2);
        assert_eq!(m.get(&("acme", "vapi") as &dyn KeyPair), Some(&1));
        assert_eq!(m.get(&("acm", "evapi") as &dyn KeyPair), Some(&2));
        assert_eq!(m.get(&("acme", "twilio") as &dyn KeyPair), None);
    }

    #[test]
    fn the_cache_never_grows_past_its_capacity() {
        let mut m = HashMap::new();
        for i in 0..1000 {
            insert_bounded(&mut m, i, i, 100);
        }
        assert_eq!(m.len(), 100);
        assert_eq!(m.get(&999), Some(&999), "the newest entry is kept");
        insert_bounded(&mut m, 999, 0, 100);
        assert_eq!(m.len(), 100, "replacing a key evicts nothing");
    }
}
