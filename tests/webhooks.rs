//! End-to-end: deliveries signed by the providers' official SDKs (Python, via
//! tests/fixtures/webhooks/generate.py) go through the webhook listener to a fake app;
//! tampered, stale, replayed, wrong-tenant and unsigned ones never reach it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, clippy::result_large_err)]

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::fake::*;
use common::*;
use serde_json::{json, Value};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const SID_OTHER: &str = "ACfedcba9876543210fedcba9876543210";
const TW_TOKEN: &str = "CANARYtwilioWebhookToken00000001";
const RESEND_SECRET: &str = "whsec_Q0FOQVJZcmVzZW5kU2lnbmluZ0tleTAwMDAwMDAx";
const EL_SECRET: &str = "CANARYelevenWebhookSecret0000002";
const STD_SECRET: &str = "whsec_Q0FOQVJZc3RhbmRhcmRXZWJob29rS2V5MDAwMDAy";
const STRIPE_SECRET: &str = "whsec_CANARYstripeStyleSecret0003";
const VAPI_HMAC: &str = "CANARYvapiHmacSecret000000000004";
const VAPI_STATIC: &str = "CANARYvapiStaticSecret0000000005";
const GOOGLE_TOKEN: &str = "CANARYgoogleChannelToken00000006";
const BASE: &str = "https://hooks.test";

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv/bin/python");
    assert!(p.exists(), "the provider SDKs are missing: run scripts/ci-deps (scripts/test does)");
    p
}

