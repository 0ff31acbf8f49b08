//! Configuration: TOML (CONTRACT.md §3) parsed into typed, validated values.
//!
//! Pure: reads the one config file, consults the environment only through [`Env`], opens no
//! socket and no other file, and never holds a secret value (key files are named, not read).
//! Relative paths are resolved against the directory of the config file, so a unit file or
//! a container can start keyward from any working directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use url::Url;

use crate::admin::AdminConfig;
use crate::http::UpstreamConfig;
use crate::live::VerificationConfig;
use crate::ops::OpsConfig;
use crate::policy::{ClientIdentity, ClientPolicy};
use crate::proxy::AppConfig;
use crate::telemetry::{AccessMode, LogConfig, LogFormat, TelemetryConfig, TraceContextOut};
use crate::tls::{MtlsFiles, TlsFiles};
use crate::vault::{KeySource, MasterKeyConfig};
use crate::webhook::{ForwardTo, WebhooksConfig};
pub use keyward_core::env::{Env, ProcessEnv};
use keyward_core::ids::{ProviderName, TenantId};

use build::{line_col, typed, Ctx};
use raw::RawConfig;

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
    /// `[telemetry]`
    pub telemetry: TelemetryConfig,
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

/// `[danger]`: knobs that weaken security. Each logs a warning at start.
#[derive(Debug, Clone, Default)]
pub struct DangerConfig {
    /// Allow `http://` base URLs for upstreams (tests only).
    pub allow_plain_http_upstream: bool,
    /// Create the master key file if it is missing (development only).
    pub create_missing_master_key: bool,
    /// Accept `app.tcp` without `[app.tls]`: plain HTTP, no client identity (benchmarks).
    pub app_plain_tcp: bool,
    /// Accept `admin.tcp` on a non-loopback address without `[admin.tls]`.
    pub admin_plain_tcp: bool,
}

pub use keyward_core::providers::config::{
    template_fields, BuiltinOverride, GenericProvider, InjectTemplate, OAuth2Spec, ProvidersConfig, RateLimit,
    WebhookScheme,
};
pub use keyward_core::units::{parse_duration, parse_rate, parse_size};

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
        build::build(&ctx, raw, env, source.clone())
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
            keyward_core::providers::builtin_names().collect::<Vec<_>>().join(", "),
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
        if differs(&self.telemetry, &new.telemetry) {
            out.push("telemetry");
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

mod admin;
mod app;
mod build;
mod master_key;
mod providers;
mod raw;
#[cfg(test)]
mod tests;
mod webhooks;
