//! Fleet mode: many sidecars on one PostgreSQL store. The shared scenario runs against both
//! backends; the rest needs PostgreSQL (`KEYWARD_TEST_PG_URL`, set by scripts/test) and is
//! skipped with one line without it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, clippy::result_large_err)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fake::*;
use common::*;
use serde_json::{json, Value};

const KEY_1: &str = "CANARYfleetVapiKey00000000000001";
const KEY_2: &str = "CANARYfleetVapiKey00000000000002";
const TOKEN: &str = "CANARYfleetTwilioToken0000000003";
const SID: &str = "AC0123456789abcdef0123456789abcdef";

struct Fleet {
    _tmp: tempfile::TempDir,
    pki: Pki,
    vapi: FakeProvider,
}

async fn fleet() -> Fleet {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let vapi = FakeProvider::start(&pki).await;
    Fleet { _tmp: tmp, pki, vapi }
}

impl Fleet {
    /// A daemon on `pg_url` (or sled when `None`) sharing `master_key`.
    fn daemon(&self, pg_url: Option<&str>, master_key: Option<std::path::PathBuf>, extra: &str) -> Daemon {
        Daemon::new(DaemonConfig {
            app: Some(String::new()),
            pg_url: pg_url.map(str::to_string),
            master_key_file: master_key,
            extra: format!(
                "[upstream]\nextra_ca = \"{}\"\n[providers.vapi]\nbase_url = \"{}\"\n{extra}",
                self.pki.ca_pem.display(),
                self.vapi.url
            ),
            ..DaemonConfig::default()
        })
    }
}

async fn put(d: &Daemon, tenant: &str, provider: &str, fields: Value) -> (u16, Value) {
    d.admin("PUT", &format!("/v1/tenants/{tenant}/credentials/{provider}"), Some(&fields.to_string())).await
}

