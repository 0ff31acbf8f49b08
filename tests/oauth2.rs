//! End-to-end: OAuth 2.0 providers declared in config (CONTRACT.md §8.3, PROVIDERS-2.md §9).
//! One fake authorization server per preset, enforcing that provider's rules the way
//! PROVIDERS-2.md §9 describes them: client authentication (Basic or in the body), PKCE
//! S256, single-use codes, refresh-token rotation (reused, a new one with the old still
//! valid, or single-use), camelCase answers, Salesforce's instance_url, Microsoft's
//! scopes on refresh, and each revocation form. keyward connects a tenant, refreshes,
//! survives a rotation, checks live and revokes on delete, through real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, clippy::result_large_err)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::fake::*;
use common::*;
use serde_json::{json, Value};
use sha2::Digest;

const CLIENT_ID: &str = "client-1";
const CLIENT_SECRET: &str = "CANARYoauthClientSecret0000000001";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rotation {
    /// The refresh token is long-lived and never replaced (HubSpot).
    Reuse,
    /// Each refresh returns a new one; the old one stays valid (Microsoft).
    NewKeepOld,
    /// Each refresh returns a new one and the used one dies at once (Calendly, Zoom).
    SingleUse,
}

#[derive(Clone, Copy, Debug)]
struct Behaviour {
    basic: bool,
    pkce: bool,
    rotation: Rotation,
    camel: bool,
    instance_url: bool,
    scope_on_refresh: bool,
    /// Where the token endpoint is (Microsoft's has the directory in it).
    token_path: &'static str,
}

/// A provider's authorization server and API in one.
struct AuthServer {
    b: Behaviour,
    url: Mutex<String>,
    codes: Mutex<HashMap<String, (Option<String>, String)>>,
    refresh_valid: Mutex<HashSet<String>>,
    access_valid: Mutex<HashSet<String>>,
    refuse_once: Mutex<Vec<String>>,
    refreshes: AtomicU32,
    refresh_seen: Mutex<Vec<String>>,
    issued_refresh: Mutex<Vec<String>>,
    forms: Mutex<Vec<HashMap<String, String>>>,
    revoked: Mutex<Vec<(String, String, HashMap<String, String>, Option<String>)>>,
    api_hits: Mutex<Vec<String>>,
    n: AtomicU32,
}

impl AuthServer {
    fn new(b: Behaviour) -> Arc<AuthServer> {
        Arc::new(AuthServer {
            b,
            url: Mutex::default(),
            codes: Mutex::default(),
            refresh_valid: Mutex::default(),
            access_valid: Mutex::default(),
            refuse_once: Mutex::default(),
            refreshes: AtomicU32::new(0),
            refresh_seen: Mutex::default(),
            issued_refresh: Mutex::default(),
            forms: Mutex::default(),
            revoked: Mutex::default(),
            api_hits: Mutex::default(),
            n: AtomicU32::new(0),
        })
    }

    /// The user consents: a code bound to the flow's PKCE challenge and redirect URI.
    fn consent(&self, challenge: Option<String>, redirect: &str) -> String {
        let code = format!("code-{}", self.n.fetch_add(1, Ordering::SeqCst));
        self.codes.lock().unwrap().insert(code.clone(), (challenge, redirect.to_string()));
        code
    }

    fn grant(&self, with_refresh: bool) -> Value {
        let i = self.n.fetch_add(1, Ordering::SeqCst);
        let access = format!("at-{i}");
        self.access_valid.lock().unwrap().insert(access.clone());
        let refresh = with_refresh.then(|| {
            let r = format!("CANARYrefresh{i:020}");
            self.refresh_valid.lock().unwrap().insert(r.clone());
            self.issued_refresh.lock().unwrap().push(r.clone());
            r
        });
        let mut v = if self.b.camel {
            json!({"accessToken": access, "expiresIn": 1800, "tokenType": "bearer"})
        } else {
            json!({"access_token": access, "expires_in": 3600, "token_type": "Bearer"})
        };
        if let Some(r) = refresh {
            v[if self.b.camel { "refreshToken" } else { "refresh_token" }] = Value::String(r);
        }
        if self.b.instance_url {
            v["instance_url"] = Value::String(self.url.lock().unwrap().clone());
            v.as_object_mut().unwrap().remove("expires_in"); // Salesforce sends none
        }
        v
    }

