//! Logging setup (JSON or text, level changeable at run time) and the rule for what may be
//! logged: ids, statuses and durations; headers only through [`LOGGABLE_HEADERS`].

use std::sync::Arc;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Request headers that may appear in logs. Everything else (Authorization, cookies,
/// signature headers, provider keys) never does.
pub const LOGGABLE_HEADERS: &[&str] =
    &["content-type", "content-length", "user-agent", "keyward-tenant", "x-request-id"];

/// Changes the log filter of a running process.
#[derive(Clone)]
pub struct LogHandle {
    inner: Option<Arc<reload::Handle<EnvFilter, Registry>>>,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogHandle")
    }
}

impl LogHandle {
    /// A handle that changes nothing (tests running without a global subscriber).
    pub fn noop() -> Self {
        LogHandle { inner: None }
    }

    /// Replaces the filter, e.g. `debug` or `keyward=trace,info`.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(level).map_err(|e| format!("\"{level}\" is not a log filter: {e}"))?;
        match &self.inner {
            Some(h) => h.reload(filter).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// Installs the global subscriber, writing to stderr, and with a tracer the OpenTelemetry
/// layer (which sees only [`TRACE_TARGET`] spans). Call once, from `main`.
///
/// The log filter is the log layer's own, so `[log] level = "warn"` does not switch traces
/// off, and trace spans never reach the log.
pub fn init(cfg: &LogConfig, tracer: Option<opentelemetry_sdk::trace::SdkTracer>) -> LogHandle {
    use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
    use tracing_subscriber::Layer;
    let filter = EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    // One filter per layer, each deciding per callsite (EnvFilter's directives, `Targets`):
    // a callsite both layers refuse is then never evaluated again. A closure filter
    // (`filter_fn`) is asked on every hit, and two nested `with_filter`s let spans the inner
    // one refuses be built anyway; with h2's trace spans on every frame that was ~20 % of
    // the proxy's CPU (docs/benchmarks.md, "A/B: log filters decided per callsite").
    let not_traces = Targets::new().with_default(LevelFilter::TRACE).with_target(TRACE_TARGET, LevelFilter::OFF);
    let log = match cfg.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
    }
    .with_filter(filter.and(not_traces));
    let traces = tracer.map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t)
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target(TRACE_TARGET, LevelFilter::TRACE))
    });
    let on = traces.is_some();
    if tracing_subscriber::registry().with(log).with(traces).try_init().is_err() {
        return LogHandle::noop();
    }
    TRACES_ON.store(on, std::sync::atomic::Ordering::Relaxed);
    LogHandle { inner: Some(Arc::new(handle)) }
}

/// A minimal subscriber for CLI commands: warnings and errors, text, stderr.
pub fn init_cli() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("KEYWARD_LOG").unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Text,
}

/// `[log]`
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `keyward=debug`.
    pub level: String,
}

/// Where access records go (`[telemetry] access_log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessMode {
    /// Nowhere (the default).
    Off,
    /// The log, as `keyward::access` events at info level.
    Log,
    /// A file of JSON lines, appended to; reopened on SIGHUP.
    File(std::path::PathBuf),
}

/// What a provider gets of the app's W3C trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceContextOut {
    /// The app's `traceparent` / `tracestate` as received; keyward adds none of its own.
    AsReceived,
    /// Neither header.
    Never,
}

/// `[telemetry]`
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `access_log`
    pub access_log: AccessMode,
    /// The OTLP/HTTP collector's base URL (`/v1/traces` is added); traces are off without it.
    pub otlp_endpoint: Option<url::Url>,
    /// A CA bundle for an https collector, besides the web roots.
    pub otlp_ca: Option<std::path::PathBuf>,
    /// The share of traces keyward starts that are recorded (a continued trace follows the
    /// app's sampling decision).
    pub sample_ratio: f64,
    /// `service.name`
    pub service_name: String,
    /// More resource attributes (`deployment.environment`, `k8s.pod.name`…).
    pub resource_attributes: std::collections::BTreeMap<String, String>,
    /// `propagate_to_providers`
    pub propagate_to_providers: TraceContextOut,
    /// How often a signed checkpoint of the audit head is recorded; zero: never.
    pub audit_checkpoint_interval: std::time::Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            access_log: AccessMode::Off,
            otlp_endpoint: None,
            otlp_ca: None,
            sample_ratio: 1.0,
            service_name: "keyward".into(),
            resource_attributes: Default::default(),
            propagate_to_providers: TraceContextOut::AsReceived,
            audit_checkpoint_interval: std::time::Duration::from_secs(3600),
        }
    }
}

/// The target of the spans exported as OpenTelemetry traces; the exporter sees no other.
pub const TRACE_TARGET: &str = "keyward::trace";

static TRACES_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether trace spans are made at all (off: not even a disabled span's bookkeeping).
pub fn traces_on() -> bool {
    TRACES_ON.load(std::sync::atomic::Ordering::Relaxed)
}

/// `info_span!` of [`TRACE_TARGET`] while traces are on, else `Span::none()`.
macro_rules! trace_span {
    ($($arg:tt)+) => {
        if $crate::telemetry::traces_on() {
            tracing::info_span!(target: "keyward::trace", $($arg)+)
        } else {
            tracing::Span::none()
        }
    };
}
pub(crate) use trace_span;

/// A listener's span for one request or delivery, with the fields `access::describe_span`
/// fills in when the answer is known; the proxy's and the webhook listener's, named once.
macro_rules! server_span {
    ($name:literal, $method:expr $(, $($extra:tt)+)?) => {
        $crate::telemetry::trace_span!(
            $name,
            otel.kind = "server",
            $($($extra)+,)?
            http.request.method = $method,
            keyward.tenant = tracing::field::Empty,
            keyward.provider = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            keyward.error_code = tracing::field::Empty,
            http.request.body.size = tracing::field::Empty,
            http.response.body.size = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    };
}
pub(crate) use server_span;
