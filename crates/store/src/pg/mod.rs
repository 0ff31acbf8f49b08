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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, Mutex, RwLock};
use tokio_postgres::{Client, NoTls};

use super::audit::chain;
use super::{
    AuditDraft, AuditEntry, AuditHead, Change, CredentialRecord, Imported, Millis, Op, Store, StoreError, TenantRecord,
};

/// Advisory lock keys (arbitrary, fixed): migrations, audit appends; token refreshes use
/// the two-key form `(LOCK_REFRESH_SPACE, hash(tenant))`.
const LOCK_MIGRATE: i64 = 0x6b65_7977_6172_6401;
const LOCK_AUDIT: i64 = 0x6b65_7977_6172_6402;
const LOCK_REFRESH_SPACE: i32 = 0x6b77_7266;

/// Held while one replica refreshes a tenant's token; dropping it closes its connection,
/// which releases the lock.
pub struct RefreshLock {
    _client: Client,
    _task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RefreshLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshLock")
    }
}

const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE keyward_tenants (tenant text PRIMARY KEY, record text NOT NULL);
     CREATE TABLE keyward_credentials (tenant text NOT NULL, provider text NOT NULL, record text NOT NULL,
         deleted_at bigint, PRIMARY KEY (tenant, provider));
     CREATE INDEX keyward_credentials_deleted ON keyward_credentials (deleted_at) WHERE deleted_at IS NOT NULL;
     CREATE TABLE keyward_routes (kind text NOT NULL, id text NOT NULL, tenant text NOT NULL, PRIMARY KEY (kind, id));
     CREATE TABLE keyward_audit (seq bigint PRIMARY KEY, entry text NOT NULL);
     CREATE TABLE keyward_meta (key text PRIMARY KEY, value bytea NOT NULL);
     CREATE TABLE keyward_replay (key text PRIMARY KEY, expires_at bigint NOT NULL, inflight boolean NOT NULL);
     CREATE INDEX keyward_replay_expiry ON keyward_replay (expires_at);",
    ),
    (
        2,
        "CREATE TABLE keyward_tokens (tenant text NOT NULL, provider text NOT NULL, sealed bytea NOT NULL,
             expires_at bigint NOT NULL, version bigint NOT NULL, PRIMARY KEY (tenant, provider));
         CREATE TABLE keyward_connect (state_hash bytea PRIMARY KEY, tenant text NOT NULL, sealed bytea NOT NULL,
             expires_at bigint NOT NULL);",
    ),
];

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
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("target", &self.target).finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL: {e}"))
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|_| StoreError::Corrupt(what.to_string()))
}

fn encode<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Connects once; spawns the connection task (which ends when the connection drops).
async fn connect(target: &PgTarget) -> Result<(Client, tokio::task::JoinHandle<()>), StoreError> {
    let timeout = Duration::from_secs(5);
    let fut = async {
        match &target.tls {
            Some(tls) => {
                let (client, conn) = target
                    .config
                    .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone()))
                    .await
                    .map_err(unavailable)?;
                Ok::<_, StoreError>((
                    client,
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                ))
            }
            None => {
                let (client, conn) = target.config.connect(NoTls).await.map_err(unavailable)?;
                Ok((
                    client,
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                ))
            }
        }
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| unavailable("connect timed out"))?
}

