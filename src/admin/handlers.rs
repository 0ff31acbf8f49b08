//! Admin handlers: parse the body and query, call `creds`, shape the JSON answer.

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::router::Endpoint;
use super::{AdminState, MAX_ADMIN_BODY};
use crate::error::PublicError;
use crate::http::read_body;
use keyward_core::ids::TenantId;

type Answer = Result<(StatusCode, Value), PublicError>;

fn ok(v: Value) -> Answer {
    Ok((StatusCode::OK, v))
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn parse_json(body: &[u8]) -> Result<Value, PublicError> {
    if body.is_empty() {
        return Err(PublicError::bad_request("the body is empty; send a JSON object"));
    }
    // serde_json's syntax errors give line and column, never the input.
    serde_json::from_slice(body).map_err(|e| {
        PublicError::bad_request(format!("the body is not valid JSON (line {}, column {})", e.line(), e.column()))
    })
}

fn query(req: &Request<super::AdminBody>) -> HashMap<String, String> {
    req.uri().query().map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

fn q_u64(q: &HashMap<String, String>, name: &str, default: u64, max: u64) -> Result<u64, PublicError> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .map(|n| n.min(max))
            .map_err(|_| PublicError::bad_request(format!("query parameter {name} must be a non-negative integer"))),
    }
}

fn q_bool(q: &HashMap<String, String>, name: &str) -> Result<bool, PublicError> {
    match q.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(_) => Err(PublicError::bad_request(format!("query parameter {name} must be true or false"))),
    }
}

