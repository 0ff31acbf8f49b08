//! Fleet-mode benchmarks (PostgreSQL): cache-hit lookup (unchanged from sled), cold lookup
//! from PostgreSQL, invalidation latency across three replicas (p50, p99), and start-up
//! with N credentials in PostgreSQL.
//!
//! `KEYWARD_BENCH_PG_URL=$(scripts/pg-test-server start) cargo bench --bench fleet -- [--quick] [--json FILE]`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward::ids::TenantId;
use keyward::providers::Providers;
use keyward::secret::KeyBytes;
use keyward::store::{Change, PgStore, PgTarget, Store};
use keyward::Credentials;
use keyward::Keyring;
use serde_json::json;

#[path = "common.rs"]
mod common;

fn target(url: &str) -> PgTarget {
    PgTarget { config: url.parse().unwrap(), tls: None, display: url.to_string() }
}

async fn fresh_db(admin: &str) -> String {
    let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let name = format!("kwbench_{}", std::process::id());
    let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).await;
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let mut u = url::Url::parse(admin).unwrap();
    u.set_path(&format!("/{name}"));
    u.to_string()
}

async fn open(url: &str, key: &KeyBytes) -> (Arc<PgStore>, Arc<Credentials>) {
    let store = PgStore::open(target(url)).await.unwrap();
    let creds = Arc::new(
        Credentials::open(
            store.clone() as Arc<dyn Store>,
            Keyring::from_keys(key.clone(), vec![]),
            Providers::default_builtin(),
            Duration::from_secs(86400),
        )
        .await
        .unwrap(),
    );
    creds.watch_changes();
    (store, creds)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Writes `n` Vapi credentials for tenants `t0000000…` through `creds`, 1,000 per batch.
async fn populate(creds: &Credentials, n: usize) {
    common::populate_provider(creds, n, "vapi").await
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `--populate ADMIN_URL KEYFILE N`: a fresh database holding N credentials for the
    // daemon start-up measurement in bench/run-store; prints its URL and exits.
    if let Some(i) = args.iter().position(|a| a == "--populate") {
        let url = fresh_db(&args[i + 1]).await;
        let text = std::fs::read_to_string(&args[i + 2]).unwrap();
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD.decode(text.trim()).unwrap();
        let key = KeyBytes::new(raw.try_into().unwrap());
        let (_s, c) = open(&url, &key).await;
        populate(&c, args[i + 3].parse().unwrap()).await;
        println!("{url}");
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("fleet benchmarks: run with `cargo bench --bench fleet` and KEYWARD_BENCH_PG_URL set");
        return;
    }
    let Ok(admin) = std::env::var("KEYWARD_BENCH_PG_URL") else {
        println!("fleet benchmarks skipped: set KEYWARD_BENCH_PG_URL (e.g. $(scripts/pg-test-server start))");
        return;
    };
    let quick = args.iter().any(|a| a == "--quick");
    let json_out = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)).cloned();
    let n_start = if quick { 10_000 } else { 100_000 };
    let url = fresh_db(&admin).await;
    let key = KeyBytes::random().unwrap();
    let (_sa, a) = open(&url, &key).await;
    let (sb, b) = open(&url, &key).await;
    let (sc, c) = open(&url, &key).await;

    populate(&a, n_start).await;
    let t = TenantId::parse("t0000042").unwrap();

    // Cache hit (as with sled: a hash-map read).
    b.resolve(&t, "vapi").await.unwrap();
    let iters = if quick { 200_000 } else { 1_000_000 };
    let t0 = Instant::now();
    for _ in 0..iters {
        std::hint::black_box(b.resolve(&t, "vapi").await.unwrap());
    }
    let hit_ns = t0.elapsed().as_nanos() as f64 / iters as f64;

    // Cold lookup: PostgreSQL round trip + AES-GCM open.
    let iters = if quick { 2_000 } else { 10_000 };
    let tenants: Vec<TenantId> = (0..1000).map(|j| TenantId::parse(&format!("t{j:07}")).unwrap()).collect();
    let mut cold = Vec::with_capacity(iters);
    for k in 0..iters {
        b.invalidate_all();
        let t0 = Instant::now();
        b.resolve(&tenants[k % 1000], "vapi").await.unwrap();
        cold.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    let cold_p50 = pct(&mut cold, 0.5);
    let cold_p99 = pct(&mut cold, 0.99);

    // Invalidation latency: from the start of a write on replica a to the notification's
    // arrival at replicas b and c.
    let rounds = if quick { 100 } else { 300 };
    let mut lat = Vec::with_capacity(rounds * 2);
    for r in 0..rounds {
        let mut rb = sb.subscribe().unwrap();
        let mut rc = sc.subscribe().unwrap();
        let tenant = TenantId::parse(&format!("inv{r}")).unwrap();
        let t0 = Instant::now();
        a.put("bench", &tenant, "vapi", json!({"api_key": format!("k-{r}-0123456789abcdef")})).await.unwrap();
        for rx in [&mut rb, &mut rc] {
            loop {
                match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap() {
                    Change::Credential { tenant: ref tn, .. } if tn == tenant.as_str() => break,
                    _ => continue,
                }
            }
            lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let inv_p50 = pct(&mut lat, 0.5);
    let inv_p99 = pct(&mut lat, 0.99);
    drop((a, b, c));

    // Start-up with n_start credentials: connect, check migrations, check the key.
    let mut starts = vec![];
    for _ in 0..3 {
        let t0 = Instant::now();
        let (_s, cr) = open(&url, &key).await;
        cr.resolve(&t, "vapi").await.unwrap();
        starts.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let start_ms = pct(&mut starts, 0.5);

    println!("fleet benchmarks ({}), PostgreSQL on loopback", if quick { "quick" } else { "full" });
    println!("  cache-hit lookup              {hit_ns:>8.0} ns");
    println!("  cold lookup from PostgreSQL   {cold_p50:>8.0} µs p50, {cold_p99:.0} µs p99");
    println!("  invalidation, 3 replicas      {inv_p50:>8.2} ms p50, {inv_p99:.2} ms p99 (goal < 100 ms p99)");
    println!("  start-up, {n_start} creds     {start_ms:>8.0} ms");
    if let Some(p) = json_out {
        let v = json!({"pg_cache_hit_ns": hit_ns, "pg_cold_lookup_p50_us": cold_p50, "pg_cold_lookup_p99_us": cold_p99,
            "invalidation_p50_ms": inv_p50, "invalidation_p99_ms": inv_p99, "pg_startup_ms": start_ms, "pg_startup_credentials": n_start});
        std::fs::write(p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
    // Leave the test cluster as it was.
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let name = format!("kwbench_{}", std::process::id());
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
}
