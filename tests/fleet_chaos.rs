//! Fleet chaos: three sidecars on one PostgreSQL, random writes, deletes, restores, route
//! writes and key rotations spread across them, while PostgreSQL is restarted and a sidecar
//! is `kill -9`ed and started again. Afterwards every acknowledged write is present, every
//! credential opens from every sidecar, and `audit verify` holds.
//!
//! Each (tenant, provider) is written by one worker in sequence, so what is acknowledged
//! is exactly known; an operation whose answer was lost (a transport error, a 5xx) may or
//! may not have happened, and both outcomes are accepted. All workers share the tenants,
//! so tenant creation, re-wraps and writes race across sidecars.
//!
//! Short by default (~20 s in the suite); `KEYWARD_CHAOS_SECONDS` makes it longer
//! (`bench/chaos` runs it for minutes and prints the figures for docs/benchmarks.md). Alone
//! in its test binary: it restarts the shared PostgreSQL server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, clippy::too_many_arguments)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fake::*;
use common::*;
use serde_json::{json, Value};

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One admin call over a Unix socket; `Err` when no answer came back.
async fn call(sock: &PathBuf, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value), String> {
    use http_body_util::BodyExt;
    let fut = async {
        let s = tokio::net::UnixStream::connect(sock).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "keyward")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
            .unwrap();
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    };
    tokio::time::timeout(Duration::from_secs(15), fut).await.map_err(|_| "timed out".to_string())?
}

/// What may be true of one credential: every value and deletion state still possible.
#[derive(Debug, Clone, Default)]
struct Possible {
    values: BTreeSet<String>,
    deleted: BTreeSet<bool>,
}

#[derive(Default)]
struct Figures {
    ops: AtomicU64,
    acked: AtomicU64,
    unanswered: AtomicU64,
    kills: AtomicU64,
    pg_restarts: AtomicU64,
    rotations: AtomicU64,
}

const PROVIDERS: [(&str, &str); 3] =
    [("vapi", "authorization"), ("resend", "authorization"), ("elevenlabs", "xi-api-key")];

fn expected_header(provider: &str, value: &str) -> String {
    if provider == "elevenlabs" {
        value.to_string()
    } else {
        format!("Bearer {value}")
    }
}

