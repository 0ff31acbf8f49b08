//! End-to-end: transports of the app listener and the upstream side: WebSocket upgrades,
//! the mTLS TCP listener with SAN policy, HTTP/2 (h2c on the socket, ALPN on TLS and
//! upstream), and streaming without buffering.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, clippy::result_large_err)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::fake::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

const EL_KEY: &str = "sk_CANARYelevenWs00000000000000001";
const VAPI_KEY: &str = "CANARYvapiTransport0000000000002";

async fn put(d: &Daemon, tenant: &str, provider: &str, fields: serde_json::Value) {
    let (s, v) =
        d.admin("PUT", &format!("/v1/tenants/{tenant}/credentials/{provider}"), Some(&fields.to_string())).await;
    assert_eq!(s, 200, "{v}");
}

/// A TLS WebSocket server that records the handshake headers and echoes every message.
async fn ws_server(pki: &Pki) -> (String, Arc<Mutex<Vec<http::HeaderMap>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config(&[b"http/1.1"]));
    let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let seen = s2.clone();
            tokio::spawn(async move {
                let tls = acceptor.accept(tcp).await.unwrap();
                let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                    let mut h = req.headers().clone();
                    h.insert("x-test-path", req.uri().to_string().parse().unwrap());
                    seen.lock().unwrap().push(h);
                    Ok(resp)
                };
                let mut ws = tokio_tungstenite::accept_hdr_async(tls, cb).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
        }
    });
    (format!("https://127.0.0.1:{port}"), seen)
}

#[tokio::test]
async fn a_websocket_passes_through_with_the_credential_in_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let (url, seen) = ws_server(&pki).await;
    let mut d = Daemon::new(DaemonConfig {
        app: Some(String::new()),
        extra: format!(
            "[upstream]\nextra_ca = \"{}\"\n[providers.elevenlabs]\nbase_url = \"{url}\"\n",
            pki.ca_pem.display()
        ),
        ..DaemonConfig::default()
    });
    d.start();
    put(&d, "acme", "elevenlabs", json!({"api_key": EL_KEY})).await;

    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req =
        "ws://localhost/elevenlabs/v1/text-to-speech/voice-1/stream-input?model_id=m".into_client_request().unwrap();
    req.headers_mut().insert("keyward-tenant", "acme".parse().unwrap());
    req.headers_mut().insert("xi-api-key", "app-must-not-send".parse().unwrap());
    let stream = tokio::net::UnixStream::connect(d.app_sock()).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::text("{\"text\":\"hello\"}")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "{\"text\":\"hello\"}");
    ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo.into_data().as_ref(), &[1, 2, 3]);
    ws.close(None).await.unwrap();

    let handshake = seen.lock().unwrap()[0].clone();
    assert_eq!(handshake["xi-api-key"], EL_KEY, "the credential was injected into the upgrade request");
    assert_eq!(handshake.get_all("xi-api-key").iter().count(), 1);
    assert!(handshake.get("keyward-tenant").is_none());
    assert_eq!(handshake["upgrade"].to_str().unwrap().to_ascii_lowercase(), "websocket");
}

