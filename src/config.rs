//! Configuration: TOML (CONTRACT.md §3) parsed into typed, validated values.
//!
//! Pure: reads the one config file, consults the environment only through [`Env`], opens no
//! socket and no other file, and never holds a secret value (key files are named, not read).
//! Relative paths are resolved against the directory of the config file, so a unit file or
//! a container can start keyward from any working directory.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use url::Url;

use crate::ids::{ProviderName, TenantId};

/// Where keyward reads environment variables. Production uses [`ProcessEnv`]; tests inject
/// a map so they never mutate the process environment.
pub trait Env: Send + Sync {
    /// The variable's value, if set and valid UTF-8.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// A configuration problem, always naming the file and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read the configuration: {reason}")]
    Read {
        /// The config file.
        file: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// TOML syntax error.
    #[error("{file}: line {line}, column {column}: {message}")]
    Syntax {
        /// The config file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// A key with a bad value, an unknown key, or a missing one.
    #[error("{file}: {key}: {message}")]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// Dotted path of the offending key, e.g. `webhooks.max_body`.
        key: String,
        /// What is wrong and what to write instead.
        message: String,
    },
}

impl ConfigError {
    /// The offending key, when the error has one (used by tests and `check-config`).
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Value types parsed from strings
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// The validated configuration
// ---------------------------------------------------------------------------------------

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (absolute).
    pub source: PathBuf,
    /// `[store]`
    pub store: StoreConfig,
    /// `[master_key]`
    pub master_key: MasterKeyConfig,
    /// `[app]`, when apps send outbound calls through this daemon.
    pub app: Option<AppConfig>,
    /// `[webhooks]`, when providers deliver webhooks to this daemon.
    pub webhooks: Option<WebhooksConfig>,
    /// `[admin]`
    pub admin: AdminConfig,
    /// `[ops]`
    pub ops: Option<OpsConfig>,
    /// `[upstream]`
    pub upstream: UpstreamConfig,
    /// `[providers.*]`
    pub providers: ProvidersConfig,
    /// `[danger]`
    pub danger: DangerConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[verification]`
    pub verification: VerificationConfig,
}

/// `[verification]`: periodic live re-checks of every credential.
#[derive(Debug, Clone)]
pub struct VerificationConfig {
    /// How often (each pass jittered by ±20 %); zero disables.
    pub interval: Duration,
    /// Checks in flight at most.
    pub concurrency: usize,
    /// List the tenant's ids at the provider and register routes after a credential is
    /// stored or verified.
    pub discover_routes: bool,
}

/// Which store backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The embedded sled database at `store.path`.
    Sled,
    /// PostgreSQL shared by a fleet of sidecars.
    Postgres(PostgresConfig),
}

/// Where the PostgreSQL password comes from (never the URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// No password (trust or certificate authentication).
    None,
    /// A file (mode 0600 or stricter).
    File(PathBuf),
    /// A systemd credential name.
    Credential(String),
}

/// `[store] backend = "postgres"` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/db?sslmode=require` without a password.
    pub url: String,
    /// The password's source.
    pub password: PasswordSource,
    /// One more CA for the server certificate.
    pub tls_ca: Option<PathBuf>,
}

/// `[store]`
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Which backend.
    pub backend: Backend,
    /// Embedded database directory (sled).
    pub path: PathBuf,
    /// How long soft-deleted credentials stay restorable.
    pub deleted_retention: Duration,
    /// Decrypted credentials kept in memory at most.
    pub cache_entries: usize,
}