    fn client_ok(&self, r: &Recorded, f: &HashMap<String, String>) -> bool {
        let basic = format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")));
        if self.b.basic {
            r.header("authorization").as_deref() == Some(basic.as_str()) && !f.contains_key("client_secret")
        } else {
            r.header("authorization").is_none()
                && f.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                && f.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
        }
    }

    async fn token(&self, r: &Recorded) -> hyper::Response<FakeBody> {
        let f: HashMap<String, String> = url::form_urlencoded::parse(&r.body).into_owned().collect();
        self.forms.lock().unwrap().push(f.clone());
        let grant = f.get("grant_type").cloned().unwrap_or_default();
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer" {
            return json_response(200, &self.grant(false).to_string());
        }
        if !self.client_ok(r, &f) {
            return json_response(401, r#"{"error":"invalid_client"}"#);
        }
        match grant.as_str() {
            "authorization_code" => {
                let code = f.get("code").cloned().unwrap_or_default();
                let Some((challenge, redirect)) = self.codes.lock().unwrap().remove(&code) else {
                    return json_response(
                        400,
                        r#"{"error":"invalid_grant","error_description":"code used or unknown"}"#,
                    );
                };
                if f.get("redirect_uri") != Some(&redirect) {
                    return json_response(400, r#"{"error":"invalid_grant","error_description":"redirect_uri"}"#);
                }
                if let Some(c) = challenge {
                    let v = f.get("code_verifier").cloned().unwrap_or_default();
                    if URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(v.as_bytes())) != c {
                        return json_response(400, r#"{"error":"invalid_grant","error_description":"PKCE"}"#);
                    }
                }
                json_response(200, &self.grant(true).to_string())
            }
            "refresh_token" => {
                self.refreshes.fetch_add(1, Ordering::SeqCst);
                let old = f.get("refresh_token").cloned().unwrap_or_default();
                self.refresh_seen.lock().unwrap().push(old.clone());
                // Concurrent callers pile up behind the first refresh.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if self.b.scope_on_refresh
                    && !f.get("scope").is_some_and(|s| s.split(' ').any(|x| x == "offline_access"))
                {
                    return json_response(400, r#"{"error":"invalid_scope","error_description":"scope missing"}"#);
                }
                let live = match self.b.rotation {
                    Rotation::SingleUse => self.refresh_valid.lock().unwrap().remove(&old),
                    _ => self.refresh_valid.lock().unwrap().contains(&old),
                };
                if !live {
                    return json_response(
                        400,
                        r#"{"error":"invalid_grant","error_description":"refresh token spent"}"#,
                    );
                }
                json_response(200, &self.grant(self.b.rotation != Rotation::Reuse).to_string())
            }
            "account_credentials" if f.get("account_id").map(String::as_str) == Some("acct-1") => {
                json_response(200, &self.grant(false).to_string())
            }
            _ => json_response(400, r#"{"error":"unsupported_grant_type"}"#),
        }
    }

    fn api(&self, r: &Recorded) -> hyper::Response<FakeBody> {
        let token = r.header("authorization").unwrap_or_default().trim_start_matches("Bearer ").to_string();
        self.api_hits.lock().unwrap().push(token.clone());
        let refused = {
            let mut refuse = self.refuse_once.lock().unwrap();
            let before = refuse.len();
            refuse.retain(|t| t != &token);
            before != refuse.len()
        };
        if refused || !self.access_valid.lock().unwrap().contains(&token) {
            return json_response(401, r#"{"error":"invalid_token"}"#);
        }
        json_response(200, r#"{"ok":true}"#)
    }
}

fn handler(st: Arc<AuthServer>) -> Handler {
    Arc::new(move |r: Recorded| {
        let st = st.clone();
        Box::pin(async move {
            let path = r.path_and_query.split('?').next().unwrap().to_string();
            if r.method == "POST" && path == st.b.token_path {
                return st.token(&r).await;
            }
            if path.contains("revoke") || path.starts_with("/oauth/v1/refresh-tokens/") {
                let f: HashMap<String, String> = url::form_urlencoded::parse(&r.body).into_owned().collect();
                st.revoked.lock().unwrap().push((r.method.clone(), path, f, r.header("authorization")));
                return json_response(200, "{}");
            }
            st.api(&r)
        })
    })
}

/// One preset under test: its provider name in config, its fake and what to check.
struct Case {
    name: &'static str,
    preset: &'static str,
    b: Behaviour,
    /// The revocation the provider expects: method, path.
    revoke: Option<(&'static str, &'static str)>,
    extra_fields: Value,
}

fn cases() -> Vec<Case> {
    let b = |basic, pkce, rotation, token_path| Behaviour {
        basic,
        pkce,
        rotation,
        camel: false,
        instance_url: false,
        scope_on_refresh: false,
        token_path,
    };
    vec![
        Case {
            name: "outlook",
            preset: "microsoft",
            b: Behaviour {
                scope_on_refresh: true,
                ..b(false, true, Rotation::NewKeepOld, "/contoso.onmicrosoft.com/oauth2/v2.0/token")
            },
            revoke: None,
            extra_fields: json!({"directory": "contoso.onmicrosoft.com", "scopes": ["https://graph.microsoft.com/Calendars.ReadWrite"]}),
        },
        Case {
            name: "hubspot",
            preset: "hubspot",
            b: Behaviour { camel: true, ..b(false, true, Rotation::Reuse, "/oauth/v3/token") },
            revoke: Some(("DELETE", "/oauth/v1/refresh-tokens/")),
            extra_fields: json!({"scopes": ["crm.objects.contacts.read"]}),
        },
        Case {
            name: "salesforce",
            preset: "salesforce",
            b: Behaviour { instance_url: true, ..b(false, true, Rotation::SingleUse, "/services/oauth2/token") },
            revoke: Some(("POST", "/services/oauth2/revoke")),
            extra_fields: json!({"scopes": ["api", "refresh_token"]}),
        },
        Case {
            name: "calendly",
            preset: "calendly",
            b: b(true, false, Rotation::SingleUse, "/oauth/token"),
            revoke: Some(("POST", "/oauth/revoke")),
            extra_fields: json!({}),
        },
        Case {
            name: "zoom",
            preset: "zoom",
            b: b(true, true, Rotation::SingleUse, "/oauth/token"),
            revoke: Some(("POST", "/oauth/revoke")),
            extra_fields: json!({"scopes": ["meeting:write"]}),
        },
    ]
}

/// The `[providers.*]` section pointing a preset at its fake.
fn section(c: &Case, u: &str) -> String {
    let auth = if c.preset == "microsoft" { "{directory}/oauth2/v2.0/authorize" } else { "authorize" };
    let token = if c.preset == "microsoft" {
        "{directory}/oauth2/v2.0/token".to_string()
    } else {
        c.b.token_path[1..].to_string()
    };
    let revoke = match c.revoke {
        Some((_, p)) => format!(", revoke_url = \"{u}{}\"", p.trim_end_matches('/')),
        None => String::new(),
    };
    format!(
        "[providers.{n}]\nbase_url = \"{u}\"\noauth2 = {{ preset = \"{p}\", auth_url = \"{u}/{auth}\", token_url = \"{u}/{token}\"{revoke} }}\n",
        n = c.name,
        p = c.preset
    )
}

fn daemon(pki: &Pki, sections: &str, pg: Option<String>) -> Daemon {
    Daemon::new(DaemonConfig {
        app: Some(String::new()),
        pg_url: pg,
        extra: format!(
            "[webhooks]\nlisten = \"127.0.0.1:0\"\npublic_base_url = \"https://hooks.test\"\nforward_to = \"http://127.0.0.1:9\"\n\
             [upstream]\nextra_ca = \"{}\"\n{sections}",
            pki.ca_pem.display()
        ),
        ..DaemonConfig::default()
    })
}

async fn callback(d: &Daemon, provider: &str, query: &str) -> (u16, String) {
    let s = tokio::net::TcpStream::connect(d.addr("webhooks")).await.unwrap();
    let path = format!("/oauth/{provider}/callback?{query}");
    let (st, _, body) = http_full(hyper_util::rt::TokioIo::new(s), "GET", &path, None, &[]).await;
    (st, String::from_utf8(body).unwrap())
}

/// Puts the client credential, runs the connect flow as the tenant's user would, and
/// returns the flow's authorization URL parameters.
async fn connect(d: &Daemon, c: &Case, st: &AuthServer, tenant: &str) -> HashMap<String, String> {
    let mut fields = json!({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET});
    for (k, v) in c.extra_fields.as_object().unwrap() {
        fields[k] = v.clone();
    }
    let (s, v) =
        d.admin("PUT", &format!("/v1/tenants/{tenant}/credentials/{}", c.name), Some(&fields.to_string())).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("inactive")), "{}: {v}", c.name);
    let (s, v) = d.admin("POST", &format!("/v1/tenants/{tenant}/oauth/{}/start", c.name), None).await;
    assert_eq!(s, 200, "{}: {v}", c.name);
    let redirect = format!("https://hooks.test/oauth/{}/callback", c.name);
    assert_eq!(v["redirect_uri"], redirect.as_str());
    let url = url::Url::parse(v["authorization_url"].as_str().unwrap()).unwrap();
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!((q["response_type"].as_str(), q["client_id"].as_str()), ("code", CLIENT_ID), "{}", c.name);
    assert_eq!(q["redirect_uri"], redirect);
    assert_eq!(q.contains_key("code_challenge"), c.b.pkce, "{}: PKCE as the preset says", c.name);
    assert!(!q.contains_key("access_type"), "{}: Google's parameters stay Google's", c.name);
    let code = st.consent(q.get("code_challenge").cloned(), &redirect);
    let (s, page) = callback(d, c.name, &format!("code={code}&state={}", q["state"])).await;
    assert_eq!(s, 200, "{}: {page}", c.name);
    // The state was single use.
    let (s, page) = callback(d, c.name, &format!("code={code}&state={}", q["state"])).await;
    assert!(s == 400 && page.contains("already used"), "{}: {page}", c.name);
    q.into_iter().chain([("_path".to_string(), url.path().to_string())]).collect()
}

async fn get(d: &Daemon, provider: &str, tenant: &str) -> (u16, String) {
    let (s, h, body) = d.app("GET", &format!("/{provider}/api/thing"), &[("keyward-tenant", tenant)], None).await;
    let code = h.get("keyward-error").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&body).contains("CANARY"), "no secret in an answer");
    (s, code)
}

#[tokio::test]
async fn each_preset_connects_refreshes_survives_rotation_checks_live_and_revokes_its_own_way() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let mut fakes = Vec::new();
    let mut sections = String::new();
    for c in cases() {
        let st = AuthServer::new(c.b);
        let f = FakeProvider::with_handler(&pki, handler(st.clone())).await;
        *st.url.lock().unwrap() = f.url.clone();
        sections.push_str(&section(&c, &f.url));
        fakes.push((c, st, f));
    }
    let mut d = daemon(&pki, &sections, None);
    d.start_in_process().await;
    for (c, st, _f) in &fakes {
        let q = connect(&d, c, st, "acme").await;
        if c.preset == "microsoft" {
            assert_eq!(q["_path"], "/contoso.onmicrosoft.com/oauth2/v2.0/authorize", "directory filled in");
            assert_eq!(q["scope"], "offline_access https://graph.microsoft.com/Calendars.ReadWrite");
        }
        let (_, v) = d.admin("GET", &format!("/v1/tenants/acme/credentials/{}", c.name), None).await;
        assert_eq!(v["status"], "active", "{}: connected: {v}", c.name);
        let connected = st.issued_refresh.lock().unwrap()[0].clone();
        if c.b.instance_url {
            assert_eq!(v["fields"]["instance_url"], st.url.lock().unwrap().as_str(), "{v}");
        }

        // First call: keyward refreshes with the connected refresh token.
        assert_eq!(get(&d, c.name, "acme").await, (200, String::new()), "{}", c.name);
        assert_eq!(st.refresh_seen.lock().unwrap().clone(), vec![connected.clone()], "{}", c.name);
        if c.b.scope_on_refresh {
            let forms = st.forms.lock().unwrap();
            assert!(forms.last().unwrap()["scope"].contains("offline_access"), "{}", c.name);
        }
        // The provider revokes the access token early: a 401, one retry with a new token,
        // refreshed with the token the last refresh returned where the provider rotates.
        let current = st.api_hits.lock().unwrap().last().cloned().unwrap();
        st.refuse_once.lock().unwrap().push(current);
        assert_eq!(get(&d, c.name, "acme").await, (200, String::new()), "{}", c.name);
        let seen = st.refresh_seen.lock().unwrap().clone();
        let issued = st.issued_refresh.lock().unwrap().clone();
        let want = if c.b.rotation == Rotation::Reuse { connected.clone() } else { issued[1].clone() };
        assert_eq!(seen[1], want, "{}: the second refresh uses the right refresh token", c.name);
        // The stored credential holds the newest refresh token.
        let (_, v) = d.admin("GET", &format!("/v1/tenants/acme/credentials/{}", c.name), None).await;
        let newest = issued.last().unwrap();
        assert_eq!(v["hints"]["refresh_token"], format!("…{}", &newest[newest.len() - 4..]), "{}: {v}", c.name);
        assert!(!v.to_string().contains("CANARY"), "{}: no secret in the status", c.name);

        // A live check refreshes too (rotating the grant again) and stores the rotation
        // before anything else: the next call still works with a single-use token.
        let (s, v) = d.admin("POST", &format!("/v1/tenants/acme/credentials/{}/verify", c.name), None).await;
        assert_eq!((s, v["verification"]["result"].as_str()), (200, Some("valid")), "{}: {v}", c.name);
        assert_eq!(get(&d, c.name, "acme").await, (200, String::new()), "{}: after the check", c.name);

        // Delete: the refresh token is revoked in the provider's own form.
        let stored_before = st.issued_refresh.lock().unwrap().last().cloned().unwrap();
        let (s, _) = d.admin("DELETE", &format!("/v1/tenants/acme/credentials/{}", c.name), None).await;
        assert_eq!(s, 200);
        let revoked = st.revoked.lock().unwrap().clone();
        match c.revoke {
            None => assert!(revoked.is_empty(), "{}: no revocation endpoint", c.name),
            Some((method, path)) => {
                let (m, p, form, authz) = revoked.last().cloned().unwrap_or_else(|| panic!("{}: not revoked", c.name));
                assert_eq!(m, method, "{}", c.name);
                let expected_token = if c.b.rotation == Rotation::Reuse { connected.clone() } else { stored_before };
                if method == "DELETE" {
                    assert_eq!(p, format!("{path}{expected_token}"), "{}", c.name);
                } else {
                    assert_eq!((p.as_str(), form.get("token")), (path, Some(&expected_token)), "{}", c.name);
                    // Calendly and Zoom authenticate the client as at the token endpoint.
                    if c.b.basic {
                        assert!(authz.is_some_and(|a| a.starts_with("Basic ")), "{}", c.name);
                    }
                }
            }
        }
        let (_, audit) = d.admin("GET", "/v1/audit?limit=500", None).await;
        let action = format!("oauth.{}.revoke", c.name);
        let note = audit["entries"].as_array().unwrap().iter().find(|e| e["action"] == action.as_str()).cloned();
        assert!(note.is_some(), "{}: the revocation is audited", c.name);
    }
    let logs = d.logs();
    let mut canaries = vec![CLIENT_SECRET.to_string()];
    for (_, st, _) in &fakes {
        canaries.extend(st.issued_refresh.lock().unwrap().iter().cloned());
    }
    let refs: Vec<&str> = canaries.iter().map(String::as_str).collect();
    assert_eq!(canary_hits(logs.as_bytes(), &refs), 0, "no client secret or refresh token in the log");
}

