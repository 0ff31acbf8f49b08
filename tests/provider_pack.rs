//! End-to-end for the voice-AI provider pack (PROVIDERS-2.md): each provider's injection as
//! a fake HTTPS provider sees it, its official SDK pointed at keyward by base URL, signed
//! deliveries verified and forwarded, and every rejection code, through real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, clippy::result_large_err)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::fake::*;
use common::*;
use serde_json::{json, Value};

const RETELL_KEY: &str = "key_CANARYretellApiKey0000000001";
const RETELL_OTHER: &str = "key_CANARYretellGlobexKey000002";
const OPENAI_KEY: &str = "sk-proj-CANARYopenaiKey0000000003";
const OPENAI_WHSEC: &str = "whsec_b3BlbmFpLXdlYmhvb2stc2lnbmluZy1rZXktMDAwMDAx";
const TELNYX_KEY: &str = "KEYCANARYtelnyxApiKey00000000004";
const DEEPGRAM_KEY: &str = "CANARYdeepgramApiKey000000000005";
const DEEPGRAM_SECRET: &str = "CANARYdeepgramCallback_0000006";
const CARTESIA_KEY: &str = "sk_car_CANARYcartesiaKey00000007";
const CARTESIA_SECRET: &str = "CANARYcartesiaWebhookSecret_008";
const PLIVO_ID: &str = "MA0123456789ABCDEFGH";
const PLIVO_TOKEN: &str = "CANARYplivoAuthToken000000000000000013";
const BASE: &str = "https://hooks.test";

/// The Telnyx account's signing key (the test plays Telnyx) and its public half.
fn telnyx_key(seed: u8) -> (ed25519_dalek::SigningKey, String) {
    use base64::Engine;
    let sk = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    let pk = base64::engine::general_purpose::STANDARD.encode(sk.verifying_key().as_bytes());
    (sk, pk)
}

fn telnyx_sig(sk: &ed25519_dalek::SigningKey, ts: u64, body: &str) -> String {
    use base64::Engine;
    use ed25519_dalek::Signer;
    let msg = format!("{ts}|{body}");
    base64::engine::general_purpose::STANDARD.encode(sk.sign(msg.as_bytes()).to_bytes())
}

async fn put(d: &Daemon, tenant: &str, provider: &str, fields: Value) -> (u16, Value) {
    d.admin("PUT", &format!("/v1/tenants/{tenant}/credentials/{provider}"), Some(&fields.to_string())).await
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn hmac_hex(key: &[u8], parts: &[&[u8]]) -> String {
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    hex::encode(m.finalize().into_bytes())
}

fn retell_sig(key: &str, body: &str, ms: u64) -> String {
    format!("v={ms},d={}", hmac_hex(key.as_bytes(), &[body.as_bytes(), ms.to_string().as_bytes()]))
}

fn stdwh_sig(whsec: &str, id: &str, ts: u64, body: &str) -> String {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.decode(whsec.trim_start_matches("whsec_")).unwrap();
    let mac =
        hex::decode(hmac_hex(&key, &[id.as_bytes(), b".", ts.to_string().as_bytes(), b".", body.as_bytes()])).unwrap();
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac))
}

struct Env {
    d: Daemon,
    app: FakeApp,
    fake: FakeProvider,
    _tmp: tempfile::TempDir,
    pki: Pki,
}

impl Env {
    async fn deliver(&self, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, Vec<u8>) {
        let stream = tokio::net::TcpStream::connect(self.d.addr("webhooks")).await.unwrap();
        let (s, _, b) =
            http_full(hyper_util::rt::TokioIo::new(stream), "POST", path, Some(body.as_bytes().to_vec()), headers)
                .await;
        let code = serde_json::from_slice::<Value>(&b)
            .map(|v| v["error"]["code"].as_str().unwrap_or("").to_string())
            .unwrap_or_default();
        (s, code, b)
    }
}

