//! The embedded backend: sled trees in one directory, guarded by a lock file so that only
//! one daemon uses a store at a time.
//!
//! Trees: `tenants` (tenant → TenantRecord), `creds` (tenant\0provider → CredentialRecord),
//! `routes` (kind\0id → tenant\0MAC), `audit` (seq, big-endian → AuditEntry), `purge`
//! (deleted_at ‖ tenant\0provider → ()), `meta` (name → bytes, including the audit head).
//! Values are JSON. A commit is one sled transaction over every tree, then a flush: a
//! commit that returned has reached the disk.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use keyward_core::ids::{ProviderName, RouteId, RouteKind, TenantId};

use super::audit::chain;
use super::integrity::IntegritySlot;
use super::{
    now_millis, tampered, AuditDraft, AuditEntry, AuditHead, CredentialRecord, Imported, Integrity, Millis, Op,
    RouteRow, Store, StoreError, TenantRecord,
};

const AUDIT_HEAD: &[u8] = b"audit_head";

/// The sled-backed store.
pub struct SledStore {
    db: sled::Db,
    tenants: sled::Tree,
    creds: sled::Tree,
    routes: sled::Tree,
    audit: sled::Tree,
    purge: sled::Tree,
    meta: sled::Tree,
    path: PathBuf,
    integrity: IntegritySlot,
    // Held for the life of the store: the flock is released when the file closes.
    _lock: File,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("path", &self.path).finish()
    }
}

