//! Live credential checks and route discovery, through the same injection path as app
//! traffic (provider rules + the proxy's upstream client).
//!
//! A check is one cheap authenticated read: Twilio account fetch, Vapi assistant list,
//! Resend domains, ElevenLabs user, Google refresh + calendarList, a generic provider's
//! `verify_path`. 401/403 means invalid credentials (status `revoked`); 5xx and timeouts
//! mean the provider is unavailable (status unchanged). After a successful check keyward
//! lists the tenant's assistants, phone numbers and agents and registers their routes,
//! refusing (and reporting) ids another tenant already owns. A background task re-checks
//! every credential at a jittered interval with bounded concurrency.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Serialize;

use crate::creds::{CredError, Credential, Credentials, StatusObject};
use crate::http::{BoxError, Upstream};
use crate::oauth::{CheckTokenError, TokenError, TokenManager};
use crate::shutdown::Shutdown;
use keyward_core::ids::{RouteId, RouteKind, TenantId};
use keyward_core::providers::ProviderDef;
use keyward_core::secret::Secret;
use keyward_store::CredStatus;

/// Why a stored credential could not be checked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LiveError {
    /// The provider is not configured.
    #[error("unknown provider {0:?}")]
    UnknownProvider(String),
    /// The credential cannot be read.
    #[error(transparent)]
    Cred(#[from] CredError),
}

/// What a failed token call says about the credential.
fn token_verdict(e: &TokenError) -> Verdict {
    match e {
        TokenError::Revoked(m) => Verdict::Invalid(format!("the grant was refused: {m}")),
        other => Verdict::Unavailable(format!("token refresh failed: {other:?}").chars().take(300).collect()),
    }
}

/// The verdict of one live check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "detail", rename_all = "snake_case")]
pub(crate) enum Verdict {
    /// The provider accepted the credential.
    Valid,
    /// The provider refused it (401/403, or a dead refresh token).
    Invalid(String),
    /// The provider could not be asked (5xx, timeout, network).
    Unavailable(String),
}

/// Routes registered (or refused) by discovery.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Discovery {
    /// `kind/id` now routed to the tenant.
    pub registered: Vec<String>,
    /// `kind/id` owned by another tenant: left alone.
    pub conflicts: Vec<String>,
    /// What could not be listed.
    pub errors: Vec<String>,
    /// Listing stopped at the page bound.
    pub truncated: bool,
}

/// Most pages followed per listing (a provider that pages forever is cut off here).
const MAX_PAGES: usize = 10;
/// Largest listing page body read.
const MAX_PAGE_BYTES: usize = 4 << 20;

/// Live checks, discovery and periodic re-verification.
pub(crate) struct Live {
    creds: Arc<Credentials>,
    upstream: Upstream,
    tokens: Arc<TokenManager>,
    /// Checks of stored credentials, and those that were not `valid`.
    checks: std::sync::atomic::AtomicU64,
    check_failures: std::sync::atomic::AtomicU64,
}

