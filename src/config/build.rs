//! Validation: raw TOML shapes into the components' config values, with errors that name
//! the file and the key. The whole file is assembled here; the larger sections are
//! validated in their own files (`app.rs`, `webhooks.rs`, `providers.rs`, `master_key.rs`, `admin.rs`).

use std::path::{Path, PathBuf};

use super::admin::build_admin;
use super::app::build_app;
use super::master_key::build_master_key;
use super::providers::build_providers;
use super::raw::*;
use super::webhooks::build_webhooks;
use super::*;

/// Builds errors that name the file.
pub(super) struct Ctx<'a> {
    pub(super) file: &'a Path,
    pub(super) dir: PathBuf,
}

impl Ctx<'_> {
    pub(super) fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { file: self.file.to_path_buf(), key: key.to_string(), message: message.into() }
    }

    pub(super) fn path(&self, key: &str, s: &str) -> Result<PathBuf, ConfigError> {
        if s.is_empty() {
            return Err(self.err(key, "must not be empty"));
        }
        if s.contains('\0') {
            return Err(self.err(key, "must not contain NUL"));
        }
        let p = Path::new(s);
        Ok(if p.is_absolute() { p.to_path_buf() } else { self.dir.join(p) })
    }

    pub(super) fn duration(&self, key: &str, s: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
        match s {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|m| self.err(key, m)),
        }
    }

    pub(super) fn addr(&self, key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
        s.parse().map_err(|_| {
            self.err(key, format!("\"{s}\" is not an address; write e.g. \"127.0.0.1:7443\" or \"[::1]:7443\""))
        })
    }

    pub(super) fn url(&self, key: &str, s: &str, allow_http: bool) -> Result<Url, ConfigError> {
        let u = Url::parse(s).map_err(|e| self.err(key, format!("\"{s}\" is not a URL: {e}")))?;
        match u.scheme() {
            "https" => {}
            "http" if allow_http => {}
            "http" => {
                return Err(self.err(
                    key,
                    "must be https:// (plain http upstreams need [danger] allow_plain_http_upstream = true)",
                ))
            }
            other => return Err(self.err(key, format!("scheme \"{other}\" is not supported; use https://"))),
        }
        if u.host_str().is_none() {
            return Err(self.err(key, "needs a host"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(self.err(key, "must not contain user:password@"));
        }
        if u.query().is_some() || u.fragment().is_some() {
            return Err(self.err(key, "must not contain a query or fragment"));
        }
        Ok(u)
    }

    pub(super) fn rate(&self, key: &str, raw: Option<RawRateLimit>) -> Result<Option<RateLimit>, ConfigError> {
        let Some(r) = raw else { return Ok(None) };
        let per_second = parse_rate(&r.per_tenant).map_err(|m| self.err(&format!("{key}.per_tenant"), m))?;
        let burst = r.burst.unwrap_or_else(|| per_second.ceil().max(1.0) as u32);
        if burst == 0 {
            return Err(self.err(&format!("{key}.burst"), "must be at least 1"));
        }
        Ok(Some(RateLimit { per_second, burst }))
    }
}

/// Deserialises one TOML value into `T`, naming the failing key as `prefix.path`.
pub(super) fn typed<T: serde::de::DeserializeOwned>(
    ctx: &Ctx<'_>,
    prefix: &str,
    value: toml::Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let key = match (prefix.is_empty(), inner.as_str()) {
            (true, ".") => "(top level)".to_string(),
            (true, p) => p.to_string(),
            (false, ".") => prefix.to_string(),
            (false, p) => format!("{prefix}.{p}"),
        };
        ctx.err(&key, e.inner().to_string())
    })
}

/// A Unix socket mode written as an octal string, e.g. `"0660"`.
pub(super) fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let m = u32::from_str_radix(digits, 8).map_err(|_| format!("\"{s}\" is not an octal mode; write e.g. \"0660\""))?;
    if m > 0o777 {
        return Err(format!("\"{s}\": a socket mode has at most 9 permission bits"));
    }
    if m & 0o007 != 0 {
        return Err(format!("\"{s}\" gives other users access to the socket; use \"0660\" or stricter"));
    }
    Ok(m)
}

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

