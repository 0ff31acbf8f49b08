//! The examples run against fake providers: the Rust Vapi provisioner (idempotent) and the
//! Python script that sends an SMS with the official Twilio SDK through keyward's mTLS
//! listener.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, clippy::result_large_err)]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use common::fake::*;
use common::*;
use serde_json::{json, Value};

const VAPI_KEY: &str = "CANARYvapiExampleKey00000000001";
const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "CANARYtwilioExampleToken00000002";

fn example_bin(name: &str) -> PathBuf {
    // Tests run from target/<profile>/deps; `cargo test --all-targets` builds examples beside
    // them as `<name>-<hash>` (and `cargo build --examples` as `<name>`).
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let plain = dir.join(name);
    if plain.exists() {
        return plain;
    }
    let prefix = format!("{name}-");
    // The newest build wins (older hashes may linger in a reused target directory).
    let found = std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy().to_string();
            f.starts_with(&prefix) && p.extension().is_none()
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    found.unwrap_or_else(|| {
        panic!("example {name} is not built in {}: run the tests with --all-targets (scripts/test does)", dir.display())
    })
}

/// A fake Vapi that keeps assistants in memory.
fn fake_vapi(store: Arc<Mutex<Vec<Value>>>) -> Handler {
    Arc::new(move |r: Recorded| {
        let store = store.clone();
        Box::pin(async move {
            if r.header("authorization").as_deref() != Some(&format!("Bearer {VAPI_KEY}")) {
                return json_response(401, "{}");
            }
            let path = r.path_and_query.split('?').next().unwrap().to_string();
            let mut s = store.lock().unwrap();
            match (r.method.as_str(), path.as_str()) {
                ("GET", "/assistant") => json_response(200, &Value::Array(s.clone()).to_string()),
                ("POST", "/assistant") => {
                    let mut a: Value = serde_json::from_slice(&r.body).unwrap();
                    a["id"] = json!(format!("asst-{}", s.len() + 1));
                    s.push(a.clone());
                    json_response(201, &a.to_string())
                }
                ("PATCH", p) if p.starts_with("/assistant/") => {
                    let id = p.trim_start_matches("/assistant/");
                    let patch: Value = serde_json::from_slice(&r.body).unwrap();
                    let Some(a) = s.iter_mut().find(|a| a["id"] == id) else { return json_response(404, "{}") };
                    for (k, v) in patch.as_object().unwrap() {
                        a[k] = v.clone();
                    }
                    json_response(200, &a.to_string())
                }
                _ => json_response(404, "{}"),
            }
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vapi_provisioner_is_idempotent_through_keyward() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let assistants = Arc::new(Mutex::new(Vec::new()));
    let vapi = FakeProvider::with_handler(&pki, fake_vapi(assistants.clone())).await;
    let mut d = Daemon::new(DaemonConfig {
        app: Some(String::new()),
        extra: pki.upstream("vapi", &vapi.url),
        ..DaemonConfig::default()
    });
    d.start();
    d.admin("PUT", "/v1/tenants/acme/credentials/vapi", Some(&json!({"api_key": VAPI_KEY}).to_string())).await;
    let run = |first: &str| {
        let out = std::process::Command::new(example_bin("provision_vapi"))
            .args([
                "--socket",
                d.app_sock().to_str().unwrap(),
                "--tenant",
                "acme",
                "--name",
                "Front desk",
                "--first-message",
                first,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let first = run("Hello!");
    assert_eq!(first["action"], "created");
    let second = run("Hi, how can I help?");
    assert_eq!(second["action"], "updated");
    assert_eq!(second["id"], first["id"]);
    let all = assistants.lock().unwrap().clone();
    assert_eq!(all.len(), 1, "running twice leaves one assistant");
    assert_eq!(all[0]["firstMessage"], "Hi, how can I help?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twilio_sdk_sends_an_sms_through_keyward() {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv/bin/python");
    assert!(python.exists(), "the provider SDKs are missing: run scripts/ci-deps (scripts/test does)");
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let twilio = FakeProvider::with_handler(
        &pki,
        Arc::new(|r: Recorded| {
            Box::pin(async move {
                let ok = r.method == "POST" && r.path_and_query == format!("/2010-04-01/Accounts/{SID}/Messages.json");
                if !ok {
                    return json_response(404, r#"{"code":20404}"#);
                }
                json_response(
                    201,
                    &json!({"sid": "SM0123456789abcdef0123456789abcdef", "status": "queued", "account_sid": SID})
                        .to_string(),
                )
            })
        }),
    )
    .await;
    let (cert, key) = pki.client_cert("app", "spiffe://example/app");
    let mut d = Daemon::new(DaemonConfig {
        app: Some(format!(
            "tcp = \"127.0.0.1:0\"\n[app.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca_pem.display()
        )),
        extra: pki.upstream("twilio", &twilio.url),
        ..DaemonConfig::default()
    });
    d.start();
    d.admin(
        "PUT",
        "/v1/tenants/acme/credentials/twilio",
        Some(&json!({"account_sid": SID, "auth_token": TOKEN}).to_string()),
    )
    .await;
    let port = d.addr("app-tls").rsplit(':').next().unwrap().to_string();
    let out = std::process::Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/send_sms.py"))
        .args(["--keyward", &format!("https://localhost:{port}"), "--tenant", "acme"])
        .args(["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap(), "--ca", pki.ca_pem.to_str().unwrap()])
        .args(["--to", "+15555550100", "--from", "+15555550199", "--body", "Your appointment is at 3pm"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sid"], "SM0123456789abcdef0123456789abcdef");
    let r = twilio.last();
    use base64::Engine;
    assert_eq!(
        r.header("authorization").unwrap(),
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}")))
    );
    let body = String::from_utf8(r.body.clone()).unwrap();
    assert!(body.contains("Body=Your+appointment+is+at+3pm") && body.contains("To=%2B15555550100"), "{body}");
}
