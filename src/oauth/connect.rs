//! The OAuth 2.0 connect flow (RFC 6749 §4.1; Google's
//! https://developers.google.com/identity/protocols/oauth2/web-server generalised to every
//! `authorization_code` provider): `start` gives the operator an authorization URL carrying
//! a single-use `state` bound to the tenant and provider (10 minutes) and, where the
//! provider takes one, a PKCE S256 challenge; the callback on the webhook listener
//! (`/oauth/{provider}/callback`) exchanges the code and seals the refresh token (and
//! Salesforce's `instance_url`) into the tenant's credential.
//!
//! Pending states live in memory (bounded) on a single daemon; in fleet mode they live in
//! PostgreSQL (state hashed, PKCE verifier sealed with the tenant's data key) so the
//! callback may reach any sidecar, and each state is still usable once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use url::Url;

use super::{token_call, TokenError, TokenManager};
use crate::creds::{CredError, Credentials};
use keyward_core::ids::TenantId;
use keyward_core::providers::config::Grant;
use keyward_core::providers::FieldSource;
use keyward_core::secret::Secret;
use keyward_store::{CredStatus, StoreError};

const STATE_TTL: Duration = Duration::from_secs(600);
const MAX_PENDING: usize = 10_000;

#[derive(Debug)]
struct Pending {
    tenant: TenantId,
    provider: String,
    verifier: Secret,
    deadline: Instant,
}

/// What a flow's verifier is sealed as (AAD purpose): bound to the provider, so a state
/// started for one provider cannot complete another's callback.
fn verifier_purpose(provider: &str) -> String {
    format!("{provider}-connect-verifier")
}

fn state_hash(state: &str) -> Vec<u8> {
    Sha256::digest(state.as_bytes()).to_vec()
}

/// Why a connect flow cannot start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The tenant's credential cannot be read.
    #[error(transparent)]
    Cred(#[from] CredError),
    /// The credential lacks the OAuth client id.
    #[error("the credential has no client_id")]
    NoClientId,
    /// The provider has no connect flow (not OAuth, or not the authorization_code grant).
    #[error("{0}")]
    NotConnectable(String),
    /// `MAX_PENDING` flows are waiting for their callback.
    #[error("too many connect flows are pending; finish or wait for them to expire")]
    TooMany,
    /// The operating system's random number generator failed.
    #[error("the random number generator failed")]
    Random,
}

impl From<StoreError> for ConnectError {
    fn from(e: StoreError) -> Self {
        ConnectError::Cred(CredError::Store(e))
    }
}

/// Pending connect flows.
#[derive(Default)]
pub(crate) struct ConnectFlows {
    pending: Mutex<HashMap<String, Pending>>,
}

impl std::fmt::Debug for ConnectFlows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectFlows").field("pending", &self.pending.lock().map(|p| p.len()).unwrap_or(0)).finish()
    }
}

fn random_b64(n: usize) -> Result<String, ConnectError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|_| ConnectError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

/// Why a callback failed (shown on the page and logged; never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallbackError(pub String);

impl ConnectFlows {
    /// The redirect URI to register with the provider: `<public_base_url>/oauth/{provider}/callback`.
    pub(crate) fn redirect_uri(public_base_url: &Url, provider: &str) -> String {
        format!("{}/oauth/{provider}/callback", public_base_url.as_str().trim_end_matches('/'))
    }

