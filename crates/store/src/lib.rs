//! The persistence boundary: sealed records, metadata, routes and the audit chain, behind
//! one trait ([`Store`]) so the embedded sled backend and a shared backend are
//! interchangeable.
//!
//! The store never sees plaintext and never imports `vault`: secret fields arrive already
//! sealed, as opaque bytes. Every mutation is committed together with its audit entry in
//! one atomic, durable step ([`Store::commit`]); if the audit entry cannot be written the
//! mutation does not happen (fail closed).

mod audit;
mod integrity;
pub mod pg;
mod sled_store;

pub use audit::{verify_chain, verify_store, ChainReport, ChainVerifier};
pub use integrity::Integrity;
pub use pg::{PgStore, PgTarget};
pub use sled_store::SledStore;

/// A change another replica made (fleet mode), for cache invalidation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// One credential.
    Credential {
        /// Tenant.
        tenant: String,
        /// Provider.
        provider: String,
    },
    /// A tenant record (data key).
    Tenant(String),
    /// Anything: drop every cached value (also sent after a reconnect).
    All,
}

impl Change {
    /// Parses a NOTIFY payload (`cred/<tenant>/<provider>`, `tenant/<tenant>`, `all`).
    pub fn parse(payload: &str) -> Change {
        let mut parts = payload.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("cred"), Some(t), Some(p)) => Change::Credential { tenant: t.to_string(), provider: p.to_string() },
            (Some("tenant"), Some(t), None) => Change::Tenant(t.to_string()),
            _ => Change::All,
        }
    }
}

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use keyward_core::status::CredStatus;

use keyward_core::ids::{ProviderName, RouteId, RouteKind, TenantId};

pub use keyward_core::time::{now_millis, Millis};

/// Serde helper: bytes as standard base64 text.
pub(crate) mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// A tenant and its wrapped data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    /// Tenant id.
    pub tenant: TenantId,
    /// The data key, sealed under a master key.
    #[serde(with = "b64")]
    pub wrapped_key: Vec<u8>,
    /// When the tenant was first seen.
    pub created_at: Millis,
}

/// One tenant's credential for one provider: public metadata plus the sealed secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CredentialRecord {
    /// Owner.
    pub tenant: TenantId,
    /// Provider name.
    pub provider: ProviderName,
    /// Monotonic version; part of the sealed blob's AAD.
    pub version: u64,
    /// Status.
    pub status: CredStatus,
    /// Non-secret fields, echoed in status objects.
    pub fields: BTreeMap<String, serde_json::Value>,
    /// `…` + last four characters of each secret field.
    pub hints: BTreeMap<String, String>,
    /// The secret fields as JSON, sealed by the tenant's data key.
    #[serde(with = "b64")]
    pub sealed: Vec<u8>,
    /// First stored.
    pub created_at: Millis,
    /// Last changed.
    pub updated_at: Millis,
    /// Last live check that reached the provider.
    pub last_verified_at: Option<Millis>,
    /// Last error from a live check or a token refresh.
    pub last_error: Option<String>,
    /// Set while soft-deleted.
    pub deleted_at: Option<Millis>,
    /// What the sealed blob's AAD binds: 0 or 1, identity and version; 2, also the state
    /// (status, deletion, public fields, last check). Older records are re-sealed at their
    /// next write.
    #[serde(default)]
    pub aad_version: u8,
}

/// A precondition on the current version of a credential, for optimistic concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No record may exist.
    Absent,
    /// The stored record must have this version.
    Version(u64),
}

impl Expect {
    /// Whether `current` (the stored credential's version, if any) meets the precondition.
    pub fn holds(self, current: Option<u64>) -> bool {
        match (self, current) {
            (Expect::Absent, None) => true,
            (Expect::Version(v), Some(c)) => c == v,
            _ => false,
        }
    }
}

