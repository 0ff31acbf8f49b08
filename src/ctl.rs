//! Admin-API client for the CLI. Never opens the database: the CLI talks to the daemon.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::config::{Config, ProcessEnv};

/// Where the daemon's admin API is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// Admin Unix socket.
    Unix(PathBuf),
    /// Admin TCP (`host:port`) with a bearer token.
    Tcp(String, String),
    /// Admin TCP over TLS (`host:port`, token, extra CA file from $KEYWARD_ADMIN_CA).
    Tls(String, String, Option<PathBuf>),
}

/// A failed admin call, with the daemon's code and message.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code})")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Public code.
    pub code: String,
    /// Message.
    pub message: String,
}

/// Resolves the endpoint: `--admin`, else `$KEYWARD_ADMIN`, else the config's admin.unix.
pub fn endpoint(admin: Option<&str>, config: Option<&Path>) -> Result<Endpoint> {
    let chosen = admin.map(str::to_string).or_else(|| std::env::var("KEYWARD_ADMIN").ok());
    if let Some(a) = chosen {
        for (scheme, tls) in [("http://", false), ("https://", true)] {
            let Some(hostport) = a.strip_prefix(scheme) else { continue };
            let file = std::env::var("KEYWARD_ADMIN_TOKEN_FILE")
                .context("admin over TCP needs $KEYWARD_ADMIN_TOKEN_FILE naming the token file")?;
            let token = std::fs::read_to_string(&file).with_context(|| format!("cannot read {file}"))?;
            let (hostport, token) = (hostport.trim_end_matches('/').to_string(), token.trim_end().to_string());
            return Ok(if tls {
                Endpoint::Tls(hostport, token, std::env::var_os("KEYWARD_ADMIN_CA").map(PathBuf::from))
            } else {
                Endpoint::Tcp(hostport, token)
            });
        }
        return Ok(Endpoint::Unix(PathBuf::from(a)));
    }
    if let Some(c) = config {
        let cfg = Config::load(c, &ProcessEnv)?;
        if let Some(p) = cfg.admin.unix {
            return Ok(Endpoint::Unix(p));
        }
        bail!("{} has no admin.unix; pass --admin", c.display());
    }
    bail!("no admin socket: pass --admin PATH, set KEYWARD_ADMIN, or pass --config FILE")
}

/// Sends one request and returns the JSON answer, or the daemon's error.
pub async fn call(ep: &Endpoint, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Value> {
    let mut req = Request::builder().method(method).uri(path).header("host", "keyward-admin");
    if let Endpoint::Tcp(_, token) | Endpoint::Tls(_, token, _) = ep {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = match ep {
        Endpoint::Unix(p) => {
            let stream = tokio::net::UnixStream::connect(p)
                .await
                .with_context(|| format!("cannot reach the daemon at {} (is `keyward serve` running?)", p.display()))?;
            send(TokioIo::new(stream), req).await?
        }
        Endpoint::Tcp(hp, _) => {
            let stream = tokio::net::TcpStream::connect(hp.as_str())
                .await
                .with_context(|| format!("cannot reach the daemon at {hp}"))?;
            send(TokioIo::new(stream), req).await?
        }
        Endpoint::Tls(hp, _, ca) => {
            let host = hp.rsplit_once(':').map_or(hp.as_str(), |(h, _)| h).trim_matches(['[', ']']);
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|_| anyhow!("{host} is not a host name or address"))?;
            let cfg = crate::tls::client_config(ca.as_deref(), &[b"http/1.1"])?;
            let tcp = tokio::net::TcpStream::connect(hp.as_str())
                .await
                .with_context(|| format!("cannot reach the daemon at {hp}"))?;
            let stream =
                tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)).connect(name, tcp).await.with_context(
                    || format!("TLS to {hp} failed (set $KEYWARD_ADMIN_CA to the CA that signed its certificate)"),
                )?;
            send(TokioIo::new(stream), req).await?
        }
    };
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|_| anyhow!("the daemon answered {status} with a body that is not JSON"))?;
    if status.is_success() {
        return Ok(v);
    }
    if v.get("error").is_some() {
        return Err(ApiError {
            status,
            code: v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
            message: v["error"]["message"].as_str().unwrap_or("").to_string(),
        }
        .into());
    }
    Ok(v)
}

