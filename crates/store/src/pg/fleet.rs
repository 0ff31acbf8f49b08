//! What only a fleet needs: replay keys shared by every sidecar, one Google token refresh
//! per tenant across the fleet (an advisory lock and the sealed shared token), and pending
//! connect flows.

use std::time::Duration;

use tokio_postgres::Client;

use super::conn::connect;
use super::{unavailable, PgStore, LOCK_REFRESH_SPACE};
use crate::StoreError;

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

impl PgStore {
    /// Reserves a webhook replay key for the whole fleet. `Ok(false)` means replayed.
    pub async fn replay_reserve(&self, key: &str, inflight_for: Duration) -> Result<bool, StoreError> {
        let c = self.conns().await?;
        let now = crate::now_millis();
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
        let exp = crate::now_millis() + i64::try_from(keep.as_millis()).unwrap_or(i64::MAX / 2);
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
            .query_one("SELECT count(*) FROM keyward_connect WHERE expires_at >= $1", &[&crate::now_millis()])
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
        let now = crate::now_millis();
        c.reader.execute("DELETE FROM keyward_tokens WHERE expires_at < $1", &[&now]).await.map_err(unavailable)?;
        c.reader.execute("DELETE FROM keyward_connect WHERE expires_at < $1", &[&now]).await.map_err(unavailable)?;
        c.reader.execute("DELETE FROM keyward_replay WHERE expires_at < $1", &[&now]).await.map_err(unavailable)
    }
}
