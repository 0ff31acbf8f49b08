//! The schema: embedded, numbered migrations applied at start under a session advisory
//! lock, so sidecars starting together migrate once.

use tokio_postgres::Client;

use super::{unavailable, LOCK_MIGRATE};
use crate::StoreError;

pub(super) const MIGRATIONS: &[(i32, &str)] = &[
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
    // Routes carry a MAC under the store's integrity key (empty until upgraded).
    (3, "ALTER TABLE keyward_routes ADD COLUMN mac bytea NOT NULL DEFAULT ''::bytea;"),
];

pub(super) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
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
                &[version, &crate::now_millis()],
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