async fn send<I>(io: I, req: Request<Full<Bytes>>) -> Result<http::Response<hyper::body::Incoming>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender.send_request(req).await?)
}

/// Percent-encodes one path segment.
pub fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

// ---------------------------------------------------------------------------------------
// Client commands
// ---------------------------------------------------------------------------------------

use crate::cli::{AuditCmd, CredCmd, KeyCmd, LogCmd, RouteCmd};
use std::io::Read;
use zeroize::Zeroizing;

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn read_fields(file: Option<&Path>) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    match file {
        Some(f) => {
            let mut fh = std::fs::File::open(f).with_context(|| format!("cannot open {}", f.display()))?;
            fh.read_to_end(&mut buf)?;
        }
        None => {
            std::io::stdin().read_to_end(&mut buf).context("cannot read stdin")?;
        }
    }
    if buf.iter().all(u8::is_ascii_whitespace) {
        bail!("no credential fields given: pipe a JSON object on stdin or pass --file");
    }
    Ok(buf)
}

fn cred_path(t: &str, p: &str) -> String {
    format!("/v1/tenants/{}/credentials/{}", seg(t), seg(p))
}

/// `keyward cred …`
pub async fn cred(ep: &Endpoint, cmd: CredCmd) -> Result<()> {
    match cmd {
        CredCmd::Put { tenant, provider, verify, file } => {
            let body = read_fields(file.as_deref())?;
            let q = if verify { "?verify=true" } else { "" };
            let v =
                call(ep, Method::PUT, &format!("{}{q}", cred_path(&tenant, &provider)), Some(body.to_vec())).await?;
            if let Some(w) = v.get("warnings").and_then(Value::as_array) {
                for w in w {
                    eprintln!("warning: {}", w.as_str().unwrap_or_default());
                }
            }
            print_json(&v);
        }
        CredCmd::Ls { tenant, deleted, json } => {
            let q = if deleted { "?include_deleted=true" } else { "" };
            let v = call(ep, Method::GET, &format!("/v1/tenants/{}/credentials{q}", seg(&tenant)), None).await?;
            if json {
                print_json(&v);
            } else {
                let mut rows = Vec::new();
                for c in v["credentials"].as_array().into_iter().flatten() {
                    let hints: Vec<String> = c["hints"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, h)| format!("{k}={}", h.as_str().unwrap_or("")))
                        .collect();
                    let status =
                        if c.get("deleted_at").is_some() { "deleted" } else { c["status"].as_str().unwrap_or("") };
                    rows.push(vec![
                        c["provider"].as_str().unwrap_or("").to_string(),
                        status.to_string(),
                        c["version"].to_string(),
                        c["updated_at"].as_str().unwrap_or("").to_string(),
                        c["last_verified_at"].as_str().unwrap_or("-").to_string(),
                        c["last_error"].as_str().unwrap_or("-").to_string(),
                        hints.join(" "),
                    ]);
                }
                print!(
                    "{}",
                    table(&["PROVIDER", "STATUS", "VER", "UPDATED", "VERIFIED", "LAST ERROR", "HINTS"], &rows, &[2])
                );
            }
        }
        CredCmd::Get(t) => print_json(&call(ep, Method::GET, &cred_path(&t.tenant, &t.provider), None).await?),
        CredCmd::Rm(t) => print_json(&call(ep, Method::DELETE, &cred_path(&t.tenant, &t.provider), None).await?),
        CredCmd::Restore(t) => {
            print_json(&call(ep, Method::POST, &format!("{}/restore", cred_path(&t.tenant, &t.provider)), None).await?)
        }
        CredCmd::CallbackUrl(t) => {
            let v =
                call(ep, Method::POST, &format!("{}/callback-url", cred_path(&t.tenant, &t.provider)), None).await?;
            println!("{}", v["callback_url"].as_str().unwrap_or_default());
        }
        CredCmd::Verify(t) => {
            let v = call(ep, Method::POST, &format!("{}/verify", cred_path(&t.tenant, &t.provider)), None).await?;
            print_json(&v);
            if v["verification"]["result"] != "valid" {
                let why = v["verification"]["detail"].as_str().unwrap_or("?");
                bail!("the {} credential of {} did not verify: {why}", t.provider, t.tenant);
            }
        }
    }
    Ok(())
}