impl crate::metrics::DerivedSource for Live {
    fn values(&self) -> Vec<(&'static str, &'static str, bool, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        vec![
            (
                "keyward_credential_checks",
                "Live checks of stored credentials (cred verify, re-verification)",
                true,
                self.checks.load(Relaxed),
            ),
            (
                "keyward_credential_check_failures",
                "Live checks that found a credential invalid or could not reach its provider",
                true,
                self.check_failures.load(Relaxed),
            ),
        ]
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl Live {
    /// Joins the credential service, the upstream client and the token manager.
    pub(crate) fn new(creds: Arc<Credentials>, upstream: Upstream, tokens: Arc<TokenManager>) -> Self {
        Live { creds, upstream, tokens, checks: Default::default(), check_failures: Default::default() }
    }

    /// One authenticated GET through the provider's injection rules.
    async fn get(
        &self,
        def: &ProviderDef,
        cred: &Credential,
        path_and_query: &str,
        token: Option<&Secret>,
    ) -> Result<Answer, String> {
        let base = def.base_url(Some(cred));
        let host = base.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = base.port_or_known_default().unwrap_or(443);
        if !def.allows(cred, &host, port) {
            return Err(format!("{host}:{port} is not on the provider's list"));
        }
        let (path, query) = path_and_query.split_once('?').map_or((path_and_query, None), |(p, q)| (p, Some(q)));
        let inj = def.inject(cred, path, token).map_err(|e| e.to_string())?;
        let path = inj.path.clone().unwrap_or_else(|| path.to_string());
        let mut q = query.unwrap_or("").to_string();
        if let Some((n, v)) = &inj.query {
            if !q.is_empty() {
                q.push('&');
            }
            q.push_str(&url::form_urlencoded::Serializer::new(String::new()).append_pair(n, v).finish());
        }
        let prefix = base.path().trim_end_matches('/');
        let uri = format!(
            "{}://{}{prefix}{path}{}",
            base.scheme(),
            base.authority(),
            if q.is_empty() { String::new() } else { format!("?{q}") }
        );
        let mut req =
            Request::new(Full::new(Bytes::new()).map_err(|never| -> BoxError { match never {} }).boxed_unsync());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = uri.parse().map_err(|_| "the check URL is invalid".to_string())?;
        req.headers_mut().insert(http::header::ACCEPT, http::HeaderValue::from_static("application/json"));
        for (n, v) in inj.headers {
            req.headers_mut().insert(n, v);
        }
        let resp = self.upstream.send(req, false).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body =
            Limited::new(resp.into_body(), MAX_PAGE_BYTES).collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        Ok(Answer { status, body })
    }

    /// Checks a credential that is not stored yet against its provider. An OAuth
    /// credential's refresh happens here, and what it rotates is written into `cred`, so
    /// the grant that gets stored is the live one.
    pub(crate) async fn check(&self, def: &ProviderDef, cred: &mut Credential) -> Verdict {
        let token = match def.oauth() {
            Some(spec) => match self.tokens.refresh_with(spec, cred).await {
                Ok(g) => {
                    cred.absorb(g.refresh_token, g.instance_url.filter(|_| spec.instance_url));
                    Some(g.access_token)
                }
                Err(e) => return token_verdict(&e),
            },
            None => None,
        };
        self.check_with(def, cred, token.as_ref()).await
    }

    /// The check's GET, with the access token an OAuth provider needs.
    async fn check_with(&self, def: &ProviderDef, cred: &Credential, token: Option<&Secret>) -> Verdict {
        let Some(path) = def.rules().check_path(cred) else {
            return Verdict::Unavailable(format!("provider {} has no verify_path configured", def.name));
        };
        match self.get(def, cred, &path, token).await {
            Err(e) => Verdict::Unavailable(e),
            Ok(a) if a.status.is_success() => Verdict::Valid,
            Ok(a) if def.rules().check_passes_anyway(a.status.as_u16(), &a.body) => Verdict::Valid,
            Ok(a) if a.status == StatusCode::UNAUTHORIZED || a.status == StatusCode::FORBIDDEN => {
                Verdict::Invalid(format!("invalid credentials (HTTP {})", a.status.as_u16()))
            }
            Ok(a) if a.status.is_server_error() || a.status == StatusCode::TOO_MANY_REQUESTS => {
                Verdict::Unavailable(format!("provider unavailable (HTTP {})", a.status.as_u16()))
            }
            Ok(a) => Verdict::Invalid(format!("unexpected answer (HTTP {})", a.status.as_u16())),
        }
    }

    /// A stored credential's check: OAuth ones refresh through the token manager's locks.
    async fn check_stored(
        &self,
        def: &ProviderDef,
        cred: Arc<Credential>,
    ) -> Result<(Verdict, Arc<Credential>), LiveError> {
        if def.oauth().is_none() {
            let v = self.check_with(def, &cred, None).await;
            return Ok((v, cred));
        }
        match self.tokens.fresh_for_check(&cred.tenant, def.name.as_str()).await {
            Ok((token, cred)) => Ok((self.check_with(def, &cred, Some(&token)).await, cred)),
            Err(CheckTokenError::Token(e)) => Ok((token_verdict(&e), cred)),
            Err(CheckTokenError::Cred(e)) => Err(e.into()),
        }
    }

    /// Checks a stored credential and records the outcome (`last_verified_at`,
    /// `last_error`, status). A valid credential then gets its routes discovered.
    pub(crate) async fn verify_stored(
        &self,
        actor: &str,
        tenant: &TenantId,
        provider: &str,
        discover: bool,
    ) -> Result<(StatusObject, Verdict, Option<Discovery>), LiveError> {
        let providers = self.creds.providers();
        let def = providers.get(provider).cloned().ok_or_else(|| LiveError::UnknownProvider(provider.to_string()))?;
        let cred = self.creds.resolve_any(tenant, provider).await?;
        let (verdict, cred) = self.check_stored(&def, cred).await?;
        self.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if verdict != Verdict::Valid {
            self.check_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let status = match &verdict {
            Verdict::Valid => {
                self.creds
                    .record_check(
                        actor,
                        tenant,
                        provider,
                        true,
                        None,
                        (cred.status == CredStatus::Revoked).then_some(CredStatus::Active),
                    )
                    .await?
            }
            Verdict::Invalid(m) => {
                self.creds
                    .record_check(actor, tenant, provider, false, Some(m.clone()), Some(CredStatus::Revoked))
                    .await?
            }
            Verdict::Unavailable(m) => {
                self.creds.record_check(actor, tenant, provider, false, Some(m.clone()), None).await?
            }
        };
        if def.uses_access_token() {
            self.tokens.invalidate(tenant, provider).await;
        }
        let discovery = if discover && verdict == Verdict::Valid {
            Some(self.discover(actor, &def, &cred, true).await)
        } else {
            None
        };
        Ok((status, verdict, discovery))
    }

    /// Lists the tenant's ids at the provider and registers their routes. Only ids the
    /// provider confirmed for this credential are registered: listed ones, and the ones the
    /// credential names itself (a Twilio Account SID) only when a live check passed
    /// (`verified`) or a listing under them answered. A route held by another tenant is
    /// left alone unless that tenant's credential never passed a live check: a verified
    /// owner wins over an unverified claim.
    pub(crate) async fn discover(
        &self,
        actor: &str,
        def: &ProviderDef,
        cred: &Credential,
        verified: bool,
    ) -> Discovery {
        let mut d = Discovery::default();
        let (claimed, listings) = def.rules().discovery(cred);
        let mut found = Vec::new();
        let mut answered = false;
        for listing in listings {
            let mut next = Some(listing.first.clone());
            let mut pages = 0;
            while let Some(path) = next.take() {
                pages += 1;
                if pages > MAX_PAGES {
                    d.truncated = true;
                    break;
                }
                match self.get(def, cred, &path, None).await {
                    Ok(a) if a.status.is_success() => match (listing.read)(&a.body) {
                        Ok(page) => {
                            answered = true;
                            found.extend(page.found);
                            next = page.next;
                        }
                        Err(e) => d.errors.push(format!("{}: {e}", listing.label)),
                    },
                    Ok(a) => d.errors.push(format!("{}: HTTP {}", listing.label, a.status.as_u16())),
                    Err(e) => d.errors.push(format!("{}: {e}", listing.label)),
                }
            }
        }
        if verified || answered {
            found.extend(claimed);
            if !verified {
                // The provider accepted the credential: record it, so that this tenant's
                // ownership of its routes is provable against later claims.
                let name = def.name.as_str();
                if let Err(e) = self.creds.record_check(actor, &cred.tenant, name, true, None, None).await {
                    tracing::warn!(tenant = %cred.tenant, provider = %name, error = %e, "route discovery: could not record the check");
                }
            }
        } else if !claimed.is_empty() {
            d.errors.push(format!(
                "{} id(s) named by the credential not registered: the provider did not confirm the credential",
                claimed.len()
            ));
        }
        for (kind, id) in found {
            let (Ok(k), Ok(i)) = (RouteKind::parse(kind), RouteId::parse(&id)) else {
                d.errors.push(format!("{kind}: an id keyward cannot route ({} chars)", id.len()));
                continue;
            };
            let route = format!("{kind}/{id}");
            match self.creds.put_route(actor, &k, &i, &cred.tenant, true).await {
                Ok(()) => d.registered.push(route),
                Err(CredError::Store(keyward_store::StoreError::RouteTaken { owner, .. })) => {
                    if self.owner_is_verified(&owner, def).await {
                        tracing::warn!(tenant = %cred.tenant, route = %route, owner = %owner, "route discovery: id already routed to another tenant; left alone");
                        d.conflicts.push(route);
                    } else {
                        match self.creds.put_route(actor, &k, &i, &cred.tenant, false).await {
                            Ok(()) => {
                                tracing::warn!(tenant = %cred.tenant, route = %route, previous = %owner, "route discovery: id moved from a tenant whose credential never passed a live check");
                                d.registered.push(route);
                            }
                            Err(e) => d.errors.push(format!("{route}: {e}")),
                        }
                    }
                }
                Err(e) => d.errors.push(format!("{route}: {e}")),
            }
        }
        d
    }

    /// Whether `owner` holds an active credential for `def` that passed a live check.
    async fn owner_is_verified(&self, owner: &str, def: &ProviderDef) -> bool {
        let Ok(owner) = TenantId::parse(owner) else { return false };
        match self.creds.status(&owner, def.name.as_str()).await {
            // Opening it proves the status and last check were not edited in the store.
            Ok(s) if s.status == CredStatus::Active && s.last_verified_at.is_some() => {
                self.creds.resolve_any(&owner, def.name.as_str()).await.is_ok()
            }
            Ok(_) => false,
            // A store failure is not proof of anything: keep the route where it is.
            Err(CredError::Store(_)) => true,
            Err(_) => false,
        }
    }

    /// Re-checks every stored credential every `interval` (each jittered by up to a fifth),
    /// at most `concurrency` at a time, until shutdown.
    pub(crate) async fn reverify_loop(
        self: Arc<Self>,
        interval: Duration,
        concurrency: usize,
        discover: bool,
        mut shutdown: Shutdown,
    ) {
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        loop {
            let wait = interval.mul_f64(0.8 + rand_unit() * 0.4);
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let mut after: Option<TenantId> = None;
            let mut checked = 0u64;
            loop {
                let Ok(page) = self.creds.tenants(after.as_ref(), 500).await else { break };
                let Some(last) = page.last().cloned() else { break };
                after = Some(last);
                for tenant in page {
                    let Ok(list) = self.creds.list(&tenant, false).await else { continue };
                    for c in list.into_iter().filter(|c| c.status != CredStatus::Inactive) {
                        let Ok(permit) = sem.clone().acquire_owned().await else { return };
                        let me = self.clone();
                        let tenant = tenant.clone();
                        tokio::spawn(async move {
                            if let Err(e) = me.verify_stored("keyward", &tenant, c.provider.as_str(), discover).await {
                                tracing::warn!(tenant = %tenant, provider = %c.provider, error = %e, "periodic re-verification failed");
                            }
                            drop(permit);
                        });
                        checked += 1;
                        if shutdown.is_fired() {
                            return;
                        }
                    }
                }
            }
            tracing::info!(checked, "periodic re-verification pass started every credential");
        }
    }
}

fn rand_unit() -> f64 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    f64::from(u16::from_le_bytes(b)) / 65535.0
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
