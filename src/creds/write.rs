//! Every credential mutation: validate, seal, commit with its audit entry, invalidate.
//! Also sealing of auxiliary values under a tenant's data key (connect-flow verifiers,
//! shared tokens).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;
use zeroize::Zeroizing;

use super::*;

impl Credentials {
    /// Stores what a token endpoint granted into a credential: a rotated or newly
    /// connected `refresh_token` and Salesforce's `instance_url` (public), optionally
    /// setting the status; sealed and committed before it returns.
    pub(crate) async fn set_granted(
        &self,
        actor: &str,
        tenant: &TenantId,
        provider: &str,
        refresh_token: Option<Secret>,
        instance_url: Option<&str>,
        status: Option<CredStatus>,
    ) -> Result<StatusObject, CredError> {
        let current = self.load(tenant, provider).await?;
        let mut secrets = current.secrets.clone();
        if let Some(t) = refresh_token {
            secrets.insert("refresh_token".to_string(), t);
        }
        let instance = instance_url.map(|u| Value::String(u.to_string()));
        let hints: BTreeMap<String, String> = secrets.iter().map(|(k, v)| (k.clone(), v.hint())).collect();
        let next = |old: Option<&CredentialRecord>, now: Millis| {
            let old = old
                .filter(|o| o.deleted_at.is_none() && o.version == current.version)
                .ok_or_else(|| CredError::Store(StoreError::Conflict(format!("credential {tenant}/{provider}"))))?;
            Ok(CredentialRecord {
                version: old.version + 1,
                updated_at: now,
                hints: hints.clone(),
                fields: match &instance {
                    Some(u) => {
                        let mut f = old.fields.clone();
                        f.insert("instance_url".to_string(), u.clone());
                        f
                    }
                    None => old.fields.clone(),
                },
                status: status.unwrap_or(old.status),
                last_error: if status == Some(CredStatus::Active) { None } else { old.last_error.clone() },
                ..old.clone()
            })
        };
        self.write_record(actor, "credential.update", tenant, provider, next, Some(&secrets)).await
    }

    /// Seals the secret fields of `parsed` for `rec` (its identity, version and state).
    pub(super) fn seal(
        dek: &DataKey,
        rec: &CredentialRecord,
        secrets: &BTreeMap<String, Secret>,
    ) -> Result<Vec<u8>, CredError> {
        let (tenant, provider, version) = (&rec.tenant, rec.provider.as_str(), rec.version);
        // Pre-size so serialisation never reallocates (a reallocation would leave an
        // un-wiped copy of the plaintext behind).
        let cap = secrets.iter().map(|(k, v)| k.len() + v.len() * 6 + 8).sum::<usize>() + 2;
        let mut buf = Zeroizing::new(Vec::with_capacity(cap));
        let plain: BTreeMap<&str, &str> = secrets.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
        serde_json::to_writer(&mut *buf, &plain).map_err(|_| VaultError::Malformed("serialisation"))?;
        Ok(dek.seal(RecordAad { tenant, provider, version, state: integrity::aad_state(rec) }, &buf)?)
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
        let dek = self.data_key(tenant).await?.ok_or_else(|| CredError::not_found(tenant, purpose))?;
        Ok(dek.dek.seal(RecordAad { tenant, provider: &format!("aux:{purpose}"), version, state: None }, plaintext)?)
    }