/// One change in a [`Store::commit`] batch.
#[derive(Debug, Clone)]
pub enum Op {
    /// Create a tenant record; fails with [`StoreError::TenantChanged`] when one exists
    /// (another sidecar created it first: seal under the winner's key and retry).
    CreateTenant(TenantRecord),
    /// Require that the tenant's stored wrapped key is still `wrapped_key`: a write sealed
    /// under a key read earlier must not land after that key was shredded or replaced.
    ExpectTenant {
        /// The tenant.
        tenant: TenantId,
        /// The wrapped key the writer sealed under.
        wrapped_key: Vec<u8>,
    },
    /// Replace a tenant's wrapped key (master-key rotation), only if it is still `expect`:
    /// a rotation must neither resurrect a shredded tenant nor overwrite a re-created one.
    RewrapTenant {
        /// The record with the new wrapped key.
        record: TenantRecord,
        /// The wrapped key the rotation read.
        expect: Vec<u8>,
    },
    /// Destroy a tenant's data key (crypto-shredding), only if it is still `expect` and no
    /// credential of the tenant remains (checked inside the transaction on shared stores).
    DeleteTenant {
        /// The tenant.
        tenant: TenantId,
        /// The wrapped key the purge read.
        expect: Vec<u8>,
    },
    /// Create or replace a credential.
    PutCredential {
        /// The new record.
        record: CredentialRecord,
        /// Precondition on the stored one.
        expect: Expect,
    },
    /// Remove a credential for good (purge).
    PurgeCredential {
        /// Owner.
        tenant: TenantId,
        /// Provider.
        provider: ProviderName,
        /// Precondition.
        expect_version: u64,
    },
    /// Map a route to a tenant.
    PutRoute {
        /// Route kind.
        kind: RouteKind,
        /// Route id.
        id: RouteId,
        /// Owner.
        tenant: TenantId,
        /// Refuse when the route already belongs to another tenant.
        keep_other_owner: bool,
    },
    /// Remove a route.
    DeleteRoute {
        /// Route kind.
        kind: RouteKind,
        /// Route id.
        id: RouteId,
    },
    /// Set a metadata value only if it is still `expect` (`None`: absent), so that two
    /// sidecars initialising or upgrading one store cannot both win.
    SwapMeta {
        /// Key.
        key: String,
        /// The value read.
        expect: Option<Vec<u8>>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Set a metadata value.
    PutMeta {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
    },
}

/// What an audit entry records, before the store numbers and chains it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDraft {
    /// Who: `uid:1000`, `token:ab12…`, or `keyward` for the daemon itself.
    pub actor: String,
    /// What, e.g. `credential.put`.
    pub action: String,
    /// Tenant concerned.
    pub tenant: Option<String>,
    /// Provider concerned.
    pub provider: Option<String>,
    /// Other object (a route `kind/id`, a key id).
    pub target: Option<String>,
    /// `ok`, or `error:<code>`.
    pub result: String,
}

/// An entry of the hash-chained audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1-based, gapless.
    pub seq: u64,
    /// When.
    pub ts: Millis,
    /// The recorded facts.
    #[serde(flatten)]
    pub draft: AuditDraft,
    /// Hex SHA-256 of the previous entry (64 zeros for the first).
    pub prev: String,
    /// Hex SHA-256 over this entry's fields and `prev`.
    pub hash: String,
}

/// The newest entry of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AuditHead {
    /// Its sequence number (0 when empty).
    pub seq: u64,
    /// Its hash (64 zeros when empty).
    pub hash: String,
}

/// A route as stored, with its MAC (empty for a route written before routes had one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRow {
    /// Kind.
    pub kind: RouteKind,
    /// Id.
    pub id: RouteId,
    /// Owner.
    pub tenant: TenantId,
    /// [`Integrity`] MAC over kind, id and owner.
    pub mac: Vec<u8>,
}

/// The error an authenticated read gives for a record whose MAC does not hold.
pub(crate) fn tampered(what: String) -> StoreError {
    StoreError::Tampered(what)
}

/// A record copied between stores by `keyward store migrate`.
#[derive(Debug, Clone)]
pub enum Imported {
    /// A tenant and its wrapped data key.
    Tenant(TenantRecord),
    /// A credential record.
    Credential(CredentialRecord),
    /// A route.
    Route(RouteRow),
    /// A metadata value (the key check value).
    Meta {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
    },
    /// An audit entry, appended as is.
    Audit(AuditEntry),
}

