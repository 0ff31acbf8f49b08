//! Google OAuth inside keyward (PROVIDERS.md §4.1): the token manager, which turns a
//! tenant's stored refresh token into short-lived access tokens held only in memory, and
//! the connect flow ([`connect`]) that obtains the refresh token in the first place.
//!
//! One refresh at a time per tenant: callers wait on the tenant's slot and reuse the
//! token the first caller obtained. Tokens are refreshed 225 s before expiry. Transient
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
use keyward_core::providers::outbound::literal_url;
use keyward_core::providers::FieldSource;
use keyward_core::secret::Secret;
use keyward_store::CredStatus;

/// Where the token manager talks to Google.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    /// `token_url`
    pub token: Url,
    /// `auth_url`
    pub auth: Url,
    /// `revoke_url`
    pub revoke: Url,
}

impl Endpoints {
    /// Google's endpoints, with config overrides.
    pub(crate) fn from_config(ov: Option<&keyward_core::providers::config::BuiltinOverride>) -> Endpoints {
        let pick = |o: Option<&Url>, d: &str| o.cloned().unwrap_or_else(|| literal_url(d));
        Endpoints {
            token: pick(ov.and_then(|o| o.token_url.as_ref()), "https://oauth2.googleapis.com/token"),
            auth: pick(ov.and_then(|o| o.auth_url.as_ref()), "https://accounts.google.com/o/oauth2/v2/auth"),
            revoke: pick(ov.and_then(|o| o.revoke_url.as_ref()), "https://oauth2.googleapis.com/revoke"),
        }
    }
}

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
    /// The Google credential cannot be used (missing, inactive, store down…).
    #[error(transparent)]
    Cred(#[from] CredError),
    /// Google refused the refresh token.
    #[error("Google refused the refresh token ({0}); reconnect the tenant")]
    Revoked(String),
    /// The token endpoint did not answer in time (after retries).
    #[error("the Google token endpoint did not answer")]
    Timeout,
    /// Any other failure of the token call.
    #[error("could not obtain a Google access token: {0}")]
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

#[derive(Deserialize)]
struct TokenBody {
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    error_subtype: Option<String>,
}

/// A token endpoint's successful answer.
pub(crate) struct Granted {
    pub(crate) access_token: Secret,
    pub(crate) expires_in: Duration,
    pub(crate) refresh_token: Option<Secret>,
}

impl std::fmt::Debug for Granted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Granted")
            .field("expires_in", &self.expires_in)
            .field("rotated", &self.refresh_token.is_some())
            .finish()
    }
}

/// Builds the control-plane HTTP client (rustls, webpki roots plus `upstream.extra_ca`).
pub(crate) fn http_client(cfg: &crate::http::UpstreamConfig) -> Result<reqwest::Client, crate::tls::TlsError> {
    let tls = crate::tls::client_config(cfg.extra_ca.as_deref(), &[b"http/1.1"])?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| crate::tls::TlsError::Rustls(e.to_string()))
}

/// One POST to a token endpoint, classified; `form` holds secrets and is wiped after use.
pub(crate) async fn token_call(
    http: &reqwest::Client,
    url: &Url,
    form: &[(&str, &str)],
) -> Result<Granted, TokenError> {
    let resp = match http.post(url.clone()).form(form).send().await {
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
    })
}

/// The Google token manager.
pub(crate) struct TokenManager {
    creds: Arc<Credentials>,
    http: reqwest::Client,
    endpoints: Endpoints,
    slots: Mutex<HashMap<String, Slot>>,
    refreshes: AtomicU64,
    /// First retry wait (1 s in production; tests shorten it).
    retry_base: Duration,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager").field("token_url", &self.endpoints.token.as_str()).finish()
    }
}

fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 1];
    let _ = getrandom::fill(&mut b);
    // ±10 %
    let factor = 0.9 + f64::from(b[0]) / 255.0 * 0.2;
    d.mul_f64(factor)
}

impl TokenManager {
    /// A token manager for these credentials and endpoints.
    pub(crate) fn new(creds: Arc<Credentials>, http: reqwest::Client, endpoints: Endpoints) -> Self {
        TokenManager {
            creds,
            http,
            endpoints,
            slots: Mutex::default(),
            refreshes: AtomicU64::new(0),
            retry_base: Duration::from_secs(1),
        }
    }

