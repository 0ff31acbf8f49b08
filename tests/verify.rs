//! End-to-end: live verification for every provider, `?verify=true`, route discovery (with
//! conflicts and bounded paging) and periodic re-verification, against fake providers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, clippy::result_large_err)]

mod common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use common::fake::*;
use common::*;
use serde_json::{json, Value};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const GOOD: &str = "CANARYgoodKey000000000000000001";

/// A provider that accepts only `expected` credentials in `header`, answers `status_override`
/// when it is non-zero, and serves discovery listings.
fn provider(header: &'static str, expected: String, status_override: Arc<AtomicU16>) -> Handler {
    Arc::new(move |r: Recorded| {
        let expected = expected.clone();
        let over = status_override.load(Ordering::SeqCst);
        Box::pin(async move {
            if over != 0 {
                return json_response(over, r#"{"message":"unavailable"}"#);
            }
            if r.header(header).as_deref() != Some(expected.as_str()) {
                return json_response(401, r#"{"message":"Invalid API key"}"#);
            }
            let path = r.path_and_query.split('?').next().unwrap().to_string();
            match path.as_str() {
                "/assistant" => json_response(200, r#"[{"id":"asst-1","name":"a"},{"id":"asst-2","name":"b"}]"#),
                "/phone-number" => json_response(200, r#"[{"id":"pn-1"}]"#),
                "/v1/convai/agents" => {
                    let page: u32 = r.path_and_query.split("cursor=").nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                    json_response(200, &json!({"agents": [{"agent_id": format!("agent-{page}")}], "has_more": page < 2, "next_cursor": (page + 1).to_string()}).to_string())
                }
                p if p.ends_with("/IncomingPhoneNumbers.json") => {
                    // Pages forever: keyward must stop at its bound.
                    let page: u32 = r
                        .path_and_query
                        .split("Page=")
                        .nth(1)
                        .and_then(|c| c.split('&').next()?.parse().ok())
                        .unwrap_or(0);
                    json_response(200, &json!({"incoming_phone_numbers": [{"phone_number": format!("+1415555{:04}", page), "account_sid": SID}],
                        "next_page_uri": format!("/2010-04-01/Accounts/{SID}/IncomingPhoneNumbers.json?PageSize=1&Page={}", page + 1)}).to_string())
                }
                _ => json_response(200, r#"{"ok":true}"#),
            }
        })
    })
}

struct Env {
    _tmp: tempfile::TempDir,
    d: Daemon,
    vapi: FakeProvider,
    twilio: FakeProvider,
    resend: FakeProvider,
    eleven: FakeProvider,
    down: Arc<AtomicU16>,
}

async fn env(verification: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let down = Arc::new(AtomicU16::new(0));
    use base64::Engine;
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{GOOD}")));
    let vapi =
        FakeProvider::with_handler(&pki, provider("authorization", format!("Bearer {GOOD}"), down.clone())).await;
    let twilio = FakeProvider::with_handler(&pki, provider("authorization", basic, down.clone())).await;
    let resend =
        FakeProvider::with_handler(&pki, provider("authorization", format!("Bearer {GOOD}"), down.clone())).await;
    let eleven = FakeProvider::with_handler(&pki, provider("xi-api-key", GOOD.to_string(), down.clone())).await;
    let mut d = Daemon::new(DaemonConfig {
        extra: format!(
            "[upstream]\nextra_ca = \"{}\"\nrequest_timeout = \"3s\"\n[providers.vapi]\nbase_url = \"{}\"\n[providers.twilio]\nbase_url = \"{}\"\n[providers.resend]\nbase_url = \"{}\"\n[providers.elevenlabs]\nbase_url = \"{}\"\n{verification}",
            pki.ca_pem.display(),
            vapi.url,
            twilio.url,
            resend.url,
            eleven.url
        ),
        ..DaemonConfig::default()
    });
    d.start();
    Env { _tmp: tmp, d, vapi, twilio, resend, eleven, down }
}

fn fields(provider: &str, key: &str) -> String {
    match provider {
        "twilio" => json!({"account_sid": SID, "auth_token": key}),
        _ => json!({"api_key": key}),
    }
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_is_checked_live_and_the_outcome_recorded() {
    let e = env("[verification]\ndiscover_routes = false\ninterval = \"0s\"\n").await;
    for p in ["vapi", "twilio", "resend", "elevenlabs"] {
        // Good key: valid, last_verified_at set.
        e.d.admin("PUT", &format!("/v1/tenants/acme/credentials/{p}"), Some(&fields(p, GOOD))).await;
        let (s, v) = e.d.admin("POST", &format!("/v1/tenants/acme/credentials/{p}/verify"), None).await;
        assert_eq!(s, 200, "{p}: {v}");
        assert_eq!(v["verification"]["result"], "valid", "{p}: {v}");
        assert!(v["last_verified_at"].is_string() && v["last_error"].is_null());
        // Provider down: unavailable, status unchanged, last_verified_at kept.
        e.down.store(503, Ordering::SeqCst);
        let (_, v2) = e.d.admin("POST", &format!("/v1/tenants/acme/credentials/{p}/verify"), None).await;
        e.down.store(0, Ordering::SeqCst);
        assert_eq!(v2["verification"]["result"], "unavailable", "{p}: {v2}");
        assert_eq!(v2["status"], "active");
        assert_eq!(v2["last_verified_at"], v["last_verified_at"]);
        assert!(v2["last_error"].as_str().unwrap().contains("503"));
        // Bad key: invalid credentials, status revoked, and the proxy refuses at once.
        e.d.admin(
            "PUT",
            &format!("/v1/tenants/acme/credentials/{p}"),
            Some(&fields(p, "CANARYbadKey00000000000000000002")),
        )
        .await;
        let (_, v3) = e.d.admin("POST", &format!("/v1/tenants/acme/credentials/{p}/verify"), None).await;
        assert_eq!(v3["verification"]["result"], "invalid", "{p}: {v3}");
        assert_eq!(v3["status"], "revoked");
        assert!(v3["last_error"].as_str().unwrap().contains("invalid credentials"));
        assert_eq!(canary_hits(v3.to_string().as_bytes(), &[GOOD, "CANARYbadKey00000000000000000002"]), 0);
    }
    // What each provider was asked.
    assert!(e.vapi.all().iter().any(|r| r.path_and_query == "/assistant?limit=1"));
    assert!(e.twilio.all().iter().any(|r| r.path_and_query == format!("/2010-04-01/Accounts/{SID}.json")));
    assert!(e.resend.all().iter().any(|r| r.path_and_query == "/domains"));
    assert!(e.eleven.all().iter().any(|r| r.path_and_query == "/v1/user"));
    // The CLI agrees and exits 1 on a failed check.
    let out = e.d.cli(&["cred", "verify", "acme", "vapi"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not verify"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_verify_true_nothing_is_stored_unless_it_verifies() {
    let e = env("[verification]\ndiscover_routes = false\ninterval = \"0s\"\n").await;
    let (s, v) =
        e.d.admin(
            "PUT",
            "/v1/tenants/acme/credentials/resend?verify=true",
            Some(&fields("resend", "CANARYbadKey00000000000000000002")),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (422, Some("invalid_credential")), "{v}");
    let (s, _) = e.d.admin("GET", "/v1/tenants/acme/credentials/resend", None).await;
    assert_eq!(s, 404, "nothing stored");
    e.down.store(502, Ordering::SeqCst);
    let (s, v) =
        e.d.admin("PUT", "/v1/tenants/acme/credentials/resend?verify=true", Some(&fields("resend", GOOD))).await;
    e.down.store(0, Ordering::SeqCst);
    assert_eq!((s, v["error"]["code"].as_str()), (502, Some("provider_unavailable")));
    let (s, v) =
        e.d.admin("PUT", "/v1/tenants/acme/credentials/resend?verify=true", Some(&fields("resend", GOOD))).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["last_verified_at"].is_string());
    let out = e.d.cli(&["cred", "put", "globex", "resend", "--verify"], Some(&fields("resend", GOOD)));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_discovered_and_another_tenants_ids_are_never_moved() {
    let e = env("[verification]\ndiscover_routes = true\ninterval = \"0s\"\n").await;
    // asst-2 already belongs to globex, whose credential passed a live check (a route whose
    // owner never did is taken over: see the test below).
    let (s, v) = e.d.admin("PUT", "/v1/tenants/globex/credentials/vapi?verify=true", Some(&fields("vapi", GOOD))).await;
    assert_eq!(s, 200, "{v}");
    // Its own store-time discovery routes the fake's whole listing to it; keep only asst-2.
    let t0 = std::time::Instant::now();
    while e.d.admin("GET", "/v1/routes/vapi-phone-number/pn-1", None).await.0 != 200 {
        assert!(t0.elapsed() < std::time::Duration::from_secs(5), "globex's discovery ran");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    e.d.admin("DELETE", "/v1/routes/vapi-assistant/asst-1", None).await;
    e.d.admin("DELETE", "/v1/routes/vapi-phone-number/pn-1", None).await;
    e.d.admin("PUT", "/v1/routes/vapi-assistant/asst-2", Some(r#"{"tenant":"globex"}"#)).await;
    e.d.admin("PUT", "/v1/tenants/acme/credentials/vapi", Some(&fields("vapi", GOOD))).await;
    let (_, v) = e.d.admin("POST", "/v1/tenants/acme/credentials/vapi/verify", None).await;
    let registered: Vec<&str> =
        v["routes"]["registered"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert!(registered.contains(&"vapi-assistant/asst-1") && registered.contains(&"vapi-phone-number/pn-1"), "{v}");
    assert_eq!(v["routes"]["conflicts"], json!(["vapi-assistant/asst-2"]));
    let (_, r) = e.d.admin("GET", "/v1/routes/vapi-assistant/asst-2", None).await;
    assert_eq!(r["tenant"], "globex", "never silently moved");
    let (_, r) = e.d.admin("GET", "/v1/routes/vapi-assistant/asst-1", None).await;
    assert_eq!(r["tenant"], "acme");

    // Twilio pages forever: the listing stops at the bound and says so.
    e.d.admin("PUT", "/v1/tenants/acme/credentials/twilio", Some(&fields("twilio", GOOD))).await;
    let (_, v) = e.d.admin("POST", "/v1/tenants/acme/credentials/twilio/verify", None).await;
    assert_eq!(v["routes"]["truncated"], true, "{v}");
    let (_, r) = e.d.admin("GET", &format!("/v1/routes/twilio-account/{SID}"), None).await;
    assert_eq!(r["tenant"], "acme");
    // One check plus at most 10 pages, for the store-time discovery and for the verify.
    assert!(e.twilio.count() <= 2 * 11 + 1, "bounded: {} calls", e.twilio.count());

    // ElevenLabs agents across cursor pages.
    e.d.admin("PUT", "/v1/tenants/acme/credentials/elevenlabs", Some(&fields("elevenlabs", GOOD))).await;
    let (_, v) = e.d.admin("POST", "/v1/tenants/acme/credentials/elevenlabs/verify", None).await;
    let regs: Vec<Value> = v["routes"]["registered"].as_array().unwrap().clone();
    assert_eq!(
        regs,
        vec![json!("elevenlabs-agent/agent-0"), json!("elevenlabs-agent/agent-1"), json!("elevenlabs-agent/agent-2")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_re_verified_periodically() {
    let e = env("[verification]\ndiscover_routes = false\ninterval = \"1s\"\nconcurrency = 2\n").await;
    for t in ["a", "b", "c"] {
        e.d.admin("PUT", &format!("/v1/tenants/{t}/credentials/vapi"), Some(&fields("vapi", GOOD))).await;
    }
    let mut all_checked = false;
    for _ in 0..60 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut n = 0;
        for t in ["a", "b", "c"] {
            let (_, v) = e.d.admin("GET", &format!("/v1/tenants/{t}/credentials/vapi"), None).await;
            if v["last_verified_at"].is_string() {
                n += 1;
            }
        }
        if n == 3 {
            all_checked = true;
            break;
        }
    }
    assert!(all_checked, "every credential was re-checked within a few seconds");
    assert!(e.d.logs().contains("periodic re-verification pass"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_account_sid_routes_nowhere_until_the_provider_confirms_it_and_the_verified_owner_wins() {
    let e = env("[verification]\ndiscover_routes = true\ninterval = \"0s\"\n").await;
    let path = format!("/v1/routes/twilio-account/{SID}");
    let route = || e.d.admin("GET", &path, None);
    // mallory stores acme's Account SID with a token of her own; the store-time discovery
    // runs in the background and is refused by Twilio.
    let (s, _) =
        e.d.admin(
            "PUT",
            "/v1/tenants/mallory/credentials/twilio",
            Some(&fields("twilio", "wrong-token-00000000000000000")),
        )
        .await;
    assert_eq!(s, 200);
    let t0 = std::time::Instant::now();
    while e.twilio.count() == 0 && t0.elapsed() < std::time::Duration::from_secs(5) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(e.twilio.count() > 0, "discovery asked Twilio");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (s, r) = route().await;
    assert_eq!(s, 404, "an unconfirmed claim registers nothing: {r}");
    // acme's credential is confirmed by Twilio: the SID routes to acme.
    e.d.admin("PUT", "/v1/tenants/acme/credentials/twilio", Some(&fields("twilio", GOOD))).await;
    let (_, v) = e.d.admin("POST", "/v1/tenants/acme/credentials/twilio/verify", None).await;
    assert_eq!(v["verification"]["result"], "valid", "{v}");
    assert_eq!(route().await.1["tenant"], "acme");
    // A claim that got in anyway (an operator's route, or one from before this rule) loses to
    // the verified owner; the move is audited.
    e.d.admin("PUT", &format!("/v1/routes/twilio-account/{SID}"), Some(r#"{"tenant":"mallory"}"#)).await;
    let (_, v) = e.d.admin("POST", "/v1/tenants/acme/credentials/twilio/verify", None).await;
    assert!(v["routes"]["registered"].as_array().unwrap().contains(&json!(format!("twilio-account/{SID}"))), "{v}");
    assert_eq!(route().await.1["tenant"], "acme");
    // The other way round: a verified owner keeps its route when an unverified tenant's
    // discovery would claim it.
    let (_, v) = e.d.admin("POST", "/v1/tenants/mallory/credentials/twilio/verify", None).await;
    assert_ne!(v["verification"]["result"], "valid");
    assert_eq!(route().await.1["tenant"], "acme");
}
