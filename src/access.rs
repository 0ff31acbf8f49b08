//! The access log (`[telemetry] access_log`): one JSON record per proxied request and per
//! webhook delivery, written when the response's last byte has gone (so its duration and
//! byte counts are the whole exchange's), to the log as `keyward::access` events or to a
//! file that SIGHUP reopens (logrotate's `create` or `copytruncate` both work).
//!
//! A record holds ids, statuses, durations and sizes. It never holds a query value, a header
//! value (the trace id is parsed out of `traceparent`, not copied) or a body.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use serde::Serialize;

use crate::http::{BoxError, ProxyBody};
use crate::listen::Peer;
use crate::telemetry::AccessMode;

/// Records are buffered up to this size and flushed at least once a second: one `write`
/// per record would be a syscall per request on the hot path.
const BUFFER: usize = 64 * 1024;

/// The configured sink.
#[derive(Debug)]
pub(crate) struct AccessLog {
    mode: AccessMode,
    file: Option<Mutex<BufWriter<File>>>,
}

fn open_append(path: &Path) -> std::io::Result<BufWriter<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(path)?;
    Ok(BufWriter::with_capacity(BUFFER, f))
}

impl AccessLog {
    /// Opens the file, if the mode names one; an unwritable path is a start-up error.
    pub(crate) fn open(mode: &AccessMode) -> Result<Arc<AccessLog>, String> {
        let file = match mode {
            AccessMode::File(p) => Some(Mutex::new(
                open_append(p).map_err(|e| format!("cannot open the access log {}: {e}", p.display()))?,
            )),
            _ => None,
        };
        Ok(Arc::new(AccessLog { mode: mode.clone(), file }))
    }

    /// Whether records are kept at all (nothing is measured for them otherwise).
    pub(crate) fn enabled(&self) -> bool {
        self.mode != AccessMode::Off
    }

    /// Flushes what is buffered.
    pub(crate) fn flush(&self) {
        if let Some(f) = &self.file {
            if let Ok(mut w) = f.lock() {
                let _ = w.flush();
            }
        }
    }

    /// SIGHUP: flushes into the old file and opens the path again, so a rotated file is
    /// let go. A path that cannot be opened keeps the old file (and says so).
    pub(crate) fn reopen(&self) {
        let (AccessMode::File(path), Some(f)) = (&self.mode, &self.file) else { return };
        let Ok(mut w) = f.lock() else { return };
        let _ = w.flush();
        match open_append(path) {
            Ok(new) => *w = new,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot reopen the access log; still writing to the old file")
            }
        }
    }

    fn write(&self, r: &Line<'_>) {
        match &self.mode {
            AccessMode::Off => {}
            AccessMode::Log => tracing::info!(
                target: "keyward::access",
                kind = r.kind,
                request_id = r.request_id,
                trace_id = r.trace_id,
                client = r.client,
                tenant = r.tenant,
                provider = r.provider,
                method = r.method,
                path = r.path,
                status = r.status,
                error = r.error,
                upstream_status = r.upstream_status,
                total_us = r.total_us,
                upstream_us = r.upstream_us,
                resolve_us = r.resolve_us,
                bytes_in = r.bytes_in,
                bytes_out = r.bytes_out,
                "access"
            ),
            AccessMode::File(_) => {
                let Some(f) = &self.file else { return };
                let Ok(mut w) = f.lock() else { return };
                if serde_json::to_writer(&mut *w, r).is_ok() {
                    let _ = w.write_all(b"\n");
                }
            }
        }
    }
}

/// One record as written.
#[derive(Serialize)]
struct Line<'a> {
    time: &'a str,
    kind: &'static str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    client: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_status: Option<u16>,
    total_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolve_us: Option<u64>,
    bytes_in: u64,
    bytes_out: u64,
}

