//! keyward's benchmark load generator: one client for every target (TCP, Unix socket,
//! HTTPS), so keyward, nginx, HAProxy and the direct call are measured the same way.
//!
//! ```text
//! loadgen run --target tcp:127.0.0.1:8080|unix:/path|https:127.0.0.1:8443 [--ca FILE]
//!             --path /vapi/x [--header 'K: V']… [--connections 32] [--duration 10]
//!             [--rate RPS] [--tenants N] [--body-size BYTES]
//!             [--sign stdwh:SECRET|twilio:TOKEN:URL|telnyx:SEED|vonage:SECRET:API_KEY] [--json FILE]
//! loadgen gencert DIR          # ca.pem, server.pem, server.key for the local upstream
//! loadgen hmac                 # raw HMAC-SHA256 cost, 1 KiB and 64 KiB
//! loadgen relay LISTEN TO       # a proxy that does nothing: bytes both ways, the floor
//! loadgen cold KIB GAP…         # what a gap (µs asleep, or spin:µs awake) costs a warm working set
//! ```
//!
//! With `--rate`, requests are sent open-loop on a fixed schedule and latency is measured
//! from the scheduled send time, so a stalled server cannot hide its queueing delay
//! (no coordinated omission). Without it, every connection sends back to back (saturation).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use hmac::Mac;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

#[derive(Clone)]
enum Target {
    Tcp(String),
    Unix(String),
    Https(String, Arc<rustls::ClientConfig>),
}

#[derive(Clone)]
enum Sign {
    None,
    Stdwh(Vec<u8>),
    /// HMAC-SHA1 over URL + sorted parameters, with a new CallSid each time (Twilio's
    /// replay key is the signature: a repeated one is refused as a replay). The sorted
    /// string is `URL Body<filler> CallSid<sid>`, so the HMAC over everything before the
    /// CallSid is computed once and cloned per request: at 64 KiB, hashing the filler anew
    /// for each delivery made this client, not keyward, the limit.
    Twilio {
        filler: Arc<str>,
        signed_prefix: Box<hmac::Hmac<sha1::Sha1>>,
    },
    /// Ed25519 over `timestamp|body`, the body naming a new event each time.
    Telnyx(Box<ed25519_dalek::SigningKey>),
    /// An HS256 callback JWT binding the body's hash and the account's api_key, a new jti
    /// each time.
    Vonage {
        key: Vec<u8>,
        api_key: String,
    },
}

#[derive(Clone)]
struct Opts {
    target: Target,
    path: String,
    headers: Vec<(String, String)>,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
    tenants: usize,
    body: Bytes,
    sign: Sign,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

async fn connect(t: &Target) -> Sender {
    macro_rules! hs {
        ($io:expr) => {{
            let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new($io)).await.unwrap();
            tokio::spawn(c);
            s
        }};
    }
    match t {
        Target::Tcp(a) => {
            let s = tokio::net::TcpStream::connect(a).await.unwrap();
            s.set_nodelay(true).unwrap();
            hs!(s)
        }
        Target::Unix(p) => hs!(tokio::net::UnixStream::connect(p).await.unwrap()),
        Target::Https(a, cfg) => {
            let s = tokio::net::TcpStream::connect(a).await.unwrap();
            s.set_nodelay(true).unwrap();
            let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect("localhost".try_into().unwrap(), s)
                .await
                .unwrap();
            hs!(tls)
        }
    }
}

