//! Validation: raw TOML shapes into the components' config values, with errors that name
//! the file and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::raw::*;
use super::*;

/// Builds errors that name the file.
pub(super) struct Ctx<'a> {
    pub(super) file: &'a Path,
    pub(super) dir: PathBuf,
}

impl Ctx<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { file: self.file.to_path_buf(), key: key.to_string(), message: message.into() }
    }

    fn path(&self, key: &str, s: &str) -> Result<PathBuf, ConfigError> {
        if s.is_empty() {
            return Err(self.err(key, "must not be empty"));
        }
        if s.contains('\0') {
            return Err(self.err(key, "must not contain NUL"));
        }
        let p = Path::new(s);
        Ok(if p.is_absolute() { p.to_path_buf() } else { self.dir.join(p) })
    }

    fn duration(&self, key: &str, s: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
        match s {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|m| self.err(key, m)),
        }
    }

    fn addr(&self, key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
        s.parse().map_err(|_| {
            self.err(key, format!("\"{s}\" is not an address; write e.g. \"127.0.0.1:7443\" or \"[::1]:7443\""))
        })
    }

    fn url(&self, key: &str, s: &str, allow_http: bool) -> Result<Url, ConfigError> {
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

    fn rate(&self, key: &str, raw: Option<RawRateLimit>) -> Result<Option<RateLimit>, ConfigError> {
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
fn parse_mode(s: &str) -> Result<u32, String> {
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

    let mk = raw.master_key;
    let sources = [mk.file.is_some(), mk.env.is_some(), mk.credential.is_some()];
    let source_key = match sources.iter().filter(|b| **b).count() {
        1 => {
            if let Some(f) = &mk.file {
                KeySource::File(ctx.path("master_key.file", f)?)
            } else if let Some(v) = &mk.env {
                if v.is_empty() || !v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
                    return Err(
                        ctx.err("master_key.env", "must be an environment variable name like KEYWARD_MASTER_KEY")
                    );
                }
                KeySource::Env(v.clone())
            } else {
                let n = mk.credential.clone().unwrap_or_default();
                if n.is_empty() || n.contains('/') {
                    return Err(ctx.err(
                        "master_key.credential",
                        "must be a credential name (LoadCredential=NAME:…), without '/'",
                    ));
                }
                KeySource::Credential(n)
            }
        }
        0 => return Err(ctx.err("master_key", "set one of file, env or credential")),
        _ => return Err(ctx.err("master_key", "set only one of file, env or credential")),
    };
    if danger.create_missing_master_key && !matches!(source_key, KeySource::File(_)) {
        return Err(ctx.err("danger.create_missing_master_key", "needs master_key.file"));
    }
    let previous = mk
        .previous
        .iter()
        .enumerate()
        .map(|(i, p)| ctx.path(&format!("master_key.previous[{i}]"), p))
        .collect::<Result<_, _>>()?;
    let master_key = MasterKeyConfig { source: source_key, previous };

    let app = raw.app.map(|a| build_app(ctx, a, danger.app_plain_tcp)).transpose()?;
    let webhooks = raw.webhooks.map(|w| build_webhooks(ctx, w)).transpose()?;

    let admin = AdminConfig {
        unix: raw.admin.unix.as_deref().map(|p| ctx.path("admin.unix", p)).transpose()?,
        tcp: raw.admin.tcp.as_deref().map(|a| ctx.addr("admin.tcp", a)).transpose()?,
        token_file: raw.admin.token_file.as_deref().map(|p| ctx.path("admin.token_file", p)).transpose()?,
    };
    if admin.unix.is_none() && admin.tcp.is_none() {
        return Err(ctx.err("admin", "set admin.unix (and optionally admin.tcp)"));
    }
    if admin.tcp.is_some() && admin.token_file.is_none() {
        return Err(ctx.err("admin.token_file", "admin.tcp needs a token_file holding the bearer token"));
    }

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
    })
}