    /// Starts a flow for `tenant`'s `provider` credential (client id and secret, scopes),
    /// which must exist. Returns the authorization URL.
    pub(crate) async fn start(
        &self,
        creds: &Credentials,
        tokens: &TokenManager,
        tenant: &TenantId,
        provider: &str,
        public_base_url: &Url,
    ) -> Result<String, ConnectError> {
        let def = tokens.spec(provider).ok_or_else(|| {
            ConnectError::NotConnectable(format!("{provider} is not an OAuth provider; nothing to connect"))
        })?;
        let spec =
            def.oauth().ok_or_else(|| ConnectError::NotConnectable(format!("{provider} is not an OAuth provider")))?;
        let auth = spec.auth_url.as_deref().filter(|_| spec.grant == Grant::AuthorizationCode).ok_or_else(|| {
            ConnectError::NotConnectable(format!(
                "{provider} uses a grant without user consent; put its credential and keyward obtains tokens itself"
            ))
        })?;
        let cred = creds.resolve_any(tenant, provider).await?;
        let client_id = cred.public_field("client_id").ok_or(ConnectError::NoClientId)?;
        let scopes = super::cred_scopes(&cred);
        let state = random_b64(32)?;
        let verifier = Secret::new(random_b64(48)?);
        let mut url =
            super::endpoint(auth, &*cred).map_err(|e| ConnectError::NotConnectable(e.message().to_string()))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", client_id)
                .append_pair("redirect_uri", &Self::redirect_uri(public_base_url, provider));
            let scope = spec.scopes(&scopes).join(" ");
            if !scope.is_empty() {
                q.append_pair("scope", &scope);
            }
            for (k, v) in &spec.auth_params {
                q.append_pair(k, v);
            }
            q.append_pair("state", &state);
            if spec.pkce {
                let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.expose().as_bytes()));
                q.append_pair("code_challenge", &challenge).append_pair("code_challenge_method", "S256");
            }
        }
        if let Some(pg) = creds.store().as_pg() {
            if pg.connect_states_pending().await? >= MAX_PENDING as i64 {
                return Err(ConnectError::TooMany);
            }
            let sealed = creds.seal_aux(tenant, &verifier_purpose(provider), 0, verifier.expose().as_bytes()).await?;
            let ttl = i64::try_from(STATE_TTL.as_millis()).unwrap_or(i64::MAX / 2);
            pg.put_connect_state(&state_hash(&state), tenant.as_str(), &sealed, keyward_store::now_millis() + ttl)
                .await?;
        } else if let Ok(mut p) = self.pending.lock() {
            let now = Instant::now();
            p.retain(|_, v| v.deadline > now);
            if p.len() >= MAX_PENDING {
                return Err(ConnectError::TooMany);
            }
            let provider = provider.to_string();
            p.insert(state, Pending { tenant: tenant.clone(), provider, verifier, deadline: now + STATE_TTL });
        }
        Ok(url.to_string())
    }

    /// Removes a pending flow from wherever it is kept (single use).
    async fn remove(
        &self,
        fleet: Option<&Credentials>,
        provider: &str,
        state: &str,
    ) -> Result<Option<Pending>, CallbackError> {
        let Some((pg, creds)) = fleet.and_then(|c| Some((c.store().as_pg()?, c))) else {
            return Ok(self.pending.lock().ok().and_then(|mut p| p.remove(state)));
        };
        let unavailable =
            |_| CallbackError("the credential store is unavailable; try the callback again shortly".into());
        let Some((tenant, sealed, expires_at)) =
            pg.take_connect_state(&state_hash(state)).await.map_err(unavailable)?
        else {
            return Ok(None);
        };
        let tenant = TenantId::parse(&tenant).map_err(|_| CallbackError("the stored flow is corrupt".into()))?;
        let verifier = creds
            .open_aux(&tenant, &verifier_purpose(provider), 0, &sealed)
            .await
            .ok()
            .and_then(|v| String::from_utf8(v.to_vec()).ok())
            .ok_or_else(|| {
                CallbackError(format!(
                    "the stored flow could not be opened (was it started for {provider}?); start the connect flow again"
                ))
            })?;
        let left = u64::try_from(expires_at - keyward_store::now_millis()).unwrap_or(0);
        Ok(Some(Pending {
            tenant,
            provider: provider.to_string(),
            verifier: Secret::new(verifier),
            deadline: Instant::now() + Duration::from_millis(left),
        }))
    }

    /// [`ConnectFlows::take`] on in-memory flows, for `fuzz/`.
    pub(crate) async fn fuzz_take(&self, query: &str) -> Result<(), CallbackError> {
        self.take(None, "google", query).await.map(|_| ())
    }

    /// Consumes the callback's state (single use) and returns the pending flow and code.
    /// `fleet` is where flows live when the store is PostgreSQL (`None`: in memory).
    async fn take(
        &self,
        fleet: Option<&Credentials>,
        provider: &str,
        query: &str,
    ) -> Result<(Pending, String), CallbackError> {
        let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let state = params
            .get("state")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| CallbackError("the callback has no state; start the connect flow again".into()))?;
        // Single use: the state is removed whatever happens next.
        let pending = self.remove(fleet, provider, state).await?.ok_or_else(|| {
            CallbackError("the state is unknown or was already used; start the connect flow again".into())
        })?;
        if pending.provider != provider {
            return Err(CallbackError(format!(
                "the state was issued for {}, not {provider}; start the connect flow again",
                pending.provider
            )));
        }
        if Instant::now() >= pending.deadline {
            return Err(CallbackError("the connect flow expired (10 minutes); start it again".into()));
        }
        if let Some(e) = params.get("error") {
            let e: String = e.chars().take(64).filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            return Err(CallbackError(format!("{provider} answered {e}; nothing was stored")));
        }
        let code = params
            .get("code")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| CallbackError("the callback has no code".into()))?
            .clone();
        Ok((pending, code))
    }

    /// Completes a flow from the callback's query string. Returns the tenant connected.
    pub(crate) async fn callback(
        &self,
        creds: &Credentials,
        tokens: &TokenManager,
        provider: &str,
        query: &str,
        public_base_url: &Url,
    ) -> Result<TenantId, CallbackError> {
        let def = tokens.spec(provider).ok_or_else(|| CallbackError(format!("{provider} is not an OAuth provider")))?;
        let spec = def.oauth().ok_or_else(|| CallbackError(format!("{provider} is not an OAuth provider")))?;
        let (pending, code) = self.take(Some(creds), provider, query).await?;
        let tenant = pending.tenant;
        let cred = creds
            .resolve_any(&tenant, provider)
            .await
            .map_err(|_| CallbackError(format!("the tenant's {provider} credential is gone")))?;
        let redirect = Self::redirect_uri(public_base_url, provider);
        let mut form =
            vec![("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", redirect.as_str())];
        if spec.pkce {
            form.push(("code_verifier", pending.verifier.expose()));
        }
        let url = super::endpoint(&spec.token_url, &*cred).map_err(|e| CallbackError(e.message().to_string()))?;
        let client = super::client(spec, &*cred);
        let granted = token_call(tokens.http(), &url, Some(&client), &form).await.map_err(|e| {
            CallbackError(match e {
                TokenError::Timeout(_) => format!("{provider}'s token endpoint did not answer"),
                other => format!("the code exchange failed ({})", other.message()),
            })
        })?;
        let refresh = granted.refresh_token.ok_or_else(|| {
            CallbackError(format!(
                "{provider} returned no refresh_token (the consent was not offline{}); start again",
                if spec.preset == Some("microsoft") { ": is offline_access allowed for the app?" } else { "" }
            ))
        })?;
        let instance = granted.instance_url.as_deref().filter(|_| spec.instance_url);
        if spec.instance_url && instance.is_none() {
            return Err(CallbackError(format!("{provider} returned no instance_url; nothing was stored")));
        }
        if let Some(u) = instance {
            // Where this tenant's token will be sent: only a host the provider claims.
            let ok = url::Url::parse(u).ok().is_some_and(|p| {
                p.scheme() == "https"
                    && p.host_str().is_some_and(|h| def.claims_host(h, p.port_or_known_default().unwrap_or(0)))
            });
            if !ok {
                return Err(CallbackError(format!(
                    "{provider} returned an instance_url that is not one of its hosts; nothing was stored"
                )));
            }
        }
        creds
            .set_granted("oauth-callback", &tenant, provider, Some(refresh), instance, Some(CredStatus::Active))
            .await
            .map_err(|e| CallbackError(format!("the refresh token could not be stored: {}", e.code())))?;
        tokens.invalidate(&tenant, provider).await;
        Ok(tenant)
    }
}

