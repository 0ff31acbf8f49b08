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
    /// Where tenant keys are re-wrapped to: the active source at its latest key version.
    pub target: WrapSource,
}

/// How many tenant keys each source and key version wraps (`keyward key status`).
#[derive(Debug, Clone, Serialize)]
pub struct KeyStatus {
    /// Where new tenant keys are wrapped.
    pub active: WrapSource,
    /// One row per source and key version, with its count of tenant keys.
    pub sources: Vec<SourceCount>,
    /// Whether tenant keys are wrapped by more than one source or version (a rotation is
    /// due or under way).
    pub mixed: bool,
    /// Tenant keys in all.
    pub total: u64,
}

/// One row of [`KeyStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct SourceCount {
    /// The source and key version.
    #[serde(flatten)]
    pub wrap: WrapSource,
    /// Tenant keys it wraps.
    pub tenant_keys: u64,
    /// Whether it is where new tenant keys go.
    pub active: bool,
}

/// Every tenant record, a thousand at a time.
#[derive(Default)]
struct TenantPages {
    after: Option<TenantId>,
    done: bool,
}

impl TenantPages {
    async fn next(&mut self, store: &dyn Store) -> Result<Option<Vec<TenantRecord>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let page = store.list_tenants(self.after.as_ref(), 1000).await?;
        match page.last() {
            Some(last) => self.after = Some(last.tenant.clone()),
            None => self.done = true,
        }
        Ok((!page.is_empty()).then_some(page))
    }
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
        let target = self.keyring.target().await?;
        let (mut total, mut remaining, mut rewrapped) = (0u64, 0u64, 0u64);
        let mut batch = Vec::new();
        let mut from: BTreeMap<WrapSource, u64> = BTreeMap::new();
        let mut pages = TenantPages::default();
        while let Some(page) = pages.next(&*self.store).await? {
            for t in page {
                total += 1;
                let source = self.keyring.source_of(&t.wrapped_key);
                if source == target {
                    continue;
                }
                if batch.len() < limit {
                    let wrapped_key = self.keyring.rewrap(&t.tenant, &t.wrapped_key).await?;
                    *from.entry(source).or_default() += 1;
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
            // The entry names each re-wrap's source and key version, and where they went.
            let from = from.iter().map(|(s, n)| format!("{s} x{n}")).collect::<Vec<_>>().join(", ");
            let target_text =
                format!("master-key:{active} to:{target} from:[{from}] rewrapped:{rewrapped} remaining:{remaining}");
            let result = self.commit(batch, draft(actor, "keys.rotate", None, None, Some(target_text))).await;
            if let Ok(mut d) = self.deks.write() {
                d.clear();
            }
            result?;
        }
        Ok(RotateReport { rewrapped, remaining, total, active_key_id: active, target })
    }

    /// Counts tenant keys per wrapping source and key version.
    pub async fn key_status(&self) -> Result<KeyStatus, CredError> {
        let active = self.keyring.target().await?;
        let mut counts: BTreeMap<WrapSource, u64> = BTreeMap::new();
        let mut total = 0;
        let mut pages = TenantPages::default();
        while let Some(page) = pages.next(&*self.store).await? {
            for t in page {
                total += 1;
                *counts.entry(self.keyring.source_of(&t.wrapped_key)).or_default() += 1;
            }
        }
        let mixed = counts.len() > 1 || counts.keys().any(|k| *k != active);
        let sources = counts
            .into_iter()
            .map(|(wrap, tenant_keys)| SourceCount { active: wrap == active, wrap, tenant_keys })
            .collect();
        Ok(KeyStatus { active, sources, mixed, total })
    }
}