/// Where the active master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding base64 of 32 bytes (mode 0600 or stricter).
    File(PathBuf),
    /// An environment variable holding base64 of 32 bytes.
    Env(String),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>` (LoadCredential=).
    Credential(String),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "file {}", p.display()),
            KeySource::Env(v) => write!(f, "environment variable {v}"),
            KeySource::Credential(n) => write!(f, "systemd credential {n}"),
        }
    }
}

/// `[master_key]`
#[derive(Debug, Clone)]
pub struct MasterKeyConfig {
    /// The active key.
    pub source: KeySource,
    /// Older key files, still able to open records during a rotation.
    pub previous: Vec<PathBuf>,
}

/// `[app]`
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Unix socket path.
    pub unix: Option<PathBuf>,
    /// Unix socket mode.
    pub unix_mode: u32,
    /// mTLS TCP address.
    pub tcp: Option<SocketAddr>,
    /// Certificates for `tcp`.
    pub tls: Option<MtlsFiles>,
    /// Client policy; empty means every local client may use every tenant.
    pub clients: Vec<ClientPolicy>,
}

/// Server certificate, key and the CA that client certificates must chain to.
#[derive(Debug, Clone)]
pub struct MtlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle for client certificates.
    pub client_ca: PathBuf,
}

/// Server certificate and key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Who a client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientIdentity {
    /// A peer uid on the Unix socket.
    Uid(u32),
    /// A URI or DNS SAN of an mTLS client certificate.
    San(String),
}

/// One `[[app.clients]]` entry.
#[derive(Debug, Clone)]
pub struct ClientPolicy {
    /// Whom it applies to.
    pub identity: ClientIdentity,
    /// Allowed tenants; `None` means all (`"*"`).
    pub tenants: Option<Vec<TenantId>>,
    /// Allowed providers; `None` means all (`"*"`).
    pub providers: Option<Vec<ProviderName>>,
}

/// Where verified webhooks go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardTo {
    /// `http://host:port` (a path prefix is kept).
    Http(Url),
    /// `unix:/path/to/socket`
    Unix(PathBuf),
}

/// `[webhooks]`
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// The URL providers call, which Twilio signs. No trailing slash.
    pub public_base_url: Url,
    /// The app.
    pub forward_to: ForwardTo,
    /// Largest body accepted.
    pub max_body: u64,
    /// Peers allowed to set X-Forwarded-Proto / X-Forwarded-Host.
    pub trusted_proxies: Vec<IpNet>,
    /// TLS on the listener.
    pub tls: Option<TlsFiles>,
    /// How long the app may take to answer a forwarded delivery.
    pub forward_timeout: Duration,
}

/// `[admin]`
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Unix socket (mode 0600).
    pub unix: Option<PathBuf>,
    /// TCP address, bearer token required.
    pub tcp: Option<SocketAddr>,
    /// File with the bearer token for `tcp`.
    pub token_file: Option<PathBuf>,
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

/// `[upstream]`
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout (until response headers).
    pub request_timeout: Duration,
    /// One more CA to trust.
    pub extra_ca: Option<PathBuf>,
}

