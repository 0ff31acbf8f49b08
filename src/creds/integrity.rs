//! The store's integrity key at open (create, load or upgrade it), what a credential's AAD
//! binds besides its identity (the metadata that decides whether and how it is used), and
//! the rollback guard (a record older than one already seen is refused).

use sha2::{Digest, Sha256};

use super::*;
use crate::vault::KeyCheck;
use keyward_store::{verify_store, Integrity, RouteRow};

/// Loads the integrity key from the store's check value, creating it for a new store and
/// upgrading a store written before integrity keys. Returns it with the audit head.
pub(super) async fn open(store: &dyn Store, keyring: &Keyring) -> Result<(Integrity, u64), CredError> {
    // Two sidecars may initialise or upgrade one store together: the loser re-reads.
    for _ in 0..3 {
        let current = store.get_meta(META_KEYCHECK).await?;
        let outcome = match &current {
            Some(check) => match keyring.open_check(check).await.map_err(|e| wrong_key(keyring, check, e))? {
                KeyCheck::Keyed(i) => {
                    store.set_integrity(i.clone());
                    return Ok((i, store.audit_head().await?.seq));
                }
                KeyCheck::Legacy => upgrade(store, keyring, check.clone()).await,
            },
            None => init(store, keyring).await,
        };
        match outcome {
            Err(CredError::Store(StoreError::Conflict(_))) => continue,
            other => return other,
        }
    }
    Err(CredError::Store(StoreError::Conflict("the store's key check value".into())))
}

/// A check value that does not open: name the source tried and the one the store was set
/// up with. An unreachable KMS stays what it is (retry later).
fn wrong_key(keyring: &Keyring, check: &[u8], e: VaultError) -> VaultError {
    match e {
        // A local key's refusals already name the key id the store expects (StartError).
        VaultError::KmsUnavailable(_) | VaultError::UnknownKey(_) | VaultError::Integrity(_) => e,
        other => {
            // A KMS's wrapped value names its kind and key version, not which key: only a
            // local key's id is exact.
            let ws = keyring.source_of(check);
            let store = match ws.source.as_str() {
                "file" | "unknown" => ws.to_string(),
                kind => format!("a {kind} key, version {}", ws.version),
            };
            VaultError::WrongMasterKey { tried: keyring.describe_active(), store, reason: other.to_string() }
        }
    }
}

fn fresh(keyed_from: u64) -> Result<Integrity, CredError> {
    let k = keyward_core::secret::KeyBytes::random().map_err(|_| VaultError::Malformed("no randomness"))?;
    Ok(Integrity::new(*k.expose(), keyed_from))
}

async fn init(store: &dyn Store, keyring: &Keyring) -> Result<(Integrity, u64), CredError> {
    let head = store.audit_head().await?;
    if head.seq > 0 || !store.list_tenants(None, 1).await?.is_empty() {
        if store.get_meta(META_KEYCHECK).await?.is_some() {
            // Another sidecar initialised the store since this one looked: use its key.
            return Err(CredError::Store(StoreError::Conflict("the store's key check value".into())));
        }
        // Deleting the check value must not let a writer start a fresh chain over old data.
        return Err(CredError::Store(StoreError::Tampered("the store holds records but no key check value".into())));
    }
    let i = fresh(1)?;
    store.set_integrity(i.clone());
    let value = keyring.seal_check(&i).await?;
    let d = draft("keyward", "store.init", None, None, Some(format!("master-key:{}", keyring.active_id())));
    let op = Op::SwapMeta { key: META_KEYCHECK.into(), expect: None, value };
    let head = store.commit(vec![op], d).await?.seq;
    Ok((i, head))
}

/// A store from before integrity keys: its plain chain must verify as it is; then every
/// route gets its MAC and the check value its key, in one commit whose entry is the first
/// keyed one.
async fn upgrade(store: &dyn Store, keyring: &Keyring, legacy: Vec<u8>) -> Result<(Integrity, u64), CredError> {
    let head = store.audit_head().await?;
    let plain = Integrity::new([0; 32], head.seq + 1);
    let report = verify_store(store, Some(&plain)).await?;
    if !report.ok {
        return Err(CredError::Store(StoreError::Tampered(format!(
            "cannot upgrade: the audit chain is broken at entry {}: {}",
            report.first_bad_seq.unwrap_or(0),
            report.problem.unwrap_or_default()
        ))));
    }
    let i = fresh(head.seq + 1)?;
    store.set_integrity(i.clone());
    let mut ops = Vec::new();
    let mut after: Option<(RouteKind, RouteId)> = None;
    loop {
        let page = store.list_routes(after.as_ref().map(|(k, i)| (k, i)), 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.kind.clone(), last.id.clone()));
        for RouteRow { kind, id, tenant, .. } in page {
            ops.push(Op::PutRoute { kind, id, tenant, keep_other_owner: false });
        }
    }
    let routes = ops.len();
    ops.push(Op::SwapMeta { key: META_KEYCHECK.into(), expect: Some(legacy), value: keyring.seal_check(&i).await? });
    let d = draft("keyward", "store.upgrade", None, None, Some(format!("integrity-key routes:{routes}")));
    let head = store.commit(ops, d).await?.seq;
    tracing::info!(routes, keyed_from = i.keyed_from(), "store upgraded: audit chain keyed, routes authenticated");
    Ok((i, head))
}

