//! End-to-end: Google inside keyward: the token manager (single-flight refresh, retries,
//! revocation, rotation), the 401 retry, the connect flow with PKCE, and revocation on
//! delete, against a local fake of Google's token, revoke, auth and Calendar endpoints.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, clippy::result_large_err)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::fake::*;
use common::*;
use serde_json::json;
use sha2::Digest;

const REFRESH: &str = "1//CANARYrefreshToken000000000000001";
const CLIENT_SECRET: &str = "CANARYgoogleClientSecret000000002";

/// What the fake token endpoint does next.
#[derive(Clone, Debug)]
enum Mode {
    Ok,
    Rotate(String),
    InvalidGrant,
    Fail(u16, u32),
    Garbage,
    EmptyToken,
    Hang,
}

#[derive(Default)]
struct GoogleState {
    mode: Mutex<Option<Mode>>,
    token_calls: AtomicU32,
    issued: Mutex<Vec<String>>,
    refresh_tokens_seen: Mutex<Vec<String>>,
    /// Tokens the Calendar API refuses once (to test the 401 retry).
    refuse: Mutex<Vec<String>>,
    challenges: Mutex<HashMap<String, String>>,
    revoked: Mutex<Vec<String>>,
}

fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn fake_google(st: Arc<GoogleState>) -> Handler {
    Arc::new(move |r: Recorded| {
        let st = st.clone();
        Box::pin(async move {
            let path = r.path_and_query.split('?').next().unwrap().to_string();
            match (r.method.as_str(), path.as_str()) {
                ("POST", "/token") => {
                    let n = st.token_calls.fetch_add(1, Ordering::SeqCst) + 1;
                    let f = form(&r.body);
                    if f.get("grant_type").map(String::as_str) == Some("authorization_code") {
                        let code = f.get("code").cloned().unwrap_or_default();
                        let verifier = f.get("code_verifier").cloned().unwrap_or_default();
                        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .encode(sha2::Sha256::digest(verifier.as_bytes()));
                        let expected = st.challenges.lock().unwrap().get(&code).cloned();
                        if expected.as_deref() != Some(challenge.as_str()) {
                            return json_response(
                                400,
                                r#"{"error":"invalid_grant","error_description":"PKCE verification failed"}"#,
                            );
                        }
                        return json_response(200, &json!({"access_token": "ya29.connected", "expires_in": 3599, "refresh_token": "1//CANARYconnectedRefresh0000000003"}).to_string());
                    }
                    st.refresh_tokens_seen.lock().unwrap().push(f.get("refresh_token").cloned().unwrap_or_default());
                    // Let concurrent callers pile up behind the first refresh.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    let mode = st.mode.lock().unwrap().clone().unwrap_or(Mode::Ok);
                    let token = format!("ya29.token-{n}");
                    match mode {
                        Mode::Ok => {
                            st.issued.lock().unwrap().push(token.clone());
                            json_response(
                                200,
                                &json!({"access_token": token, "expires_in": "3599", "token_type": "Bearer"})
                                    .to_string(),
                            )
                        }
                        Mode::Rotate(new) => {
                            st.issued.lock().unwrap().push(token.clone());
                            *st.mode.lock().unwrap() = Some(Mode::Ok);
                            json_response(
                                200,
                                &json!({"access_token": token, "expires_in": 3599, "refresh_token": new}).to_string(),
                            )
                        }
                        Mode::InvalidGrant => json_response(
                            400,
                            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
                        ),
                        Mode::Fail(code, left) => {
                            if left <= 1 {
                                *st.mode.lock().unwrap() = Some(Mode::Ok);
                            } else {
                                *st.mode.lock().unwrap() = Some(Mode::Fail(code, left - 1));
                            }
                            json_response(code, r#"{"error":"server_error"}"#)
                        }
                        Mode::Garbage => json_response(200, "<html>surprise</html>"),
                        Mode::EmptyToken => json_response(200, r#"{"access_token":"","expires_in":3599}"#),
                        Mode::Hang => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            json_response(200, "{}")
                        }
                    }
                }
                ("POST", "/revoke") => {
                    st.revoked.lock().unwrap().push(form(&r.body).get("token").cloned().unwrap_or_default());
                    json_response(200, "{}")
                }
                (_, p) if p.starts_with("/calendar/v3/") => {
                    let auth = r.header("authorization").unwrap_or_default();
                    let token = auth.trim_start_matches("Bearer ").to_string();
                    let refused = {
                        let mut refuse = st.refuse.lock().unwrap();
                        let before = refuse.len();
                        refuse.retain(|t| t != &token);
                        before != refuse.len()
                    };
                    if refused || !st.issued.lock().unwrap().contains(&token) {
                        return json_response(401, r#"{"error":{"code":401,"message":"Invalid Credentials"}}"#);
                    }
                    json_response(200, r#"{"items":[{"id":"primary"}]}"#)
                }
                _ => json_response(404, "{}"),
            }
        })
    })
}

struct Env {
    tmp: tempfile::TempDir,
    pki: Pki,
    d: Daemon,
    google: FakeProvider,
    st: Arc<GoogleState>,
}

/// A daemon whose Google endpoints point at the fake (on PostgreSQL when `pg` is set).
fn google_daemon(
    pki: &Pki,
    google: &FakeProvider,
    request_timeout: &str,
    pg: Option<(&str, Option<std::path::PathBuf>)>,
) -> Daemon {
    Daemon::new(DaemonConfig {
        app: Some(String::new()),
        pg_url: pg.as_ref().map(|p| p.0.to_string()),
        master_key_file: pg.and_then(|p| p.1),
        extra: format!(
            "[webhooks]\nlisten = \"127.0.0.1:0\"\npublic_base_url = \"https://hooks.test\"\nforward_to = \"http://127.0.0.1:9\"\n\
             [upstream]\nextra_ca = \"{}\"\nrequest_timeout = \"{request_timeout}\"\n\
             [providers.google]\nbase_url = \"{u}\"\ntoken_url = \"{u}/token\"\nauth_url = \"{u}/auth\"\nrevoke_url = \"{u}/revoke\"\n",
            pki.ca_pem.display(),
            u = google.url
        ),
        ..DaemonConfig::default()
    })
}

/// `in_process`: the daemon runs on the test's runtime (its timers follow
/// `tokio::time::pause`); otherwise the real binary, for tests that read its log.
async fn env_on(request_timeout: &str, pg: Option<&str>, in_process: bool) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let st = Arc::new(GoogleState::default());
    let google = FakeProvider::with_handler(&pki, fake_google(st.clone())).await;
    let mut d = google_daemon(&pki, &google, request_timeout, pg.map(|u| (u, None)));
    if in_process {
        d.start_in_process().await;
    } else {
        d.start();
    }
    let (s, v) = d
        .admin(
            "PUT",
            "/v1/tenants/acme/credentials/google",
            Some(&json!({"client_id": "c.apps.googleusercontent.com", "client_secret": CLIENT_SECRET, "refresh_token": REFRESH, "scopes": ["https://www.googleapis.com/auth/calendar"], "webhook_secret": "CANARYchannelToken0000000000004"}).to_string()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    Env { tmp, pki, d, google, st }
}

async fn env(request_timeout: &str) -> Env {
    env_on(request_timeout, None, true).await
}

/// Calls the Google connect callback on `d`'s webhook listener: (status, page).
async fn callback(d: &Daemon, query: String) -> (u16, String) {
    let s = tokio::net::TcpStream::connect(d.addr("webhooks")).await.unwrap();
    let (st, _, body) =
        http_full(hyper_util::rt::TokioIo::new(s), "GET", &format!("/oauth/google/callback?{query}"), None, &[]).await;
    (st, String::from_utf8(body).unwrap())
}

const CAL: &str = "/google/calendar/v3/users/me/calendarList";

#[tokio::test]
async fn a_thousand_concurrent_requests_cause_exactly_one_token_call() {
    // The binary: this test reads the daemon's log for leaks.
    let e = env_on("10s", None, false).await;
    let sock = e.d.app_sock();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let sock = sock.clone();
            tokio::spawn(async move {
                let s = tokio::net::UnixStream::connect(sock).await.unwrap();
                http_full(hyper_util::rt::TokioIo::new(s), "GET", CAL, None, &[("keyward-tenant", "acme")]).await.0
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(e.st.token_calls.load(Ordering::SeqCst), 1, "one refresh for the whole burst");
    assert_eq!(e.st.refresh_tokens_seen.lock().unwrap()[0], REFRESH);
    // The token lives in memory: the next call reuses it.
    let (s, _, _) = e.d.app("GET", CAL, &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200);
    assert_eq!(e.st.token_calls.load(Ordering::SeqCst), 1);
    let logs = e.d.logs();
    assert_eq!(canary_hits(logs.as_bytes(), &[REFRESH, CLIENT_SECRET]), 0);
    assert!(!logs.contains("ya29.token"), "no access token in the log");
}

#[tokio::test]
async fn invalid_grant_revokes_the_credential_and_later_calls_do_not_reach_google() {
    let e = env("10s").await;
    *e.st.mode.lock().unwrap() = Some(Mode::InvalidGrant);
    let (s, h, body) = e.d.app("GET", CAL, &[("keyward-tenant", "acme")], None).await;
    assert_eq!(
        (s, h["keyward-error"].to_str().unwrap()),
        (403, "credential_revoked"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let calls = e.st.token_calls.load(Ordering::SeqCst);
    assert_eq!(calls, 1, "invalid_grant is not retried");
    let (_, v) = e.d.admin("GET", "/v1/tenants/acme/credentials/google", None).await;
    assert_eq!(v["status"], "revoked");
    assert!(v["last_error"].as_str().unwrap().contains("invalid_grant"), "{v}");
    let (s, h, _) = e.d.app("GET", CAL, &[("keyward-tenant", "acme")], None).await;
    assert_eq!((s, h["keyward-error"].to_str().unwrap()), (403, "credential_revoked"));
    assert_eq!(e.st.token_calls.load(Ordering::SeqCst), calls, "answered at once, without calling Google");
    let (_, audit) = e.d.admin("GET", "/v1/audit?limit=100", None).await;
    assert!(audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["action"] == "credential.check" && x["tenant"] == "acme"));
}

#[tokio::test]
async fn a_rotated_refresh_token_is_stored_before_it_is_used() {
    let e = env("10s").await;
    let new = "1//CANARYrotatedRefresh000000000005";
    *e.st.mode.lock().unwrap() = Some(Mode::Rotate(new.to_string()));
    let (_, before) = e.d.admin("GET", "/v1/tenants/acme/credentials/google", None).await;
    let (s, _, _) = e.d.app("GET", CAL, &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200);
    let (_, after) = e.d.admin("GET", "/v1/tenants/acme/credentials/google", None).await;
    assert!(after["version"].as_u64() > before["version"].as_u64());
    assert_eq!(after["hints"]["refresh_token"], "…0005");
    // Force another refresh: the new token is the one sent.
    e.st.issued.lock().unwrap().clear();
    let (s, _, _) = e.d.app("GET", CAL, &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200, "the 401 retry refreshed");
    assert_eq!(e.st.refresh_tokens_seen.lock().unwrap().last().unwrap(), new);
}

#[tokio::test]
async fn transient_failures_are_retried_and_bad_answers_get_clear_errors() {
    // In-process, but with the clock running: the token client resolves and connects on
    // tokio's blocking pool, which a paused clock does not wait for (its timeouts would
    // fire early).
    let e = env("1s").await;
    *e.st.mode.lock().unwrap() = Some(Mode::Fail(503, 2));
    let (s, _, _) = e.d.app("GET", CAL, &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200, "two 503s, then success on the third attempt");
    assert_eq!(e.st.token_calls.load(Ordering::SeqCst), 3);

    for (mode, code) in [
        (Mode::Garbage, "upstream_connect_failed"),
        (Mode::EmptyToken, "upstream_connect_failed"),
        (Mode::Fail(500, 9), "upstream_connect_failed"),
        (Mode::Hang, "upstream_timeout"),
    ] {
        e.d.admin("POST", "/v1/tenants/acme/credentials/google/verify", None).await;
        e.st.issued.lock().unwrap().clear();
        *e.st.mode.lock().unwrap() = Some(mode.clone());
        let (s, h, body) = e.d.app("GET", CAL, &[("keyward-tenant", "acme")], None).await;
        assert_eq!(
            h.get("keyward-error").map(|v| v.to_str().unwrap()),
            Some(code),
            "{mode:?}: {s} {}",
            String::from_utf8_lossy(&body)
        );
        let (_, v) = e.d.admin("GET", "/v1/tenants/acme/credentials/google", None).await;
        assert_eq!(v["status"], "active", "{mode:?}: a failed refresh leaves the status");
        assert!(v["last_error"].is_string(), "{mode:?}: {v}");
        assert_eq!(canary_hits(&body, &[REFRESH, CLIENT_SECRET]), 0);
    }
}

#[tokio::test]
async fn a_401_from_google_refreshes_once_and_retries_get_requests() {
    let e = env("10s").await;
    let (s, _, _) = e.d.app("GET", CAL, &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200);
    let first = e.st.issued.lock().unwrap()[0].clone();
    e.st.refuse.lock().unwrap().push(first);
    let (s, _, _) = e.d.app("GET", CAL, &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200, "refreshed and retried");
    assert_eq!(e.st.token_calls.load(Ordering::SeqCst), 2);
    // A POST with a body is not retried: the 401 goes back to the app.
    let second = e.st.issued.lock().unwrap()[1].clone();
    e.st.refuse.lock().unwrap().push(second);
    let (s, _, _) =
        e.d.app(
            "POST",
            "/google/calendar/v3/calendars/primary/events",
            &[("keyward-tenant", "acme"), ("content-type", "application/json")],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn the_connect_flow_stores_a_refresh_token_with_pkce_and_single_use_state() {
    let e = env("10s").await;
    // A tenant whose credential waits for the connect flow.
    let (s, v) = e.d.admin("PUT", "/v1/tenants/initech/credentials/google", Some(&json!({"client_id": "c2.apps.googleusercontent.com", "client_secret": CLIENT_SECRET, "scopes": ["s1", "s2"]}).to_string())).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("inactive")));
    let (s, h, _) = e.d.app("GET", CAL, &[("keyward-tenant", "initech")], None).await;
    assert_eq!((s, h["keyward-error"].to_str().unwrap()), (403, "credential_inactive"));

    let (s, v) = e.d.admin("POST", "/v1/tenants/initech/oauth/google/start", None).await;
    assert_eq!(s, 200, "{v}");
    let auth = url::Url::parse(v["authorization_url"].as_str().unwrap()).unwrap();
    assert!(auth.as_str().starts_with(&format!("{}/auth?", e.google.url)));
    let q: HashMap<String, String> = auth.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "c2.apps.googleusercontent.com");
    assert_eq!(q["redirect_uri"], "https://hooks.test/oauth/google/callback");
    assert_eq!(q["scope"], "s1 s2");
    assert_eq!(
        (q["access_type"].as_str(), q["prompt"].as_str(), q["code_challenge_method"].as_str()),
        ("offline", "consent", "S256")
    );
    let state = q["state"].clone();
    // Google "remembers" the challenge for the code it will hand out.
    e.st.challenges.lock().unwrap().insert("the-code".into(), q["code_challenge"].clone());

    let cb = |query: String| callback(&e.d, query);
    let (s, page) = cb(format!("code=the-code&state={state}")).await;
    assert_eq!(s, 200, "{page}");
    assert!(page.contains("connected for tenant initech"));
    let (_, v) = e.d.admin("GET", "/v1/tenants/initech/credentials/google", None).await;
    assert_eq!(v["status"], "active");
    assert_eq!(v["hints"]["refresh_token"], "…0003");

    // The same state again, a missing one, and a made-up one: all refused, nothing stored.
    for (query, needle) in [
        (format!("code=the-code&state={state}"), "already used"),
        ("code=the-code".to_string(), "no state"),
        ("code=the-code&state=forged-state-value".to_string(), "unknown"),
    ] {
        let (s, page) = cb(query).await;
        assert_eq!(s, 400);
        assert!(page.contains(needle), "{page}");
    }
    // A wrong PKCE verifier (the code was issued for another challenge) fails the exchange.
    let (_, v) = e.d.admin("POST", "/v1/tenants/initech/oauth/google/start", None).await;
    let q: HashMap<String, String> =
        url::Url::parse(v["authorization_url"].as_str().unwrap()).unwrap().query_pairs().into_owned().collect();
    e.st.challenges.lock().unwrap().insert("code-2".into(), "not-the-challenge".into());
    let (s, page) = cb(format!("code=code-2&state={}", q["state"])).await;
    assert_eq!(s, 400);
    assert!(page.contains("code exchange failed"), "{page}");
    assert_eq!(canary_hits(page.as_bytes(), &[CLIENT_SECRET]), 0);
}

#[tokio::test]
async fn deleting_the_google_credential_revokes_the_token_at_google() {
    let e = env("10s").await;
    let (s, _) = e.d.admin("DELETE", "/v1/tenants/acme/credentials/google", None).await;
    assert_eq!(s, 200);
    assert_eq!(e.st.revoked.lock().unwrap().as_slice(), [REFRESH.to_string()]);
    let (_, audit) = e.d.admin("GET", "/v1/audit?limit=100", None).await;
    let entry =
        audit["entries"].as_array().unwrap().iter().find(|x| x["action"] == "oauth.google.revoke").cloned().unwrap();
    assert_eq!(entry["result"], "ok");
    assert_eq!(canary_hits(audit.to_string().as_bytes(), &[REFRESH]), 0);
}

/// Fleet mode: sidecars on one PostgreSQL store refresh a tenant's token once between them
/// (advisory lock + the sealed token shared in `keyward_tokens`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_refreshes_a_tenants_token_once_and_shares_it_sealed() {
    let Some(admin) = pg_admin_url() else { return };
    let db = fresh_pg_db(&admin).await;
    let e = env_on("10s", Some(&db), false).await;
    let mut b = google_daemon(&e.pki, &e.google, "10s", Some((&db, e.d.config.master_key_file.clone())));
    b.start();
    let _ = &e.tmp;
    // Both sidecars at once, 100 requests each.
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let sock = if i % 2 == 0 { e.d.app_sock() } else { b.app_sock() };
            tokio::spawn(async move {
                let s = tokio::net::UnixStream::connect(sock).await.unwrap();
                http_full(hyper_util::rt::TokioIo::new(s), "GET", CAL, None, &[("keyward-tenant", "acme")]).await.0
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(e.st.token_calls.load(Ordering::SeqCst), 1, "one refresh for the whole fleet");
    // The shared copy is sealed: neither the token nor the refresh token is in PostgreSQL.
    let out = std::process::Command::new("pg_dump").arg(&db).output().expect("pg_dump");
    assert!(String::from_utf8_lossy(&out.stdout).contains("keyward_tokens"));
    assert_eq!(canary_hits(&out.stdout, &["ya29.token-1", REFRESH, CLIENT_SECRET]), 0);
    // Google refuses the token on b: b drops the shared copy and refreshes once; a keeps
    // working with its cached token.
    e.st.refuse.lock().unwrap().push("ya29.token-1".into());
    let (s, _, _) = b.app("GET", CAL, &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200);
    assert_eq!(e.st.token_calls.load(Ordering::SeqCst), 2, "the refused token was not reused");
    let (s, _, _) = e.d.app("GET", CAL, &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200);
    assert_eq!(e.st.token_calls.load(Ordering::SeqCst), 2);
}

/// Fleet mode: a connect flow started on one sidecar completes on another (the state is
/// single use fleet-wide) and PostgreSQL holds neither the state nor the verifier in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_flow_started_on_one_sidecar_completes_on_another() {
    let Some(admin) = pg_admin_url() else { return };
    let db = fresh_pg_db(&admin).await;
    let e = env_on("10s", Some(&db), false).await;
    let mut b = google_daemon(&e.pki, &e.google, "10s", Some((&db, e.d.config.master_key_file.clone())));
    b.start();
    let fields =
        json!({"client_id": "c2.apps.googleusercontent.com", "client_secret": CLIENT_SECRET, "scopes": ["s1"]});
    let (s, _) = e.d.admin("PUT", "/v1/tenants/initech/credentials/google", Some(&fields.to_string())).await;
    assert_eq!(s, 200);
    let (s, v) = e.d.admin("POST", "/v1/tenants/initech/oauth/google/start", None).await;
    assert_eq!(s, 200, "{v}");
    let q: HashMap<String, String> =
        url::Url::parse(v["authorization_url"].as_str().unwrap()).unwrap().query_pairs().into_owned().collect();
    e.st.challenges.lock().unwrap().insert("fleet-code".into(), q["code_challenge"].clone());
    let dump = std::process::Command::new("pg_dump").arg(&db).output().expect("pg_dump").stdout;
    assert!(String::from_utf8_lossy(&dump).contains("keyward_connect"));
    assert_eq!(canary_hits(&dump, &[q["state"].as_str()]), 0, "the state is stored hashed");
    let (s, page) = callback(&b, format!("code=fleet-code&state={}", q["state"])).await;
    assert_eq!(s, 200, "{page}");
    let (_, v) = e.d.admin("GET", "/v1/tenants/initech/credentials/google", None).await;
    assert_eq!(v["status"], "active", "{v}");
    // The same state on the sidecar that issued it: already used.
    let (s, page) = callback(&e.d, format!("code=fleet-code&state={}", q["state"])).await;
    assert_eq!(s, 400);
    assert!(page.contains("already used"), "{page}");
}

#[tokio::test]
async fn a_failing_refresh_is_one_attempt_and_one_audit_entry_however_many_requests_wait() {
    let e = env("10s").await;
    let (_, head) = e.d.admin("GET", "/v1/audit?limit=0", None).await;
    let after = head["head"].as_u64().unwrap();
    *e.st.mode.lock().unwrap() = Some(Mode::Fail(500, 1000));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let sock = e.d.app_sock();
        tasks.push(tokio::spawn(async move {
            let s = tokio::net::UnixStream::connect(sock).await.unwrap();
            let (_, h, _) =
                http_full(hyper_util::rt::TokioIo::new(s), "GET", CAL, None, &[("keyward-tenant", "acme")]).await;
            h.get("keyward-error").map(|v| v.to_str().unwrap().to_string())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().as_deref(), Some("upstream_connect_failed"));
    }
    // A request right after is answered from the short negative cache.
    let (_, h, _) = e.d.app("GET", CAL, &[("keyward-tenant", "acme")], None).await;
    assert_eq!(h["keyward-error"], "upstream_connect_failed");
    assert_eq!(e.st.token_calls.load(Ordering::SeqCst), 3, "one refresh (three attempts) for nine requests");
    let (_, page) = e.d.admin("GET", &format!("/v1/audit?after={after}&limit=100"), None).await;
    let checks = page["entries"].as_array().unwrap().iter().filter(|x| x["action"] == "credential.check").count();
    assert_eq!(checks, 1, "{page}");
}

#[tokio::test]
async fn a_token_refresh_is_a_client_span_under_the_request_that_needed_it() {
    use common::otlp::*;
    let tmp = tempfile::tempdir().unwrap();
    let Some(receiver) = Receiver::start(tmp.path()) else { return };
    let pki = Pki::new(tmp.path());
    let st = Arc::new(GoogleState::default());
    let google = FakeProvider::with_handler(&pki, fake_google(st.clone())).await;
    let mut d = google_daemon(&pki, &google, "10s", None);
    d.config.extra.push_str(&format!("[telemetry]\notlp_endpoint = \"http://127.0.0.1:{}\"\n", receiver.port));
    d.config.env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    d.write_config();
    d.start();
    let cred = json!({"client_id": "c.apps.googleusercontent.com", "client_secret": CLIENT_SECRET, "refresh_token": REFRESH, "scopes": ["https://www.googleapis.com/auth/calendar"]});
    let (s, v) = d.admin("PUT", "/v1/tenants/acme/credentials/google", Some(&cred.to_string())).await;
    assert_eq!(s, 200, "{v}");
    let (s, _, _) = d.app("GET", CAL, &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200);
    d.stop();
    let spans = wait_for(&receiver, 4).await;
    let proxy = named(&spans, "keyward.proxy");
    assert_eq!(proxy.len(), 1, "{spans:#?}");
    let refresh = child_of(&spans, proxy[0], "keyward.oauth.refresh");
    assert_eq!(refresh["kind"].as_i64(), Some(3), "a client span");
    assert_eq!(
        (attr(refresh, "keyward.provider"), attr(refresh, "keyward.tenant")),
        (&json!("google"), &json!("acme"))
    );
    assert_eq!(refresh["status"].as_i64(), Some(0), "unset: it worked");
    child_of(&spans, proxy[0], "keyward.upstream");
    let raw = receiver.raw();
    assert_eq!(canary_hits(&raw, &[REFRESH, CLIENT_SECRET]), 0);
    assert!(!String::from_utf8_lossy(&raw).contains("ya29."), "no access token in a span");
}