/// Runs a routed request and renders the answer.
pub(crate) async fn dispatch(
    state: &AdminState,
    who: &super::roles::Principal,
    route: Endpoint,
    req: Request<super::AdminBody>,
) -> Response<Full<Bytes>> {
    match run(state, &who.actor, route, req).await {
        Ok((status, v)) => {
            let mut resp = Response::new(Full::new(Bytes::from(v.to_string())));
            *resp.status_mut() = status;
            resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => e.into_response(),
    }
}

async fn run(state: &AdminState, actor: &str, route: Endpoint, req: Request<super::AdminBody>) -> Answer {
    let creds = &state.creds;
    let q = query(&req);
    match route {
        Endpoint::ListTenants => {
            let limit = q_u64(&q, "limit", 100, 1000)? as usize;
            let after = match q.get("after") {
                Some(a) => Some(TenantId::parse(a).map_err(|e| PublicError::bad_request(e.to_string()))?),
                None => None,
            };
            let tenants = creds.tenants(after.as_ref(), limit).await?;
            let next = if tenants.len() == limit { tenants.last().cloned() } else { None };
            ok(json!({"tenants": tenants, "next": next}))
        }
        Endpoint::DeleteTenant(t) => {
            let deleted = creds.delete_tenant(actor, &t).await?;
            ok(json!({"tenant": t, "deleted": deleted}))
        }
        Endpoint::ListCredentials(t) => {
            let list = creds.list(&t, q_bool(&q, "include_deleted")?).await?;
            ok(json!({"tenant": t, "credentials": list}))
        }
        Endpoint::PutCredential(t, p) => {
            let verify = q_bool(&q, "verify")?;
            let body = read_body(req, MAX_ADMIN_BODY).await?;
            let fields = parse_json(&body)?;
            drop(body);
            let (status, warnings, check) = if verify {
                // Nothing is stored unless the provider accepts the credential.
                let parsed = match creds.parse(p.as_str(), fields) {
                    Ok(parsed) => parsed,
                    Err(e) => {
                        let code = e.code();
                        creds.audit_failure(actor, "credential.put", Some(t.as_str()), Some(p.as_str()), code).await;
                        return Err(e.into());
                    }
                };
                let providers = creds.providers();
                let def =
                    providers.get(p.as_str()).cloned().ok_or_else(|| PublicError::not_found("unknown provider"))?;
                let mut candidate = crate::creds::Credential::ephemeral(t.clone(), p.as_str(), parsed);
                let verdict = state.live.check(&def, &mut candidate).await;
                let failure = match &verdict {
                    crate::live::Verdict::Valid => None,
                    crate::live::Verdict::Invalid(m) => {
                        Some((StatusCode::UNPROCESSABLE_ENTITY, "invalid_credential", m.clone()))
                    }
                    crate::live::Verdict::Unavailable(m) => {
                        Some((StatusCode::BAD_GATEWAY, "provider_unavailable", m.clone()))
                    }
                };
                if let Some((status, code, detail)) = failure {
                    creds.audit_failure(actor, "credential.put", Some(t.as_str()), Some(p.as_str()), code).await;
                    return Err(PublicError::new(
                        status,
                        code,
                        format!("not stored: the provider check failed: {detail}"),
                    ));
                }
                let parsed = candidate.into_parsed();
                let (st, w) =
                    creds.put_parsed(actor, &t, p.as_str(), parsed, Some(keyward_store::now_millis())).await?;
                (st, w, Some(verdict))
            } else {
                let (st, w) = creds.put(actor, &t, p.as_str(), fields).await?;
                (st, w, None)
            };
            spawn_discovery(state, actor, &t, p.as_str());
            for w in &warnings {
                tracing::warn!(tenant = %t, provider = %p, warning = %w, "credential stored with a warning");
            }
            let mut v = to_json(&status);
            if !warnings.is_empty() {
                v["warnings"] = json!(warnings);
            }
            if let Some(c) = check {
                v["verification"] = to_json(&c);
            }
            ok(v)
        }
        Endpoint::VerifyCredential(t, p) => {
            let (status, verdict, discovery) =
                state.live.verify_stored(actor, &t, p.as_str(), state.discover_routes).await?;
            let mut v = to_json(&status);
            v["verification"] = to_json(&verdict);
            if let Some(d) = discovery {
                v["routes"] = to_json(&d);
            }
            ok(v)
        }
        Endpoint::CallbackUrl(t, p) => {
            // The URL to configure at the provider for this tenant's deliveries. For a
            // provider that proves a callback by credentials in its URL (Deepgram), the URL
            // embeds them: handed to the provider once, never needed by the app.
            let base = state.public_base_url.as_ref().ok_or_else(|| {
                PublicError::bad_request("a callback URL needs [webhooks] public_base_url (deliveries arrive there)")
            })?;
            let cred = creds.resolve_any(&t, p.as_str()).await?;
            let providers = creds.providers();
            let def = providers.get(p.as_str()).ok_or_else(|| PublicError::not_found("unknown provider"))?;
            if !def.rules().has_webhooks() {
                return Err(PublicError::bad_request(format!("{p} sends no webhooks keyward verifies")));
            }
            let rules = def.rules();
            let (url, embeds) = match rules.callback_url(&*cred, base, t.as_str()) {
                Some(u) => (u.to_string(), true),
                None if rules.callback_param().is_some() => {
                    return Err(PublicError::bad_request(format!(
                        "this tenant's {p} credential has no webhook_secret, which keyward puts into its callback URL; add one with cred put"
                    )))
                }
                None => (format!("{}/webhooks/{p}/{t}", base.as_str().trim_end_matches('/')), false),
            };
            creds.audit_note(actor, "credential.callback_url", Some(t.as_str()), Some(p.as_str()), "ok").await;
            ok(json!({"callback_url": url, "embeds_credentials": embeds, "param": rules.callback_param()}))
        }
        Endpoint::OAuthStart(t, p) => {
            let base = state.public_base_url.as_ref().ok_or_else(|| {
                PublicError::bad_request(
                    "the connect flow needs [webhooks] public_base_url (the callback is served there)",
                )
            })?;
            creds.check_provider(p.as_str())?;
            let url = state.connect.start(creds, &state.tokens, &t, p.as_str(), base).await?;
            let redirect = crate::oauth::connect::ConnectFlows::redirect_uri(base, p.as_str());
            ok(json!({"authorization_url": url, "redirect_uri": redirect, "expires_in": 600}))
        }
        Endpoint::GetCredential(t, p) => ok(to_json(&creds.status(&t, p.as_str()).await?)),
        Endpoint::DeleteCredential(t, p) => {
            // A connected OAuth credential: revoke the refresh token at the provider too,
            // where it has a revocation endpoint (best effort, audited).
            let def = state.tokens.spec(p.as_str());
            let connected = match &def {
                Some(_) => creds.resolve_any(&t, p.as_str()).await.ok().filter(|c| c.secret("refresh_token").is_some()),
                None => None,
            };
            let status = creds.delete(actor, &t, p.as_str()).await?;
            if def.is_some() {
                state.tokens.invalidate(&t, p.as_str()).await;
            }
            if let (Some(spec), Some(cred)) = (def.as_ref().and_then(|d| d.oauth()), connected) {
                if let Some(token) = cred.secret("refresh_token") {
                    let outcome = match state.tokens.revoke(spec, &cred, token).await {
                        Ok(true) => "ok".to_string(),
                        Ok(false) => "none: the provider has no revocation endpoint".to_string(),
                        Err(e) => format!("error:{e}"),
                    };
                    let action = format!("oauth.{}.revoke", p.as_str());
                    creds.audit_note(actor, &action, Some(t.as_str()), Some(p.as_str()), &outcome).await;
                }
            }
            ok(to_json(&status))
        }
        Endpoint::RestoreCredential(t, p) => ok(to_json(&creds.restore(actor, &t, p.as_str()).await?)),
        Endpoint::PutRoute(k, i) => {
            let body = read_body(req, MAX_ADMIN_BODY).await?;
            let v = parse_json(&body)?;
            let tenant = v
                .get("tenant")
                .and_then(Value::as_str)
                .ok_or_else(|| PublicError::bad_request("send {\"tenant\": \"<tenant id>\"}"))?;
            let tenant = TenantId::parse(tenant).map_err(|e| PublicError::bad_request(e.to_string()))?;
            creds.put_route(actor, &k, &i, &tenant, false).await?;
            ok(json!({"kind": k, "id": i, "tenant": tenant}))
        }
        Endpoint::GetRoute(k, i) => match creds.route(k.as_str(), i.as_str()).await? {
            Some(t) => ok(json!({"kind": k, "id": i, "tenant": t})),
            None => Err(PublicError::not_found(format!("no route {k}/{i}"))),
        },
        Endpoint::DeleteRoute(k, i) => {
            if creds.delete_route(actor, &k, &i).await? {
                ok(json!({"kind": k, "id": i, "deleted": true}))
            } else {
                Err(PublicError::not_found(format!("no route {k}/{i}")))
            }
        }
        Endpoint::Audit => {
            let after = q_u64(&q, "after", 0, u64::MAX)?;
            let limit = q_u64(&q, "limit", 100, 1000)? as usize;
            // `wait`: hold the request until an entry after `after` is committed (at most
            // that many seconds), so `audit tail --follow` sees commits as they happen.
            let wait = q_u64(&q, "wait", 0, 60)?;
            if wait > 0 && limit > 0 {
                creds.audit_wait(after, std::time::Duration::from_secs(wait)).await?;
            }
            let (entries, head) = creds.audit(after, limit).await?;
            ok(json!({"entries": entries, "head": head.seq}))
        }
        Endpoint::AuditVerify => {
            let report = creds.audit_verify().await?;
            let status = if report.ok { StatusCode::OK } else { StatusCode::CONFLICT };
            Ok((status, to_json(&report)))
        }
        Endpoint::AuditCheckpoint => ok(to_json(&creds.checkpoint().await?)),
        Endpoint::RotateKeys => {
            let limit = q_u64(&q, "limit", u64::MAX, u64::MAX)?;
            let limit = usize::try_from(limit).unwrap_or(usize::MAX).max(1);
            ok(to_json(&creds.rotate_keys(actor, limit).await?))
        }
        Endpoint::KeyStatus => ok(to_json(&creds.key_status().await?)),
        Endpoint::OpenApi => ok(super::openapi::parsed().clone()),
        Endpoint::TenantRoutes(t) => {
            let routes: Vec<Value> =
                creds.tenant_routes(&t).await?.into_iter().map(|(k, i)| json!({"kind": k, "id": i})).collect();
            ok(json!({"tenant": t, "routes": routes}))
        }
        Endpoint::Stats => ok(json!({"counters": state.metrics.as_ref().map(|m| m.counters()).unwrap_or_default()})),
        Endpoint::Users => {
            let users: Vec<_> = state.users.iter().map(|u| json!({"name": u.name, "role": u.role})).collect();
            ok(json!({"users": users, "token_file": state.token_digest.is_some()}))
        }
        Endpoint::SetLogLevel => {
            let body = read_body(req, MAX_ADMIN_BODY).await?;
            let v = parse_json(&body)?;
            let level = v
                .get("level")
                .and_then(Value::as_str)
                .ok_or_else(|| PublicError::bad_request("send {\"level\": \"debug\"}"))?;
            state.log.set_level(level).map_err(PublicError::bad_request)?;
            tracing::warn!(level, actor, "log level changed");
            ok(json!({"level": level}))
        }
    }
}

/// After a credential is stored, lists the tenant's ids at the provider and registers
/// their routes, in the background (providers that offer discovery only).
fn spawn_discovery(state: &AdminState, actor: &str, tenant: &TenantId, provider: &str) {
    if !state.discover_routes {
        return;
    }
    let (live, creds, actor, tenant, provider) =
        (state.live.clone(), state.creds.clone(), actor.to_string(), tenant.clone(), provider.to_string());
    tokio::spawn(async move {
        let providers = creds.providers();
        let (Some(def), Ok(cred)) = (providers.get(&provider), creds.resolve(&tenant, &provider).await) else { return };
        let (known, listings) = def.rules().discovery(&*cred);
        if known.is_empty() && listings.is_empty() {
            return;
        }
        let d = live.discover(&actor, def, &cred, false).await;
        tracing::info!(tenant = %tenant, provider = %provider, registered = d.registered.len(), conflicts = d.conflicts.len(), errors = d.errors.len(), "route discovery");
    });
}