    /// Endpoints in use.
    pub(crate) fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The control-plane client.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Refresh calls made since start (metrics).
    pub(crate) fn refresh_count(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    fn slot(&self, tenant: &TenantId) -> Slot {
        let Ok(mut m) = self.slots.lock() else { return Slot::default() };
        if m.len() > 100_000 {
            m.retain(|_, s| Arc::strong_count(s) > 1);
        }
        m.entry(tenant.as_str().to_string()).or_default().clone()
    }

    /// Forgets a tenant's access token (after a 401 from Google, or a credential change).
    pub(crate) async fn invalidate(&self, tenant: &TenantId) {
        let slot = self.slot(tenant);
        let mut guard = slot.lock().await;
        // The fleet's shared copy is the same token: drop it too, or the next call would
        // pick it up again.
        if let Some(pg) = self.creds.store().as_pg() {
            if let Err(e) = pg.drop_shared_token(tenant.as_str(), "google").await {
                tracing::debug!(error = %e, "could not drop the fleet's shared access token");
            }
        }
        *guard = SlotState::default();
    }

    /// Calls the token endpoint with up to three attempts for transient failures.
    pub(crate) async fn refresh_with(&self, cred: &(dyn FieldSource + Sync)) -> Result<Granted, TokenError> {
        let client_id = cred.public_field("client_id").unwrap_or_default();
        let secret = cred.secret_field("client_secret").map(|s| s.expose()).unwrap_or_default();
        let refresh = cred
            .secret_field("refresh_token")
            .map(|s| s.expose())
            .ok_or_else(|| TokenError::Invalid("no refresh_token".into()))?;
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", client_id),
            ("client_secret", secret),
            ("refresh_token", refresh),
        ];
        let mut wait = self.retry_base;
        let mut attempt = 1;
        loop {
            self.refreshes.fetch_add(1, Ordering::Relaxed);
            match token_call(&self.http, &self.endpoints.token, &form).await {
                Err(TokenError::Transient(m) | TokenError::Timeout(m)) if attempt < 3 => {
                    tracing::info!(attempt, reason = %m, "Google token refresh failed; retrying");
                    tokio::time::sleep(jitter(wait)).await;
                    wait *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// A valid access token for the tenant, refreshing when due.
    pub(crate) async fn token(&self, tenant: &TenantId) -> Result<Secret, AccessTokenError> {
        let slot = self.slot(tenant);
        let mut guard = slot.lock().await;
        let cred = self.creds.resolve(tenant, "google").await?;
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
            Some(pg) => match pg.lock_refresh(tenant.as_str(), "google").await {
                Ok(l) => {
                    // The wait may have spanned another replica's refresh-token rotation.
                    cred = self.creds.resolve(tenant, "google").await?;
                    if let Some(shared) = self.shared_token(pg, tenant, cred.version).await {
                        let token = shared.token.clone();
                        *guard = SlotState { cached: Some(shared), failed: None };
                        return Ok(token);
                    }
                    Some(l)
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant, error = %e, "fleet refresh lock unavailable; refreshing locally");
                    None
                }
            },
            None => None,
        };
        match self.refresh_with(&*cred).await {
            Ok(g) => {
                let mut version = cred.version;
                if let Some(rotated) = g.refresh_token {
                    // Sealed and stored before the new access token is used.
                    let st = self
                        .creds
                        .set_secret_field("keyward", tenant, "google", "refresh_token", rotated, None)
                        .await?;
                    version = st.version;
                    tracing::info!(tenant = %tenant, "Google rotated the refresh token; stored the new one");
                }
                if let Some(pg) = store.as_pg() {
                    self.share_token(pg, tenant, version, &g.access_token, g.expires_in).await;
                }
                let cached =
                    Cached { token: g.access_token.clone(), expires_at: Instant::now() + g.expires_in, version };
                *guard = SlotState { cached: Some(cached), failed: None };
                Ok(g.access_token)
            }
            Err(e) => {
                let msg = format!("token refresh failed: {}", e.message());
                let revoked = matches!(e, TokenError::Revoked(_));
                let status = revoked.then_some(CredStatus::Revoked);
                let mut version = cred.version;
                match self.creds.record_check("keyward", tenant, "google", false, Some(msg.clone()), status).await {
                    Ok(st) => version = st.version,
                    Err(w) => {
                        tracing::warn!(tenant = %tenant, error = %w, "could not record the token refresh failure")
                    }
                }
                tracing::warn!(tenant = %tenant, reason = %e.message(), revoked, "Google token refresh failed");
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

    /// A still-valid token another replica stored (sealed) for this credential version.
    async fn shared_token(&self, pg: &keyward_store::PgStore, tenant: &TenantId, version: u64) -> Option<Cached> {
        let (sealed, expires_at, v) = pg.shared_token(tenant.as_str(), "google").await.ok()??;
        let left = Duration::from_millis(u64::try_from(expires_at - keyward_store::now_millis()).ok()?);
        if v != version || left <= EARLY_REFRESH {
            return None;
        }
        let plain = self.creds.open_aux(tenant, "google-access-token", version, &sealed).await.ok()?;
        let token = Secret::new(String::from_utf8(plain.to_vec()).ok()?);
        Some(Cached { token, expires_at: Instant::now() + left, version })
    }

    /// Shares a fresh token with the fleet (sealed with the tenant's data key).
    async fn share_token(
        &self,
        pg: &keyward_store::PgStore,
        tenant: &TenantId,
        version: u64,
        token: &Secret,
        expires_in: Duration,
    ) {
        let expires_at = keyward_store::now_millis() + i64::try_from(expires_in.as_millis()).unwrap_or(0);
        match self.creds.seal_aux(tenant, "google-access-token", version, token.expose().as_bytes()).await {
            Ok(sealed) => {
                if let Err(e) = pg.put_shared_token(tenant.as_str(), "google", &sealed, expires_at, version).await {
                    tracing::debug!(error = %e, "could not share the access token with the fleet");
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not seal the access token"),
        }
    }

    /// Best-effort revocation of a refresh token at Google (on credential deletion).
    pub(crate) async fn revoke(&self, token: &Secret) -> Result<(), String> {
        let resp = self
            .http
            .post(self.endpoints.revoke.clone())
            .form(&[("token", token.expose())])
            .send()
            .await
            .map_err(|_| "the revoke endpoint could not be reached".to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("the revoke endpoint answered HTTP {}", resp.status().as_u16()))
        }
    }
}

impl crate::metrics::DerivedSource for TokenManager {
    fn values(&self) -> Vec<(&'static str, &'static str, bool, u64)> {
        vec![(
            "keyward_google_token_refreshes",
            "Calls to Google's token endpoint to refresh access tokens",
            true,
            self.refresh_count(),
        )]
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