/// Signs a delivery with the provider's SDK; returns its headers.
fn sdk_sign(provider: &str, secret: &str, url: &str, body: &str, extra: &[&str]) -> Vec<(String, String)> {
    static N: AtomicU32 = AtomicU32::new(0);
    let f = std::env::temp_dir().join(format!("kw-body-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&f, body).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks/generate.py");
    let out = std::process::Command::new(python())
        .arg(script)
        .args(["sign", provider, secret, url])
        .arg(&f)
        .args(extra)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&f);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["headers"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect()
}

fn echo_app() -> Handler {
    Arc::new(|r: Recorded| {
        Box::pin(async move {
            if r.path_and_query.contains("fail-once") && r.headers.get("x-attempt").map(|v| v == "1").unwrap_or(false) {
                return json_response(500, r#"{"retry":true}"#);
            }
            http::Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("x-app", "yes")
                .body(full(r#"{"assistant":{"name":"from the app"}}"#))
                .unwrap()
        })
    })
}

struct Env {
    d: Daemon,
    app: FakeApp,
}

async fn put(d: &Daemon, tenant: &str, provider: &str, fields: Value) {
    let (s, v) =
        d.admin("PUT", &format!("/v1/tenants/{tenant}/credentials/{provider}"), Some(&fields.to_string())).await;
    assert_eq!(s, 200, "{v}");
}

async fn env() -> Env {
    let app = FakeApp::start(echo_app()).await;
    let mut d = Daemon::new(DaemonConfig {
        extra: format!(
            "[webhooks]\nlisten = \"127.0.0.1:0\"\npublic_base_url = \"{BASE}\"\nforward_to = \"{}\"\nmax_body = \"64KiB\"\n\
             [providers.stdwh]\nbase_url = \"https://api.stdwh.example\"\nfields = [\"api_key\", \"webhook_secret\"]\ninject = {{ header = \"Authorization\", value = \"Bearer {{api_key}}\" }}\nwebhook = {{ scheme = \"standard-webhooks\" }}\n\
             [providers.stripeco]\nbase_url = \"https://api.stripeco.example\"\nfields = [\"api_key\", \"webhook_secret\"]\ninject = {{ header = \"Authorization\", value = \"Bearer {{api_key}}\" }}\nwebhook = {{ scheme = \"stripe\" }}\n",
            app.url
        ),
        ..DaemonConfig::default()
    });
    d.start();
    put(&d, "acme", "twilio", json!({"account_sid": SID, "auth_token": TW_TOKEN})).await;
    put(&d, "globex", "twilio", json!({"account_sid": SID_OTHER, "auth_token": "globex-token-000000000000000000"}))
        .await;
    put(&d, "acme", "resend", json!({"api_key": "re_x", "webhook_secret": RESEND_SECRET})).await;
    put(&d, "acme", "elevenlabs", json!({"api_key": "k", "webhook_secret": EL_SECRET})).await;
    put(&d, "acme", "stdwh", json!({"api_key": "k", "webhook_secret": STD_SECRET})).await;
    put(&d, "acme", "stripeco", json!({"api_key": "k", "webhook_secret": STRIPE_SECRET})).await;
    put(&d, "acme", "vapi", json!({"api_key": "k", "webhook_hmac_secret": VAPI_HMAC, "org_id": "org-acme"})).await;
    put(&d, "globex", "vapi", json!({"api_key": "k", "webhook_secret": VAPI_STATIC})).await;
    put(&d, "acme", "google", json!({"client_id": "c", "client_secret": "s", "refresh_token": "r", "scopes": ["s"], "webhook_secret": GOOGLE_TOKEN})).await;
    d.admin("PUT", &format!("/v1/routes/twilio-account/{SID}"), Some(r#"{"tenant":"acme"}"#)).await;
    d.admin("PUT", "/v1/routes/vapi-assistant/asst-acme", Some(r#"{"tenant":"acme"}"#)).await;
    d.admin("PUT", "/v1/routes/vapi-assistant/asst-globex", Some(r#"{"tenant":"globex"}"#)).await;
    d.admin("PUT", "/v1/routes/google-channel/chan-acme", Some(r#"{"tenant":"acme"}"#)).await;
    d.admin("PUT", "/v1/routes/elevenlabs-agent/agent-globex", Some(r#"{"tenant":"globex"}"#)).await;
    Env { d, app }
}

impl Env {
    async fn deliver(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &str,
    ) -> (u16, http::HeaderMap, Vec<u8>) {
        let stream = tokio::net::TcpStream::connect(self.d.addr("webhooks")).await.unwrap();
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        http_full(hyper_util::rt::TokioIo::new(stream), method, path, Some(body.as_bytes().to_vec()), &h).await
    }

    fn code(body: &[u8]) -> String {
        serde_json::from_slice::<Value>(body)
            .map(|v| v["error"]["code"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    }
}

fn with(mut h: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    h
}

const FORM: &str =
    "AccountSid=AC0123456789abcdef0123456789abcdef&CallSid=CA42&From=%2B14155551212&Body=Hello+world&Empty=";

#[tokio::test]
async fn sdk_signed_deliveries_reach_the_app_with_keywards_headers() {
    let e = env().await;
    let cases: Vec<(&str, &str, &str, String, Vec<&str>)> = vec![
        (
            "twilio",
            TW_TOKEN,
            "/webhooks/twilio/acme",
            FORM.to_string(),
            vec!["--content-type", "application/x-www-form-urlencoded"],
        ),
        (
            "resend",
            RESEND_SECRET,
            "/webhooks/resend/acme",
            r#"{"type":"email.delivered","data":{"email_id":"e1"}}"#.into(),
            vec![],
        ),
        (
            "elevenlabs",
            EL_SECRET,
            "/webhooks/elevenlabs/acme",
            r#"{"type":"post_call_transcription","data":{"agent_id":"agent-acme"}}"#.into(),
            vec![],
        ),
        ("stdwh", STD_SECRET, "/webhooks/stdwh/acme", r#"{"type":"thing.created"}"#.into(), vec![]),
        ("stripeco", STRIPE_SECRET, "/webhooks/stripeco/acme", r#"{"id":"evt_1"}"#.into(), vec![]),
    ];
    for (provider, secret, path, body, extra) in cases {
        let before = e.app.count();
        let mut h = sdk_sign(provider, secret, &format!("{BASE}{path}"), &body, &extra);
        if provider != "twilio" {
            h.push(("content-type".into(), "application/json".into()));
        }
        // Outside Keyward-* headers are dropped before forwarding, and so is a header the
        // provider's `Connection` names (that hop ends at keyward).
        let h = with(
            h,
            &[
                ("keyward-verified", "forged"),
                ("keyward-tenant", "globex"),
                ("connection", "X-Hop-Only"),
                ("x-hop-only", "1"),
            ],
        );
        let (s, rh, rb) = e.deliver("POST", path, &h, &body).await;
        assert_eq!(s, 200, "{provider}: {}", String::from_utf8_lossy(&rb));
        assert_eq!(rh["x-app"], "yes", "the app's headers go back to the provider");
        assert_eq!(rb, br#"{"assistant":{"name":"from the app"}}"#);
        assert_eq!(e.app.count(), before + 1);
        let r = e.app.last();
        assert_eq!(r.body, body.as_bytes(), "{provider}: the raw body is unchanged");
        assert_eq!(r.path_and_query, path);
        assert_eq!(r.header("keyward-tenant").as_deref(), Some("acme"));
        assert_eq!(r.header("keyward-provider").as_deref(), Some(provider));
        assert_eq!(r.header("keyward-verified").as_deref(), Some("1"));
        assert_eq!(r.headers.get_all("keyward-tenant").iter().count(), 1);
        assert!(r.header("x-hop-only").is_none(), "{provider}: a hop-by-hop header went on");
        if matches!(provider, "resend" | "stdwh") {
            assert!(r.header("keyward-event-id").unwrap().starts_with("msg_"));
        }
    }
    // JSON Twilio deliveries with bodySHA256 in the URL.
    let body = r#"{"AccountSid": "AC0123456789abcdef0123456789abcdef", "EventType": "onMessageAdded"}"#;
    use sha2::Digest;
    let path = format!("/webhooks/twilio/acme?bodySHA256={}", hex::encode(sha2::Sha256::digest(body)));
    let h = sdk_sign("twilio", TW_TOKEN, &format!("{BASE}{path}"), body, &["--content-type", "application/json"]);
    let (s, _, rb) = e.deliver("POST", &path, &h, body).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&rb));
}

#[tokio::test]
async fn tampered_stale_replayed_wrong_tenant_and_unsigned_deliveries_never_reach_the_app() {
    let e = env().await;
    let body = r#"{"type":"email.delivered","data":{"email_id":"e2"}}"#;
    let url = format!("{BASE}/webhooks/resend/acme");
    let json = ("content-type", "application/json");
    let good = with(sdk_sign("resend", RESEND_SECRET, &url, body, &["--id", "msg_replay_1"]), &[json]);
    let old = with(sdk_sign("resend", RESEND_SECRET, &url, body, &["--now", "1600000000"]), &[json]);
    let (s, _, _) = e.deliver("POST", "/webhooks/resend/acme", &good, body).await;
    assert_eq!(s, 200);
    let reached = e.app.count();
    let cases: Vec<(&str, &str, Vec<(String, String)>, &str, &str)> = vec![
        (
            "tampered",
            "/webhooks/resend/acme",
            good.clone(),
            r#"{"type":"email.delivered","data":{"email_id":"e3"}}"#,
            "bad_signature",
        ),
        ("replayed", "/webhooks/resend/acme", good.clone(), body, "replayed"),
        ("stale", "/webhooks/resend/acme", old, body, "stale_timestamp"),
        (
            "unsigned",
            "/webhooks/resend/acme",
            vec![("content-type".into(), "application/json".into())],
            body,
            "bad_signature",
        ),
        ("wrong tenant", "/webhooks/resend/globex", good.clone(), body, "no_credential"),
        ("unknown tenant", "/webhooks/resend/nobody", good.clone(), body, "no_credential"),
        ("bad tenant id", "/webhooks/resend/..%2Fx", good.clone(), body, "no_credential"),
        ("no route", "/webhooks/resend", good.clone(), body, "unresolved_tenant"),
    ];
    for (what, path, h, b, code) in cases {
        let (s, rh, rb) = e.deliver("POST", path, &h, b).await;
        assert_eq!((s, Env::code(&rb).as_str()), (401, code), "{what}: {}", String::from_utf8_lossy(&rb));
        assert_eq!(rh["keyward-error"], code);
    }
    // A Twilio delivery signed for acme sent to globex's path: globex's token does not match.
    let h = sdk_sign(
        "twilio",
        TW_TOKEN,
        &format!("{BASE}/webhooks/twilio/globex"),
        FORM,
        &["--content-type", "application/x-www-form-urlencoded"],
    );
    let (s, _, rb) = e.deliver("POST", "/webhooks/twilio/globex", &h, FORM).await;
    assert_eq!((s, Env::code(&rb).as_str()), (401, "bad_signature"));
    assert_eq!(e.app.count(), reached, "nothing reached the app");
    // Oversized bodies: 413, nothing verified.
    let big = "x".repeat(70_000);
    let (s, _, rb) = e.deliver("POST", "/webhooks/resend/acme", &good, &big).await;
    assert_eq!((s, Env::code(&rb).as_str()), (413, "payload_too_large"));
    // Rejections are logged without body or secret, and counted.
    let logs = e.d.logs();
    assert!(logs.contains("webhook rejected"));
    assert_eq!(canary_hits(logs.as_bytes(), &[TW_TOKEN, "CANARYelevenWebhookSecret0000002"]), 0);
    assert!(!logs.contains("email_id"), "no body in the log");
}

#[tokio::test]
async fn the_tenant_is_found_through_the_routing_index_and_in_body_ids_are_checked() {
    let e = env().await;
    // Twilio: AccountSid → acme.
    let h = sdk_sign(
        "twilio",
        TW_TOKEN,
        &format!("{BASE}/webhooks/twilio"),
        FORM,
        &["--content-type", "application/x-www-form-urlencoded"],
    );
    let (s, _, rb) = e.deliver("POST", "/webhooks/twilio", &h, FORM).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&rb));
    assert_eq!(e.app.last().header("keyward-tenant").as_deref(), Some("acme"));
    // A valid signature whose body names another account: unresolved_tenant.
    let other = FORM.replace(SID, SID_OTHER);
    let h = sdk_sign(
        "twilio",
        TW_TOKEN,
        &format!("{BASE}/webhooks/twilio/acme"),
        &other,
        &["--content-type", "application/x-www-form-urlencoded"],
    );
    let (s, _, rb) = e.deliver("POST", "/webhooks/twilio/acme", &h, &other).await;
    assert_eq!((s, Env::code(&rb).as_str()), (401, "unresolved_tenant"));
    // ElevenLabs: the agent is routed to globex, but the path says acme.
    let body = r#"{"type":"post_call_transcription","data":{"agent_id":"agent-globex"}}"#;
    let h = with(
        sdk_sign("elevenlabs", EL_SECRET, &format!("{BASE}/webhooks/elevenlabs/acme"), body, &[]),
        &[("content-type", "application/json")],
    );
    let (s, _, rb) = e.deliver("POST", "/webhooks/elevenlabs/acme", &h, body).await;
    assert_eq!((s, Env::code(&rb).as_str()), (401, "unresolved_tenant"));
}

fn vapi_hmac(ts: &str, body: &str) -> String {
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(VAPI_HMAC.as_bytes()).unwrap();
    m.update(format!("{ts}.{body}").as_bytes());
    hex::encode(m.finalize().into_bytes())
}

#[tokio::test]
async fn vapi_deliveries_route_by_assistant_get_the_apps_answer_and_lose_echoed_secrets() {
    let e = env().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
    let body =
        json!({"message": {"type": "assistant-request", "call": {"assistantId": "asst-acme", "orgId": "org-acme"},
        "phoneNumber": {"number": "+14155551212", "twilioAuthToken": "CANARYechoedTwilioToken000000007"}}})
        .to_string();
    let h = vec![
        ("x-signature".to_string(), vapi_hmac(&now, &body)),
        ("x-timestamp".to_string(), now.clone()),
        ("content-type".into(), "application/json".into()),
    ];
    let (s, _, rb) = e.deliver("POST", "/webhooks/vapi", &h, &body).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&rb));
    assert_eq!(rb, br#"{"assistant":{"name":"from the app"}}"#, "the app's answer goes back to Vapi");
    let r = e.app.last();
    assert_eq!(r.header("keyward-tenant").as_deref(), Some("acme"));
    assert_eq!(canary_hits(&r.body, &["CANARYechoedTwilioToken000000007"]), 0, "echoed secrets are masked");
    assert_eq!(r.body.len(), body.len());
    // The same delivery again: replayed.
    let (s, _, rb) = e.deliver("POST", "/webhooks/vapi", &h, &body).await;
    assert_eq!((s, Env::code(&rb).as_str()), (401, "replayed"));
    // Another org in the call: unresolved_tenant (after the signature verifies).
    let other = body.replace("org-acme", "org-evil");
    let h2 = vec![
        ("x-signature".to_string(), vapi_hmac(&now, &other)),
        ("x-timestamp".to_string(), now.clone()),
        ("content-type".into(), "application/json".into()),
    ];
    let (s, _, rb) = e.deliver("POST", "/webhooks/vapi/acme", &h2, &other).await;
    assert_eq!((s, Env::code(&rb).as_str()), (401, "unresolved_tenant"));
    // globex uses the static secret; X-Vapi-Secret never reaches the app.
    let gbody = r#"{"message":{"type":"status-update","call":{"assistantId":"asst-globex"}}}"#;
    let hs = vec![
        ("x-vapi-secret".to_string(), VAPI_STATIC.to_string()),
        ("content-type".into(), "application/json".into()),
    ];
    let (s, _, _) = e.deliver("POST", "/webhooks/vapi", &hs, gbody).await;
    assert_eq!(s, 200);
    let r = e.app.last();
    assert_eq!(r.header("keyward-tenant").as_deref(), Some("globex"));
    assert!(r.header("x-vapi-secret").is_none());
    let hs = vec![("x-vapi-secret".to_string(), "wrong".to_string())];
    let (s, _, rb) = e.deliver("POST", "/webhooks/vapi", &hs, gbody).await;
    assert_eq!((s, Env::code(&rb).as_str()), (401, "bad_signature"));
}

#[tokio::test]
async fn google_channel_notifications_need_the_token_which_the_app_never_sees() {
    let e = env().await;
    let h = |n: &str, tok: &str| {
        vec![
            ("x-goog-channel-id".to_string(), "chan-acme".to_string()),
            ("x-goog-message-number".to_string(), n.to_string()),
            ("x-goog-resource-id".to_string(), "res-1".to_string()),
            (
                "x-goog-resource-uri".to_string(),
                "https://www.googleapis.com/calendar/v3/calendars/primary/events".to_string(),
            ),
            ("x-goog-resource-state".to_string(), "exists".to_string()),
            ("x-goog-channel-token".to_string(), tok.to_string()),
        ]
    };
    let (s, _, rb) = e.deliver("POST", "/webhooks/google", &h("7", GOOGLE_TOKEN), "").await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&rb));
    let r = e.app.last();
    assert_eq!(r.header("keyward-event-id").as_deref(), Some("chan-acme:7"));
    assert!(r.header("x-goog-channel-token").is_none());
    let (s, _, rb) = e.deliver("POST", "/webhooks/google", &h("7", GOOGLE_TOKEN), "").await;
    assert_eq!((s, Env::code(&rb).as_str()), (401, "replayed"));
    let (s, _, rb) = e.deliver("POST", "/webhooks/google", &h("8", "wrong-token-wrong-token-00"), "").await;
    assert_eq!((s, Env::code(&rb).as_str()), (401, "bad_signature"));
}

#[tokio::test]
async fn a_retry_after_a_failed_forward_passes_and_only_then_is_recorded() {
    let e = env().await;
    let body = r#"{"type":"thing.created"}"#;
    let path = "/webhooks/stdwh/acme?fail-once=1";
    let h = with(
        sdk_sign("stdwh", STD_SECRET, &format!("{BASE}{path}"), body, &["--id", "msg_retry"]),
        &[("content-type", "application/json")],
    );
    let (s, _, _) = e.deliver("POST", path, &with(h.clone(), &[("x-attempt", "1")]), body).await;
    assert_eq!(s, 500, "the app's failure goes back to the provider");
    let (s, _, _) = e.deliver("POST", path, &with(h.clone(), &[("x-attempt", "2")]), body).await;
    assert_eq!(s, 200, "the provider's retry passes");
    let (s, _, rb) = e.deliver("POST", path, &with(h, &[("x-attempt", "3")]), body).await;
    assert_eq!((s, Env::code(&rb).as_str()), (401, "replayed"));
}

#[tokio::test]
async fn apps_can_verify_deliveries_through_the_app_listener() {
    let app = FakeApp::start(echo_app()).await;
    let mut d = Daemon::new(DaemonConfig { app: Some(String::new()), ..DaemonConfig::default() });
    d.start();
    put(&d, "acme", "resend", json!({"api_key": "re_x", "webhook_secret": RESEND_SECRET})).await;
    drop(app);
    let body = r#"{"type":"email.bounced"}"#;
    let url = "https://app.example/hooks/resend";
    let h: serde_json::Map<String, Value> =
        sdk_sign("resend", RESEND_SECRET, url, body, &[]).into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    use base64::Engine;
    let req = json!({"provider": "resend", "tenant": "acme", "url": url, "method": "POST", "headers": h, "body_base64": base64::engine::general_purpose::STANDARD.encode(body)});
    let (s, _, rb) = d
        .app("POST", "/v1/webhooks/verify", &[("content-type", "application/json")], Some(req.to_string().into_bytes()))
        .await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_slice(&rb).unwrap();
    assert_eq!((v["valid"].as_bool(), v["tenant"].as_str()), (Some(true), Some("acme")), "{v}");
    let mut bad = req.clone();
    bad["body_base64"] = json!(base64::engine::general_purpose::STANDARD.encode("{}"));
    let (_, _, rb) = d.app("POST", "/v1/webhooks/verify", &[], Some(bad.to_string().into_bytes())).await;
    let v: Value = serde_json::from_slice(&rb).unwrap();
    assert_eq!((v["valid"].as_bool(), v["reason"].as_str()), (Some(false), Some("bad_signature")));
}

/// Every committed SDK vector gives keyward's expected verdict, in process and through the
/// `keyward webhook verify` command.
#[test]
fn every_sdk_vector_gives_the_expected_verdict() {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/webhooks/vectors.json")).unwrap(),
    )
    .unwrap();
    let vectors = doc["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 20, "the fixture walk found {} vectors", vectors.len());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    std::fs::write(
        &cfg,
        "[store]\npath = \"/tmp/unused\"\n[master_key]\nfile = \"/tmp/unused\"\n[admin]\nunix = \"/tmp/unused.sock\"\n\
         [providers.stdwh]\nbase_url = \"https://a.example\"\nfields = [\"webhook_secret\"]\ninject = { header = \"X\", value = \"{webhook_secret}\" }\nwebhook = { scheme = \"standard-webhooks\" }\n\
         [providers.stripeco]\nbase_url = \"https://a.example\"\nfields = [\"webhook_secret\"]\ninject = { header = \"X\", value = \"{webhook_secret}\" }\nwebhook = { scheme = \"stripe\" }\n",
    )
    .unwrap();
    let config = keyward::config::Config::load(&cfg, &std::collections::BTreeMap::<String, String>::new()).unwrap();
    let providers = keyward::providers::Providers::from_config(&config.providers);
    let mut cli_runs = 0;
    for v in vectors {
        let headers: Vec<String> = v["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, val)| format!("{k}: {}", val.as_str().unwrap()))
            .collect();
        let header_map = keyward::offline::header_map(&headers).unwrap();
        let got = keyward::offline::verify_offline(
            &providers,
            v["provider"].as_str().unwrap(),
            v["secret"].as_str().unwrap().as_bytes(),
            &keyward::providers::Delivery {
                url: v["url"].as_str().unwrap(),
                method: v["method"].as_str().unwrap(),
                headers: &header_map,
                body: v["body"].as_str().unwrap().as_bytes(),
                now: v["now"].as_u64().unwrap(),
            },
        );
        let verdict = match &got {
            Ok(()) => "valid".to_string(),
            Err(e) => e.split(':').next().unwrap().to_string(),
        };
        assert_eq!(verdict, v["expect"].as_str().unwrap(), "{}: {got:?}", v["id"]);
        // The CLI agrees, for a sample of every provider.
        if v["id"].as_str().unwrap().ends_with("-valid") || v["id"].as_str().unwrap().ends_with("stale") {
            let secret = dir.path().join("secret");
            std::fs::write(&secret, format!("{}\n", v["secret"].as_str().unwrap())).unwrap();
            let body = dir.path().join("body");
            std::fs::write(&body, v["body"].as_str().unwrap()).unwrap();
            let mut cmd = std::process::Command::new(BIN);
            cmd.args(["--config"])
                .arg(&cfg)
                .args(["webhook", "verify", "--provider", v["provider"].as_str().unwrap(), "--secret-file"])
                .arg(&secret);
            cmd.args(["--url", v["url"].as_str().unwrap(), "--method", v["method"].as_str().unwrap(), "--body-file"])
                .arg(&body);
            cmd.args(["--now", &v["now"].to_string()]);
            for h in &headers {
                cmd.args(["--header", h]);
            }
            let out = cmd.output().unwrap();
            let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if v["expect"] == "valid" {
                assert_eq!((line.as_str(), out.status.code()), ("valid", Some(0)), "{}", v["id"]);
            } else {
                assert!(
                    line.starts_with(&format!("invalid: {}", v["expect"].as_str().unwrap())),
                    "{}: {line}",
                    v["id"]
                );
                assert_eq!(out.status.code(), Some(1));
            }
            cli_runs += 1;
        }
    }
    assert!(cli_runs >= 8, "the CLI was run on {cli_runs} vectors");
}

#[test]
fn the_cli_explains_a_twilio_failure_with_the_url_variants_it_tried() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "12345\n").unwrap();
    std::fs::write(dir.path().join("body"), "CallSid=CA1").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["webhook", "verify", "--provider", "twilio", "--secret-file"])
        .arg(dir.path().join("secret"))
        .args([
            "--url",
            "https://hooks.example.com/webhooks/twilio/acme",
            "--header",
            "X-Twilio-Signature: RSOYDt4T1cUTdK1PDd93/VVr8B8=",
            "--header",
            "Content-Type: application/x-www-form-urlencoded",
            "--body-file",
        ])
        .arg(dir.path().join("body"))
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(line.starts_with("invalid: bad_signature:"), "{line}");
    assert!(
        line.contains("https://hooks.example.com/webhooks/twilio/acme")
            && line.contains("https://hooks.example.com:443/webhooks/twilio/acme"),
        "{line}"
    );
}

#[tokio::test]
async fn deliveries_can_be_forwarded_to_an_app_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("hooks.sock");
    let app = FakeApp::start_unix(&sock, echo_app()).await;
    let mut d = Daemon::new(DaemonConfig {
        extra: format!(
            "[webhooks]\nlisten = \"127.0.0.1:0\"\npublic_base_url = \"{BASE}\"\nforward_to = \"{}\"\n",
            app.url
        ),
        ..DaemonConfig::default()
    });
    d.start();
    put(&d, "acme", "resend", json!({"api_key": "re_x", "webhook_secret": RESEND_SECRET})).await;
    let e = Env { d, app };
    let body = r#"{"type":"email.opened"}"#;
    let h = with(
        sdk_sign("resend", RESEND_SECRET, &format!("{BASE}/webhooks/resend/acme?x=1"), body, &[]),
        &[("content-type", "application/json")],
    );
    let (s, _, rb) = e.deliver("POST", "/webhooks/resend/acme?x=1", &h, body).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&rb));
    let r = e.app.last();
    assert_eq!(r.path_and_query, "/webhooks/resend/acme?x=1");
    assert_eq!(r.header("keyward-tenant").as_deref(), Some("acme"));
    // Later deliveries reuse the kept-alive connection to the app.
    for id in ["msg_u2", "msg_u3"] {
        let h = with(
            sdk_sign("resend", RESEND_SECRET, &format!("{BASE}/webhooks/resend/acme"), body, &["--id", id]),
            &[("content-type", "application/json")],
        );
        assert_eq!(e.deliver("POST", "/webhooks/resend/acme", &h, body).await.0, 200);
    }
    assert_eq!(e.app.count(), 3);
    assert_eq!(e.app.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unreachable_app_gets_a_gateway_error_and_the_retry_is_not_a_replay() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut d = Daemon::new(DaemonConfig {
        extra: format!("[webhooks]\nlisten = \"127.0.0.1:0\"\npublic_base_url = \"{BASE}\"\nforward_to = \"http://127.0.0.1:{closed}\"\n"),
        ..DaemonConfig::default()
    });
    d.start();
    put(&d, "acme", "resend", json!({"api_key": "re_x", "webhook_secret": RESEND_SECRET})).await;
    let app = FakeApp::start(echo_app()).await;
    let e = Env { d, app };
    let body = r#"{"type":"email.opened"}"#;
    let h = with(
        sdk_sign("resend", RESEND_SECRET, &format!("{BASE}/webhooks/resend/acme"), body, &["--id", "msg_down"]),
        &[("content-type", "application/json")],
    );
    for _ in 0..2 {
        let (s, rh, _) = e.deliver("POST", "/webhooks/resend/acme", &h, body).await;
        assert_eq!((s, rh["keyward-error"].to_str().unwrap()), (502, "upstream_connect_failed"));
    }
}

/// Hardening (issue 13, item 6): `/v1/webhooks/verify` applies the client policy before it
/// verifies anything, so a client restricted to some tenants learns nothing (not even a
/// rejection reason) about deliveries for the others.
#[tokio::test]
async fn the_verify_endpoint_checks_the_client_policy_before_verifying() {
    let me = rustix::process::geteuid().as_raw();
    let policy = format!("[[app.clients]]\nuid = {me}\ntenants = [\"globex\"]\nproviders = [\"resend\"]\n");
    let mut d = Daemon::new(DaemonConfig { app: Some(policy), ..DaemonConfig::default() });
    d.start_in_process().await;
    put(&d, "acme", "resend", json!({"api_key": "re_x", "webhook_secret": RESEND_SECRET})).await;
    use base64::Engine;
    let url = "https://app.example/hooks/resend";
    for body in [r#"{"type":"email.bounced"}"#, "forged"] {
        let signed = sdk_sign("resend", RESEND_SECRET, url, r#"{"type":"email.bounced"}"#, &[]);
        let h: serde_json::Map<String, Value> = signed.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        let req = json!({"provider": "resend", "tenant": "acme", "url": url, "method": "POST", "headers": h,
            "body_base64": base64::engine::general_purpose::STANDARD.encode(body)});
        let (s, hd, rb) = d.app("POST", "/v1/webhooks/verify", &[], Some(req.to_string().into_bytes())).await;
        assert_eq!(
            (s, hd.get("keyward-error").map(|v| v.to_str().unwrap())),
            (403, Some("tenant_not_allowed")),
            "{body}: {}",
            String::from_utf8_lossy(&rb)
        );
        assert!(!String::from_utf8_lossy(&rb).contains("bad_signature"), "no reason leaks");
    }
}

#[tokio::test]
async fn a_twilio_signature_over_the_url_alone_authenticates_no_body() {
    let e = env().await;
    // A GET status callback, signed by the Twilio SDK over the URL alone.
    let path = format!("/webhooks/twilio/acme?AccountSid={SID}&CallStatus=completed");
    let h = sdk_sign("twilio", TW_TOKEN, &format!("{BASE}{path}"), "", &["--method", "GET"]);
    let (s, _, rb) = e.deliver("GET", &path, &h, "").await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&rb));
    let reached = e.app.count();
    // The attacker reuses that signature with a body of their choice.
    let json = with(h.clone(), &[("content-type", "application/json")]);
    for (method, headers) in [("POST", &json), ("GET", &json), ("POST", &h)] {
        let (s, _, rb) = e.deliver(method, &path, headers, r#"{"Body":"transfer all funds"}"#).await;
        assert_eq!((s, Env::code(&rb).as_str()), (401, "bad_signature"), "{method}: {}", String::from_utf8_lossy(&rb));
    }
    assert_eq!(e.app.count(), reached, "no unsigned body reached the app");
}

#[tokio::test]
async fn a_twilio_replay_with_a_fresh_idempotency_token_is_still_a_replay() {
    let e = env().await;
    let form = ("content-type", "application/x-www-form-urlencoded");
    let signed =
        sdk_sign("twilio", TW_TOKEN, &format!("{BASE}/webhooks/twilio/acme"), FORM, &["--content-type", form.1]);
    let first = with(signed.clone(), &[("i-twilio-idempotency-token", "token-1")]);
    let (s, _, rb) = e.deliver("POST", "/webhooks/twilio/acme", &first, FORM).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&rb));
    let event_id = e.app.last().header("keyward-event-id");
    assert!(
        event_id.as_deref().is_some_and(|id| !id.contains("token-1")),
        "the event id is not the unsigned token: {event_id:?}"
    );
    let reached = e.app.count();
    for token in ["token-2", ""] {
        let again = if token.is_empty() {
            signed.clone()
        } else {
            with(signed.clone(), &[("i-twilio-idempotency-token", token)])
        };
        let (s, _, rb) = e.deliver("POST", "/webhooks/twilio/acme", &again, FORM).await;
        assert_eq!((s, Env::code(&rb).as_str()), (401, "replayed"), "token {token:?}");
    }
    assert_eq!(e.app.count(), reached);
}

#[tokio::test]
async fn a_vapi_timestamp_moved_into_the_body_does_not_verify_and_untimed_deliveries_replay_never() {
    let e = env().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
    let body = json!({"message": {"type": "status-update", "call": {"assistantId": "asst-acme"}}}).to_string();
    // A delivery signed over {x-timestamp}.{body}; the attacker drops the header and puts
    // the timestamp in front of the body, which is then what the MAC covers.
    let moved = format!("{now}.{body}");
    let h =
        vec![("x-signature".to_string(), vapi_hmac(&now, &body)), ("content-type".into(), "application/json".into())];
    let (s, _, rb) = e.deliver("POST", "/webhooks/vapi/acme", &h, &moved).await;
    assert_eq!((s, Env::code(&rb).as_str()), (401, "bad_signature"), "{}", String::from_utf8_lossy(&rb));
    // A delivery signed without a timestamp (body only) is accepted once, then replayed.
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(VAPI_HMAC.as_bytes()).unwrap();
    m.update(body.as_bytes());
    let h = vec![
        ("x-signature".to_string(), hex::encode(m.finalize().into_bytes())),
        ("content-type".into(), "application/json".into()),
    ];
    let (s, _, rb) = e.deliver("POST", "/webhooks/vapi/acme", &h, &body).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&rb));
    let (s, _, rb) = e.deliver("POST", "/webhooks/vapi/acme", &h, &body).await;
    assert_eq!((s, Env::code(&rb).as_str()), (401, "replayed"));
}

#[tokio::test]
async fn a_client_still_sending_a_refused_body_gets_the_answer_not_a_reset() {
    let e = env().await;
    // Python's http.client sends the whole body before reading the answer, as many do.
    let script = r#"
import http.client, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=20)
try:
    c.request("POST", "/webhooks/resend/acme", body=b"x" * (4 << 20), headers={"content-type": "application/json"})
    r = c.getresponse()
    print(r.status, r.read().decode())
except Exception as ex:
    print("ERROR", type(ex).__name__, ex)
"#;
    let addr = e.d.addr("webhooks");
    let (host, port) = addr.rsplit_once(':').unwrap();
    for _ in 0..3 {
        let out = std::process::Command::new("python3").args(["-c", script, host, port]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("413 ") && text.contains("payload_too_large"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
