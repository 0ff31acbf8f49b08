//! The verification pipeline (PROVIDERS.md §1, "Order and codes"): body size (done by the
//! caller) → tenant → credential → signature → window → replay → in-body ids. The only
//! way to obtain a [`Verified`] is to pass every step, and forwarding takes a `Verified`,
//! so an unverified delivery cannot reach the app.

use std::sync::Arc;

use crate::creds::{CredError, Credentials};
use keyward_core::ids::TenantId;
use keyward_core::providers::inbound::Delivery;
use keyward_core::providers::ProviderDef;
use keyward_store::CredStatus;

use super::replay::{Hold, Replay};

/// Proof that a delivery verified for one tenant. The private field keeps construction
/// inside this module.
#[derive(Debug)]
pub(crate) struct Verified {
    /// The tenant it belongs to.
    pub tenant: TenantId,
    /// The provider.
    pub provider: Arc<ProviderDef>,
    /// `Keyward-Event-Id`, when the provider gives one.
    pub event_id: Option<String>,
    /// Headers that carried a secret.
    pub strip: Vec<&'static str>,
    /// Secrets to mask in the body before forwarding.
    pub mask: Vec<zeroize::Zeroizing<Vec<u8>>>,
    /// The replay key, held in flight until the app answers.
    pub(super) reservation: Option<Hold>,
    _proof: (),
}

/// A refused delivery: a public code (CONTRACT.md §5) and an operator-facing detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// `bad_signature`, `stale_timestamp`, `replayed`, `unresolved_tenant`, `no_credential`.
    pub code: &'static str,
    /// What failed (never a secret).
    pub detail: String,
}

fn reject(code: &'static str, detail: impl Into<String>) -> Rejection {
    Rejection { code, detail: detail.into() }
}

/// Finds the tenant: the path's, else the routes named by the payload, which must agree.
async fn resolve_tenant(
    creds: &Credentials,
    provider: &ProviderDef,
    path_tenant: Option<TenantId>,
    d: &Delivery<'_>,
) -> Result<TenantId, Rejection> {
    if let Some(t) = path_tenant {
        return Ok(t);
    }
    let candidates = provider.route_candidates(d);
    if candidates.is_empty() {
        return Err(reject(
            "unresolved_tenant",
            format!(
                "the delivery names no id keyward can route for {}; use /webhooks/{}/{{tenant}}",
                provider.name, provider.name
            ),
        ));
    }
    let mut found: Option<TenantId> = None;
    for (kind, id) in &candidates {
        let owner =
            creds.route(kind, id).await.map_err(|_| reject("unresolved_tenant", "the routing index is unavailable"))?;
        match (owner, &found) {
            (Some(o), Some(f)) if &o != f => {
                return Err(reject("unresolved_tenant", format!("routes disagree: {kind} names another tenant")))
            }
            (Some(o), None) => found = Some(o),
            _ => {}
        }
    }
    found.ok_or_else(|| {
        reject(
            "unresolved_tenant",
            format!("no route for {}", candidates.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")),
        )
    })
}

/// Runs the pipeline for one delivery.
pub(crate) async fn verify(
    creds: &Credentials,
    replay: Option<&Replay>,
    provider: &Arc<ProviderDef>,
    path_tenant: Option<TenantId>,
    d: &Delivery<'_>,
) -> Result<Verified, Rejection> {
    let tenant = resolve_tenant(creds, provider, path_tenant, d).await?;
    let no_cred = || reject("no_credential", format!("no {} webhook key for this tenant", provider.name));
    let cred = match creds.resolve_any(&tenant, provider.name.as_str()).await {
        Ok(c) => c,
        // Unknown tenants read the same as tenants without a key: no enumeration.
        Err(CredError::NotFound { .. }) => return Err(no_cred()),
        Err(e) => return Err(reject("no_credential", format!("the credential cannot be read: {}", e.code()))),
    };
    if cred.status == CredStatus::Inactive {
        return Err(no_cred());
    }
    let keys = provider.webhook_keys(&*cred).ok_or_else(no_cred)?;
    let accepted =
        provider.verify_delivery(d, &keys).map_err(|r| Rejection { code: r.code(), detail: r.detail().to_string() })?;
    let reservation = match (&accepted.replay_key, replay) {
        (Some(k), Some(replay)) => Some(
            replay
                .reserve(
                    format!("{}/{}/{k}", provider.name, tenant),
                    std::time::Duration::from_secs(accepted.replay_keep),
                )
                .await
                .map_err(|_| reject("replayed", "this delivery was already accepted"))?,
        ),
        _ => None,
    };
    provider.check_body_ids(d, &*cred).map_err(|m| reject("unresolved_tenant", m))?;
    for (kind, id) in provider.route_candidates(d) {
        if let Ok(Some(owner)) = creds.route(kind, &id).await {
            if owner != tenant {
                return Err(reject("unresolved_tenant", format!("{kind} {id} belongs to another tenant")));
            }
        }
    }
    // What to mask in the body: fields the provider is known to echo, and this
    // credential's own secrets wherever they appear.
    let mut mask = keyward_core::redact::json_field_values(d.body, provider.echoed_secret_fields());
    for name in provider.schema.fields.iter().filter(|f| f.secret).map(|f| f.name.as_str()) {
        if let Some(s) = cred.secret(name) {
            mask.push(zeroize::Zeroizing::new(s.expose().as_bytes().to_vec()));
        }
    }
    Ok(Verified {
        tenant,
        provider: provider.clone(),
        event_id: accepted.event_id,
        strip: accepted.strip,
        mask,
        reservation,
        _proof: (),
    })
}