/// PROVIDERS-2.md §3, §6.1, §7, §8: each streaming API of the voice-AI pack gets its own
/// auth on the upgrade request, whatever the app sent, and the socket then carries frames
/// both ways. (Retell's custom-LLM socket is opened by Retell towards the app: nothing to
/// inject, not proxied.)
#[tokio::test]
async fn the_streaming_apis_of_the_voice_pack_get_their_auth_on_the_websocket_upgrade() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let (url, seen) = ws_server(&pki).await;
    let mut d = Daemon::new(DaemonConfig {
        app: Some(String::new()),
        extra: format!(
            "[upstream]\nextra_ca = \"{}\"\n[providers.deepgram]\nbase_url = \"{url}\"\n[providers.cartesia]\nbase_url = \"{url}\"\n\
             [providers.openai]\nbase_url = \"{url}/v1\"\n[providers.telnyx]\nbase_url = \"{url}/v2\"\n",
            pki.ca_pem.display()
        ),
        ..DaemonConfig::default()
    });
    d.start();
    let (dg, car, oai, tel) = (
        "CANARYdeepgramWs0000000000000003",
        "sk_car_CANARYcartesiaWs000000004",
        "sk-proj-CANARYopenaiWs0000000005",
        "KEYCANARYtelnyxWs00000000000006",
    );
    put(&d, "acme", "deepgram", json!({"api_key": dg})).await;
    put(&d, "acme", "cartesia", json!({"api_key": car})).await;
    put(&d, "acme", "openai", json!({"api_key": oai, "organization": "org-acme1", "project": "proj_voice"})).await;
    let pk = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]);
    put(&d, "acme", "telnyx", json!({"api_key": tel, "public_key": pk})).await;

    let cases: [(&str, &str, Vec<(&str, String)>); 5] = [
        (
            "/deepgram/v1/listen?model=nova-3&encoding=linear16",
            "/v1/listen?model=nova-3&encoding=linear16",
            vec![("authorization", format!("Token {dg}"))],
        ),
        ("/deepgram/v1/speak?model=aura-2", "/v1/speak?model=aura-2", vec![("authorization", format!("Token {dg}"))]),
        (
            "/cartesia/tts/websocket",
            "/tts/websocket",
            vec![("authorization", format!("Bearer {car}")), ("cartesia-version", "2026-03-01".into())],
        ),
        (
            "/openai/realtime?model=gpt-realtime",
            "/v1/realtime?model=gpt-realtime",
            vec![
                ("authorization", format!("Bearer {oai}")),
                ("openai-organization", "org-acme1".into()),
                ("openai-project", "proj_voice".into()),
            ],
        ),
        (
            "/telnyx/speech-to-text/transcription",
            "/v2/speech-to-text/transcription",
            vec![("authorization", format!("Bearer {tel}"))],
        ),
    ];
    for (i, (path, upstream_path, want)) in cases.iter().enumerate() {
        let mut req = format!("ws://localhost{path}").into_client_request().unwrap();
        req.headers_mut().insert("keyward-tenant", "acme".parse().unwrap());
        req.headers_mut().insert("authorization", "Bearer app-must-not-send".parse().unwrap());
        req.headers_mut().insert("x-api-key", "app-must-not-send".parse().unwrap());
        let stream = tokio::net::UnixStream::connect(d.app_sock()).await.unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async(req, stream).await.unwrap();
        assert_eq!(resp.status(), 101, "{path}");
        ws.send(Message::binary(vec![i as u8; 320])).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echo.into_data().as_ref(), &[i as u8; 320][..], "{path}: audio frames pass both ways");
        ws.send(Message::text("{\"type\":\"KeepAlive\"}")).await.unwrap();
        assert!(ws.next().await.unwrap().unwrap().is_text());
        ws.close(None).await.unwrap();
        let h = seen.lock().unwrap()[i].clone();
        for (name, value) in want {
            assert_eq!(
                h.get_all(*name).iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>(),
                [value.as_str()],
                "{path}: {name}"
            );
        }
        assert!(h.get("x-api-key").is_none() && h.get("keyward-tenant").is_none(), "{path}");
        assert_eq!(h["x-test-path"], *upstream_path, "{path}");
    }
    let logs = d.logs();
    assert_eq!(canary_hits(logs.as_bytes(), &[dg, car, oai, tel]), 0);
}

fn mtls_app(pki: &Pki, clients: &str) -> String {
    format!(
        "tcp = \"127.0.0.1:0\"\n[app.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n{clients}",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca_pem.display()
    )
}

async fn tls_request(
    d: &Daemon,
    pki: &Pki,
    client: Option<(&std::path::Path, &std::path::Path)>,
    h2: bool,
    tenant: &str,
) -> Result<(u16, http::HeaderMap, http::Version), String> {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let connector = tokio_rustls::TlsConnector::from(pki.client_config(client, alpn));
    let tcp = tokio::net::TcpStream::connect(d.addr("app-tls")).await.unwrap();
    let tls = connector.connect("localhost".try_into().unwrap(), tcp).await.map_err(|e| e.to_string())?;
    let req = http::Request::builder()
        .uri(if h2 { "https://localhost/vapi/assistant" } else { "/vapi/assistant" })
        .header("keyward-tenant", tenant)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = if h2 {
        let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = req;
        req.headers_mut().remove("host");
        s.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut s, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        s.send_request(req).await.map_err(|e| e.to_string())?
    };
    Ok((resp.status().as_u16(), resp.headers().clone(), resp.version()))
}