pub(super) fn build(ctx: &Ctx<'_>, raw: RawConfig, env: &dyn Env, source: PathBuf) -> Result<Config, ConfigError> {
    let danger = DangerConfig {
        allow_plain_http_upstream: raw.danger.allow_plain_http_upstream,
        create_missing_master_key: raw.danger.create_missing_master_key,
        app_plain_tcp: raw.danger.app_plain_tcp,
        admin_plain_tcp: raw.danger.admin_plain_tcp,
    };

    let rs = &raw.store;
    let backend = match rs.backend.as_deref().unwrap_or("sled") {
        "sled" => {
            for (k, v) in [
                ("store.url", rs.url.is_some()),
                ("store.password_file", rs.password_file.is_some()),
                ("store.password_credential", rs.password_credential.is_some()),
                ("store.tls_ca", rs.tls_ca.is_some()),
            ] {
                if v {
                    return Err(ctx.err(k, "only applies to backend = \"postgres\""));
                }
            }
            Backend::Sled
        }
        "postgres" => {
            let url = rs.url.clone().ok_or_else(|| {
                ctx.err(
                    "store.url",
                    "backend = \"postgres\" needs url = \"postgres://user@host:5432/db?sslmode=require\"",
                )
            })?;
            let parsed = Url::parse(&url).map_err(|e| ctx.err("store.url", format!("not a URL: {e}")))?;
            if !["postgres", "postgresql"].contains(&parsed.scheme()) {
                return Err(ctx.err("store.url", "must start with postgres://"));
            }
            if parsed.password().is_some() {
                return Err(ctx.err("store.url", "must not contain a password (it would reach logs and process listings); use password_file or password_credential"));
            }
            let password = match (&rs.password_file, &rs.password_credential) {
                (None, None) => PasswordSource::None,
                (Some(f), None) => PasswordSource::File(ctx.path("store.password_file", f)?),
                (None, Some(c)) if !c.is_empty() && !c.contains('/') => PasswordSource::Credential(c.clone()),
                (None, Some(_)) => {
                    return Err(ctx.err("store.password_credential", "must be a credential name without '/'"))
                }
                (Some(_), Some(_)) => {
                    return Err(ctx.err("store", "set only one of password_file and password_credential"))
                }
            };
            let tls_ca = rs.tls_ca.as_deref().map(|p| ctx.path("store.tls_ca", p)).transpose()?;
            Backend::Postgres(PostgresConfig { url, password, tls_ca })
        }
        other => {
            return Err(ctx.err("store.backend", format!("\"{other}\" is not a backend; use \"sled\" or \"postgres\"")))
        }
    };
    let path = match (&backend, rs.path.as_deref()) {
        (_, Some(p)) => ctx.path("store.path", p)?,
        (Backend::Sled, None) => return Err(ctx.err("store.path", "is required (the sled database directory)")),
        (Backend::Postgres(_), None) => PathBuf::new(),
    };
    let store = StoreConfig {
        backend,
        path,
        deleted_retention: ctx.duration(
            "store.deleted_retention",
            raw.store.deleted_retention.as_deref(),
            Duration::from_secs(14 * 86_400),
        )?,
        cache_entries: match raw.store.cache_entries {
            Some(0) => return Err(ctx.err("store.cache_entries", "must be at least 1")),
            Some(n) => n,
            None => crate::creds::DEFAULT_CACHE_ENTRIES,
        },
    };

    let master_key = build_master_key(ctx, raw.master_key, danger.create_missing_master_key)?;

    let app = raw.app.map(|a| build_app(ctx, a, danger.app_plain_tcp)).transpose()?;
    let webhooks = raw.webhooks.map(|w| build_webhooks(ctx, w)).transpose()?;

    let admin = build_admin(ctx, raw.admin, danger.admin_plain_tcp)?;

    let ops = raw
        .ops
        .map(|o| -> Result<OpsConfig, ConfigError> {
            Ok(OpsConfig {
                listen: ctx.addr("ops.listen", &o.listen)?,
                metrics_tenant_labels: o.metrics_tenant_labels,
                drain_grace: ctx.duration("ops.drain_grace", o.drain_grace.as_deref(), Duration::from_secs(30))?,
            })
        })
        .transpose()?;

    let upstream = UpstreamConfig {
        connect_timeout: ctx.duration(
            "upstream.connect_timeout",
            raw.upstream.connect_timeout.as_deref(),
            Duration::from_secs(5),
        )?,
        request_timeout: ctx.duration(
            "upstream.request_timeout",
            raw.upstream.request_timeout.as_deref(),
            Duration::from_secs(60),
        )?,
        extra_ca: raw.upstream.extra_ca.as_deref().map(|p| ctx.path("upstream.extra_ca", p)).transpose()?,
        http2: raw.upstream.http2.unwrap_or(true),
    };
    if upstream.connect_timeout.is_zero() {
        return Err(ctx.err("upstream.connect_timeout", "must be above zero"));
    }
    if upstream.request_timeout.is_zero() {
        return Err(ctx.err("upstream.request_timeout", "must be above zero"));
    }

    let providers = build_providers(ctx, raw.providers, danger.allow_plain_http_upstream)?;

    let mut level = raw.log.level.unwrap_or_else(|| "info".to_string());
    let mut format = raw.log.format.unwrap_or_else(|| "json".to_string());
    // Environment overlay: the two settings operators most often change per run.
    let mut level_key = "log.level";
    let mut format_key = "log.format";
    if let Some(l) = env.var("KEYWARD_LOG") {
        level = l;
        level_key = "KEYWARD_LOG (environment)";
    }
    if let Some(f) = env.var("KEYWARD_LOG_FORMAT") {
        format = f;
        format_key = "KEYWARD_LOG_FORMAT (environment)";
    }
    let format = match format.as_str() {
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        other => return Err(ctx.err(format_key, format!("\"{other}\" is not a log format; use \"json\" or \"text\""))),
    };
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        return Err(
            ctx.err(level_key, format!("\"{level}\" is not a log level; use error, warn, info, debug or trace"))
        );
    }

    let telemetry = build_telemetry(ctx, raw.telemetry)?;

    Ok(Config {
        source,
        store,
        master_key,
        app,
        webhooks,
        admin,
        ops,
        upstream,
        providers,
        danger,
        log: LogConfig { format, level },
        verification: VerificationConfig {
            interval: ctx.duration(
                "verification.interval",
                raw.verification.interval.as_deref(),
                Duration::from_secs(12 * 3600),
            )?,
            concurrency: match raw.verification.concurrency {
                Some(0) => return Err(ctx.err("verification.concurrency", "must be at least 1")),
                Some(n) => n,
                None => 4,
            },
            discover_routes: raw.verification.discover_routes.unwrap_or(true),
        },
        telemetry,
    })
}