/// `[danger]`: knobs that weaken security. Each logs a warning at start.
#[derive(Debug, Clone, Default)]
pub struct DangerConfig {
    /// Allow `http://` base URLs for upstreams (tests only).
    pub allow_plain_http_upstream: bool,
    /// Create the master key file if it is missing (development only).
    pub create_missing_master_key: bool,
    /// Accept `app.tcp` without `[app.tls]`: plain HTTP, no client identity (benchmarks).
    pub app_plain_tcp: bool,
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

pub use keyward_core::providers::config::{
    template_fields, BuiltinOverride, GenericProvider, InjectTemplate, ProvidersConfig, RateLimit, WebhookScheme,
    BUILTIN_PROVIDERS,
};
pub use keyward_core::units::{parse_duration, parse_rate, parse_size};

// ---------------------------------------------------------------------------------------
// Raw TOML shapes (deny_unknown_fields everywhere)
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    store: RawStore,
    master_key: RawMasterKey,
    app: Option<RawApp>,
    webhooks: Option<RawWebhooks>,
    admin: RawAdmin,
    ops: Option<RawOps>,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    providers: BTreeMap<String, toml::Value>,
    #[serde(default)]
    danger: RawDanger,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    verification: RawVerification,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawVerification {
    interval: Option<String>,
    concurrency: Option<usize>,
    discover_routes: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: Option<String>,
    path: Option<String>,
    deleted_retention: Option<String>,
    cache_entries: Option<usize>,
    url: Option<String>,
    password_file: Option<String>,
    password_credential: Option<String>,
    tls_ca: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMasterKey {
    file: Option<String>,
    env: Option<String>,
    credential: Option<String>,
    #[serde(default)]
    previous: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    unix: Option<String>,
    unix_mode: Option<String>,
    tcp: Option<String>,
    tls: Option<RawMtls>,
    #[serde(default)]
    clients: Vec<RawClient>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMtls {
    cert: String,
    key: String,
    client_ca: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    uid: Option<u32>,
    san: Option<String>,
    tenants: Vec<String>,
    providers: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    listen: String,
    public_base_url: String,
    forward_to: String,
    max_body: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    forward_timeout: Option<String>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    unix: Option<String>,
    tcp: Option<String>,
    token_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOps {
    listen: String,
    #[serde(default)]
    metrics_tenant_labels: bool,
    drain_grace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    connect_timeout: Option<String>,
    request_timeout: Option<String>,
    extra_ca: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_tenant: String,
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuiltin {
    base_url: Option<String>,
    rate_limit: Option<RawRateLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGoogle {
    base_url: Option<String>,
    rate_limit: Option<RawRateLimit>,
    token_url: Option<String>,
    auth_url: Option<String>,
    revoke_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInject {
    header: Option<String>,
    value: Option<String>,
    basic: Option<[String; 2]>,
    query: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhookScheme {
    scheme: String,
    header: Option<String>,
    tolerance: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeneric {
    base_url: String,
    #[serde(default)]
    hosts: Vec<String>,
    fields: Vec<String>,
    #[serde(default)]
    public_fields: Vec<String>,
    inject: RawInject,
    webhook: Option<RawWebhookScheme>,
    rate_limit: Option<RawRateLimit>,
    verify_path: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDanger {
    #[serde(default)]
    allow_plain_http_upstream: bool,
    #[serde(default)]
    create_missing_master_key: bool,
    #[serde(default)]
    app_plain_tcp: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

/// Builds errors that name the file.
struct Ctx<'a> {
    file: &'a Path,
    dir: PathBuf,
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
fn typed<T: serde::de::DeserializeOwned>(ctx: &Ctx<'_>, prefix: &str, value: toml::Value) -> Result<T, ConfigError> {
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

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { file: path.to_path_buf(), reason: e.to_string() })?;
        Config::parse(path, &text, env)
    }

    /// Validates `text` as if read from `path` (which only names the file and anchors
    /// relative paths).
    pub fn parse(path: &Path, text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        let source = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let dir = source.parent().map(Path::to_path_buf).unwrap_or_default();
        let ctx = Ctx { file: path, dir };
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let (line, column) = e.span().map(|sp| line_col(text, sp.start)).unwrap_or((0, 0));
            ConfigError::Syntax { file: path.to_path_buf(), line, column, message: e.message().to_string() }
        })?;
        let raw: RawConfig = typed(&ctx, "", toml::Value::Table(table))?;
        build(&ctx, raw, env, source.clone())
    }

    /// A short human summary for `check-config` (never a secret: key sources are named,
    /// not read).
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!("config:      {}", self.source.display()));
        line(format!(
            "store:       {} (deleted kept {})",
            self.store.path.display(),
            humantime::format_duration(self.store.deleted_retention)
        ));
        line(format!("master key:  {} (+{} previous)", self.master_key.source, self.master_key.previous.len()));
        if let Some(a) = &self.app {
            let mut l = Vec::new();
            if let Some(u) = &a.unix {
                l.push(format!("unix {} ({:04o})", u.display(), a.unix_mode));
            }
            if let Some(t) = &a.tcp {
                l.push(format!("mTLS {t}"));
            }
            line(format!("app:         {} ; {} client policies", l.join(", "), a.clients.len()));
        }
        if let Some(w) = &self.webhooks {
            line(format!(
                "webhooks:    {} -> {} (public {})",
                w.listen,
                match &w.forward_to {
                    ForwardTo::Http(u) => u.to_string(),
                    ForwardTo::Unix(p) => format!("unix:{}", p.display()),
                },
                w.public_base_url
            ));
        }
        let mut admin = Vec::new();
        if let Some(u) = &self.admin.unix {
            admin.push(format!("unix {}", u.display()));
        }
        if let Some(t) = &self.admin.tcp {
            admin.push(format!("tcp {t} (bearer token)"));
        }
        line(format!("admin:       {}", admin.join(", ")));
        if let Some(o) = &self.ops {
            line(format!("ops:         {}", o.listen));
        }
        let generic: Vec<&str> = self.providers.generic.keys().map(ProviderName::as_str).collect();
        line(format!(
            "providers:   {} built-in{}",
            BUILTIN_PROVIDERS.join(", "),
            if generic.is_empty() { String::new() } else { format!("; generic: {}", generic.join(", ")) }
        ));
        for w in self.danger_warnings() {
            line(format!("DANGER:      {w}"));
        }
        out
    }

    /// Settings that differ from `new` and only take effect after a restart (listeners,
    /// keys, store, TLS material, upstream client, webhook delivery).
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        let differs = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        if differs(&self.store, &new.store) {
            out.push("store");
        }
        if differs(&self.master_key, &new.master_key) {
            out.push("master_key");
        }
        let listeners = |c: &Config| {
            (
                c.app.as_ref().map(|a| (a.unix.clone(), a.unix_mode, a.tcp, a.tls.clone())),
                c.admin.clone(),
                c.ops.clone(),
            )
        };
        if differs(&listeners(self), &listeners(new)) {
            out.push("listeners (app, admin, ops)");
        }
        if differs(&self.webhooks, &new.webhooks) {
            out.push("webhooks");
        }
        if differs(&self.upstream, &new.upstream) {
            out.push("upstream");
        }
        if differs(&self.danger, &new.danger) {
            out.push("danger");
        }
        if differs(&self.verification, &new.verification) {
            out.push("verification");
        }
        out
    }

    /// One line per enabled `[danger]` knob, logged as a warning at start.
    pub fn danger_warnings(&self) -> Vec<&'static str> {
        let mut w = Vec::new();
        if self.danger.allow_plain_http_upstream {
            w.push("danger.allow_plain_http_upstream: credentials may be sent over plain HTTP");
        }
        if self.danger.app_plain_tcp && self.app.as_ref().is_some_and(|a| a.tcp.is_some() && a.tls.is_none()) {
            w.push("danger.app_plain_tcp: the app listener accepts plain HTTP on TCP with no client identity (benchmarks only)");
        }
        if self.danger.create_missing_master_key {
            w.push("danger.create_missing_master_key: a missing master key file is created (development only)");
        }
        w
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn build(ctx: &Ctx<'_>, raw: RawConfig, env: &dyn Env, source: PathBuf) -> Result<Config, ConfigError> {
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
        } else if BUILTIN_PROVIDERS.contains(&name.as_str()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[store]
path = "/var/lib/keyward"
[master_key]
file = "/run/key"
[admin]
unix = "/run/keyward/admin.sock"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/keyward/keyward.toml"), text, &BTreeMap::new())
    }

    fn key_of(text: &str) -> String {
        parse(text).unwrap_err().key().unwrap_or("(none)").to_string()
    }

    #[test]
    fn a_minimal_config_parses_with_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.store.deleted_retention, Duration::from_secs(14 * 86_400));
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(c.app.is_none());
    }

    #[test]
    fn the_example_config_with_every_key_parses() {
        let text = include_str!("../config/keyward.toml");
        let c = parse(text).unwrap();
        assert!(c.app.is_some() && c.webhooks.is_some() && c.ops.is_some());
        assert!(c.providers.generic.contains_key(&ProviderName::parse("acme").unwrap()));
    }

    #[test]
    fn the_dev_config_parses() {
        let c =
            Config::parse(Path::new("config/dev.toml"), include_str!("../config/dev.toml"), &BTreeMap::new()).unwrap();
        assert!(c.danger.create_missing_master_key);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let e = parse(&MINIMAL.replace("path =", "pathx = \"x\"\npath =")).unwrap_err().to_string();
        assert!(e.contains("/etc/keyward/keyward.toml"), "{e}");
        assert!(e.contains("store") && e.contains("pathx"), "{e}");
        assert!(parse(&format!("{MINIMAL}\n[bogus]\nx = 1\n")).unwrap_err().to_string().contains("bogus"));
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(
            key_of(&format!("{MINIMAL}\n[upstream]\nconnect_timeout = \"5 seconds\"\n")),
            "upstream.connect_timeout"
        );
        assert_eq!(
            key_of(&format!("{MINIMAL}\n[webhooks]\nlisten = \"0.0.0.0:8443\"\npublic_base_url = \"https://u:p@h.example\"\nforward_to = \"http://127.0.0.1:3000\"\n")),
            "webhooks.public_base_url"
        );
        assert_eq!(
            key_of(&format!("{MINIMAL}\n[webhooks]\nlisten = \"0.0.0.0:8443\"\npublic_base_url = \"https://h.example\"\nforward_to = \"http://127.0.0.1:3000\"\nmax_body = \"1 MB\"\n")),
            "webhooks.max_body"
        );
        assert_eq!(key_of(&format!("{MINIMAL}\n[app]\ntcp = \"127.0.0.1:7443\"\n")), "app.tls");
        assert_eq!(key_of(&format!("{MINIMAL}\n[app]\nunix = \"/a.sock\"\nunix_mode = \"0666\"\n")), "app.unix_mode");
        assert_eq!(
            key_of(&format!("{MINIMAL}\n[providers.twilio]\nbase_url = \"http://127.0.0.1:1\"\n")),
            "providers.twilio.base_url"
        );
        assert_eq!(
            key_of(&format!("{MINIMAL}\n[providers.twilio]\nrate_limit = {{ per_tenant = \"fast\" }}\n")),
            "providers.twilio.rate_limit.per_tenant"
        );
        assert_eq!(key_of(&format!("{MINIMAL}\n[log]\nformat = \"xml\"\n")), "log.format");
        assert_eq!(key_of(&MINIMAL.replace("file = \"/run/key\"", "file = \"/run/key\"\nenv = \"K\"")), "master_key");
    }

    #[test]
    fn a_missing_section_is_named() {
        let e = parse("[store]\npath = \"/x\"\n[admin]\nunix = \"/a\"\n").unwrap_err().to_string();
        assert!(e.contains("master_key"), "{e}");
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let e = parse("[store]\npath = \n").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { line: 2, .. }), "{e}");
    }

