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
pub(crate) async fn resolve_tenant(
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
    verify_for(creds, replay, provider, tenant, d).await
}

/// The pipeline after the tenant is known: credential → signature → window → replay →
/// in-body ids. Callers that authorize by tenant do so between the two halves.
pub(crate) async fn verify_for(
    creds: &Credentials,
    replay: Option<&Replay>,
    provider: &Arc<ProviderDef>,
    tenant: TenantId,
    d: &Delivery<'_>,
) -> Result<Verified, Rejection> {
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
                    tenant.as_str(),
                    [provider.name.as_str(), "/", tenant.as_str(), "/", k].concat(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::replay::ReplayCache;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use http::{HeaderMap, HeaderValue};
    use serde_json::json;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const NOW: u64 = 1_700_000_000;

    /// A Standard Webhooks delivery (Resend) signed with `secret`.
    fn signed(secret: &str, id: &str, body: &str) -> HeaderMap {
        let key = base64::engine::general_purpose::STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap();
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{NOW}.{body}").as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let mut h = HeaderMap::new();
        h.insert("svix-id", HeaderValue::from_str(id).unwrap());
        h.insert("svix-timestamp", HeaderValue::from_str(&NOW.to_string()).unwrap());
        h.insert("svix-signature", HeaderValue::from_str(&format!("v1,{sig}")).unwrap());
        h
    }

    fn delivery<'a>(h: &'a HeaderMap, body: &'a str) -> Delivery<'a> {
        Delivery {
            method: "POST",
            url: "https://hooks.test/webhooks/resend/acme",
            headers: h,
            body: body.as_bytes(),
            now: NOW,
        }
    }

    async fn setup(dir: &std::path::Path) -> (Credentials, Arc<ProviderDef>) {
        let creds = crate::creds::for_tests(dir).await;
        let acme = TenantId::parse("acme").unwrap();
        creds.put("test", &acme, "resend", json!({"api_key": "re_123", "webhook_secret": SECRET})).await.unwrap();
        let def = creds.providers().get("resend").cloned().unwrap();
        (creds, def)
    }

    #[tokio::test]
    async fn a_signed_delivery_verifies_for_its_tenant_and_a_forgery_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let (creds, def) = setup(dir.path()).await;
        let acme = || Some(TenantId::parse("acme").unwrap());
        let body = r#"{"type":"email.sent"}"#;
        let h = signed(SECRET, "msg_1", body);
        let v = verify(&creds, None, &def, acme(), &delivery(&h, body)).await.unwrap();
        assert_eq!((v.tenant.as_str(), v.event_id.as_deref()), ("acme", Some("msg_1")));
        let forged = signed("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "msg_1", body);
        let r = verify(&creds, None, &def, acme(), &delivery(&forged, body)).await.unwrap_err();
        assert_eq!(r.code, "bad_signature");
        let r = verify(&creds, None, &def, acme(), &delivery(&h, r#"{"type":"email.bounced"}"#)).await.unwrap_err();
        assert_eq!(r.code, "bad_signature", "a changed body");
    }

    #[tokio::test]
    async fn an_unknown_tenant_reads_like_a_tenant_without_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let (creds, def) = setup(dir.path()).await;
        let body = "{}";
        let h = signed(SECRET, "msg_1", body);
        let nobody = Some(TenantId::parse("nobody").unwrap());
        let r = verify(&creds, None, &def, nobody, &delivery(&h, body)).await.unwrap_err();
        assert_eq!(r.code, "no_credential");
        // No tenant in the path, and Resend names no routable id in the payload.
        let r = verify(&creds, None, &def, None, &delivery(&h, body)).await.unwrap_err();
        assert_eq!(r.code, "unresolved_tenant");
    }

    #[tokio::test]
    async fn a_delivery_is_accepted_once_while_the_replay_key_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let (creds, def) = setup(dir.path()).await;
        let replay = Replay::Memory(ReplayCache::new(100));
        let acme = || Some(TenantId::parse("acme").unwrap());
        let body = "{}";
        let h = signed(SECRET, "msg_7", body);
        let first = verify(&creds, Some(&replay), &def, acme(), &delivery(&h, body)).await.unwrap();
        let again = verify(&creds, Some(&replay), &def, acme(), &delivery(&h, body)).await.unwrap_err();
        assert_eq!(again.code, "replayed");
        drop(first);
        // Released (the app did not answer 2xx): the provider's retry passes.
        assert!(verify(&creds, Some(&replay), &def, acme(), &delivery(&h, body)).await.is_ok());
    }
}
