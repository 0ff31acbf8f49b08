//! The web console (CONTRACT.md §8.2) over real HTTP: login, session cookie, security
//! headers, the pages an operator and a viewer see, the CSRF and Origin rules, and no
//! secret on any page.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::fake::*;
use common::*;
use serde_json::json;

const SECRET: &str = "CANARYconsoleVapiKey0000000000001";
const PUT_SECRET: &str = "CANARYconsoleResendKey00000000002";

struct Browser {
    addr: String,
    cookie: Option<String>,
}

struct Page {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Browser {
    async fn req(&mut self, method: &str, path: &str, form: Option<&[(&str, &str)]>, origin: Option<&str>) -> Page {
        let s = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        let host = self.addr.clone();
        let mut headers: Vec<(&str, String)> = vec![("host", host)];
        if let Some(c) = &self.cookie {
            headers.push(("cookie", format!("kw_console={c}")));
        }
        if let Some(o) = origin {
            headers.push(("origin", o.to_string()));
        }
        let body = form.map(|f| {
            headers.push(("content-type", "application/x-www-form-urlencoded".into()));
            url::form_urlencoded::Serializer::new(String::new()).extend_pairs(f.iter()).finish().into_bytes()
        });
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, headers, body) = http_full(hyper_util::rt::TokioIo::new(s), method, path, body, &h).await;
        Page { status, headers, body: String::from_utf8_lossy(&body).to_string() }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let o = self.origin();
        self.req("POST", path, Some(form), Some(&o)).await
    }

    async fn login(&mut self, token: &str) -> Page {
        let p = self.post("/console/login", &[("token", token)]).await;
        if let Some(sc) = p.headers.get("set-cookie") {
            let v = sc.to_str().unwrap();
            self.cookie = v.split(';').next().and_then(|kv| kv.strip_prefix("kw_console=")).map(String::from);
        }
        p
    }
}

