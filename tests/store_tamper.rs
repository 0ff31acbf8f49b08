//! In-process: the store is edited the way an attacker with disk access would, and the
//! credential layer refuses what was moved or rolled back. Also the cache rule: a write is
//! seen by the very next lookup.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use keyward::ids::TenantId;
use keyward::providers::Providers;
use keyward::secret::KeyBytes;
use keyward::store::{SledStore, Store};
use keyward::{CredError, Credentials};
use keyward::{Keyring, VaultError};
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
    assert!(matches!(err, CredError::Vault(VaultError::Integrity(_))), "{err}");
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
    assert!(matches!(err, CredError::Vault(VaultError::Integrity(_))), "{err}");
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
