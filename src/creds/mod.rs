//! Credentials: joins the store and the vault. The only place plaintext credentials are
//! produced, the in-memory cache of them, and every audited mutation (credentials, routes,
//! key rotation, purge). Knows nothing of HTTP.
//!
//! Cache rule: an entry is filled on first use and dropped on every write, delete and
//! restore of that credential, so the next request sees the change (no TTL). A fill that
//! raced with a write is discarded (generation counter), never stored stale.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use serde_json::Value;

use crate::vault::{DataKey, KeyId, Keyring, RecordAad, VaultError, WrapSource};
use keyward_core::ids::{ProviderName, RouteId, RouteKind, TenantId};
use keyward_core::providers::{FieldError, Injection, OutboundError, ProviderDef, Providers};
use keyward_core::secret::Secret;
use keyward_core::time::rfc3339;
use zeroize::Zeroizing;
mod audit;
mod checkpoint;
mod integrity;
mod resolve;
mod rotate;
mod routes;
mod status;
mod write;

pub(crate) use checkpoint::{Checkpoint, CHECKPOINT_ACTION};
pub(crate) use resolve::DEFAULT_CACHE_ENTRIES;
pub(crate) use status::StatusObject;

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
    /// Made on first use, for providers whose injection depends on the credential alone.
    injection: OnceLock<Arc<MadeInjection>>,
}

/// A provider's injection for one credential, made once and shared by its requests: no
/// copy of the secret per request. Its header values and scrub list are wiped when the
/// last request holding them is done after the credential left the cache.
pub(crate) struct MadeInjection {
    /// The provider set it was made with (a reload makes it anew: the cache is refilled).
    made_by: Weak<ProviderDef>,
    /// Without its scrub list, which is `scrub`.
    pub(crate) injection: Injection,
    pub(crate) scrub: Arc<[Zeroizing<Vec<u8>>]>,
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
            injection: OnceLock::new(),
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

    /// Takes in what a token endpoint rotated while a candidate was checked.
    pub(crate) fn absorb(&mut self, refresh_token: Option<Secret>, instance_url: Option<String>) {
        if let Some(t) = refresh_token {
            self.secrets.insert("refresh_token".into(), t);
        }
        if let Some(u) = instance_url {
            self.public.insert("instance_url".into(), Value::String(u));
        }
        self.injection = OnceLock::new();
    }

    /// `def`'s injection for this credential, made on first use: only for providers whose
    /// injection [depends on the credential alone](ProviderDef::injection_per_credential).
    pub(crate) fn injection(&self, def: &Arc<ProviderDef>) -> Result<Arc<MadeInjection>, OutboundError> {
        if let Some(made) = self.injection.get().filter(|m| std::ptr::eq(m.made_by.as_ptr(), Arc::as_ptr(def))) {
            return Ok(made.clone());
        }
        let mut injection = def.inject(self, "/", None)?;
        let scrub = std::mem::take(&mut injection.scrub).into();
        let made = Arc::new(MadeInjection { made_by: Arc::downgrade(def), injection, scrub });
        // The first made is kept; one made with a provider set reloaded meanwhile is used once.
        let _ = self.injection.set(made.clone());
        Ok(made)
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
    /// The tenant has no (live) credential for `provider`.
    pub(crate) fn not_found(tenant: &TenantId, provider: &str) -> Self {
        CredError::NotFound { tenant: tenant.to_string(), provider: provider.to_string() }
    }

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
            CredError::Vault(v) => v.code(),
        }
    }
}

type CacheKey = (String, String);

/// The credential service.
pub struct Credentials {
    store: Arc<dyn Store>,
    keyring: Keyring,
    integrity: keyward_store::Integrity,
    // The newest version seen per credential: the rollback guard.
    high_water: std::sync::Mutex<HashMap<(String, String, Millis), u64>>,
    providers: RwLock<Arc<Providers>>,
    cache: RwLock<HashMap<CacheKey, Arc<Credential>>>,
    deks: RwLock<HashMap<String, Arc<TenantKey>>>,
    generation: AtomicU64,
    // Admin writes are rare; serialising them keeps version numbering simple. Writers in
    // other processes (fleet mode) are met by the store's preconditions: the credential's
    // version, and the tenant's wrapped key (created if absent, else expected unchanged).
    write_lock: tokio::sync::Mutex<()>,
    retention: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
    capacity: usize,
    audit_seq: AtomicU64,
    /// Woken at every commit, for requests waiting on new audit entries.
    audit_notify: tokio::sync::Notify,
    /// Set at shutdown: waiting requests answer at once, so the drain does not wait on them.
    audit_waits_over: std::sync::atomic::AtomicBool,
    /// The last audit verification's verdict: 0 none yet, 1 intact, 2 broken.
    audit_verified: std::sync::atomic::AtomicU8,
    // How long an unwrapped tenant key (and what it decrypted) stays in memory.
    key_ttl: Option<Duration>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("store", &self.store).field("keyring", &self.keyring).finish()
    }
}

const META_KEYCHECK: &str = "keycheck";

/// A tenant's data key with the wrapped form it was read as: a write sealed under it
/// requires the store to still hold that wrapped key ([`Op::ExpectTenant`]).
pub(super) struct TenantKey {
    wrapped: Vec<u8>,
    dek: DataKey,
    /// When it was unwrapped (or made): it is dropped `key_ttl` later.
    at: std::time::Instant,
}

impl TenantKey {
    pub(super) fn new(wrapped: Vec<u8>, dek: DataKey) -> TenantKey {
        TenantKey { wrapped, dek, at: std::time::Instant::now() }
    }
}