/// One worker: writes its provider's credential for every tenant, in sequence, through
/// random sidecars; worker 0 also writes routes; any worker may rotate keys.
async fn worker(
    w: usize,
    socks: Vec<PathBuf>,
    tenants: Vec<String>,
    model: Arc<Mutex<HashMap<(String, String), Possible>>>,
    routes: Arc<Mutex<HashMap<String, BTreeSet<String>>>>,
    figures: Arc<Figures>,
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    let provider = PROVIDERS[w].0;
    let mut rng = Rng(seed ^ (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let sock = &socks[rng.below(socks.len() as u64) as usize];
        let tenant = tenants[rng.below(tenants.len() as u64) as usize].clone();
        let key = (tenant.clone(), provider.to_string());
        let base = format!("/v1/tenants/{tenant}/credentials/{provider}");
        let roll = rng.below(100);
        figures.ops.fetch_add(1, Ordering::Relaxed);
        let exists = model.lock().unwrap().contains_key(&key);
        let answered = if roll < 50 || !exists {
            let value = format!("CANARYchaos-{w}-{n}-{}", rng.next() % 1_000_000);
            let r = call(sock, "PUT", &base, Some(json!({"api_key": value}))).await;
            let mut m = model.lock().unwrap();
            let p = m.entry(key.clone()).or_default();
            match &r {
                Ok((200, _)) => {
                    *p = Possible { values: [value].into(), deleted: [false].into() };
                }
                Ok((s, v)) if *s < 500 => panic!("PUT {base}: {s} {v}"),
                _ => {
                    p.values.insert(value);
                    p.deleted.insert(false);
                }
            }
            r
        } else if roll < 65 {
            let r = call(sock, "DELETE", &base, None).await;
            let mut m = model.lock().unwrap();
            let p = m.get_mut(&key).unwrap();
            match &r {
                Ok((200, _)) => p.deleted = [true].into(),
                // Already deleted (an earlier unanswered delete happened).
                Ok((404, v)) if v["error"]["code"] == "no_credential" => p.deleted = [true].into(),
                Ok((s, v)) if *s < 500 => panic!("DELETE {base}: {s} {v}"),
                _ => {
                    p.deleted.insert(true);
                }
            }
            r
        } else if roll < 80 {
            let r = call(sock, "POST", &format!("{base}/restore"), None).await;
            let mut m = model.lock().unwrap();
            let p = m.get_mut(&key).unwrap();
            match &r {
                Ok((200, _)) => p.deleted = [false].into(),
                // Not deleted: restore has nothing to undo.
                Ok((409, v)) if v["error"]["code"] == "conflict" => p.deleted = [false].into(),
                Ok((s, v)) if *s < 500 => panic!("restore {base}: {s} {v}"),
                _ => {
                    p.deleted.insert(false);
                }
            }
            r
        } else if roll < 92 && w == 0 {
            let id = format!("asst-{}", rng.below(6));
            let r =
                call(sock, "PUT", &format!("/v1/routes/vapi-assistant/{id}"), Some(json!({"tenant": tenant}))).await;
            let mut m = routes.lock().unwrap();
            let owners = m.entry(id.clone()).or_default();
            match &r {
                Ok((200, _)) => *owners = [tenant].into(),
                Ok((s, v)) if *s < 500 => panic!("route {id}: {s} {v}"),
                _ => {
                    owners.insert(tenant);
                }
            }
            r
        } else {
            let r = call(sock, "POST", "/v1/keys/rotate?limit=2", None).await;
            if let Ok((s, v)) = &r {
                assert!(*s == 200 || *s >= 500 || *s == 409, "rotate: {s} {v}");
                if *s == 200 {
                    figures.rotations.fetch_add(v["rewrapped"].as_u64().unwrap_or(0), Ordering::Relaxed);
                }
            }
            r
        };
        match answered {
            Ok((s, _)) if s < 500 => figures.acked.fetch_add(1, Ordering::Relaxed),
            _ => figures.unanswered.fetch_add(1, Ordering::Relaxed),
        };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_under_faults_loses_no_acknowledged_write() {
    let Some(admin) = pg_admin_url() else { return };
    let seconds: u64 = std::env::var("KEYWARD_CHAOS_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(16);
    let seed: u64 = std::env::var("KEYWARD_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("chaos: seed {seed} (KEYWARD_CHAOS_SEED to replay), {seconds} s");
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let fakes = [FakeProvider::start(&pki).await, FakeProvider::start(&pki).await, FakeProvider::start(&pki).await];
    let db = fresh_pg_db(&admin).await;
    let upstream = format!(
        "[upstream]\nextra_ca = \"{}\"\n{}",
        pki.ca_pem.display(),
        PROVIDERS
            .iter()
            .zip(&fakes)
            .map(|((p, _), f)| format!("[providers.{p}]\nbase_url = \"{}\"\n", f.url))
            .collect::<String>()
    );
    let cfg = |key: Option<PathBuf>, previous: Vec<PathBuf>| DaemonConfig {
        app: Some(String::new()),
        pg_url: Some(db.clone()),
        master_key_file: key,
        previous,
        extra: upstream.clone(),
        ..DaemonConfig::default()
    };
    // Tenants written under an older master key first, so rotations have work to race.
    let mut old = Daemon::new(cfg(None, vec![]));
    old.start();
    let tenants: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let model: Arc<Mutex<HashMap<(String, String), Possible>>> = Arc::default();
    for t in &tenants[..6] {
        let v = format!("CANARYchaos-old-{t}");
        let (s, _) = old
            .admin("PUT", &format!("/v1/tenants/{t}/credentials/vapi"), Some(&json!({"api_key": v}).to_string()))
            .await;
        assert_eq!(s, 200);
        model
            .lock()
            .unwrap()
            .insert((t.clone(), "vapi".into()), Possible { values: [v].into(), deleted: [false].into() });
    }
    old.stop();
    let old_key = old.config.master_key_file.clone().unwrap();
    let new_key = tmp.path().join("new-master-key");
    write_key(&new_key);
    let mut fleet: Vec<Daemon> =
        (0..3).map(|_| Daemon::new(cfg(Some(new_key.clone()), vec![old_key.clone()]))).collect();
    std::thread::scope(|s| {
        for d in fleet.iter_mut() {
            s.spawn(move || {
                d.start();
            });
        }
    });
    let socks: Vec<PathBuf> = fleet.iter().map(|d| d.admin_sock.clone()).collect();
    let routes: Arc<Mutex<HashMap<String, BTreeSet<String>>>> = Arc::default();
    let figures = Arc::new(Figures::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|w| {
            tokio::spawn(worker(
                w,
                socks.clone(),
                tenants.clone(),
                model.clone(),
                routes.clone(),
                figures.clone(),
                seed,
                stop.clone(),
            ))
        })
        .collect();
    // Faults, at random moments: a sidecar killed and started again, PostgreSQL restarted.
    let mut rng = Rng(seed);
    let t0 = Instant::now();
    let end = Duration::from_secs(seconds);
    while t0.elapsed() < end {
        tokio::time::sleep(Duration::from_millis(1500 + rng.below(2500))).await;
        if t0.elapsed() >= end {
            break;
        }
        if rng.below(3) == 0 {
            let t = Instant::now();
            tokio::task::spawn_blocking(|| pg_ctl("restart")).await.unwrap();
            figures.pg_restarts.fetch_add(1, Ordering::Relaxed);
            eprintln!("chaos: PostgreSQL restarted at {:?} (took {:?})", t0.elapsed(), t.elapsed());
        } else {
            let i = rng.below(3) as usize;
            fleet[i].kill9();
            figures.kills.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200 + rng.below(800))).await;
            let d = &mut fleet[i];
            tokio::task::block_in_place(|| d.start());
            eprintln!("chaos: sidecar {i} killed and restarted at {:?}", t0.elapsed());
        }
    }
    // At least one of each fault, whatever the dice said.
    if figures.pg_restarts.load(Ordering::Relaxed) == 0 {
        tokio::task::spawn_blocking(|| pg_ctl("restart")).await.unwrap();
        figures.pg_restarts.fetch_add(1, Ordering::Relaxed);
    }
    if figures.kills.load(Ordering::Relaxed) == 0 {
        fleet[1].kill9();
        figures.kills.fetch_add(1, Ordering::Relaxed);
        tokio::task::block_in_place(|| fleet[1].start());
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    // Every sidecar agrees with every acknowledged write.
    let model = model.lock().unwrap().clone();
    let routes = routes.lock().unwrap().clone();
    let mut lost = Vec::new();
    for d in &fleet {
        // A restarted sidecar may still be reconnecting: wait until its store answers.
        let t = Instant::now();
        while d.admin("GET", "/v1/tenants?limit=1", None).await.0 != 200 {
            assert!(t.elapsed() < Duration::from_secs(20), "a sidecar never came back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for ((tenant, provider), p) in &model {
            let (s, status) = d.admin("GET", &format!("/v1/tenants/{tenant}/credentials/{provider}"), None).await;
            let deleted = s == 404;
            assert!(s == 200 || deleted, "{tenant}/{provider}: {s} {status}");
            if !p.deleted.contains(&deleted) {
                lost.push(format!("{tenant}/{provider}: deleted = {deleted}, acknowledged {:?}", p.deleted));
            }
            if deleted {
                continue;
            }
            let fake = &fakes[PROVIDERS.iter().position(|(n, _)| n == provider).unwrap()];
            let (s, _, body) = d.app("GET", &format!("/{provider}/x"), &[("keyward-tenant", tenant)], None).await;
            assert_eq!(s, 200, "{tenant}/{provider} does not open: {}", String::from_utf8_lossy(&body));
            let header = PROVIDERS.iter().find(|(n, _)| n == provider).unwrap().1;
            let got = fake.last().header(header).unwrap();
            if !p.values.iter().any(|v| expected_header(provider, v) == got) {
                lost.push(format!("{tenant}/{provider}: serves {got}, acknowledged {:?}", p.values));
            }
        }
        for (id, owners) in &routes {
            let (s, r) = d.admin("GET", &format!("/v1/routes/vapi-assistant/{id}"), None).await;
            assert_eq!(s, 200, "route {id}: {r}");
            if !owners.contains(r["tenant"].as_str().unwrap()) {
                lost.push(format!("route {id}: {r}, acknowledged {owners:?}"));
            }
        }
        let (s, report) = d.admin("GET", "/v1/audit/verify", None).await;
        assert_eq!((s, report["ok"].as_bool()), (200, Some(true)), "{report}");
    }
    // The rotation finishes from any sidecar, and everything still opens.
    let (s, r) = fleet[2].admin("POST", "/v1/keys/rotate", None).await;
    assert_eq!((s, r["remaining"].as_u64()), (200, Some(0)), "{r}");
    let f = &figures;
    eprintln!(
        "chaos figures: {} s, {} operations ({} answered, {} unanswered), {} sidecar kills, {} PostgreSQL restarts, {} tenant keys re-wrapped during the run, {} credentials checked on 3 sidecars, writes lost: {}",
        seconds,
        f.ops.load(Ordering::Relaxed),
        f.acked.load(Ordering::Relaxed),
        f.unanswered.load(Ordering::Relaxed),
        f.kills.load(Ordering::Relaxed),
        f.pg_restarts.load(Ordering::Relaxed),
        f.rotations.load(Ordering::Relaxed),
        model.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:#?}");
    assert!(f.acked.load(Ordering::Relaxed) > 50, "the run did some work");
}
