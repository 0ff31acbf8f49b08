//! Store benchmarks (issue: core performance): cache-hit lookup, cold lookup (store read +
//! open), durable credential write, and start-up to ready with N stored credentials.
//!
//! `cargo bench --bench store -- [--quick] [--json FILE]`, or `-- --populate DIR KEYFILE N
//! [PROVIDER]` to leave a store of N tenants for the daemon benchmarks. Plain timing loops with warm-up
//! and several rounds (median reported), so the harness adds no dependency.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward::ids::TenantId;
use keyward::providers::Providers;
use keyward::secret::KeyBytes;
use keyward::store::{SledStore, Store};
use keyward::Credentials;
use keyward::Keyring;
use serde_json::json;

#[path = "common.rs"]
mod common;
use common::{fields_for, populate_provider};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

async fn open(dir: &std::path::Path, key: &KeyBytes) -> Arc<Credentials> {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir).unwrap());
    Arc::new(
        Credentials::open(
            store,
            Keyring::from_keys(key.clone(), vec![]),
            Providers::default_builtin(),
            Duration::from_secs(86400),
        )
        .await
        .unwrap(),
    )
}

async fn populate(creds: &Credentials, n: usize) {
    populate_provider(creds, n, "twilio").await
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_out = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)).cloned();
    let n_start: usize = if quick { 10_000 } else { 100_000 };
    // `--populate DIR KEYFILE N`: leave a store of N credentials for the daemon start-up
    // measurement in bench/run-store, then exit.
    if let Some(i) = args.iter().position(|a| a == "--populate") {
        let dir = std::path::PathBuf::from(&args[i + 1]);
        let keyfile = std::path::PathBuf::from(&args[i + 2]);
        let n: usize = args[i + 3].parse().unwrap();
        let text = std::fs::read_to_string(&keyfile).unwrap();
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD.decode(text.trim()).unwrap();
        let key = KeyBytes::new(raw.try_into().unwrap());
        let provider = args.get(i + 4).filter(|p| !p.starts_with("--")).cloned().unwrap_or_else(|| "twilio".into());
        let c = open(&dir, &key).await;
        populate_provider(&c, n, &provider).await;
        return;
    }
    // `cargo test --all-targets` runs bench binaries without `--bench`: do nothing then.
    if !args.iter().any(|a| a == "--bench") {
        println!("store benchmarks: run with `cargo bench --bench store`");
        return;
    }
    let key = KeyBytes::random().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let creds = open(dir.path(), &key).await;
    populate(&creds, 1000).await;
    let tenant = TenantId::parse("t0000500").unwrap();

    // Cache hit.
    creds.resolve(&tenant, "twilio").await.unwrap();
    let iters = if quick { 200_000 } else { 2_000_000 };
    let mut rounds = vec![];
    for _ in 0..5 {
        let t0 = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(creds.resolve(&tenant, "twilio").await.unwrap());
        }
        rounds.push(t0.elapsed().as_nanos() as f64 / iters as f64);
    }
    let hit_ns = median(rounds);

    // Cold lookup: the cache is emptied before each lookup, so each one reads the store,
    // opens the record and parses it. The data-key cache stays warm, as in production.
    let iters = if quick { 5_000 } else { 50_000 };
    let tenants: Vec<TenantId> = (0..1000).map(|j| TenantId::parse(&format!("t{j:07}")).unwrap()).collect();
    let mut rounds = vec![];
    for _ in 0..5 {
        let t0 = Instant::now();
        for i in 0..iters {
            creds.invalidate_all();
            std::hint::black_box(creds.resolve(&tenants[i % 1000], "twilio").await.unwrap());
        }
        rounds.push(t0.elapsed().as_nanos() as f64 / iters as f64 / 1000.0);
    }
    let cold_us = median(rounds);

    // Durable writes (each acknowledged after flush).
    let iters = if quick { 50 } else { 300 };
    let t0 = Instant::now();
    for i in 0..iters {
        creds.put("bench", &tenant, "twilio", fields_for("twilio", i)).await.unwrap();
    }
    let write_ms = t0.elapsed().as_secs_f64() * 1000.0 / iters as f64;
    drop(creds);

    // Start-up with n_start credentials: open the store and check the key, as `serve` does.
    let big = tempfile::tempdir().unwrap();
    {
        let c = open(big.path(), &key).await;
        populate(&c, n_start).await;
    }
    let mut starts = vec![];
    for _ in 0..3 {
        let t0 = Instant::now();
        let c = open(big.path(), &key).await;
        c.resolve(&TenantId::parse("t0000042").unwrap(), "twilio").await.unwrap();
        starts.push(t0.elapsed().as_secs_f64() * 1000.0);
        drop(c);
    }
    let start_ms = median(starts);

    println!("store benchmarks ({})", if quick { "quick" } else { "full" });
    println!("  cache-hit lookup         {hit_ns:>10.0} ns   (target < 1000 ns)");
    println!("  cold lookup              {cold_us:>10.1} µs   (target < 50 µs)");
    println!("  durable write            {write_ms:>10.2} ms");
    println!("  start-up, {n_start} creds {start_ms:>10.0} ms   (target < 1000 ms, library open; see bench/run-store for the daemon)");
    if let Some(path) = json_out {
        let v = json!({"cache_hit_ns": hit_ns, "cold_lookup_us": cold_us, "durable_write_ms": write_ms, "startup_ms": start_ms, "startup_credentials": n_start});
        std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
}