/// What the phases of a request learn on the way, for its record (and its metrics).
#[derive(Debug, Default)]
pub(crate) struct Facts {
    pub tenant: Option<keyward_core::ids::TenantId>,
    pub provider: Option<keyward_core::ids::ProviderName>,
    pub upstream_status: Option<u16>,
    /// Credential resolution (proxy) or signature verification (webhooks).
    pub resolve: Option<Duration>,
    /// To the provider's (or the app's) response head.
    pub upstream: Option<Duration>,
    /// Request body bytes read; counted only when the access log is on.
    pub bytes_in: Option<Arc<AtomicU64>>,
}

impl Facts {
    /// A counter for the request body when a record or a trace span will report it.
    pub(crate) fn new(log: &AccessLog, traced: bool) -> Facts {
        Facts { bytes_in: (log.enabled() || traced).then(Arc::default), ..Facts::default() }
    }
}

/// The request's trace span gets what the phases learned (the body sizes follow when the
/// response body ends). Only ids, codes and numbers: never a header, query or body.
pub(crate) fn describe_span(span: &tracing::Span, facts: &Facts, status: u16, error: &str) {
    if let Some(t) = &facts.tenant {
        span.record("keyward.tenant", t.as_str());
    }
    if let Some(p) = &facts.provider {
        span.record("keyward.provider", p.as_str());
    }
    span.record("http.response.status_code", i64::from(status));
    if !error.is_empty() {
        span.record("keyward.error_code", error);
    }
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// Counts the bytes of a request body into `n` as they are read.
pub(crate) fn count_body(body: ProxyBody, n: Option<Arc<AtomicU64>>) -> ProxyBody {
    match n {
        None => body,
        Some(n) => body
            .map_frame(move |f| {
                if let Some(d) = f.data_ref() {
                    n.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                f
            })
            .boxed_unsync(),
    }
}

/// The W3C trace id of a `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), when valid
/// and not all zeros; the header itself is never logged.
pub(crate) fn trace_id(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = v.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let ok = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && span.bytes().any(|b| b != b'0');
    ok.then(|| trace.to_string())
}

/// How a record names the caller: `uid:N` on the Unix socket, the certificate's SAN over
/// mTLS, else the remote IP.
fn client(peer: &Peer) -> String {
    match peer {
        Peer::Unix { uid, .. } => format!("uid:{uid}"),
        Peer::Tcp { san: Some(s), .. } => s.clone(),
        Peer::Tcp { addr, .. } => addr.ip().to_string(),
    }
}

/// The part of a record known when the request arrives.
pub(crate) struct Start {
    pub kind: &'static str,
    pub request_id: String,
    pub trace_id: Option<String>,
    pub client: String,
    pub method: String,
    /// Path only, at most [`MAX_PATH`] bytes.
    pub path: String,
    pub started: Instant,
    pub wall_ms: keyward_core::time::Millis,
}

/// Longer paths are cut (at a character boundary).
const MAX_PATH: usize = 256;

impl Start {
    pub(crate) fn new(kind: &'static str, request_id: String, peer: &Peer, req: &http::Request<impl Sized>) -> Start {
        let p = req.uri().path();
        let mut end = p.len().min(MAX_PATH);
        while !p.is_char_boundary(end) {
            end -= 1;
        }
        Start {
            kind,
            request_id,
            trace_id: trace_id(req.headers()),
            client: client(peer),
            method: req.method().as_str().to_string(),
            path: p[..end].to_string(),
            started: Instant::now(),
            wall_ms: keyward_core::time::now_millis(),
        }
    }
}

/// A record waiting for the response body's end.
struct Pending {
    log: Arc<AccessLog>,
    start: Start,
    facts: Facts,
    status: u16,
    error: Option<String>,
}

impl Pending {
    fn finish(self, bytes_out: u64) {
        let time = keyward_core::time::rfc3339(self.start.wall_ms);
        let micros = |d: Duration| d.as_micros() as u64;
        let line = Line {
            time: &time,
            kind: self.start.kind,
            request_id: &self.start.request_id,
            trace_id: self.start.trace_id.as_deref(),
            client: &self.start.client,
            tenant: self.facts.tenant.as_ref().map(|t| t.as_str()),
            provider: self.facts.provider.as_ref().map(|p| p.as_str()),
            method: &self.start.method,
            path: &self.start.path,
            status: self.status,
            error: self.error.as_deref(),
            upstream_status: self.facts.upstream_status,
            total_us: micros(self.start.started.elapsed()),
            upstream_us: self.facts.upstream.map(micros),
            resolve_us: self.facts.resolve.map(micros),
            bytes_in: self.facts.bytes_in.as_ref().map_or(0, |n| n.load(Ordering::Relaxed)),
            bytes_out,
        };
        self.log.write(&line);
    }
}

/// The response body, counted; the record is written and the trace span ended at its end
/// (or when it is dropped early: the caller hung up).
struct Recorded {
    inner: ProxyBody,
    sent: u64,
    pending: Option<Pending>,
    span: tracing::Span,
    bytes_in: Option<Arc<AtomicU64>>,
}

impl Recorded {
    fn done(&mut self) {
        end_span(std::mem::replace(&mut self.span, tracing::Span::none()), self.bytes_in.as_deref(), self.sent);
        if let Some(p) = self.pending.take() {
            p.finish(self.sent);
        }
    }
}

/// Numbers go in as `i64`: tracing-opentelemetry turns a `u64` into a string attribute.
fn end_span(span: tracing::Span, bytes_in: Option<&AtomicU64>, sent: u64) {
    if span.is_disabled() {
        return;
    }
    if let Some(n) = bytes_in {
        span.record("http.request.body.size", n.load(Ordering::Relaxed) as i64);
    }
    span.record("http.response.body.size", sent as i64);
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.done();
    }
}

impl Body for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.sent += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.done();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.done(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Attaches the record (when the access log is on) and the trace span (when traces are) to
/// the response: both end with its body. `error` is keyward's code, empty when the
/// provider's (or app's) answer was relayed.
pub(crate) fn attach(
    resp: http::Response<ProxyBody>,
    record: Option<(Arc<AccessLog>, Start)>,
    facts: Facts,
    error: &str,
    span: tracing::Span,
) -> http::Response<ProxyBody> {
    if record.is_none() && span.is_disabled() {
        return resp;
    }
    let status = resp.status().as_u16();
    let bytes_in = facts.bytes_in.clone();
    let pending = record.map(|(log, start)| Pending {
        log,
        start,
        facts,
        status,
        error: (!error.is_empty()).then(|| error.to_string()),
    });
    let (parts, body) = resp.into_parts();
    if body.is_end_stream() {
        // Nothing to stream (a HEAD, a 204, most errors): done now.
        end_span(span, bytes_in.as_deref(), 0);
        if let Some(p) = pending {
            p.finish(0);
        }
        return http::Response::from_parts(parts, body);
    }
    let body = Recorded { inner: body, sent: 0, pending, span, bytes_in }.boxed_unsync();
    http::Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(v: &str) -> Option<String> {
        let mut h = HeaderMap::new();
        h.insert("traceparent", v.parse().unwrap());
        trace_id(&h)
    }

    #[test]
    fn only_a_well_formed_traceparent_gives_a_trace_id() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(tp(good).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-secret-value",
        ] {
            assert_eq!(tp(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_file_record_is_one_json_line_and_reopen_follows_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.jsonl");
        let log = AccessLog::open(&AccessMode::File(path.clone())).unwrap();
        let start = Start {
            kind: "proxy",
            request_id: "1-2".into(),
            trace_id: None,
            client: "uid:0".into(),
            method: "GET".into(),
            path: "/vapi/call".into(),
            started: Instant::now(),
            wall_ms: 0,
        };
        let p = Pending { log: log.clone(), start, facts: Facts::default(), status: 200, error: None };
        p.finish(7);
        log.flush();
        std::fs::rename(&path, dir.path().join("access.jsonl.1")).unwrap();
        log.reopen();
        let text = std::fs::read_to_string(dir.path().join("access.jsonl.1")).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!((v["status"].as_u64(), v["bytes_out"].as_u64(), v.get("error")), (Some(200), Some(7), None));
        assert!(path.exists(), "reopened at the configured path");
    }
}