fn csrf_of(page: &str) -> String {
    let i = page.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    page[i..].split('"').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_and_a_viewer_use_the_console_and_nothing_leaks() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    // Vapi answers 401 to the live check: the card shows the failed check.
    let vapi =
        FakeProvider::with_handler(&pki, std::sync::Arc::new(|_| Box::pin(async { json_response(401, "{}") }))).await;
    let (op_token, op_entry) = admin_user(tmp.path(), "olga", "operator");
    let (view_token, view_entry) = admin_user(tmp.path(), "vera", "viewer");
    let admin_token = tmp.path().join("admin-token");
    std::fs::write(&admin_token, "console-admin-token-000000000000001\n").unwrap();
    std::fs::set_permissions(&admin_token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut d = Daemon::new(DaemonConfig {
        admin_extra: format!(
            "tcp = \"127.0.0.1:0\"\ntoken_file = \"{}\"\nconsole = true\n{op_entry}\n{view_entry}",
            admin_token.display()
        ),
        extra: format!(
            "[webhooks]\nlisten = \"127.0.0.1:0\"\npublic_base_url = \"https://hooks.test\"\nforward_to = \"http://127.0.0.1:9\"\n{}",
            pki.upstream("vapi", &vapi.url)
        ),
        app: Some(String::new()),
        ..DaemonConfig::default()
    });
    d.start();
    put_vapi(&d, "acme", SECRET).await;
    let (s, _) = d.admin("PUT", "/v1/routes/vapi-assistant/asst_console_1", Some(r#"{"tenant":"acme"}"#)).await;
    assert_eq!(s, 200);
    let (s, _, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 401, "relayed from the fake");
    let (s, _) = d
        .admin(
            "PUT",
            "/v1/tenants/acme/credentials/resend",
            Some(&json!({"api_key": "re_CANARYother000000000000000003"}).to_string()),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = d.admin("DELETE", "/v1/tenants/acme/credentials/resend", None).await;
    assert_eq!(s, 200);
    let mut b = Browser { addr: d.addr("admin-tcp"), cookie: None };
    let mut seen = String::new();

    // Not logged in: every page sends you to the login form.
    let p = b.req("GET", "/console/", None, None).await;
    assert_eq!((p.status, p.headers["location"].to_str().unwrap()), (303, "/console/login"));
    let p = b.req("GET", "/console/login", None, None).await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("name=\"token\"") && p.body.contains("type=\"password\""));
    let csp = p.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'")
            && !csp.contains("unsafe")
            && !csp.contains("script-src")
            && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(p.headers["x-frame-options"], "DENY");
    assert_eq!(p.headers["cache-control"], "no-store");
    assert!(!p.body.contains("<script"), "no script at all");
    // A login from another origin, or with a wrong token, is refused.
    let p = b.req("POST", "/console/login", Some(&[("token", &op_token)]), Some("https://evil.example")).await;
    assert_eq!(p.status, 403);
    assert_eq!(b.login("kwu_wrong-token-00000000000000000000000000").await.status, 401);
    // The operator logs in: an HttpOnly, SameSite=Strict session cookie (no Secure on plain loopback).
    let p = b.login(&op_token).await;
    assert_eq!(p.status, 303);
    let sc = p.headers["set-cookie"].to_str().unwrap();
    assert!(
        sc.contains("HttpOnly")
            && sc.contains("SameSite=Strict")
            && sc.contains("Path=/console")
            && !sc.contains("Secure"),
        "{sc}"
    );

    // Tenants page.
    let p = b.req("GET", "/console/", None, None).await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("href=\"/console/tenants/acme\"") && p.body.contains("olga (operator)"), "{}", p.body);
    seen.push_str(&p.body);
    // A tenant: the Vapi card, never verified; the disconnected Resend card with Restore.
    let p = b.req("GET", "/console/tenants/acme", None, None).await;
    assert!(
        p.body.contains("never verified") && p.body.contains("disconnected") && p.body.contains(">Restore<"),
        "{}",
        p.body
    );
    assert!(p.body.contains(">Test<") && p.body.contains(">Disconnect<"));
    assert!(p.body.contains("…0001"), "the hint is shown");
    assert!(p.body.contains("<td>vapi-assistant</td><td><code>asst_console_1</code></td>"), "the tenant's routes");
    let csrf = csrf_of(&p.body);
    seen.push_str(&p.body);
    // Test: the provider refuses (401), so the credential is revoked, with the reason shown.
    let p = b.post("/console/tenants/acme/credentials/vapi/verify", &[("csrf", &csrf)]).await;
    assert_eq!(p.status, 200);
    assert!(
        p.body.contains("Test vapi: invalid — invalid credentials (HTTP 401)")
            && p.body.contains("badge bad\">revoked"),
        "{}",
        p.body
    );
    seen.push_str(&p.body);
    // Without the CSRF token, or from another origin: refused, nothing done.
    let p = b.post("/console/tenants/acme/credentials/vapi/delete", &[]).await;
    assert_eq!(p.status, 403);
    let p = b
        .req(
            "POST",
            "/console/tenants/acme/credentials/vapi/delete",
            Some(&[("csrf", &csrf)]),
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(p.status, 403);
    let (_, st) = d.admin("GET", "/v1/tenants/acme/credentials/vapi", None).await;
    assert!(st.get("deleted_at").is_none(), "a refused form changed nothing");
    // Disconnect asks first, then shows the restore deadline; Restore brings it back.
    let p = b.req("GET", "/console/tenants/acme/credentials/vapi/disconnect", None, None).await;
    assert!(p.body.contains("Disconnect <strong>vapi</strong>"), "{}", p.body);
    let p = b.post("/console/tenants/acme/credentials/vapi/delete", &[("csrf", &csrf)]).await;
    assert!(p.body.contains("restorable until"), "{}", p.body);
    let p = b.post("/console/tenants/acme/credentials/vapi/restore", &[("csrf", &csrf)]).await;
    assert!(p.body.contains("restore vapi: done"), "{}", p.body);
    // Put a credential through the form: the secret input is a password field, never filled.
    let p = b.req("GET", "/console/tenants/acme", None, None).await;
    assert!(p.body.contains("name=\"api_key\" type=\"password\" autocomplete=\"off\""), "{}", p.body);
    let p = b
        .post("/console/tenants/acme/put", &[("csrf", &csrf), ("provider", "elevenlabs"), ("api_key", PUT_SECRET)])
        .await;
    assert!(p.body.contains("put elevenlabs: done") && p.body.contains("p-elevenlabs"), "{}", p.body);
    seen.push_str(&p.body);
    // Connect Google: the inactive Google credential gets an authorization link to hand over.
    let (s, _) = d
        .admin("PUT", "/v1/tenants/acme/credentials/google", Some(&json!({"client_id": "c.apps.googleusercontent.com", "client_secret": "CANARYconsoleGoogle0000000000004", "scopes": ["s"]}).to_string()))
        .await;
    assert_eq!(s, 200);
    let p = b.post("/console/tenants/acme/connect/google", &[("csrf", &csrf)]).await;
    assert!(
        p.body.contains("Hand this authorization link to the tenant")
            && p.body.contains("client_id=c.apps.googleusercontent.com"),
        "{}",
        p.body
    );
    assert!(p.body.contains("badge off\">inactive"), "the Google card waits for the flow");
    seen.push_str(&p.body);
    // The audit page shows the user's actions and the chain state.
    let p = b.req("GET", "/console/audit?user=olga", None, None).await;
    assert!(
        p.body.contains("verified,") && p.body.contains("credential.delete") && p.body.contains("olga"),
        "{}",
        p.body
    );
    seen.push_str(&p.body);
    // The overview counts the proxied request.
    let p = b.req("GET", "/console/overview", None, None).await;
    assert!(p.body.contains("<tr><td>vapi</td><td>1</td>") && p.body.contains("hit rate"), "{}", p.body);
    // Logout ends the session.
    assert_eq!(b.post("/console/logout", &[("csrf", &csrf)]).await.status, 303);
    assert_eq!(b.req("GET", "/console/", None, None).await.status, 303);

    // A viewer sees no buttons that change anything, and its forged POST is refused by the API.
    let mut v = Browser { addr: d.addr("admin-tcp"), cookie: None };
    v.login(&view_token).await;
    let p = v.req("GET", "/console/tenants/acme", None, None).await;
    assert!(
        !p.body.contains(">Test<") && !p.body.contains(">Disconnect<") && !p.body.contains("Put a credential"),
        "{}",
        p.body
    );
    let vcsrf = csrf_of(&p.body);
    let p = v.post("/console/tenants/acme/credentials/vapi/delete", &[("csrf", &vcsrf)]).await;
    assert!(p.body.contains("forbidden_role"), "{}", p.body);
    seen.push_str(&p.body);
    let (_, st) = d.admin("GET", "/v1/tenants/acme/credentials/vapi", None).await;
    assert!(st.get("deleted_at").is_none());

    // No page carried a secret, in any form.
    assert_eq!(
        canary_hits(seen.as_bytes(), &[SECRET, PUT_SECRET, "CANARYconsoleGoogle0000000000004", &op_token, &view_token]),
        0
    );
    d.stop();
    assert_eq!(canary_hits(d.logs().as_bytes(), &[SECRET, PUT_SECRET, &op_token, &view_token]), 0);
}

#[test]
fn the_console_needs_admin_tcp_and_tls_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[store]\npath = \"/x\"\n[master_key]\nfile = \"/k\"\n[admin]\nunix = \"/a\"\ntoken_file = \"/t\"\nconsole = true\n";
    for (extra, says) in [
        ("", "the console is served on admin.tcp"),
        ("tcp = \"0.0.0.0:7444\"\n[danger]\nadmin_plain_tcp = true\n", "the console needs [admin.tls]"),
    ] {
        let cfg = dir.path().join("k.toml");
        std::fs::write(&cfg, format!("{base}{extra}")).unwrap();
        let out = Command::new(BIN).args(["check-config", "--config"]).arg(&cfg).output().unwrap();
        assert_eq!(out.status.code(), Some(64));
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{}", String::from_utf8_lossy(&out.stderr));
    }
}
