//! Entry points for `fuzz/` (not an API): the daemon's parsers on arbitrary bytes, with the
//! invariants each must keep asserted here, where the private types are visible.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderValue, Method, Uri, Version};

use keyward_core::ids::TenantId;
use keyward_core::providers::Providers;
use keyward_core::secret::KeyBytes;

/// Runs parser number `which % 9` on `data`.
pub fn run(which: u8, data: &[u8]) {
    match which % 9 {
        0 => proxy_route(data),
        1 => admin_route(data),
        2 => forwarded_url(data),
        3 => token_answer(data),
        4 => config_file(data),
        5 => sealed_blobs(data),
        6 => audit_chain(data),
        7 => connect_callback(data),
        _ => scrub_chunks(data),
    }
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// The app listener's request-target: a routed path never climbs out of its provider.
fn proxy_route(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let (uri, tenant) = s.split_once('\n').unwrap_or((s, "acme"));
    let Ok(uri) = uri.parse::<Uri>() else { return };
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(tenant) {
        h.insert("keyward-tenant", v);
    }
    let providers = Providers::default_builtin();
    for version in [Version::HTTP_11, Version::HTTP_2] {
        if let Ok(t) = crate::http::target::route(version, &uri, &h, &providers) {
            assert!(t.path().starts_with('/'), "{}", t.path());
            let decoded = percent_encoding::percent_decode_str(t.path()).decode_utf8_lossy().to_string();
            assert!(!decoded.split('/').any(|seg| seg == ".." || seg == "."), "a dot segment was routed: {}", t.path());
        }
    }
}

/// The admin router: any method and path, an endpoint or a typed refusal.
fn admin_route(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let (m, path) = s.split_once(' ').unwrap_or(("GET", s));
    let Ok(method) = Method::from_bytes(m.as_bytes()) else { return };
    let _ = crate::admin::fuzz_route(&method, path);
}

/// The URL a provider signed, rebuilt from `X-Forwarded-*`: only a trusted peer may move
/// it, and the result never carries userinfo or a second authority.
fn forwarded_url(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let mut parts = s.splitn(3, '\n');
    let (proto, host, pq) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    // hyper hands the listener an origin-form path and query: it starts with `/`.
    if !pq.starts_with('/') {
        return;
    }
    let mut h = HeaderMap::new();
    if let (Ok(p), Ok(v)) = (HeaderValue::from_str(proto), HeaderValue::from_str(host)) {
        h.insert("x-forwarded-proto", p);
        h.insert("x-forwarded-host", v);
    }
    let base = url::Url::parse("https://hooks.example.com").unwrap_or_else(|_| unreachable!());
    for trusted in [false, true] {
        let url = crate::webhook::signed_url(&base, trusted, &h, pq);
        if !trusted {
            assert!(url.starts_with("https://hooks.example.com"), "an untrusted peer moved the URL: {url}");
        }
        let authority = url.split_once("://").map_or("", |(_, r)| r).split('/').next().unwrap_or("");
        assert!(!authority.contains('@'), "userinfo in {url}");
    }
}

/// Google's token endpoint answers: a grant, or a typed error; never a panic.
fn token_answer(data: &[u8]) {
    let Some((&s, body)) = data.split_first() else { return };
    let status = http::StatusCode::from_u16(200 + u16::from(s) * 2).unwrap_or(http::StatusCode::OK);
    let _ = crate::oauth::fuzz_classify(status, body);
}

/// Config files: loaded or refused with a message.
fn config_file(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let env: BTreeMap<String, String> = BTreeMap::new();
    let _ = crate::config::Config::parse(std::path::Path::new("/fuzz/keyward.toml"), s, &env);
}

/// Sealed blobs and wrapped keys: nothing opens under the wrong key, nothing panics.
fn sealed_blobs(data: &[u8]) {
    let key = KeyBytes::new([7; 32]);
    let keyring = crate::vault::Keyring::from_keys(key, vec![]);
    let Ok(tenant) = TenantId::parse("acme") else { return };
    assert!(block_on(keyring.unwrap(&tenant, data)).is_err(), "an arbitrary blob unwrapped");
    assert!(block_on(keyring.open_check(data)).is_err(), "an arbitrary check value opened");
    if let Ok(dek) = crate::vault::DataKey::generate() {
        let aad = crate::vault::RecordAad { tenant: &tenant, provider: "vapi", version: 1, state: None };
        assert!(dek.open(aad, data).is_err(), "an arbitrary record opened");
    }
}

/// The audit verifier on arbitrary chains: no panic, and nothing but an empty chain
/// verifies without the key.
fn audit_chain(data: &[u8]) {
    let Ok(entries) = serde_json::from_slice::<Vec<keyward_store::AuditEntry>>(data) else { return };
    let key = keyward_store::Integrity::new([9; 32], 1);
    let head =
        entries.last().map(|e| keyward_store::AuditHead { seq: e.seq, hash: e.hash.clone() }).unwrap_or_default();
    let report = keyward_store::verify_chain(Some(&key), &entries, &head);
    assert!(!report.ok || entries.is_empty(), "a forged chain verified");
}

/// The Google connect callback's query: a typed refusal for every unknown state.
fn connect_callback(data: &[u8]) {
    let Some(q) = text(data) else { return };
    let flows = crate::oauth::connect::ConnectFlows::default();
    let r = block_on(flows.fuzz_take(q));
    assert!(r.is_err(), "a callback without a started flow was accepted");
}

/// Masking across chunk boundaries: a body split where the fuzzer says, with the secret
/// anywhere in it, comes out masked and the same length.
fn scrub_chunks(data: &[u8]) {
    use http_body_util::BodyExt;
    let Some((&cuts, rest)) = data.split_first() else { return };
    if rest.len() < 8 {
        return;
    }
    let (secret, text) = rest.split_at(8);
    if secret.contains(&b'*') {
        return;
    }
    let mut chunks = Vec::new();
    let mut at = 0;
    for i in 0..usize::from(cuts % 8) {
        let next = (at + usize::from(secret[i % 8]) % 17 + 1).min(text.len());
        chunks.push(bytes::Bytes::copy_from_slice(&text[at..next]));
        at = next;
    }
    chunks.push(bytes::Bytes::copy_from_slice(&text[at..]));
    let frames: Vec<Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>> =
        chunks.into_iter().map(|c| Ok(http_body::Frame::data(c))).collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let pats = vec![zeroize::Zeroizing::new(secret.to_vec())];
    let out = block_on(crate::proxy::fuzz_scrubbed(body, pats).collect());
    let Ok(out) = out else { return };
    let out = out.to_bytes();
    assert_eq!(out.len(), text.len());
    assert!(!out.windows(8).any(|w| w == secret), "a secret split across chunks survived");
}

/// Polls a future that never waits on I/O to its end.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}
