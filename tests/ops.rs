//! End-to-end: operations: /metrics (checked with promtool), SIGTERM drain, SIGHUP reload,
//! the log level at run time, request ids in logs, systemd notifications.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, clippy::result_large_err)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fake::*;
use common::*;
use serde_json::json;

const KEY: &str = "CANARYopsVapiKey0000000000000001";

async fn put(d: &Daemon, tenant: &str, provider: &str, fields: serde_json::Value) {
    let (s, v) =
        d.admin("PUT", &format!("/v1/tenants/{tenant}/credentials/{provider}"), Some(&fields.to_string())).await;
    assert_eq!(s, 200, "{v}");
}

fn slow_handler() -> Handler {
    Arc::new(|r: Recorded| {
        Box::pin(async move {
            if r.path_and_query.contains("slow") {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            json_response(200, r#"{"ok":true}"#)
        })
    })
}

async fn daemon_with_vapi(
    extra: &str,
    app: &str,
    env: Vec<(String, String)>,
) -> (tempfile::TempDir, FakeProvider, Daemon) {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let vapi = FakeProvider::with_handler(&pki, slow_handler()).await;
    let mut d = Daemon::new(DaemonConfig {
        app: Some(app.to_string()),
        env,
        extra: format!(
            "[upstream]\nextra_ca = \"{}\"\n[providers.vapi]\nbase_url = \"{}\"\n{extra}",
            pki.ca_pem.display(),
            vapi.url
        ),
        ..DaemonConfig::default()
    });
    d.start();
    put(&d, "acme", "vapi", json!({"api_key": KEY})).await;
    (tmp, vapi, d)
}

#[tokio::test]
async fn metrics_pass_promtool_and_never_carry_a_secret() {
    let (_tmp, _vapi, d) = daemon_with_vapi("[webhooks]\nlisten = \"127.0.0.1:0\"\npublic_base_url = \"https://h.test\"\nforward_to = \"http://127.0.0.1:9\"\n", "", vec![]).await;
    for _ in 0..3 {
        d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    }
    d.app("GET", "/vapi/assistant", &[("keyward-tenant", "nobody")], None).await;
    let hook = tokio::net::TcpStream::connect(d.addr("webhooks")).await.unwrap();
    http_full(hyper_util::rt::TokioIo::new(hook), "POST", "/webhooks/resend/acme", Some(b"{}".to_vec()), &[]).await;
    let stream = tokio::net::TcpStream::connect(d.ops_addr.as_ref().unwrap()).await.unwrap();
    let (s, h, body) = http_full(hyper_util::rt::TokioIo::new(stream), "GET", "/metrics", None, &[]).await;
    assert_eq!(s, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(body).unwrap();
    for needle in [
        "keyward_build_info{version=",
        "keyward_proxy_requests_total{provider=\"vapi\",status=\"200\",error=\"\"} 3",
        "keyward_proxy_requests_total{provider=\"vapi\",status=\"404\",error=\"unknown_tenant\"} 1",
        "keyward_upstream_response_seconds_bucket{provider=\"vapi\",le=",
        "keyward_webhook_verifications_total{provider=\"resend\",result=\"rejected\",reason=\"no_credential\"} 1",
        "keyward_credential_cache_hits_total",
        "keyward_credential_cache_misses_total",
        "keyward_google_token_refreshes_total 0",
        "keyward_audit_chain_length",
        "keyward_webhook_replay_keys 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(!text.contains("acme"), "no tenant labels unless enabled");
    assert_eq!(canary_hits(text.as_bytes(), &[KEY]), 0);
    // promtool's own linter.
    let promtool =
        which("promtool").expect("promtool is missing: scripts/ci-deps installs it (Debian package prometheus)");
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// deploy/observability/: the alert rules pass `promtool check rules` and their unit tests
/// (`promtool test rules`), every alert has a test, and every metric the rules and the
/// Grafana dashboard name is one a running keyward exports (scraped after a call, a
/// webhook and an audit verification), so neither can drift from the code.
#[tokio::test]
async fn alert_rules_pass_their_promtool_tests_and_alerts_and_dashboard_name_only_exported_metrics() {
    let Some(promtool) = which("promtool") else {
        eprintln!("SKIPPED: promtool is missing (scripts/ci-deps installs it, Debian package prometheus)");
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/observability");
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]] {
        let out = std::process::Command::new(&promtool).args(args).current_dir(&root).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = std::fs::read_to_string(root.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(root.join("alerts.test.yml")).unwrap();
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for a in &alerts {
        assert!(tests.contains(&format!("alertname: {a}")), "{a} has no promtool unit test");
    }
    let dashboard = std::fs::read_to_string(root.join("grafana-keyward.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(dash["panels"].as_array().is_some_and(|p| p.len() >= 10));

    // A daemon that has done a bit of everything, then its exposition.
    let webhooks = "[webhooks]\nlisten = \"127.0.0.1:0\"\npublic_base_url = \"https://h.test\"\nforward_to = \"http://127.0.0.1:9\"\n";
    let (_tmp, _vapi, d) = daemon_with_vapi(webhooks, "", vec![]).await;
    d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    let hook = tokio::net::TcpStream::connect(d.addr("webhooks")).await.unwrap();
    http_full(hyper_util::rt::TokioIo::new(hook), "POST", "/webhooks/resend/acme", Some(b"{}".to_vec()), &[]).await;
    d.admin("POST", "/v1/tenants/acme/credentials/vapi/verify", None).await;
    let (s, _) = d.admin("GET", "/v1/audit/verify", None).await;
    assert_eq!(s, 200);
    let stream = tokio::net::TcpStream::connect(d.ops_addr.as_ref().unwrap()).await.unwrap();
    let (_, _, body) = http_full(hyper_util::rt::TokioIo::new(stream), "GET", "/metrics", None, &[]).await;
    let text = String::from_utf8(body).unwrap();
    let exported: std::collections::BTreeSet<&str> =
        text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    for needle in [
        "keyward_audit_chain_verified 1",
        "keyward_store_connected 1",
        "keyward_credential_checks_total 1",
        "keyward_oauth_refresh_failures_total 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // Only with a KMS-held master key (tests/kms.rs runs those).
    let conditional = ["keyward_kms_reachable", "keyward_kms_call_seconds_bucket"];
    let mut named = std::collections::BTreeSet::new();
    for source in [&rules, &dashboard] {
        let mut rest = source.as_str();
        while let Some(i) = rest.find("keyward_") {
            let tail = &rest[i..];
            let end =
                tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
            named.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    for m in &named {
        assert!(
            exported.contains(m.as_str()) || conditional.contains(&m.as_str()),
            "{m} is named in deploy/observability but not exported:\n{text}"
        );
    }
    assert!(named.len() >= 10, "{named:?}");
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(cmd)).find(|p| p.exists()))
}

#[tokio::test]
async fn tenant_labels_appear_only_when_enabled() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let vapi = FakeProvider::start(&pki).await;
    let mut d = Daemon::new(DaemonConfig {
        app: Some(String::new()),
        ops_extra: "metrics_tenant_labels = true".into(),
        extra: pki.upstream("vapi", &vapi.url),
        ..DaemonConfig::default()
    });
    d.start();
    put(&d, "acme", "vapi", json!({"api_key": KEY})).await;
    d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    let stream = tokio::net::TcpStream::connect(d.ops_addr.as_ref().unwrap()).await.unwrap();
    let (_, _, body) = http_full(hyper_util::rt::TokioIo::new(stream), "GET", "/metrics", None, &[]).await;
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("keyward_proxy_requests_by_tenant_total{tenant=\"acme\",provider=\"vapi\",status=\"200\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let (_tmp, _vapi, mut d) = daemon_with_vapi("", "", vec![]).await;
    let sock = d.app_sock();
    let inflight = tokio::spawn(async move {
        let s = tokio::net::UnixStream::connect(sock).await.unwrap();
        http_full(hyper_util::rt::TokioIo::new(s), "GET", "/vapi/slow", None, &[("keyward-tenant", "acme")]).await.0
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    d.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tokio::net::UnixStream::connect(d.app_sock()).await.is_err(), "no new connections once draining");
    assert_eq!(inflight.await.unwrap(), 200, "the in-flight request finished");
    let code = d.stop();
    assert_eq!(code, Some(0));
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(d.logs().contains("draining in-flight requests"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_rate_limits_without_dropping_connections_and_refuses_an_invalid_file() {
    let (_tmp, vapi, d) = daemon_with_vapi("", "", vec![]).await;
    // A keep-alive connection opened before the reload.
    let s = tokio::net::UnixStream::connect(d.app_sock()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    async fn get(sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>) -> u16 {
        use http_body_util::BodyExt;
        sender.ready().await.unwrap();
        let req = http::Request::builder()
            .uri("/vapi/assistant")
            .header("host", "k")
            .header("keyward-tenant", "acme")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        resp.into_body().collect().await.unwrap();
        status
    }
    assert_eq!(get(&mut sender).await, 200);

    // New config: a rate limit of 1 per minute, burst 1, and a stricter log level.
    let text = std::fs::read_to_string(&d.config_path).unwrap();
    let reloaded = text.replace(
        &format!("[providers.vapi]\nbase_url = \"{}\"\n", vapi.url),
        &format!("[providers.vapi]\nbase_url = \"{}\"\nrate_limit = {{ per_tenant = \"1/m\", burst = 1 }}\n", vapi.url),
    );
    assert_ne!(text, reloaded);
    std::fs::write(&d.config_path, &reloaded).unwrap();
    d.signal("HUP");
    let mut limited = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if d.logs().contains("configuration reloaded") {
            limited = true;
            break;
        }
    }
    assert!(limited, "the reload happened");
    let statuses: Vec<u16> = {
        let mut v = vec![];
        for _ in 0..3 {
            v.push(get(&mut sender).await);
        }
        v
    };
    assert!(statuses.contains(&429), "the new rate limit applies on the old connection: {statuses:?}");

    // An invalid file is refused; the running configuration stays.
    std::fs::write(&d.config_path, reloaded.replace("[log]", "[log]\nbogus_key = 1")).unwrap();
    d.signal("HUP");
    let mut refused = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if d.logs().contains("the new configuration is invalid; keeping the running one") {
            refused = true;
            break;
        }
    }
    assert!(refused);
    assert!(d.logs().contains("bogus_key"), "the reason names the key");
    let (s, _) = d.admin("GET", "/v1/tenants", None).await;
    assert_eq!(s, 200, "still serving");
}

#[tokio::test]
async fn the_log_level_changes_at_run_time_and_request_lines_carry_a_request_id() {
    let (_tmp, _vapi, d) = daemon_with_vapi("[telemetry]\naccess_log = \"log\"\n", "", vec![]).await;
    let (s, v) = d.admin("PUT", "/v1/log/level", Some(r#"{"level":"warn"}"#)).await;
    assert_eq!((s, v["level"].as_str()), (200, Some("warn")));
    let before = d.logs().lines().count();
    d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let new_lines: Vec<String> = d.logs().lines().skip(before).map(str::to_string).collect();
    assert!(new_lines.iter().all(|l| !l.contains("\"level\":\"INFO\"")), "info lines are off: {new_lines:?}");
    let (s, _) = d.admin("PUT", "/v1/log/level", Some(r#"{"level":"keyward=debug,info"}"#)).await;
    assert_eq!(s, 200);
    let (s, v) = d.admin("PUT", "/v1/log/level", Some(r#"{"level":"not a level=="}"#)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")));
    let before = d.logs().lines().count();
    d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lines: Vec<serde_json::Value> =
        d.logs().lines().skip(before).filter_map(|l| serde_json::from_str(l).ok()).collect();
    let request_lines: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"].as_str().is_some_and(|t| t.starts_with("keyward::proxy") || t == "keyward::access"))
        .collect();
    assert!(!request_lines.is_empty(), "{lines:?}");
    for l in request_lines {
        // Access records carry it as a field (written when the body ends, outside the span).
        let id = if l["target"] == "keyward::access" { &l["request_id"] } else { &l["span"]["request_id"] };
        assert!(id.is_string(), "a request line without request_id: {l}");
    }
}

#[tokio::test]
async fn systemd_hears_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut d = Daemon::new(DaemonConfig {
        env: vec![("NOTIFY_SOCKET".into(), path.display().to_string())],
        ..DaemonConfig::default()
    });
    d.start();
    let mut buf = [0u8; 128];
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    d.stop();
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
}
