//! Test builders: a keyward daemon in a temp directory (real binary, real sockets, port 0),
//! an admin client over its Unix socket, and log access for leak checks.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub mod fake;
pub mod otlp;
pub mod vapi_hooks;

pub const BIN: &str = env!("CARGO_BIN_EXE_keyward");

/// A daemon configuration under construction.
#[derive(Clone)]
pub struct DaemonConfig {
    pub retention: String,
    pub extra: String,
    pub master_key_file: Option<PathBuf>,
    pub previous: Vec<PathBuf>,
    pub store_path: Option<PathBuf>,
    pub log_level: String,
    /// Extra lines inside [admin].
    pub admin_extra: String,
    /// When set, an [app] section with `unix = <dir>/app.sock` plus these lines.
    pub app: Option<String>,
    /// Extra environment for the daemon process.
    pub env: Vec<(String, String)>,
    /// Extra lines inside [ops].
    pub ops_extra: String,
    /// Use PostgreSQL at this URL instead of sled.
    pub pg_url: Option<String>,
    /// RLIMIT_NOFILE (soft and hard) for the daemon process.
    pub nofile: Option<u64>,
    /// The `[master_key]` section's body, replacing the key file (a KMS source).
    pub master_key_toml: Option<String>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            retention: "14d".into(),
            extra: String::new(),
            master_key_file: None,
            previous: vec![],
            store_path: None,
            log_level: "keyward=trace,info".into(),
            admin_extra: String::new(),
            app: None,
            env: vec![],
            ops_extra: String::new(),
            pg_url: None,
            nofile: None,
            master_key_toml: None,
        }
    }
}

/// A running (or stopped) daemon in its own directory.
pub struct Daemon {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub config: DaemonConfig,
    pub config_path: PathBuf,
    pub admin_sock: PathBuf,
    pub ops_addr: Option<String>,
    pub addrs: Vec<(String, String)>,
    child: Option<Child>,
    /// Running in this test's process (`start_in_process`): its shutdown trigger.
    in_process: Option<(keyward::ShutdownTrigger, tokio::task::JoinHandle<Result<(), keyward::StartError>>)>,
    log_path: PathBuf,
    runs: u32,
}

