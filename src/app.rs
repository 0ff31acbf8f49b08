//! The composition root: `App::build(config)` loads keys, opens the store and binds every
//! listener; `App::run(shutdown)` serves until the shutdown signal, then drains.
//! Nothing is bound before the configuration and the master key have been checked.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::access::AccessLog;
use crate::admin::{self, AdminState};
use crate::config::{Backend, Config, Env, PasswordSource, PostgresConfig};
use crate::console;
use crate::creds::{CredError, Credentials};
use crate::http::Upstream;
use crate::listen::{self, Bound, ConnLimits, ListenError, TlsSetup};
use crate::live::Live;
use crate::metrics::{DerivedSource, Metrics};
use crate::oauth::connect::ConnectFlows;
use crate::oauth::TokenManager;
use crate::ops::{self, Readiness};
use crate::policy::{Policy, RateLimiter};
use crate::proxy::{self, ProxyState};
use crate::shutdown::Shutdown;
use crate::telemetry::LogHandle;
use crate::tls::TlsError;
use crate::vault::{KeyId, Keyring, VaultError};
use crate::webhook::{self, AppClient, ReplayCache, WebhookState};
use keyward_core::providers::Providers;
use keyward_store::{PgStore, PgTarget, SledStore, Store, StoreError};

/// Why the daemon could not start. Every variant's message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Master key problems.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// Store problems.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store was sealed under a master key that is not configured.
    #[error("the store was sealed under master key {0}, which is not loaded: configure that key as master_key (or list it in master_key.previous); nothing was changed")]
    MasterKeyNotLoaded(KeyId),
    /// The configured master key fails the store's check value.
    #[error("the loaded master key does not open this store (check value sealed under key {0} fails to open): wrong key file? nothing was changed")]
    WrongMasterKey(KeyId),
    /// The PostgreSQL URL or password source is unusable.
    #[error("{0}")]
    PostgresSettings(String),
    /// The server task panicked or was cancelled.
    #[error("telemetry.access_log: {0}")]
    AccessLog(String),

    #[error("the server task failed: {0}")]
    Crashed(String),
    /// Opening the credential service failed otherwise.
    #[error(transparent)]
    Credentials(CredError),
    /// A listener could not be bound.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// Certificates or keys could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The admin token file is unusable.
    #[error("admin.token_file {path}: {reason}")]
    Token {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl From<CredError> for StartError {
    fn from(e: CredError) -> Self {
        match e {
            CredError::Vault(VaultError::UnknownKey(id)) => StartError::MasterKeyNotLoaded(id),
            CredError::Vault(VaultError::Integrity(id)) => StartError::WrongMasterKey(id),
            other => StartError::Credentials(other),
        }
    }
}

/// Replay keys remembered at most (about 150 bytes each).
const REPLAY_CAPACITY: usize = 200_000;

struct Listener {
    name: &'static str,
    bound: Bound,
    tls: Option<TlsSetup>,
}

/// A built, bound, not yet serving daemon.
pub struct App {
    config: Config,
    creds: Arc<Credentials>,
    readiness: Arc<Readiness>,
    log: LogHandle,
    token_digest: Option<[u8; 32]>,
    listeners: Vec<Listener>,
    proxy: Option<Arc<ProxyState>>,
    webhooks: Option<Arc<WebhookState>>,
    live: Arc<Live>,
    tokens: Arc<TokenManager>,
    connect: Arc<ConnectFlows>,
    metrics: Arc<Metrics>,
    access: Arc<AccessLog>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("listeners", &self.addresses()).finish()
    }
}

use crate::vault::read_private as read_private_file;

/// [`read_private_file`] for a store password.
fn read_secret_file(path: &std::path::Path, what: &str) -> Result<zeroize::Zeroizing<String>, StartError> {
    read_private_file(path)
        .map_err(|reason| StartError::PostgresSettings(format!("{what} {}: {reason}", path.display())))
}