    /// Opens a value sealed by [`Credentials::seal_aux`].
    pub async fn open_aux(
        &self,
        tenant: &TenantId,
        purpose: &str,
        version: u64,
        blob: &[u8],
    ) -> Result<keyward_core::secret::SecretBytes, CredError> {
        let dek = self.data_key(tenant).await?.ok_or_else(|| CredError::not_found(tenant, purpose))?;
        Ok(dek.dek.open(RecordAad { tenant, provider: &format!("aux:{purpose}"), version, state: None }, blob)?)
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
                    tenant: tenant.clone(),
                    provider: self.provider_name(provider)?,
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
                    aad_version: integrity::STATE_AAD,
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
    /// Retried from the read when another sidecar changed the tenant's key meanwhile.
    pub(super) async fn write_record(
        &self,
        actor: &str,
        action: &str,
        tenant: &TenantId,
        provider: &str,
        next: impl Fn(Option<&CredentialRecord>, Millis) -> Result<CredentialRecord, CredError>,
        secrets: Option<&BTreeMap<String, Secret>>,
    ) -> Result<StatusObject, CredError> {
        let _guard = self.write_lock.lock().await;
        let mut attempt = 0;
        loop {
            match self.write_once(actor, action, tenant, provider, &next, secrets).await {
                Err(CredError::Store(StoreError::TenantChanged(_))) if attempt < TENANT_RACE_RETRIES => {
                    attempt += 1;
                    self.forget_tenant_key(tenant);
                }
                other => return other,
            }
        }
    }

    async fn write_once(
        &self,
        actor: &str,
        action: &str,
        tenant: &TenantId,
        provider: &str,
        next: &impl Fn(Option<&CredentialRecord>, Millis) -> Result<CredentialRecord, CredError>,
        secrets: Option<&BTreeMap<String, Secret>>,
    ) -> Result<StatusObject, CredError> {
        // Every write validates its provider here (unknown_provider), so callers need not.
        let name = self.provider_name(provider)?;
        let old = self.store.get_credential(tenant, &name).await?;
        let now = now_millis();
        let mut rec = next(old.as_ref(), now)?;
        let mut ops = Vec::new();
        let key = match self.data_key(tenant).await? {
            Some(k) => {
                ops.push(Op::ExpectTenant { tenant: tenant.clone(), wrapped_key: k.wrapped.clone() });
                k
            }
            None => {
                let dek = DataKey::generate()?;
                let wrapped = self.keyring.wrap(tenant, &dek).await?;
                ops.push(Op::CreateTenant(TenantRecord {
                    tenant: tenant.clone(),
                    wrapped_key: wrapped.clone(),
                    created_at: now,
                }));
                Arc::new(TenantKey::new(wrapped, dek))
            }
        };
        let dek = &key.dek;
        rec.aad_version = integrity::STATE_AAD;
        rec.sealed = match (secrets, &old) {
            (Some(s), _) => Self::seal(dek, &rec, s)?,
            (None, Some(o)) => {
                // Version and state change, so the blob is re-sealed under the new AAD.
                let was = RecordAad { tenant, provider, version: o.version, state: integrity::aad_state(o) };
                let plain = dek.open(was, &o.sealed)?;
                let now = RecordAad { tenant, provider, version: rec.version, state: integrity::aad_state(&rec) };
                dek.seal(now, &plain)?
            }
            (None, None) => return Err(CredError::not_found(tenant, provider)),
        };
        let expect = old.as_ref().map_or(Expect::Absent, |o| Expect::Version(o.version));
        ops.push(Op::PutCredential { record: rec.clone(), expect });
        // The version in the entry lets `audit verify` catch a record rolled back whole.
        let target = Some(format!("version:{}", rec.version));
        let result = self.commit(ops, draft(actor, action, Some(tenant.as_str()), Some(provider), target)).await;
        // Invalidate even on failure: a failed commit may be ambiguous (fleet backends).
        self.invalidate(tenant.as_str(), provider);
        result?;
        // What this process wrote is the floor for what it will accept back.
        self.check_not_rolled_back(&rec)?;
        if let Ok(mut d) = self.deks.write() {
            d.entry(tenant.as_str().to_string()).or_insert(key);
        }
        Ok(self.status_object(&rec))
    }

    /// Drops a tenant's cached data key, so the next use reads the stored one.
    pub(super) fn forget_tenant_key(&self, tenant: &TenantId) {
        if let Ok(mut d) = self.deks.write() {
            d.remove(tenant.as_str());
        }
    }

    /// Stores many new credentials in one atomic, audited commit (bulk import, store
    /// migration, benchmarks). Every item must be new; the batch fails as a whole otherwise.
    pub async fn import_batch(&self, actor: &str, items: Vec<(TenantId, String, Value)>) -> Result<usize, CredError> {
        let _guard = self.write_lock.lock().await;
        let now = now_millis();
        let mut ops = Vec::with_capacity(items.len() * 2);
        // Each tenant's key once per batch, created or expected unchanged (fleet writers).
        let mut keys: HashMap<String, Arc<TenantKey>> = HashMap::new();
        let n = items.len();
        for (tenant, provider, fields) in items {
            let name = self.provider_name(&provider)?;
            let parsed =
                self.providers().get(&provider).map(|d| d.schema.parse(fields)).transpose()?.unwrap_or_default();
            let key = match keys.get(tenant.as_str()) {
                Some(k) => k.clone(),
                None => {
                    let key = match self.data_key(&tenant).await? {
                        Some(k) => {
                            ops.push(Op::ExpectTenant { tenant: tenant.clone(), wrapped_key: k.wrapped.clone() });
                            k
                        }
                        None => {
                            let dek = DataKey::generate()?;
                            let wrapped = self.keyring.wrap(&tenant, &dek).await?;
                            ops.push(Op::CreateTenant(TenantRecord {
                                tenant: tenant.clone(),
                                wrapped_key: wrapped.clone(),
                                created_at: now,
                            }));
                            Arc::new(TenantKey::new(wrapped, dek))
                        }
                    };
                    keys.insert(tenant.as_str().to_string(), key.clone());
                    key
                }
            };
            let dek = &key.dek;
            let mut record = CredentialRecord {
                tenant: tenant.clone(),
                provider: name,
                version: 1,
                status: parsed.status.unwrap_or(CredStatus::Active),
                fields: parsed.public.clone(),
                hints: parsed.secrets.iter().map(|(k, v)| (k.clone(), v.hint())).collect(),
                sealed: Vec::new(),
                created_at: now,
                updated_at: now,
                last_verified_at: None,
                last_error: None,
                deleted_at: None,
                aad_version: integrity::STATE_AAD,
            };
            record.sealed = Self::seal(dek, &record, &parsed.secrets)?;
            ops.push(Op::PutCredential { record, expect: Expect::Absent });
        }
        let result =
            self.commit(ops, draft(actor, "credential.import", None, None, Some(format!("{n} records")))).await;
        if matches!(result, Err(StoreError::TenantChanged(_))) {
            if let Ok(mut d) = self.deks.write() {
                d.clear();
            }
        }
        result?;
        self.invalidate_all();
        Ok(n)
    }

    /// Soft delete: stops working at once, restorable until retention passes.
    pub async fn delete(&self, actor: &str, tenant: &TenantId, provider: &str) -> Result<StatusObject, CredError> {
        self.write_record(
            actor,
            "credential.delete",
            tenant,
            provider,
            |old, now| {
                let old =
                    old.filter(|o| o.deleted_at.is_none()).ok_or_else(|| CredError::not_found(tenant, provider))?;
                Ok(CredentialRecord { version: old.version + 1, updated_at: now, deleted_at: Some(now), ..old.clone() })
            },
            None,
        )
        .await
    }

    /// Undoes a soft delete.
    pub async fn restore(&self, actor: &str, tenant: &TenantId, provider: &str) -> Result<StatusObject, CredError> {
        self.write_record(
            actor,
            "credential.restore",
            tenant,
            provider,
            |old, now| {
                let old = old.ok_or_else(|| CredError::not_found(tenant, provider))?;
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
                let old =
                    old.filter(|o| o.deleted_at.is_none()).ok_or_else(|| CredError::not_found(tenant, provider))?;
                Ok(CredentialRecord {
                    version: old.version + 1,
                    updated_at: now,
                    last_verified_at: if verified { Some(now) } else { old.last_verified_at },
                    last_error: error.clone(),
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
        for r in self.store.list_credentials(tenant).await? {
            if r.deleted_at.is_none() {
                out.push(self.delete(actor, tenant, r.provider.as_str()).await?);
            }
        }
        Ok(out)
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
                // None: another writer shredded it already; the purge alone remains.
                if let Some(t) = self.store.get_tenant(&tenant).await? {
                    ops.push(Op::DeleteTenant { tenant: tenant.clone(), expect: t.wrapped_key });
                }
            }
            let action = if shred { "credential.purge+tenant.shred" } else { "credential.purge" };
            let result =
                self.commit(ops, draft("keyward", action, Some(tenant.as_str()), Some(provider.as_str()), None)).await;
            self.invalidate(tenant.as_str(), provider.as_str());
            if shred {
                self.forget_tenant_key(&tenant);
            }
            match result {
                // Another sidecar stored a credential or rotated the key meanwhile: the
                // next sweep decides again on fresh reads.
                Err(StoreError::TenantChanged(_)) => continue,
                other => other?,
            };
            tracing::info!(tenant = %tenant, provider = %provider, shredded = shred, "purged a deleted credential");
            purged += 1;
        }
        Ok(purged)
    }
}