fn build_app(ctx: &Ctx<'_>, a: RawApp, plain_tcp: bool) -> Result<AppConfig, ConfigError> {
    let unix = a.unix.as_deref().map(|p| ctx.path("app.unix", p)).transpose()?;
    let unix_mode = match &a.unix_mode {
        Some(m) => parse_mode(m).map_err(|e| ctx.err("app.unix_mode", e))?,
        None => 0o660,
    };
    let tcp = a.tcp.as_deref().map(|s| ctx.addr("app.tcp", s)).transpose()?;
    let tls = a
        .tls
        .map(|t| -> Result<MtlsFiles, ConfigError> {
            Ok(MtlsFiles {
                cert: ctx.path("app.tls.cert", &t.cert)?,
                key: ctx.path("app.tls.key", &t.key)?,
                client_ca: ctx.path("app.tls.client_ca", &t.client_ca)?,
            })
        })
        .transpose()?;
    if tcp.is_some() && tls.is_none() && !plain_tcp {
        return Err(
            ctx.err("app.tls", "app.tcp needs [app.tls] with cert, key and client_ca (mTLS is required on TCP)")
        );
    }
    if unix.is_none() && tcp.is_none() {
        return Err(ctx.err("app", "set app.unix or app.tcp"));
    }
    let mut clients = Vec::new();
    for (i, c) in a.clients.into_iter().enumerate() {
        let key = format!("app.clients[{i}]");
        let identity = match (c.uid, c.san) {
            (Some(u), None) => ClientIdentity::Uid(u),
            (None, Some(s)) if !s.is_empty() => ClientIdentity::San(s),
            _ => return Err(ctx.err(&key, "set exactly one of uid or san")),
        };
        let tenants = if c.tenants.iter().any(|t| t == "*") {
            None
        } else {
            Some(
                c.tenants
                    .iter()
                    .map(|t| TenantId::parse(t).map_err(|e| ctx.err(&format!("{key}.tenants"), e.to_string())))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let providers = match c.providers {
            None => None,
            Some(p) if p.iter().any(|p| p == "*") => None,
            Some(p) => Some(
                p.iter()
                    .map(|p| ProviderName::parse(p).map_err(|e| ctx.err(&format!("{key}.providers"), e.to_string())))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        clients.push(ClientPolicy { identity, tenants, providers });
    }
    Ok(AppConfig { unix, unix_mode, tcp, tls, clients })
}

fn build_webhooks(ctx: &Ctx<'_>, w: RawWebhooks) -> Result<WebhooksConfig, ConfigError> {
    let listen = ctx.addr("webhooks.listen", &w.listen)?;
    let public_base_url = ctx.url("webhooks.public_base_url", w.public_base_url.trim_end_matches('/'), true)?;
    let forward_to = if let Some(p) = w.forward_to.strip_prefix("unix:") {
        ForwardTo::Unix(ctx.path("webhooks.forward_to", p)?)
    } else {
        let u = Url::parse(&w.forward_to)
            .map_err(|e| ctx.err("webhooks.forward_to", format!("\"{}\" is not a URL: {e}", w.forward_to)))?;
        if u.scheme() != "http" || u.host_str().is_none() {
            return Err(ctx.err("webhooks.forward_to", "must be http://host:port or unix:/path (the app is local)"));
        }
        ForwardTo::Http(u)
    };
    let max_body = match &w.max_body {
        Some(s) => parse_size(s).map_err(|m| ctx.err("webhooks.max_body", m))?,
        None => 1 << 20,
    };
    if max_body == 0 {
        return Err(ctx.err("webhooks.max_body", "must be above zero"));
    }
    let trusted_proxies = w
        .trusted_proxies
        .iter()
        .map(|c| {
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| ctx.err("webhooks.trusted_proxies", format!("\"{c}\" is not a CIDR like 10.0.0.0/8")))
        })
        .collect::<Result<_, _>>()?;
    let tls = w
        .tls
        .map(|t| -> Result<TlsFiles, ConfigError> {
            Ok(TlsFiles { cert: ctx.path("webhooks.tls.cert", &t.cert)?, key: ctx.path("webhooks.tls.key", &t.key)? })
        })
        .transpose()?;
    let forward_timeout =
        ctx.duration("webhooks.forward_timeout", w.forward_timeout.as_deref(), Duration::from_secs(30))?;
    if forward_timeout.is_zero() {
        return Err(ctx.err("webhooks.forward_timeout", "must be above zero"));
    }
    Ok(WebhooksConfig { listen, public_base_url, forward_to, max_body, trusted_proxies, tls, forward_timeout })
}

fn build_providers(
    ctx: &Ctx<'_>,
    raw: BTreeMap<String, toml::Value>,
    allow_http: bool,
) -> Result<ProvidersConfig, ConfigError> {
    let mut out = ProvidersConfig::default();
    for (name, value) in raw {
        let key = format!("providers.{name}");
        let pname = ProviderName::parse(&name).map_err(|e| ctx.err(&key, e.to_string()))?;
        if name == "google" {
            let g: RawGoogle = typed(ctx, &key, value)?;
            let url = |k: &str, v: &Option<String>| {
                v.as_deref().map(|s| ctx.url(&format!("{key}.{k}"), s, allow_http)).transpose()
            };
            out.builtin.insert(
                name.clone(),
                BuiltinOverride {
                    base_url: url("base_url", &g.base_url)?,
                    rate_limit: ctx.rate(&format!("{key}.rate_limit"), g.rate_limit)?,
                    token_url: url("token_url", &g.token_url)?,
                    auth_url: url("auth_url", &g.auth_url)?,
                    revoke_url: url("revoke_url", &g.revoke_url)?,
                },
            );
        } else if keyward_core::providers::builtin_names().any(|b| b == name) {
            let b: RawBuiltin = typed(ctx, &key, value)?;
            out.builtin.insert(
                name.clone(),
                BuiltinOverride {
                    base_url: b
                        .base_url
                        .as_deref()
                        .map(|s| ctx.url(&format!("{key}.base_url"), s, allow_http))
                        .transpose()?,
                    rate_limit: ctx.rate(&format!("{key}.rate_limit"), b.rate_limit)?,
                    ..BuiltinOverride::default()
                },
            );
        } else {
            let g: RawGeneric = typed(ctx, &key, value)?;
            out.generic.insert(pname, build_generic(ctx, &key, g, allow_http)?);
        }
    }
    Ok(out)
}

fn build_generic(ctx: &Ctx<'_>, key: &str, g: RawGeneric, allow_http: bool) -> Result<GenericProvider, ConfigError> {
    let base_url = ctx.url(&format!("{key}.base_url"), &g.base_url, allow_http)?;
    if g.fields.is_empty() {
        return Err(ctx.err(&format!("{key}.fields"), "declare at least one credential field"));
    }
    for f in &g.fields {
        if f.is_empty() || !f.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_') {
            return Err(ctx.err(&format!("{key}.fields"), format!("\"{f}\" is not a field name; use [a-z0-9_]")));
        }
    }
    for f in &g.public_fields {
        if !g.fields.contains(f) {
            return Err(ctx.err(&format!("{key}.public_fields"), format!("\"{f}\" is not listed in fields")));
        }
    }
    let check_template = |k: &str, t: &str| -> Result<(), ConfigError> {
        for name in template_fields(t).map_err(|m| ctx.err(k, m))? {
            if !g.fields.iter().any(|f| f == name) {
                return Err(ctx.err(k, format!("{{{name}}} is not one of the declared fields")));
            }
        }
        Ok(())
    };
    let ik = format!("{key}.inject");
    let inject = match (g.inject.header, g.inject.value, g.inject.basic, g.inject.query) {
        (Some(h), Some(v), None, None) => {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(ctx.err(&format!("{ik}.header"), format!("\"{h}\" is not a header name")));
            }
            check_template(&format!("{ik}.value"), &v)?;
            InjectTemplate::Header { name: h.to_ascii_lowercase(), value: v }
        }
        (None, None, Some([u, p]), None) => {
            check_template(&format!("{ik}.basic"), &u)?;
            check_template(&format!("{ik}.basic"), &p)?;
            InjectTemplate::Basic { user: u, password: p }
        }
        (None, Some(v), None, Some(q)) => {
            if q.is_empty() {
                return Err(ctx.err(&format!("{ik}.query"), "must not be empty"));
            }
            check_template(&format!("{ik}.value"), &v)?;
            InjectTemplate::Query { name: q, value: v }
        }
        _ => {
            return Err(ctx.err(
                &ik,
                "write one of { header = \"…\", value = \"…\" }, { basic = [\"{user}\", \"{key}\"] } or { query = \"…\", value = \"…\" }",
            ))
        }
    };
    let webhook = g
        .webhook
        .map(|w| -> Result<WebhookScheme, ConfigError> {
            let wk = format!("{key}.webhook");
            let tolerance =
                ctx.duration(&format!("{wk}.tolerance"), w.tolerance.as_deref(), Duration::from_secs(300))?;
            match w.scheme.as_str() {
                "standard-webhooks" => {
                    if w.header.is_some() {
                        return Err(ctx.err(&format!("{wk}.header"), "standard-webhooks uses fixed webhook-* headers"));
                    }
                    Ok(WebhookScheme::StandardWebhooks { tolerance })
                }
                "stripe" => Ok(WebhookScheme::Stripe {
                    header: w.header.unwrap_or_else(|| "stripe-signature".into()).to_ascii_lowercase(),
                    tolerance,
                }),
                other => Err(ctx.err(
                    &format!("{wk}.scheme"),
                    format!("\"{other}\" is not a scheme; use \"standard-webhooks\" or \"stripe\""),
                )),
            }
        })
        .transpose()?;
    if webhook.is_some() && !g.fields.iter().any(|f| f == "webhook_secret") {
        return Err(ctx.err(&format!("{key}.fields"), "a provider with a webhook scheme needs a webhook_secret field"));
    }
    let mut hosts: Vec<String> = g.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    for h in &hosts {
        if h.is_empty() || h.contains('/') || h.contains('@') {
            return Err(ctx.err(&format!("{key}.hosts"), format!("\"{h}\" is not a host name")));
        }
    }
    if let Some(h) = base_url.host_str() {
        let h = h.to_ascii_lowercase();
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    if let Some(p) = &g.verify_path {
        if !p.starts_with('/') || p.contains("..") {
            return Err(ctx.err(&format!("{key}.verify_path"), "must be a path starting with / (e.g. \"/v1/me\")"));
        }
    }
    Ok(GenericProvider {
        base_url,
        hosts,
        fields: g.fields,
        public_fields: g.public_fields,
        inject,
        webhook,
        rate_limit: ctx.rate(&format!("{key}.rate_limit"), g.rate_limit)?,
        verify_path: g.verify_path,
    })
}