/// A listening connection: issues `LISTEN keyward_changes` and forwards every NOTIFY
/// payload to `tx` until the connection drops.
async fn listen(
    target: &PgTarget,
    tx: broadcast::Sender<Change>,
) -> Result<(Client, tokio::task::JoinHandle<()>), StoreError> {
    use futures_util::StreamExt;
    type Messages = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>> + Send>,
    >;
    let fut = async {
        match &target.tls {
            Some(tls) => {
                let (c, mut conn) = target
                    .config
                    .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone()))
                    .await
                    .map_err(unavailable)?;
                let messages: Messages = Box::pin(futures_util::stream::poll_fn(move |cx| conn.poll_message(cx)));
                Ok::<(Client, Messages), StoreError>((c, messages))
            }
            None => {
                let (c, mut conn) = target.config.connect(NoTls).await.map_err(unavailable)?;
                let messages: Messages = Box::pin(futures_util::stream::poll_fn(move |cx| conn.poll_message(cx)));
                Ok((c, messages))
            }
        }
    };
    let (client, mut messages) =
        tokio::time::timeout(Duration::from_secs(5), fut).await.map_err(|_| unavailable("connect timed out"))??;
    let task = tokio::spawn(async move {
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    let _ = tx.send(Change::parse(n.payload()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client.batch_execute("LISTEN keyward_changes").await.map_err(unavailable)?;
    Ok((client, task))
}

impl PgStore {
    /// Connects, applies migrations (once across the fleet), and starts the supervisor
    /// that listens for changes and reconnects after failures.
    pub async fn open(target: PgTarget) -> Result<Arc<PgStore>, StoreError> {
        let (changes, _) = broadcast::channel(4096);
        let store = Arc::new(PgStore { target, conns: RwLock::new(None), connected: AtomicBool::new(false), changes });
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

    /// Reserves a webhook replay key for the whole fleet. `Ok(false)` means replayed.
    pub async fn replay_reserve(&self, key: &str, inflight_for: Duration) -> Result<bool, StoreError> {
        let c = self.conns().await?;
        let now = super::now_millis();
        let exp = now + i64::try_from(inflight_for.as_millis()).unwrap_or(i64::MAX / 2);
        let n = c
            .reader
            .execute(
                "INSERT INTO keyward_replay (key, expires_at, inflight) VALUES ($1, $2, true)
                 ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at, inflight = true
                 WHERE keyward_replay.expires_at < $3",
                &[&key, &exp, &now],
            )
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    /// Records a reserved key for `keep` (the app answered 2xx).
    pub async fn replay_commit(&self, key: &str, keep: Duration) -> Result<(), StoreError> {
        let c = self.conns().await?;
        let exp = super::now_millis() + i64::try_from(keep.as_millis()).unwrap_or(i64::MAX / 2);
        c.reader
            .execute("UPDATE keyward_replay SET expires_at = $2, inflight = false WHERE key = $1", &[&key, &exp])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Releases a reserved key (the forward failed: the provider's retry must pass).
    pub async fn replay_release(&self, key: &str) -> Result<(), StoreError> {
        let c = self.conns().await?;
        c.reader
            .execute("DELETE FROM keyward_replay WHERE key = $1 AND inflight", &[&key])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Takes the fleet-wide refresh lock for a tenant's provider tokens (waits for another
    /// replica's refresh to finish).
    pub async fn lock_refresh(&self, tenant: &str, provider: &str) -> Result<RefreshLock, StoreError> {
        use sha2::Digest;
        let d = sha2::Sha256::digest(format!("{tenant}\0{provider}").as_bytes());
        let key = i32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        let (client, task) = connect(&self.target).await?;
        // A lock wait is bounded: a replica stuck mid-refresh must not stall every caller.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&LOCK_REFRESH_SPACE, &key];
        tokio::time::timeout(Duration::from_secs(30), client.execute("SELECT pg_advisory_lock($1, $2)", &params))
            .await
            .map_err(|_| unavailable("timed out waiting for another replica's token refresh"))?
            .map_err(unavailable)?;
        Ok(RefreshLock { _client: client, _task: task })
    }

    /// A token another replica obtained: `(sealed, expires_at, credential version)`.
    pub async fn shared_token(&self, tenant: &str, provider: &str) -> Result<Option<(Vec<u8>, i64, u64)>, StoreError> {
        let c = self.conns().await?;
        let row = c
            .reader
            .query_opt(
                "SELECT sealed, expires_at, version FROM keyward_tokens WHERE tenant = $1 AND provider = $2",
                &[&tenant, &provider],
            )
            .await
            .map_err(unavailable)?;
        Ok(row.map(|r| (r.get(0), r.get(1), u64::try_from(r.get::<_, i64>(2)).unwrap_or(0))))
    }

    /// Shares a sealed token with the fleet.
    pub async fn put_shared_token(
        &self,
        tenant: &str,
        provider: &str,
        sealed: &[u8],
        expires_at: i64,
        version: u64,
    ) -> Result<(), StoreError> {
        let c = self.conns().await?;
        let v = i64::try_from(version).unwrap_or(i64::MAX);
        c.reader
            .execute(
                "INSERT INTO keyward_tokens (tenant, provider, sealed, expires_at, version) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (tenant, provider) DO UPDATE SET sealed = EXCLUDED.sealed, expires_at = EXCLUDED.expires_at, version = EXCLUDED.version",
                &[&tenant, &provider, &sealed, &expires_at, &v],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Records a pending Google connect flow (`sealed` is the PKCE verifier, sealed with the
    /// tenant's data key; the state itself is stored only as a hash).
    pub async fn put_connect_state(
        &self,
        state_hash: &[u8],
        tenant: &str,
        sealed: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let c = self.conns().await?;
        c.reader
            .execute(
                "INSERT INTO keyward_connect (state_hash, tenant, sealed, expires_at) VALUES ($1, $2, $3, $4)",
                &[&state_hash, &tenant, &sealed, &expires_at],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Removes and returns a pending connect flow (single use across the fleet):
    /// `(tenant, sealed verifier, expires_at)`.
    pub async fn take_connect_state(&self, state_hash: &[u8]) -> Result<Option<(String, Vec<u8>, i64)>, StoreError> {
        let c = self.conns().await?;
        let row = c
            .reader
            .query_opt(
                "DELETE FROM keyward_connect WHERE state_hash = $1 RETURNING tenant, sealed, expires_at",
                &[&state_hash],
            )
            .await
            .map_err(unavailable)?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    /// Pending connect flows not yet expired (the bound on pending flows).
    pub async fn connect_states_pending(&self) -> Result<i64, StoreError> {
        let c = self.conns().await?;
        let row = c
            .reader
            .query_one("SELECT count(*) FROM keyward_connect WHERE expires_at >= $1", &[&super::now_millis()])
            .await
            .map_err(unavailable)?;
        Ok(row.get(0))
    }

    /// Forgets the fleet's shared token (Google refused it).
    pub async fn drop_shared_token(&self, tenant: &str, provider: &str) -> Result<(), StoreError> {
        let c = self.conns().await?;
        c.reader
            .execute("DELETE FROM keyward_tokens WHERE tenant = $1 AND provider = $2", &[&tenant, &provider])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Deletes expired replay keys, shared tokens and connect flows (bounded growth).
    pub async fn replay_prune(&self) -> Result<u64, StoreError> {
        let c = self.conns().await?;
        let now = super::now_millis();
        c.reader.execute("DELETE FROM keyward_tokens WHERE expires_at < $1", &[&now]).await.map_err(unavailable)?;
        c.reader.execute("DELETE FROM keyward_connect WHERE expires_at < $1", &[&now]).await.map_err(unavailable)?;
        c.reader.execute("DELETE FROM keyward_replay WHERE expires_at < $1", &[&now]).await.map_err(unavailable)
    }
}

async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&LOCK_MIGRATE]).await.map_err(unavailable)?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS keyward_schema (version integer PRIMARY KEY, applied_at bigint NOT NULL)",
            )
            .await
            .map_err(unavailable)?;
        let row =
            client.query_one("SELECT COALESCE(MAX(version), 0) FROM keyward_schema", &[]).await.map_err(unavailable)?;
        let current: i32 = row.get(0);
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            let tx = client.transaction().await.map_err(unavailable)?;
            tx.batch_execute(sql).await.map_err(unavailable)?;
            tx.execute(
                "INSERT INTO keyward_schema (version, applied_at) VALUES ($1, $2)",
                &[version, &super::now_millis()],
            )
            .await
            .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            tracing::info!(version, "PostgreSQL schema migrated");
        }
        Ok(())
    };
    let r = result.await;
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK_MIGRATE]).await;
    r
}

/// Watches the connections; on loss, marks the store down, reconnects with backoff
/// (0.2 s doubling to 5 s) and announces a full resync.
async fn supervise(store: std::sync::Weak<PgStore>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(s) = store.upgrade() else { return };
        let healthy = match s.conns().await {
            Ok(c) => {
                let ping = tokio::time::timeout(Duration::from_secs(2), c.reader.simple_query("SELECT 1")).await;
                matches!(ping, Ok(Ok(_))) && !c.listener.is_closed() && !c.writer.lock().await.is_closed()
            }
            Err(_) => false,
        };
        if healthy {
            backoff = Duration::from_millis(200);
            drop(s);
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        s.mark_down().await;
        match s.establish().await {
            Ok(_) => {
                tracing::info!(db = %s.target.display, "PostgreSQL connection restored; resyncing the cache");
                let _ = s.changes.send(Change::All);
                backoff = Duration::from_millis(200);
            }
            Err(e) => {
                tracing::debug!(error = %e, "PostgreSQL reconnect failed");
                drop(s);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Applies one op inside the transaction, checking preconditions.
async fn apply(tx: &tokio_postgres::Transaction<'_>, op: &Op, notes: &mut Vec<String>) -> Result<(), StoreError> {
    match op {
        Op::PutTenant(t) => {
            tx.execute(
                "INSERT INTO keyward_tenants (tenant, record) VALUES ($1, $2) ON CONFLICT (tenant) DO UPDATE SET record = EXCLUDED.record",
                &[&t.tenant, &encode(t)],
            )
            .await
            .map_err(unavailable)?;
            notes.push(format!("tenant/{}", t.tenant));
        }
        Op::DeleteTenant(t) => {
            tx.execute("DELETE FROM keyward_tenants WHERE tenant = $1", &[t]).await.map_err(unavailable)?;
            notes.push(format!("tenant/{t}"));
        }
        Op::PutCredential { record, expect } => {
            let old = tx
                .query_opt(
                    "SELECT record FROM keyward_credentials WHERE tenant = $1 AND provider = $2 FOR UPDATE",
                    &[&record.tenant, &record.provider],
                )
                .await
                .map_err(unavailable)?;
            let old: Option<CredentialRecord> = match old {
                Some(row) => Some(decode("credential", row.get::<_, &str>(0))?),
                None => None,
            };
            if !expect.holds(old.as_ref().map(|o| o.version)) {
                return Err(StoreError::Conflict(format!("credential {}/{}", record.tenant, record.provider)));
            }
            tx.execute(
                "INSERT INTO keyward_credentials (tenant, provider, record, deleted_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant, provider) DO UPDATE SET record = EXCLUDED.record, deleted_at = EXCLUDED.deleted_at",
                &[&record.tenant, &record.provider, &encode(record), &record.deleted_at],
            )
            .await
            .map_err(unavailable)?;
            notes.push(format!("cred/{}/{}", record.tenant, record.provider));
        }
        Op::PurgeCredential { tenant, provider, expect_version } => {
            let row = tx
                .query_opt(
                    "SELECT record FROM keyward_credentials WHERE tenant = $1 AND provider = $2 FOR UPDATE",
                    &[tenant, provider],
                )
                .await
                .map_err(unavailable)?
                .ok_or_else(|| StoreError::Conflict(format!("credential {tenant}/{provider}")))?;
            let old: CredentialRecord = decode("credential", row.get::<_, &str>(0))?;
            if old.version != *expect_version {
                return Err(StoreError::Conflict(format!("credential {tenant}/{provider}")));
            }
            tx.execute("DELETE FROM keyward_credentials WHERE tenant = $1 AND provider = $2", &[tenant, provider])
                .await
                .map_err(unavailable)?;
            notes.push(format!("cred/{tenant}/{provider}"));
        }
        Op::PutRoute { kind, id, tenant, keep_other_owner } => {
            if *keep_other_owner {
                let row = tx
                    .query_opt("SELECT tenant FROM keyward_routes WHERE kind = $1 AND id = $2 FOR UPDATE", &[kind, id])
                    .await
                    .map_err(unavailable)?;
                if let Some(owner) = row.map(|r| r.get::<_, String>(0)) {
                    if &owner != tenant {
                        return Err(StoreError::RouteTaken { kind: kind.clone(), id: id.clone(), owner });
                    }
                }
            }
            tx.execute(
                "INSERT INTO keyward_routes (kind, id, tenant) VALUES ($1, $2, $3) ON CONFLICT (kind, id) DO UPDATE SET tenant = EXCLUDED.tenant",
                &[kind, id, tenant],
            )
            .await
            .map_err(unavailable)?;
        }
        Op::DeleteRoute { kind, id } => {
            tx.execute("DELETE FROM keyward_routes WHERE kind = $1 AND id = $2", &[kind, id])
                .await
                .map_err(unavailable)?;
        }
        Op::PutMeta { key, value } => {
            tx.execute("INSERT INTO keyward_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", &[key, value])
                .await
                .map_err(unavailable)?;
            notes.push("all".into());
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn commit(&self, ops: Vec<Op>, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        let c = self.conns().await?;
        let mut w = c.writer.lock().await;
        let tx = w.transaction().await.map_err(unavailable)?;
        // One chain for the whole fleet: appends are serialised.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_AUDIT]).await.map_err(unavailable)?;
        let mut notes = Vec::new();
        for op in &ops {
            apply(&tx, op, &mut notes).await?;
        }
        let head: AuditHead = match tx
            .query_opt("SELECT value FROM keyward_meta WHERE key = 'audit_head'", &[])
            .await
            .map_err(unavailable)?
        {
            Some(row) => {
                serde_json::from_slice(row.get::<_, &[u8]>(0)).map_err(|_| StoreError::Corrupt("audit head".into()))?
            }
            None => AuditHead::default(),
        };
        let entry = chain(&head, super::now_millis(), audit);
        let seq = i64::try_from(entry.seq).map_err(|_| StoreError::Corrupt("audit sequence".into()))?;
        tx.execute("INSERT INTO keyward_audit (seq, entry) VALUES ($1, $2)", &[&seq, &encode(&entry)])
            .await
            .map_err(unavailable)?;
        let head = serde_json::to_vec(&AuditHead { seq: entry.seq, hash: entry.hash.clone() }).unwrap_or_default();
        tx.execute(
            "INSERT INTO keyward_meta (key, value) VALUES ('audit_head', $1) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&head],
        )
        .await
        .map_err(unavailable)?;
        for n in notes {
            tx.execute("SELECT pg_notify('keyward_changes', $1)", &[&n]).await.map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(entry)
    }

    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let c = self.conns().await?;
        Ok(c.reader
            .query_opt("SELECT value FROM keyward_meta WHERE key = $1", &[&key])
            .await
            .map_err(unavailable)?
            .map(|r| r.get::<_, Vec<u8>>(0)))
    }

    async fn get_tenant(&self, tenant: &str) -> Result<Option<TenantRecord>, StoreError> {
        let c = self.conns().await?;
        match c
            .reader
            .query_opt("SELECT record FROM keyward_tenants WHERE tenant = $1", &[&tenant])
            .await
            .map_err(unavailable)?
        {
            Some(r) => Ok(Some(decode(&format!("tenant {tenant}"), r.get::<_, &str>(0))?)),
            None => Ok(None),
        }
    }

    async fn list_tenants(&self, after: Option<&str>, limit: usize) -> Result<Vec<TenantRecord>, StoreError> {
        let c = self.conns().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c
            .reader
            .query(
                "SELECT record FROM keyward_tenants WHERE tenant > $1 ORDER BY tenant COLLATE \"C\" LIMIT $2",
                &[&after.unwrap_or(""), &limit],
            )
            .await
            .map_err(unavailable)?;
        rows.iter().map(|r| decode("tenant", r.get::<_, &str>(0))).collect()
    }

    async fn get_credential(&self, tenant: &str, provider: &str) -> Result<Option<CredentialRecord>, StoreError> {
        let c = self.conns().await?;
        match c
            .reader
            .query_opt(
                "SELECT record FROM keyward_credentials WHERE tenant = $1 AND provider = $2",
                &[&tenant, &provider],
            )
            .await
            .map_err(unavailable)?
        {
            Some(r) => Ok(Some(decode(&format!("credential {tenant}/{provider}"), r.get::<_, &str>(0))?)),
            None => Ok(None),
        }
    }

    async fn list_credentials(&self, tenant: &str) -> Result<Vec<CredentialRecord>, StoreError> {
        let c = self.conns().await?;
        let rows = c
            .reader
            .query(
                "SELECT record FROM keyward_credentials WHERE tenant = $1 ORDER BY provider COLLATE \"C\"",
                &[&tenant],
            )
            .await
            .map_err(unavailable)?;
        rows.iter().map(|r| decode("credential", r.get::<_, &str>(0))).collect()
    }

    async fn deleted_before(&self, cutoff: Millis, limit: usize) -> Result<Vec<(String, String)>, StoreError> {
        let c = self.conns().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c
            .reader
            .query("SELECT tenant, provider FROM keyward_credentials WHERE deleted_at IS NOT NULL AND deleted_at <= $1 ORDER BY deleted_at LIMIT $2", &[&cutoff, &limit])
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn get_route(&self, kind: &str, id: &str) -> Result<Option<String>, StoreError> {
        let c = self.conns().await?;
        Ok(c.reader
            .query_opt("SELECT tenant FROM keyward_routes WHERE kind = $1 AND id = $2", &[&kind, &id])
            .await
            .map_err(unavailable)?
            .map(|r| r.get(0)))
    }

    async fn audit_range(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let c = self.conns().await?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c
            .reader
            .query("SELECT entry FROM keyward_audit WHERE seq > $1 ORDER BY seq LIMIT $2", &[&after, &limit])
            .await
            .map_err(unavailable)?;
        rows.iter().map(|r| decode("audit entry", r.get::<_, &str>(0))).collect()
    }

    async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        match self.get_meta("audit_head").await? {
            Some(v) => serde_json::from_slice(&v).map_err(|_| StoreError::Corrupt("audit head".into())),
            None => Ok(AuditHead::default()),
        }
    }

    async fn credential_count(&self) -> Result<u64, StoreError> {
        let c = self.conns().await?;
        let n: i64 =
            c.reader.query_one("SELECT COUNT(*) FROM keyward_credentials", &[]).await.map_err(unavailable)?.get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn list_routes(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let c = self.conns().await?;
        let (k, i) = after.unwrap_or(("", ""));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c
            .reader
            .query(
                "SELECT kind, id, tenant FROM keyward_routes WHERE (kind COLLATE \"C\", id COLLATE \"C\") > ($1, $2) ORDER BY kind COLLATE \"C\", id COLLATE \"C\" LIMIT $3",
                &[&k, &i, &limit],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    async fn import(&self, items: Vec<Imported>) -> Result<(), StoreError> {
        let c = self.conns().await?;
        let mut w = c.writer.lock().await;
        let tx = w.transaction().await.map_err(unavailable)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_AUDIT]).await.map_err(unavailable)?;
        for item in items {
            // Insert when absent; an existing row must hold the same content.
            let (sql_insert, sql_read, params, value, what): (&str, &str, Vec<String>, Vec<u8>, String) = match &item {
                Imported::Tenant(t) => (
                    "INSERT INTO keyward_tenants (tenant, record) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    "SELECT record FROM keyward_tenants WHERE tenant = $1",
                    vec![t.tenant.clone()],
                    encode(t).into_bytes(),
                    format!("tenant {}", t.tenant),
                ),
                Imported::Credential(cr) => {
                    let n = tx
                        .execute(
                            "INSERT INTO keyward_credentials (tenant, provider, record, deleted_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                            &[&cr.tenant, &cr.provider, &encode(cr), &cr.deleted_at],
                        )
                        .await
                        .map_err(unavailable)?;
                    if n == 0 {
                        let row = tx
                            .query_one(
                                "SELECT record FROM keyward_credentials WHERE tenant = $1 AND provider = $2",
                                &[&cr.tenant, &cr.provider],
                            )
                            .await
                            .map_err(unavailable)?;
                        if row.get::<_, &str>(0) != encode(cr) {
                            return Err(StoreError::Conflict(format!(
                                "credential {}/{} exists in the target with other content",
                                cr.tenant, cr.provider
                            )));
                        }
                    }
                    continue;
                }
                Imported::Route { kind, id, tenant } => {
                    tx.execute(
                        "INSERT INTO keyward_routes (kind, id, tenant) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        &[kind, id, tenant],
                    )
                    .await
                    .map_err(unavailable)?;
                    let row = tx
                        .query_one("SELECT tenant FROM keyward_routes WHERE kind = $1 AND id = $2", &[kind, id])
                        .await
                        .map_err(unavailable)?;
                    if &row.get::<_, String>(0) != tenant {
                        return Err(StoreError::Conflict(format!(
                            "route {kind}/{id} exists in the target with another owner"
                        )));
                    }
                    continue;
                }
                Imported::Meta { key, value } => {
                    tx.execute(
                        "INSERT INTO keyward_meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[key, value],
                    )
                    .await
                    .map_err(unavailable)?;
                    let row = tx
                        .query_one("SELECT value FROM keyward_meta WHERE key = $1", &[key])
                        .await
                        .map_err(unavailable)?;
                    if row.get::<_, &[u8]>(0) != value.as_slice() {
                        return Err(StoreError::Conflict(format!(
                            "meta {key} exists in the target with other content (another master key?)"
                        )));
                    }
                    continue;
                }
                Imported::Audit(e) => {
                    let head: AuditHead = match tx
                        .query_opt("SELECT value FROM keyward_meta WHERE key = 'audit_head'", &[])
                        .await
                        .map_err(unavailable)?
                    {
                        Some(row) => serde_json::from_slice(row.get::<_, &[u8]>(0))
                            .map_err(|_| StoreError::Corrupt("audit head".into()))?,
                        None => AuditHead::default(),
                    };
                    if !super::audit::import_continues(&head, e)? {
                        continue;
                    }
                    let seq = i64::try_from(e.seq).map_err(|_| StoreError::Corrupt("audit sequence".into()))?;
                    tx.execute("INSERT INTO keyward_audit (seq, entry) VALUES ($1, $2)", &[&seq, &encode(e)])
                        .await
                        .map_err(unavailable)?;
                    let head = serde_json::to_vec(&AuditHead { seq: e.seq, hash: e.hash.clone() }).unwrap_or_default();
                    tx.execute("INSERT INTO keyward_meta (key, value) VALUES ('audit_head', $1) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", &[&head])
                        .await
                        .map_err(unavailable)?;
                    continue;
                }
            };
            let text = String::from_utf8(value).unwrap_or_default();
            tx.execute(sql_insert, &[&params[0], &text]).await.map_err(unavailable)?;
            let row = tx.query_one(sql_read, &[&params[0]]).await.map_err(unavailable)?;
            if row.get::<_, &str>(0) != text {
                return Err(StoreError::Conflict(format!("{what} exists in the target with other content")));
            }
        }
        tx.execute("SELECT pg_notify('keyward_changes', 'all')", &[]).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
    }

    fn healthy(&self) -> bool {
        self.is_connected()
    }

    fn as_pg(&self) -> Option<&PgStore> {
        Some(self)
    }
}