fn build_telemetry(ctx: &Ctx<'_>, raw: RawTelemetry) -> Result<TelemetryConfig, ConfigError> {
    let access_log = match raw.access_log.as_deref() {
        None | Some("off") => AccessMode::Off,
        Some("log") => AccessMode::Log,
        Some(p) => AccessMode::File(ctx.path("telemetry.access_log", p)?),
    };
    let otlp_endpoint = match raw.otlp_endpoint.as_deref() {
        None => None,
        Some(s) => {
            let key = "telemetry.otlp_endpoint";
            let u = Url::parse(s).map_err(|e| ctx.err(key, format!("\"{s}\" is not a URL: {e}")))?;
            if !matches!(u.scheme(), "http" | "https") || u.query().is_some() || !u.username().is_empty() {
                return Err(ctx.err(key, "must be an http:// or https:// base URL without query or credentials, e.g. \"http://127.0.0.1:4318\" (keyward adds /v1/traces)"));
            }
            Some(u)
        }
    };
    let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(ctx.err("telemetry.sample_ratio", "must be between 0.0 and 1.0"));
    }
    let service_name = raw.service_name.unwrap_or_else(|| "keyward".into());
    if service_name.trim().is_empty() {
        return Err(ctx.err("telemetry.service_name", "must not be empty"));
    }
    let propagate_to_providers = match raw.propagate_to_providers.as_deref() {
        None | Some("as-received") => TraceContextOut::AsReceived,
        Some("never") => TraceContextOut::Never,
        Some(other) => {
            return Err(ctx.err(
                "telemetry.propagate_to_providers",
                format!("\"{other}\" is not a choice; use \"as-received\" or \"never\""),
            ))
        }
    };
    Ok(TelemetryConfig {
        access_log,
        otlp_endpoint,
        otlp_ca: raw.otlp_ca.as_deref().map(|p| ctx.path("telemetry.otlp_ca", p)).transpose()?,
        sample_ratio,
        service_name,
        resource_attributes: raw.resource_attributes,
        propagate_to_providers,
        audit_checkpoint_interval: ctx.duration(
            "telemetry.audit_checkpoint_interval",
            raw.audit_checkpoint_interval.as_deref(),
            Duration::from_secs(3600),
        )?,
    })
}