fn unavailable(e: sled::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn pair_key(a: impl AsRef<str>, b: impl AsRef<str>) -> Vec<u8> {
    let (a, b) = (a.as_ref(), b.as_ref());
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

/// A route's stored value: the owner, a NUL, the MAC (tenant ids never hold a NUL).
fn route_value(tenant: &str, mac: &[u8]) -> Vec<u8> {
    [tenant.as_bytes(), &[0], mac].concat()
}

/// Owner and MAC of a stored route value (a value from before MACs has an empty one).
fn split_route(v: &[u8]) -> (&[u8], &[u8]) {
    match v.iter().position(|b| *b == 0) {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &[]),
    }
}

fn purge_key(deleted_at: Millis, tenant: impl AsRef<str>, provider: impl AsRef<str>) -> Vec<u8> {
    // Offset so that negative times (never expected) still sort before positive ones.
    let mut k = ((deleted_at as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    k.extend_from_slice(&pair_key(tenant, provider));
    k
}

/// An id stored as bytes (a key or a route owner); one that does not parse is corruption.
fn id<T, E>(parse: fn(&str) -> Result<T, E>, what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    std::str::from_utf8(bytes).ok().and_then(|s| parse(s).ok()).ok_or_else(|| StoreError::Corrupt(what.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt(what.to_string()))
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Serialising our own plain data types cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// Prepares the directory: created 0700 if missing; must be ours and writable.
fn prepare_dir(path: &Path) -> Result<(), StoreError> {
    let derr = |reason: String| StoreError::Directory { path: path.display().to_string(), reason };
    if !path.exists() {
        std::fs::create_dir_all(path).map_err(|e| derr(format!("cannot create it: {e}")))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| derr(format!("cannot set mode 0700: {e}")))?;
    }
    let meta = std::fs::metadata(path).map_err(|e| derr(e.to_string()))?;
    if !meta.is_dir() {
        return Err(derr("is not a directory".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(derr(format!(
            "is owned by uid {} but keyward runs as uid {me}; chown it to keyward's user (a foreign-owned store is refused)",
            meta.uid()
        )));
    }
    let probe = path.join(".keyward-write-test");
    std::fs::write(&probe, b"").map_err(|e| derr(format!("is not writable by uid {me}: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:04o}", meta.permissions().mode() & 0o777),
            "store directory is accessible to other users; chmod 700 it"
        );
    }
    Ok(())
}

fn lock(path: &Path) -> Result<File, StoreError> {
    let lock_path = path.join("keyward.lock");
    let f = File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| {
        StoreError::Directory { path: path.display().to_string(), reason: format!("cannot open lock file: {e}") }
    })?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| StoreError::Locked(path.display().to_string()))?;
    Ok(f)
}

type Abort = ConflictableTransactionError<StoreError>;

fn abort(e: StoreError) -> Abort {
    ConflictableTransactionError::Abort(e)
}

struct Trees<'a> {
    integrity: &'a Integrity,
    tenants: &'a TransactionalTree,
    creds: &'a TransactionalTree,
    routes: &'a TransactionalTree,
    audit: &'a TransactionalTree,
    purge: &'a TransactionalTree,
    meta: &'a TransactionalTree,
}

impl Trees<'_> {
    /// Fails unless the tenant's stored wrapped key is `wrapped`.
    fn expect_tenant(&self, tenant: &TenantId, wrapped: &[u8]) -> Result<(), Abort> {
        let current = match self.tenants.get(tenant.as_str().as_bytes())? {
            Some(v) => Some(decode::<TenantRecord>("tenant", &v).map_err(abort)?),
            None => None,
        };
        if current.is_none_or(|t| t.wrapped_key != wrapped) {
            return Err(abort(StoreError::TenantChanged(tenant.to_string())));
        }
        Ok(())
    }

    fn apply(&self, op: &Op) -> Result<(), Abort> {
        match op {
            Op::CreateTenant(t) => {
                if self.tenants.get(t.tenant.as_str().as_bytes())?.is_some() {
                    return Err(abort(StoreError::TenantChanged(t.tenant.to_string())));
                }
                self.tenants.insert(t.tenant.as_str().as_bytes(), encode(t))?;
            }
            Op::ExpectTenant { tenant, wrapped_key } => {
                self.expect_tenant(tenant, wrapped_key)?;
            }
            Op::RewrapTenant { record, expect } => {
                self.expect_tenant(&record.tenant, expect)?;
                self.tenants.insert(record.tenant.as_str().as_bytes(), encode(record))?;
            }
            Op::DeleteTenant { tenant, expect } => {
                // "No credential remains" is the caller's check here: a sled store has one
                // writing process (its lock file) and the service serialises its writes.
                self.expect_tenant(tenant, expect)?;
                self.tenants.remove(tenant.as_str().as_bytes())?;
            }
            Op::PutCredential { record, expect } => {
                let key = pair_key(&record.tenant, &record.provider);
                let old = match self.creds.get(&key)? {
                    Some(v) => Some(decode::<CredentialRecord>("credential", &v).map_err(abort)?),
                    None => None,
                };
                if !expect.holds(old.as_ref().map(|o| o.version)) {
                    return Err(abort(StoreError::Conflict(format!(
                        "credential {}/{}",
                        record.tenant, record.provider
                    ))));
                }
                if let Some(d) = old.as_ref().and_then(|o| o.deleted_at) {
                    self.purge.remove(purge_key(d, &record.tenant, &record.provider))?;
                }
                if let Some(d) = record.deleted_at {
                    self.purge.insert(purge_key(d, &record.tenant, &record.provider), &[][..])?;
                }
                self.creds.insert(key, encode(record))?;
            }
            Op::PurgeCredential { tenant, provider, expect_version } => {
                let key = pair_key(tenant, provider);
                let Some(v) = self.creds.get(&key)? else {
                    return Err(abort(StoreError::Conflict(format!("credential {tenant}/{provider}"))));
                };
                let old: CredentialRecord = decode("credential", &v).map_err(abort)?;
                if old.version != *expect_version {
                    return Err(abort(StoreError::Conflict(format!("credential {tenant}/{provider}"))));
                }
                if let Some(d) = old.deleted_at {
                    self.purge.remove(purge_key(d, tenant, provider))?;
                }
                self.creds.remove(key)?;
            }
            Op::PutRoute { kind, id, tenant, keep_other_owner } => {
                let key = pair_key(kind, id);
                if *keep_other_owner {
                    if let Some(v) = self.routes.get(&key)? {
                        let (owner, _) = split_route(&v);
                        if owner != tenant.as_str().as_bytes() {
                            return Err(abort(StoreError::RouteTaken {
                                kind: kind.to_string(),
                                id: id.to_string(),
                                owner: String::from_utf8_lossy(owner).into_owned(),
                            }));
                        }
                    }
                }
                let mac = self.integrity.route_mac(kind.as_str(), id.as_str(), tenant.as_str());
                self.routes.insert(key, route_value(tenant.as_str(), &mac))?;
            }
            Op::DeleteRoute { kind, id } => {
                self.routes.remove(pair_key(kind, id))?;
            }
            Op::SwapMeta { key, expect, value } => {
                if self.meta.get(key.as_bytes())?.map(|v| v.to_vec()) != *expect {
                    return Err(abort(StoreError::Conflict(format!("metadata {key}"))));
                }
                self.meta.insert(key.as_bytes(), value.as_slice())?;
            }
            Op::PutMeta { key, value } => {
                self.meta.insert(key.as_bytes(), value.as_slice())?;
            }
        }
        Ok(())
    }

    fn append_audit(&self, ts: Millis, draft: &AuditDraft) -> Result<AuditEntry, Abort> {
        let head: AuditHead = match self.meta.get(AUDIT_HEAD)? {
            Some(v) => decode("audit head", &v).map_err(abort)?,
            None => AuditHead::default(),
        };
        let entry = chain(self.integrity, &head, ts, draft.clone());
        self.audit.insert(&entry.seq.to_be_bytes(), encode(&entry))?;
        self.meta.insert(AUDIT_HEAD, encode(&AuditHead { seq: entry.seq, hash: entry.hash.clone() }))?;
        Ok(entry)
    }
}

impl SledStore {
    /// Opens (creating if needed) the store at `path`. Refuses a directory owned by another
    /// user, an unwritable one, or one another daemon holds.
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        prepare_dir(path)?;
        let lock = lock(path)?;
        let db = sled::Config::new()
            .path(path.join("db"))
            .cache_capacity(64 << 20)
            // Commits flush explicitly; the background flusher only bounds loss for nothing.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(unavailable)?;
        let tree = |n: &str| db.open_tree(n).map_err(unavailable);
        Ok(SledStore {
            tenants: tree("tenants")?,
            creds: tree("creds")?,
            routes: tree("routes")?,
            audit: tree("audit")?,
            purge: tree("purge")?,
            meta: tree("meta")?,
            db,
            path: path.to_path_buf(),
            integrity: IntegritySlot::default(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Raw access for tamper tests: overwrite a tree value as an attacker with disk access
    /// would. Not used by keyward itself.
    #[doc(hidden)]
    pub fn raw_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(unavailable)
    }

    /// Flushes to disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await.map(|_| ()).map_err(unavailable)
    }
}

#[async_trait::async_trait]
impl Store for SledStore {
    async fn commit(&self, ops: Vec<Op>, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        let ts = now_millis();
        let integrity = self.integrity.require()?;
        let result = (&self.tenants, &self.creds, &self.routes, &self.audit, &self.purge, &self.meta).transaction(
            |(tenants, creds, routes, audit_t, purge, meta)| {
                let t = Trees { integrity: &integrity, tenants, creds, routes, audit: audit_t, purge, meta };
                for op in &ops {
                    t.apply(op)?;
                }
                t.append_audit(ts, &audit)
            },
        );
        let entry = match result {
            Ok(e) => e,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(unavailable(e)),
        };
        // Acknowledge only what is on disk.
        self.flush().await?;
        Ok(entry)
    }

    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key.as_bytes()).map_err(unavailable)?.map(|v| v.to_vec()))
    }

    async fn get_tenant(&self, tenant: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        match self.tenants.get(tenant.as_str().as_bytes()).map_err(unavailable)? {
            Some(v) => Ok(Some(decode(&format!("tenant {tenant}"), &v)?)),
            None => Ok(None),
        }
    }

    async fn list_tenants(&self, after: Option<&TenantId>, limit: usize) -> Result<Vec<TenantRecord>, StoreError> {
        let iter = match after {
            Some(a) => {
                let mut start = a.as_str().as_bytes().to_vec();
                start.push(0);
                self.tenants.range(start..)
            }
            None => self.tenants.iter(),
        };
        iter.take(limit)
            .map(|r| {
                let (k, v) = r.map_err(unavailable)?;
                decode(&format!("tenant {}", String::from_utf8_lossy(&k)), &v)
            })
            .collect()
    }

    async fn get_credential(
        &self,
        tenant: &TenantId,
        provider: &ProviderName,
    ) -> Result<Option<CredentialRecord>, StoreError> {
        match self.creds.get(pair_key(tenant, provider)).map_err(unavailable)? {
            Some(v) => Ok(Some(decode(&format!("credential {tenant}/{provider}"), &v)?)),
            None => Ok(None),
        }
    }

    async fn list_credentials(&self, tenant: &TenantId) -> Result<Vec<CredentialRecord>, StoreError> {
        let mut prefix = tenant.as_str().as_bytes().to_vec();
        prefix.push(0);
        self.creds
            .scan_prefix(prefix)
            .map(|r| {
                let (_, v) = r.map_err(unavailable)?;
                decode(&format!("credential of {tenant}"), &v)
            })
            .collect()
    }

    async fn deleted_before(&self, cutoff: Millis, limit: usize) -> Result<Vec<(TenantId, ProviderName)>, StoreError> {
        let end = purge_key(cutoff.saturating_add(1), "", "");
        let mut out = Vec::new();
        for r in self.purge.range(..end).take(limit) {
            let (k, _) = r.map_err(unavailable)?;
            let rest = k.get(8..).unwrap_or_default();
            let mut parts = rest.splitn(2, |b| *b == 0);
            let t = parts.next().unwrap_or_default();
            let p = parts.next().unwrap_or_default();
            out.push((id(TenantId::parse, "purge index", t)?, id(ProviderName::parse, "purge index", p)?));
        }
        Ok(out)
    }

    async fn get_route(&self, kind: &RouteKind, route: &RouteId) -> Result<Option<TenantId>, StoreError> {
        let key = self.integrity.require()?;
        let Some(v) = self.routes.get(pair_key(kind, route)).map_err(unavailable)? else { return Ok(None) };
        let (owner, mac) = split_route(&v);
        let owner = id(TenantId::parse, &format!("route {kind}/{route}"), owner)?;
        if !key.route_ok(kind.as_str(), route.as_str(), owner.as_str(), mac) {
            return Err(tampered(format!("route {kind}/{route} failed its integrity check")));
        }
        Ok(Some(owner))
    }

    async fn audit_range(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let start = after.saturating_add(1).to_be_bytes();
        self.audit
            .range(start..)
            .take(limit)
            .map(|r| {
                let (k, v) = r.map_err(unavailable)?;
                decode(&format!("audit entry {}", hex::encode(k)), &v)
            })
            .collect()
    }

    async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        match self.meta.get(AUDIT_HEAD).map_err(unavailable)? {
            Some(v) => decode("audit head", &v),
            None => Ok(AuditHead::default()),
        }
    }

    async fn credential_count(&self) -> Result<u64, StoreError> {
        Ok(self.creds.len() as u64)
    }

    async fn list_routes(
        &self,
        after: Option<(&RouteKind, &RouteId)>,
        limit: usize,
    ) -> Result<Vec<RouteRow>, StoreError> {
        let iter = match after {
            Some((k, i)) => {
                let mut start = pair_key(k, i);
                start.push(0);
                self.routes.range(start..)
            }
            None => self.routes.iter(),
        };
        iter.take(limit)
            .map(|r| {
                let (k, v) = r.map_err(unavailable)?;
                let mut parts = k.splitn(2, |b| *b == 0);
                let kind = id(RouteKind::parse, "route index", parts.next().unwrap_or_default())?;
                let route = id(RouteId::parse, "route index", parts.next().unwrap_or_default())?;
                let (owner, mac) = split_route(&v);
                Ok(RouteRow { kind, id: route, tenant: id(TenantId::parse, "route owner", owner)?, mac: mac.to_vec() })
            })
            .collect()
    }

    fn set_integrity(&self, key: Integrity) {
        self.integrity.set(key);
    }

    fn integrity(&self) -> Option<Integrity> {
        self.integrity.get()
    }

    async fn import(&self, items: Vec<Imported>) -> Result<(), StoreError> {
        let put_same = |tree: &sled::Tree, key: Vec<u8>, value: Vec<u8>, what: String| -> Result<(), StoreError> {
            match tree.compare_and_swap(&key, None as Option<&[u8]>, Some(value.clone())).map_err(unavailable)? {
                Ok(()) => Ok(()),
                Err(cur) if cur.current.as_deref() == Some(value.as_slice()) => Ok(()),
                Err(_) => Err(StoreError::Conflict(format!("{what} exists in the target with other content"))),
            }
        };
        for item in items {
            match item {
                Imported::Tenant(t) => put_same(
                    &self.tenants,
                    t.tenant.as_str().as_bytes().to_vec(),
                    encode(&t),
                    format!("tenant {}", t.tenant),
                )?,
                Imported::Credential(c) => {
                    if let Some(d) = c.deleted_at {
                        self.purge.insert(purge_key(d, &c.tenant, &c.provider), &[][..]).map_err(unavailable)?;
                    }
                    put_same(
                        &self.creds,
                        pair_key(&c.tenant, &c.provider),
                        encode(&c),
                        format!("credential {}/{}", c.tenant, c.provider),
                    )?
                }
                Imported::Route(r) => {
                    let value = route_value(r.tenant.as_str(), &r.mac);
                    put_same(&self.routes, pair_key(&r.kind, &r.id), value, format!("route {}/{}", r.kind, r.id))?
                }
                Imported::Meta { key, value } => {
                    put_same(&self.meta, key.clone().into_bytes(), value, format!("meta {key}"))?
                }
                Imported::Audit(e) => {
                    let head = self.audit_head().await?;
                    if !super::audit::import_continues(&head, &e)? {
                        continue;
                    }
                    self.audit.insert(e.seq.to_be_bytes(), encode(&e)).map_err(unavailable)?;
                    self.meta
                        .insert(AUDIT_HEAD, encode(&AuditHead { seq: e.seq, hash: e.hash.clone() }))
                        .map_err(unavailable)?;
                }
            }
        }
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{verify_chain, CredStatus, Expect};
    use std::collections::BTreeMap;

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }
    fn pn(s: &str) -> ProviderName {
        ProviderName::parse(s).unwrap()
    }

    fn draft(action: &str) -> AuditDraft {
        AuditDraft {
            actor: "test".into(),
            action: action.into(),
            tenant: None,
            provider: None,
            target: None,
            result: "ok".into(),
        }
    }

    fn cred(tenant: &str, provider: &str, version: u64) -> CredentialRecord {
        CredentialRecord {
            tenant: tid(tenant),
            provider: pn(provider),
            version,
            status: CredStatus::Active,
            fields: BTreeMap::new(),
            hints: BTreeMap::new(),
            sealed: vec![1, 2, 3],
            created_at: 1,
            updated_at: 1,
            last_verified_at: None,
            last_error: None,
            deleted_at: None,
            aad_version: 2,
        }
    }

    fn open(dir: &Path) -> SledStore {
        let s = SledStore::open(dir).unwrap();
        s.set_integrity(Integrity::new([9; 32], 1));
        s
    }

    #[tokio::test]
    async fn commits_are_audited_and_preconditions_hold() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let e = s
            .commit(vec![Op::PutCredential { record: cred("acme", "vapi", 1), expect: Expect::Absent }], draft("put"))
            .await
            .unwrap();
        assert_eq!(e.seq, 1);
        let again = s
            .commit(vec![Op::PutCredential { record: cred("acme", "vapi", 1), expect: Expect::Absent }], draft("put"))
            .await;
        assert!(matches!(again, Err(StoreError::Conflict(_))));
        let stale = s
            .commit(
                vec![Op::PutCredential { record: cred("acme", "vapi", 3), expect: Expect::Version(2) }],
                draft("put"),
            )
            .await;
        assert!(matches!(stale, Err(StoreError::Conflict(_))));
        s.commit(vec![Op::PutCredential { record: cred("acme", "vapi", 2), expect: Expect::Version(1) }], draft("put"))
            .await
            .unwrap();
        assert_eq!(s.get_credential(&tid("acme"), &pn("vapi")).await.unwrap().unwrap().version, 2);
        // Failed commits leave no audit entry and no change.
        let head = s.audit_head().await.unwrap();
        assert_eq!(head.seq, 2);
        let entries = s.audit_range(0, 100).await.unwrap();
        assert!(verify_chain(Some(&Integrity::new([9; 32], 1)), &entries, &head).ok);
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _a = SledStore::open(dir.path()).unwrap();
        let b = SledStore::open(dir.path()).unwrap_err();
        assert!(b.to_string().contains("another keyward process"), "{b}");
    }

    async fn route(s: &SledStore) -> Option<String> {
        let (kind, id) = (RouteKind::parse("twilio-account").unwrap(), RouteId::parse("AC1").unwrap());
        s.get_route(&kind, &id).await.unwrap().map(|t| t.to_string())
    }

    #[tokio::test]
    async fn routes_keep_their_owner_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let put = |t: &str, keep| Op::PutRoute {
            kind: RouteKind::parse("twilio-account").unwrap(),
            id: RouteId::parse("AC1").unwrap(),
            tenant: tid(t),
            keep_other_owner: keep,
        };
        s.commit(vec![put("acme", true)], draft("route")).await.unwrap();
        s.commit(vec![put("acme", true)], draft("route")).await.unwrap();
        assert!(matches!(
            s.commit(vec![put("globex", true)], draft("route")).await,
            Err(StoreError::RouteTaken { .. })
        ));
        assert_eq!(route(&s).await.as_deref(), Some("acme"));
        s.commit(vec![put("globex", false)], draft("route")).await.unwrap();
        assert_eq!(route(&s).await.as_deref(), Some("globex"));
    }

    #[tokio::test]
    async fn soft_deleted_credentials_are_indexed_for_purge() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.commit(vec![Op::PutCredential { record: cred("acme", "vapi", 1), expect: Expect::Absent }], draft("put"))
            .await
            .unwrap();
        let mut del = cred("acme", "vapi", 2);
        del.deleted_at = Some(5_000);
        s.commit(vec![Op::PutCredential { record: del, expect: Expect::Version(1) }], draft("rm")).await.unwrap();
        assert!(s.deleted_before(4_999, 10).await.unwrap().is_empty());
        assert_eq!(s.deleted_before(5_000, 10).await.unwrap(), vec![(tid("acme"), pn("vapi"))]);
        // Restoring removes it from the index.
        s.commit(
            vec![Op::PutCredential { record: cred("acme", "vapi", 3), expect: Expect::Version(2) }],
            draft("restore"),
        )
        .await
        .unwrap();
        assert!(s.deleted_before(i64::MAX - 1, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn tenants_page_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let ops = ["c", "a", "b"]
            .iter()
            .map(|t| Op::CreateTenant(TenantRecord { tenant: tid(t), wrapped_key: vec![], created_at: 0 }))
            .collect();
        s.commit(ops, draft("t")).await.unwrap();
        let first: Vec<String> =
            s.list_tenants(None, 2).await.unwrap().into_iter().map(|r| r.tenant.to_string()).collect();
        assert_eq!(first, ["a", "b"]);
        let next: Vec<String> =
            s.list_tenants(Some(&tid("b")), 2).await.unwrap().into_iter().map(|r| r.tenant.to_string()).collect();
        assert_eq!(next, ["c"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audit_verify_during_concurrent_writes_reports_no_false_break() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(open(dir.path()));
        for _ in 0..2500 {
            s.commit(vec![], draft("pre")).await.unwrap();
        }
        let writer = {
            let s = s.clone();
            tokio::spawn(async move {
                for _ in 0..400 {
                    s.commit(vec![], draft("during")).await.unwrap();
                }
            })
        };
        let key = Integrity::new([9; 32], 1);
        let mut reports = Vec::new();
        while !writer.is_finished() {
            reports.push(crate::verify_store(&*s, Some(&key)).await.unwrap());
        }
        writer.await.unwrap();
        reports.push(crate::verify_store(&*s, Some(&key)).await.unwrap());
        assert!(reports.len() >= 2);
        for r in &reports {
            assert!(r.ok, "{r:?}");
        }
        assert_eq!(reports.last().unwrap().entries, 2900);
    }
}
