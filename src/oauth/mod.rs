//! OAuth 2.0 inside keyward (PROVIDERS.md §4.1, PROVIDERS-2.md §9): the token manager,
//! which turns a tenant's stored grant (a refresh token, the client's own credentials, or
//! a service account's key) into short-lived access tokens held only in memory, and the
//! connect flow ([`connect`]) that obtains the refresh token in the first place. One
//! implementation for every OAuth provider: Google is the `google` preset of it.
//!
//! One refresh at a time per tenant and provider (in fleet mode, per fleet): callers wait
//! on the slot and reuse the token the first caller obtained, so a single-use refresh
//! token (Calendly) is never spent twice. Tokens are refreshed 225 s before expiry. Transient
//! failures (5xx, 408, 429, `server_error`…) are retried three times in all, waiting 1 s
//! then 2 s with ±10 % jitter; `invalid_grant` and friends revoke the credential. A rotated
//! refresh token is sealed and stored before the new access token is used. Token endpoint
//! calls use reqwest (control plane), never the proxy's data-plane client.

pub(crate) mod connect;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde::Deserialize;
use url::Url;
use zeroize::Zeroizing;

use crate::creds::{CredError, Credentials};
use keyward_core::ids::TenantId;
use keyward_core::providers::config::{ClientAuth, Grant, OAuth2Spec, Revoke};
use keyward_core::providers::FieldSource;
use keyward_core::secret::Secret;
use keyward_store::CredStatus;

/// Seconds before expiry at which a token is refreshed (google-auth's REFRESH_THRESHOLD).
const EARLY_REFRESH: Duration = Duration::from_secs(225);

struct Cached {
    token: Secret,
    expires_at: Instant,
    version: u64,
}

/// A refresh that failed, remembered briefly: the requests queued behind it, and those
/// arriving just after, get its answer instead of one more token call (and one more
/// audited record) each.
struct Failed {
    until: Instant,
    version: u64,
    error: TokenError,
}

/// How long a failed refresh answers for the tenant.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

#[derive(Default)]
struct SlotState {
    cached: Option<Cached>,
    failed: Option<Failed>,
}

type Slot = Arc<tokio::sync::Mutex<SlotState>>;

/// Why [`TokenManager::fresh_for_check`] has no token.
#[derive(Debug)]
pub(crate) enum CheckTokenError {
    /// The stored credential could not be read or updated.
    Cred(CredError),
    /// The token endpoint's answer.
    Token(TokenError),
}

impl From<CredError> for CheckTokenError {
    fn from(e: CredError) -> Self {
        CheckTokenError::Cred(e)
    }
}

/// What a token endpoint answered.
#[derive(Debug)]
pub(crate) enum TokenError {
    /// The grant is dead: the credential is revoked (`invalid_grant`, `invalid_client`, …).
    Revoked(String),
    /// Worth retrying, or retried already.
    Transient(String),
    /// Timed out (after retries).
    Timeout(String),
    /// A malformed answer.
    Invalid(String),
}

/// Why no access token could be had for a request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AccessTokenError {
    /// The credential cannot be used (missing, inactive, store down…).
    #[error(transparent)]
    Cred(#[from] CredError),
    /// The provider refused the grant.
    #[error("the token endpoint refused the grant ({0}); reconnect the tenant or replace the credential")]
    Revoked(String),
    /// The token endpoint did not answer in time (after retries).
    #[error("the token endpoint did not answer")]
    Timeout,
    /// Any other failure of the token call.
    #[error("could not obtain an access token: {0}")]
    Failed(String),
}

impl TokenError {
    /// What a request waiting for the token is told.
    fn answer(&self) -> AccessTokenError {
        match self {
            TokenError::Revoked(m) => AccessTokenError::Revoked(m.clone()),
            TokenError::Timeout(_) => AccessTokenError::Timeout,
            TokenError::Transient(m) | TokenError::Invalid(m) => AccessTokenError::Failed(m.clone()),
        }
    }

    fn message(&self) -> &str {
        match self {
            TokenError::Revoked(m) | TokenError::Transient(m) | TokenError::Timeout(m) | TokenError::Invalid(m) => m,
        }
    }
}