/// Store failures. Messages name records, never contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition failed: someone else changed the record first.
    #[error("{0} was changed concurrently; retry")]
    Conflict(String),
    /// A tenant's data key is not the one the writer read (created, rotated or shredded
    /// by another writer meanwhile).
    #[error("tenant {0}'s data key was changed concurrently; retry")]
    TenantChanged(String),
    /// A route already points at another tenant.
    #[error("route {kind}/{id} already belongs to tenant {owner}")]
    RouteTaken {
        /// Route kind.
        kind: String,
        /// Route id.
        id: String,
        /// Current owner.
        owner: String,
    },
    /// Another daemon holds the store.
    #[error("store {0} is in use by another keyward process (its lock file is held); run one daemon per store")]
    Locked(String),
    /// The store directory cannot be used.
    #[error("store directory {path}: {reason}")]
    Directory {
        /// The directory.
        path: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The backend failed or is unreachable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored value does not decode.
    #[error("store record {0} is corrupt")]
    Corrupt(String),
    /// A record's MAC does not hold: it was written by someone without the master key.
    #[error("{0}: the store was changed outside keyward (run `keyward audit verify`; restore from a backup)")]
    Tampered(String),
}

impl StoreError {
    /// The public error code (CONTRACT.md §6) this failure answers with.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Conflict(_) | StoreError::TenantChanged(_) => "conflict",
            StoreError::RouteTaken { .. } => "route_taken",
            StoreError::Unavailable(_) | StoreError::Locked(_) | StoreError::Directory { .. } => "store_unavailable",
            StoreError::Corrupt(_) | StoreError::Tampered(_) => "internal",
        }
    }
}

/// The persistence interface shared by every backend.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Applies every op and appends one audit entry, atomically and durably. Returns the
    /// audit entry once it is on disk.
    async fn commit(&self, ops: Vec<Op>, audit: AuditDraft) -> Result<AuditEntry, StoreError>;

    /// A metadata value.
    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// A tenant record.
    async fn get_tenant(&self, tenant: &TenantId) -> Result<Option<TenantRecord>, StoreError>;

    /// Tenant records in id order, strictly after `after`.
    async fn list_tenants(&self, after: Option<&TenantId>, limit: usize) -> Result<Vec<TenantRecord>, StoreError>;

    /// One credential (soft-deleted ones included).
    async fn get_credential(
        &self,
        tenant: &TenantId,
        provider: &ProviderName,
    ) -> Result<Option<CredentialRecord>, StoreError>;

    /// A tenant's credentials (soft-deleted ones included).
    async fn list_credentials(&self, tenant: &TenantId) -> Result<Vec<CredentialRecord>, StoreError>;

    /// Soft-deleted credentials deleted at or before `cutoff`: `(tenant, provider)`.
    async fn deleted_before(&self, cutoff: Millis, limit: usize) -> Result<Vec<(TenantId, ProviderName)>, StoreError>;

    /// The tenant a route points at.
    async fn get_route(&self, kind: &RouteKind, id: &RouteId) -> Result<Option<TenantId>, StoreError>;

    /// Audit entries with `seq > after`, at most `limit`.
    async fn audit_range(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;

    /// The newest audit entry.
    async fn audit_head(&self) -> Result<AuditHead, StoreError>;

    /// Number of stored credentials (for start-up logs and metrics).
    async fn credential_count(&self) -> Result<u64, StoreError>;

    /// Routes in `(kind, id)` order, strictly after `after`, as stored (MACs unchecked: for
    /// copying and upgrading).
    async fn list_routes(
        &self,
        after: Option<(&RouteKind, &RouteId)>,
        limit: usize,
    ) -> Result<Vec<RouteRow>, StoreError>;

    /// Loads the integrity key (the daemon does once it has opened the key check value):
    /// commits are chained under it, routes written and read are authenticated with it.
    fn set_integrity(&self, key: Integrity);

    /// The loaded integrity key.
    fn integrity(&self) -> Option<Integrity>;

    /// Writes records verbatim, without auditing (store migration). A record that already
    /// exists unchanged is skipped, so an interrupted migration can be rerun; one that
    /// differs is a conflict. Audit entries must continue the target's chain.
    async fn import(&self, items: Vec<Imported>) -> Result<(), StoreError>;

    /// Changes made by other processes sharing this store (fleet mode); `None` when the
    /// store is private to this process.
    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }

    /// Whether the backend is reachable right now (readiness).
    fn healthy(&self) -> bool {
        true
    }

    /// The PostgreSQL store, for fleet-only features (shared replay keys).
    fn as_pg(&self) -> Option<&PgStore> {
        None
    }
}