/// Connection settings for tools (`keyward store migrate`).
pub(crate) fn pg_target_for_tools(pg: &PostgresConfig, env: &dyn Env) -> Result<PgTarget, StartError> {
    pg_target(pg, env)
}

/// Connection settings for PostgreSQL, with the password from its file or credential.
fn pg_target(pg: &PostgresConfig, env: &dyn Env) -> Result<PgTarget, StartError> {
    let mut config: tokio_postgres::Config =
        pg.url.parse().map_err(|e| StartError::PostgresSettings(format!("store.url is not a PostgreSQL URL: {e}")))?;
    match &pg.password {
        PasswordSource::None => {}
        PasswordSource::File(p) => {
            config.password(read_secret_file(p, "store.password_file")?.as_bytes());
        }
        PasswordSource::Credential(name) => {
            let dir = env.var("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                StartError::PostgresSettings(format!(
                    "store.password_credential = \"{name}\" needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=)"
                ))
            })?;
            config.password(
                read_secret_file(&std::path::Path::new(&dir).join(name), "store.password_credential")?.as_bytes(),
            );
        }
    }
    config.application_name("keyward");
    require_tls_off_host(&mut config, &pg.url)?;
    let tls = match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => None,
        _ => Some(crate::tls::client_config(pg.tls_ca.as_deref(), &[b"postgresql"])?),
    };
    Ok(PgTarget { config, tls, display: pg.url.clone() })
}

/// Connections each listener may hold, within the process's descriptor limit: the webhook
/// listener faces the internet and yields first, so a flood there leaves room for the app,
/// admin and ops listeners, the store and the upstream connections.
struct ConnBudget {
    webhooks: usize,
    app: usize,
}

/// Descriptors kept out of every listener's cap: store, upstream pools, files, logs.
const FD_RESERVE: usize = 256;
/// Admin and ops connections at most, each (operators and probes, not traffic).
const CONTROL_CONNECTIONS: usize = 64;

impl ConnBudget {
    fn new(config: &Config) -> ConnBudget {
        let limit = crate::hardening::raise_nofile();
        let want_w = config.webhooks.as_ref().map_or(0, |w| w.max_connections);
        let want_a = config.app.as_ref().map_or(0, |a| a.max_connections);
        let listeners = usize::from(config.app.is_some()) + 3;
        let room = limit.saturating_sub(FD_RESERVE + CONTROL_CONNECTIONS * 2);
        // The app gets up to half of what is left, the webhook listener the rest.
        let app = want_a.min((room / 2).max(listeners));
        let webhooks = want_w.min(room.saturating_sub(app).max(16));
        if webhooks < want_w || app < want_a {
            tracing::warn!(
                nofile = limit,
                webhooks,
                app,
                "connection caps lowered to fit the descriptor limit (raise LimitNOFILE to keep the configured ones)"
            );
        }
        ConnBudget { webhooks, app }
    }

    fn limits(&self, listener: &str, config: &Config, base: ConnLimits) -> ConnLimits {
        match listener {
            "webhooks" => {
                let w = config.webhooks.as_ref();
                ConnLimits {
                    max_connections: self.webhooks,
                    max_per_source: w.map(|w| w.max_connections_per_source),
                    idle_timeout: w.map_or(base.idle_timeout, |w| w.idle_timeout),
                    ..base
                }
            }
            "app" | "app-tls" | "app-tcp" => ConnLimits { max_connections: self.app, ..base },
            _ => ConnLimits { max_connections: CONTROL_CONNECTIONS, ..base },
        }
    }
}

