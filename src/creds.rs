//! Credentials: joins the store and the vault. The only place plaintext credentials are
//! produced, the in-memory cache of them, and every audited mutation (credentials, routes,
//! key rotation, purge). Knows nothing of HTTP.
//!
//! Cache rule: an entry is filled on first use and dropped on every write, delete and
//! restore of that credential, so the next request sees the change (no TTL). A fill that
//! raced with a write is discarded (generation counter), never stored stale.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::vault::{DataKey, KeyId, Keyring, RecordAad, VaultError};
use keyward_core::ids::{RouteId, RouteKind, TenantId};
use keyward_core::providers::{FieldError, Providers};
use keyward_core::secret::Secret;
use keyward_core::time::rfc3339;
use keyward_store::{
    now_millis, AuditDraft, AuditEntry, AuditHead, ChainReport, CredStatus, CredentialRecord, Expect, Millis, Op,
    Store, StoreError, TenantRecord,
};

/// A decrypted credential, shared by the cache and in-flight requests.
pub struct Credential {
    /// Owner.
    pub tenant: TenantId,
    /// Provider name.
    pub provider: String,
    /// Record version.
    pub version: u64,
    /// Status when loaded.
    pub status: CredStatus,
    /// Non-secret fields.
    pub public: BTreeMap<String, Value>,
    secrets: BTreeMap<String, Secret>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("tenant", &self.tenant)
            .field("provider", &self.provider)
            .field("version", &self.version)
            .field("status", &self.status)
            .field("secret_fields", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Credential {
    /// A credential that is not stored: fields checked live before they are saved
    /// (`?verify=true`).
    pub fn ephemeral(tenant: TenantId, provider: &str, parsed: keyward_core::providers::ParsedFields) -> Credential {
        Credential {
            tenant,
            provider: provider.to_string(),
            version: 0,
            status: parsed.status.unwrap_or(CredStatus::Active),
            public: parsed.public,
            secrets: parsed.secrets,
        }
    }

    /// The fields back, to store a credential checked with [`Credential::ephemeral`].
    pub fn into_parsed(self) -> keyward_core::providers::ParsedFields {
        keyward_core::providers::ParsedFields {
            public: self.public,
            secrets: self.secrets,
            warnings: vec![],
            status: Some(self.status),
        }
    }

    /// A secret field.
    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.get(name)
    }

    /// A public string field.
    pub fn public_str(&self, name: &str) -> Option<&str> {
        self.public.get(name).and_then(Value::as_str)
    }
}

/// The status object of CONTRACT.md §6. Never holds a secret: `hints` are computed at write
/// time from at most the last four characters.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusObject {
    /// Owner.
    pub tenant: String,
    /// Provider.
    pub provider: String,
    /// active | inactive | revoked
    pub status: CredStatus,
    /// Non-secret fields.
    pub fields: BTreeMap<String, Value>,
    /// `…` + last four characters of each secret field.
    pub hints: BTreeMap<String, String>,
    /// Record version.
    pub version: u64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// RFC 3339, or null.
    pub last_verified_at: Option<String>,
    /// Last error, or null.
    pub last_error: Option<String>,
    /// Present only for soft-deleted credentials (listing with `include_deleted`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
    /// When a soft-deleted credential will be purged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purge_after: Option<String>,
}

