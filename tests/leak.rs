//! The whole-daemon leak test: every feature exercised with trace logging on and canary
//! secrets in every secret field; then every log line, metric, admin response, app
//! response, error body, CLI output and delivery the app received is searched for the
//! canaries, raw and base64- and hex-encoded: 0 hits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, clippy::result_large_err)]

mod common;

use std::sync::{Arc, Mutex};

use base64::Engine;
use common::fake::*;
use common::*;
use serde_json::json;

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const C_VAPI: &str = "CANARYleakVapiApiKey000000000001";
const C_VAPI_HOOK: &str = "CANARYleakVapiHookSecret0000002";
const C_TWILIO: &str = "CANARYleakTwilioAuthToken00003";
const C_TWILIO_2: &str = "CANARYleakTwilioSecondary000004";
const C_RESEND: &str = "re_CANARYleakResendApiKey00000005";
const C_EL: &str = "CANARYleakElevenApiKey000000006";
const C_EL_HOOK: &str = "CANARYleakElevenHookSecret00007";
const C_G_SECRET: &str = "CANARYleakGoogleClientSecret008";
const C_G_REFRESH: &str = "1//CANARYleakGoogleRefresh000009";
const C_G_ACCESS: &str = "ya29.CANARYleakGoogleAccess00010";
const C_G_CHANNEL: &str = "CANARYleakGoogleChannelTok0011";
const C_ADMIN: &str = "CANARYleakAdminBearerToken00012";

fn resend_hook_secret() -> String {
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode("CANARYleakResendHook000000013"))
}

const CANARIES: [&str; 12] = [
    C_VAPI,
    C_VAPI_HOOK,
    C_TWILIO,
    C_TWILIO_2,
    C_RESEND,
    C_EL,
    C_EL_HOOK,
    C_G_SECRET,
    C_G_REFRESH,
    C_G_ACCESS,
    C_G_CHANNEL,
    C_ADMIN,
];