/// `sslmode=prefer` (the default) falls back to plaintext when a network attacker strips
/// TLS, so off the host keyward requires TLS (rustls always verifies the server's
/// certificate) unless the URL says `sslmode=disable`; an explicit `prefer` is refused.
/// Unix sockets and loopback keep the URL's mode.
fn require_tls_off_host(config: &mut tokio_postgres::Config, url: &str) -> Result<(), StartError> {
    use tokio_postgres::config::{Host, SslMode};
    let local = config.get_hosts().iter().all(|h| match h {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name == "localhost"
                || name.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
    });
    if local {
        return Ok(());
    }
    match (url.contains("sslmode="), config.get_ssl_mode()) {
        (false, _) => {
            config.ssl_mode(SslMode::Require);
        }
        (true, SslMode::Prefer) => {
            return Err(StartError::PostgresSettings(
                "store.url says sslmode=prefer for a remote server: a network attacker can strip TLS; use sslmode=require (the certificate is verified), or sslmode=disable on a trusted network".into(),
            ))
        }
        (true, SslMode::Disable) => {
            tracing::warn!("store.url: sslmode=disable for a remote PostgreSQL server; credentials' ciphertext and the store password cross the network in clear");
        }
        _ => {}
    }
    Ok(())
}

fn read_token(path: &std::path::Path) -> Result<[u8; 32], StartError> {
    let err = |reason: String| StartError::Token { path: path.display().to_string(), reason };
    let token = read_private_file(path).map_err(err)?;
    if token.len() < 16 {
        return Err(err("the token must be at least 16 characters".into()));
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

impl App {
    /// Loads the master key, opens the store, checks the key against it, and binds every
    /// configured listener.
    pub async fn build(config: Config, env: &dyn Env, log: LogHandle) -> Result<App, StartError> {
        let readiness = Arc::new(Readiness::default());
        let (keyring, key_source) = Keyring::load(&config.master_key, env, config.danger.create_missing_master_key)?;
        if key_source.created {
            tracing::warn!(
                source = %key_source.description,
                "!!! CREATED A NEW DEVELOPMENT MASTER KEY. Anything sealed under it is lost if the file is lost. Never use [danger] create_missing_master_key in production !!!"
            );
        }
        tracing::info!(source = %key_source.description, key_id = %keyring.active_id(), previous = keyring.previous_ids().len(), "master key loaded");

        let store: Arc<dyn Store> = match &config.store.backend {
            Backend::Sled => Arc::new(SledStore::open(&config.store.path)?),
            Backend::Postgres(pg) => {
                let target = pg_target(pg, env)?;
                tracing::info!(db = %target.display, "opening the PostgreSQL store (fleet mode)");
                PgStore::open(target).await?
            }
        };
        let _ = readiness.store.set(store.clone());
        readiness.store_open.store(true, Ordering::SeqCst);
        let providers = Providers::from_config(&config.providers);
        let creds: Arc<Credentials> = Arc::new(
            Credentials::open(store, keyring, providers, config.store.deleted_retention)
                .await?
                .with_cache_entries(config.store.cache_entries)
                .with_key_ttl(config.master_key.cache_ttl),
        );
        readiness.key_loaded.store(true, Ordering::SeqCst);
        if let Some(k) = creds.kms_health() {
            let _ = readiness.kms.set(k);
        }
        creds.watch_changes();

        let token_digest = config.admin.token_file.as_deref().map(read_token).transpose()?;

        let upstream = Upstream::new(&config.upstream, config.danger.allow_plain_http_upstream)?;
        let tokens = Arc::new(TokenManager::new(creds.clone(), crate::oauth::http_client(&config.upstream)?));
        let connect = Arc::new(ConnectFlows::default());
        let live = Arc::new(Live::new(creds.clone(), upstream.clone(), tokens.clone()));
        let replay = ReplayCache::new(REPLAY_CAPACITY);
        let metrics = Arc::new(Metrics::new(
            config.ops.as_ref().is_some_and(|o| o.metrics_tenant_labels),
            vec![
                creds.clone() as Arc<dyn DerivedSource>,
                tokens.clone(),
                Arc::new(replay.clone()),
                live.clone(),
                readiness.clone(),
            ],
        ));
        let access = AccessLog::open(&config.telemetry.access_log).map_err(StartError::AccessLog)?;
        let proxy = match &config.app {
            None => None,
            Some(app) => {
                if app.clients.is_empty() {
                    tracing::warn!(
                        "no [[app.clients]] policy: every client that can reach the app listener may use every tenant"
                    );
                }
                Some(Arc::new(ProxyState {
                    creds: creds.clone(),
                    upstream: upstream.clone(),
                    policy: std::sync::RwLock::new(Arc::new(Policy::new(app.clients.clone()))),
                    limiter: RateLimiter::default(),
                    tokens: Some(tokens.clone()),
                    metrics: metrics.clone(),
                    public_base_url: config.webhooks.as_ref().map(|w| w.public_base_url.clone()),
                    access: access.clone(),
                    strip_trace_context: config.telemetry.propagate_to_providers
                        == crate::telemetry::TraceContextOut::Never,
                }))
            }
        };

        let webhooks = config.webhooks.as_ref().map(|w| {
            Arc::new(WebhookState {
                creds: creds.clone(),
                replay: if creds.store().as_pg().is_some() {
                    webhook::replay::Replay::Shared(creds.store().clone(), replay.clone())
                } else {
                    webhook::replay::Replay::Memory(replay.clone())
                },
                app: AppClient::new(&w.forward_to, w.forward_timeout),
                public_base_url: w.public_base_url.clone(),
                max_body: w.max_body,
                body_read_timeout: w.body_read_timeout,
                trusted_proxies: w.trusted_proxies.clone(),
                rejections: Default::default(),
                connect: connect.clone(),
                tokens: tokens.clone(),
                metrics: metrics.clone(),
                access: access.clone(),
            })
        });

        let mut listeners = Vec::new();
        let mut add = |name, bound, tls| listeners.push(Listener { name, bound, tls });
        if let Some(app) = &config.app {
            if let Some(p) = &app.unix {
                add("app", Bound::Unix(listen::bind_unix(p, app.unix_mode)?), None);
            }
            match (app.tcp, &app.tls) {
                (Some(addr), Some(files)) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::mtls_server_config(files)?);
                    let setup = TlsSetup { acceptor, identity: Some(crate::tls::peer_identity) };
                    add("app-tls", Bound::Tcp(listen::bind_tcp(addr)?), Some(setup));
                }
                // Only reachable with [danger] app_plain_tcp (checked by the config).
                (Some(addr), None) => add("app-tcp", Bound::Tcp(listen::bind_tcp(addr)?), None),
                _ => {}
            }
        }
        if let Some(w) = &config.webhooks {
            let tls = match &w.tls {
                Some(files) => Some(TlsSetup {
                    acceptor: tokio_rustls::TlsAcceptor::from(crate::tls::server_config(files)?),
                    identity: None,
                }),
                None => None,
            };
            add("webhooks", Bound::Tcp(listen::bind_tcp(w.listen)?), tls);
        }
        if let Some(p) = &config.admin.unix {
            add("admin", Bound::Unix(listen::bind_unix(p, 0o600)?), None);
        }
        if let Some(a) = config.admin.tcp {
            let tls = match &config.admin.tls {
                Some(files) => Some(TlsSetup {
                    acceptor: tokio_rustls::TlsAcceptor::from(crate::tls::server_config(files)?),
                    identity: None,
                }),
                None => None,
            };
            add("admin-tcp", Bound::Tcp(listen::bind_tcp(a)?), tls);
        }
        if let Some(o) = &config.ops {
            add("ops", Bound::Tcp(listen::bind_tcp(o.listen)?), None);
        }
        Ok(App {
            config,
            creds,
            readiness,
            log,
            token_digest,
            listeners,
            proxy,
            webhooks,
            live,
            tokens,
            connect,
            metrics,
            access,
        })
    }

    /// `(listener name, address)` of every bound listener.
    pub fn addresses(&self) -> Vec<(&'static str, String)> {
        self.listeners.iter().map(|l| (l.name, l.bound.describe())).collect()
    }

    /// What SIGHUP can change in the running daemon.
    pub(crate) fn reloader(&self) -> Reloader {
        Reloader {
            creds: self.creds.clone(),
            proxy: self.proxy.clone(),
            log: self.log.clone(),
            access: self.access.clone(),
            current: std::sync::Mutex::new(self.config.clone()),
        }
    }

    /// Serves until `shutdown` fires, then drains and returns.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), StartError> {
        let App {
            config,
            creds,
            readiness,
            log,
            token_digest,
            listeners,
            proxy,
            webhooks,
            live,
            tokens,
            connect,
            metrics,
            access,
        } = self;
        let base = ConnLimits {
            drain_grace: config.ops.as_ref().map_or(Duration::from_secs(30), |o| o.drain_grace),
            ..ConnLimits::default()
        };
        let budget = ConnBudget::new(&config);
        let console = config
            .admin
            .console
            .then(|| Arc::new(console::Console { tls: config.admin.tls.is_some(), ..Default::default() }));
        let admin_state = Arc::new(AdminState {
            creds: creds.clone(),
            log,
            token_digest,
            users: Arc::new(config.admin.users.clone()),
            metrics: Some(metrics.clone()),
            live: live.clone(),
            tokens,
            connect,
            public_base_url: config.webhooks.as_ref().map(|w| w.public_base_url.clone()),
            discover_routes: config.verification.discover_routes,
        });
        let mut tasks = Vec::new();
        for l in listeners {
            tracing::info!(listener = l.name, addr = %l.bound.describe(), "listening");
            let sd = shutdown.clone();
            let limits = budget.limits(l.name, &config, base);
            if let ("webhooks", Some(w)) = (l.name, &webhooks) {
                let w = w.clone();
                tasks.push(tokio::spawn(listen::serve(l.name, l.bound, l.tls, limits, sd, move |peer| {
                    let w = w.clone();
                    hyper::service::service_fn(move |req| Box::pin(webhook::handle(w.clone(), peer.clone(), req)))
                })));
                continue;
            }
            match (l.name, &proxy) {
                ("app" | "app-tls" | "app-tcp", Some(p)) => {
                    let p = p.clone();
                    tasks.push(tokio::spawn(listen::serve(l.name, l.bound, l.tls, limits, sd, move |peer| {
                        let p = p.clone();
                        // Boxed: hyper keeps one in-flight slot per connection sized for the
                        // service future, so an idle connection costs a pointer, not the
                        // whole proxy state machine (RSS with many idle connections).
                        hyper::service::service_fn(move |req| Box::pin(proxy::handle(p.clone(), peer.clone(), req)))
                    })));
                }
                ("admin" | "admin-tcp", _) => {
                    let st = admin_state.clone();
                    // The console shares admin TCP: its paths go to it, the rest to the API.
                    let con = (l.name == "admin-tcp").then(|| console.clone()).flatten();
                    tasks.push(tokio::spawn(listen::serve(l.name, l.bound, l.tls, limits, sd, move |peer| {
                        let (st, con) = (st.clone(), con.clone());
                        hyper::service::service_fn(move |req| {
                            let (st, con, peer) = (st.clone(), con.clone(), peer.clone());
                            async move {
                                match (&con, &peer) {
                                    (Some(c), listen::Peer::Tcp { addr, .. })
                                        if console::is_console(req.uri().path()) =>
                                    {
                                        Ok(console::handle(&st, c, addr.ip(), req).await)
                                    }
                                    _ => admin::handle(st, peer, req).await,
                                }
                            }
                        })
                    })));
                }
                _ => {
                    let r = readiness.clone();
                    let m = metrics.clone();
                    tasks.push(tokio::spawn(listen::serve(l.name, l.bound, l.tls, limits, sd, move |_peer| {
                        let (r, m) = (r.clone(), m.clone());
                        hyper::service::service_fn(move |req| ops::handle(r.clone(), m.clone(), req))
                    })));
                }
            }
        }
        readiness.listeners_bound.store(true, Ordering::SeqCst);
        tasks.push(tokio::spawn(creds.clone().watch_kms(shutdown.clone())));
        tasks.push(tokio::spawn(creds.clone().expire_keys(shutdown.clone())));
        if access.enabled() {
            tasks.push(tokio::spawn(flush_loop(access.clone(), shutdown.clone())));
        }
        // Requests waiting for audit entries (audit tail --follow) answer at shutdown.
        tasks.push(tokio::spawn({
            let (creds, mut sd) = (creds.clone(), shutdown.clone());
            async move {
                sd.wait().await;
                creds.end_audit_waits();
            }
        }));
        crate::shutdown::notify_systemd("READY=1");
        if !config.verification.interval.is_zero() {
            tasks.push(tokio::spawn(live.clone().reverify_loop(
                config.verification.interval,
                config.verification.concurrency,
                config.verification.discover_routes,
                shutdown.clone(),
            )));
        }
        tasks.push(tokio::spawn(purge_loop(creds.clone(), config.store.deleted_retention, shutdown.clone())));
        if !config.telemetry.audit_checkpoint_interval.is_zero() {
            let every = config.telemetry.audit_checkpoint_interval;
            tasks.push(tokio::spawn(checkpoint_loop(creds.clone(), every, shutdown.clone())));
        }
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "ready");

        let mut sd = shutdown;
        sd.wait().await;
        readiness.draining.store(true, Ordering::SeqCst);
        crate::shutdown::notify_systemd("STOPPING=1");
        tracing::info!("shutting down: no new connections; draining in-flight requests");
        for t in tasks {
            let _ = t.await;
        }
        // Records of requests that finished while draining.
        access.flush();
        tracing::info!("stopped");
        Ok(())
    }
}