/// The same admin and proxy behaviour, whichever backend holds the records.
async fn scenario(f: &Fleet, d: &Daemon) {
    let (s, v) = put(d, "acme", "vapi", json!({"api_key": KEY_1})).await;
    assert_eq!((s, v["version"].as_u64()), (200, Some(1)), "{v}");
    let (s, v) = put(d, "acme", "twilio", json!({"account_sid": "AC12", "auth_token": TOKEN})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_credential")));
    put(d, "acme", "twilio", json!({"account_sid": SID, "auth_token": TOKEN})).await;
    let (_, list) = d.admin("GET", "/v1/tenants/acme/credentials", None).await;
    assert_eq!(list["credentials"].as_array().unwrap().len(), 2);
    let (s, _, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200);
    assert_eq!(f.vapi.last().header("authorization").unwrap(), format!("Bearer {KEY_1}"));
    d.admin("DELETE", "/v1/tenants/acme/credentials/vapi", None).await;
    let (s, _, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 404, "a deleted credential stops working at once");
    let (s, v) = d.admin("POST", "/v1/tenants/acme/credentials/vapi/restore", None).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = d.admin("PUT", &format!("/v1/routes/twilio-account/{SID}"), Some(r#"{"tenant":"acme"}"#)).await;
    assert_eq!(s, 200);
    let (_, r) = d.admin("GET", &format!("/v1/routes/twilio-account/{SID}"), None).await;
    assert_eq!(r["tenant"], "acme");
    for t in ["b1", "b2", "b3"] {
        put(d, t, "vapi", json!({"api_key": KEY_2})).await;
    }
    let (_, page) = d.admin("GET", "/v1/tenants?limit=2", None).await;
    assert_eq!(page["tenants"], json!(["acme", "b1"]));
    let (_, page) = d.admin("GET", "/v1/tenants?after=b1&limit=10", None).await;
    assert_eq!(page["tenants"], json!(["b2", "b3"]));
    let (s, rot) = d.admin("POST", "/v1/keys/rotate", None).await;
    assert_eq!((s, rot["remaining"].as_u64()), (200, Some(0)));
    let (s, report) = d.admin("GET", "/v1/audit/verify", None).await;
    assert_eq!((s, report["ok"].as_bool()), (200, Some(true)), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_and_proxy_behave_the_same_on_both_backends() {
    let f = fleet().await;
    let mut sled = f.daemon(None, None, "");
    sled.start();
    scenario(&f, &sled).await;
    let Some(admin) = pg_admin_url() else { return };
    let db = fresh_pg_db(&admin).await;
    let mut pg = f.daemon(Some(&db), None, "");
    pg.start();
    scenario(&f, &pg).await;
    assert!(pg.logs().contains("PostgreSQL schema migrated"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_see_each_others_writes_within_a_second_and_share_one_audit_chain() {
    let Some(admin) = pg_admin_url() else { return };
    let f = fleet().await;
    let db = fresh_pg_db(&admin).await;
    let mut a = f.daemon(Some(&db), None, "");
    let key = a.config.master_key_file.clone();
    let mut b = f.daemon(Some(&db), key.clone(), "");
    let mut c = f.daemon(Some(&db), key, "");
    // Started together: the schema is migrated once (under an advisory lock).
    std::thread::scope(|scope| {
        for d in [&mut a, &mut b, &mut c] {
            scope.spawn(move || {
                d.start();
            });
        }
    });
    let migrated = [&a, &b, &c].iter().filter(|d| d.logs().contains("PostgreSQL schema migrated")).count();
    assert_eq!(migrated, 1, "one sidecar applied the migration");

    put(&a, "acme", "vapi", json!({"api_key": KEY_1})).await;
    // b and c cache the credential by using it.
    for d in [&b, &c] {
        let (s, _, _) = d.app("GET", "/vapi/x", &[("keyward-tenant", "acme")], None).await;
        assert_eq!(s, 200);
    }
    // a replaces it; b and c must use the new key within a second.
    put(&a, "acme", "vapi", json!({"api_key": KEY_2})).await;
    let t0 = Instant::now();
    for d in [&b, &c] {
        loop {
            d.app("GET", "/vapi/x", &[("keyward-tenant", "acme")], None).await;
            if f.vapi.last().header("authorization").unwrap() == format!("Bearer {KEY_2}") {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(1), "a replica served the old key after 1 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // A delete through c stops b at once too.
    c.admin("DELETE", "/v1/tenants/acme/credentials/vapi", None).await;
    let t0 = Instant::now();
    loop {
        let (s, _, _) = b.app("GET", "/vapi/x", &[("keyward-tenant", "acme")], None).await;
        if s == 404 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "b still used a credential deleted through c");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Concurrent writes from all three: one chain that verifies.
    let mut tasks = Vec::new();
    for (i, d) in [&a, &b, &c].into_iter().enumerate() {
        let sock = d.admin_sock.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..15 {
                let s = tokio::net::UnixStream::connect(&sock).await.unwrap();
                let body = json!({"api_key": format!("k-{i}-{j}")}).to_string().into_bytes();
                let (st, _) = http_request(
                    hyper_util::rt::TokioIo::new(s),
                    "PUT",
                    &format!("/v1/tenants/t{i}-{j}/credentials/vapi"),
                    Some(body),
                    &[],
                )
                .await;
                assert_eq!(st, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for d in [&a, &b, &c] {
        let (s, report) = d.admin("GET", "/v1/audit/verify", None).await;
        assert_eq!((s, report["ok"].as_bool()), (200, Some(true)), "{report}");
        assert!(report["entries"].as_u64().unwrap() >= 48);
        let out = d.cli(&["audit", "verify"], None);
        assert!(out.status.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_replayed_to_another_sidecar_is_still_refused() {
    let Some(admin) = pg_admin_url() else { return };
    let f = fleet().await;
    let db = fresh_pg_db(&admin).await;
    let app = FakeApp::start(Arc::new(|_| Box::pin(async { json_response(200, "{}") }))).await;
    let hooks = format!(
        "[webhooks]\nlisten = \"127.0.0.1:0\"\npublic_base_url = \"https://hooks.test\"\nforward_to = \"{}\"\n",
        app.url
    );
    let mut a = f.daemon(Some(&db), None, &hooks);
    let mut b = f.daemon(Some(&db), a.config.master_key_file.clone(), &hooks);
    a.start();
    b.start();
    use base64::Engine;
    let secret = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    put(&a, "acme", "resend", json!({"api_key": "re_x", "webhook_secret": format!("whsec_{secret}")})).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
    let body = r#"{"type":"email.sent"}"#;
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&[7u8; 32]).unwrap();
    m.update(format!("msg_fleet.{now}.{body}").as_bytes());
    let sig = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes()));
    let send = |d: &Daemon| {
        let addr = d.addr("webhooks");
        let (now, sig) = (now.clone(), sig.clone());
        async move {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let h = [("svix-id", "msg_fleet"), ("svix-timestamp", now.as_str()), ("svix-signature", sig.as_str())];
            http_full(
                hyper_util::rt::TokioIo::new(s),
                "POST",
                "/webhooks/resend/acme",
                Some(body.as_bytes().to_vec()),
                &h,
            )
            .await
        }
    };
    let (s, _, _) = send(&a).await;
    assert_eq!(s, 200);
    let (s, h, _) = send(&b).await;
    assert_eq!((s, h["keyward-error"].to_str().unwrap()), (401, "replayed"), "the other sidecar knows the key");
    assert_eq!(app.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_holds_no_plaintext() {
    let Some(admin) = pg_admin_url() else { return };
    let f = fleet().await;
    let db = fresh_pg_db(&admin).await;
    let mut d = f.daemon(Some(&db), None, "");
    d.start();
    put(&d, "acme", "vapi", json!({"api_key": KEY_1})).await;
    put(&d, "acme", "twilio", json!({"account_sid": SID, "auth_token": TOKEN})).await;
    d.admin("DELETE", "/v1/tenants/acme/credentials/twilio", None).await;
    let out =
        std::process::Command::new("pg_dump").arg(&db).output().expect("pg_dump (Debian package postgresql-client)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.len() > 2000, "the dump has content");
    assert!(String::from_utf8_lossy(&out.stdout).contains("keyward_credentials"));
    assert_eq!(canary_hits(&out.stdout, &[KEY_1, TOKEN]), 0, "a canary reached PostgreSQL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_store_migrates_into_postgres_and_back() {
    let Some(admin) = pg_admin_url() else { return };
    let f = fleet().await;
    let mut sled = f.daemon(None, None, "");
    sled.start();
    for t in ["acme", "globex", "initech"] {
        put(&sled, t, "vapi", json!({"api_key": KEY_1})).await;
    }
    sled.admin("PUT", &format!("/v1/routes/twilio-account/{SID}"), Some(r#"{"tenant":"acme"}"#)).await;
    sled.stop();
    let db = fresh_pg_db(&admin).await;
    let pg = f.daemon(Some(&db), sled.config.master_key_file.clone(), "");
    pg.write_config();
    let migrate = |from: &std::path::Path, to: &std::path::Path| {
        std::process::Command::new(BIN)
            .args(["store", "migrate", "--from"])
            .arg(from)
            .arg("--to")
            .arg(to)
            .output()
            .unwrap()
    };
    let out = migrate(&sled.config_path, &pg.config_path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("copied 3 tenants, 3 credentials, 1 routes"));
    // Rerunning is safe (resumable): nothing new, still verifies.
    let out = migrate(&sled.config_path, &pg.config_path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 audit entries"));
    let mut pg = pg;
    pg.start();
    let (s, _, _) = pg.app("GET", "/vapi/x", &[("keyward-tenant", "globex")], None).await;
    assert_eq!(s, 200, "the migrated credential opens with the same master key");
    let (_, report) = pg.admin("GET", "/v1/audit/verify", None).await;
    assert_eq!(report["ok"], true);
    pg.stop();
    // And back into an empty sled store.
    let back = f.daemon(None, pg.config.master_key_file.clone(), "");
    back.write_config();
    let out = migrate(&pg.config_path, &back.config_path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_creating_the_same_tenant_at_once_both_keep_their_credential() {
    let Some(admin) = pg_admin_url() else { return };
    let f = fleet().await;
    let resend = FakeProvider::start(&f.pki).await;
    let db = fresh_pg_db(&admin).await;
    let extra = format!("[providers.resend]\nbase_url = \"{}\"\n", resend.url);
    let mut a = f.daemon(Some(&db), None, &extra);
    let mut b = f.daemon(Some(&db), a.config.master_key_file.clone(), &extra);
    std::thread::scope(|scope| {
        for d in [&mut a, &mut b] {
            scope.spawn(move || {
                d.start();
            });
        }
    });
    // Each tenant is new to both: a stores its vapi key while b stores its resend key.
    const N: usize = 24;
    let mut tasks = Vec::new();
    for (d, provider, field) in [(&a, "vapi", "api_key"), (&b, "resend", "api_key")] {
        let sock = d.admin_sock.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..N {
                let s = tokio::net::UnixStream::connect(&sock).await.unwrap();
                let body = json!({ field: format!("re_CANARYrace{provider}{i:04}") }).to_string().into_bytes();
                let path = format!("/v1/tenants/race{i}/credentials/{provider}");
                let (st, v) = http_request(hyper_util::rt::TokioIo::new(s), "PUT", &path, Some(body), &[]).await;
                assert_eq!(st, 200, "{path}: {v:?}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every acknowledged credential opens, from either sidecar.
    for i in 0..N {
        let tenant = format!("race{i}");
        for d in [&a, &b] {
            let (s, _, body) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", &tenant)], None).await;
            assert_eq!(s, 200, "{tenant}/vapi: {}", String::from_utf8_lossy(&body));
            let (s, _, body) = d.app("GET", "/resend/emails", &[("keyward-tenant", &tenant)], None).await;
            assert_eq!(s, 200, "{tenant}/resend: {}", String::from_utf8_lossy(&body));
        }
    }
}

/// The tenant-key preconditions every backend enforces (the fleet's protection against a
/// rotation or purge on one sidecar racing a write on another).
async fn tenant_keys_are_compare_and_set(s: &dyn keyward::store::Store) {
    use keyward::ids::{ProviderName, TenantId};
    use keyward::store::{AuditDraft, CredStatus, CredentialRecord, Expect, Op, StoreError, TenantRecord};
    let t = TenantId::parse("acme").unwrap();
    let draft = || AuditDraft {
        actor: "test".into(),
        action: "test".into(),
        tenant: None,
        provider: None,
        target: None,
        result: "ok".into(),
    };
    let rec = |wrapped: &[u8]| TenantRecord { tenant: t.clone(), wrapped_key: wrapped.to_vec(), created_at: 1 };
    let changed = |r: Result<keyward::store::AuditEntry, StoreError>| matches!(r, Err(StoreError::TenantChanged(_)));
    s.commit(vec![Op::CreateTenant(rec(b"k1"))], draft()).await.unwrap();
    assert!(changed(s.commit(vec![Op::CreateTenant(rec(b"k2"))], draft()).await), "create is insert-if-absent");
    assert_eq!(s.get_tenant(&t).await.unwrap().unwrap().wrapped_key, b"k1", "the first creator's key stays");
    let rewrap = |expect: &[u8], to: &[u8]| Op::RewrapTenant { record: rec(to), expect: expect.to_vec() };
    assert!(changed(s.commit(vec![rewrap(b"k0", b"k9")], draft()).await), "rewrap of a key not read");
    s.commit(vec![rewrap(b"k1", b"k1b")], draft()).await.unwrap();
    let expect = |w: &[u8]| Op::ExpectTenant { tenant: t.clone(), wrapped_key: w.to_vec() };
    assert!(changed(s.commit(vec![expect(b"k1")], draft()).await), "a write sealed before the rewrap re-reads");
    s.commit(vec![expect(b"k1b")], draft()).await.unwrap();
    let shred = |w: &[u8]| Op::DeleteTenant { tenant: t.clone(), expect: w.to_vec() };
    assert!(changed(s.commit(vec![shred(b"k1")], draft()).await), "shred of a key not read");
    s.commit(vec![shred(b"k1b")], draft()).await.unwrap();
    assert!(s.get_tenant(&t).await.unwrap().is_none());
    assert!(
        changed(s.commit(vec![rewrap(b"k1b", b"k2")], draft()).await),
        "a rotation cannot resurrect a shredded tenant"
    );
    assert!(s.get_tenant(&t).await.unwrap().is_none());
    assert!(changed(s.commit(vec![expect(b"k1b")], draft()).await), "nor can a write sealed under the shredded key");
    // A shared store refuses to shred while a credential remains (another sidecar's write
    // between the purge's count and its commit).
    if s.subscribe().is_some() {
        s.commit(vec![Op::CreateTenant(rec(b"k3"))], draft()).await.unwrap();
        let cred = CredentialRecord {
            tenant: t.clone(),
            provider: ProviderName::parse("vapi").unwrap(),
            version: 1,
            status: CredStatus::Active,
            fields: Default::default(),
            hints: Default::default(),
            sealed: vec![1],
            created_at: 1,
            updated_at: 1,
            last_verified_at: None,
            last_error: None,
            deleted_at: None,
            aad_version: 2,
        };
        s.commit(vec![Op::PutCredential { record: cred, expect: Expect::Absent }], draft()).await.unwrap();
        assert!(changed(s.commit(vec![shred(b"k3")], draft()).await), "a tenant with a credential is not shredded");
        assert!(s.get_tenant(&t).await.unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_key_writes_are_compare_and_set_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let key = || keyward::store::Integrity::new([5; 32], 1);
    let sled = keyward::store::SledStore::open(dir.path()).unwrap();
    keyward::store::Store::set_integrity(&sled, key());
    tenant_keys_are_compare_and_set(&sled).await;
    let Some(admin) = pg_admin_url() else { return };
    let url = fresh_pg_db(&admin).await;
    let target = keyward::store::PgTarget { config: url.parse().unwrap(), tls: None, display: "test".into() };
    let pg = keyward::store::PgStore::open(target).await.unwrap();
    keyward::store::Store::set_integrity(&*pg, key());
    tenant_keys_are_compare_and_set(&*pg).await;
}