/// A daemon with the pack's providers pointed at one fake HTTPS provider, webhooks to a
/// fake app, and tenants acme and globex.
async fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let fake = FakeProvider::start(&pki).await;
    let app = FakeApp::start(Arc::new(|_| Box::pin(async { json_response(200, r#"{"ok":"app"}"#) }))).await;
    let mut d = Daemon::new(DaemonConfig {
        app: Some(String::new()),
        extra: format!(
            "[upstream]\nextra_ca = \"{ca}\"\n\
             [providers.retell]\nbase_url = \"{u}\"\n\
             [providers.openai]\nbase_url = \"{u}/v1\"\n\
             [providers.telnyx]\nbase_url = \"{u}/v2\"\n\
             [providers.deepgram]\nbase_url = \"{u}\"\n\
             [providers.cartesia]\nbase_url = \"{u}\"\n\
             [providers.plivo]\nbase_url = \"{u}\"\n\
             [providers.vonage]\nbase_url = \"{u}\"\n\
             [webhooks]\nlisten = \"127.0.0.1:0\"\npublic_base_url = \"{BASE}\"\nforward_to = \"{app}\"\n",
            ca = pki.ca_pem.display(),
            u = fake.url,
            app = app.url
        ),
        ..DaemonConfig::default()
    });
    d.start();
    assert_eq!(put(&d, "acme", "retell", json!({"api_key": RETELL_KEY})).await.0, 200);
    assert_eq!(put(&d, "globex", "retell", json!({"api_key": RETELL_OTHER})).await.0, 200);
    let (s, v) = put(
        &d,
        "acme",
        "openai",
        json!({"api_key": OPENAI_KEY, "organization": "org-acme1", "project": "proj_voice", "webhook_secret": OPENAI_WHSEC}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, pk) = telnyx_key(1);
    let (_, pk_old) = telnyx_key(2);
    let (s, v) =
        put(&d, "acme", "telnyx", json!({"api_key": TELNYX_KEY, "public_key": pk, "public_key_previous": pk_old}))
            .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["fields"]["public_key"], pk, "a public key is echoed, not hidden");
    let (s, v) = put(&d, "acme", "deepgram", json!({"api_key": DEEPGRAM_KEY, "webhook_secret": DEEPGRAM_SECRET})).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = put(&d, "acme", "cartesia", json!({"api_key": CARTESIA_KEY, "webhook_secret": CARTESIA_SECRET})).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = put(&d, "acme", "plivo", json!({"auth_id": PLIVO_ID, "auth_token": PLIVO_TOKEN})).await;
    assert_eq!(s, 200, "{v}");
    Env { d, app, fake, _tmp: tmp, pki }
}

#[tokio::test]
async fn retell_and_openai_calls_carry_the_tenants_credentials_and_nothing_of_the_apps() {
    let e = env().await;
    let (s, _, _) =
        e.d.app(
            "POST",
            "/retell/create-phone-call",
            &[("keyward-tenant", "acme"), ("authorization", "Bearer app-guess"), ("content-type", "application/json")],
            Some(br#"{"from_number":"+14155550100"}"#.to_vec()),
        )
        .await;
    assert_eq!(s, 200);
    let r = e.fake.last();
    assert_eq!((r.method.as_str(), r.path_and_query.as_str()), ("POST", "/create-phone-call"));
    assert_eq!(r.header("authorization").unwrap(), format!("Bearer {RETELL_KEY}"));
    // globex's key for globex, never acme's.
    e.d.app("GET", "/retell/list-agents", &[("keyward-tenant", "globex")], None).await;
    assert_eq!(e.fake.last().header("authorization").unwrap(), format!("Bearer {RETELL_OTHER}"));

    let (s, _, _) = e.d.app("GET", "/openai/models", &[("keyward-tenant", "acme"), ("x-api-key", "app")], None).await;
    assert_eq!(s, 200);
    let r = e.fake.last();
    assert_eq!(r.path_and_query, "/v1/models");
    assert_eq!(r.header("authorization").unwrap(), format!("Bearer {OPENAI_KEY}"));
    assert_eq!(r.header("openai-organization").as_deref(), Some("org-acme1"));
    assert_eq!(r.header("openai-project").as_deref(), Some("proj_voice"));
    assert_eq!(r.header("x-api-key"), None, "an app-supplied credential header never reaches a provider");
    // globex has no OpenAI credential.
    let (s, h, _) = e.d.app("GET", "/openai/models", &[("keyward-tenant", "globex")], None).await;
    assert_eq!((s, h["keyward-error"].to_str().unwrap()), (404, "no_credential"));
}

#[tokio::test]
async fn a_signed_retell_delivery_is_forwarded_and_forgeries_replays_and_stale_ones_are_not() {
    let e = env().await;
    let body = r#"{"event":"call_started","call":{"call_id":"call_1","agent_id":"agent_acme","direction":"inbound","to_number":"+14155550100"}}"#;
    let ms = now() * 1000;
    let sig = retell_sig(RETELL_KEY, body, ms);
    let (s, _, b) = e.deliver("/webhooks/retell/acme", &[("x-retell-signature", &sig)], body).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let got = e.app.last();
    assert_eq!(got.body, body.as_bytes());
    assert_eq!(got.header("keyward-tenant").as_deref(), Some("acme"));
    assert_eq!(got.header("keyward-event-id").as_deref(), Some("call_1:call_started"));
    assert_eq!(got.header("x-retell-signature").as_deref(), Some(sig.as_str()), "signature headers are forwarded");
    let forwarded = e.app.count();

    // The same delivery again: a replay.
    assert_eq!(e.deliver("/webhooks/retell/acme", &[("x-retell-signature", &sig)], body).await.1, "replayed");
    // Signed with globex's key but sent to acme's path: bad_signature.
    let other = retell_sig(RETELL_OTHER, body, ms + 1);
    assert_eq!(e.deliver("/webhooks/retell/acme", &[("x-retell-signature", &other)], body).await.1, "bad_signature");
    // A tampered body, a missing header, a six-minute-old signature.
    let tampered = body.replace("call_1", "call_9");
    assert_eq!(e.deliver("/webhooks/retell/acme", &[("x-retell-signature", &sig)], &tampered).await.1, "bad_signature");
    assert_eq!(e.deliver("/webhooks/retell/acme", &[], body).await.1, "bad_signature");
    let old = retell_sig(RETELL_KEY, body, ms - 360_000);
    assert_eq!(e.deliver("/webhooks/retell/acme", &[("x-retell-signature", &old)], body).await.1, "stale_timestamp");
    assert_eq!(e.app.count(), forwarded, "nothing rejected reached the app");

    // Without a tenant in the path: the agent's route names it.
    let (s, _) = e.d.admin("PUT", "/v1/routes/retell-agent/agent_acme", Some(r#"{"tenant":"acme"}"#)).await;
    assert_eq!(s, 200);
    let fresh = retell_sig(RETELL_KEY, body, ms + 2);
    let (s, _, _) = e.deliver("/webhooks/retell", &[("x-retell-signature", &fresh)], body).await;
    assert_eq!(s, 200);
    assert_eq!(e.app.last().header("keyward-tenant").as_deref(), Some("acme"));
}

#[tokio::test]
async fn a_signed_openai_delivery_is_forwarded_and_bare_signatures_are_refused() {
    let e = env().await;
    let body = r#"{"id":"evt_1","object":"event","created_at":1750287018,"type":"realtime.call.incoming","data":{"call_id":"rtc_1"}}"#;
    let ts = now();
    let sig = stdwh_sig(OPENAI_WHSEC, "wh_1", ts, body);
    let ts_s = ts.to_string();
    let h = [("webhook-id", "wh_1"), ("webhook-timestamp", ts_s.as_str()), ("webhook-signature", sig.as_str())];
    let (s, _, b) = e.deliver("/webhooks/openai/acme", &h, body).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(b, br#"{"ok":"app"}"#, "the app's answer is relayed (realtime.call.incoming is synchronous)");
    assert_eq!(e.app.last().header("keyward-event-id").as_deref(), Some("wh_1"));
    assert_eq!(e.deliver("/webhooks/openai/acme", &h, body).await.1, "replayed");
    // The signature without its `v1,` label (openai-python would take it): refused.
    let bare = stdwh_sig(OPENAI_WHSEC, "wh_2", ts, body);
    let bare = bare.trim_start_matches("v1,");
    let h2 = [("webhook-id", "wh_2"), ("webhook-timestamp", ts_s.as_str()), ("webhook-signature", bare)];
    assert_eq!(e.deliver("/webhooks/openai/acme", &h2, body).await.1, "bad_signature");
    // globex holds no OpenAI webhook secret.
    let h3 = [("webhook-id", "wh_3"), ("webhook-timestamp", ts_s.as_str()), ("webhook-signature", sig.as_str())];
    assert_eq!(e.deliver("/webhooks/openai/globex", &h3, body).await.1, "no_credential");
}

#[tokio::test]
async fn telnyx_deepgram_and_cartesia_calls_carry_their_own_auth() {
    let e = env().await;
    let (s, _, _) =
        e.d.app("POST", "/telnyx/calls/v3:abc/actions/answer", &[("keyward-tenant", "acme")], Some(b"{}".to_vec()))
            .await;
    assert_eq!(s, 200);
    let r = e.fake.last();
    assert_eq!(r.path_and_query, "/v2/calls/v3:abc/actions/answer");
    assert_eq!(r.header("authorization").unwrap(), format!("Bearer {TELNYX_KEY}"));

    e.d.app("POST", "/deepgram/v1/listen?model=nova-3", &[("keyward-tenant", "acme")], Some(b"audio".to_vec())).await;
    let r = e.fake.last();
    assert_eq!(r.path_and_query, "/v1/listen?model=nova-3");
    assert_eq!(r.header("authorization").unwrap(), format!("Token {DEEPGRAM_KEY}"));

    e.d.app(
        "POST",
        "/cartesia/tts/bytes",
        &[("keyward-tenant", "acme"), ("x-api-key", CARTESIA_KEY)],
        Some(b"{}".to_vec()),
    )
    .await;
    let r = e.fake.last();
    assert_eq!(r.header("authorization").unwrap(), format!("Bearer {CARTESIA_KEY}"));
    assert_eq!(r.header("cartesia-version").as_deref(), Some("2026-03-01"), "keyward's default version");
    assert_eq!(r.header("x-api-key"), None);
    // The app's own version wins.
    e.d.app("GET", "/cartesia/voices", &[("keyward-tenant", "acme"), ("cartesia-version", "2025-04-16")], None).await;
    assert_eq!(e.fake.last().header("cartesia-version").as_deref(), Some("2025-04-16"));
}

#[tokio::test]
async fn telnyx_ed25519_deliveries_verify_under_either_key_and_forgeries_do_not() {
    let e = env().await;
    let body = r#"{"data":{"event_type":"call.initiated","id":"ev-telnyx-1","payload":{"connection_id":"conn-acme"}},"meta":{"attempt":1}}"#;
    let ts = now();
    let ts_s = ts.to_string();
    let (sk, _) = telnyx_key(1);
    let sig = telnyx_sig(&sk, ts, body);
    let h = [("telnyx-signature-ed25519", sig.as_str()), ("telnyx-timestamp", ts_s.as_str())];
    let (s, _, b) = e.deliver("/webhooks/telnyx/acme", &h, body).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(e.app.last().header("keyward-event-id").as_deref(), Some("ev-telnyx-1"));
    assert_eq!(e.deliver("/webhooks/telnyx/acme", &h, body).await.1, "replayed");
    // Signed with the previous key during a change: still accepted.
    let (old, _) = telnyx_key(2);
    let sig_old = telnyx_sig(&old, ts, body);
    let h_old = [("telnyx-signature-ed25519", sig_old.as_str()), ("telnyx-timestamp", ts_s.as_str())];
    assert_eq!(e.deliver("/webhooks/telnyx/acme", &h_old, body).await.0, 200);
    let forwarded = e.app.count();
    // Another account's key, a tampered body, a moved timestamp, a stale one.
    let (evil, _) = telnyx_key(3);
    let sig_evil = telnyx_sig(&evil, ts, body);
    let h_evil = [("telnyx-signature-ed25519", sig_evil.as_str()), ("telnyx-timestamp", ts_s.as_str())];
    assert_eq!(e.deliver("/webhooks/telnyx/acme", &h_evil, body).await.1, "bad_signature");
    let tampered = body.replace("conn-acme", "conn-other");
    assert_eq!(e.deliver("/webhooks/telnyx/acme", &h, &tampered).await.1, "bad_signature");
    let moved = (ts + 1).to_string();
    let h_moved = [("telnyx-signature-ed25519", sig.as_str()), ("telnyx-timestamp", moved.as_str())];
    assert_eq!(e.deliver("/webhooks/telnyx/acme", &h_moved, body).await.1, "bad_signature");
    let stale_ts = ts - 301;
    let stale_sig = telnyx_sig(&sk, stale_ts, body);
    let stale_s = stale_ts.to_string();
    let h_stale = [("telnyx-signature-ed25519", stale_sig.as_str()), ("telnyx-timestamp", stale_s.as_str())];
    assert_eq!(e.deliver("/webhooks/telnyx/acme", &h_stale, body).await.1, "stale_timestamp");
    assert_eq!(e.app.count(), forwarded);
    // Routed by connection id when the path names no tenant.
    e.d.admin("PUT", "/v1/routes/telnyx-connection/conn-acme", Some(r#"{"tenant":"acme"}"#)).await;
    let body2 = body.replace("ev-telnyx-1", "ev-telnyx-2");
    let sig2 = telnyx_sig(&sk, ts, &body2);
    let h2 = [("telnyx-signature-ed25519", sig2.as_str()), ("telnyx-timestamp", ts_s.as_str())];
    assert_eq!(e.deliver("/webhooks/telnyx", &h2, &body2).await.0, 200);
    assert_eq!(e.app.last().header("keyward-tenant").as_deref(), Some("acme"));
}

#[tokio::test]
async fn deepgram_and_cartesia_callbacks_prove_themselves_and_their_secrets_never_reach_the_app() {
    use base64::Engine;
    let e = env().await;
    let body = r#"{"metadata":{"request_id":"req-dg-1"},"results":{"channels":[]}}"#;
    let basic =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("keyward:{DEEPGRAM_SECRET}")));
    let (s, _, b) = e.deliver("/webhooks/deepgram/acme", &[("authorization", &basic)], body).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let got = e.app.last();
    assert_eq!(got.header("authorization"), None, "the callback password is dropped before forwarding");
    assert_eq!(got.header("keyward-event-id").as_deref(), Some("req-dg-1"));
    assert_eq!(e.deliver("/webhooks/deepgram/acme", &[("authorization", &basic)], body).await.1, "replayed");
    let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("keyward:guess"));
    assert_eq!(e.deliver("/webhooks/deepgram/acme", &[("authorization", &wrong)], body).await.1, "bad_signature");
    let token = format!("Token {DEEPGRAM_SECRET}");
    assert_eq!(e.deliver("/webhooks/deepgram/acme", &[("authorization", &token)], body).await.1, "bad_signature");

    let event = r#"{"type":"call_completed","data":{}}"#;
    let (s, _, _) = e.deliver("/webhooks/cartesia/acme", &[("x-webhook-secret", CARTESIA_SECRET)], event).await;
    assert_eq!(s, 200);
    assert_eq!(e.app.last().header("x-webhook-secret"), None);
    let prefix = &CARTESIA_SECRET[..CARTESIA_SECRET.len() - 1];
    assert_eq!(e.deliver("/webhooks/cartesia/acme", &[("x-webhook-secret", prefix)], event).await.1, "bad_signature");
    assert_eq!(e.deliver("/webhooks/cartesia/acme", &[], event).await.1, "bad_signature");
    // No canary secret of any provider in anything the app received.
    for r in e.app.all() {
        let seen = format!("{:?} {}", r.headers, String::from_utf8_lossy(&r.body));
        for canary in [DEEPGRAM_SECRET, CARTESIA_SECRET, DEEPGRAM_KEY, CARTESIA_KEY, TELNYX_KEY, RETELL_KEY, OPENAI_KEY]
        {
            assert!(!seen.contains(canary), "{canary} reached the app");
        }
    }
}

#[tokio::test]
async fn credential_fields_are_checked_with_the_field_named() {
    let e = env().await;
    for (provider, fields, field) in [
        ("openai", json!({"api_key": "sk-1", "organization": "acme"}), "organization"),
        ("openai", json!({"api_key": "sk-1", "webhook_secret": "b3BlbmFp"}), "webhook_secret"),
        ("openai", json!({"api_key": "sk-1", "region": "ap"}), "region"),
        ("retell", json!({"webhook_secret": "x"}), "api_key"),
        ("retell", json!({"api_key": "k", "agent": "a"}), "agent"),
        ("telnyx", json!({"api_key": "k", "public_key": "c2hvcnQ="}), "public_key"),
        ("deepgram", json!({"api_key": "k", "webhook_secret": "short"}), "webhook_secret"),
        ("deepgram", json!({"api_key": "k", "region": "ap"}), "region"),
        ("cartesia", json!({"api_key": "sk_car_admin_x"}), "api_key"),
        ("cartesia", json!({"api_key": "k", "version": "2026-3-1"}), "version"),
    ] {
        let (s, v) = put(&e.d, "initech", provider, fields).await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["code"], "invalid_credential", "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(field), "{v}");
    }
}

fn python() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv/bin/python");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: the provider SDKs are missing; run scripts/ci-deps (the README's test command does)");
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_retell_openai_and_telnyx_sdks_work_through_keyward_by_base_url() {
    let Some(python) = python() else { return };
    let e = env().await;
    let (cert, key) = e.pki.client_cert("app", "spiffe://example/app");
    let mut d = Daemon::new(DaemonConfig {
        app: Some(format!(
            "tcp = \"127.0.0.1:0\"\n[app.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
            e.pki.server_cert.display(),
            e.pki.server_key.display(),
            e.pki.ca_pem.display()
        )),
        extra: format!(
            "[upstream]\nextra_ca = \"{}\"\n[providers.retell]\nbase_url = \"{u}\"\n[providers.openai]\nbase_url = \"{u}/v1\"\n[providers.telnyx]\nbase_url = \"{u}/v2\"\n",
            e.pki.ca_pem.display(),
            u = e.fake.url
        ),
        ..DaemonConfig::default()
    });
    d.start();
    put(&d, "acme", "retell", json!({"api_key": RETELL_KEY})).await;
    put(&d, "acme", "openai", json!({"api_key": OPENAI_KEY, "project": "proj_voice"})).await;
    put(&d, "acme", "telnyx", json!({"api_key": TELNYX_KEY})).await;
    let port = d.addr("app-tls").rsplit(':').next().unwrap().to_string();
    let script = format!(
        r#"
import httpx, openai, retell, ssl, telnyx
tls = ssl.create_default_context(cafile="{ca}")
tls.load_cert_chain("{cert}", "{key}")
http = httpx.Client(verify=tls, headers={{"keyward-tenant": "acme"}})
o = openai.OpenAI(api_key="not-the-key", base_url="https://localhost:{port}/openai", http_client=http, max_retries=0)
o.models.with_raw_response.list()
r = retell.Retell(api_key="not-the-key", base_url="https://localhost:{port}/retell", http_client=http, max_retries=0)
r.agent.with_raw_response.list()
t = telnyx.Telnyx(api_key="not-the-key", base_url="https://localhost:{port}/telnyx", http_client=http, max_retries=0)
t.balance.with_raw_response.retrieve()
print("ok")
"#,
        cert = cert.display(),
        key = key.display(),
        ca = e.pki.ca_pem.display()
    );
    let out = std::process::Command::new(&python).args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let all = e.fake.all();
    let models = all.iter().find(|r| r.path_and_query == "/v1/models").expect("the OpenAI SDK's call arrived");
    assert_eq!(models.header("authorization").unwrap(), format!("Bearer {OPENAI_KEY}"));
    assert_eq!(models.header("openai-project").as_deref(), Some("proj_voice"));
    let info = all.iter().find(|r| r.path_and_query.starts_with("/v2/list-agents")).unwrap_or_else(|| {
        panic!("the Retell SDK's call arrived: {:?}", all.iter().map(|r| &r.path_and_query).collect::<Vec<_>>())
    });
    assert_eq!(info.header("authorization").unwrap(), format!("Bearer {RETELL_KEY}"));
    let balance = all.iter().find(|r| r.path_and_query == "/v2/balance").expect("the Telnyx SDK's call arrived");
    assert_eq!(balance.header("authorization").unwrap(), format!("Bearer {TELNYX_KEY}"));
}

/// The SDKs whose base URL (or host) can be moved: each sends its call through keyward's
/// mTLS listener with a placeholder credential and the provider sees the tenant's.
/// Answers are the fake's, which the SDKs may fail to parse: what counts is the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_plivo_vonage_deepgram_and_cartesia_sdks_work_through_keyward_by_base_url() {
    let Some(python) = python() else { return };
    let e = env().await;
    let (cert, key) = e.pki.client_cert("app", "spiffe://example/app");
    let mut d = Daemon::new(DaemonConfig {
        app: Some(format!(
            "tcp = \"127.0.0.1:0\"\n[app.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
            e.pki.server_cert.display(),
            e.pki.server_key.display(),
            e.pki.ca_pem.display()
        )),
        extra: format!(
            "[upstream]\nextra_ca = \"{}\"\n[providers.plivo]\nbase_url = \"{u}\"\n[providers.vonage]\nbase_url = \"{u}\"\n\
             [providers.deepgram]\nbase_url = \"{u}\"\n[providers.cartesia]\nbase_url = \"{u}\"\n",
            e.pki.ca_pem.display(),
            u = e.fake.url
        ),
        ..DaemonConfig::default()
    });
    d.start();
    put(&d, "acme", "plivo", json!({"auth_id": PLIVO_ID, "auth_token": PLIVO_TOKEN})).await;
    put(&d, "acme", "vonage", json!({"api_key": "abc123", "api_secret": "CANARYvonageSdkSecret0016"})).await;
    put(&d, "acme", "deepgram", json!({"api_key": DEEPGRAM_KEY})).await;
    put(&d, "acme", "cartesia", json!({"api_key": CARTESIA_KEY})).await;
    let port = d.addr("app-tls").rsplit(':').next().unwrap().to_string();
    let script = format!(
        r#"
import httpx, ssl, sys
import plivo, cartesia
from deepgram import DeepgramClient
from deepgram.environment import DeepgramClientEnvironment
from vonage import Vonage, Auth, HttpClientOptions
tls = ssl.create_default_context(cafile="{ca}")
tls.load_cert_chain("{cert}", "{key}")
http = httpx.Client(verify=tls, headers={{"keyward-tenant": "acme"}})
base = "https://localhost:{port}"
def attempt(name, call):
    try:
        call()
    except Exception as e:  # the fake's answer is not the provider's: parsing may fail
        print(name, type(e).__name__, repr(e)[:400], file=sys.stderr)
import plivo.rest.client
plivo.rest.client.PLIVO_API_BASE_URI = base + "/plivo/v1/Account"  # the SDK resets base_uri to it per call
p = plivo.RestClient("{plivo_id}", "not-the-token")
p.session.cert = ("{cert}", "{key}")
p.session.verify = "{ca}"
p.session.headers["keyward-tenant"] = "acme"
attempt("plivo", lambda: p.account.get())
v = Vonage(Auth(api_key="abc123", api_secret="not-the-secret"),
           HttpClientOptions(api_host="localhost:{port}/vonage", rest_host="localhost:{port}/vonage"))
v.http_client._session.cert = ("{cert}", "{key}")
v.http_client._session.verify = "{ca}"
v.http_client._session.trust_env = False  # else REQUESTS_CA_BUNDLE would replace the CA
v.http_client._headers["keyward-tenant"] = "acme"
attempt("vonage", lambda: v.account.get_balance())
env = DeepgramClientEnvironment(base=base + "/deepgram", production="wss://localhost:{port}/deepgram",
                                agent="wss://localhost:{port}/deepgram", agent_rest=base + "/deepgram")
dg = DeepgramClient(api_key="not-the-key", environment=env, httpx_client=http, max_retries=0)
attempt("deepgram", lambda: dg.manage.v1.projects.list())
c = cartesia.Cartesia(api_key="not-the-key", base_url=base + "/cartesia", http_client=http, max_retries=0)
attempt("cartesia", lambda: c.voices.list())
print("ok")
"#,
        cert = cert.display(),
        key = key.display(),
        ca = e.pki.ca_pem.display(),
        plivo_id = PLIVO_ID
    );
    let out = std::process::Command::new(&python).args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{}\n{stderr}", String::from_utf8_lossy(&out.stdout));
    let all = e.fake.all();
    let arrived = |pred: &dyn Fn(&str) -> bool, who: &str| {
        all.iter().find(|r| pred(&r.path_and_query)).cloned().unwrap_or_else(|| {
            panic!(
                "the {who} SDK's call did not arrive ({stderr}): {:?}",
                all.iter().map(|r| &r.path_and_query).collect::<Vec<_>>()
            )
        })
    };
    use base64::Engine;
    let basic =
        |u: &str, p: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
    let plivo = arrived(&|p| p.starts_with(&format!("/v1/Account/{PLIVO_ID}")), "Plivo");
    assert_eq!(plivo.header("authorization").unwrap(), basic(PLIVO_ID, PLIVO_TOKEN));
    let vonage = arrived(&|p| p.starts_with("/account/get-balance"), "Vonage");
    assert_eq!(vonage.header("authorization").unwrap(), basic("abc123", "CANARYvonageSdkSecret0016"));
    let dg = arrived(&|p| p.starts_with("/v1/projects"), "Deepgram");
    assert_eq!(dg.header("authorization").unwrap(), format!("Token {DEEPGRAM_KEY}"));
    let car = arrived(&|p| p.starts_with("/voices"), "Cartesia");
    assert_eq!(car.header("authorization").unwrap(), format!("Bearer {CARTESIA_KEY}"));
    assert!(car.header("cartesia-version").is_some(), "the SDK's own version passes");
}

#[tokio::test]
async fn across_the_pack_a_tenant_never_gets_another_tenants_credential() {
    let e = env().await;
    let globex = [
        ("telnyx", json!({"api_key": "KEYglobexTelnyx0000000000000009"}), "Bearer KEYglobexTelnyx0000000000000009"),
        ("deepgram", json!({"api_key": "globexDeepgram000000000000000010"}), "Token globexDeepgram000000000000000010"),
        ("cartesia", json!({"api_key": "sk_car_globex0000000000000000011"}), "Bearer sk_car_globex0000000000000000011"),
        ("openai", json!({"api_key": "sk-globex-openai-000000000000012"}), "Bearer sk-globex-openai-000000000000012"),
    ];
    for (p, f, _) in &globex {
        assert_eq!(put(&e.d, "globex", p, f.clone()).await.0, 200);
    }
    let acme = |p: &str| match p {
        "retell" => format!("Bearer {RETELL_KEY}"),
        "telnyx" => format!("Bearer {TELNYX_KEY}"),
        "deepgram" => format!("Token {DEEPGRAM_KEY}"),
        "cartesia" => format!("Bearer {CARTESIA_KEY}"),
        _ => format!("Bearer {OPENAI_KEY}"),
    };
    let globex_auth = |p: &str| {
        if p == "retell" {
            format!("Bearer {RETELL_OTHER}")
        } else {
            globex.iter().find(|(n, _, _)| *n == p).map(|(_, _, a)| a.to_string()).unwrap()
        }
    };
    let providers = ["retell", "telnyx", "deepgram", "cartesia", "openai"];
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..60 {
        let p = providers[(next() % 5) as usize];
        let tenant = if next() % 2 == 0 { "acme" } else { "globex" };
        let other = if tenant == "acme" { "globex" } else { "acme" };
        let path = format!("/x/{}/{i}", next() % 1000);
        let (uri, mut headers): (String, Vec<(&str, String)>) = if next() % 2 == 0 {
            (format!("/{p}{path}"), vec![("keyward-tenant", tenant.to_string())])
        } else {
            (format!("/t/{tenant}/{p}{path}"), vec![])
        };
        // Hostile extras: the other tenant's name and credential in the app's headers.
        headers.push(("x-tenant", other.to_string()));
        let stolen = if other == "acme" { acme(p) } else { globex_auth(p) };
        headers.push(("authorization", stolen.clone()));
        headers.push(("x-api-key", stolen));
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, _, _) = e.d.app("GET", &uri, &h, None).await;
        assert_eq!(s, 200, "request {i}: {p} for {tenant}");
        let r = e.fake.last();
        let want = if tenant == "acme" { acme(p) } else { globex_auth(p) };
        assert_eq!(r.header("authorization").unwrap(), want, "request {i}: {p} for {tenant}");
        assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
        assert_eq!(r.header("x-api-key"), None);
    }
}

#[test]
fn offline_verification_takes_the_whole_credential_for_multi_field_schemes() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = telnyx_key(5);
    let (_, other) = telnyx_key(6);
    let body = r#"{"data":{"event_type":"message.received","id":"ev-9","payload":{}}}"#;
    let ts = 1_767_225_600u64;
    let sig = telnyx_sig(&sk, ts, body);
    std::fs::write(dir.path().join("body"), body).unwrap();
    let run = |cred: Value, now: u64| {
        let f = dir.path().join("cred.json");
        std::fs::write(&f, cred.to_string()).unwrap();
        let out = std::process::Command::new(BIN)
            .args(["webhook", "verify", "--provider", "telnyx", "--credential-file"])
            .arg(&f)
            .args(["--url", "https://hooks.example.com/webhooks/telnyx/acme", "--body-file"])
            .arg(dir.path().join("body"))
            .args(["--header", &format!("telnyx-signature-ed25519: {sig}")])
            .args(["--header", &format!("telnyx-timestamp: {ts}")])
            .args(["--now", &now.to_string()])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // The current key, or the previous one during a change.
    assert_eq!(run(json!({"api_key": "k", "public_key": pk}), ts), (Some(0), "valid".to_string()));
    assert_eq!(run(json!({"api_key": "k", "public_key": other, "public_key_previous": pk}), ts).1, "valid");
    let (code, line) = run(json!({"api_key": "k", "public_key": other}), ts);
    assert_eq!(code, Some(1));
    assert!(line.starts_with("invalid: bad_signature:"), "{line}");
    assert!(run(json!({"api_key": "k", "public_key": pk}), ts + 301).1.starts_with("invalid: stale_timestamp:"));
    // A credential without the key the scheme needs, or with a malformed field, says so.
    assert!(run(json!({"api_key": "k"}), ts).1.starts_with("invalid: no_credential:"));
    let bad = run(json!({"api_key": "k", "public_key": "c2hvcnQ="}), ts).1;
    assert!(bad.starts_with("invalid: invalid_credential:") && bad.contains("public_key"), "{bad}");
}

#[tokio::test]
async fn a_deepgram_callback_url_is_replaced_by_keywards_own_and_the_callback_then_verifies() {
    use base64::Engine;
    let e = env().await;
    let q = "model=nova-3&callback=https%3A%2F%2Fapp.example%2Fcb%3Fx%3D1&callback_method=POST&keywords=a%20b";
    let (s, _, _) =
        e.d.app("POST", &format!("/deepgram/v1/listen?{q}"), &[("keyward-tenant", "acme")], Some(b"audio".to_vec()))
            .await;
    assert_eq!(s, 200);
    let sent = e.fake.last().path_and_query;
    let (path, query) = sent.split_once('?').unwrap();
    assert_eq!(path, "/v1/listen");
    let segs: Vec<&str> = query.split('&').collect();
    assert_eq!(
        (segs[0], segs[2], segs[3]),
        ("model=nova-3", "callback_method=POST", "keywords=a%20b"),
        "other parameters keep their bytes"
    );
    let callback: String =
        url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "callback").unwrap().1.into_owned();
    assert_eq!(callback, format!("https://keyward:{DEEPGRAM_SECRET}@hooks.test/webhooks/deepgram/acme"));
    assert!(!sent.contains("app.example"), "the app's own URL is not passed on");

    // Deepgram calls the URL it was given: the userinfo becomes Basic credentials.
    let u = url::Url::parse(&callback).unwrap();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", u.username(), u.password().unwrap()))
    );
    let body = r#"{"metadata":{"request_id":"req-cb-1"},"results":{}}"#;
    let (s, _, _) = e.deliver(u.path(), &[("authorization", &basic)], body).await;
    assert_eq!(s, 200);
    assert_eq!(e.app.last().header("keyward-event-id").as_deref(), Some("req-cb-1"));

    // The same URL from the admin API and the CLI, for a callback configured out of band;
    // the disclosure is audited. Providers without one get their plain webhook URL.
    let (s, v) = e.d.admin("POST", "/v1/tenants/acme/credentials/deepgram/callback-url", None).await;
    assert_eq!(
        (s, v["callback_url"].as_str(), v["embeds_credentials"].as_bool()),
        (200, Some(callback.as_str()), Some(true))
    );
    let out = e.d.cli(&["cred", "callback-url", "acme", "deepgram"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), callback);
    let (_, audit) = e.d.admin("GET", "/v1/audit?limit=200", None).await;
    let disclosed =
        audit["entries"].as_array().unwrap().iter().filter(|x| x["action"] == "credential.callback_url").count();
    assert_eq!(disclosed, 2);
    let (s, v) = e.d.admin("POST", "/v1/tenants/acme/credentials/telnyx/callback-url", None).await;
    assert_eq!((s, v["callback_url"].as_str()), (200, Some("https://hooks.test/webhooks/telnyx/acme")), "{v}");

    // A tenant without a webhook_secret cannot use callbacks: told what to add.
    put(&e.d, "globex", "deepgram", json!({"api_key": "globexDeepgram000000000000000010"})).await;
    let (s, v) = e.d.admin("POST", "/v1/tenants/globex/credentials/deepgram/callback-url", None).await;
    assert!(s == 400 && v["error"]["message"].as_str().unwrap().contains("webhook_secret"), "{v}");
    let (s, h, b) =
        e.d.app("POST", &format!("/deepgram/v1/listen?{q}"), &[("keyward-tenant", "globex")], Some(b"a".to_vec()))
            .await;
    assert_eq!((s, h["keyward-error"].to_str().unwrap()), (400, "bad_request"));
    assert!(String::from_utf8_lossy(&b).contains("webhook_secret"));
}

fn plivo_mac(signed: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .encode(hex::decode(hmac_hex(PLIVO_TOKEN.as_bytes(), &[signed.as_bytes()])).unwrap())
}

fn plivo_headers<'a>(mac: &'a str, nonce: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("content-type", "application/x-www-form-urlencoded"),
        ("x-plivo-signature-v3", mac),
        ("x-plivo-signature-v3-nonce", nonce),
    ]
}