/// What a record's AAD binds besides tenant, provider and version: whether it may be used
/// (status, deletion), the public fields injected with it, and its last live check (route
/// ownership rests on it). Editing any of them makes the record fail to open.
pub(super) fn state_digest(rec: &CredentialRecord) -> [u8; 32] {
    #[derive(serde::Serialize)]
    struct State<'a> {
        status: CredStatus,
        deleted_at: Option<Millis>,
        fields: &'a BTreeMap<String, Value>,
        last_verified_at: Option<Millis>,
    }
    let s = State {
        status: rec.status,
        deleted_at: rec.deleted_at,
        fields: &rec.fields,
        last_verified_at: rec.last_verified_at,
    };
    // serde_json maps are sorted (no preserve_order): the encoding is canonical.
    Sha256::digest(serde_json::to_vec(&s).unwrap_or_default()).into()
}

/// The AAD a record was sealed with (records from before state binding have none).
pub(super) fn aad_state(rec: &CredentialRecord) -> Option<[u8; 32]> {
    (rec.aad_version >= STATE_AAD).then(|| state_digest(rec))
}

/// The `aad_version` of records whose AAD binds their state.
pub(super) const STATE_AAD: u8 = 2;

/// Most `(tenant, provider)` versions remembered for the rollback guard.
const HIGH_WATER_ENTRIES: usize = 100_000;

impl Credentials {
    /// Refuses a record older than one this process already saw or wrote (a whole older
    /// record put back by a store writer opens cleanly otherwise); remembers newer ones.
    /// Keyed by creation time too: a credential purged and stored again restarts at
    /// version 1 legitimately.
    pub(super) fn check_not_rolled_back(&self, rec: &CredentialRecord) -> Result<(), CredError> {
        let key = (rec.tenant.to_string(), rec.provider.to_string(), rec.created_at);
        let Ok(mut hw) = self.high_water.lock() else { return Ok(()) };
        if let Some(&seen) = hw.get(&key) {
            if rec.version < seen {
                return Err(CredError::Store(StoreError::Tampered(format!(
                    "credential {}/{} is at version {}, older than version {seen} already seen: it was rolled back",
                    rec.tenant, rec.provider, rec.version
                ))));
            }
        }
        if hw.len() >= HIGH_WATER_ENTRIES && !hw.contains_key(&key) {
            hw.clear();
        }
        let v = hw.entry(key).or_insert(0);
        *v = (*v).max(rec.version);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_store::SledStore;

    /// A store as keyward wrote it before integrity keys: plain-hash chain, routes without
    /// MACs, a v1 check value.
    async fn legacy_store(dir: &std::path::Path, keyring: &Keyring) -> Arc<SledStore> {
        let store = Arc::new(SledStore::open(dir).unwrap_or_else(|e| panic!("{e}")));
        // keyed_from beyond every entry: plain SHA-256, as the old chain was.
        store.set_integrity(Integrity::new([0; 32], u64::MAX));
        let route = Op::PutRoute {
            kind: RouteKind::parse("vapi-assistant").unwrap_or_else(|e| panic!("{e}")),
            id: RouteId::parse("asst-1").unwrap_or_else(|e| panic!("{e}")),
            tenant: TenantId::parse("acme").unwrap_or_else(|e| panic!("{e}")),
            keep_other_owner: false,
        };
        let check = keyring.seal_legacy_check().unwrap_or_else(|e| panic!("{e}"));
        for ops in [vec![Op::PutMeta { key: META_KEYCHECK.into(), value: check }], vec![route]] {
            store.commit(ops, draft("test", "legacy", None, None, None)).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let routes = store.raw_tree("routes").unwrap_or_else(|e| panic!("{e}"));
        routes.insert(b"vapi-assistant\0asst-1", &b"acme"[..]).unwrap_or_else(|e| panic!("{e}"));
        store
    }

    #[tokio::test]
    async fn a_store_from_before_integrity_keys_is_upgraded_once_and_then_keyed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let key = keyward_core::secret::KeyBytes::random().unwrap_or_else(|e| panic!("{e}"));
        let keyring = Keyring::from_keys(key.clone(), vec![]);
        let store = legacy_store(dir.path(), &keyring).await;
        let c = Credentials::open(store.clone(), keyring, Providers::default_builtin(), Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.integrity.keyed_from(), 3, "the upgrade entry is the first keyed one");
        assert_eq!(
            c.route("vapi-assistant", "asst-1").await.ok().flatten().map(|t| t.to_string()),
            Some("acme".into())
        );
        let report = c.audit_verify().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(report.ok && report.entries == 3, "{report:?}");
        drop(c);
        // Reopened: the v2 check value is used as is, no second upgrade.
        let c = Credentials::open(
            store.clone(),
            Keyring::from_keys(key, vec![]),
            Providers::default_builtin(),
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.audit_length(), 3);
    }

    #[tokio::test]
    async fn a_legacy_store_whose_chain_was_edited_is_not_upgraded() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let key = keyward_core::secret::KeyBytes::random().unwrap_or_else(|e| panic!("{e}"));
        let keyring = Keyring::from_keys(key.clone(), vec![]);
        let store = legacy_store(dir.path(), &keyring).await;
        let audit = store.raw_tree("audit").unwrap_or_else(|e| panic!("{e}"));
        let mut e: serde_json::Value =
            serde_json::from_slice(&audit.get(1u64.to_be_bytes()).unwrap_or_default().unwrap_or_default())
                .unwrap_or_default();
        e["actor"] = "uid:666".into();
        audit.insert(1u64.to_be_bytes(), serde_json::to_vec(&e).unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
        let err = Credentials::open(store, keyring, Providers::default_builtin(), Duration::from_secs(60))
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("cannot upgrade: the audit chain is broken at entry 1"), "{err}");
    }
}
