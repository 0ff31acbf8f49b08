//! The `Store` implementation: each commit is one transaction that takes the audit advisory
//! lock first (so every replica appends to one chain), applies its ops and ends with
//! `NOTIFY keyward_changes`; reads are single queries.

use tokio::sync::broadcast;

use super::*;

/// Fails unless the tenant's stored wrapped key is `wrapped` (row locked until commit).
async fn expect_tenant(
    tx: &tokio_postgres::Transaction<'_>,
    tenant: &TenantId,
    wrapped: &[u8],
) -> Result<(), StoreError> {
    let row = tx
        .query_opt("SELECT record FROM keyward_tenants WHERE tenant = $1 FOR UPDATE", &[&tenant.as_str()])
        .await
        .map_err(unavailable)?;
    let current: Option<TenantRecord> = match row {
        Some(r) => Some(decode("tenant", r.get::<_, &str>(0))?),
        None => None,
    };
    if current.is_none_or(|t| t.wrapped_key != wrapped) {
        return Err(StoreError::TenantChanged(tenant.to_string()));
    }
    Ok(())
}

/// Applies one op inside the transaction, checking preconditions.
async fn apply(
    tx: &tokio_postgres::Transaction<'_>,
    key: &Integrity,
    op: &Op,
    notes: &mut Vec<String>,
) -> Result<(), StoreError> {
    match op {
        Op::CreateTenant(t) => {
            // Insert-if-absent: two sidecars creating one tenant must not both win, or the
            // loser's credential is sealed under a key nobody holds.
            let n = tx
                .execute(
                    "INSERT INTO keyward_tenants (tenant, record) VALUES ($1, $2) ON CONFLICT (tenant) DO NOTHING",
                    &[&t.tenant.as_str(), &encode(t)],
                )
                .await
                .map_err(unavailable)?;
            if n == 0 {
                return Err(StoreError::TenantChanged(t.tenant.to_string()));
            }
            notes.push(format!("tenant/{}", t.tenant));
        }
        Op::ExpectTenant { tenant, wrapped_key } => {
            expect_tenant(tx, tenant, wrapped_key).await?;
        }
        Op::RewrapTenant { record, expect } => {
            expect_tenant(tx, &record.tenant, expect).await?;
            tx.execute(
                "UPDATE keyward_tenants SET record = $2 WHERE tenant = $1",
                &[&record.tenant.as_str(), &encode(record)],
            )
            .await
            .map_err(unavailable)?;
            notes.push(format!("tenant/{}", record.tenant));
        }
        Op::DeleteTenant { tenant, expect } => {
            expect_tenant(tx, tenant, expect).await?;
            // Another sidecar may have stored a credential under this key since the purge
            // counted; shredding it then would make that credential unreadable.
            let left = tx
                .query_opt("SELECT 1 FROM keyward_credentials WHERE tenant = $1 LIMIT 1", &[&tenant.as_str()])
                .await
                .map_err(unavailable)?;
            if left.is_some() {
                return Err(StoreError::TenantChanged(tenant.to_string()));
            }
            tx.execute("DELETE FROM keyward_tenants WHERE tenant = $1", &[&tenant.as_str()])
                .await
                .map_err(unavailable)?;
            notes.push(format!("tenant/{tenant}"));
        }
        Op::PutCredential { record, expect } => {
            let old = tx
                .query_opt(
                    "SELECT record FROM keyward_credentials WHERE tenant = $1 AND provider = $2 FOR UPDATE",
                    &[&record.tenant.as_str(), &record.provider.as_str()],
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
                &[&record.tenant.as_str(), &record.provider.as_str(), &encode(record), &record.deleted_at],
            )
            .await
            .map_err(unavailable)?;
            notes.push(format!("cred/{}/{}", record.tenant, record.provider));
        }
        Op::PurgeCredential { tenant, provider, expect_version } => {
            let row = tx
                .query_opt(
                    "SELECT record FROM keyward_credentials WHERE tenant = $1 AND provider = $2 FOR UPDATE",
                    &[&tenant.as_str(), &provider.as_str()],
                )
                .await
                .map_err(unavailable)?
                .ok_or_else(|| StoreError::Conflict(format!("credential {tenant}/{provider}")))?;
            let old: CredentialRecord = decode("credential", row.get::<_, &str>(0))?;
            if old.version != *expect_version {
                return Err(StoreError::Conflict(format!("credential {tenant}/{provider}")));
            }
            tx.execute(
                "DELETE FROM keyward_credentials WHERE tenant = $1 AND provider = $2",
                &[&tenant.as_str(), &provider.as_str()],
            )
            .await
            .map_err(unavailable)?;
            notes.push(format!("cred/{tenant}/{provider}"));
        }
        Op::PutRoute { kind, id, tenant, keep_other_owner } => {
            if *keep_other_owner {
                let row = tx
                    .query_opt(
                        "SELECT tenant FROM keyward_routes WHERE kind = $1 AND id = $2 FOR UPDATE",
                        &[&kind.as_str(), &id.as_str()],
                    )
                    .await
                    .map_err(unavailable)?;
                if let Some(owner) = row.map(|r| r.get::<_, String>(0)) {
                    if owner != tenant.as_str() {
                        return Err(StoreError::RouteTaken { kind: kind.to_string(), id: id.to_string(), owner });
                    }
                }
            }
            let mac = key.route_mac(kind.as_str(), id.as_str(), tenant.as_str());
            tx.execute(
                "INSERT INTO keyward_routes (kind, id, tenant, mac) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kind, id) DO UPDATE SET tenant = EXCLUDED.tenant, mac = EXCLUDED.mac",
                &[&kind.as_str(), &id.as_str(), &tenant.as_str(), &mac.as_slice()],
            )
            .await
            .map_err(unavailable)?;
        }
        Op::DeleteRoute { kind, id } => {
            tx.execute("DELETE FROM keyward_routes WHERE kind = $1 AND id = $2", &[&kind.as_str(), &id.as_str()])
                .await
                .map_err(unavailable)?;
        }
        Op::SwapMeta { key, expect, value } => {
            let row = tx
                .query_opt("SELECT value FROM keyward_meta WHERE key = $1 FOR UPDATE", &[key])
                .await
                .map_err(unavailable)?;
            if row.map(|r| r.get::<_, Vec<u8>>(0)) != *expect {
                return Err(StoreError::Conflict(format!("metadata {key}")));
            }
            tx.execute("INSERT INTO keyward_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", &[key, value])
                .await
                .map_err(unavailable)?;
            notes.push("all".into());
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
        let key = self.integrity.require()?;
        let c = self.conns().await?;
        let mut w = c.writer.lock().await;
        let tx = w.transaction().await.map_err(unavailable)?;
        // One chain for the whole fleet: appends are serialised.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_AUDIT]).await.map_err(unavailable)?;
        let mut notes = Vec::new();
        for op in &ops {
            apply(&tx, &key, op, &mut notes).await?;
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
        let entry = chain(&key, &head, crate::now_millis(), audit);
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

    async fn get_tenant(&self, tenant: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        let c = self.conns().await?;
        match c
            .reader
            .query_opt("SELECT record FROM keyward_tenants WHERE tenant = $1", &[&tenant.as_str()])
            .await
            .map_err(unavailable)?
        {
            Some(r) => Ok(Some(decode(&format!("tenant {tenant}"), r.get::<_, &str>(0))?)),
            None => Ok(None),
        }
    }

    async fn list_tenants(&self, after: Option<&TenantId>, limit: usize) -> Result<Vec<TenantRecord>, StoreError> {
        let c = self.conns().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c
            .reader
            .query(
                "SELECT record FROM keyward_tenants WHERE tenant > $1 ORDER BY tenant COLLATE \"C\" LIMIT $2",
                &[&after.map_or("", TenantId::as_str), &limit],
            )
            .await
            .map_err(unavailable)?;
        rows.iter().map(|r| decode("tenant", r.get::<_, &str>(0))).collect()
    }

    async fn get_credential(
        &self,
        tenant: &TenantId,
        provider: &ProviderName,
    ) -> Result<Option<CredentialRecord>, StoreError> {
        let c = self.conns().await?;
        match c
            .reader
            .query_opt(
                "SELECT record FROM keyward_credentials WHERE tenant = $1 AND provider = $2",
                &[&tenant.as_str(), &provider.as_str()],
            )
            .await
            .map_err(unavailable)?
        {
            Some(r) => Ok(Some(decode(&format!("credential {tenant}/{provider}"), r.get::<_, &str>(0))?)),
            None => Ok(None),
        }
    }

    async fn list_credentials(&self, tenant: &TenantId) -> Result<Vec<CredentialRecord>, StoreError> {
        let c = self.conns().await?;
        let rows = c
            .reader
            .query(
                "SELECT record FROM keyward_credentials WHERE tenant = $1 ORDER BY provider COLLATE \"C\"",
                &[&tenant.as_str()],
            )
            .await
            .map_err(unavailable)?;
        rows.iter().map(|r| decode("credential", r.get::<_, &str>(0))).collect()
    }

    async fn deleted_before(&self, cutoff: Millis, limit: usize) -> Result<Vec<(TenantId, ProviderName)>, StoreError> {
        let c = self.conns().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c
            .reader
            .query("SELECT tenant, provider FROM keyward_credentials WHERE deleted_at IS NOT NULL AND deleted_at <= $1 ORDER BY deleted_at LIMIT $2", &[&cutoff, &limit])
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let t = id(TenantId::parse, "credential row", r.get(0))?;
                Ok((t, id(ProviderName::parse, "credential row", r.get(1))?))
            })
            .collect()
    }

    async fn get_route(&self, kind: &RouteKind, route: &RouteId) -> Result<Option<TenantId>, StoreError> {
        let key = self.integrity.require()?;
        let c = self.conns().await?;
        let Some(row) = c
            .reader
            .query_opt(
                "SELECT tenant, mac FROM keyward_routes WHERE kind = $1 AND id = $2",
                &[&kind.as_str(), &route.as_str()],
            )
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let owner = id(TenantId::parse, &format!("route {kind}/{route}"), row.get(0))?;
        if !key.route_ok(kind.as_str(), route.as_str(), owner.as_str(), row.get::<_, &[u8]>(1)) {
            return Err(tampered(format!("route {kind}/{route} failed its integrity check")));
        }
        Ok(Some(owner))
    }

    fn set_integrity(&self, key: Integrity) {
        self.integrity.set(key);
    }

    fn integrity(&self) -> Option<Integrity> {
        self.integrity.get()
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
        after: Option<(&RouteKind, &RouteId)>,
        limit: usize,
    ) -> Result<Vec<RouteRow>, StoreError> {
        let c = self.conns().await?;
        let (k, i) = after.map_or(("", ""), |(k, i)| (k.as_str(), i.as_str()));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c
            .reader
            .query(
                "SELECT kind, id, tenant, mac FROM keyward_routes WHERE (kind COLLATE \"C\", id COLLATE \"C\") > ($1, $2) ORDER BY kind COLLATE \"C\", id COLLATE \"C\" LIMIT $3",
                &[&k, &i, &limit],
            )
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let kind = id(RouteKind::parse, "route row", r.get(0))?;
                let route = id(RouteId::parse, "route row", r.get(1))?;
                let tenant = id(TenantId::parse, "route row", r.get(2))?;
                Ok(RouteRow { kind, id: route, tenant, mac: r.get(3) })
            })
            .collect()
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
                    vec![t.tenant.to_string()],
                    encode(t).into_bytes(),
                    format!("tenant {}", t.tenant),
                ),
                Imported::Credential(cr) => {
                    let n = tx
                        .execute(
                            "INSERT INTO keyward_credentials (tenant, provider, record, deleted_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                            &[&cr.tenant.as_str(), &cr.provider.as_str(), &encode(cr), &cr.deleted_at],
                        )
                        .await
                        .map_err(unavailable)?;
                    if n == 0 {
                        let row = tx
                            .query_one(
                                "SELECT record FROM keyward_credentials WHERE tenant = $1 AND provider = $2",
                                &[&cr.tenant.as_str(), &cr.provider.as_str()],
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
                Imported::Route(RouteRow { kind, id, tenant, mac }) => {
                    tx.execute(
                        "INSERT INTO keyward_routes (kind, id, tenant, mac) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                        &[&kind.as_str(), &id.as_str(), &tenant.as_str(), mac],
                    )
                    .await
                    .map_err(unavailable)?;
                    let row = tx
                        .query_one(
                            "SELECT tenant FROM keyward_routes WHERE kind = $1 AND id = $2",
                            &[&kind.as_str(), &id.as_str()],
                        )
                        .await
                        .map_err(unavailable)?;
                    if row.get::<_, &str>(0) != tenant.as_str() {
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
                    if !crate::audit::import_continues(&head, e)? {
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
