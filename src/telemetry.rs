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

/// Installs the global subscriber, writing to stderr. Call once, from `main`.
pub fn init(cfg: &LogConfig) -> LogHandle {
    let filter = EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match cfg.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).try_init(),
    };
    if result.is_err() {
        return LogHandle::noop();
    }
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

/// `[telemetry]`
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `access_log`
    pub access_log: AccessMode,
}
