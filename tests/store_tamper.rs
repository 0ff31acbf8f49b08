//! In-process: the store is edited the way an attacker with disk access would, and the
//! credential layer refuses what was moved or rolled back. Also the cache rule: a write is
//! seen by the very next lookup.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, clippy::result_large_err)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use keyward::ids::TenantId;
use keyward::providers::Providers;
use keyward::secret::KeyBytes;
use keyward::store::{SledStore, Store};
use keyward::Keyring;
use keyward::{CredError, Credentials};
use serde_json::{json, Value};

const SID: &str = "AC0123456789abcdef0123456789abcdef";

fn t(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

async fn open(dir: &std::path::Path, key: &KeyBytes) -> (Arc<SledStore>, Credentials) {
    let store = Arc::new(SledStore::open(dir).unwrap());
    let creds = Credentials::open(
        store.clone() as Arc<dyn Store>,
        Keyring::from_keys(key.clone(), vec![]),
        Providers::default_builtin(),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    (store, creds)
}

fn twilio(token: &str) -> Value {
    json!({"account_sid": SID, "auth_token": token})
}

fn sealed_of(store: &SledStore, tenant: &str, provider: &str) -> (Vec<u8>, Value) {
    let key = [tenant.as_bytes(), b"\0", provider.as_bytes()].concat();
    let raw = store.raw_tree("creds").unwrap().get(key).unwrap().unwrap();
    let v: Value = serde_json::from_slice(&raw).unwrap();
    (raw.to_vec(), v)
}

fn set_sealed(store: &SledStore, tenant: &str, provider: &str, sealed: &Value) {
    let key = [tenant.as_bytes(), b"\0", provider.as_bytes()].concat();
    let tree = store.raw_tree("creds").unwrap();
    let mut v: Value = serde_json::from_slice(&tree.get(&key).unwrap().unwrap()).unwrap();
    v["sealed"] = sealed.clone();
    tree.insert(key, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[tokio::test]
async fn a_ciphertext_copied_into_another_tenants_slot_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyBytes::random().unwrap();
    let (store, creds) = open(dir.path(), &key).await;
    creds.put("test", &t("acme"), "twilio", twilio("acme-token-0000000000")).await.unwrap();
    creds.put("test", &t("globex"), "twilio", twilio("globex-token-000000000")).await.unwrap();
    let (_, acme) = sealed_of(&store, "acme", "twilio");
    set_sealed(&store, "globex", "twilio", &acme["sealed"]);
    // A fresh service: nothing cached.
    drop(creds);
    let creds = Credentials::open(
        store.clone() as Arc<dyn Store>,
        Keyring::from_keys(key, vec![]),
        Providers::default_builtin(),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let err = creds.resolve(&t("globex"), "twilio").await.unwrap_err();
    assert!(err.to_string().contains("credential globex/twilio does not open"), "{err}");
    // acme is unaffected.
    let acme_cred = creds.resolve(&t("acme"), "twilio").await.unwrap();
    assert_eq!(acme_cred.secret("auth_token").unwrap().expose(), "acme-token-0000000000");
}

#[tokio::test]
async fn an_older_ciphertext_put_back_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyBytes::random().unwrap();
    let (store, creds) = open(dir.path(), &key).await;
    creds.put("test", &t("acme"), "twilio", twilio("old-token-00000000000")).await.unwrap();
    let (_, v1) = sealed_of(&store, "acme", "twilio");
    creds.put("test", &t("acme"), "twilio", twilio("new-token-00000000000")).await.unwrap();
    assert_eq!(
        creds.resolve(&t("acme"), "twilio").await.unwrap().secret("auth_token").unwrap().expose(),
        "new-token-00000000000"
    );
    set_sealed(&store, "acme", "twilio", &v1["sealed"]);
    creds.invalidate_all();
    let err = creds.resolve(&t("acme"), "twilio").await.unwrap_err();
    assert!(err.to_string().contains("credential acme/twilio does not open"), "{err}");
}

#[tokio::test]
async fn a_data_key_moved_to_another_tenant_fails_to_unwrap() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyBytes::random().unwrap();
    let (store, creds) = open(dir.path(), &key).await;
    creds.put("test", &t("acme"), "vapi", json!({"api_key": "k-acme"})).await.unwrap();
    creds.put("test", &t("globex"), "vapi", json!({"api_key": "k-globex"})).await.unwrap();
    let tenants = store.raw_tree("tenants").unwrap();
    let mut g: Value = serde_json::from_slice(&tenants.get("globex").unwrap().unwrap()).unwrap();
    let a: Value = serde_json::from_slice(&tenants.get("acme").unwrap().unwrap()).unwrap();
    g["wrapped_key"] = a["wrapped_key"].clone();
    tenants.insert("globex", serde_json::to_vec(&g).unwrap()).unwrap();
    let creds = Credentials::open(
        store.clone() as Arc<dyn Store>,
        Keyring::from_keys(key, vec![]),
        Providers::default_builtin(),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert!(matches!(creds.resolve(&t("globex"), "vapi").await, Err(CredError::Vault(_))));
}

#[tokio::test]
async fn the_cache_sees_every_write_delete_and_restore_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyBytes::random().unwrap();
    let (_store, creds) = open(dir.path(), &key).await;
    let acme = t("acme");
    creds.put("test", &acme, "vapi", json!({"api_key": "first"})).await.unwrap();
    assert_eq!(creds.resolve(&acme, "vapi").await.unwrap().secret("api_key").unwrap().expose(), "first");
    assert_eq!(creds.resolve(&acme, "vapi").await.unwrap().version, 1);
    let (hits, _) = creds.cache_stats();
    assert!(hits >= 1, "the second lookup was a cache hit");
    creds.put("test", &acme, "vapi", json!({"api_key": "second"})).await.unwrap();
    assert_eq!(creds.resolve(&acme, "vapi").await.unwrap().secret("api_key").unwrap().expose(), "second");
    creds.delete("test", &acme, "vapi").await.unwrap();
    assert!(matches!(creds.resolve(&acme, "vapi").await, Err(CredError::NotFound { .. })));
    creds.restore("test", &acme, "vapi").await.unwrap();
    let back = creds.resolve(&acme, "vapi").await.unwrap();
    assert_eq!(back.secret("api_key").unwrap().expose(), "second");
    assert_eq!(back.version, 4);
}

#[tokio::test]
async fn an_inactive_google_credential_is_refused_until_completed() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyBytes::random().unwrap();
    let (_store, creds) = open(dir.path(), &key).await;
    let (status, warnings) = creds
        .put("test", &t("acme"), "google", json!({"client_id": "c.apps.googleusercontent.com", "client_secret": "s", "scopes": ["https://www.googleapis.com/auth/calendar"]}))
        .await
        .unwrap();
    assert_eq!(serde_json::to_value(status.status).unwrap(), "inactive");
    assert_eq!(warnings.len(), 1);
    assert!(matches!(creds.resolve(&t("acme"), "google").await, Err(CredError::Inactive { .. })));
}

/// Raw access to a store's rows, as an attacker who can write the directory or the
/// database (but does not hold the master key) has it.
enum Raw {
    Sled(Arc<SledStore>),
    Pg(tokio_postgres::Client),
}

impl Raw {
    async fn credential(&self, tenant: &str, provider: &str) -> Value {
        match self {
            Raw::Sled(s) => sealed_of(s, tenant, provider).1,
            Raw::Pg(c) => {
                let row = c
                    .query_one(
                        "SELECT record FROM keyward_credentials WHERE tenant = $1 AND provider = $2",
                        &[&tenant, &provider],
                    )
                    .await
                    .unwrap();
                serde_json::from_str(row.get::<_, &str>(0)).unwrap()
            }
        }
    }

    async fn set_credential(&self, tenant: &str, provider: &str, v: &Value) {
        match self {
            Raw::Sled(s) => {
                let key = [tenant.as_bytes(), b"\0", provider.as_bytes()].concat();
                s.raw_tree("creds").unwrap().insert(key, serde_json::to_vec(v).unwrap()).unwrap();
            }
            Raw::Pg(c) => {
                let deleted = v["deleted_at"].as_i64();
                c.execute(
                    "UPDATE keyward_credentials SET record = $3, deleted_at = $4 WHERE tenant = $1 AND provider = $2",
                    &[&tenant, &provider, &v.to_string(), &deleted],
                )
                .await
                .unwrap();
            }
        }
    }

    /// Points a route at another tenant, keeping whatever MAC it had.
    async fn repoint_route(&self, kind: &str, id: &str, tenant: &str) {
        match self {
            Raw::Sled(s) => {
                let tree = s.raw_tree("routes").unwrap();
                let key = [kind.as_bytes(), b"\0", id.as_bytes()].concat();
                let old = tree.get(&key).unwrap().unwrap();
                let mac = old.iter().position(|b| *b == 0).map(|i| old[i..].to_vec()).unwrap_or_default();
                tree.insert(key, [tenant.as_bytes(), &mac].concat()).unwrap();
            }
            Raw::Pg(c) => {
                c.execute("UPDATE keyward_routes SET tenant = $3 WHERE kind = $1 AND id = $2", &[&kind, &id, &tenant])
                    .await
                    .unwrap();
            }
        }
    }

    async fn audit(&self) -> Vec<keyward::store::AuditEntry> {
        match self {
            Raw::Sled(s) => {
                s.raw_tree("audit").unwrap().iter().map(|r| serde_json::from_slice(&r.unwrap().1).unwrap()).collect()
            }
            Raw::Pg(c) => c
                .query("SELECT entry FROM keyward_audit ORDER BY seq", &[])
                .await
                .unwrap()
                .iter()
                .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
                .collect(),
        }
    }

    /// Replaces the whole chain and its head, as a writer recomputing plain hashes would.
    async fn set_audit(&self, entries: &[keyward::store::AuditEntry]) {
        let last = entries.last().unwrap();
        let head = serde_json::to_vec(&json!({"seq": last.seq, "hash": last.hash})).unwrap();
        match self {
            Raw::Sled(s) => {
                let tree = s.raw_tree("audit").unwrap();
                tree.clear().unwrap();
                for e in entries {
                    tree.insert(e.seq.to_be_bytes(), serde_json::to_vec(e).unwrap()).unwrap();
                }
                s.raw_tree("meta").unwrap().insert("audit_head", head).unwrap();
            }
            Raw::Pg(c) => {
                c.execute("DELETE FROM keyward_audit", &[]).await.unwrap();
                for e in entries {
                    c.execute(
                        "INSERT INTO keyward_audit (seq, entry) VALUES ($1, $2)",
                        &[&(e.seq as i64), &serde_json::to_string(e).unwrap()],
                    )
                    .await
                    .unwrap();
                }
                c.execute("UPDATE keyward_meta SET value = $1 WHERE key = 'audit_head'", &[&head]).await.unwrap();
            }
        }
    }
}

/// The plain hash the chain used before it was keyed: what a writer can recompute.
fn plain_hash(e: &keyward::store::AuditEntry) -> String {
    use sha2::Digest;
    let body = format!(r#"{{"seq":{},"ts":{},"draft":{}}}"#, e.seq, e.ts, serde_json::to_string(&e.draft).unwrap());
    let mut h = sha2::Sha256::new();
    h.update(e.prev.as_bytes());
    h.update(b"\n");
    h.update(body.as_bytes());
    hex::encode(h.finalize())
}

/// A credential service on `store` with nothing cached.
async fn reopen(store: &Arc<dyn Store>, key: &KeyBytes) -> Credentials {
    let keyring = Keyring::from_keys(key.clone(), vec![]);
    Credentials::open(store.clone(), keyring, Providers::default_builtin(), Duration::from_secs(3600)).await.unwrap()
}

/// Every edit a store writer can make is detected, with an error that names what.
async fn a_store_writer_is_caught(store: Arc<dyn Store>, raw: Raw, key: &KeyBytes) {
    use keyward::store::CredStatus;
    let fresh = || reopen(&store, key);
    let creds = fresh().await;
    let (acme, globex) = (t("acme"), t("globex"));
    creds.put("test", &acme, "twilio", twilio("acme-token-0000000000")).await.unwrap();
    creds.put("test", &globex, "vapi", json!({"api_key": "k-globex-0000000000"})).await.unwrap();
    creds.put("test", &globex, "resend", json!({"api_key": "re_globex_000000000"})).await.unwrap();
    let (kind, id) =
        (keyward::ids::RouteKind::parse("twilio-account").unwrap(), keyward::ids::RouteId::parse(SID).unwrap());
    creds.put_route("test", &kind, &id, &acme, false).await.unwrap();
    creds
        .record_check("test", &acme, "twilio", false, Some("revoked".into()), Some(CredStatus::Revoked))
        .await
        .unwrap();
    creds.delete("test", &globex, "vapi").await.unwrap();
    assert!(creds.audit_verify().await.unwrap().ok);

    // A revoked credential re-enabled, a deleted one undeleted, a public field changed.
    let mut rec = raw.credential("acme", "twilio").await;
    rec["status"] = json!("active");
    raw.set_credential("acme", "twilio", &rec).await;
    let mut rec = raw.credential("globex", "vapi").await;
    rec["deleted_at"] = Value::Null;
    raw.set_credential("globex", "vapi", &rec).await;
    let mut rec = raw.credential("globex", "resend").await;
    rec["fields"] = json!({"from": "attacker@example.com"});
    raw.set_credential("globex", "resend", &rec).await;
    let c = fresh().await;
    for (tenant, provider) in [(&acme, "twilio"), (&globex, "vapi"), (&globex, "resend")] {
        let err = c.resolve(tenant, provider).await.unwrap_err();
        assert!(
            err.to_string().contains(&format!("credential {tenant}/{provider} does not open")),
            "{tenant}/{provider}: {err}"
        );
        assert_eq!(err.code(), "internal");
    }

    // A route pointed at another tenant.
    raw.repoint_route("twilio-account", SID, "globex").await;
    let err = c.route("twilio-account", SID).await.unwrap_err();
    assert!(err.to_string().contains(&format!("route twilio-account/{SID} failed its integrity check")), "{err}");

    // An audit entry rewritten, with every later hash and the head recomputed.
    let mut chain = raw.audit().await;
    assert!(chain.len() >= 6);
    chain[1].draft.actor = "uid:666".into();
    for i in 1..chain.len() {
        if i > 1 {
            chain[i].prev = chain[i - 1].hash.clone();
        }
        chain[i].hash = plain_hash(&chain[i]);
    }
    raw.set_audit(&chain).await;
    let report = c.audit_verify().await.unwrap();
    assert_eq!((report.ok, report.first_bad_seq), (false, Some(2)), "{report:?}");
    assert!(report.problem.unwrap().contains("altered"));
}

/// A whole older record put back: refused by a process that saw the newer one, and
/// reported by `audit verify` in any process.
async fn a_rolled_back_record_is_caught(store: Arc<dyn Store>, raw: Raw, key: &KeyBytes) {
    let fresh = || reopen(&store, key);
    let creds = fresh().await;
    let acme = t("acme");
    creds.put("test", &acme, "twilio", twilio("old-token-00000000000")).await.unwrap();
    let old = raw.credential("acme", "twilio").await;
    creds.put("test", &acme, "twilio", twilio("new-token-00000000000")).await.unwrap();
    raw.set_credential("acme", "twilio", &old).await;
    creds.invalidate_all();
    let err = creds.resolve(&acme, "twilio").await.unwrap_err();
    assert!(err.to_string().contains("rolled back"), "{err}");
    let report = fresh().await.audit_verify().await.unwrap();
    assert!(
        !report.ok && report.problem.as_deref().unwrap().contains("credential acme/twilio is at version 1"),
        "{report:?}"
    );
    // A truncated chain whose head points at an earlier, genuine entry.
    let chain = raw.audit().await;
    raw.set_audit(&chain[..chain.len() - 1]).await;
    let report = creds.audit_verify().await.unwrap();
    assert!(!report.ok && report.problem.as_deref().unwrap().contains("truncated"), "{report:?}");
}

#[tokio::test]
async fn a_sled_store_writer_cannot_re_enable_repoint_or_rewrite_unnoticed() {
    let key = KeyBytes::random().unwrap();
    for scenario in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let raw = Raw::Sled(store.clone());
        if scenario == 0 {
            a_store_writer_is_caught(store, raw, &key).await;
        } else {
            a_rolled_back_record_is_caught(store, raw, &key).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_writer_cannot_re_enable_repoint_or_rewrite_unnoticed() {
    let Some(admin) = common::pg_admin_url() else { return };
    let key = KeyBytes::random().unwrap();
    for scenario in 0..2 {
        let url = common::fresh_pg_db(&admin).await;
        let target = keyward::store::PgTarget { config: url.parse().unwrap(), tls: None, display: "test".into() };
        let store = keyward::store::PgStore::open(target).await.unwrap();
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        if scenario == 0 {
            a_store_writer_is_caught(store, Raw::Pg(client), &key).await;
        } else {
            a_rolled_back_record_is_caught(store, Raw::Pg(client), &key).await;
        }
    }
}