/// Credential-layer failures; each has a public code ([`CredError::code`]), and `error.rs`
/// gives them their HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum CredError {
    /// The provider is not built in nor declared in config.
    #[error("unknown provider \"{0}\"; use one of {1}")]
    UnknownProvider(String, String),
    /// The fields do not fit the provider's schema.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// No such credential.
    #[error("tenant {tenant} has no {provider} credential")]
    NotFound {
        /// Tenant.
        tenant: String,
        /// Provider.
        provider: String,
    },
    /// The credential is soft-deleted.
    #[error("the {provider} credential of tenant {tenant} was deleted at {deleted_at}; restore it before {purge_after} with `keyward cred restore {tenant} {provider}`")]
    Deleted {
        /// Tenant.
        tenant: String,
        /// Provider.
        provider: String,
        /// When.
        deleted_at: String,
        /// Purge time.
        purge_after: String,
    },
    /// Restore of a credential that is not deleted.
    #[error("the {provider} credential of tenant {tenant} is not deleted; nothing to restore")]
    NotDeleted {
        /// Tenant.
        tenant: String,
        /// Provider.
        provider: String,
    },
    /// Stored but unusable until completed (e.g. Google without a refresh token).
    #[error("the {provider} credential of tenant {tenant} is inactive: {reason}")]
    Inactive {
        /// Tenant.
        tenant: String,
        /// Provider.
        provider: String,
        /// Why.
        reason: String,
    },
    /// The provider rejected it.
    #[error("the {provider} credential of tenant {tenant} was revoked by the provider; store a new one")]
    Revoked {
        /// Tenant.
        tenant: String,
        /// Provider.
        provider: String,
    },
    /// Persistence failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Crypto failed (wrong key, tampered record).
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl CredError {
    /// The public error code (CONTRACT.md §6), also the `result` of a refused audit entry.
    pub fn code(&self) -> &'static str {
        match self {
            CredError::UnknownProvider(..) => "unknown_provider",
            CredError::Invalid(_) => "invalid_credential",
            CredError::NotFound { .. } | CredError::Deleted { .. } => "no_credential",
            CredError::NotDeleted { .. } => "conflict",
            CredError::Inactive { .. } => "credential_inactive",
            CredError::Revoked { .. } => "credential_revoked",
            CredError::Store(s) => s.code(),
            CredError::Vault(_) => "internal",
        }
    }
}

/// Progress of one key-rotation call.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RotateReport {
    /// Tenant keys re-wrapped by this call.
    pub rewrapped: u64,
    /// Tenant keys still under an older master key.
    pub remaining: u64,
    /// Tenant keys in all.
    pub total: u64,
    /// The active master key id.
    pub active_key_id: String,
}

type CacheKey = (String, String);

/// The credential service.
pub struct Credentials {
    store: Arc<dyn Store>,
    keyring: Keyring,
    providers: RwLock<Arc<Providers>>,
    cache: RwLock<HashMap<CacheKey, Arc<Credential>>>,
    deks: RwLock<HashMap<String, Arc<DataKey>>>,
    generation: AtomicU64,
    // Admin writes are rare; serialising them keeps version numbering simple. The store's
    // preconditions still protect against writers in other processes (fleet mode).
    write_lock: tokio::sync::Mutex<()>,
    retention: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
    capacity: usize,
    audit_seq: AtomicU64,
}

/// Decrypted credentials (and tenant data keys) kept in memory at most, by default. A full
/// cache drops an arbitrary entry per insert: memory stays bounded however many tenants
/// are active, and a dropped entry costs one cold lookup (about 2 µs) when next used.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;

fn insert_bounded<K: std::hash::Hash + Eq + Clone, V>(map: &mut HashMap<K, V>, key: K, value: V, cap: usize) {
    if map.len() >= cap && !map.contains_key(&key) {
        if let Some(victim) = map.keys().next().cloned() {
            map.remove(&victim);
        }
    }
    map.insert(key, value);
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("store", &self.store).field("keyring", &self.keyring).finish()
    }
}

const META_KEYCHECK: &str = "keycheck";

fn draft(
    actor: &str,
    action: &str,
    tenant: Option<&str>,
    provider: Option<&str>,
    target: Option<String>,
) -> AuditDraft {
    AuditDraft {
        actor: actor.to_string(),
        action: action.to_string(),
        tenant: tenant.map(str::to_string),
        provider: provider.map(str::to_string),
        target,
        result: "ok".to_string(),
    }
}

impl Credentials {
    /// Joins a store and a keyring. Checks that the keyring opens this store (a wrong master
    /// key is refused before anything is written) and records the check value on first use.
    pub async fn open(
        store: Arc<dyn Store>,
        keyring: Keyring,
        providers: Providers,
        retention: Duration,
    ) -> Result<Credentials, CredError> {
        let mut store_head = store.audit_head().await?.seq;
        match store.get_meta(META_KEYCHECK).await? {
            Some(check) => keyring.open_check(&check)?,
            None => {
                let value = keyring.seal_check()?;
                let mut d = draft("keyward", "store.init", None, None, Some(keyring.active_id().to_string()));
                d.target = Some(format!("master-key:{}", keyring.active_id()));
                store_head = store.commit(vec![Op::PutMeta { key: META_KEYCHECK.into(), value }], d).await?.seq;
            }
        }
        Ok(Credentials {
            store,
            keyring,
            providers: RwLock::new(Arc::new(providers)),
            cache: RwLock::new(HashMap::new()),
            deks: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            write_lock: tokio::sync::Mutex::new(()),
            retention,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            capacity: DEFAULT_CACHE_ENTRIES,
            audit_seq: AtomicU64::new(store_head),
        })
    }