/// RFC 6749 §5.1's answer; HubSpot's newer endpoints spell it in camelCase (accepted
/// both ways, PROVIDERS-2.md §9), Salesforce adds `instance_url`.
#[derive(Deserialize)]
struct TokenBody {
    #[serde(alias = "accessToken")]
    access_token: Option<String>,
    #[serde(alias = "expiresIn")]
    expires_in: Option<serde_json::Value>,
    #[serde(alias = "refreshToken")]
    refresh_token: Option<String>,
    instance_url: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    error_subtype: Option<String>,
}

/// A token endpoint's successful answer.
pub(crate) struct Granted {
    pub(crate) access_token: Secret,
    pub(crate) expires_in: Duration,
    pub(crate) refresh_token: Option<Secret>,
    /// Salesforce: the org's API base URL.
    pub(crate) instance_url: Option<String>,
}

impl std::fmt::Debug for Granted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Granted")
            .field("expires_in", &self.expires_in)
            .field("rotated", &self.refresh_token.is_some())
            .field("instance_url", &self.instance_url)
            .finish()
    }
}

/// Builds the control-plane HTTP client (rustls, webpki roots plus `upstream.extra_ca`).
pub(crate) fn http_client(cfg: &crate::http::UpstreamConfig) -> Result<reqwest::Client, crate::tls::TlsError> {
    crate::tls::control_client(cfg.extra_ca.as_deref(), cfg.connect_timeout, cfg.request_timeout)
}

/// How the client authenticates one token call.
pub(crate) struct Client<'a> {
    pub(crate) id: &'a str,
    pub(crate) secret: Option<&'a str>,
    pub(crate) auth: ClientAuth,
}

impl Client<'_> {
    /// The client's part of a token or revocation request: a Basic header, or
    /// `client_id` (and `client_secret`) in the form.
    fn apply<'f>(
        &'f self,
        req: reqwest::RequestBuilder,
        form: &mut Vec<(&'f str, &'f str)>,
    ) -> reqwest::RequestBuilder {
        match (self.auth, self.secret) {
            (ClientAuth::Basic, Some(secret)) => req.basic_auth(self.id, Some(secret)),
            (_, secret) => {
                form.push(("client_id", self.id));
                if let Some(s) = secret {
                    form.push(("client_secret", s));
                }
                req
            }
        }
    }
}

/// One POST to a token endpoint, classified; `form` holds secrets and is wiped after use.
pub(crate) async fn token_call(
    http: &reqwest::Client,
    url: &Url,
    client: Option<&Client<'_>>,
    form: &[(&str, &str)],
) -> Result<Granted, TokenError> {
    let mut form = form.to_vec();
    let mut req = http.post(url.clone());
    if let Some(c) = client {
        req = c.apply(req, &mut form);
    }
    let resp = match req.form(&form).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Err(TokenError::Timeout("the token endpoint did not answer in time".into()))
        }
        Err(_) => return Err(TokenError::Transient("could not reach the token endpoint".into())),
    };
    let status = resp.status();
    let bytes = Zeroizing::new(
        resp.bytes()
            .await
            .map_err(|_| TokenError::Transient("the token endpoint's answer was cut off".into()))?
            .to_vec(),
    );
    classify(status, &bytes)
}

/// [`classify`], for `fuzz/`.
pub(crate) fn fuzz_classify(status: StatusCode, bytes: &[u8]) -> bool {
    classify(status, bytes).is_ok()
}