/// `keyward route …`
pub async fn route(ep: &Endpoint, cmd: RouteCmd) -> Result<()> {
    let v = match cmd {
        RouteCmd::Put { kind, id, tenant } => {
            let body = serde_json::to_vec(&serde_json::json!({"tenant": tenant}))?;
            call(ep, Method::PUT, &format!("/v1/routes/{}/{}", seg(&kind), seg(&id)), Some(body)).await?
        }
        RouteCmd::Get { kind, id } => {
            call(ep, Method::GET, &format!("/v1/routes/{}/{}", seg(&kind), seg(&id)), None).await?
        }
        RouteCmd::Rm { kind, id } => {
            call(ep, Method::DELETE, &format!("/v1/routes/{}/{}", seg(&kind), seg(&id)), None).await?
        }
    };
    print_json(&v);
    Ok(())
}

/// Prints one batch of audit entries: JSON lines, or a table (with its header when asked).
fn print_entries(v: &Value, json: bool, header: bool) {
    let mut rows = Vec::new();
    for e in v["entries"].as_array().into_iter().flatten() {
        if json {
            println!("{e}");
            continue;
        }
        let scope = [e["tenant"].as_str(), e["provider"].as_str(), e["target"].as_str()]
            .iter()
            .flatten()
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        rows.push(vec![
            e["seq"].to_string(),
            e["ts"].as_i64().map(keyward_core::time::rfc3339).unwrap_or_default(),
            e["actor"].as_str().unwrap_or("").to_string(),
            e["action"].as_str().unwrap_or("").to_string(),
            e["result"].as_str().unwrap_or("").to_string(),
            scope,
        ]);
    }
    if !json {
        let t = table(&["SEQ", "TIME", "ACTOR", "ACTION", "RESULT", "SCOPE"], &rows, &[0]);
        // Followed batches continue the table without repeating its header line.
        let t = if header { t } else { t.split_once('\n').map(|(_, rest)| rest.to_string()).unwrap_or_default() };
        print!("{t}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// `keyward audit …`. Returns false when `verify` finds the chain broken.
pub async fn audit(ep: &Endpoint, cmd: AuditCmd) -> Result<bool> {
    match cmd {
        AuditCmd::Tail { json, after, limit, follow } => {
            let mut after = match after {
                Some(a) => a,
                None => {
                    let head = call(ep, Method::GET, "/v1/audit?limit=0", None).await?;
                    head["head"].as_u64().unwrap_or(0).saturating_sub(limit)
                }
            };
            if !follow {
                let v = call(ep, Method::GET, &format!("/v1/audit?after={after}&limit={limit}"), None).await?;
                print_entries(&v, json, true);
                return Ok(true);
            }
            // Each request waits for the next commit (the daemon answers as soon as one
            // lands); a lost daemon is retried with backoff, resuming after the last seq.
            let mut backoff = std::time::Duration::from_millis(250);
            let mut header = !json;
            loop {
                let path = format!("/v1/audit?after={after}&limit={}&wait=20", limit.clamp(1, 1000));
                match call(ep, Method::GET, &path, None).await {
                    Ok(v) => {
                        backoff = std::time::Duration::from_millis(250);
                        if let Some(last) =
                            v["entries"].as_array().and_then(|e| e.last()).and_then(|e| e["seq"].as_u64())
                        {
                            print_entries(&v, json, header);
                            header = false;
                            after = last;
                        }
                    }
                    Err(e) => {
                        eprintln!("keyward audit tail: {e:#}; retrying after entry {after}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                    }
                }
            }
        }
        AuditCmd::Verify { checkpoint } => {
            let v = call(ep, Method::GET, "/v1/audit/verify", None).await?;
            if v["ok"].as_bool() != Some(true) {
                println!("audit chain BROKEN at entry {}: {}", v["first_bad_seq"], v["problem"].as_str().unwrap_or(""));
                return Ok(false);
            }
            println!("audit chain ok: {} entries", v["entries"]);
            match checkpoint {
                None => Ok(true),
                Some(file) => verify_checkpoints(ep, &file).await,
            }
        }
        AuditCmd::Checkpoint => {
            let v = call(ep, Method::GET, "/v1/audit/checkpoint", None).await?;
            println!("{v}");
            Ok(true)
        }
    }
}

/// The checkpoints in a file: checkpoint objects, audit entries whose target is one, or log
/// lines whose `checkpoint` field is one; one per line (or the whole file as one object).
fn read_checkpoints(text: &str) -> Vec<crate::creds::Checkpoint> {
    let parse = |v: &Value| -> Option<crate::creds::Checkpoint> {
        if let Ok(cp) = serde_json::from_value(v.clone()) {
            return Some(cp);
        }
        let inner = if v["action"] == crate::creds::CHECKPOINT_ACTION { &v["target"] } else { &v["checkpoint"] };
        inner.as_str().and_then(|s| serde_json::from_str(s).ok())
    };
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return parse(&v).into_iter().collect();
    }
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter_map(|v| parse(&v)).collect()
}

/// Each checkpoint must be signed by this store's key and name an entry the chain still
/// holds with the same hash; the chain itself was verified by the caller.
async fn verify_checkpoints(ep: &Endpoint, file: &std::path::Path) -> Result<bool> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let cps = read_checkpoints(&text);
    if cps.is_empty() {
        anyhow::bail!("{} holds no keyward checkpoint", file.display());
    }
    let current = call(ep, Method::GET, "/v1/audit/checkpoint", None).await?;
    let key = current["public_key"].as_str().unwrap_or_default();
    let head = current["seq"].as_u64().unwrap_or(0);
    let mut all = true;
    for cp in &cps {
        let verdict = if let Err(e) = cp.verify_signature() {
            Err(e.to_string())
        } else if cp.public_key != key {
            Err("signed by another key than this store's (a different store, or its integrity key was replaced)".into())
        } else if cp.seq > head {
            Err(format!("the chain has {head} entries, fewer than the {} checkpointed: truncated", cp.seq))
        } else {
            let page = call(ep, Method::GET, &format!("/v1/audit?after={}&limit=1", cp.seq - 1), None).await?;
            match page["entries"].as_array().and_then(|e| e.first()) {
                Some(e) if e["seq"].as_u64() == Some(cp.seq) && e["hash"].as_str() == Some(cp.head.as_str()) => Ok(()),
                Some(_) => {
                    Err(format!("entry {} no longer has the checkpointed hash: the chain was rewritten", cp.seq))
                }
                None => Err(format!("entry {} is gone: truncated", cp.seq)),
            }
        };
        match verdict {
            Ok(()) => println!("checkpoint {} ({}): the chain extends it (head now {head})", cp.seq, cp.time),
            Err(why) => {
                println!("checkpoint {} ({}): FAILED: {why}", cp.seq, cp.time);
                all = false;
            }
        }
    }
    Ok(all)
}

/// `keyward key rotate`: batches until nothing remains, with a progress bar;
/// `keyward key status`: tenant keys per source and key version.
pub async fn key(ep: &Endpoint, cmd: KeyCmd) -> Result<()> {
    let batch = match cmd {
        KeyCmd::Rotate { batch } => batch,
        KeyCmd::Status { json } => {
            let v = call(ep, Method::GET, "/v1/keys/status", None).await?;
            if json {
                print_json(&v);
            } else {
                print!("{}", key_status_table(&v));
            }
            return Ok(());
        }
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("re-wrapping tenant keys {bar:40} {pos}/{len} ({eta}) {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        let v = call(ep, Method::POST, &format!("/v1/keys/rotate?limit={}", batch.max(1)), None).await?;
        let total = v["total"].as_u64().unwrap_or(0);
        let remaining = v["remaining"].as_u64().unwrap_or(0);
        let to = source_text(&v["target"]);
        bar.set_length(total);
        bar.set_position(total - remaining.min(total));
        bar.set_message(format!("to {to}"));
        if remaining == 0 {
            bar.finish();
            println!("every tenant key is wrapped by {to} (master key {})", v["active_key_id"].as_str().unwrap_or("?"));
            return Ok(());
        }
    }
}

fn source_text(v: &serde_json::Value) -> String {
    format!("{} {} v{}", v["source"].as_str().unwrap_or("?"), v["key"].as_str().unwrap_or("?"), v["version"])
}

/// The `key status` table: one row per source and key version.
fn key_status_table(v: &serde_json::Value) -> String {
    let rows: Vec<Vec<String>> = v["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            vec![
                row["source"].as_str().unwrap_or("?").to_string(),
                row["key"].as_str().unwrap_or("?").to_string(),
                row["version"].to_string(),
                row["tenant_keys"].to_string(),
                if row["active"].as_bool() == Some(true) { "yes".into() } else { "-".into() },
            ]
        })
        .collect();
    let mut out = table(&["SOURCE", "KEY", "VERSION", "TENANT KEYS", "ACTIVE"], &rows, &[2, 3]);
    out.push_str(&format!("new tenant keys go to {}\n", source_text(&v["active"])));
    if v["mixed"].as_bool() == Some(true) {
        out.push_str("MIXED: tenant keys are wrapped by more than one source or version; run `keyward key rotate`\n");
    }
    out
}

/// `keyward log level`
pub async fn log(ep: &Endpoint, cmd: LogCmd) -> Result<()> {
    let LogCmd::Level { level } = cmd;
    let body = serde_json::to_vec(&serde_json::json!({"level": level}))?;
    print_json(&call(ep, Method::PUT, "/v1/log/level", Some(body)).await?);
    Ok(())
}

/// `keyward health`: one GET to the ops listener (plain HTTP, loopback); true on 200.
pub async fn health(url: &str) -> Result<bool> {
    let uri: http::Uri = url.parse().context("--url is not a URL")?;
    if uri.scheme_str() != Some("http") {
        bail!("--url must be http://host:port/path (the ops listener)");
    }
    let authority = uri.authority().context("--url needs host:port")?.to_string();
    let stream = tokio::time::timeout(std::time::Duration::from_secs(3), tokio::net::TcpStream::connect(&authority))
        .await
        .context("timed out connecting")?
        .with_context(|| format!("cannot connect to {authority}"))?;
    let req = Request::builder()
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header("host", authority.as_str())
        .body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(3), send(TokioIo::new(stream), req))
        .await
        .context("timed out")??;
    Ok(resp.status() == StatusCode::OK)
}

/// A text table whose columns line up whatever the values' widths (in characters); the
/// columns in `right` are right-aligned, the last column is not padded.
fn table(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate().take(cols) {
            let pad = width[i].saturating_sub(cell.chars().count());
            if i > 0 {
                out.push_str("  ");
            }
            if right.contains(&i) {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                if i + 1 < cols {
                    out.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(&mut header.iter().copied());
    for r in rows {
        out.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn table_columns_line_up_for_any_value_width() {
        let rows = vec![
            vec!["vapi".to_string(), "active".into(), "1".into(), "k=…abcd".into()],
            vec!["a-very-long-generic-provider".to_string(), "revoked".into(), "1234".into(), "x=…1".into()],
            vec!["é-ünïcode".to_string(), "inactive".into(), "7".into(), "-".into()],
        ];
        let t = table(&["PROVIDER", "STATUS", "VER", "HINTS"], &rows, &[2]);
        let lines: Vec<&str> = t.lines().collect();
        // Each column starts at the same character offset on every line.
        let starts = |l: &str| -> Vec<usize> {
            let chars: Vec<char> = l.chars().collect();
            let mut s = vec![0];
            for i in 1..chars.len() {
                if chars[i] != ' ' && chars[i - 1] == ' ' && i >= 2 && chars[i - 2] == ' ' {
                    s.push(i);
                }
            }
            s
        };
        let header = starts(lines[0]);
        assert_eq!(header.len(), 4, "{t}");
        for l in &lines[1..] {
            let st = starts(l);
            // Left-aligned columns start where the header's do; VER is right-aligned: it ends where the header's ends.
            assert_eq!((st[0], st[1], st[3]), (header[0], header[1], header[3]), "{t}");
        }
        assert!(lines[2].contains("1234") && lines[1].contains("   1  "), "{t}");
    }
}