pub fn write_key(path: &Path) {
    let out = Command::new(BIN).args(["keygen", "--out"]).arg(path).output().unwrap();
    assert!(out.status.success(), "keygen failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl Daemon {
    /// A fresh directory with a master key and a config; not started.
    pub fn new(config: DaemonConfig) -> Daemon {
        let tmp = tempfile::Builder::new().prefix("kw").tempdir_in(short_tmp()).unwrap();
        let dir = tmp.path().to_path_buf();
        let mut d = Daemon {
            admin_sock: dir.join("admin.sock"),
            config_path: dir.join("keyward.toml"),
            log_path: dir.join("daemon.log"),
            dir,
            _tmp: Some(tmp),
            config,
            ops_addr: None,
            addrs: vec![],
            child: None,
            in_process: None,
            runs: 0,
        };
        if d.config.master_key_file.is_none() {
            let k = d.dir.join("master.key");
            write_key(&k);
            d.config.master_key_file = Some(k);
        }
        d.write_config();
        d
    }

    pub fn write_config(&self) {
        let c = &self.config;
        let store = c.store_path.clone().unwrap_or_else(|| self.dir.join("store"));
        let previous: Vec<String> = c.previous.iter().map(|p| format!("\"{}\"", p.display())).collect();
        let text = format!(
            r#"
[store]
{store_lines}
deleted_retention = "{retention}"

[master_key]
{key}
previous = [{previous}]

[admin]
unix = "{admin}"
{admin_extra}

[ops]
listen = "127.0.0.1:0"
{ops_extra}
{app}

[log]
format = "json"
level = "{level}"
{verification}
{extra}
"#,
            store_lines = match &c.pg_url {
                Some(url) => format!("backend = \"postgres\"\nurl = \"{url}\""),
                None => format!("path = \"{}\"", store.display()),
            },
            retention = c.retention,
            // `KEYWARD_MASTER_KEY` in `env` selects the environment source.
            key = if let Some(t) = &c.master_key_toml {
                t.clone()
            } else if c.env.iter().any(|(k, _)| k == "KEYWARD_MASTER_KEY") {
                "env = \"KEYWARD_MASTER_KEY\"".to_string()
            } else {
                format!("file = \"{}\"", c.master_key_file.as_ref().unwrap().display())
            },
            previous = previous.join(", "),
            admin = self.admin_sock.display(),
            admin_extra = c.admin_extra,
            ops_extra = c.ops_extra,
            verification = if c.extra.contains("[verification]") {
                ""
            } else {
                "[verification]\ndiscover_routes = false\ninterval = \"0s\"\n"
            },
            app = c
                .app
                .as_ref()
                .map(|a| format!("[app]\nunix = \"{}\"\n{a}\n", self.app_sock().display()))
                .unwrap_or_default(),
            level = c.log_level,
            extra = c.extra,
        );
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub fn app_sock(&self) -> PathBuf {
        self.dir.join("app.sock")
    }

    /// One request to the app listener: status, headers, body.
    pub async fn app(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> (u16, http::HeaderMap, Vec<u8>) {
        let stream = tokio::net::UnixStream::connect(self.app_sock()).await.unwrap();
        http_full(TokioIo::new(stream), method, path, body, headers).await
    }

    pub fn store_path(&self) -> PathBuf {
        self.config.store_path.clone().unwrap_or_else(|| self.dir.join("store"))
    }

    /// Starts the daemon and waits for its "ready" log line.
    pub fn start(&mut self) -> &mut Self {
        self.try_start().unwrap_or_else(|e| panic!("daemon did not start: {e}\n--- log ---\n{}", self.logs()));
        self
    }

    /// Runs the daemon inside this test's process through `App::build` and `App::run`, on
    /// the same sockets and config as [`Daemon::start`] but with no process to spawn and no
    /// log file to poll for readiness: ready when `build` returns. For tests that need
    /// neither the daemon's log, nor signals, nor a restart.
    pub async fn start_in_process(&mut self) -> &mut Self {
        self.write_config();
        self.runs += 1;
        let env: std::collections::BTreeMap<String, String> = self.config.env.iter().cloned().collect();
        let config = keyward::config::Config::load(&self.config_path, &env).unwrap();
        let app = keyward::App::build(config, &env, keyward::telemetry::LogHandle::noop())
            .await
            .unwrap_or_else(|e| panic!("daemon did not build: {e}"));
        self.addrs = app.addresses().into_iter().map(|(n, a)| (n.to_string(), a)).collect();
        self.ops_addr = self.addrs.iter().find(|(n, _)| n == "ops").map(|(_, a)| a.clone());
        let (trigger, shutdown) = keyward::shutdown_channel();
        self.in_process = Some((trigger, tokio::spawn(app.run(shutdown))));
        self
    }

    /// Starts; returns the log on failure to become ready.
    pub fn try_start(&mut self) -> Result<(), String> {
        self.write_config();
        self.runs += 1;
        let offset = std::fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0) as usize;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).unwrap();
        let mut cmd = match self.config.nofile {
            // The shell sets the limit, then becomes keyward (same pid).
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), BIN]);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .envs(self.config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("exited with {status}"));
            }
            if self.log_lines_from(offset).iter().any(|l| l["message"] == "ready") {
                break;
            }
            if Instant::now() > deadline {
                return Err("not ready after 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.addrs = self
            .log_lines_from(offset)
            .iter()
            .filter(|l| l["message"] == "listening")
            .map(|l| (l["listener"].as_str().unwrap().to_string(), l["addr"].as_str().unwrap().to_string()))
            .collect();
        self.ops_addr = self.addrs.iter().find(|(n, _)| n == "ops").map(|(_, a)| a.clone());
        Ok(())
    }

    /// Log lines written after byte `offset`.
    pub fn log_lines_from(&self, offset: usize) -> Vec<Value> {
        let bytes = std::fs::read(&self.log_path).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(offset..).unwrap_or_default())
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn addr(&self, listener: &str) -> String {
        self.addrs
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("no {listener} listener"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (e.g. "HUP").
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().to_string();
        assert!(Command::new("kill").args([&format!("-{sig}"), &pid]).status().unwrap().success());
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_lines(&self) -> Vec<Value> {
        self.logs().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Runs the CLI against this daemon's admin socket.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--admin").arg(&self.admin_sock).args(args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// One admin request; returns status and JSON body.
    pub async fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (s, b) = self.admin_raw(method, path, body.map(|b| b.as_bytes().to_vec()), &[]).await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    /// One admin request with raw bytes; returns status and raw body.
    pub async fn admin_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> (u16, Vec<u8>) {
        let stream = tokio::net::UnixStream::connect(&self.admin_sock).await.unwrap();
        http_request(TokioIo::new(stream), method, path, body, headers).await
    }

    pub async fn ops(&self, path: &str) -> (u16, Value) {
        let stream = tokio::net::TcpStream::connect(self.ops_addr.as_ref().unwrap()).await.unwrap();
        let (s, b) = http_request(TokioIo::new(stream), "GET", path, None, &[]).await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    /// `/metrics` as text: (content type, body); `openmetrics` asks for OpenMetrics.
    pub async fn metrics_text(&self, openmetrics: bool) -> (String, String) {
        let stream = tokio::net::TcpStream::connect(self.ops_addr.as_ref().unwrap()).await.unwrap();
        let accept = if openmetrics { "application/openmetrics-text; version=1.0.0" } else { "text/plain" };
        let (s, h, b) = http_full(TokioIo::new(stream), "GET", "/metrics", None, &[("accept", accept)]).await;
        assert_eq!(s, 200);
        let kind = h.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        (kind, String::from_utf8(b).unwrap())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some((trigger, _task)) = self.in_process.take() {
            trigger.fire();
        }
        self.kill9();
    }
}

pub async fn http_request<I>(
    io: I,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> (u16, Vec<u8>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::builder().method(method).uri(path).header("host", "keyward");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, bytes)
}

/// Like [`http_request`], also returning the response headers.
pub async fn http_full<I>(
    io: I,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Vec<u8>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", "keyward");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, h, bytes)
}

/// Unix socket paths must stay under 108 bytes: use /tmp rather than a long TMPDIR.
pub fn short_tmp() -> PathBuf {
    PathBuf::from("/tmp")
}

pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The forms a canary could take on disk or in text: raw, base64 (three alignments),
/// hex (both cases).
pub fn canary_forms(canary: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    let mut forms = vec![canary.as_bytes().to_vec()];
    for skip in 0..3 {
        let part = &canary.as_bytes()[skip..];
        let enc = base64::engine::general_purpose::STANDARD.encode(part);
        // Drop the edges, which depend on neighbouring bytes.
        let inner = &enc.as_bytes()[4..enc.len() - 4];
        forms.push(inner.to_vec());
        let enc_url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(part);
        forms.push(enc_url.as_bytes()[4..enc_url.len() - 4].to_vec());
    }
    forms.push(hex::encode(canary).into_bytes());
    forms.push(hex::encode_upper(canary).into_bytes());
    forms
}

/// How many times any form of any canary occurs in `haystack`.
pub fn canary_hits(haystack: &[u8], canaries: &[&str]) -> usize {
    let mut hits = 0;
    for c in canaries {
        for f in canary_forms(c) {
            hits += haystack.windows(f.len()).filter(|w| *w == f.as_slice()).count();
        }
    }
    hits
}

/// The admin URL of the test PostgreSQL server, or `None` (and one line saying how to run
/// the fleet tests) when `KEYWARD_TEST_PG_URL` is not set.
pub fn pg_admin_url() -> Option<String> {
    match std::env::var("KEYWARD_TEST_PG_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("SKIPPED: PostgreSQL fleet tests need KEYWARD_TEST_PG_URL (run `export KEYWARD_TEST_PG_URL=$(scripts/pg-test-server start)`, as scripts/test does)");
            None
        }
    }
}

/// Stops, starts or restarts the shared test PostgreSQL server (`KEYWARD_TEST_PG_CTL`, else
/// scripts/pg-test-server). Only tests alone in their binary may call it.
pub fn pg_ctl(action: &str) {
    let ctl = std::env::var("KEYWARD_TEST_PG_CTL")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-test-server").to_string());
    let st = std::process::Command::new(&ctl).arg(action).stdout(std::process::Stdio::null()).status().unwrap();
    assert!(st.success(), "{ctl} {action} failed");
}

/// A fresh, empty database on the test server; returns its URL.
pub async fn fresh_pg_db(admin: &str) -> String {
    let (client, conn) =
        tokio_postgres::connect(admin, tokio_postgres::NoTls).await.expect("connect to KEYWARD_TEST_PG_URL");
    tokio::spawn(conn);
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    let name = format!("kw_{}", hex::encode(b));
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let mut url = url::Url::parse(admin).unwrap();
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// Stores a Vapi credential for `tenant` through the admin API (200 asserted).
pub async fn put_vapi(d: &Daemon, tenant: &str, key: &str) {
    let (s, v) = d
        .admin(
            "PUT",
            &format!("/v1/tenants/{tenant}/credentials/vapi"),
            Some(&serde_json::json!({"api_key": key}).to_string()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

/// `keyward admin token new NAME --role ROLE --out FILE` in `dir`: the token, and the
/// `[[admin.users]]` entry the command printed.
pub fn admin_user(dir: &Path, name: &str, role: &str) -> (String, String) {
    let f = dir.join(name);
    let out =
        Command::new(BIN).args(["admin", "token", "new", name, "--role", role, "--out"]).arg(&f).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let entry =
        String::from_utf8(out.stdout).unwrap().lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n");
    (std::fs::read_to_string(&f).unwrap().trim().to_string(), entry)
}

/// Plays a store writer: copies tenant `from`'s wrapped data key over `to`'s in a stopped
/// daemon's sled store; returns the wrapped key's bytes.
pub async fn copy_wrapped_key(store_path: &Path, from: &str, to: &str) -> Vec<u8> {
    use base64::Engine;
    let store = keyward::store::SledStore::open(store_path).unwrap();
    let tenants = store.raw_tree("tenants").unwrap();
    let src: Value = serde_json::from_slice(&tenants.get(from).unwrap().unwrap()).unwrap();
    let mut dst: Value = serde_json::from_slice(&tenants.get(to).unwrap().unwrap()).unwrap();
    dst["wrapped_key"] = src["wrapped_key"].clone();
    tenants.insert(to, serde_json::to_vec(&dst).unwrap()).unwrap();
    store.flush().await.unwrap();
    base64::engine::general_purpose::STANDARD.decode(src["wrapped_key"].as_str().unwrap()).unwrap()
}