fn build_request(o: &Opts, seq: u64) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder()
        .method(if o.body.is_empty() { "GET" } else { "POST" })
        .uri(&o.path)
        .header("host", "bench");
    for (k, v) in &o.headers {
        b = b.header(k, v);
    }
    if o.tenants > 0 {
        b = b.header("keyward-tenant", format!("t{:07}", seq as usize % o.tenants));
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut body = o.body.clone();
    match &o.sign {
        Sign::None => {}
        Sign::Telnyx(key) => {
            use ed25519_dalek::Signer;
            let filler = "x".repeat(o.body.len().saturating_sub(60));
            body = Bytes::from(format!(
                "{{\"data\":{{\"id\":\"ev-{}-{seq}\",\"event_type\":\"call.initiated\"}},\"d\":\"{filler}\"}}",
                std::process::id()
            ));
            let ts = now.to_string();
            let mut msg = format!("{ts}|").into_bytes();
            msg.extend_from_slice(&body);
            let sig = base64::engine::general_purpose::STANDARD.encode(key.sign(&msg).to_bytes());
            b = b
                .header("telnyx-signature-ed25519", sig)
                .header("telnyx-timestamp", ts)
                .header("content-type", "application/json");
        }
        Sign::Vonage { key, api_key } => {
            use sha2::Digest;
            let b64 = |x: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(x);
            let hash = hex::encode(sha2::Sha256::digest(&body));
            let claims = format!(
                "{{\"iat\":{now},\"jti\":\"bench-{}-{seq}\",\"iss\":\"Vonage\",\"api_key\":\"{api_key}\",\"payload_hash\":\"{hash}\"}}",
                std::process::id()
            );
            let input = format!("{}.{}", b64(br#"{"alg":"HS256","typ":"JWT"}"#), b64(claims.as_bytes()));
            let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
            m.update(input.as_bytes());
            let jwt = format!("{input}.{}", b64(&m.finalize().into_bytes()));
            b = b.header("authorization", format!("Bearer {jwt}")).header("content-type", "application/json");
        }
        Sign::Stdwh(key) => {
            let id = format!("msg_{}_{seq}", std::process::id());
            let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
            let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
            m.update(format!("{id}.{ts}.").as_bytes());
            m.update(&o.body);
            let sig = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
            b = b
                .header("webhook-id", id)
                .header("webhook-timestamp", ts)
                .header("webhook-signature", format!("v1,{sig}"))
                .header("content-type", "application/json");
        }
        Sign::Twilio { filler, signed_prefix } => {
            // `CallSid=CA…&Body=x…`: the signed string is URL + "Body" + x… + "CallSid" + CA…
            // (sorted parameters).
            let call_sid = format!("CA{:08x}{seq:024x}", std::process::id());
            body = Bytes::from(format!("CallSid={call_sid}&Body={filler}"));
            let mut m = (**signed_prefix).clone();
            m.update(b"CallSid");
            m.update(call_sid.as_bytes());
            let sig = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
            b = b.header("x-twilio-signature", sig).header("content-type", "application/x-www-form-urlencoded");
        }
    }
    b.body(Full::new(body)).unwrap()
}

struct Outcome {
    latencies_us: Vec<u32>,
    errors: u64,
}

async fn worker(o: Arc<Opts>, id: usize, seq: Arc<AtomicU64>, ready: Arc<tokio::sync::Barrier>) -> Outcome {
    let mut s = connect(&o.target).await;
    // Every connection is open before the clock starts.
    ready.wait().await;
    let start = Instant::now();
    let mut lat = Vec::with_capacity(100_000);
    let mut errors = 0;
    let interval = o.rate.map(|r| Duration::from_secs_f64(o.connections as f64 / r));
    let mut next = start + interval.map(|i| i.mul_f64(id as f64 / o.connections as f64)).unwrap_or_default();
    while start.elapsed() < o.duration {
        let scheduled = if let Some(i) = interval {
            let t = next;
            next += i;
            if Instant::now() >= t {
                // Late because the previous request took long: count from the schedule
                // (no coordinated omission).
                t
            } else {
                // The timer's millisecond granularity is not the server's delay: count from
                // when the send actually starts.
                tokio::time::sleep_until(t.into()).await;
                Instant::now()
            }
        } else {
            Instant::now()
        };
        let n = seq.fetch_add(1, Ordering::Relaxed);
        let ok = match s.send_request(build_request(&o, n)).await {
            Ok(resp) => {
                let good = resp.status().is_success();
                good && resp.into_body().collect().await.is_ok()
            }
            Err(_) => false,
        };
        lat.push(scheduled.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if !ok {
            errors += 1;
            if s.is_closed() {
                s = connect(&o.target).await;
            }
        }
    }
    Outcome { latencies_us: lat, errors }
}

fn body_size_arg(args: &[String]) -> usize {
    arg(args, "--body-size").map(|s| s.parse().unwrap()).unwrap_or(0)
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn run(args: Vec<String>) {
    let target = arg(&args, "--target").expect("--target");
    let target = if let Some(a) = target.strip_prefix("tcp:") {
        Target::Tcp(a.into())
    } else if let Some(p) = target.strip_prefix("unix:") {
        Target::Unix(p.into())
    } else if let Some(a) = target.strip_prefix("https:") {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_file_iter(arg(&args, "--ca").expect("--ca")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        Target::Https(
            a.into(),
            Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth()),
        )
    } else {
        panic!("target must be tcp:, unix: or https:")
    };
    let headers = args
        .windows(2)
        .filter(|w| w[0] == "--header")
        .map(|w| {
            let (k, v) = w[1].split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let sign = match arg(&args, "--sign") {
        None => Sign::None,
        Some(s) if s.starts_with("stdwh:") => {
            let secret = s.trim_start_matches("stdwh:").trim_start_matches("whsec_");
            Sign::Stdwh(base64::engine::general_purpose::STANDARD.decode(secret).unwrap())
        }
        Some(s) if s.starts_with("twilio:") => {
            // twilio:TOKEN:URL
            let (token, url) = s.trim_start_matches("twilio:").split_once(':').unwrap();
            let filler: Arc<str> = "x".repeat(body_size_arg(&args).saturating_sub(48)).into();
            let mut m = hmac::Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
            m.update(format!("{url}Body{filler}").as_bytes());
            Sign::Twilio { filler, signed_prefix: Box::new(m) }
        }
        Some(s) if s.starts_with("telnyx:") => {
            // telnyx:SEED — the signing key from a 32-byte seed of that byte (its public
            // half is what bench/run stores as the credential's public_key).
            let seed: u8 = s.trim_start_matches("telnyx:").parse().unwrap();
            Sign::Telnyx(Box::new(ed25519_dalek::SigningKey::from_bytes(&[seed; 32])))
        }
        Some(s) if s.starts_with("vonage:") => {
            // vonage:SECRET:API_KEY
            let (key, api_key) = s.trim_start_matches("vonage:").split_once(':').unwrap();
            Sign::Vonage { key: key.as_bytes().to_vec(), api_key: api_key.to_string() }
        }
        Some(other) => panic!("unknown --sign {other}"),
    };
    let body_size = body_size_arg(&args);
    let body = match &sign {
        Sign::Twilio { .. } => Bytes::from("x".repeat(body_size)), // sized; rewritten per request
        _ if body_size > 0 => Bytes::from(format!("{{\"d\":\"{}\"}}", "x".repeat(body_size.saturating_sub(8)))),
        _ => Bytes::new(),
    };
    let o = Arc::new(Opts {
        target,
        path: arg(&args, "--path").unwrap_or_else(|| "/".into()),
        headers,
        connections: arg(&args, "--connections").map(|s| s.parse().unwrap()).unwrap_or(32),
        duration: Duration::from_secs_f64(arg(&args, "--duration").map(|s| s.parse().unwrap()).unwrap_or(10.0)),
        rate: arg(&args, "--rate").map(|s| s.parse().unwrap()),
        tenants: arg(&args, "--tenants").map(|s| s.parse().unwrap()).unwrap_or(0),
        body,
        sign,
    });
    let seq = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(tokio::sync::Barrier::new(o.connections + 1));
    let tasks: Vec<_> =
        (0..o.connections).map(|i| tokio::spawn(worker(o.clone(), i, seq.clone(), ready.clone()))).collect();
    ready.wait().await;
    let start = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let out = t.await.unwrap();
        all.extend(out.latencies_us);
        errors += out.errors;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let result = serde_json::json!({
        "requests": all.len(),
        "errors": errors,
        "rps": all.len() as f64 / elapsed,
        "p50_us": pct(&all, 0.50),
        "p99_us": pct(&all, 0.99),
        "p999_us": pct(&all, 0.999),
        "max_us": all.last().copied().unwrap_or(0),
    });
    println!("{result}");
    if let Some(f) = arg(&args, "--json") {
        std::fs::write(f, result.to_string()).unwrap();
    }
}

fn gencert(dir: &str) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let dir = std::path::Path::new(dir);
    std::fs::create_dir_all(dir).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "keyward bench CA");
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

fn hmac_cost() {
    let mut out = serde_json::Map::new();
    for size in [1024usize, 65536] {
        let body = vec![b'x'; size];
        let key = [7u8; 32];
        let iters = if size == 1024 { 400_000 } else { 8_000 };
        let t0 = Instant::now();
        for i in 0..iters {
            let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
            m.update(format!("msg_{i}.1700000000.").as_bytes());
            m.update(&body);
            std::hint::black_box(m.finalize().into_bytes());
        }
        let per = t0.elapsed().as_secs_f64() / iters as f64;
        out.insert(format!("hmac_sha256_{size}_us"), serde_json::json!(per * 1e6));
        out.insert(format!("hmac_sha256_{size}_per_s"), serde_json::json!(1.0 / per));
    }
    println!("{}", serde_json::Value::Object(out));
}

/// A TCP relay with no work in it: each accepted connection gets a connection to `to`
/// and one blocking thread per direction that writes what it reads. What a proxy costs
/// and adds in latency on this machine before it parses, verifies or injects anything:
/// the same hops, wake-ups and socket copies as keyward's, and nothing else (TLS passes
/// through unopened). One thread a direction because a blocked `read` is the fewest
/// syscalls a hop can take (no poll before it).
fn relay(listen: &str, to: &str) {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    fn pipe(mut from: TcpStream, mut into: TcpStream) {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if into.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = into.shutdown(Shutdown::Write);
    }
    let listener = TcpListener::bind(listen).expect("relay: bind");
    for client in listener.incoming().flatten() {
        let Ok(upstream) = TcpStream::connect(to) else { continue };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        std::thread::spawn(move || pipe(client, upstream));
        std::thread::spawn(move || pipe(u2, c2));
    }
}

/// How much of a warm working set survives an idle gap on this machine: walk `kib` KiB of
/// resident memory (one dependent load per 64-byte line, in a shuffled order so the
/// prefetcher cannot hide a miss) back to back, and after each gap: asleep (the vCPU idles,
/// as a server's does between requests at low load) or spinning (it stays on the CPU, so
/// only what else shares the core can evict). On a dedicated core a gap of a few hundred µs
/// leaves L1/L2 warm; where the walk after a gap is slower, that is what each wake-up of a
/// server pays for its own code and data (see docs/benchmarks.md, "--floor").
fn cold(kib: usize, gaps: &[(u64, bool)]) {
    let lines = kib * 1024 / 64;
    // next[i] is the line after line i in a random cycle: the loads depend on each other.
    let mut order: Vec<usize> = (0..lines).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..lines).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let mut next = vec![0usize; lines * 8];
    for w in 0..lines {
        next[order[w] * 8] = order[(w + 1) % lines] * 8;
    }
    for &(gap, spin) in std::iter::once(&(0, false)).chain(gaps) {
        let mut times: Vec<f64> = (0..2000)
            .map(|_| {
                if spin {
                    let until = Instant::now() + Duration::from_micros(gap);
                    while Instant::now() < until {}
                } else if gap > 0 {
                    std::thread::sleep(Duration::from_micros(gap));
                }
                let t0 = Instant::now();
                let mut at = next[0];
                for _ in 0..lines {
                    at = next[at];
                }
                std::hint::black_box(at);
                t0.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let (p50, p90) = (times[times.len() / 2], times[times.len() * 9 / 10]);
        println!(
            "| {kib} KiB | {} | {p50:.1} | {p90:.1} | {:.1} |",
            match (gap, spin) {
                (0, _) => "none (back to back)".to_string(),
                (_, true) => format!("{gap} µs spinning"),
                (_, false) => format!("{gap} µs asleep"),
            },
            p50 * 1000.0 / lines as f64
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("gencert") => gencert(args.get(2).expect("DIR")),
        Some("hmac") => hmac_cost(),
        // The public half of `--sign telnyx:SEED`'s key, for the bench credential.
        Some("telnyx-public") => {
            let seed: u8 = args.get(2).expect("SEED").parse().unwrap();
            let pk = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
            println!("{}", base64::engine::general_purpose::STANDARD.encode(pk.to_bytes()));
        }
        Some("relay") => relay(args.get(2).expect("LISTEN"), args.get(3).expect("TO")),
        Some("cold") => {
            let gaps: Vec<(u64, bool)> = args[3..]
                .iter()
                .map(|g| match g.strip_prefix("spin:") {
                    Some(us) => (us.parse().expect("spin:µs"), true),
                    None => (g.parse().expect("GAP µs"), false),
                })
                .collect();
            cold(args.get(2).expect("KIB").parse().expect("KIB"), &gaps)
        }
        Some("run") => tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run(args)),
        _ => eprintln!("usage: loadgen run|gencert|hmac|telnyx-public|relay|cold …"),
    }
}
