//! What operators and apps are shown of a credential: the status object (never a secret)
//! and the listings built from it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::*;

/// The status object of CONTRACT.md §6. Never holds a secret: `hints` are computed at write
/// time from at most the last four characters.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusObject {
    /// Owner.
    pub tenant: TenantId,
    /// Provider.
    pub provider: ProviderName,
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

impl Credentials {
    pub(super) fn status_object(&self, r: &CredentialRecord) -> StatusObject {
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

    pub(super) fn retention_ms(&self) -> i64 {
        i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX)
    }

    /// Status of one credential. A soft-deleted one answers [`CredError::Deleted`].
    pub async fn status(&self, tenant: &TenantId, provider: &str) -> Result<StatusObject, CredError> {
        let name = self.provider_name(provider)?;
        let rec =
            self.store.get_credential(tenant, &name).await?.ok_or_else(|| CredError::not_found(tenant, provider))?;
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
            .list_credentials(tenant)
            .await?
            .iter()
            .filter(|r| include_deleted || r.deleted_at.is_none())
            .map(|r| self.status_object(r))
            .collect())
    }

    /// Whether the tenant has ever stored a credential (its data key exists).
    pub async fn tenant_exists(&self, tenant: &TenantId) -> Result<bool, CredError> {
        if self.deks.read().is_ok_and(|d| d.contains_key(tenant.as_str())) {
            return Ok(true);
        }
        Ok(self.store.get_tenant(tenant).await?.is_some())
    }

    /// Tenant ids in order, after `after`.
    pub async fn tenants(&self, after: Option<&TenantId>, limit: usize) -> Result<Vec<TenantId>, CredError> {
        Ok(self.store.list_tenants(after, limit).await?.into_iter().map(|t| t.tenant).collect())
    }
}
