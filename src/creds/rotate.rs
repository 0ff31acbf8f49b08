//! Master-key rotation: re-wrapping tenant data keys under the active master key, in
//! resumable batches.

use serde::Serialize;

use super::*;

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

impl Credentials {
    /// Re-wraps up to `limit` tenant keys under the active master key. Each batch commits
    /// on its own, so an interrupted rotation resumes where it stopped when rerun.
    /// A tenant created, re-wrapped or shredded by another sidecar meanwhile fails the
    /// batch's compare-and-set; the batch is then read and built again.
    pub async fn rotate_keys(&self, actor: &str, limit: usize) -> Result<RotateReport, CredError> {
        let _guard = self.write_lock.lock().await;
        let mut attempt = 0;
        loop {
            match self.rotate_once(actor, limit).await {
                Err(CredError::Store(StoreError::TenantChanged(_))) if attempt < TENANT_RACE_RETRIES => attempt += 1,
                other => return other,
            }
        }
    }

    async fn rotate_once(&self, actor: &str, limit: usize) -> Result<RotateReport, CredError> {
        let mut after: Option<TenantId> = None;
        let (mut total, mut remaining, mut rewrapped) = (0u64, 0u64, 0u64);
        let mut batch = Vec::new();
        loop {
            let page = self.store.list_tenants(after.as_ref(), 1000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.tenant.clone());
            for t in page {
                total += 1;
                if self.keyring.is_active(&t.wrapped_key) {
                    continue;
                }
                if batch.len() < limit {
                    let dek = self.keyring.unwrap(&t.tenant, &t.wrapped_key).await?;
                    let wrapped_key = self.keyring.wrap(&t.tenant, &dek).await?;
                    let expect = t.wrapped_key.clone();
                    batch.push(Op::RewrapTenant { record: TenantRecord { wrapped_key, ..t }, expect });
                } else {
                    remaining += 1;
                }
            }
        }
        let active = self.keyring.active_id().to_string();
        if !batch.is_empty() || remaining == 0 {
            rewrapped = batch.len() as u64;
            if remaining == 0 {
                batch.push(Op::PutMeta {
                    key: META_KEYCHECK.into(),
                    value: self.keyring.seal_check(&self.integrity).await?,
                });
            }
            let target = Some(format!("master-key:{active} rewrapped:{rewrapped} remaining:{remaining}"));
            let result = self.commit(batch, draft(actor, "keys.rotate", None, None, target)).await;
            if let Ok(mut d) = self.deks.write() {
                d.clear();
            }
            result?;
        }
        Ok(RotateReport { rewrapped, remaining, total, active_key_id: active })
    }
}
