//! The access log (`[telemetry] access_log`): one JSON record per proxied request and per
//! webhook delivery with the facts an on-call engineer needs, never a query value, a header
//! value or a body; a file is reopened on SIGHUP (logrotate), or records go to the log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::fake::*;
use common::vapi_hooks;
use common::*;
use serde_json::{json, Value};

const KEY: &str = "CANARYaccessVapiKey000000000001";
const HMAC: &str = "CANARYaccessVapiHmac00000000002";
const QUERY_CANARY: &str = "CANARYaccessQueryValue000000003";
const HEADER_CANARY: &str = "CANARYaccessHeaderValue00000004";
const BODY_CANARY: &str = "CANARYaccessBodyValue0000000005";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

async fn daemon(access_log: &str, pki: &Pki, vapi: &FakeProvider, app: &FakeApp) -> Daemon {
    vapi_hooks::daemon(&format!("access_log = \"{access_log}\""), vec![], pki, vapi, app, (KEY, HMAC)).await
}

/// A proxied POST with a traceparent, a canary query value, header and body; an unknown
/// tenant; a verified webhook delivery and a forged one.
async fn traffic(d: &Daemon) {
    let tp = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let (s, _, _) = d
        .app(
            "POST",
            &format!("/vapi/call?token={QUERY_CANARY}"),
            &[("keyward-tenant", "acme"), ("traceparent", &tp), ("x-note", HEADER_CANARY)],
            Some(format!("{{\"note\":\"{BODY_CANARY}\"}}").into_bytes()),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "nobody")], None).await;
    assert_eq!(s, 404);
    assert_eq!(vapi_hooks::deliver(d, Some(HMAC), BODY_CANARY).await, 200);
    assert_eq!(vapi_hooks::deliver(d, None, BODY_CANARY).await, 401);
}

/// Waits for `n` records in the file (flushed at least once a second).
async fn records(path: &Path, n: usize) -> Vec<Value> {
    for _ in 0..60 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("fewer than {n} records in {}: {:?}", path.display(), std::fs::read_to_string(path));
}

fn assert_record_facts(r: &[Value]) {
    let proxied = &r[0];
    assert_eq!(proxied["kind"], "proxy");
    assert_eq!(
        (&proxied["tenant"], &proxied["provider"], &proxied["method"], &proxied["path"]),
        (&json!("acme"), &json!("vapi"), &json!("POST"), &json!("/vapi/call")),
        "the path without its query: {proxied}"
    );
    assert_eq!((proxied["status"].as_u64(), proxied["upstream_status"].as_u64()), (Some(200), Some(200)));
    assert_eq!(proxied["trace_id"], TRACE, "the app's trace");
    assert!(proxied["client"].as_str().unwrap().starts_with("uid:"), "{proxied}");
    assert_eq!(proxied["bytes_in"].as_u64(), Some(format!("{{\"note\":\"{BODY_CANARY}\"}}").len() as u64));
    assert_eq!(proxied["bytes_out"].as_u64(), Some(r#"{"ok":true}"#.len() as u64), "{proxied}");
    let (total, up, resolve) = (
        proxied["total_us"].as_u64().unwrap(),
        proxied["upstream_us"].as_u64().unwrap(),
        proxied["resolve_us"].as_u64().unwrap(),
    );
    assert!(up <= total && resolve <= total, "{proxied}");
    assert!(proxied["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(proxied.get("error").is_none());

    let unknown = &r[1];
    assert_eq!((unknown["status"].as_u64(), unknown["error"].as_str()), (Some(404), Some("unknown_tenant")));
    assert!(unknown.get("upstream_status").is_none() && unknown.get("trace_id").is_none(), "{unknown}");

    let delivered = &r[2];
    assert_eq!((delivered["kind"].as_str(), delivered["provider"].as_str()), (Some("webhook"), Some("vapi")));
    assert_eq!((delivered["tenant"].as_str(), delivered["status"].as_u64()), (Some("acme"), Some(200)), "{delivered}");
    assert_eq!(delivered["upstream_status"].as_u64(), Some(200), "the app's answer");
    assert!(
        delivered["upstream_us"].is_u64()
            && delivered["resolve_us"].is_u64()
            && delivered["bytes_in"].as_u64() > Some(0)
    );
    let forged = &r[3];
    assert_eq!((forged["status"].as_u64(), forged["error"].as_str()), (Some(401), Some("bad_signature")), "{forged}");
    assert!(forged.get("tenant").is_none(), "an unverified delivery names no tenant: {forged}");
}

#[tokio::test]
async fn a_file_record_per_request_and_delivery_with_no_secret_reopened_on_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let vapi = FakeProvider::start(&pki).await;
    let app =
        FakeApp::start(std::sync::Arc::new(|_r: Recorded| Box::pin(async { json_response(200, r#"{"ok":1}"#) }))).await;
    let path = tmp.path().join("access.jsonl");
    let mut d = daemon(&path.display().to_string(), &pki, &vapi, &app).await;
    traffic(&d).await;
    let r = records(&path, 4).await;
    assert_eq!(r.len(), 4, "{r:?}");
    assert_record_facts(&r);
    assert!(r.iter().all(|l| l["time"].as_str().unwrap().ends_with('Z')), "RFC 3339, UTC");
    assert_eq!(app.count(), 1, "only the verified delivery reached the app");

    // logrotate: move the file, SIGHUP; the next records go to a new file at the path.
    let rotated = tmp.path().join("access.jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    d.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    let fresh = records(&path, 1).await;
    assert_eq!((fresh.len(), fresh[0]["path"].as_str()), (1, Some("/vapi/assistant")));
    assert_eq!(std::fs::read_to_string(&rotated).unwrap().lines().count(), 4, "the old file kept its records");
    d.stop();

    let mut all = std::fs::read(&rotated).unwrap();
    all.extend(std::fs::read(&path).unwrap());
    all.extend(d.logs().into_bytes());
    let canaries = [KEY, HMAC, QUERY_CANARY, HEADER_CANARY, BODY_CANARY];
    assert_eq!(canary_hits(&all, &canaries), 0, "no secret, query value, header value or body in records or logs");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o007, 0, "not world-readable");
}

#[tokio::test]
async fn records_go_to_the_log_as_keyward_access_events_or_nowhere() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let vapi = FakeProvider::start(&pki).await;
    let app =
        FakeApp::start(std::sync::Arc::new(|_r: Recorded| Box::pin(async { json_response(200, r#"{"ok":1}"#) }))).await;
    let mut d = daemon("log", &pki, &vapi, &app).await;
    traffic(&d).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events: Vec<Value> = d.log_lines().into_iter().filter(|l| l["target"] == "keyward::access").collect();
    assert_eq!(events.len(), 4, "{events:?}");
    assert_record_facts(&events);
    d.stop();
    let canaries = [KEY, HMAC, QUERY_CANARY, HEADER_CANARY, BODY_CANARY];
    assert_eq!(canary_hits(d.logs().as_bytes(), &canaries), 0);

    let mut off = daemon("off", &pki, &vapi, &app).await;
    traffic(&off).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(off.log_lines().iter().all(|l| l["target"] != "keyward::access"), "off writes no record");
    off.stop();
}