/// Flushes the access log's buffer once a second (and [`App::run`] once more after the drain).
async fn flush_loop(access: Arc<AccessLog>, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => access.flush(),
        }
    }
}

/// Records a signed checkpoint of the audit head every `every` (skipped while nothing new
/// was committed) and logs it, so that the log and the audit stream carry it off the host.
async fn checkpoint_loop(creds: Arc<Credentials>, every: Duration, mut shutdown: Shutdown) {
    let mut last = None;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match creds.record_checkpoint(last).await {
            Ok(Some(cp)) => {
                last = Some(cp.seq);
                let json = serde_json::to_string(&cp).unwrap_or_default();
                tracing::info!(target: "keyward::audit", seq = cp.seq, checkpoint = %json, "audit checkpoint");
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not record an audit checkpoint; will retry"),
        }
    }
}

/// Purges expired soft-deleted credentials, at a quarter of the retention (between 1 s
/// and 10 min) so nothing outlives its retention by much.
async fn purge_loop(creds: Arc<Credentials>, retention: Duration, mut shutdown: Shutdown) {
    let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        if let Some(pg) = creds.store().as_pg() {
            if let Err(e) = pg.replay_prune().await {
                tracing::debug!(error = %e, "could not prune expired replay keys");
            }
        }
        match creds.purge_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "purge pass done"),
            Err(e) => tracing::warn!(error = %e, "purge pass failed; will retry"),
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Applies a reloaded configuration: providers (and their base URLs and rate limits),
/// client policy and log level change in place; connections stay up. Changes to
/// settings that need a restart are logged and ignored.
#[derive(Debug)]
pub(crate) struct Reloader {
    creds: Arc<Credentials>,
    proxy: Option<Arc<ProxyState>>,
    log: LogHandle,
    access: Arc<AccessLog>,
    current: std::sync::Mutex<Config>,
}

