//! Master-key source benchmarks (issue: root of trust off the host): for the store and
//! `[master_key]` of a daemon config (a file key, Vault transit, or a PKCS#11 token), a cold
//! tenant's first lookup (its data key unwrapped through the source; p50 and p99) beside a
//! cached lookup, which must not change with the source. bench/run-kms runs it for each
//! source side by side with the daemon's start-up to ready.
//!
//! `cargo bench --bench kms -- --config FILE --populate N` writes N tenants (one Twilio
//! credential each) through that source; `-- --config FILE --measure M --label L --json OUT`
//! measures M cold tenants and appends to OUT.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward::config::Config;
use keyward::ids::TenantId;
use keyward::providers::Providers;
use keyward::store::{SledStore, Store};
use keyward::{Credentials, Keyring};

#[path = "common.rs"]
mod common;
use common::populate_provider;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

async fn open(config: &Config) -> Arc<Credentials> {
    let (keyring, _) = Keyring::load(&config.master_key, &keyward::env::ProcessEnv, false).unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&config.store.path).unwrap());
    Arc::new(
        Credentials::open(store, keyring, Providers::default_builtin(), Duration::from_secs(86400))
            .await
            .unwrap()
            .with_cache_entries(config.store.cache_entries)
            .with_key_ttl(config.master_key.cache_ttl),
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = arg(&args, "--config") else {
        println!("KMS benchmarks: run bench/run-kms (needs --config FILE)");
        return;
    };
    keyward::install_crypto_provider();
    let config = Config::load(std::path::Path::new(&path), &keyward::env::ProcessEnv).unwrap();
    let creds = open(&config).await;
    if let Some(n) = arg(&args, "--populate") {
        let n: usize = n.parse().unwrap();
        let t0 = Instant::now();
        populate_provider(&creds, n, "twilio").await;
        eprintln!("populated {n} tenants in {:.1} s", t0.elapsed().as_secs_f64());
        return;
    }
    let m: usize = arg(&args, "--measure").unwrap().parse().unwrap();
    let label = arg(&args, "--label").unwrap();
    // Cold: each lookup is a tenant this process has not unwrapped yet (store read, one
    // unwrap through the source, AES-GCM open, parse), spread over the store.
    let total = creds.key_status().await.unwrap().total as usize;
    let mut cold = Vec::with_capacity(m);
    for i in 0..m {
        let t = TenantId::parse(&format!("t{:07}", (i * 7919) % total)).unwrap();
        let t0 = Instant::now();
        std::hint::black_box(creds.resolve(&t, "twilio").await.unwrap());
        cold.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    cold.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // Cached: the same tenant again and again (a hash-map read; the source is not asked).
    let warm = TenantId::parse("t0000000").unwrap();
    creds.resolve(&warm, "twilio").await.unwrap();
    let iters = 1_000_000;
    let mut rounds = vec![];
    for _ in 0..5 {
        let t0 = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(creds.resolve(&warm, "twilio").await.unwrap());
        }
        rounds.push(t0.elapsed().as_nanos() as f64 / iters as f64);
    }
    rounds.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let row = serde_json::json!({
        "source": label,
        "cold_first_lookup_p50_us": percentile(&cold, 0.5),
        "cold_first_lookup_p99_us": percentile(&cold, 0.99),
        "cold_lookups": m,
        "cached_lookup_ns": rounds[2],
    });
    println!("{row}");
    if let Some(out) = arg(&args, "--json") {
        let mut all: Vec<serde_json::Value> =
            std::fs::read(&out).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        all.push(row);
        std::fs::write(&out, serde_json::to_vec_pretty(&all).unwrap()).unwrap();
    }
}