    #[test]
    fn relative_paths_are_resolved_against_the_config_directory() {
        let c = parse(&MINIMAL.replace("/var/lib/keyward", "data")).unwrap();
        assert_eq!(c.store.path, Path::new("/etc/keyward/data"));
    }

    #[test]
    fn generic_providers_check_their_templates() {
        let base =
            format!("{MINIMAL}\n[providers.acme]\nbase_url = \"https://api.acme.example\"\nfields = [\"api_key\"]\n");
        let ok = parse(&format!("{base}inject = {{ header = \"Authorization\", value = \"Bearer {{api_key}}\" }}\n"))
            .unwrap();
        let acme = &ok.providers.generic[&ProviderName::parse("acme").unwrap()];
        assert_eq!(acme.hosts, vec!["api.acme.example".to_string()]);
        assert_eq!(
            key_of(&format!("{base}inject = {{ header = \"Authorization\", value = \"Bearer {{token}}\" }}\n")),
            "providers.acme.inject.value"
        );
        assert_eq!(key_of(&format!("{base}inject = {{ header = \"X\" }}\n")), "providers.acme.inject");
        assert_eq!(
            key_of(&format!(
                "{base}inject = {{ query = \"key\", value = \"{{api_key}}\" }}\nwebhook = {{ scheme = \"stripe\" }}\n"
            )),
            "providers.acme.fields"
        );
    }

    #[test]
    fn env_overlay_changes_the_log_level_and_names_itself_on_error() {
        let mut env = BTreeMap::new();
        env.insert("KEYWARD_LOG".to_string(), "debug".to_string());
        let c = Config::parse(Path::new("/k.toml"), MINIMAL, &env).unwrap();
        assert_eq!(c.log.level, "debug");
        env.insert("KEYWARD_LOG_FORMAT".to_string(), "yaml".to_string());
        let e = Config::parse(Path::new("/k.toml"), MINIMAL, &env).unwrap_err();
        assert_eq!(e.key(), Some("KEYWARD_LOG_FORMAT (environment)"));
    }

    #[test]
    fn durations_sizes_and_rates_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("14d").unwrap(), Duration::from_secs(14 * 86_400));
        for bad in ["", "5", "s", "-5s", "5 s", "1.5s", "99999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_size("64KiB").unwrap(), 65_536);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert!(parse_size("1MB").is_err());
        assert_eq!(parse_rate("50/s").unwrap(), 50.0);
        assert!(parse_rate("0/s").is_err());
    }
}