/// The plain page shown to the person who completed (or failed) the consent.
pub(crate) fn page(ok: bool, provider: &str, text: &str) -> String {
    let esc: String = text
        .chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            c => c.to_string(),
        })
        .collect();
    let name: String = provider.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    let name = if name == "google" { "Google".to_string() } else { name };
    let title = if ok { format!("{name} connected") } else { format!("{name} connection failed") };
    format!("<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head><body><h1>{title}</h1><p>{esc}</p></body></html>\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flows_with(state: &str, age: Duration) -> ConnectFlows {
        let f = ConnectFlows::default();
        let deadline = (Instant::now() + STATE_TTL).checked_sub(age).unwrap_or_else(Instant::now);
        f.pending.lock().unwrap().insert(
            state.into(),
            Pending {
                tenant: TenantId::parse("acme").unwrap(),
                provider: "google".into(),
                verifier: Secret::new("v".into()),
                deadline,
            },
        );
        f
    }

    #[tokio::test]
    async fn an_expired_state_is_refused_and_consumed() {
        let f = flows_with("s1", Duration::from_secs(601));
        assert!(f.take(None, "google", "state=s1&code=c").await.unwrap_err().0.contains("expired"));
        assert!(f.take(None, "google", "state=s1&code=c").await.unwrap_err().0.contains("already used"));
    }

    #[tokio::test]
    async fn a_fresh_state_is_single_use_and_needs_a_code() {
        let f = flows_with("s2", Duration::from_secs(1));
        let (p, code) = f.take(None, "google", "state=s2&code=c").await.unwrap();
        assert_eq!((p.tenant.as_str(), code.as_str()), ("acme", "c"));
        assert!(f.take(None, "google", "state=s2&code=c").await.is_err());
        let g = flows_with("s3", Duration::from_secs(1));
        assert!(g.take(None, "google", "state=s3").await.unwrap_err().0.contains("no code"));
        let h = flows_with("s4", Duration::from_secs(1));
        assert!(h.take(None, "google", "state=s4&error=access_denied").await.unwrap_err().0.contains("access_denied"));
    }

    #[tokio::test]
    async fn a_state_completes_only_its_own_providers_callback() {
        let f = flows_with("s5", Duration::from_secs(1));
        assert!(f.take(None, "outlook", "state=s5&code=c").await.unwrap_err().0.contains("issued for google"));
        assert!(f.take(None, "google", "state=s5&code=c").await.unwrap_err().0.contains("already used"), "consumed");
    }
}
