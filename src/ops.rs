//! Ops listener (CONTRACT.md §7): `/healthz` (process alive), `/readyz` (store open, key
//! loaded, listeners bound), `/metrics` (Prometheus text). Nothing secret is served here.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

/// Readiness flags, set by the composition root as start-up progresses.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    /// The store is open.
    pub store_open: AtomicBool,
    /// The master key opened the store's check value.
    pub key_loaded: AtomicBool,
    /// Every configured listener is bound and serving.
    pub listeners_bound: AtomicBool,
    /// Shutdown has begun: stop sending traffic here.
    pub draining: AtomicBool,
    /// The store, whose backend may be unreachable (fleet mode).
    pub store: std::sync::OnceLock<Arc<dyn keyward_store::Store>>,
    /// Whether the KMS holding the master key answers (unset: the key is local).
    pub kms: std::sync::OnceLock<Arc<AtomicBool>>,
}

impl crate::metrics::DerivedSource for Readiness {
    fn values(&self) -> Vec<(&'static str, &'static str, bool, u64)> {
        let mut rows = Vec::new();
        if let Some(s) = self.store.get() {
            rows.push((
                "keyward_store_connected",
                "1 while the credential store answers",
                false,
                u64::from(s.healthy()),
            ));
        }
        // Only with a KMS-held master key.
        if let Some(k) = self.kms.get() {
            let up = u64::from(k.load(Ordering::SeqCst));
            rows.push(("keyward_kms_reachable", "1 while the KMS holding the master key answers", false, up));
        }
        rows
    }
}

impl Readiness {
    /// Whether every check passes.
    pub(crate) fn is_ready(&self) -> bool {
        self.store_open.load(Ordering::SeqCst)
            && self.key_loaded.load(Ordering::SeqCst)
            && self.listeners_bound.load(Ordering::SeqCst)
            && !self.draining.load(Ordering::SeqCst)
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Handles one ops request.
pub(crate) async fn handle(
    ready: Arc<Readiness>,
    metrics: Arc<crate::metrics::Metrics>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": {"code": "method_not_allowed", "message": "use GET"}}),
        ));
    }
    let resp = match req.uri().path() {
        "/healthz" => json_response(StatusCode::OK, json!({"status": "ok"})),
        "/readyz" => {
            let connected = ready.store.get().is_none_or(|s| s.healthy());
            let kms = ready.kms.get().is_none_or(|k| k.load(Ordering::SeqCst));
            let checks = json!({
                "kms_reachable": kms,
                "store_open": ready.store_open.load(Ordering::SeqCst),
                "store_connected": connected,
                "key_loaded": ready.key_loaded.load(Ordering::SeqCst),
                "listeners_bound": ready.listeners_bound.load(Ordering::SeqCst),
                "draining": ready.draining.load(Ordering::SeqCst),
            });
            if ready.is_ready() && (!connected || !kms) {
                // Still serving cached credentials (and warm tenants): ready, but say so.
                json_response(StatusCode::OK, json!({"status": "degraded", "checks": checks}))
            } else if ready.is_ready() {
                json_response(StatusCode::OK, json!({"status": "ready", "checks": checks}))
            } else {
                json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"status": "not_ready", "checks": checks}))
            }
        }
        "/metrics" => {
            // Prometheus asks for OpenMetrics (with exemplars) when exemplar storage is on.
            let openmetrics = req
                .headers()
                .get_all(http::header::ACCEPT)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
            let (text, kind) = if openmetrics {
                (metrics.render_openmetrics(), "application/openmetrics-text; version=1.0.0; charset=utf-8")
            } else {
                (metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
            };
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(kind));
            r
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": {"code": "not_found", "message": "ops serves /healthz, /readyz and /metrics"}}),
        ),
    };
    Ok(resp)
}

/// `[ops]`
#[derive(Debug, Clone)]
pub struct OpsConfig {
    /// /healthz /readyz /metrics
    pub listen: SocketAddr,
    /// Label outbound request metrics with tenant ids (unbounded: small fleets only).
    pub metrics_tenant_labels: bool,
    /// How long in-flight requests may finish after SIGTERM.
    pub drain_grace: Duration,
}
