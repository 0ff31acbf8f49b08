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

    /// Waits (at most `max`) until the chain has an entry after `after`: woken by this
    /// keyward's own commits at once; in fleet mode the store's head is also read every
    /// second, for entries other sidecars commit.
    pub async fn audit_wait(&self, after: u64, max: std::time::Duration) -> Result<(), CredError> {
        let deadline = tokio::time::Instant::now() + max;
        let fleet = self.store.as_pg().is_some();
        loop {
            let woken = self.audit_notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let over = self.audit_waits_over.load(std::sync::atomic::Ordering::SeqCst);
            if over || self.audit_length() > after || (fleet && self.store.audit_head().await?.seq > after) {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(());
            }
            let step = if fleet { (deadline - now).min(std::time::Duration::from_secs(1)) } else { deadline - now };
            let _ = tokio::time::timeout(step, woken).await;
        }
    }

    /// Ends every [`Credentials::audit_wait`] now and from now on (shutdown).
    pub(crate) fn end_audit_waits(&self) {
        self.audit_waits_over.store(true, std::sync::atomic::Ordering::SeqCst);
        self.audit_notify.notify_waiters();
    }

    /// Walks the whole audit chain under the store's integrity key, then checks that every
    /// credential is at the version the chain last recorded for it (a whole older record
    /// put back, or one removed, is reported here even though it opens).
    pub async fn audit_verify(&self) -> Result<ChainReport, CredError> {
        let mut report = keyward_store::verify_store(&*self.store, Some(&self.integrity)).await?;
        let written = self.audit_length();
        if report.ok && report.entries < written {
            // A head moved back to an earlier (genuine) entry: only a witness outside the
            // store sees it; this process is one.
            report.ok = false;
            report.first_bad_seq = Some(report.entries + 1);
            report.problem = Some(format!(
                "the chain ends at entry {} but this keyward wrote entry {written}: it was truncated",
                report.entries
            ));
        }
        if report.ok {
            if let Some((seq, problem)) = self.records_against_audit().await? {
                report.ok = false;
                report.first_bad_seq = Some(seq);
                report.problem = Some(problem);
            }
        }
        // For the keyward_audit_chain_verified gauge (and the alert on it).
        self.audit_verified.store(if report.ok { 1 } else { 2 }, std::sync::atomic::Ordering::Relaxed);
        Ok(report)
    }

    /// The first credential whose stored version differs from the chain's: `(seq of the
    /// entry that recorded it, what is wrong)`.
    async fn records_against_audit(&self) -> Result<Option<(u64, String)>, CredError> {
        let mut audited: HashMap<(String, String), (u64, u64)> = HashMap::new();
        let mut after = 0;
        loop {
            let page = self.store.audit_range(after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in page {
                let (Some(t), Some(p)) = (e.draft.tenant, e.draft.provider) else { continue };
                if e.draft.result != "ok" {
                    continue;
                }
                if e.draft.action.starts_with("credential.purge") {
                    audited.remove(&(t, p));
                } else if let Some(v) = e.draft.target.as_deref().and_then(|x| x.strip_prefix("version:")) {
                    if let Ok(v) = v.parse() {
                        audited.insert((t, p), (v, e.seq));
                    }
                }
            }
        }
        let mut tenants_after: Option<TenantId> = None;
        loop {
            let page = self.store.list_tenants(tenants_after.as_ref(), 1000).await?;
            let Some(last) = page.last() else { break };
            tenants_after = Some(last.tenant.clone());
            for t in page {
                for r in self.store.list_credentials(&t.tenant).await? {
                    let key = (r.tenant.to_string(), r.provider.to_string());
                    if let Some((v, seq)) = audited.remove(&key) {
                        if r.version != v {
                            return Ok(Some((
                                seq,
                                format!(
                                    "credential {}/{} is at version {} but entry {seq} recorded version {v}: the record was rolled back or edited",
                                    r.tenant, r.provider, r.version
                                ),
                            )));
                        }
                    }
                }
            }
        }
        // What the chain recorded and the store no longer holds (ignoring tenants whose
        // key was shredded with their last credential).
        if let Some(((t, p), (v, seq))) = audited.into_iter().min_by_key(|(_, (_, seq))| *seq) {
            return Ok(Some((
                seq,
                format!(
                    "credential {t}/{p} (version {v}, entry {seq}) is missing from the store without a purge entry"
                ),
            )));
        }
        Ok(None)
    }
}
