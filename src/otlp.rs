//! OpenTelemetry traces (`[telemetry] otlp_endpoint`, CONTRACT.md §8.4): the OTLP/HTTP
//! (protobuf) exporter, sending through keyward's own rustls client, and W3C trace-context
//! in (continue the app's trace) and out (the webhook forward to the app).
//!
//! Spans are `tracing` spans of target [`crate::telemetry::TRACE_TARGET`], made only while
//! traces are on ([`crate::telemetry::trace_span`]); the OpenTelemetry layer sees nothing
//! else, so log events never become span events and no other span's fields are exported.

use std::time::Duration;

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::TelemetryConfig;

/// A running trace pipeline; [`Traces::shutdown`] exports what is still queued.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Traces {
    /// The tracer the `tracing` layer records into.
    pub fn tracer(&self) -> SdkTracer {
        self.tracer.clone()
    }

    /// Exports queued spans (at most 5 s), then stops the exporter's thread.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(Duration::from_secs(5))).await;
    }
}

/// Builds the pipeline when `otlp_endpoint` is set. Must run inside the tokio runtime: the
/// exporter's requests are spawned onto it.
pub fn pipeline(cfg: &TelemetryConfig) -> Result<Option<Traces>, String> {
    let Some(endpoint) = &cfg.otlp_endpoint else { return Ok(None) };
    let http = crate::tls::control_client(cfg.otlp_ca.as_deref(), Duration::from_secs(3), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let client = Client { http, rt: tokio::runtime::Handle::current() };
    let url = format!("{}/v1/traces", endpoint.as_str().trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let attrs = cfg.resource_attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone()));
    let resource = Resource::builder().with_service_name(cfg.service_name.clone()).with_attributes(attrs).build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sample_ratio))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("keyward");
    Ok(Some(Traces { provider, tracer }))
}

/// The exporter's HTTP client: the request runs on keyward's runtime (the SDK's export
/// thread has none) and the thread waits for it.
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    rt: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let (parts, body) = request.into_parts();
        let task = self.rt.spawn(async move {
            let resp =
                http.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body).send().await?;
            let mut out = http::Response::builder().status(resp.status());
            for (k, v) in resp.headers() {
                out = out.header(k, v);
            }
            let body = resp.bytes().await?;
            Ok::<_, opentelemetry_http::HttpError>(out.body(body)?)
        });
        task.await?
    }
}

/// Makes `span` continue the trace of a W3C `traceparent` (and `tracestate`) in `headers`;
/// without a valid one the span starts a trace of its own.
pub(crate) fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    let _ = span.set_parent(cx);
}

/// Writes `span`'s context into `headers` as `traceparent` / `tracestate`, replacing any.
pub(crate) fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    headers.remove("traceparent");
    headers.remove("tracestate");
    TraceContextPropagator::new().inject_context(&span.context(), &mut opentelemetry_http::HeaderInjector(headers));
}

/// The trace id of `span` in hex (the access log's `trace_id` while traces are on).
pub(crate) fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let id = cx.span().span_context().trace_id();
    (id != opentelemetry::trace::TraceId::INVALID).then(|| id.to_string())
}
