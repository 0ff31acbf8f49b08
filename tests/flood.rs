//! The public webhook port under a connection flood: thousands of slow and idle clients
//! must not stop the app, admin and ops listeners, and memory stays bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// Opens a connection to `addr` from the loopback address `127.0.0.{src}`.
async fn connect_from(src: u8, addr: std::net::SocketAddr) -> Option<tokio::net::TcpStream> {
    let s = TcpSocket::new_v4().ok()?;
    s.bind(std::net::SocketAddr::from(([127, 0, 0, src], 0))).ok()?;
    s.connect(addr).await.ok()
}

/// Whether the peer closed (EOF or reset) within `wait`.
async fn closed_within(s: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_slow_and_idle_webhook_connections_leave_the_other_listeners_answering() {
    // The test holds ~2,000 sockets itself.
    let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit { current: l.maximum, maximum: l.maximum },
    );
    let mut d = Daemon::new(DaemonConfig {
        app: Some(String::new()),
        // 1,024 descriptors: without caps the flood below would take them all.
        nofile: Some(1024),
        extra: "[webhooks]\nlisten = \"127.0.0.1:0\"\npublic_base_url = \"https://hooks.test\"\nforward_to = \"http://127.0.0.1:9\"\nbody_read_timeout = \"2s\"\nidle_timeout = \"3s\"\nmax_connections_per_source = 100\n".into(),
        ..DaemonConfig::default()
    });
    d.start();
    let addr: std::net::SocketAddr = d.addr("webhooks").parse().unwrap();
    let rss_before = rss_kib(d.pid());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    assert!(limits.lines().any(|l| l.starts_with("Max open files") && l.contains(" 1024 ")), "{limits}");
    // 2,000 connections from 20 source addresses, three kinds: a head that never ends, a
    // body that trickles, and an h2c connection that opens and then sits idle.
    let mut conns = Vec::new();
    let t_open = Instant::now();
    for i in 0..2000u32 {
        let Some(mut s) = connect_from(2 + (i % 20) as u8, addr).await else { continue };
        // The first 1,200 alone are more than the daemon's descriptors: heads that never end
        // (held 10 s by the header timeout). Then the other two kinds.
        let kind = if i < 1200 { 0 } else { 1 + i % 2 };
        let first: &[u8] = match kind {
            0 => b"POST /webhooks/resend/acme HTTP/1.1\r\nhost: x\r\n",
            1 => b"POST /webhooks/resend/acme HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n{\"a\":",
            _ => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        };
        let _ = s.write_all(first).await;
        conns.push((kind, s));
    }
    assert!(conns.len() >= 1900, "the test opened its connections ({})", conns.len());
    let fds = std::fs::read_dir(format!("/proc/{}/fd", d.pid())).unwrap().count();
    eprintln!("opened {} connections in {:?}; the daemon holds {fds} descriptors", conns.len(), t_open.elapsed());
    assert!(fds <= 1024 - 256, "the listeners' caps keep a reserve of descriptors: {fds} open");
    // Meanwhile every other listener answers.
    let t0 = Instant::now();
    let (s, _) = d.admin("GET", "/v1/tenants", None).await;
    assert_eq!(s, 200, "admin answers during the flood");
    let (s, _) = d.ops("/readyz").await;
    assert_eq!(s, 200, "ops answers during the flood");
    let (s, _, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 404, "the app listener answers (no credential) during the flood");
    assert!(t0.elapsed() < Duration::from_secs(5), "promptly: {:?}", t0.elapsed());
    // Connections past the caps were closed at once; the daemon holds a bounded number.
    let mut closed_now = 0;
    for (_, s) in conns.iter_mut() {
        if closed_within(s, Duration::from_millis(2)).await {
            closed_now += 1;
        }
    }
    assert!(closed_now >= 1000, "connections over the cap are closed at once ({closed_now} of {})", conns.len());
    let rss = rss_kib(d.pid());
    assert!(rss < rss_before + 64 * 1024, "memory stays bounded: {rss_before} KiB → {rss} KiB");
    // The admitted ones do not last: the trickling body hits its deadline (408), the idle
    // h2c connection its idle timeout. All watched at once, for 8 s at most.
    let mut open = Vec::new();
    for (kind, mut s) in conns {
        if !closed_within(&mut s, Duration::from_millis(1)).await {
            open.push(tokio::spawn(async move { (kind, closed_within(&mut s, Duration::from_secs(8)).await) }));
        }
    }
    let (mut open_kinds, mut ended) = ([0usize; 3], [0usize; 3]);
    for t in open {
        let (kind, closed) = t.await.unwrap();
        open_kinds[kind as usize] += 1;
        ended[kind as usize] += usize::from(closed);
    }
    assert_eq!(open_kinds[1], ended[1], "every slow body ended by its deadline: {open_kinds:?} {ended:?}");
    assert_eq!(open_kinds[2], ended[2], "every idle h2c connection closed: {open_kinds:?} {ended:?}");
    // And a new delivery gets through afterwards.
    let (s, _) = d.ops("/healthz").await;
    assert_eq!(s, 200);
    assert!(d.logs().contains("connection cap reached"));
}