/// What a token endpoint's answer means (RFC 6749 §5.1, §5.2, and Google's retryable
/// codes): a grant, a dead credential, a failure worth retrying, or a malformed answer.
fn classify(status: StatusCode, bytes: &[u8]) -> Result<Granted, TokenError> {
    let body: Option<TokenBody> = serde_json::from_slice(bytes).ok();
    let err_code = body.as_ref().and_then(|b| b.error.clone()).unwrap_or_default();
    let described = |b: &Option<TokenBody>| {
        let b = b.as_ref();
        let mut s = format!("HTTP {}", status.as_u16());
        if let Some(e) = b.and_then(|b| b.error.as_deref()) {
            s.push_str(&format!(" {e}"));
        }
        if let Some(st) = b.and_then(|b| b.error_subtype.as_deref()) {
            s.push_str(&format!(" ({st})"));
        }
        if let Some(d) = b.and_then(|b| b.error_description.as_deref()) {
            s.push_str(&format!(": {}", d.chars().take(200).collect::<String>()));
        }
        s
    };
    if ["invalid_grant", "invalid_client", "unauthorized_client"].contains(&err_code.as_str()) {
        return Err(TokenError::Revoked(described(&body)));
    }
    let retryable_code = ["internal_failure", "server_error", "temporarily_unavailable"].contains(&err_code.as_str());
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || retryable_code
    {
        return Err(TokenError::Transient(described(&body)));
    }
    if !status.is_success() {
        return Err(TokenError::Invalid(described(&body)));
    }
    let Some(mut b) = body else {
        return Err(TokenError::Invalid("the token endpoint answered 200 with a body that is not JSON".into()));
    };
    let access = b
        .access_token
        .take()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::Invalid("the token endpoint answered without an access_token".into()))?;
    // `expires_in` may be a number or a decimal string; absent means 3600 s (keyward choice).
    let secs = match &b.expires_in {
        None => 3600.0,
        Some(serde_json::Value::Number(n)) => n.as_f64().unwrap_or(3600.0),
        Some(serde_json::Value::String(s)) => {
            s.trim().parse::<f64>().map_err(|_| TokenError::Invalid("expires_in is not a number".into()))?
        }
        Some(_) => return Err(TokenError::Invalid("expires_in is not a number".into())),
    };
    if !(0.0..=864_000.0).contains(&secs) {
        return Err(TokenError::Invalid("expires_in is out of range".into()));
    }
    Ok(Granted {
        access_token: Secret::new(access),
        expires_in: Duration::from_secs_f64(secs),
        refresh_token: b.refresh_token.take().filter(|t| !t.is_empty()).map(Secret::new),
        instance_url: b.instance_url.take(),
    })
}

/// The token manager of every OAuth provider.
pub(crate) struct TokenManager {
    creds: Arc<Credentials>,
    http: reqwest::Client,
    slots: Mutex<HashMap<(String, String), Slot>>,
    refreshes: AtomicU64,
    /// Refreshes for requests that ended without a token (revoked grants included).
    failures: AtomicU64,
    /// First retry wait (1 s in production; tests shorten it).
    retry_base: Duration,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager").field("refreshes", &self.refresh_count()).finish()
    }
}

fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 1];
    let _ = getrandom::fill(&mut b);
    // ±10 %
    let factor = 0.9 + f64::from(b[0]) / 255.0 * 0.2;
    d.mul_f64(factor)
}

/// A provider's OAuth endpoint as a URL, `{directory}` filled from the credential.
pub(crate) fn endpoint(url: &str, cred: &dyn FieldSource) -> Result<Url, TokenError> {
    Url::parse(&OAuth2Spec::fill(url, cred.public_field("directory")))
        .map_err(|_| TokenError::Invalid(format!("{url} is not a URL with this credential's directory")))
}

/// The credential's scopes (a list field).
pub(crate) fn cred_scopes(cred: &crate::creds::Credential) -> Vec<String> {
    cred.public
        .get("scopes")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// The client authentication a credential gives for `spec`.
pub(crate) fn client<'c>(spec: &OAuth2Spec, cred: &'c dyn FieldSource) -> Client<'c> {
    Client {
        id: cred.public_field("client_id").unwrap_or_default(),
        secret: cred.secret_field("client_secret").map(Secret::expose),
        auth: spec.client_auth,
    }
}

impl TokenManager {
    /// A token manager for these credentials; each provider's endpoints come from its
    /// definition (`ProviderDef::oauth`).
    pub(crate) fn new(creds: Arc<Credentials>, http: reqwest::Client) -> Self {
        TokenManager {
            creds,
            http,
            slots: Mutex::default(),
            refreshes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retry_base: Duration::from_secs(1),
        }
    }