#[tokio::test]
async fn a_single_use_refresh_token_is_spent_once_by_a_burst_and_a_spent_one_revokes() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let c = cases().into_iter().find(|c| c.preset == "calendly").unwrap();
    let st = AuthServer::new(c.b);
    let f = FakeProvider::with_handler(&pki, handler(st.clone())).await;
    let mut d = daemon(&pki, &section(&c, &f.url), None);
    d.start_in_process().await;
    connect(&d, &c, &st, "acme").await;
    let sock = d.app_sock();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let sock = sock.clone();
            tokio::spawn(async move {
                let s = tokio::net::UnixStream::connect(sock).await.unwrap();
                let io = hyper_util::rt::TokioIo::new(s);
                http_full(io, "GET", "/calendly/api/thing", None, &[("keyward-tenant", "acme")]).await.0
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(st.refreshes.load(Ordering::SeqCst), 1, "one refresh for the whole burst");
    // Someone else spends the stored refresh token (a copy of the credential elsewhere):
    // keyward's next refresh is refused, the credential revoked, the call answered 403.
    let stored = st.issued_refresh.lock().unwrap().last().cloned().unwrap();
    st.refresh_valid.lock().unwrap().remove(&stored);
    let current = st.api_hits.lock().unwrap().last().cloned().unwrap();
    st.refuse_once.lock().unwrap().push(current);
    assert_eq!(get(&d, "calendly", "acme").await, (403, "credential_revoked".to_string()));
    let (_, v) = d.admin("GET", "/v1/tenants/acme/credentials/calendly", None).await;
    assert_eq!(v["status"], "revoked", "{v}");
}

#[tokio::test]
async fn a_fleet_spends_a_single_use_refresh_token_once() {
    let Some(admin) = pg_admin_url() else {
        eprintln!("SKIPPED: set KEYWARD_TEST_PG_URL (scripts/pg-test-server start) to run the fleet OAuth test");
        return;
    };
    let url = fresh_pg_db(&admin).await;
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let c = cases().into_iter().find(|c| c.preset == "zoom").unwrap();
    let st = AuthServer::new(c.b);
    let f = FakeProvider::with_handler(&pki, handler(st.clone())).await;
    let mut a = daemon(&pki, &section(&c, &f.url), Some(url.clone()));
    a.start_in_process().await;
    let key = a.config.master_key_file.clone();
    let mut b = Daemon::new(DaemonConfig { master_key_file: key, ..a.config.clone() });
    b.start_in_process().await;
    // Connected through one sidecar, the callback lands on the other (the flow is in PostgreSQL).
    let (s, _) = a
        .admin(
            "PUT",
            "/v1/tenants/acme/credentials/zoom",
            Some(
                &json!({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scopes": ["meeting:write"]})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(s, 200);
    let (_, v) = a.admin("POST", "/v1/tenants/acme/oauth/zoom/start", None).await;
    let q: HashMap<String, String> =
        url::Url::parse(v["authorization_url"].as_str().unwrap()).unwrap().query_pairs().into_owned().collect();
    let code = st.consent(q.get("code_challenge").cloned(), "https://hooks.test/oauth/zoom/callback");
    let (s, page) = callback(&b, "zoom", &format!("code={code}&state={}", q["state"])).await;
    assert_eq!(s, 200, "{page}");
    let mut tasks = Vec::new();
    for d in [&a, &b] {
        for _ in 0..50 {
            let sock = d.app_sock();
            tasks.push(tokio::spawn(async move {
                let s = tokio::net::UnixStream::connect(sock).await.unwrap();
                let io = hyper_util::rt::TokioIo::new(s);
                http_full(io, "GET", "/zoom/api/thing", None, &[("keyward-tenant", "acme")]).await.0
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(st.refreshes.load(Ordering::SeqCst), 1, "one refresh for the whole fleet");
}

#[tokio::test]
async fn a_salesforce_token_goes_only_to_the_tenants_own_instance() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let c = cases().into_iter().find(|c| c.preset == "salesforce").unwrap();
    let st = AuthServer::new(c.b);
    let f = FakeProvider::with_handler(&pki, handler(st.clone())).await;
    *st.url.lock().unwrap() = f.url.clone();
    let mut d = daemon(&pki, &section(&c, &f.url), None);
    d.start_in_process().await;
    connect(&d, &c, &st, "acme").await;
    assert_eq!(get(&d, "salesforce", "acme").await, (200, String::new()));
    // An operator (or a writer of the store's public fields) points another tenant's
    // instance_url elsewhere: nothing is sent there, and no token is minted for it.
    let fields = json!({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "refresh_token": "CANARYrefreshByHand00000000000000", "instance_url": "https://attacker.example"});
    let (s, v) = d.admin("PUT", "/v1/tenants/initech/credentials/salesforce", Some(&fields.to_string())).await;
    assert_eq!(s, 200, "{v}");
    let hits = st.api_hits.lock().unwrap().len();
    assert_eq!(get(&d, "salesforce", "initech").await, (403, "host_not_allowed".to_string()));
    assert_eq!(st.api_hits.lock().unwrap().len(), hits);
    assert!(!st.refresh_seen.lock().unwrap().iter().any(|r| r.contains("ByHand")), "no refresh for a refused host");
    // A token answer naming a host the provider does not claim is not stored.
    let (_, v) = d.admin("POST", "/v1/tenants/acme/oauth/salesforce/start", None).await;
    let q: HashMap<String, String> =
        url::Url::parse(v["authorization_url"].as_str().unwrap()).unwrap().query_pairs().into_owned().collect();
    *st.url.lock().unwrap() = "https://evil.example".into();
    let code = st.consent(q.get("code_challenge").cloned(), "https://hooks.test/oauth/salesforce/callback");
    let (s, page) = callback(&d, "salesforce", &format!("code={code}&state={}", q["state"])).await;
    assert!(s == 400 && page.contains("not one of its hosts"), "{page}");
    let (_, v) = d.admin("GET", "/v1/tenants/acme/credentials/salesforce", None).await;
    assert_eq!(v["fields"]["instance_url"], f.url.as_str(), "unchanged: {v}");
}

fn rsa_key(dir: &std::path::Path) -> Option<String> {
    let path = dir.join("sa.pem");
    let made = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&path)
        .output()
        .ok()?;
    made.status.success().then(|| std::fs::read_to_string(&path).unwrap())
}

#[tokio::test]
async fn zoom_server_to_server_and_a_google_service_account_need_no_consent() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(pem) = rsa_key(tmp.path()) else {
        eprintln!("SKIPPED: openssl is missing (apt-get install openssl); it makes the service account's key");
        return;
    };
    let pki = Pki::new(tmp.path());
    let zb = Behaviour {
        basic: true,
        pkce: true,
        rotation: Rotation::Reuse,
        camel: false,
        instance_url: false,
        scope_on_refresh: false,
        token_path: "/oauth/token",
    };
    let zoom = AuthServer::new(zb);
    let zf = FakeProvider::with_handler(&pki, handler(zoom.clone())).await;
    let gsa = AuthServer::new(Behaviour { token_path: "/token", ..zb });
    let gf = FakeProvider::with_handler(&pki, handler(gsa.clone())).await;
    let sections = format!(
        "[providers.zoom-s2s]\nbase_url = \"{z}\"\noauth2 = {{ preset = \"zoom\", grant = \"client_credentials\", token_url = \"{z}/oauth/token\" }}\n\
         [providers.gsa]\nbase_url = \"{g}\"\noauth2 = {{ preset = \"google\", grant = \"jwt_bearer\", token_url = \"{g}/token\" }}\n",
        z = zf.url,
        g = gf.url
    );
    let mut d = daemon(&pki, &sections, None);
    d.start_in_process().await;

    let (s, v) = d
        .admin(
            "PUT",
            "/v1/tenants/acme/credentials/zoom-s2s",
            Some(&json!({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "account_id": "acct-1"}).to_string()),
        )
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("active")), "{v}");
    assert_eq!(get(&d, "zoom-s2s", "acme").await, (200, String::new()));
    let form = zoom.forms.lock().unwrap().last().cloned().unwrap();
    assert_eq!((form["grant_type"].as_str(), form["account_id"].as_str()), ("account_credentials", "acct-1"));
    let (s, v) = d.admin("POST", "/v1/tenants/acme/oauth/zoom-s2s/start", None).await;
    assert!(s == 400 && v["error"]["message"].as_str().unwrap().contains("without user consent"), "{v}");

    // A service account's key file, put as Google issues it.
    let key_file = json!({"type": "service_account", "project_id": "p", "private_key_id": "kid-1", "private_key": pem,
        "client_email": "sa@p.iam.gserviceaccount.com", "client_id": "1", "token_uri": format!("{}/token", gf.url),
        "scopes": ["https://www.googleapis.com/auth/calendar"], "subject": "user@example.com"});
    let (s, v) = d.admin("PUT", "/v1/tenants/acme/credentials/gsa", Some(&key_file.to_string())).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("active")), "{v}");
    assert!(!v.to_string().contains("PRIVATE KEY"), "{v}");
    assert_eq!(get(&d, "gsa", "acme").await, (200, String::new()));
    let form = gsa.forms.lock().unwrap().last().cloned().unwrap();
    assert_eq!(form["grant_type"], "urn:ietf:params:oauth:grant-type:jwt-bearer");
    let jwt = form["assertion"].clone();
    let parts: Vec<&str> = jwt.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!((header["alg"].as_str(), header["kid"].as_str()), (Some("RS256"), Some("kid-1")));
    assert_eq!(claims["iss"], "sa@p.iam.gserviceaccount.com");
    assert_eq!(claims["aud"], "https://oauth2.googleapis.com/token", "google-auth's constant audience");
    assert_eq!(claims["scope"], "https://www.googleapis.com/auth/calendar");
    assert_eq!(claims["sub"], "user@example.com");
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 3600);
    // openssl is the judge of the signature.
    let pubkey = tmp.path().join("sa.pub");
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(tmp.path().join("sa.pem"))
        .arg("-out")
        .arg(&pubkey)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(tmp.path().join("input"), format!("{}.{}", parts[0], parts[1])).unwrap();
    std::fs::write(tmp.path().join("sig"), URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&pubkey)
        .arg("-signature")
        .arg(tmp.path().join("sig"))
        .arg(tmp.path().join("input"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // A key file naming another token endpoint is not followed with a signed assertion.
    let mut elsewhere = key_file.clone();
    elsewhere["token_uri"] = json!("https://attacker.example/token");
    let (s, _) = d.admin("PUT", "/v1/tenants/initech/credentials/gsa", Some(&elsewhere.to_string())).await;
    assert_eq!(s, 200);
    let calls = gsa.forms.lock().unwrap().len();
    let (s, code) = get(&d, "gsa", "initech").await;
    assert_eq!((s, code.as_str()), (502, "upstream_connect_failed"));
    assert_eq!(gsa.forms.lock().unwrap().len(), calls);
    assert_eq!(canary_hits(d.logs().as_bytes(), &[CLIENT_SECRET]), 0);
    assert!(!d.logs().contains("PRIVATE KEY"));
}
