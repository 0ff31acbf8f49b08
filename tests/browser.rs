//! The console in a real browser: headless Chromium driven through chromedriver (Debian's
//! `chromium` and `chromium-driver`, installed by scripts/ci-deps) over the WebDriver
//! protocol. With `KEYWARD_CONSOLE_SCREENSHOTS=DIR` it also saves the screenshots that
//! docs/console.md shows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::fake::*;
use common::*;
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const VAPI_SECRET: &str = "CANARYbrowserVapiKey00000000000001";
const RESEND_SECRET: &str = "re_CANARYbrowserResend0000000000002";
const PUT_SECRET: &str = "CANARYbrowserElevenKey000000000003";

struct Driver {
    child: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Option<Driver> {
        if Command::new("chromedriver").arg("--version").output().is_err()
            || !std::path::Path::new("/usr/bin/chromium").exists()
        {
            eprintln!("SKIPPED: the browser test needs headless Chromium (run scripts/ci-deps, or apt-get install chromium chromium-driver)");
            return None;
        }
        keyward::install_crypto_provider();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let t0 = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(t0.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800",
                     format!("--user-data-dir={}", profile.path().display())]
        }}}});
        let r = http.post(format!("{base}/session")).header("content-type", "application/json").body(caps.to_string());
        let v: Value = serde_json::from_slice(&r.send().await.unwrap().bytes().await.unwrap()).unwrap();
        let session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_string();
        Some(Driver { child, base, session, http, _profile: profile })
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = self.http.request(method.clone(), url);
        let req = if method == reqwest::Method::GET {
            req
        } else {
            req.header("content-type", "application/json").body(body.to_string())
        };
        let v: Value = serde_json::from_slice(&req.send().await.unwrap().bytes().await.unwrap()).unwrap();
        v["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({"url": url})).await;
    }

    async fn find(&self, css: &str) -> Option<String> {
        let v = self.cmd(reqwest::Method::POST, "/elements", json!({"using": "css selector", "value": css})).await;
        v.as_array().and_then(|a| a.first()).and_then(|e| e[ELEMENT].as_str()).map(String::from)
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await.unwrap_or_else(|| panic!("no {css}"));
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/click"), json!({})).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await.unwrap_or_else(|| panic!("no {css}"));
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/value"), json!({"text": text})).await;
    }

    async fn source(&self) -> String {
        self.cmd(reqwest::Method::GET, "/source", Value::Null).await.as_str().unwrap_or_default().to_string()
    }

    /// The page source once it contains `text` (a click's navigation may still be under
    /// way when the click returns).
    async fn wait_text(&self, text: &str) -> String {
        let t0 = Instant::now();
        loop {
            let src = self.source().await;
            if src.contains(text) {
                return src;
            }
            assert!(t0.elapsed() < Duration::from_secs(15), "page never showed {text:?}:\n{src}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn script(&self, js: &str) -> Value {
        self.cmd(reqwest::Method::POST, "/execute/sync", json!({"script": js, "args": []})).await
    }

    async fn cookies(&self) -> Value {
        self.cmd(reqwest::Method::GET, "/cookie", Value::Null).await
    }

    async fn screenshot(&self, name: &str, width: u32, height: u32) {
        let Ok(dir) = std::env::var("KEYWARD_CONSOLE_SCREENSHOTS") else { return };
        self.cmd(reqwest::Method::POST, "/window/rect", json!({"width": width, "height": height})).await;
        let png = self.cmd(reqwest::Method::GET, "/screenshot", Value::Null).await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), bytes).unwrap();
        self.cmd(reqwest::Method::POST, "/window/rect", json!({"width": 1280, "height": 800})).await;
    }
}