    /// The control-plane client.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Refresh calls made since start (metrics).
    pub(crate) fn refresh_count(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// How `provider` obtains tokens, if it does.
    pub(crate) fn spec(&self, provider: &str) -> Option<Arc<keyward_core::providers::ProviderDef>> {
        self.creds.providers().get(provider).filter(|d| d.oauth().is_some()).cloned()
    }

    fn slot(&self, tenant: &TenantId, provider: &str) -> Slot {
        let Ok(mut m) = self.slots.lock() else { return Slot::default() };
        if m.len() > 100_000 {
            m.retain(|_, s| Arc::strong_count(s) > 1);
        }
        m.entry((tenant.as_str().to_string(), provider.to_string())).or_default().clone()
    }

    /// Forgets a tenant's access token (after a 401 from the provider, or a credential change).
    pub(crate) async fn invalidate(&self, tenant: &TenantId, provider: &str) {
        let slot = self.slot(tenant, provider);
        let mut guard = slot.lock().await;
        // The fleet's shared copy is the same token: drop it too, or the next call would
        // pick it up again.
        if let Some(pg) = self.creds.store().as_pg() {
            if let Err(e) = pg.drop_shared_token(tenant.as_str(), provider).await {
                tracing::debug!(error = %e, "could not drop the fleet's shared access token");
            }
        }
        *guard = SlotState::default();
    }

    /// Calls the token endpoint for the credential's grant, with up to three attempts for
    /// transient failures.
    pub(crate) async fn refresh_with(
        &self,
        spec: &OAuth2Spec,
        cred: &crate::creds::Credential,
    ) -> Result<Granted, TokenError> {
        use tracing::Instrument;
        let span = crate::telemetry::trace_span!(
            "keyward.oauth.refresh",
            otel.kind = "client",
            keyward.tenant = %cred.tenant,
            keyward.provider = %cred.provider,
            otel.status_code = tracing::field::Empty,
        );
        let out = self.refresh_attempts(spec, cred).instrument(span.clone()).await;
        if out.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        out
    }

    async fn refresh_attempts(
        &self,
        spec: &OAuth2Spec,
        cred: &crate::creds::Credential,
    ) -> Result<Granted, TokenError> {
        let url = endpoint(&spec.token_url, cred)?;
        let scopes = cred_scopes(cred);
        let scope = spec.scopes(&scopes).join(" ");
        let mut form: Vec<(&str, &str)> = Vec::new();
        let assertion;
        let client = client(spec, cred);
        let mut with_client = true;
        match spec.grant {
            Grant::AuthorizationCode => {
                let refresh = cred
                    .secret_field("refresh_token")
                    .map(Secret::expose)
                    .ok_or_else(|| TokenError::Invalid("no refresh_token; run the connect flow".into()))?;
                form.extend([("grant_type", "refresh_token"), ("refresh_token", refresh)]);
                if spec.scope_on_refresh {
                    form.push(("scope", &scope));
                }
            }
            Grant::ClientCredentials if spec.account_credentials => {
                let account = cred.public_field("account_id").unwrap_or_default();
                form.extend([("grant_type", "account_credentials"), ("account_id", account)]);
            }
            Grant::ClientCredentials => {
                form.push(("grant_type", "client_credentials"));
                if !scope.is_empty() {
                    form.push(("scope", &scope));
                }
            }
            Grant::JwtBearer => {
                // Assertions go only to the configured endpoint: a credential naming
                // another token_uri is refused rather than followed.
                if let Some(t) = cred.public_field("token_uri").filter(|t| Url::parse(t).ok().as_ref() != Some(&url)) {
                    return Err(TokenError::Invalid(format!(
                        "the credential's token_uri {t} is not the configured token_url {url}; keyward sends assertions only there"
                    )));
                }
                // google-auth's audience: Google's token endpoint even when token_uri differs.
                let aud = if spec.preset == Some("google") {
                    "https://oauth2.googleapis.com/token".to_string()
                } else {
                    url.to_string()
                };
                let claims = keyward_core::providers::assertion_claims(
                    cred,
                    &spec.scopes(&scopes),
                    &aud,
                    keyward_core::time::now_secs(),
                );
                assertion = keyward_core::providers::assertion(cred, &claims)
                    .map_err(|e| TokenError::Invalid(e.to_string()))?;
                form.extend([
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", assertion.as_str()),
                ]);
                with_client = false;
            }
        }
        let mut wait = self.retry_base;
        let mut attempt = 1;
        loop {
            self.refreshes.fetch_add(1, Ordering::Relaxed);
            match token_call(&self.http, &url, with_client.then_some(&client), &form).await {
                Err(TokenError::Transient(m) | TokenError::Timeout(m)) if attempt < 3 => {
                    tracing::info!(attempt, reason = %m, "token refresh failed; retrying");
                    tokio::time::sleep(jitter(wait)).await;
                    wait *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// A valid access token for the tenant's `provider` credential, refreshing when due.
    pub(crate) async fn token(&self, tenant: &TenantId, provider: &str) -> Result<Secret, AccessTokenError> {
        let def = self
            .spec(provider)
            .ok_or_else(|| AccessTokenError::Failed(format!("{provider} is not an OAuth provider")))?;
        let spec =
            def.oauth().ok_or_else(|| AccessTokenError::Failed(format!("{provider} is not an OAuth provider")))?;
        let slot = self.slot(tenant, provider);
        let mut guard = slot.lock().await;
        let cred = self.creds.resolve(tenant, provider).await?;
        if let Some(c) = guard.cached.as_ref() {
            if c.version == cred.version && Instant::now() + EARLY_REFRESH < c.expires_at {
                return Ok(c.token.clone());
            }
        }
        // A new credential version (re-verified, reconnected, replaced) deserves a new try.
        if let Some(f) = guard.failed.as_ref().filter(|f| f.version == cred.version && Instant::now() < f.until) {
            return Err(f.error.answer());
        }
        // Fleet mode: one refresh per tenant for the whole fleet. Take the tenant's lock,
        // then use a token another replica obtained meanwhile, if any.
        let store = self.creds.store().clone();
        let mut cred = cred;
        let _fleet_lock = match store.as_pg() {
            Some(pg) => match pg.lock_refresh(tenant.as_str(), provider).await {
                Ok(l) => {
                    // The wait may have spanned another replica's refresh-token rotation.
                    cred = self.creds.resolve(tenant, provider).await?;
                    if let Some(shared) = self.shared_token(pg, tenant, provider, cred.version).await {
                        let token = shared.token.clone();
                        *guard = SlotState { cached: Some(shared), failed: None };
                        return Ok(token);
                    }
                    Some(l)
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant, provider, error = %e, "fleet refresh lock unavailable; refreshing locally");
                    None
                }
            },
            None => None,
        };
        match self.refresh_with(spec, &cred).await {
            Ok(mut g) => {
                let version = self.store_grant(tenant, provider, spec, &cred, &mut g).await?;
                if let Some(pg) = store.as_pg() {
                    self.share_token(pg, tenant, provider, version, &g.access_token, g.expires_in).await;
                }
                let cached =
                    Cached { token: g.access_token.clone(), expires_at: Instant::now() + g.expires_in, version };
                *guard = SlotState { cached: Some(cached), failed: None };
                Ok(g.access_token)
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let msg = format!("token refresh failed: {}", e.message());
                let revoked = matches!(e, TokenError::Revoked(_));
                let status = revoked.then_some(CredStatus::Revoked);
                let mut version = cred.version;
                match self.creds.record_check("keyward", tenant, provider, false, Some(msg.clone()), status).await {
                    Ok(st) => version = st.version,
                    Err(w) => {
                        tracing::warn!(tenant = %tenant, provider, error = %w, "could not record the token refresh failure")
                    }
                }
                tracing::warn!(tenant = %tenant, provider, reason = %e.message(), revoked, "token refresh failed");
                let answer = e.answer();
                // Keyed by the version the failure was recorded as, so only a later change
                // of the credential clears it early.
                *guard = SlotState {
                    cached: None,
                    failed: Some(Failed { until: Instant::now() + NEGATIVE_TTL, version, error: e }),
                };
                Err(answer)
            }
        }
    }

    /// Stores what a refresh rotated (a new refresh token, a moved `instance_url`) and
    /// returns the credential version the access token belongs to. Sealed and committed
    /// before the new access token is used: a single-use refresh token (Calendly) is the
    /// only copy of the grant now.
    async fn store_grant(
        &self,
        tenant: &TenantId,
        provider: &str,
        spec: &OAuth2Spec,
        cred: &crate::creds::Credential,
        g: &mut Granted,
    ) -> Result<u64, CredError> {
        let instance = g.instance_url.as_deref().filter(|_| spec.instance_url);
        let instance_changed = instance.is_some_and(|u| cred.public_field("instance_url") != Some(u));
        if g.refresh_token.is_none() && !instance_changed {
            return Ok(cred.version);
        }
        let st = self.creds.set_granted("keyward", tenant, provider, g.refresh_token.take(), instance, None).await?;
        tracing::info!(tenant = %tenant, provider, "the token endpoint rotated the grant; stored it");
        Ok(st.version)
    }

    /// A fresh access token for a live check of the stored credential, whatever its status
    /// (a check may re-activate a revoked one): refreshed under the same locks as
    /// [`TokenManager::token`], so a single-use refresh token is never spent twice, and
    /// its rotation stored first. Failures are the caller's to record.
    pub(crate) async fn fresh_for_check(
        &self,
        tenant: &TenantId,
        provider: &str,
    ) -> Result<(Secret, Arc<crate::creds::Credential>), CheckTokenError> {
        let def = self
            .spec(provider)
            .ok_or_else(|| CheckTokenError::Token(TokenError::Invalid("not an OAuth provider".into())))?;
        let spec =
            def.oauth().ok_or_else(|| CheckTokenError::Token(TokenError::Invalid("not an OAuth provider".into())))?;
        let slot = self.slot(tenant, provider);
        let mut guard = slot.lock().await;
        let _fleet_lock = match self.creds.store().as_pg() {
            Some(pg) => pg.lock_refresh(tenant.as_str(), provider).await.ok(),
            None => None,
        };
        let cred = self.creds.resolve_any(tenant, provider).await?;
        let mut g = self.refresh_with(spec, &cred).await.map_err(CheckTokenError::Token)?;
        let version = self.store_grant(tenant, provider, spec, &cred, &mut g).await?;
        *guard = SlotState::default();
        let cred = if version == cred.version { cred } else { self.creds.resolve_any(tenant, provider).await? };
        Ok((g.access_token, cred))
    }

    /// What a provider's shared access token is sealed as (AAD purpose).
    fn purpose(provider: &str) -> String {
        format!("{provider}-access-token")
    }

    /// A still-valid token another replica stored (sealed) for this credential version.
    async fn shared_token(
        &self,
        pg: &keyward_store::PgStore,
        tenant: &TenantId,
        provider: &str,
        version: u64,
    ) -> Option<Cached> {
        let (sealed, expires_at, v) = pg.shared_token(tenant.as_str(), provider).await.ok()??;
        let left = Duration::from_millis(u64::try_from(expires_at - keyward_store::now_millis()).ok()?);
        if v != version || left <= EARLY_REFRESH {
            return None;
        }
        let plain = self.creds.open_aux(tenant, &Self::purpose(provider), version, &sealed).await.ok()?;
        let token = Secret::new(String::from_utf8(plain.to_vec()).ok()?);
        Some(Cached { token, expires_at: Instant::now() + left, version })
    }

    /// Shares a fresh token with the fleet (sealed with the tenant's data key).
    async fn share_token(
        &self,
        pg: &keyward_store::PgStore,
        tenant: &TenantId,
        provider: &str,
        version: u64,
        token: &Secret,
        expires_in: Duration,
    ) {
        let expires_at = keyward_store::now_millis() + i64::try_from(expires_in.as_millis()).unwrap_or(0);
        match self.creds.seal_aux(tenant, &Self::purpose(provider), version, token.expose().as_bytes()).await {
            Ok(sealed) => {
                if let Err(e) = pg.put_shared_token(tenant.as_str(), provider, &sealed, expires_at, version).await {
                    tracing::debug!(error = %e, "could not share the access token with the fleet");
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not seal the access token"),
        }
    }

    /// Best-effort revocation of a refresh token at the provider (on credential deletion),
    /// in the provider's own form; `Ok(false)` when it has no revocation endpoint.
    pub(crate) async fn revoke(
        &self,
        spec: &OAuth2Spec,
        cred: &crate::creds::Credential,
        token: &Secret,
    ) -> Result<bool, String> {
        let Some(url) = spec.revoke_url.as_deref().filter(|_| spec.revoke != Revoke::None) else { return Ok(false) };
        let url = endpoint(url, cred).map_err(|e| e.message().to_string())?;
        let client = client(spec, cred);
        let mut form: Vec<(&str, &str)> = vec![("token", token.expose())];
        let req = match spec.revoke {
            Revoke::DeletePath => {
                let mut u = url.clone();
                u.path_segments_mut()
                    .map_err(|()| "the revoke URL cannot take a path".to_string())?
                    .push(token.expose());
                form.clear();
                self.http.delete(u)
            }
            Revoke::FormWithClient => client.apply(self.http.post(url), &mut form),
            Revoke::Form | Revoke::None => self.http.post(url),
        };
        let req = if form.is_empty() { req } else { req.form(&form) };
        let resp = req.send().await.map_err(|_| "the revoke endpoint could not be reached".to_string())?;
        if resp.status().is_success() {
            Ok(true)
        } else {
            Err(format!("the revoke endpoint answered HTTP {}", resp.status().as_u16()))
        }
    }
}

impl crate::metrics::DerivedSource for TokenManager {
    fn values(&self) -> Vec<(&'static str, &'static str, bool, u64)> {
        vec![
            (
                "keyward_google_token_refreshes",
                "Calls to OAuth token endpoints (every OAuth provider; the name predates the others)",
                true,
                self.refresh_count(),
            ),
            (
                "keyward_oauth_refresh_failures",
                "OAuth token refreshes that left requests without a token (revoked grants included)",
                true,
                self.failures.load(Ordering::Relaxed),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(status: u16, body: &str) -> Result<Granted, TokenError> {
        classify(StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT), body.as_bytes())
    }

    #[test]
    fn a_grant_reads_its_token_lifetime_and_rotation() {
        let g = class(200, r#"{"access_token":"ya29.a","expires_in":"3599","refresh_token":"1//new"}"#).unwrap();
        assert_eq!((g.access_token.expose(), g.expires_in), ("ya29.a", Duration::from_secs(3599)));
        assert_eq!(g.refresh_token.as_ref().map(Secret::expose), Some("1//new"));
        let g = class(200, r#"{"access_token":"ya29.b","refresh_token":""}"#).unwrap();
        assert_eq!((g.expires_in, g.refresh_token.is_none()), (Duration::from_secs(3600), true), "defaults");
    }

    #[test]
    fn dead_grants_transient_failures_and_garbage_are_told_apart() {
        let kind = |r: Result<Granted, TokenError>| match r {
            Ok(_) => "granted",
            Err(TokenError::Revoked(_)) => "revoked",
            Err(TokenError::Transient(_)) => "transient",
            Err(TokenError::Timeout(_)) => "timeout",
            Err(TokenError::Invalid(_)) => "invalid",
        };
        for (status, body, want) in [
            (400, r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#, "revoked"),
            (401, r#"{"error":"invalid_client"}"#, "revoked"),
            (400, r#"{"error":"unauthorized_client"}"#, "revoked"),
            (503, "", "transient"),
            (429, "{}", "transient"),
            (408, "", "transient"),
            (400, r#"{"error":"temporarily_unavailable"}"#, "transient"),
            (400, r#"{"error":"invalid_request"}"#, "invalid"),
            (200, "<html>surprise</html>", "invalid"),
            (200, r#"{"access_token":""}"#, "invalid"),
            (200, r#"{"access_token":"a","expires_in":"soon"}"#, "invalid"),
            (200, r#"{"access_token":"a","expires_in":-5}"#, "invalid"),
            (200, r#"{"access_token":"a","expires_in":[1]}"#, "invalid"),
        ] {
            assert_eq!(kind(class(status, body)), want, "{status} {body}");
        }
    }

    #[test]
    fn a_refusal_is_described_without_the_request() {
        let Err(TokenError::Revoked(m)) =
            class(400, r#"{"error":"invalid_grant","error_subtype":"invalid_rapt","error_description":"reauth"}"#)
        else {
            panic!("not revoked")
        };
        assert_eq!(m, "HTTP 400 invalid_grant (invalid_rapt): reauth");
    }

    #[test]
    fn retry_waits_jitter_within_a_tenth() {
        for _ in 0..200 {
            let j = jitter(Duration::from_secs(10));
            assert!(j >= Duration::from_secs(9) && j <= Duration::from_secs(11), "{j:?}");
        }
    }
}
