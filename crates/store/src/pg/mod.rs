//! The fleet backend: PostgreSQL shared by many keyward sidecars.
//!
//! PostgreSQL only ever sees what sled would store: ciphertext and non-secret metadata. A
//! commit is one transaction that first takes a transaction-level advisory lock, so audit
//! appends from every replica form one chain; it ends with `NOTIFY keyward_changes`, which
//! every replica's listener connection turns into cache invalidations. When the connection
//! drops, reads and writes fail with `StoreError::Unavailable` (the credential cache keeps
//! serving), a supervisor reconnects with backoff, and subscribers are told to drop their
//! whole cache (a full resync: nothing missed while disconnected is served stale).
//!
//! Schema changes are embedded, numbered migrations applied at start under a session
//! advisory lock, so sidecars starting together migrate once.

mod commit;
mod conn;
mod fleet;
mod migrations;

pub use fleet::RefreshLock;

use conn::{connect, listen, supervise};
use migrations::migrate;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{broadcast, Mutex, RwLock};
use tokio_postgres::Client;

use keyward_core::ids::{ProviderName, RouteId, RouteKind, TenantId};

use super::{
    tampered, AuditDraft, AuditEntry, AuditHead, Change, CredentialRecord, Imported, Integrity, Millis, Op, RouteRow,
    Store, StoreError, TenantRecord,
};
use crate::audit::chain;

/// Advisory lock keys (arbitrary, fixed): migrations, audit appends; token refreshes use
/// the two-key form `(LOCK_REFRESH_SPACE, hash(tenant))`.
const LOCK_MIGRATE: i64 = 0x6b65_7977_6172_6401;
const LOCK_AUDIT: i64 = 0x6b65_7977_6172_6402;
const LOCK_REFRESH_SPACE: i32 = 0x6b77_7266;

/// How to reach the database.
#[derive(Clone)]
pub struct PgTarget {
    /// The parsed connection settings (password already set from its file).
    pub config: tokio_postgres::Config,
    /// TLS, when the URL asks for it (`sslmode=require`).
    pub tls: Option<rustls::ClientConfig>,
    /// Printable form without the password (for logs).
    pub display: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

struct Conns {
    reader: Client,
    writer: Mutex<Client>,
    listener: Client,
}

/// The PostgreSQL store.
pub struct PgStore {
    target: PgTarget,
    conns: RwLock<Option<Arc<Conns>>>,
    connected: AtomicBool,
    changes: broadcast::Sender<Change>,
    integrity: crate::integrity::IntegritySlot,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("target", &self.target).finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL: {e}"))
}

/// An id read from a column; one that does not parse is corruption.
fn id<T, E>(parse: fn(&str) -> Result<T, E>, what: &str, s: &str) -> Result<T, StoreError> {
    parse(s).map_err(|_| StoreError::Corrupt(what.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|_| StoreError::Corrupt(what.to_string()))
}

fn encode<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

impl PgStore {
    /// Connects, applies migrations (once across the fleet), and starts the supervisor
    /// that listens for changes and reconnects after failures.
    pub async fn open(target: PgTarget) -> Result<Arc<PgStore>, StoreError> {
        let (changes, _) = broadcast::channel(4096);
        let store = Arc::new(PgStore {
            target,
            conns: RwLock::new(None),
            connected: AtomicBool::new(false),
            changes,
            integrity: Default::default(),
        });
        let (mut client, task) = connect(&store.target).await?;
        migrate(&mut client).await?;
        drop(client);
        task.abort();
        store.establish().await?;
        let weak = Arc::downgrade(&store);
        tokio::spawn(async move { supervise(weak).await });
        Ok(store)
    }

    async fn establish(&self) -> Result<Vec<tokio::task::JoinHandle<()>>, StoreError> {
        let (reader, t1) = connect(&self.target).await?;
        let (writer, t2) = connect(&self.target).await?;
        let (listener, t3) = listen(&self.target, self.changes.clone()).await?;
        *self.conns.write().await = Some(Arc::new(Conns { reader, writer: Mutex::new(writer), listener }));
        self.connected.store(true, Ordering::SeqCst);
        Ok(vec![t1, t2, t3])
    }

    async fn conns(&self) -> Result<Arc<Conns>, StoreError> {
        self.conns.read().await.clone().ok_or_else(|| unavailable("not connected (reconnecting)"))
    }

    /// Whether every connection is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    async fn mark_down(&self) {
        if self.connected.swap(false, Ordering::SeqCst) {
            tracing::warn!(db = %self.target.display, "PostgreSQL connection lost; serving cached credentials, writes fail until it is back");
        }
        *self.conns.write().await = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CredStatus, CredentialRecord};

    #[test]
    fn records_round_trip_and_a_bad_row_is_named_corrupt() {
        let r = CredentialRecord {
            tenant: TenantId::parse("acme").unwrap_or_else(|e| panic!("{e}")),
            provider: ProviderName::parse("vapi").unwrap_or_else(|e| panic!("{e}")),
            version: 3,
            status: CredStatus::Active,
            fields: Default::default(),
            hints: Default::default(),
            sealed: vec![0, 1, 2, 255],
            created_at: 1,
            updated_at: 2,
            last_verified_at: None,
            last_error: None,
            deleted_at: None,
            aad_version: 2,
        };
        let back: CredentialRecord = decode("credential acme/vapi", &encode(&r)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, r);
        let bad = decode::<CredentialRecord>("credential acme/vapi", "{\"tenant\":");
        assert!(matches!(bad, Err(StoreError::Corrupt(w)) if w == "credential acme/vapi"));
    }

    #[test]
    fn notify_payloads_name_what_changed_and_anything_else_drops_everything() {
        assert_eq!(
            Change::parse("cred/acme/vapi"),
            Change::Credential { tenant: "acme".into(), provider: "vapi".into() }
        );
        assert_eq!(Change::parse("tenant/acme"), Change::Tenant("acme".into()));
        for other in ["all", "", "cred/acme", "tenant/acme/x", "what/ever"] {
            assert_eq!(Change::parse(other), Change::All, "{other:?}");
        }
    }

    #[test]
    fn migrations_are_numbered_one_up_without_gaps() {
        let versions: Vec<i32> = migrations::MIGRATIONS.iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, (1..=versions.len() as i32).collect::<Vec<_>>());
        assert!(migrations::MIGRATIONS.iter().all(|(_, sql)| !sql.trim().is_empty()));
    }
}
