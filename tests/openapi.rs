//! The OpenAPI description of the admin API (docs/openapi.json, `GET /v1/openapi.json`)
//! against a live daemon: schemathesis (PyPI, installed by scripts/ci-deps) generates
//! requests from it, and every answer must be documented, match its schema and content
//! type, and never be a 5xx. (That every route is described, and nothing else, is
//! src/admin/openapi.rs's unit test.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::fake::*;
use common::*;

const TOKEN: &str = "openapi-admin-token-0000000000000001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_against_the_live_admin_api() {
    let st = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/api-venv/bin/schemathesis");
    if !st.exists() {
        eprintln!("SKIPPED: the OpenAPI conformance test needs schemathesis (run scripts/ci-deps, which installs it from PyPI)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A fake Vapi, so that live checks get an answer (an unreachable provider would be a 502).
    let pki = Pki::new(tmp.path());
    let vapi = FakeProvider::start(&pki).await;
    let mut d = Daemon::new(DaemonConfig {
        admin_extra: format!("tcp = \"127.0.0.1:0\"\ntoken_file = \"{}\"", token_file.display()),
        extra: pki.upstream("vapi", &vapi.url),
        log_level: "info".into(),
        ..DaemonConfig::default()
    });
    d.start();
    // Data for the examples the description names (tenant acme, provider vapi).
    put_vapi(&d, "acme", "openapi-vapi-key-00000000001").await;
    let (s, doc) = d.admin("GET", "/v1/openapi.json", None).await;
    assert_eq!((s, doc["openapi"].as_str()), (200, Some("3.1.0")), "served on the socket too");
    let addr = d.addr("admin-tcp");
    let out = Command::new(&st)
        .env("HOME", tmp.path())
        .env("SCHEMATHESIS_HOOKS", Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis_hooks.py"))
        .args([
            "run",
            &format!("http://{addr}/v1/openapi.json"),
            "--header",
            &format!("Authorization: Bearer {TOKEN}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "40",
            "--generation-deterministic",
            "--no-color",
        ])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found something:\n{text}");
    assert!(text.contains("passed") && !text.contains("failure"), "{text}");
    d.stop();
    assert!(!d.logs().contains(TOKEN));
}