/// How often a write is retried when another sidecar created, rotated or shredded the
/// tenant's key between its read and its commit; each retry re-reads the key.
const TENANT_RACE_RETRIES: usize = 4;

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
    /// key is refused before anything is written), records the check value with a new
    /// integrity key on first use (or upgrades an older store), and loads that key into the
    /// store.
    pub async fn open(
        store: Arc<dyn Store>,
        keyring: Keyring,
        providers: Providers,
        retention: Duration,
    ) -> Result<Credentials, CredError> {
        let (integrity, store_head) = integrity::open(&*store, &keyring).await?;
        Ok(Credentials {
            store,
            keyring,
            integrity,
            high_water: std::sync::Mutex::new(HashMap::new()),
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
            audit_verified: std::sync::atomic::AtomicU8::new(0),
            audit_notify: tokio::sync::Notify::new(),
            audit_waits_over: std::sync::atomic::AtomicBool::new(false),
            key_ttl: None,
        })
    }

    /// Sets how many decrypted credentials (and tenant keys) stay in memory.
    pub fn with_cache_entries(mut self, n: usize) -> Self {
        self.capacity = n.max(1);
        self
    }

    /// Bounds how long an unwrapped tenant key stays in memory (`[master_key] cache_ttl`);
    /// the tenant's decrypted credentials go with it.
    pub fn with_key_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.key_ttl = ttl;
        self
    }

    /// Whether a cached tenant key is still within its lifetime.
    pub(super) fn fresh(&self, k: &TenantKey) -> bool {
        self.key_ttl.is_none_or(|ttl| k.at.elapsed() < ttl)
    }

    /// Drops tenant keys older than `cache_ttl`, and the credentials they decrypted, so an
    /// idle tenant's plaintext does not outlive the bound (checked every tenth of it, at
    /// most a minute apart).
    pub(crate) async fn expire_keys(self: Arc<Self>, mut shutdown: crate::shutdown::Shutdown) {
        let Some(ttl) = self.key_ttl else { return };
        let every = (ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let mut gone = Vec::new();
            if let Ok(mut d) = self.deks.write() {
                d.retain(|t, k| {
                    let keep = self.fresh(k);
                    if !keep {
                        gone.push(t.clone());
                    }
                    keep
                });
            }
            if !gone.is_empty() {
                if let Ok(mut c) = self.cache.write() {
                    c.retain(|(t, _), _| !gone.contains(t));
                }
                tracing::debug!(tenants = gone.len(), "tenant keys past cache_ttl dropped");
            }
        }
    }

    /// Commits through the store and tracks the audit chain's length.
    async fn commit(&self, ops: Vec<Op>, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        let entry = self.store.commit(ops, audit).await?;
        self.audit_seq.fetch_max(entry.seq, Ordering::Relaxed);
        self.audit_notify.notify_waiters();
        Ok(entry)
    }

    /// Whether the KMS holding the master key answered last time (`None`: a local key).
    pub(crate) fn kms_health(&self) -> Option<Arc<std::sync::atomic::AtomicBool>> {
        self.keyring.kms_health()
    }

    /// While the KMS is unreachable, probes it with backoff (1 s doubling to 30 s) until it
    /// answers, so readiness recovers without waiting for a cold tenant's request.
    pub(crate) async fn watch_kms(self: Arc<Self>, mut shutdown: crate::shutdown::Shutdown) {
        let Some(up) = self.kms_health() else { return };
        let mut wait = Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if up.load(Ordering::SeqCst) {
                wait = Duration::from_secs(1);
                continue;
            }
            wait = if self.keyring.probe().await.is_ok() {
                Duration::from_secs(1)
            } else {
                (wait * 2).min(Duration::from_secs(30))
            };
        }
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

    pub(crate) fn check_provider(&self, provider: &str) -> Result<(), CredError> {
        self.provider_name(provider).map(|_| ())
    }

    /// The configured provider's typed name, or `unknown_provider`.
    fn provider_name(&self, provider: &str) -> Result<ProviderName, CredError> {
        let providers = self.providers();
        match providers.get(provider) {
            Some(def) => Ok(def.name.clone()),
            None => {
                Err(CredError::UnknownProvider(provider.to_string(), providers.names().collect::<Vec<_>>().join(", ")))
            }
        }
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
        let mut rows = vec![
            ("keyward_credential_cache_hits", "Credential lookups answered from memory", true, hits),
            ("keyward_credential_cache_misses", "Credential lookups that read and opened the store", true, misses),
            ("keyward_audit_chain_length", "Entries in the hash-chained audit log", false, self.audit_length()),
        ];
        // Only once a verification ran (keyward audit verify, GET /v1/audit/verify).
        match self.audit_verified.load(Ordering::Relaxed) {
            0 => {}
            v => rows.push((
                "keyward_audit_chain_verified",
                "1 when the last audit chain verification found it intact, 0 when broken or truncated",
                false,
                u64::from(v == 1),
            )),
        }
        rows
    }
}

/// A credential service over a fresh sled store in `dir` with a random master key, for
/// unit tests of the layers above.
#[cfg(test)]
pub(crate) async fn for_tests(dir: &std::path::Path) -> Credentials {
    let store: Arc<dyn Store> =
        Arc::new(keyward_store::SledStore::open(&dir.join("db")).unwrap_or_else(|e| panic!("{e}")));
    let key = keyward_core::secret::KeyBytes::random().unwrap_or_else(|e| panic!("{e}"));
    Credentials::open(store, Keyring::from_keys(key, vec![]), Providers::default_builtin(), Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}