#[tokio::test]
async fn the_mtls_listener_requires_a_client_certificate_and_applies_san_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let vapi = FakeProvider::start(&pki).await;
    let app_cert = pki.client_cert("app", "spiffe://test/ns/voice/sa/agent");
    let other_cert = pki.client_cert("other", "spiffe://test/ns/other/sa/x");
    let mut d = Daemon::new(DaemonConfig {
        app: Some(mtls_app(&pki, "[[app.clients]]\nsan = \"spiffe://test/ns/voice/sa/agent\"\ntenants = [\"acme\"]\n")),
        extra: pki.upstream("vapi", &vapi.url),
        ..DaemonConfig::default()
    });
    d.start();
    put(&d, "acme", "vapi", json!({"api_key": VAPI_KEY})).await;
    put(&d, "globex", "vapi", json!({"api_key": "k2"})).await;

    let (s, _, v) = tls_request(&d, &pki, Some((&app_cert.0, &app_cert.1)), false, "acme").await.unwrap();
    assert_eq!((s, v), (200, http::Version::HTTP_11));
    assert_eq!(vapi.last().header("authorization").unwrap(), format!("Bearer {VAPI_KEY}"));
    // ALPN h2 on the TLS listener.
    let (s, _, v) = tls_request(&d, &pki, Some((&app_cert.0, &app_cert.1)), true, "acme").await.unwrap();
    assert_eq!((s, v), (200, http::Version::HTTP_2));
    // Outside the SAN's tenants, or another SAN: tenant_not_allowed.
    let (s, h, _) = tls_request(&d, &pki, Some((&app_cert.0, &app_cert.1)), false, "globex").await.unwrap();
    assert_eq!((s, h["keyward-error"].to_str().unwrap()), (403, "tenant_not_allowed"));
    let (s, h, _) = tls_request(&d, &pki, Some((&other_cert.0, &other_cert.1)), false, "acme").await.unwrap();
    assert_eq!((s, h["keyward-error"].to_str().unwrap()), (403, "tenant_not_allowed"));
    // No client certificate: the handshake (or the first request) fails.
    assert!(tls_request(&d, &pki, None, false, "acme").await.is_err());
    // The Unix socket peer (uid) matches no rule either.
    let (s, h, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    assert_eq!((s, h["keyward-error"].to_str().unwrap()), (403, "tenant_not_allowed"));
}

/// A daemon whose Vapi calls go to `url`, with `upstream` added to its `[upstream]` table,
/// and acme's Vapi key stored.
async fn vapi_daemon(pki: &Pki, url: &str, upstream: &str) -> Daemon {
    let mut d = Daemon::new(DaemonConfig {
        app: Some(String::new()),
        extra: pki.upstream("vapi", url).replace("[upstream]\n", &format!("[upstream]\n{upstream}")),
        ..DaemonConfig::default()
    });
    d.start();
    put(&d, "acme", "vapi", json!({"api_key": VAPI_KEY})).await;
    d
}

/// `n` calls one after another, each on a new app connection; every one answered.
async fn calls_in_a_row(d: &Daemon, n: usize) {
    for i in 0..n {
        let (s, _, _) = d.app("GET", &format!("/vapi/assistant/{i}"), &[("keyward-tenant", "acme")], None).await;
        assert_eq!(s, 200);
    }
}

#[tokio::test]
async fn without_http2_requests_reuse_http1_keep_alive_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let vapi = FakeProvider::start(&pki).await;
    let d = vapi_daemon(&pki, &vapi.url, "http2 = false\n").await;
    calls_in_a_row(&d, 10).await;
    let r = vapi.last();
    assert_eq!(r.version, http::Version::HTTP_11, "the provider offered h2; http2 = false keeps to HTTP/1.1");
    assert_eq!(r.header("authorization").unwrap(), format!("Bearer {VAPI_KEY}"));
    assert_eq!(r.header("host").unwrap(), vapi.addr.to_string(), "origin-form request line, authority in Host");
    // Ten calls one after another (each a new app connection): one upstream connection.
    assert_eq!(vapi.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Eight at once need eight; afterwards they are all kept and reused.
    let calls = (0..8).map(|i| {
        d.app("POST", "/vapi/call", &[("keyward-tenant", "acme")], Some(format!("{{\"n\":{i}}}").into_bytes()))
    });
    for (s, _, _) in futures_util::future::join_all(calls).await {
        assert_eq!(s, 200);
    }
    let after_burst = vapi.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(after_burst <= 8, "{after_burst} connections for 8 concurrent calls");
    for _ in 0..8 {
        d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    }
    assert_eq!(vapi.connections.load(std::sync::atomic::Ordering::SeqCst), after_burst);
    assert_eq!(vapi.count(), 26);
    assert!(vapi.all().iter().filter(|r| r.method == "POST").all(|r| r.body.starts_with(b"{\"n\":")));
}