    /// Sets how many decrypted credentials (and tenant keys) stay in memory.
    pub fn with_cache_entries(mut self, n: usize) -> Self {
        self.capacity = n.max(1);
        self
    }

    /// Commits through the store and tracks the audit chain's length.
    async fn commit(&self, ops: Vec<Op>, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        let entry = self.store.commit(ops, audit).await?;
        self.audit_seq.fetch_max(entry.seq, Ordering::Relaxed);
        Ok(entry)
    }

    /// Entries in the audit chain (as of this process's last commit).
    pub fn audit_length(&self) -> u64 {
        self.audit_seq.load(Ordering::Relaxed)
    }

    /// The providers currently configured.
    pub fn providers(&self) -> Arc<Providers> {
        self.providers.read().map(|p| p.clone()).unwrap_or_default()
    }

    /// Replaces the provider set (config reload).
    pub fn set_providers(&self, providers: Providers) {
        if let Ok(mut p) = self.providers.write() {
            *p = Arc::new(providers);
        }
        self.invalidate_all();
    }

    /// The store (for readiness checks and metrics).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Active master key id.
    pub fn active_key_id(&self) -> KeyId {
        self.keyring.active_id()
    }

    /// (hits, misses) of the cache since start.
    pub fn cache_stats(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    fn check_provider(&self, provider: &str) -> Result<(), CredError> {
        let providers = self.providers();
        if providers.get(provider).is_some() {
            Ok(())
        } else {
            Err(CredError::UnknownProvider(provider.to_string(), providers.names().collect::<Vec<_>>().join(", ")))
        }
    }

    fn invalidate(&self, tenant: &str, provider: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut c) = self.cache.write() {
            c.remove(&(tenant.to_string(), provider.to_string()));
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

    async fn data_key(&self, tenant: &TenantId) -> Result<Option<Arc<DataKey>>, CredError> {
        if let Some(k) = self.deks.read().ok().and_then(|d| d.get(tenant.as_str()).cloned()) {
            return Ok(Some(k));
        }
        let Some(rec) = self.store.get_tenant(tenant.as_str()).await? else {
            return Ok(None);
        };
        let dek = Arc::new(self.keyring.unwrap(tenant, &rec.wrapped_key)?);
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
        let key = (tenant.as_str().to_string(), provider.to_string());
        if let Some(c) = self.cache.read().ok().and_then(|c| c.get(&key).cloned()) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(c);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let gen = self.generation.load(Ordering::SeqCst);
        let c = Arc::new(self.load(tenant, provider).await?);
        if let Ok(mut cache) = self.cache.write() {
            if self.generation.load(Ordering::SeqCst) == gen {
                insert_bounded(&mut cache, key, c.clone(), self.capacity);
            }
        }
        Ok(c)
    }

    /// Reads and opens one credential, bypassing the cache.
    async fn load(&self, tenant: &TenantId, provider: &str) -> Result<Credential, CredError> {
        let not_found = || CredError::NotFound { tenant: tenant.to_string(), provider: provider.to_string() };
        let rec = self.store.get_credential(tenant.as_str(), provider).await?.ok_or_else(not_found)?;
        if rec.deleted_at.is_some() {
            return Err(not_found());
        }
        let dek = self.data_key(tenant).await?.ok_or_else(not_found)?;
        let plain = dek.open(RecordAad { tenant, provider, version: rec.version }, &rec.sealed)?;
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
        })
    }

    fn status_object(&self, r: &CredentialRecord) -> StatusObject {
        StatusObject {
            tenant: r.tenant.clone(),
            provider: r.provider.clone(),
            status: r.status,
            fields: r.fields.clone(),
            hints: r.hints.clone(),
            version: r.version,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
            last_verified_at: r.last_verified_at.map(rfc3339),
            last_error: r.last_error.clone(),
            deleted_at: r.deleted_at.map(rfc3339),
            purge_after: r.deleted_at.map(|d| rfc3339(d.saturating_add(self.retention_ms()))),
        }
    }

