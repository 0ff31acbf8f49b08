//! The audit log as creds writes and reads it: notes and refusals, pages, and the walk
//! that verifies the chain.

use super::*;

impl Credentials {
    /// Records a refused mutation in the audit log (best effort: the refusal stands even if
    /// the entry cannot be written).
    pub async fn audit_failure(
        &self,
        actor: &str,
        action: &str,
        tenant: Option<&str>,
        provider: Option<&str>,
        code: &str,
    ) {
        self.audit_note(actor, action, tenant, provider, &format!("error:{code}")).await;
    }

    /// Appends an audit entry that changes nothing else (the outcome of a side effect, such
    /// as a token revocation at the provider). Best effort.
    pub async fn audit_note(
        &self,
        actor: &str,
        action: &str,
        tenant: Option<&str>,
        provider: Option<&str>,
        result: &str,
    ) {
        let mut d = draft(actor, action, tenant, provider, None);
        d.result = result.to_string();
        if let Err(e) = self.commit(vec![], d).await {
            tracing::warn!(error = %e, action, "could not write an audit entry");
        }
    }

    /// Audit entries after `after`.
    pub async fn audit(&self, after: u64, limit: usize) -> Result<(Vec<AuditEntry>, AuditHead), CredError> {
        Ok((self.store.audit_range(after, limit).await?, self.store.audit_head().await?))
    }

    /// Walks the whole audit chain.
    pub async fn audit_verify(&self) -> Result<ChainReport, CredError> {
        Ok(keyward_store::verify_store(&*self.store).await?)
    }
}
