//! End-to-end: apps call fake HTTPS providers through keyward's app listener with no
//! credential; each provider receives exactly the header it expects, for the right tenant.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, clippy::result_large_err)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::fake::*;
use common::*;
use serde_json::{json, Value};

const SID_A: &str = "AC0123456789abcdef0123456789abcdef";
const SID_G: &str = "ACfedcba9876543210fedcba9876543210";
const VAPI_A: &str = "CANARYvapiAcme000000000000000001";
const VAPI_G: &str = "CANARYvapiGlobex00000000000000002";
const TW_A: &str = "CANARYtwilioAcme0000000000000003";
const TW_G: &str = "CANARYtwilioGlobex00000000000004";
const RS_A: &str = "re_CANARYresendAcme00000000000005";
const EL_A: &str = "sk_CANARYelevenAcme0000000000006";
const ACME_KEY: &str = "CANARYacmeGeneric000000000000007";

struct Env {
    _tmp: tempfile::TempDir,
    _pki: Pki,
    d: Daemon,
    vapi: FakeProvider,
    twilio: FakeProvider,
    resend: FakeProvider,
    eleven: FakeProvider,
    acme: FakeProvider,
}

fn providers_toml(env: &[(&str, &str)]) -> String {
    env.iter().map(|(p, u)| format!("[providers.{p}]\nbase_url = \"{u}\"\n")).collect()
}

async fn put(d: &Daemon, tenant: &str, provider: &str, fields: Value) {
    let (s, v) =
        d.admin("PUT", &format!("/v1/tenants/{tenant}/credentials/{provider}"), Some(&fields.to_string())).await;
    assert_eq!(s, 200, "{v}");
}

/// A daemon with every built-in (but Google) and one generic provider pointed at fakes.
/// How a test's daemon runs: in the test's process (faster: no spawn, no log polling), or as
/// the real binary when the test reads the daemon's log.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    InProcess,
    Binary,
}

async fn env_with(app_extra: &str, extra: &str, twilio_handler: Option<Handler>) -> Env {
    env_run(app_extra, extra, twilio_handler, Run::InProcess).await
}

async fn env_run(app_extra: &str, extra: &str, twilio_handler: Option<Handler>, run: Run) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    env_in(tmp, pki, app_extra, extra, twilio_handler, run).await
}

async fn env_in(
    tmp: tempfile::TempDir,
    pki: Pki,
    app_extra: &str,
    extra: &str,
    twilio_handler: Option<Handler>,
    run: Run,
) -> Env {
    let vapi = FakeProvider::start(&pki).await;
    let twilio = match twilio_handler {
        Some(h) => FakeProvider::with_handler(&pki, h).await,
        None => FakeProvider::start(&pki).await,
    };
    let resend = FakeProvider::start(&pki).await;
    let eleven = FakeProvider::start(&pki).await;
    let acme = FakeProvider::start(&pki).await;
    let providers = providers_toml(&[
        ("vapi", &vapi.url),
        ("twilio", &twilio.url),
        ("resend", &resend.url),
        ("elevenlabs", &eleven.url),
    ]);
    let generic = format!(
        "[providers.acme]\nbase_url = \"{}/v2\"\nfields = [\"api_key\", \"account\"]\npublic_fields = [\"account\"]\ninject = {{ header = \"X-Acme-Key\", value = \"Token {{api_key}}\" }}\n",
        acme.url
    );
    let mut d = Daemon::new(DaemonConfig {
        app: Some(app_extra.to_string()),
        extra: format!("[upstream]\nextra_ca = \"{}\"\nrequest_timeout = \"3s\"\nconnect_timeout = \"2s\"\n{providers}{generic}{extra}", pki.ca_pem.display()),
        ..DaemonConfig::default()
    });
    match run {
        Run::InProcess => d.start_in_process().await,
        Run::Binary => d.start(),
    };
    put(&d, "acme", "vapi", json!({"api_key": VAPI_A})).await;
    put(&d, "globex", "vapi", json!({"api_key": VAPI_G})).await;
    put(&d, "acme", "twilio", json!({"account_sid": SID_A, "auth_token": TW_A})).await;
    put(&d, "globex", "twilio", json!({"account_sid": SID_G, "auth_token": TW_G})).await;
    put(&d, "acme", "resend", json!({"api_key": RS_A})).await;
    put(&d, "acme", "elevenlabs", json!({"api_key": EL_A})).await;
    put(&d, "acme", "acme", json!({"api_key": ACME_KEY, "account": "acct-1"})).await;
    Env { _tmp: tmp, _pki: pki, d, vapi, twilio, resend, eleven, acme }
}