    fn retention_ms(&self) -> i64 {
        i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX)
    }

    /// Records a refused mutation in the audit log (best effort: the refusal stands even if
    /// the entry cannot be written).
    pub async fn audit_failure(
        &self,
        actor: &str,
        action: &str,
        tenant: Option<&str>,
        provider: Option<&str>,
        code: &str,
    ) {
        self.audit_note(actor, action, tenant, provider, &format!("error:{code}")).await;
    }

    /// Appends an audit entry that changes nothing else (the outcome of a side effect, such
    /// as a token revocation at the provider). Best effort.
    pub async fn audit_note(
        &self,
        actor: &str,
        action: &str,
        tenant: Option<&str>,
        provider: Option<&str>,
        result: &str,
    ) {
        let mut d = draft(actor, action, tenant, provider, None);
        d.result = result.to_string();
        if let Err(e) = self.commit(vec![], d).await {
            tracing::warn!(error = %e, action, "could not write an audit entry");
        }
    }

    /// Replaces one secret field of a stored credential (a rotated or newly connected
    /// refresh token), optionally setting the status; sealed and committed before it returns.
    pub async fn set_secret_field(
        &self,
        actor: &str,
        tenant: &TenantId,
        provider: &str,
        field: &str,
        value: Secret,
        status: Option<CredStatus>,
    ) -> Result<StatusObject, CredError> {
        let current = self.load(tenant, provider).await?;
        let mut secrets = current.secrets.clone();
        secrets.insert(field.to_string(), value);
        let hints: BTreeMap<String, String> = secrets.iter().map(|(k, v)| (k.clone(), v.hint())).collect();
        let next = |old: Option<&CredentialRecord>, now: Millis| {
            let old = old
                .filter(|o| o.deleted_at.is_none() && o.version == current.version)
                .ok_or_else(|| CredError::Store(StoreError::Conflict(format!("credential {tenant}/{provider}"))))?;
            Ok(CredentialRecord {
                version: old.version + 1,
                updated_at: now,
                hints: hints.clone(),
                status: status.unwrap_or(old.status),
                last_error: if status == Some(CredStatus::Active) { None } else { old.last_error.clone() },
                ..old.clone()
            })
        };
        self.write_record(actor, "credential.update", tenant, provider, next, Some(&secrets)).await
    }

    /// Seals the secret fields of `parsed` for `(tenant, provider, version)`.
    fn seal(
        dek: &DataKey,
        tenant: &TenantId,
        provider: &str,
        version: u64,
        secrets: &BTreeMap<String, Secret>,
    ) -> Result<Vec<u8>, CredError> {
        // Pre-size so serialisation never reallocates (a reallocation would leave an
        // un-wiped copy of the plaintext behind).
        let cap = secrets.iter().map(|(k, v)| k.len() + v.len() * 6 + 8).sum::<usize>() + 2;
        let mut buf = Zeroizing::new(Vec::with_capacity(cap));
        let plain: BTreeMap<&str, &str> = secrets.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
        serde_json::to_writer(&mut *buf, &plain).map_err(|_| VaultError::Malformed("serialisation"))?;
        Ok(dek.seal(RecordAad { tenant, provider, version }, &buf)?)
    }

    /// Seals a short-lived value (a Google access token shared with the fleet) with the
    /// tenant's data key; the AAD binds tenant, purpose and credential version.
    pub async fn seal_aux(
        &self,
        tenant: &TenantId,
        purpose: &str,
        version: u64,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CredError> {
        let dek = self
            .data_key(tenant)
            .await?
            .ok_or_else(|| CredError::NotFound { tenant: tenant.to_string(), provider: purpose.to_string() })?;
        Ok(dek.seal(RecordAad { tenant, provider: &format!("aux:{purpose}"), version }, plaintext)?)
    }

    /// Opens a value sealed by [`Credentials::seal_aux`].
    pub async fn open_aux(
        &self,
        tenant: &TenantId,
        purpose: &str,
        version: u64,
        blob: &[u8],
    ) -> Result<keyward_core::secret::SecretBytes, CredError> {
        let dek = self
            .data_key(tenant)
            .await?
            .ok_or_else(|| CredError::NotFound { tenant: tenant.to_string(), provider: purpose.to_string() })?;
        Ok(dek.open(RecordAad { tenant, provider: &format!("aux:{purpose}"), version }, blob)?)
    }

    /// Validates fields against the provider's schema (nothing is stored).
    pub fn parse(&self, provider: &str, fields: Value) -> Result<keyward_core::providers::ParsedFields, CredError> {
        self.check_provider(provider)?;
        let providers = self.providers();
        let def = providers.get(provider).ok_or_else(|| CredError::UnknownProvider(provider.into(), String::new()))?;
        Ok(def.schema.parse(fields)?)
    }

    /// Creates or replaces a credential. Returns the status object and operator warnings.
    pub async fn put(
        &self,
        actor: &str,
        tenant: &TenantId,
        provider: &str,
        fields: Value,
    ) -> Result<(StatusObject, Vec<String>), CredError> {
        let parsed = match self.parse(provider, fields) {
            Ok(p) => p,
            Err(e) => {
                self.audit_failure(actor, "credential.put", Some(tenant.as_str()), Some(provider), e.code()).await;
                return Err(e);
            }
        };
        self.put_parsed(actor, tenant, provider, parsed, None).await
    }

    /// Stores already validated fields; `verified_at` records a live check that passed.
    pub async fn put_parsed(
        &self,
        actor: &str,
        tenant: &TenantId,
        provider: &str,
        parsed: keyward_core::providers::ParsedFields,
        verified_at: Option<Millis>,
    ) -> Result<(StatusObject, Vec<String>), CredError> {
        let status = parsed.status.unwrap_or(CredStatus::Active);
        self.write_record(
            actor,
            "credential.put",
            tenant,
            provider,
            |old, now| {
                Ok(CredentialRecord {
                    tenant: tenant.to_string(),
                    provider: provider.to_string(),
                    version: old.map_or(1, |o| o.version + 1),
                    status,
                    fields: parsed.public.clone(),
                    hints: parsed.secrets.iter().map(|(k, v)| (k.clone(), v.hint())).collect(),
                    sealed: Vec::new(),
                    created_at: old.filter(|o| o.deleted_at.is_none()).map_or(now, |o| o.created_at),
                    updated_at: now,
                    last_verified_at: verified_at,
                    last_error: None,
                    deleted_at: None,
                })
            },
            Some(&parsed.secrets),
        )
        .await
        .map(|s| (s, parsed.warnings))
    }

    /// The common write path: read the current record, build the next one, seal, commit
    /// with its audit entry, invalidate. `secrets` is `None` to keep the sealed fields
    /// (status changes, delete, restore), which are then re-sealed for the new version.
    async fn write_record(
        &self,
        actor: &str,
        action: &str,
        tenant: &TenantId,
        provider: &str,
        next: impl FnOnce(Option<&CredentialRecord>, Millis) -> Result<CredentialRecord, CredError>,
        secrets: Option<&BTreeMap<String, Secret>>,
    ) -> Result<StatusObject, CredError> {
        let _guard = self.write_lock.lock().await;
        let old = self.store.get_credential(tenant.as_str(), provider).await?;
        let now = now_millis();
        let mut rec = next(old.as_ref(), now)?;
        let mut ops = Vec::new();
        let dek = match self.data_key(tenant).await? {
            Some(k) => k,
            None => {
                let dek = Arc::new(DataKey::generate()?);
                ops.push(Op::PutTenant(TenantRecord {
                    tenant: tenant.to_string(),
                    wrapped_key: self.keyring.wrap(tenant, &dek)?,
                    created_at: now,
                }));
                dek
            }
        };
        rec.sealed = match (secrets, &old) {
            (Some(s), _) => Self::seal(&dek, tenant, provider, rec.version, s)?,
            (None, Some(o)) => {
                // Version changes, so the blob is re-sealed under the new version's AAD.
                let plain = dek.open(RecordAad { tenant, provider, version: o.version }, &o.sealed)?;
                dek.seal(RecordAad { tenant, provider, version: rec.version }, &plain)?
            }
            (None, None) => {
                return Err(CredError::NotFound { tenant: tenant.to_string(), provider: provider.to_string() })
            }
        };
        let expect = old.as_ref().map_or(Expect::Absent, |o| Expect::Version(o.version));
        ops.push(Op::PutCredential { record: rec.clone(), expect });
        let result = self.commit(ops, draft(actor, action, Some(tenant.as_str()), Some(provider), None)).await;
        // Invalidate even on failure: a failed commit may be ambiguous (fleet backends).
        self.invalidate(tenant.as_str(), provider);
        result?;
        if let Ok(mut d) = self.deks.write() {
            d.entry(tenant.as_str().to_string()).or_insert(dek);
        }
        Ok(self.status_object(&rec))
    }

    /// Stores many new credentials in one atomic, audited commit (bulk import, store
    /// migration, benchmarks). Every item must be new; the batch fails as a whole otherwise.
    pub async fn import_batch(&self, actor: &str, items: Vec<(TenantId, String, Value)>) -> Result<usize, CredError> {
        let _guard = self.write_lock.lock().await;
        let now = now_millis();
        let mut ops = Vec::with_capacity(items.len() * 2);
        let mut new_keys: HashMap<String, Arc<DataKey>> = HashMap::new();
        let n = items.len();
        for (tenant, provider, fields) in items {
            self.check_provider(&provider)?;
            let parsed =
                self.providers().get(&provider).map(|d| d.schema.parse(fields)).transpose()?.unwrap_or_default();
            let dek = match new_keys.get(tenant.as_str()) {
                Some(k) => k.clone(),
                None => match self.data_key(&tenant).await? {
                    Some(k) => k,
                    None => {
                        let dek = Arc::new(DataKey::generate()?);
                        ops.push(Op::PutTenant(TenantRecord {
                            tenant: tenant.to_string(),
                            wrapped_key: self.keyring.wrap(&tenant, &dek)?,
                            created_at: now,
                        }));
                        new_keys.insert(tenant.as_str().to_string(), dek.clone());
                        dek
                    }
                },
            };
            let record = CredentialRecord {
                tenant: tenant.to_string(),
                provider: provider.clone(),
                version: 1,
                status: parsed.status.unwrap_or(CredStatus::Active),
                fields: parsed.public.clone(),
                hints: parsed.secrets.iter().map(|(k, v)| (k.clone(), v.hint())).collect(),
                sealed: Self::seal(&dek, &tenant, &provider, 1, &parsed.secrets)?,
                created_at: now,
                updated_at: now,
                last_verified_at: None,
                last_error: None,
                deleted_at: None,
            };
            ops.push(Op::PutCredential { record, expect: Expect::Absent });
        }
        self.commit(ops, draft(actor, "credential.import", None, None, Some(format!("{n} records")))).await?;
        self.invalidate_all();
        Ok(n)
    }

    /// Status of one credential. A soft-deleted one answers [`CredError::Deleted`].
    pub async fn status(&self, tenant: &TenantId, provider: &str) -> Result<StatusObject, CredError> {
        self.check_provider(provider)?;
        let rec = self
            .store
            .get_credential(tenant.as_str(), provider)
            .await?
            .ok_or_else(|| CredError::NotFound { tenant: tenant.to_string(), provider: provider.to_string() })?;
        if let Some(d) = rec.deleted_at {
            return Err(CredError::Deleted {
                tenant: tenant.to_string(),
                provider: provider.to_string(),
                deleted_at: rfc3339(d),
                purge_after: rfc3339(d.saturating_add(self.retention_ms())),
            });
        }
        Ok(self.status_object(&rec))
    }

    /// Status objects of a tenant's credentials.
    pub async fn list(&self, tenant: &TenantId, include_deleted: bool) -> Result<Vec<StatusObject>, CredError> {
        Ok(self
            .store
            .list_credentials(tenant.as_str())
            .await?
            .iter()
            .filter(|r| include_deleted || r.deleted_at.is_none())
            .map(|r| self.status_object(r))
            .collect())
    }

    /// Soft delete: stops working at once, restorable until retention passes.
    pub async fn delete(&self, actor: &str, tenant: &TenantId, provider: &str) -> Result<StatusObject, CredError> {
        self.check_provider(provider)?;
        self.write_record(
            actor,
            "credential.delete",
            tenant,
            provider,
            |old, now| {
                let old = old.filter(|o| o.deleted_at.is_none()).ok_or_else(|| CredError::NotFound {
                    tenant: tenant.to_string(),
                    provider: provider.to_string(),
                })?;
                Ok(CredentialRecord { version: old.version + 1, updated_at: now, deleted_at: Some(now), ..old.clone() })
            },
            None,
        )
        .await
    }

    /// Undoes a soft delete.
    pub async fn restore(&self, actor: &str, tenant: &TenantId, provider: &str) -> Result<StatusObject, CredError> {
        self.check_provider(provider)?;
        self.write_record(
            actor,
            "credential.restore",
            tenant,
            provider,
            |old, now| {
                let old = old.ok_or_else(|| CredError::NotFound {
                    tenant: tenant.to_string(),
                    provider: provider.to_string(),
                })?;
                if old.deleted_at.is_none() {
                    return Err(CredError::NotDeleted { tenant: tenant.to_string(), provider: provider.to_string() });
                }
                Ok(CredentialRecord { version: old.version + 1, updated_at: now, deleted_at: None, ..old.clone() })
            },
            None,
        )
        .await
    }

    /// Records the outcome of a live check or token refresh: `last_verified_at`,
    /// `last_error`, and optionally a new status.
    pub async fn record_check(
        &self,
        actor: &str,
        tenant: &TenantId,
        provider: &str,
        verified: bool,
        error: Option<String>,
        status: Option<CredStatus>,
    ) -> Result<StatusObject, CredError> {
        self.write_record(
            actor,
            "credential.check",
            tenant,
            provider,
            |old, now| {
                let old = old.filter(|o| o.deleted_at.is_none()).ok_or_else(|| CredError::NotFound {
                    tenant: tenant.to_string(),
                    provider: provider.to_string(),
                })?;
                Ok(CredentialRecord {
                    version: old.version + 1,
                    updated_at: now,
                    last_verified_at: if verified { Some(now) } else { old.last_verified_at },
                    last_error: error,
                    status: status.unwrap_or(old.status),
                    ..old.clone()
                })
            },
            None,
        )
        .await
    }

    /// Soft-deletes every credential of a tenant. Its data key is destroyed once the last
    /// of them is purged.
    pub async fn delete_tenant(&self, actor: &str, tenant: &TenantId) -> Result<Vec<StatusObject>, CredError> {
        let mut out = Vec::new();
        for r in self.store.list_credentials(tenant.as_str()).await? {
            if r.deleted_at.is_none() {
                out.push(self.delete(actor, tenant, &r.provider).await?);
            }
        }
        Ok(out)
    }

    /// Whether the tenant has ever stored a credential (its data key exists).
    pub async fn tenant_exists(&self, tenant: &TenantId) -> Result<bool, CredError> {
        if self.deks.read().is_ok_and(|d| d.contains_key(tenant.as_str())) {
            return Ok(true);
        }
        Ok(self.store.get_tenant(tenant.as_str()).await?.is_some())
    }

    /// Tenant ids in order, after `after`.
    pub async fn tenants(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, CredError> {
        Ok(self.store.list_tenants(after, limit).await?.into_iter().map(|t| t.tenant).collect())
    }

    /// Purges credentials deleted longer than the retention ago, and destroys the data key
    /// of any tenant left with none (crypto-shredding). Returns how many were purged.
    pub async fn purge_expired(&self) -> Result<u64, CredError> {
        let cutoff = now_millis().saturating_sub(self.retention_ms());
        let due = self.store.deleted_before(cutoff, 1000).await?;
        let mut purged = 0;
        for (tenant, provider) in due {
            let _guard = self.write_lock.lock().await;
            let Some(rec) = self.store.get_credential(&tenant, &provider).await? else {
                continue;
            };
            if rec.deleted_at.is_none_or(|d| d > cutoff) {
                continue;
            }
            let others = self.store.list_credentials(&tenant).await?.iter().filter(|r| r.provider != provider).count();
            let mut ops = vec![Op::PurgeCredential {
                tenant: tenant.clone(),
                provider: provider.clone(),
                expect_version: rec.version,
            }];
            let shred = others == 0;
            if shred {
                ops.push(Op::DeleteTenant(tenant.clone()));
            }
            let action = if shred { "credential.purge+tenant.shred" } else { "credential.purge" };
            self.commit(ops, draft("keyward", action, Some(&tenant), Some(&provider), None)).await?;
            self.invalidate(&tenant, &provider);
            if shred {
                if let Ok(mut d) = self.deks.write() {
                    d.remove(&tenant);
                }
            }
            tracing::info!(tenant = %tenant, provider = %provider, shredded = shred, "purged a deleted credential");
            purged += 1;
        }
        Ok(purged)
    }

    /// Re-wraps up to `limit` tenant keys under the active master key. Each batch commits
    /// on its own, so an interrupted rotation resumes where it stopped when rerun.
    pub async fn rotate_keys(&self, actor: &str, limit: usize) -> Result<RotateReport, CredError> {
        let _guard = self.write_lock.lock().await;
        let mut after: Option<String> = None;
        let (mut total, mut remaining, mut rewrapped) = (0u64, 0u64, 0u64);
        let mut batch = Vec::new();
        loop {
            let page = self.store.list_tenants(after.as_deref(), 1000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.tenant.clone());
            for t in page {
                total += 1;
                if self.keyring.is_active(&t.wrapped_key) {
                    continue;
                }
                if batch.len() < limit {
                    let id =
                        TenantId::parse(&t.tenant).map_err(|_| StoreError::Corrupt(format!("tenant {}", t.tenant)))?;
                    let dek = self.keyring.unwrap(&id, &t.wrapped_key)?;
                    batch.push(Op::PutTenant(TenantRecord { wrapped_key: self.keyring.wrap(&id, &dek)?, ..t }));
                } else {
                    remaining += 1;
                }
            }
        }
        let active = self.keyring.active_id().to_string();
        if !batch.is_empty() || remaining == 0 {
            rewrapped = batch.len() as u64;
            if remaining == 0 {
                batch.push(Op::PutMeta { key: META_KEYCHECK.into(), value: self.keyring.seal_check()? });
            }
            let target = Some(format!("master-key:{active} rewrapped:{rewrapped} remaining:{remaining}"));
            self.commit(batch, draft(actor, "keys.rotate", None, None, target)).await?;
        }
        if let Ok(mut d) = self.deks.write() {
            d.clear();
        }
        Ok(RotateReport { rewrapped, remaining, total, active_key_id: active })
    }

    /// Maps a route to a tenant. `keep_other_owner` refuses to move a route another tenant
    /// owns (automatic discovery); operators may move routes explicitly.
    pub async fn put_route(
        &self,
        actor: &str,
        kind: &RouteKind,
        id: &RouteId,
        tenant: &TenantId,
        keep_other_owner: bool,
    ) -> Result<(), CredError> {
        let op =
            Op::PutRoute { kind: kind.to_string(), id: id.to_string(), tenant: tenant.to_string(), keep_other_owner };
        self.store
            .commit(vec![op], draft(actor, "route.put", Some(tenant.as_str()), None, Some(format!("{kind}/{id}"))))
            .await?;
        Ok(())
    }

    /// The tenant a route points at: one store lookup, O(1) in the number of routes.
    pub async fn route(&self, kind: &str, id: &str) -> Result<Option<TenantId>, CredError> {
        Ok(self.store.get_route(kind, id).await?.and_then(|t| TenantId::parse(&t).ok()))
    }

    /// Removes a route; false when there was none.
    pub async fn delete_route(&self, actor: &str, kind: &RouteKind, id: &RouteId) -> Result<bool, CredError> {
        let Some(owner) = self.store.get_route(kind.as_str(), id.as_str()).await? else {
            return Ok(false);
        };
        let op = Op::DeleteRoute { kind: kind.to_string(), id: id.to_string() };
        self.store
            .commit(vec![op], draft(actor, "route.delete", Some(&owner), None, Some(format!("{kind}/{id}"))))
            .await?;
        Ok(true)
    }

    /// Audit entries after `after`.
    pub async fn audit(&self, after: u64, limit: usize) -> Result<(Vec<AuditEntry>, AuditHead), CredError> {
        Ok((self.store.audit_range(after, limit).await?, self.store.audit_head().await?))
    }

    /// Walks the whole audit chain.
    pub async fn audit_verify(&self) -> Result<ChainReport, CredError> {
        let head = self.store.audit_head().await?;
        let mut v = keyward_store::ChainVerifier::default();
        let mut after = 0;
        loop {
            let page = self.store.audit_range(after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            if !page.iter().all(|e| v.push(e)) {
                break;
            }
        }
        Ok(v.finish(&head))
    }
}

impl keyward_core::providers::FieldSource for Credential {
    fn secret_field(&self, name: &str) -> Option<&Secret> {
        self.secret(name)
    }

    fn public_field(&self, name: &str) -> Option<&str> {
        self.public_str(name)
    }
}

impl crate::metrics::DerivedSource for Credentials {
    fn values(&self) -> Vec<(&'static str, &'static str, bool, u64)> {
        let (hits, misses) = self.cache_stats();
        vec![
            ("keyward_credential_cache_hits", "Credential lookups answered from memory", true, hits),
            ("keyward_credential_cache_misses", "Credential lookups that read and opened the store", true, misses),
            ("keyward_audit_chain_length", "Entries in the hash-chained audit log", false, self.audit_length()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::insert_bounded;
    use std::collections::HashMap;

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
