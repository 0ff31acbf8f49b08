//! Fleet mode: PostgreSQL briefly down. Cached reads keep being served, writes fail with
//! `store_unavailable` and nothing half-written, /readyz says `degraded`; the sidecar
//! reconnects with backoff and resyncs (a change made while it was disconnected is seen).
//! Alone in its test binary: it stops the shared test server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, clippy::result_large_err)]

mod common;

use std::time::{Duration, Instant};

use common::fake::*;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_degrades_to_cached_reads_and_recovers() {
    let Some(admin) = pg_admin_url() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let vapi = FakeProvider::start(&pki).await;
    let db = fresh_pg_db(&admin).await;
    let cfg = |key: Option<std::path::PathBuf>| DaemonConfig {
        app: Some(String::new()),
        pg_url: Some(db.clone()),
        master_key_file: key,
        extra: pki.upstream("vapi", &vapi.url),
        ..DaemonConfig::default()
    };
    let mut a = Daemon::new(cfg(None));
    a.start();
    let mut b = Daemon::new(cfg(a.config.master_key_file.clone()));
    b.start();
    a.admin(
        "PUT",
        "/v1/tenants/acme/credentials/vapi",
        Some(&json!({"api_key": "key-one-0000000000000000"}).to_string()),
    )
    .await;
    let (s, _, _) = b.app("GET", "/vapi/x", &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200, "b has the credential in its cache");

    pg_ctl("stop");
    let result = std::panic::AssertUnwindSafe(async {
        // Reads from the cache keep working.
        let (s, _, _) = b.app("GET", "/vapi/x", &[("keyward-tenant", "acme")], None).await;
        assert_eq!(s, 200, "cached reads are served while PostgreSQL is down");
        // Writes fail cleanly.
        let (s, v) = b
            .admin(
                "PUT",
                "/v1/tenants/acme/credentials/vapi",
                Some(&json!({"api_key": "key-lost-00000000000000"}).to_string()),
            )
            .await;
        assert_eq!((s, v["error"]["code"].as_str()), (503, Some("store_unavailable")), "{v}");
        // Readiness says degraded.
        let mut degraded = false;
        for _ in 0..40 {
            let (s, r) = b.ops("/readyz").await;
            if r["status"] == "degraded" {
                assert_eq!(s, 200);
                assert_eq!(r["checks"]["store_connected"], false);
                degraded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(degraded, "/readyz reports the degraded state");
    });
    let outcome = futures_util::FutureExt::catch_unwind(result).await;
    pg_ctl("start");
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }

    // Recovery: the write that failed left nothing behind; new writes work; a change made
    // through a (reconnected) a is seen by b.
    let t0 = Instant::now();
    loop {
        let (s, r) = b.ops("/readyz").await;
        if s == 200 && r["status"] == "ready" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "b reconnects: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, v) = b.admin("GET", "/v1/tenants/acme/credentials/vapi", None).await;
    assert_eq!(v["version"], 1, "the failed write changed nothing");
    let t0 = Instant::now();
    loop {
        let (s, _) = a
            .admin(
                "PUT",
                "/v1/tenants/acme/credentials/vapi",
                Some(&json!({"api_key": "key-two-0000000000000000"}).to_string()),
            )
            .await;
        if s == 200 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "a reconnects");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t0 = Instant::now();
    loop {
        b.app("GET", "/vapi/x", &[("keyward-tenant", "acme")], None).await;
        if vapi.last().header("authorization").unwrap() == "Bearer key-two-0000000000000000" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "b resynced after the outage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, report) = b.admin("GET", "/v1/audit/verify", None).await;
    assert_eq!(report["ok"], true);
    assert!(b.logs().contains("PostgreSQL connection restored"));
}