async fn env() -> Env {
    env_with("", "", None).await
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

#[tokio::test]
async fn each_provider_receives_exactly_the_header_it_expects() {
    let e = env().await;
    let hdr = [
        ("keyward-tenant", "acme"),
        ("authorization", "Bearer app-should-not-send-this"),
        ("xi-api-key", "nope"),
        ("keyward-debug", "x"),
    ];

    // A header the app's `Connection` names is for keyward's hop only (any case).
    let mut with_hop = hdr.to_vec();
    with_hop.extend([("connection", "keep-alive, X-Hop-Only"), ("x-hop-only", "1"), ("x-end-to-end", "1")]);
    let (s, _, body) = e.d.app("GET", "/vapi/assistant?limit=1", &with_hop, None).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let r = e.vapi.last();
    assert!(r.header("x-hop-only").is_none() && r.header("connection").is_none(), "a hop-by-hop header went on");
    assert_eq!(r.header("x-end-to-end").unwrap(), "1");
    assert_eq!(r.header("authorization").unwrap(), format!("Bearer {VAPI_A}"));
    assert_eq!(r.path_and_query, "/assistant?limit=1");
    assert!(
        r.header("xi-api-key").is_none() && r.header("keyward-tenant").is_none() && r.header("keyward-debug").is_none()
    );

    e.d.app("POST", "/twilio/2010-04-01/Accounts/_/Messages.json", &hdr, Some(b"To=%2B1555&Body=hi".to_vec())).await;
    let r = e.twilio.last();
    assert_eq!(r.header("authorization").unwrap(), basic(SID_A, TW_A));
    assert_eq!(r.path_and_query, format!("/2010-04-01/Accounts/{SID_A}/Messages.json"));
    assert_eq!(r.body, b"To=%2B1555&Body=hi");

    e.d.app("POST", "/resend/emails", &hdr, Some(b"{}".to_vec())).await;
    assert_eq!(e.resend.last().header("authorization").unwrap(), format!("Bearer {RS_A}"));

    e.d.app("GET", "/elevenlabs/v1/models", &hdr, None).await;
    let r = e.eleven.last();
    assert_eq!(r.header("xi-api-key").unwrap(), EL_A);
    assert!(r.header("authorization").is_none(), "the app's Authorization is removed");

    e.d.app("GET", "/acme/things?x=1", &hdr, None).await;
    let r = e.acme.last();
    assert_eq!(r.header("x-acme-key").unwrap(), format!("Token {ACME_KEY}"));
    assert_eq!(r.path_and_query, "/v2/things?x=1", "the base URL's path prefix is kept");
    assert!(r.header("authorization").is_none());
}

#[tokio::test]
async fn twilio_prefers_an_api_key_and_refuses_another_account() {
    let e = env().await;
    put(&e.d, "initech", "twilio", json!({"account_sid": SID_A, "api_key_sid": "SK0123456789abcdef0123456789abcdef", "api_key_secret": "CANARYkeySecret0000000000000008", "auth_token": TW_A})).await;
    e.d.app("GET", "/t/initech/twilio/2010-04-01/Accounts/_.json", &[], None).await;
    let r = e.twilio.last();
    assert_eq!(
        r.header("authorization").unwrap(),
        basic("SK0123456789abcdef0123456789abcdef", "CANARYkeySecret0000000000000008")
    );
    assert_eq!(r.path_and_query, format!("/2010-04-01/Accounts/{SID_A}.json"));

    let before = e.twilio.count();
    let (s, h, body) =
        e.d.app("GET", &format!("/twilio/2010-04-01/Accounts/{SID_G}/Calls.json"), &[("keyward-tenant", "acme")], None)
            .await;
    assert_eq!(s, 403);
    assert_eq!(h["keyward-error"], "account_mismatch");
    assert_eq!(canary_hits(&body, &[TW_A, TW_G]), 0);
    assert_eq!(e.twilio.count(), before, "nothing reached Twilio");
    let (s, _, _) =
        e.d.app("GET", &format!("/twilio/2010-04-01/Accounts/{SID_A}/Calls.json"), &[("keyward-tenant", "acme")], None)
            .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn the_three_request_forms_reach_the_same_upstream() {
    let e = env().await;
    e.d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    e.d.app("GET", "/t/acme/vapi/assistant", &[], None).await;
    // Absolute form, as an HTTP_PROXY: the override's host and port identify the provider.
    let abs = format!("http://127.0.0.1:{}/assistant", e.vapi.addr.port());
    let (s, _, body) = e
        .d
        .app("GET", &abs, &[("keyward-tenant", "acme"), ("host", &format!("127.0.0.1:{}", e.vapi.addr.port()))], None)
        .await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let all = e.vapi.all();
    assert_eq!(all.len(), 3);
    for r in all {
        assert_eq!(r.path_and_query, "/assistant");
        assert_eq!(r.header("authorization").unwrap(), format!("Bearer {VAPI_A}"));
    }
}

#[tokio::test]
async fn a_tenant_never_gets_another_tenants_credential() {
    let e = env().await;
    // A deterministic pseudo-random walk over tenants, forms, paths and hostile headers.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let tenants = [("acme", VAPI_A), ("globex", VAPI_G)];
    for i in 0..60 {
        let (tenant, key) = tenants[(next() % 2) as usize];
        let other = if tenant == "acme" { "globex" } else { "acme" };
        let path = format!("/assistant/{}/x{}", next() % 1000, i);
        let (uri, mut headers): (String, Vec<(&str, String)>) = if next() % 2 == 0 {
            (format!("/vapi{path}"), vec![("keyward-tenant", tenant.to_string())])
        } else {
            (format!("/t/{tenant}/vapi{path}"), vec![])
        };
        // Hostile extras: another tenant's name in other headers, fake auth.
        headers.push(("x-tenant", other.to_string()));
        headers.push(("authorization", format!("Bearer {}", if next() % 2 == 0 { VAPI_G } else { VAPI_A })));
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, _, _) = e.d.app("GET", &uri, &h, None).await;
        assert_eq!(s, 200);
        let r = e.vapi.last();
        assert_eq!(r.path_and_query, path);
        assert_eq!(r.header("authorization").unwrap(), format!("Bearer {key}"), "request {i} for {tenant}");
        assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
    }
}

/// The injection a credential makes once (Vapi, a generic provider) is the credential's:
/// a replaced key goes out from the next request on, never the one made before.
#[tokio::test]
async fn a_replaced_key_is_injected_from_the_next_request_on() {
    let e = env().await;
    let hdr = [("keyward-tenant", "acme")];
    for (round, (vapi, acme)) in
        [(VAPI_A, ACME_KEY), ("vapi-key-rotated-1", "acme-key-rotated-1"), ("vapi-key-2", "acme-2")]
            .into_iter()
            .enumerate()
    {
        if round > 0 {
            put(&e.d, "acme", "vapi", json!({"api_key": vapi})).await;
            put(&e.d, "acme", "acme", json!({"api_key": acme, "account": "acct-1"})).await;
        }
        for _ in 0..3 {
            assert_eq!(e.d.app("GET", "/vapi/assistant", &hdr, None).await.0, 200);
            assert_eq!(e.vapi.last().header("authorization").unwrap(), format!("Bearer {vapi}"), "round {round}");
            assert_eq!(e.d.app("GET", "/acme/things", &hdr, None).await.0, 200);
            assert_eq!(e.acme.last().header("x-acme-key").unwrap(), format!("Token {acme}"), "round {round}");
        }
    }
    // Another tenant's credential of the same provider keeps its own.
    assert_eq!(e.d.app("GET", "/vapi/assistant", &[("keyward-tenant", "globex")], None).await.0, 200);
    assert_eq!(e.vapi.last().header("authorization").unwrap(), format!("Bearer {VAPI_G}"));
}

#[tokio::test]
async fn every_error_code_of_the_contract_is_answered_with_json_and_the_header() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let other_pki = Pki::new(&tmp.path().join("other").tap_mkdir());
    let untrusted = FakeProvider::start(&other_pki).await;
    let hang = FakeProvider::with_handler(
        &pki,
        Arc::new(|_| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                json_response(200, "{}")
            })
        }),
    )
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let generic = |name: &str, url: &str, extra: &str| {
        format!("[providers.{name}]\nbase_url = \"{url}\"\nfields = [\"api_key\"]\ninject = {{ header = \"Authorization\", value = \"Bearer {{api_key}}\" }}\n{extra}")
    };
    let extra = [
        generic("slow", &hang.url, "rate_limit = { per_tenant = \"1/m\", burst = 2 }\n"),
        generic("badtls", &untrusted.url, ""),
        generic("gone", &format!("https://127.0.0.1:{closed}"), ""),
    ]
    .concat();
    let e = env_in(tmp, pki, "", &extra, None, Run::Binary).await;
    for p in ["slow", "badtls", "gone"] {
        put(&e.d, "acme", p, json!({"api_key": "CANARYgenericKey0000000000000009"})).await;
    }
    put(&e.d, "acme", "google", json!({"client_id": "c.apps.googleusercontent.com", "client_secret": "CANARYgoogleSecret000000000000010", "scopes": ["s"]})).await;
    let a = [("keyward-tenant", "acme")];
    let cases: Vec<(&str, String, Vec<(&str, &str)>, u16, &str)> = vec![
        ("GET", "/vapi/x".into(), vec![], 400, "bad_request"),
        ("GET", "/nope/x".into(), a.to_vec(), 404, "unknown_provider"),
        ("GET", "/vapi/x".into(), vec![("keyward-tenant", "nobody")], 404, "unknown_tenant"),
        ("GET", "/t/acme/resend/x".into(), vec![], 200, ""),
        ("GET", "/t/globex/resend/x".into(), vec![], 404, "no_credential"),
        ("GET", "/google/calendar/v3/users/me/calendarList".into(), a.to_vec(), 403, "credential_inactive"),
        ("GET", "http://169.254.169.254/latest/meta-data".into(), a.to_vec(), 403, "host_not_allowed"),
        ("GET", "/vapi/../../v1/tenants".into(), a.to_vec(), 400, "bad_request"),
        ("GET", "/vapi/%2e%2e/%2E%2E/v1/tenants".into(), a.to_vec(), 400, "bad_request"),
        ("GET", "/gone/x".into(), a.to_vec(), 502, "upstream_connect_failed"),
        ("GET", "/badtls/x".into(), a.to_vec(), 502, "upstream_tls"),
        ("GET", "/slow/x".into(), a.to_vec(), 504, "upstream_timeout"),
        ("GET", "/slow/x".into(), a.to_vec(), 504, "upstream_timeout"),
        ("GET", "/slow/x".into(), a.to_vec(), 429, "rate_limited"),
    ];
    for (m, uri, h, status, code) in cases {
        let (s, headers, body) = e.d.app(m, &uri, &h, None).await;
        assert_eq!(s, status, "{uri}: {}", String::from_utf8_lossy(&body));
        if code.is_empty() {
            continue;
        }
        assert_eq!(headers["keyward-error"], code, "{uri}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], code);
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
        assert_eq!(
            canary_hits(
                &body,
                &[VAPI_A, TW_A, RS_A, "CANARYgenericKey0000000000000009", "CANARYgoogleSecret000000000000010"]
            ),
            0,
            "{uri}"
        );
        // A connection or TLS failure names what was tried and why.
        let message = v["error"]["message"].as_str().unwrap().to_string();
        if code == "upstream_connect_failed" {
            assert!(
                message.contains(&format!("127.0.0.1:{closed}")) && message.contains("connection refused"),
                "{message}"
            );
        }
        if code == "upstream_tls" {
            assert!(
                message.contains("127.0.0.1:")
                    && message.contains("invalid peer certificate")
                    && message.contains("extra_ca"),
                "{message}"
            );
        }
        if code == "rate_limited" {
            let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
        }
    }
    // Vapi keys are region-bound: an EU key is refused toward the US host.
    put(&e.d, "eu", "vapi", json!({"api_key": "k", "region": "eu"})).await;
    let (s, h, _) = e.d.app("GET", "http://api.vapi.ai/assistant", &[("keyward-tenant", "eu")], None).await;
    assert_eq!((s, h["keyward-error"].to_str().unwrap()), (403, "host_not_allowed"));
    // CONNECT is refused with an explanation.
    let (s, h, body) = e.d.app("CONNECT", "api.vapi.ai:443", &a, None).await;
    assert_eq!((s, h["keyward-error"].to_str().unwrap()), (405, "method_not_allowed"));
    assert!(String::from_utf8_lossy(&body).contains("must see each request"));
    // A policy denial (tenant_not_allowed) is covered by the policy test.
    let logs = e.d.logs();
    assert_eq!(canary_hits(logs.as_bytes(), &[VAPI_A, TW_A, RS_A, "CANARYgenericKey0000000000000009"]), 0);
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[tokio::test]
async fn upstream_errors_are_relayed_untouched() {
    let handler: Handler = Arc::new(|r: Recorded| {
        Box::pin(async move {
            if r.path_and_query.contains("redirect") {
                http::Response::builder()
                    .status(302)
                    .header("location", "https://evil.example/steal")
                    .body(full(""))
                    .unwrap()
            } else if r.path_and_query.contains("missing") {
                json_response(404, r#"{"code":20404,"message":"The requested resource was not found"}"#)
            } else {
                json_response(503, r#"{"message":"try later"}"#)
            }
        })
    });
    let e = env_with("", "", Some(handler)).await;
    let (s, h, body) =
        e.d.app("GET", "/twilio/2010-04-01/Accounts/_/missing.json", &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 404);
    assert!(h.get("keyward-error").is_none());
    assert_eq!(body, br#"{"code":20404,"message":"The requested resource was not found"}"#);
    let (s, h, _) = e.d.app("GET", "/twilio/x", &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 503);
    assert!(h.get("keyward-error").is_none());
    // A redirect is relayed, never followed (the credential never goes to its target).
    let before = e.twilio.count();
    let (s, h, _) = e.d.app("GET", "/twilio/redirect", &[("keyward-tenant", "acme")], None).await;
    assert_eq!((s, h["location"].to_str().unwrap()), (302, "https://evil.example/steal"));
    assert_eq!(e.twilio.count(), before + 1);
}

#[tokio::test]
async fn a_secret_echoed_by_the_upstream_is_masked_in_headers_and_body() {
    let handler: Handler = Arc::new(|r: Recorded| {
        Box::pin(async move {
            let auth = r.header("authorization").unwrap_or_default();
            let body = json!({"error": format!("invalid credentials: {auth}"), "echo": auth}).to_string();
            http::Response::builder()
                .status(401)
                .header("content-type", "application/json")
                .header("x-echo-auth", auth)
                .body(full(body))
                .unwrap()
        })
    });
    let e = env_with("", "", Some(handler)).await;
    let (s, h, body) = e.d.app("GET", "/twilio/2010-04-01/Accounts/_.json", &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 401);
    assert_eq!(canary_hits(&body, &[TW_A]), 0, "{}", String::from_utf8_lossy(&body));
    let basic_b64 = basic(SID_A, TW_A).trim_start_matches("Basic ").to_string();
    assert!(!String::from_utf8_lossy(&body).contains(&basic_b64));
    assert!(String::from_utf8_lossy(&body).contains("****"));
    assert!(!h["x-echo-auth"].to_str().unwrap().contains(&basic_b64));
}

#[tokio::test]
async fn a_chunked_audio_response_reaches_the_app_chunk_by_chunk() {
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(1);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let handler: Handler = {
        let rx = rx.clone();
        Arc::new(move |_| {
            let rx = rx.clone();
            Box::pin(async move {
                let (btx, brx) =
                    tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::convert::Infallible>>(4);
                tokio::spawn(async move {
                    btx.send(Ok(http_body::Frame::data(Bytes::from_static(b"ID3-first-audio-chunk")))).await.unwrap();
                    // The second chunk is only sent once the app has the first one.
                    let got =
                        tokio::time::timeout(Duration::from_secs(5), async { rx.lock().await.recv().await }).await;
                    let second: &'static [u8] = if got.is_ok() { b"second-chunk" } else { b"TIMEOUT" };
                    let _ = btx.send(Ok(http_body::Frame::data(Bytes::from_static(second)))).await;
                });
                use http_body_util::BodyExt;
                http::Response::builder()
                    .header("content-type", "audio/mpeg")
                    .body(http_body_util::StreamBody::new(tokio_stream_compat(brx)).boxed_unsync())
                    .unwrap()
            })
        })
    };
    let eleven = FakeProvider::with_handler(&pki, handler).await;
    let mut d = Daemon::new(DaemonConfig {
        app: Some(String::new()),
        extra: pki.upstream("elevenlabs", &eleven.url),
        ..DaemonConfig::default()
    });
    d.start();
    put(&d, "acme", "elevenlabs", json!({"api_key": EL_A})).await;

    let stream = tokio::net::UnixStream::connect(d.app_sock()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri("/elevenlabs/v1/text-to-speech/voice/stream")
        .header("host", "k")
        .header("keyward-tenant", "acme")
        .body(http_body_util::Full::new(Bytes::from_static(b"{\"text\":\"hi\"}")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    use http_body_util::BodyExt;
    let first = tokio::time::timeout(Duration::from_secs(3), body.frame())
        .await
        .expect("first chunk arrived before the second was sent")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"ID3-first-audio-chunk"));
    tx.send(()).await.unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"second-chunk");
}

/// An upload larger than the provider's HTTP/2 flow-control windows (hyper's server grants
/// 1 MiB): keyward streams it within the windows the provider hands out, two at once on the
/// one shared connection, and every byte arrives in order.
#[tokio::test]
async fn uploads_larger_than_the_http2_windows_arrive_whole() {
    let e = env().await;
    let upload = |seed: u8| (0..3 * 1024 * 1024).map(|i: u32| (i % 251) as u8 ^ seed).collect::<Vec<u8>>();
    let hdr = [("keyward-tenant", "acme"), ("content-type", "audio/wav")];
    // The first request finds the host speaks HTTP/2 (a burst to a host not met yet makes
    // one connection per request).
    let (s, _, _) = e.d.app("GET", "/elevenlabs/v1/models", &hdr[..1], None).await;
    assert_eq!(s, 200);
    let (a, b) = tokio::join!(
        e.d.app("POST", "/elevenlabs/v1/speech-to-text", &hdr, Some(upload(1))),
        e.d.app("POST", "/elevenlabs/v1/speech-to-text", &hdr, Some(upload(2))),
    );
    for (s, _, body) in [&a, &b] {
        assert_eq!(*s, 200, "{}", String::from_utf8_lossy(body));
    }
    let got = e.eleven.requests.lock().unwrap()[1..].to_vec();
    assert_eq!(got.len(), 2);
    for r in &got {
        assert_eq!(r.version, http::Version::HTTP_2, "the fake provider offers h2");
        assert_eq!(r.body_len, 3 * 1024 * 1024);
        let seed = r.body[0];
        assert!(r.body == upload(seed)[..r.body.len()], "the body arrived altered or out of order");
    }
    assert_eq!(e.eleven.connections.load(std::sync::atomic::Ordering::SeqCst), 1, "both on one shared connection");
}

/// Adapts a tokio mpsc receiver into a Stream without an extra crate.
fn tokio_stream_compat<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn client_policy_limits_tenants_and_providers() {
    let me = rustix::process::geteuid().as_raw();
    let app = format!("[[app.clients]]\nuid = {me}\ntenants = [\"acme\"]\nproviders = [\"vapi\", \"resend\"]\n");
    let e = env_run(&app, "", None, Run::Binary).await;
    let (s, _, _) = e.d.app("GET", "/vapi/x", &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200);
    for (uri, t) in [("/vapi/x", "globex"), ("/twilio/x", "acme")] {
        let (s, h, _) = e.d.app("GET", uri, &[("keyward-tenant", t)], None).await;
        assert_eq!((s, h["keyward-error"].to_str().unwrap()), (403, "tenant_not_allowed"), "{uri} {t}");
    }
    assert!(!e.d.logs().contains("every client that can reach the app listener may use every tenant"));
}

#[tokio::test]
async fn without_a_policy_the_open_access_is_logged_once() {
    let e = env_run("", "", None, Run::Binary).await;
    assert_eq!(e.d.logs().matches("every client that can reach the app listener may use every tenant").count(), 1);
}

#[tokio::test]
async fn bad_input_gets_its_code_and_a_clean_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = env_with("", "", None).await;
    let raw = |req: Vec<u8>| {
        let sock = e.d.app_sock();
        async move {
            let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
            s.write_all(&req).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).to_string()
        }
    };
    // CR/LF smuggled into Keyward-Tenant splits into another header line: the tenant is
    // then just "acme" plus a bogus header, or the request is refused; NUL is refused.
    let out =
        raw(b"GET /vapi/x HTTP/1.1\r\nHost: k\r\nKeyward-Tenant: ac\0me\r\nConnection: close\r\n\r\n".to_vec()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out =
        raw(b"GET /vapi/x HTTP/1.1\r\nHost: k\r\nKeyward-Tenant: acme\rglobex\r\nConnection: close\r\n\r\n".to_vec())
            .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // Oversized headers.
    let big = format!("GET /vapi/x HTTP/1.1\r\nHost: k\r\nX-Big: {}\r\n\r\n", "a".repeat(100_000));
    let out = raw(big.into_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{}", &out[..out.len().min(200)]);
    // A slow client that never finishes its headers is closed. The daemon runs in this
    // process, so its header timer is on this runtime's clock: paused, the clock jumps to the
    // daemon's 10 s deadline as soon as everything waits, instead of the test waiting.
    tokio::time::pause();
    let t0 = tokio::time::Instant::now();
    let out = raw(b"GET /vapi/x HTTP/1.1\r\nHost: k\r\n".to_vec()).await;
    let waited = t0.elapsed();
    tokio::time::resume();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(14),
        "closed by the header timeout after {waited:?}"
    );
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 408"), "{out}");
    // The daemon is still serving.
    let (s, _, _) = e.d.app("GET", "/vapi/x", &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn an_upstream_that_resets_or_sends_garbage_gets_a_clean_error() {
    use tokio::io::AsyncWriteExt;
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    // A TLS server that answers garbage, and one that closes at once after the handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config(&[b"http/1.1"]));
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            n += 1;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut tls = acceptor.accept(tcp).await.unwrap();
                if n % 2 == 1 {
                    let _ = tls.write_all(b"\x00\x01garbage that is not HTTP\r\n\r\n").await;
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    let mut d = Daemon::new(DaemonConfig {
        app: Some(String::new()),
        extra: format!(
            "[upstream]\nextra_ca = \"{}\"\n[providers.vapi]\nbase_url = \"https://127.0.0.1:{port}\"\n",
            pki.ca_pem.display()
        ),
        ..DaemonConfig::default()
    });
    d.start();
    put(&d, "acme", "vapi", json!({"api_key": VAPI_A})).await;
    for _ in 0..2 {
        let (s, h, body) = d.app("GET", "/vapi/x", &[("keyward-tenant", "acme")], None).await;
        assert_eq!(
            (s, h["keyward-error"].to_str().unwrap()),
            (502, "upstream_connect_failed"),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    assert!(!d.logs().contains("panicked"));
}

/// Hardening (issue 13, item 5): a provider, or anything on its path, cannot speak for
/// keyward: `Keyward-*` response headers are dropped before the app sees the answer, and the
/// metrics' error label only ever holds keyward's own codes.
#[tokio::test]
async fn a_providers_keyward_headers_reach_neither_the_app_nor_the_metrics() {
    let handler: Handler = Arc::new(|_| {
        Box::pin(async {
            let mut resp = json_response(200, r#"{"sid":"CA1"}"#);
            for (n, v) in [
                ("keyward-error", "evil-label-0001"),
                ("keyward-verified", "1"),
                ("keyward-tenant", "globex"),
                ("x-twilio-request", "ok"),
            ] {
                resp.headers_mut().insert(n, http::HeaderValue::from_static(v));
            }
            resp
        })
    });
    let e = env_with("", "", Some(handler)).await;
    let (s, h, _) =
        e.d.app("GET", "/twilio/2010-04-01/Accounts/_/Calls.json", &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200);
    let keyward: Vec<&str> = h.keys().map(|k| k.as_str()).filter(|k| k.starts_with("keyward-")).collect();
    assert!(keyward.is_empty(), "relayed from the provider: {keyward:?}");
    assert_eq!(h["x-twilio-request"], "ok", "the provider's own headers still arrive");
    let ops = tokio::net::TcpStream::connect(e.d.ops_addr.as_ref().unwrap()).await.unwrap();
    let (_, _, metrics) = http_full(hyper_util::rt::TokioIo::new(ops), "GET", "/metrics", None, &[]).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("keyward_proxy_requests"), "{metrics}");
    assert!(!metrics.contains("evil-label"), "a provider chose a metrics label:\n{metrics}");
}

#[tokio::test]
async fn the_app_cannot_switch_scrubbing_off_and_every_sent_form_of_the_secret_is_masked() {
    // A provider that honours Accept-Encoding (answering "gzip" as asked) and echoes what it
    // got: the Authorization header in the body, the query in a Location header.
    let handler: Handler = Arc::new(|r: Recorded| {
        Box::pin(async move {
            let auth = r.header("authorization").unwrap_or_default();
            let compressed = r.header("accept-encoding").is_some_and(|v| v.contains("gzip"));
            let mut b = http::Response::builder().status(200).header("content-type", "application/json").header(
                "location",
                format!("https://api.example/next?{}", r.path_and_query.split_once('?').map_or("", |(_, q)| q)),
            );
            if compressed {
                b = b.header("content-encoding", "gzip");
            }
            b.body(full(json!({"echo": auth}).to_string())).unwrap()
        })
    });
    let query_key = "qk CANARY/query+key=000001";
    let extra = "[providers.qprov]\nbase_url = \"BASE\"\nfields = [\"api_key\"]\ninject = { query = \"key\", value = \"{api_key}\" }\n";
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let q = FakeProvider::with_handler(&pki, handler.clone()).await;
    let e = env_in(tmp, pki, "", &extra.replace("BASE", &q.url), Some(handler), Run::InProcess).await;
    put(&e.d, "acme", "qprov", json!({"api_key": query_key})).await;
    let (s, h, body) =
        e.d.app(
            "GET",
            "/twilio/2010-04-01/Accounts/_.json",
            &[("keyward-tenant", "acme"), ("accept-encoding", "gzip")],
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_ne!(e.twilio.last().header("accept-encoding").as_deref(), Some("gzip"), "keyward chooses the encoding");
    let basic_b64 = basic(SID_A, TW_A).trim_start_matches("Basic ").to_string();
    assert!(!String::from_utf8_lossy(&body).contains(&basic_b64), "{}", String::from_utf8_lossy(&body));
    assert_eq!(canary_hits(&body, &[TW_A]), 0);
    assert!(h.get("content-encoding").is_none());
    // Query injection: the percent/form-encoded form keyward sent is masked in Location.
    let (s, h, _) = e.d.app("GET", "/qprov/things?x=1", &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200);
    let sent = q.last().path_and_query;
    let encoded: String = url::form_urlencoded::byte_serialize(query_key.as_bytes()).collect();
    assert!(sent.contains(&encoded), "{sent}");
    let location = h["location"].to_str().unwrap().to_string();
    assert!(!location.contains(&encoded) && !location.contains("CANARY"), "{location}");
}