/// A fake provider that echoes what it received (headers and body) in its answer, the
/// worst case for scrubbing, and plays Google's token endpoint.
fn echoing() -> Handler {
    Arc::new(|r: Recorded| {
        Box::pin(async move {
            if r.path_and_query == "/token" {
                return json_response(200, &json!({"access_token": C_G_ACCESS, "expires_in": 3599}).to_string());
            }
            if r.path_and_query == "/revoke" {
                return json_response(200, "{}");
            }
            let headers: Vec<String> =
                r.headers.iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or(""))).collect();
            let status = if r.path_and_query.contains("fail") { 401 } else { 200 };
            http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("x-echo", r.header("authorization").or(r.header("xi-api-key")).unwrap_or_default())
                .body(full(
                    json!({"received_headers": headers, "received_body": String::from_utf8_lossy(&r.body)}).to_string(),
                ))
                .unwrap()
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_metric_response_or_the_app() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let fake = FakeProvider::with_handler(&pki, echoing()).await;
    let app_seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
    let app = FakeApp::start({
        let seen = app_seen.clone();
        Arc::new(move |r: Recorded| {
            seen.lock().unwrap().push(r);
            Box::pin(async { json_response(200, r#"{"ok":true}"#) })
        })
    })
    .await;
    let token_file = tmp.path().join("admin-token");
    std::fs::write(&token_file, C_ADMIN).unwrap();
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut d = Daemon::new(DaemonConfig {
        app: Some(String::new()),
        log_level: "trace".into(),
        admin_extra: format!("tcp = \"127.0.0.1:0\"\ntoken_file = \"{}\"", token_file.display()),
        extra: format!(
            "[webhooks]\nlisten = \"127.0.0.1:0\"\npublic_base_url = \"https://hooks.test\"\nforward_to = \"{app}\"\n\
             [upstream]\nextra_ca = \"{ca}\"\n\
             [providers.vapi]\nbase_url = \"{u}\"\n[providers.twilio]\nbase_url = \"{u}\"\n[providers.resend]\nbase_url = \"{u}\"\n[providers.elevenlabs]\nbase_url = \"{u}\"\n\
             [providers.google]\nbase_url = \"{u}\"\ntoken_url = \"{u}/token\"\nrevoke_url = \"{u}/revoke\"\nauth_url = \"{u}/auth\"\n",
            app = app.url,
            ca = pki.ca_pem.display(),
            u = fake.url
        ),
        ..DaemonConfig::default()
    });
    d.start();
    let mut seen: Vec<u8> = Vec::new();
    let mut record = |b: &[u8]| seen.extend_from_slice(b);

    // --- admin: every endpoint, good and bad input ----------------------------------------
    let puts = [
        ("vapi", json!({"api_key": C_VAPI, "webhook_secret": C_VAPI_HOOK, "org_id": "org-1"})),
        ("twilio", json!({"account_sid": SID, "auth_token": C_TWILIO, "secondary_auth_token": C_TWILIO_2})),
        ("resend", json!({"api_key": C_RESEND, "webhook_secret": resend_hook_secret()})),
        ("elevenlabs", json!({"api_key": C_EL, "webhook_secret": C_EL_HOOK})),
        (
            "google",
            json!({"client_id": "c.apps.googleusercontent.com", "client_secret": C_G_SECRET, "refresh_token": C_G_REFRESH, "scopes": ["s"], "webhook_secret": C_G_CHANNEL}),
        ),
    ];
    for (p, f) in &puts {
        let (s, b) = d
            .admin_raw("PUT", &format!("/v1/tenants/acme/credentials/{p}"), Some(f.to_string().into_bytes()), &[])
            .await;
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
        record(&b);
        // A refused write carrying the canary: bad field, bad JSON, whitespace.
        let mut bad = f.clone();
        bad["unknown_field"] = json!(C_VAPI);
        record(
            &d.admin_raw("PUT", &format!("/v1/tenants/acme/credentials/{p}"), Some(bad.to_string().into_bytes()), &[])
                .await
                .1,
        );
        record(
            &d.admin_raw(
                "PUT",
                &format!("/v1/tenants/acme/credentials/{p}"),
                Some(format!("{{\"api_key\": \"{C_VAPI}").into_bytes()),
                &[],
            )
            .await
            .1,
        );
        record(
            &d.admin_raw(
                "PUT",
                &format!("/v1/tenants/acme/credentials/{p}?verify=true"),
                Some(f.to_string().into_bytes()),
                &[],
            )
            .await
            .1,
        );
        record(&d.admin_raw("POST", &format!("/v1/tenants/acme/credentials/{p}/verify"), None, &[]).await.1);
        record(&d.admin_raw("GET", &format!("/v1/tenants/acme/credentials/{p}"), None, &[]).await.1);
    }
    for path in
        ["/v1/tenants", "/v1/tenants/acme/credentials?include_deleted=true", "/v1/audit?limit=1000", "/v1/audit/verify"]
    {
        record(&d.admin_raw("GET", path, None, &[]).await.1);
    }
    record(
        &d.admin_raw("PUT", &format!("/v1/routes/twilio-account/{SID}"), Some(br#"{"tenant":"acme"}"#.to_vec()), &[])
            .await
            .1,
    );
    record(&d.admin_raw("POST", "/v1/tenants/acme/oauth/google/start", None, &[]).await.1);
    record(&d.admin_raw("POST", "/v1/keys/rotate", None, &[]).await.1);
    // Admin TCP with right and wrong tokens.
    for tok in [C_ADMIN, "wrong-token-0000000000000000"] {
        let s = tokio::net::TcpStream::connect(d.addr("admin-tcp")).await.unwrap();
        let auth = format!("Bearer {tok}");
        let (_, h, b) =
            http_full(hyper_util::rt::TokioIo::new(s), "GET", "/v1/tenants", None, &[("authorization", &auth)]).await;
        record(&b);
        record(format!("{h:?}").as_bytes());
    }

    // --- proxy: every provider, echoes, errors ------------------------------------------
    let a = [("keyward-tenant", "acme")];
    for path in [
        "/vapi/assistant",
        "/vapi/fail",
        "/twilio/2010-04-01/Accounts/_/Messages.json",
        "/twilio/2010-04-01/Accounts/ACffffffffffffffffffffffffffffffff/Calls.json",
        "/resend/emails",
        "/elevenlabs/v1/voices",
        "/google/calendar/v3/users/me/calendarList",
        "/nope/x",
        "http://169.254.169.254/",
    ] {
        let (_, h, b) = d.app("GET", path, &a, None).await;
        record(&b);
        record(format!("{h:?}").as_bytes());
    }
    let (_, h, b) = d
        .app(
            "POST",
            "/vapi/call",
            &[("keyward-tenant", "acme"), ("authorization", &format!("Bearer {C_VAPI}"))],
            Some(b"{}".to_vec()),
        )
        .await;
    record(&b);
    record(format!("{h:?}").as_bytes());

    // --- webhooks: valid, forged, secret-carrying headers ---------------------------------
    let hook = |method: &'static str, path: String, headers: Vec<(String, String)>, body: String| {
        let addr = d.addr("webhooks");
        async move {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            http_full(hyper_util::rt::TokioIo::new(s), method, &path, Some(body.into_bytes()), &h).await
        }
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
    let body = r#"{"type":"email.sent"}"#.to_string();
    let key =
        base64::engine::general_purpose::STANDARD.decode(resend_hook_secret().trim_start_matches("whsec_")).unwrap();
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    m.update(format!("msg_1.{now}.{body}").as_bytes());
    let sig = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes()));
    let good = vec![
        ("svix-id".to_string(), "msg_1".to_string()),
        ("svix-timestamp".to_string(), now.clone()),
        ("svix-signature".to_string(), sig),
    ];
    record(&hook("POST", "/webhooks/resend/acme".into(), good.clone(), body.clone()).await.2);
    record(&hook("POST", "/webhooks/resend/acme".into(), good, "tampered".into()).await.2);
    let vapi_body = json!({"message": {"type": "status-update", "call": {"orgId": "org-1"}, "phoneNumber": {"twilioAuthToken": C_TWILIO}}}).to_string();
    record(
        &hook(
            "POST",
            "/webhooks/vapi/acme".into(),
            vec![("x-vapi-secret".into(), C_VAPI_HOOK.into())],
            vapi_body.clone(),
        )
        .await
        .2,
    );
    record(
        &hook(
            "POST",
            "/webhooks/vapi/acme".into(),
            vec![("authorization".into(), format!("Bearer {C_VAPI}"))],
            vapi_body,
        )
        .await
        .2,
    );
    let goog = vec![
        ("x-goog-channel-id".to_string(), "chan-1".to_string()),
        ("x-goog-message-number".to_string(), "1".to_string()),
        ("x-goog-resource-id".to_string(), "r".to_string()),
        ("x-goog-resource-uri".to_string(), "u".to_string()),
        ("x-goog-resource-state".to_string(), "sync".to_string()),
        ("x-goog-channel-token".to_string(), C_G_CHANNEL.to_string()),
    ];
    record(&hook("POST", "/webhooks/google/acme".into(), goog, String::new()).await.2);
    record(&hook("GET", "/oauth/google/callback?state=forged&code=x".into(), vec![], String::new()).await.2);

    // --- metrics, CLI, delete (revocation) -------------------------------------------------
    let s = tokio::net::TcpStream::connect(d.ops_addr.as_ref().unwrap()).await.unwrap();
    record(&http_full(hyper_util::rt::TokioIo::new(s), "GET", "/metrics", None, &[]).await.2);
    for args in [
        vec!["cred", "ls", "acme"],
        vec!["cred", "get", "acme", "twilio"],
        vec!["audit", "tail", "--json", "--limit", "500"],
        vec!["cred", "verify", "acme", "vapi"],
    ] {
        let out = d.cli(&args, None);
        record(&out.stdout);
        record(&out.stderr);
    }
    record(&d.admin_raw("DELETE", "/v1/tenants/acme/credentials/google", None, &[]).await.1);
    record(&d.admin_raw("DELETE", "/v1/tenants/acme", None, &[]).await.1);
    d.stop();

    // --- the search ------------------------------------------------------------------------
    assert!(seen.len() > 10_000, "the responses were collected: {} bytes", seen.len());
    assert_eq!(canary_hits(&seen, &CANARIES), 0, "a canary reached a response, an error body, a metric or CLI output");
    let logs = d.logs();
    assert!(logs.contains("\"level\":\"TRACE\""), "trace logging was on");
    assert!(logs.len() > 100_000, "the log is substantial: {} bytes", logs.len());
    for c in CANARIES {
        assert_eq!(canary_hits(logs.as_bytes(), &[c]), 0, "{c} reached the log");
    }
    let delivered: Vec<u8> = app_seen
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| format!("{:?}{}", r.headers, String::from_utf8_lossy(&r.body)).into_bytes())
        .collect();
    assert!(!delivered.is_empty(), "the app received deliveries");
    assert_eq!(canary_hits(&delivered, &CANARIES), 0, "a secret reached the app in a webhook delivery");
    // The provider, and only the provider, received the credentials.
    assert!(fake.all().iter().any(|r| r.header("authorization").is_some_and(|a| a.contains(C_VAPI))));
}

#[tokio::test]
async fn the_master_key_variable_is_wiped_from_the_process_environment() {
    // 32 bytes whose base64 is a recognisable canary.
    let key = base64::engine::general_purpose::STANDARD.encode(b"CANARYmasterKeyInTheEnvironment!");
    let mut d =
        Daemon::new(DaemonConfig { env: vec![("KEYWARD_MASTER_KEY".into(), key.clone())], ..DaemonConfig::default() });
    d.start();
    let (s, _) =
        d.admin("PUT", "/v1/tenants/acme/credentials/vapi", Some(r#"{"api_key":"k-000000000000000000"}"#)).await;
    assert_eq!(s, 200, "the key from the environment works");
    let environ = std::fs::read(format!("/proc/{}/environ", d.pid())).unwrap();
    assert!(!environ.is_empty(), "the daemon's environment is readable here (as root)");
    assert_eq!(
        environ.windows(key.len()).filter(|w| *w == key.as_bytes()).count(),
        0,
        "the key is gone from /proc/PID/environ"
    );
    assert!(d.logs().contains("master key variable removed from the environment"));
}