/// A page on another origin with a form that posts to the console (no CSRF token).
async fn attacker_page(target: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", l.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let page = format!("<!doctype html><form method=\"post\" action=\"{target}\"><button id=\"go\">win a prize</button></form>");
            let _ = s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}", page.len()).as_bytes()).await;
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_headless_chromium_and_refuses_what_it_must() {
    let Some(b) = Driver::start().await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let refuse = FakeProvider::with_handler(&pki, Arc::new(|_| Box::pin(async { json_response(401, "{}") }))).await;
    let accept = FakeProvider::start(&pki).await;
    let (op, op_entry) = admin_user(tmp.path(), "olga", "operator");
    let (viewer, view_entry) = admin_user(tmp.path(), "vera", "viewer");
    let mut d = Daemon::new(DaemonConfig {
        admin_extra: format!("tcp = \"127.0.0.1:0\"\nconsole = true\n{op_entry}\n{view_entry}"),
        extra: format!("{}[providers.resend]\nbase_url = \"{}\"\n", pki.upstream("vapi", &refuse.url), accept.url),
        ..DaemonConfig::default()
    });
    d.start();
    put_vapi(&d, "acme", VAPI_SECRET).await;
    let (s, _) = d
        .admin("PUT", "/v1/tenants/acme/credentials/resend", Some(&json!({"api_key": RESEND_SECRET}).to_string()))
        .await;
    assert_eq!(s, 200);
    let (s, _) = d.admin("POST", "/v1/tenants/acme/credentials/vapi/verify", None).await;
    assert_eq!(s, 200, "vapi is now revoked (401)");
    let (s, _) = d.admin("POST", "/v1/tenants/acme/credentials/resend/verify", None).await;
    assert_eq!(s, 200, "resend passed its check");
    let (s, _) = d
        .admin("PUT", "/v1/tenants/acme/credentials/elevenlabs", Some(r#"{"api_key":"el-never-verified-0000001"}"#))
        .await;
    assert_eq!(s, 200);
    let console = format!("http://{}", d.addr("admin-tcp"));
    let mut sources = String::new();

    // Log in through the form, as a person would.
    b.go(&format!("{console}/console/")).await;
    assert!(b.find("input[name=token][type=password]").await.is_some(), "sent to the login form");
    b.screenshot("login", 1280, 800).await;
    // Keyboard only: the field has focus on load; typing the token and Enter logs in.
    let active = b.script("return document.activeElement && document.activeElement.id").await;
    assert_eq!(active, json!("token"), "the token field has focus");
    b.type_into("#token", &format!("{op}\u{e007}")).await;
    b.wait_text("olga (operator)").await;
    assert_eq!(b.script("return document.cookie").await, json!(""), "the session cookie is HttpOnly");
    let cookies = b.cookies().await;
    let after_login = b.source().await;
    let c = cookies
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kw_console")
        .unwrap_or_else(|| panic!("no session cookie: {cookies}\n{after_login}"));
    assert_eq!((c["httpOnly"].as_bool(), c["sameSite"].as_str()), (Some(true), Some("Strict")), "{c}");
    let page = b.wait_text("/console/tenants/acme").await;
    b.screenshot("tenants", 1280, 800).await;
    sources.push_str(&page);

    // The tenant: an active (verified), a revoked and a never-verified credential.
    b.go(&format!("{console}/console/tenants/acme")).await;
    let page = b.wait_text("Tenant acme").await;
    for badge in ["badge good\">active", "badge bad\">revoked", "badge warn\">never verified"] {
        assert!(page.contains(badge), "{badge} in {page}");
    }
    b.screenshot("tenant", 1280, 800).await;
    b.screenshot("tenant-phone", 390, 844).await;
    // Readable on a phone: at 390×844 nothing is wider than the screen.
    b.cmd(reqwest::Method::POST, "/window/rect", json!({"width": 390, "height": 844})).await;
    let fits = b.script("return document.documentElement.scrollWidth <= window.innerWidth + 1").await;
    assert_eq!(fits, json!(true), "the tenant page scrolls sideways at 390 px");
    b.cmd(reqwest::Method::POST, "/window/rect", json!({"width": 1280, "height": 800})).await;
    // Test resend: the result shows in place.
    b.click("form[action$='/resend/verify'] button").await;
    b.wait_text("Test resend: valid").await;
    // Disconnect asks first; then Restore.
    b.click("a[href$='/elevenlabs/disconnect']").await;
    b.wait_text("Disconnect <strong>elevenlabs</strong>").await;
    b.click("form[action$='/elevenlabs/delete'] button").await;
    b.wait_text("Disconnected elevenlabs; restorable until").await;
    b.click("form[action$='/elevenlabs/restore'] button").await;
    b.wait_text("restore elevenlabs: done").await;
    // Put a credential: the secret input is a password field; the page never shows the secret.
    b.click("details:has(input[value=elevenlabs]) summary").await;
    b.type_into("#f-elevenlabs-api_key", PUT_SECRET).await;
    b.click("details:has(input[value=elevenlabs]) button[type=submit]").await;
    let page = b.wait_text("put elevenlabs: done").await;
    assert!(page.contains("…0003"), "{page}");
    sources.push_str(&page);
    b.go(&format!("{console}/console/audit")).await;
    let page = b.wait_text("Audit chain: verified").await;
    b.screenshot("audit", 1280, 800).await;
    sources.push_str(&page);

    // A cross-site form posting to the console: the browser withholds the Strict cookie and
    // the console refuses it; nothing is deleted.
    let evil = attacker_page(format!("{console}/console/tenants/acme/credentials/resend/delete")).await;
    b.go(&evil).await;
    b.click("#go").await;
    b.wait_text("keyward").await; // the console's answer (the login form: no cookie was sent)
    let (_, st) = d.admin("GET", "/v1/tenants/acme/credentials/resend", None).await;
    assert!(st.get("deleted_at").is_none(), "a cross-site POST changed nothing: {st}");

    // A viewer sees no button that changes anything.
    b.go(&format!("{console}/console/")).await;
    b.wait_text("olga (operator)").await;
    b.click("form.who button").await; // log out
    b.wait_text("name=\"token\"").await;
    b.type_into("#token", &viewer).await;
    b.click("button[type=submit]").await;
    b.wait_text("vera (viewer)").await;
    b.go(&format!("{console}/console/tenants/acme")).await;
    let page = b.wait_text("vera (viewer)").await;
    for css in ["form[action$='/verify']", "a[href$='/disconnect']", "form[action$='/put']", "form[action$='/google']"]
    {
        assert!(b.find(css).await.is_none(), "a viewer sees {css}");
    }
    sources.push_str(&page);
    // No page, cookie or script carried a secret or a token.
    let cookies = b.cookies().await.to_string();
    let hay = format!("{sources}{cookies}");
    assert_eq!(canary_hits(hay.as_bytes(), &[VAPI_SECRET, RESEND_SECRET, PUT_SECRET, &op, &viewer]), 0);
    assert!(!sources.contains("<script"), "no script on any page");
}