#[tokio::test]
async fn h2c_on_the_socket_and_h2_upstream_work() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let vapi = FakeProvider::start(&pki).await;
    let d = vapi_daemon(&pki, &vapi.url, "").await;
    let stream = tokio::net::UnixStream::connect(d.app_sock()).await.unwrap();
    let (mut s, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = http::Request::builder()
            .uri(format!("http://localhost/vapi/assistant/{i}"))
            .header("keyward-tenant", "acme")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = s.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        resp.into_body().collect().await.unwrap();
    }
    let r = vapi.last();
    assert_eq!(r.path_and_query, "/assistant/2");
    assert_eq!(r.version, http::Version::HTTP_2, "the provider offered h2 and keyward used it");
    assert_eq!(r.header("authorization").unwrap(), format!("Bearer {VAPI_KEY}"));
    // Concurrent calls share the one HTTP/2 connection.
    let calls = (0..8).map(|_| d.app("GET", "/vapi/assistant/c", &[("keyward-tenant", "acme")], None));
    assert!(futures_util::future::join_all(calls).await.iter().all(|(s, _, _)| *s == 200));
    assert_eq!(vapi.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_provider_without_h2_gets_http1_keep_alive_with_http2_on() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let vapi = FakeProvider::serve(pki.server_config(&[b"http/1.1"]), common::fake::ok_json()).await;
    let d = vapi_daemon(&pki, &vapi.url, "").await;
    calls_in_a_row(&d, 5).await;
    let r = vapi.last();
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(r.header("authorization").unwrap(), format!("Bearer {VAPI_KEY}"));
    assert_eq!(vapi.connections.load(std::sync::atomic::Ordering::SeqCst), 1, "one keep-alive connection");
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("VmHWM:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn large_bodies_stream_both_ways_without_buffering() {
    const SIZE: u64 = 200 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let handler: Handler = Arc::new(|r: Recorded| {
        Box::pin(async move {
            if r.method == "POST" {
                return json_response(200, &format!("{{\"received\":{}}}", r.body_len));
            }
            // Download: SIZE bytes in 64 KiB chunks.
            let chunk = Bytes::from(vec![b'a'; 64 << 10]);
            let n = SIZE / (64 << 10);
            let stream = futures_util::stream::iter(
                (0..n).map(move |_| Ok::<_, std::convert::Infallible>(http_body::Frame::data(chunk.clone()))),
            );
            http::Response::builder()
                .header("content-type", "application/octet-stream")
                .body(http_body_util::StreamBody::new(stream).boxed_unsync())
                .unwrap()
        })
    });
    let fake = FakeProvider::with_handler(&pki, handler).await;
    let mut d = Daemon::new(DaemonConfig {
        app: Some(String::new()),
        log_level: "info".into(),
        extra: pki.upstream("elevenlabs", &fake.url),
        ..DaemonConfig::default()
    });
    d.start();
    put(&d, "acme", "elevenlabs", json!({"api_key": EL_KEY})).await;
    let base = peak_rss_kib(d.pid());

    // Upload, streamed from the client in chunks.
    let stream = tokio::net::UnixStream::connect(d.app_sock()).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let chunk = Bytes::from(vec![b'u'; 64 << 10]);
    let up = futures_util::stream::iter(
        (0..SIZE / (64 << 10)).map(move |_| Ok::<_, std::convert::Infallible>(http_body::Frame::data(chunk.clone()))),
    );
    let req = http::Request::builder()
        .method("POST")
        .uri("/elevenlabs/v1/upload")
        .header("host", "k")
        .header("keyward-tenant", "acme")
        .body(http_body_util::StreamBody::new(up))
        .unwrap();
    let resp = s.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], format!("{{\"received\":{SIZE}}}").as_bytes());

    // Download, counted as it arrives.
    let stream = tokio::net::UnixStream::connect(d.app_sock()).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("/elevenlabs/v1/download")
        .header("host", "k")
        .header("keyward-tenant", "acme")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut body = s.send_request(req).await.unwrap().into_body();
    let mut total = 0u64;
    while let Some(f) = body.frame().await {
        if let Ok(data) = f.unwrap().into_data() {
            total += data.len() as u64;
        }
    }
    assert_eq!(total, SIZE);
    let peak = peak_rss_kib(d.pid());
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB moving 2 × 200 MiB");
    assert!(
        peak - base < 24 * 1024,
        "peak RSS grew by {} KiB moving 2 × 200 MiB (base {base} KiB, peak {peak} KiB)",
        peak - base
    );
}