#[tokio::test]
async fn plivo_calls_fill_in_the_account_and_v3_signed_callbacks_verify() {
    use base64::Engine;
    let e = env().await;
    let (s, _, _) =
        e.d.app("POST", "/plivo/v1/Account/_/Call/", &[("keyward-tenant", "acme")], Some(b"{}".to_vec())).await;
    assert_eq!(s, 200);
    let r = e.fake.last();
    assert_eq!(r.path_and_query, format!("/v1/Account/{PLIVO_ID}/Call/"));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{PLIVO_ID}:{PLIVO_TOKEN}"));
    assert_eq!(r.header("authorization").unwrap(), format!("Basic {basic}"));
    let (s, h, _) =
        e.d.app("GET", "/plivo/v1/Account/MAFFFFFFFFFFFFFFFFFF/Call/", &[("keyward-tenant", "acme")], None).await;
    assert_eq!((s, h["keyward-error"].to_str().unwrap()), (403, "account_mismatch"));

    // What Plivo signs for this POST (PROVIDERS-2.md §4.2), written out by hand: the URL
    // without its query, "?" + the sorted decoded query, ".", the sorted form pairs joined.
    let body = "To=%2B18005550199&From=%2B14155550100&Direction=inbound&CallUUID=u-42&Event=StartApp";
    let nonce = "93828483774382";
    let signed = format!(
        "{BASE}/webhooks/plivo/acme?a=1&b=x y.CallUUIDu-42DirectioninboundEventStartAppFrom+14155550100To+18005550199.{nonce}"
    );
    let mac = plivo_mac(&signed);
    let h = plivo_headers(&mac, nonce);
    let (s, _, b) = e.deliver("/webhooks/plivo/acme?b=x+y&a=1", &h, body).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(e.app.last().header("keyward-event-id").as_deref(), Some("u-42:StartApp"));
    assert_eq!(e.deliver("/webhooks/plivo/acme?b=x+y&a=1", &h, body).await.1, "replayed");
    let tampered = body.replace("StartApp", "Hangup");
    assert_eq!(e.deliver("/webhooks/plivo/acme?b=x+y&a=1", &h, &tampered).await.1, "bad_signature");
    assert_eq!(e.deliver("/webhooks/plivo/acme?b=x+y&a=2", &h, body).await.1, "bad_signature");
    // Routed by the called number when the path names no tenant.
    e.d.admin("PUT", "/v1/routes/plivo-number/%2B18005550199", Some(r#"{"tenant":"acme"}"#)).await;
    let signed = format!(
        "{BASE}/webhooks/plivo?CallUUIDu-43DirectioninboundEventStartAppFrom+14155550100To+18005550199.{nonce}"
    );
    let mac = plivo_mac(&signed);
    let h = plivo_headers(&mac, nonce);
    let (s, _, b) = e.deliver("/webhooks/plivo", &h, &body.replace("u-42", "u-43")).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(e.app.last().header("keyward-tenant").as_deref(), Some("acme"));
}

const VONAGE_SIG: &str = "CANARYvonageSignatureSecret000000014";

fn b64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn unb64url(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()
}

#[tokio::test]
async fn vonage_mints_an_rs256_jwt_reused_briefly_and_verifies_signed_callbacks() {
    let e = env().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("app.key");
    let made = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&key)
        .output();
    let Ok(made) = made else {
        eprintln!("SKIPPED: openssl is missing (apt-get install openssl); it makes the Vonage application key");
        return;
    };
    assert!(made.status.success());
    let pem = std::fs::read_to_string(&key).unwrap().trim().to_string();
    let public = dir.path().join("pub.pem");
    let p = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .output();
    assert!(p.unwrap().status.success());
    let app_id = "0f9ab8c2-7e1d-4c3b-9a5f-1234567890ab";
    let (s, v) = put(
        &e.d,
        "acme",
        "vonage",
        json!({"api_key": "abc123", "api_secret": "CANARYvonageApiSecret015", "application_id": app_id,
               "private_key": pem, "signature_secret": VONAGE_SIG}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let mut jtis = Vec::new();
    for _ in 0..2 {
        let (s, _, _) = e.d.app("POST", "/vonage/v1/calls", &[("keyward-tenant", "acme")], Some(b"{}".to_vec())).await;
        assert_eq!(s, 200);
        let auth = e.fake.last().header("authorization").unwrap();
        let jwt = auth.strip_prefix("Bearer ").unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        let header: Value = serde_json::from_slice(&unb64url(parts[0])).unwrap();
        assert_eq!(header, json!({"alg": "RS256", "typ": "JWT"}), "no kid");
        let claims: Value = serde_json::from_slice(&unb64url(parts[1])).unwrap();
        let iat = claims["iat"].as_u64().unwrap();
        assert!(iat.abs_diff(now()) <= 5);
        assert_eq!(claims["exp"].as_u64(), Some(iat + 900));
        assert_eq!(claims["application_id"], app_id);
        assert_eq!(claims.as_object().unwrap().len(), 4, "{claims}");
        jtis.push(claims["jti"].as_str().unwrap().to_string());
        // The signature verifies under the application's public key (openssl as the judge).
        let input = dir.path().join("input");
        std::fs::write(&input, format!("{}.{}", parts[0], parts[1])).unwrap();
        let sig = dir.path().join("sig");
        std::fs::write(&sig, unb64url(parts[2])).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&public)
            .arg("-signature")
            .arg(&sig)
            .arg(&input)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }
    assert_eq!(jtis[0], jtis[1], "a minted token is reused for a short part of its lifetime");
    // A new key (or application) mints at once.
    let key2 = dir.path().join("app2.key");
    let made = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&key2)
        .output()
        .unwrap();
    assert!(made.status.success());
    let pem2 = std::fs::read_to_string(&key2).unwrap();
    let fields = json!({"api_key": "abc123", "api_secret": "CANARYvonageApiSecret015", "application_id": app_id,
           "private_key": pem2, "signature_secret": VONAGE_SIG});
    assert_eq!(put(&e.d, "acme", "vonage", fields).await.0, 200);
    e.d.app("POST", "/vonage/v1/calls", &[("keyward-tenant", "acme")], Some(b"{}".to_vec())).await;
    let auth = e.fake.last().header("authorization").unwrap();
    let claims: Value = serde_json::from_slice(&unb64url(auth.split('.').nth(1).unwrap())).unwrap();
    assert_ne!(claims["jti"].as_str().unwrap(), jtis[0], "the new key's own token");
    // Account APIs take Basic.
    e.d.app("GET", "/vonage/account/get-balance", &[("keyward-tenant", "acme")], None).await;
    assert!(e.fake.last().header("authorization").unwrap().starts_with("Basic "));

    // A signed callback: HS256 over the claims that bind the body.
    let body = r#"{"to":"447700900000","from":"447700900001","status":"answered","uuid":"u-1"}"#;
    let hs256 = |claims: Value| {
        let p1 = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
        let p2 = b64url(claims.to_string().as_bytes());
        let mac = hex::decode(hmac_hex(VONAGE_SIG.as_bytes(), &[format!("{p1}.{p2}").as_bytes()])).unwrap();
        format!("Bearer {p1}.{p2}.{}", b64url(&mac))
    };
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    };
    let good = hs256(
        json!({"iat": now(), "jti": "jti-1", "iss": "Vonage", "payload_hash": hash, "api_key": "abc123", "application_id": app_id}),
    );
    let (s, _, b) = e.deliver("/webhooks/vonage/acme", &[("authorization", &good)], body).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(e.app.last().header("authorization"), None, "the JWT is not forwarded");
    assert_eq!(e.app.last().header("keyward-event-id").as_deref(), Some("jti-1"));
    assert_eq!(e.deliver("/webhooks/vonage/acme", &[("authorization", &good)], body).await.1, "replayed");
    let other_account = hs256(json!({"iat": now(), "jti": "jti-2", "payload_hash": hash, "api_key": "zzz999"}));
    assert_eq!(
        e.deliver("/webhooks/vonage/acme", &[("authorization", &other_account)], body).await.1,
        "unresolved_tenant"
    );
    let tampered = body.replace("answered", "completed");
    let t = hs256(json!({"iat": now(), "jti": "jti-3", "payload_hash": hash, "api_key": "abc123"}));
    assert_eq!(e.deliver("/webhooks/vonage/acme", &[("authorization", &t)], &tampered).await.1, "bad_signature");
    let old = hs256(json!({"iat": now() - 400, "jti": "jti-4", "payload_hash": hash, "api_key": "abc123"}));
    assert_eq!(e.deliver("/webhooks/vonage/acme", &[("authorization", &old)], body).await.1, "stale_timestamp");
}