impl Reloader {
    /// Applies `new`; returns the settings that changed but need a restart.
    pub(crate) fn apply(&self, new: Config) -> Vec<&'static str> {
        let Ok(mut cur) = self.current.lock() else { return vec![] };
        let restart = cur.restart_needed(&new);
        self.creds.set_providers(Providers::from_config(&new.providers));
        if let (Some(p), Some(app)) = (&self.proxy, &new.app) {
            p.set_policy(Policy::new(app.clients.clone()));
        }
        if let Err(e) = self.log.set_level(&new.log.level) {
            tracing::warn!(error = %e, "log level not changed");
        }
        *cur = new;
        restart
    }
}

/// Runs the daemon until SIGTERM/SIGINT: build, serve, drain.
pub async fn serve(config: Config, env: &dyn Env, log: LogHandle) -> Result<(), StartError> {
    // Handlers first: a SIGTERM right after "ready" must drain, not kill.
    let mut signals = match crate::shutdown::Signals::new() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for signals; shutting down");
            None
        }
    };
    let source = config.source.clone();
    let key_var = match &config.master_key.source {
        crate::vault::KeySource::Env(v) => Some(v.clone()),
        _ => None,
    };
    let app = App::build(config, env, log).await?;
    if let Some(v) = key_var {
        // The key is in the keyring now; the environment must not keep a copy.
        let wiped = crate::hardening::scrub_env(&v);
        tracing::info!(variable = %v, wiped, "master key variable removed from the environment");
    }
    let reloader = app.reloader();
    let (trigger, shutdown) = crate::shutdown::channel();
    let run = tokio::spawn(app.run(shutdown));
    loop {
        let event = match signals.as_mut() {
            Some(s) => Ok(s.next().await),
            None => Err("no signal handlers"),
        };
        match event {
            Ok(crate::shutdown::SignalEvent::Terminate) => {
                tracing::info!("termination signal received");
                trigger.fire();
                break;
            }
            Ok(crate::shutdown::SignalEvent::Reload) => {
                crate::shutdown::notify_systemd("RELOADING=1");
                // Whatever the new file says: logrotate sends SIGHUP after moving the file.
                reloader.access.reopen();
                match Config::load(&source, env) {
                    Ok(new) => {
                        let restart = reloader.apply(new);
                        tracing::info!("configuration reloaded (providers, client policy, rate limits, log level)");
                        if !restart.is_empty() {
                            tracing::warn!(settings = %restart.join(", "), "these settings changed but only take effect after a restart");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: the new configuration is invalid; keeping the running one")
                    }
                }
                crate::shutdown::notify_systemd("READY=1");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for signals; shutting down");
                trigger.fire();
                break;
            }
        }
    }
    match run.await {
        Ok(r) => r,
        Err(e) => Err(StartError::Crashed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::SslMode;

    fn mode(url: &str) -> Result<SslMode, String> {
        let mut c: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
        require_tls_off_host(&mut c, url).map_err(|e| e.to_string())?;
        Ok(c.get_ssl_mode())
    }

    #[test]
    fn a_remote_postgres_url_without_sslmode_requires_tls_and_prefer_is_refused() {
        assert_eq!(mode("postgres://kw@db.example.com/kw"), Ok(SslMode::Require), "downgradable default");
        assert_eq!(mode("postgres://kw@10.0.0.5:5432/kw"), Ok(SslMode::Require));
        assert!(mode("postgres://kw@db.example.com/kw?sslmode=prefer").unwrap_err().contains("sslmode=require"));
        assert_eq!(mode("postgres://kw@db.example.com/kw?sslmode=disable"), Ok(SslMode::Disable), "an explicit choice");
        assert_eq!(mode("postgres://kw@127.0.0.1/kw"), Ok(SslMode::Prefer), "loopback keeps the default");
        assert_eq!(mode("postgres://kw@localhost/kw?sslmode=disable"), Ok(SslMode::Disable));
        assert_eq!(mode("host=/run/postgresql user=kw dbname=kw"), Ok(SslMode::Prefer), "a Unix socket");
    }
}
