//! `POST /v1/webhooks/verify` on the app listener: verification as a service for apps that
//! terminate webhooks themselves. The app listener routes the path here; the rules are the
//! webhook listener's own ([`super::verify`]).

use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::creds::Credentials;
use crate::error::PublicError;
use crate::http::ProxyBody;
use crate::listen::Peer;
use crate::policy::Policy;

/// `POST /v1/webhooks/verify`: for apps that terminate webhooks themselves. Runs the same
/// verification as the webhook listener (tenant, credential, signature, window, in-body
/// ids) without recording a replay key, and answers `{valid, tenant, reason}`.
pub(crate) async fn handle(
    creds: &Credentials,
    policy: &Policy,
    peer: &Peer,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, PublicError> {
    if req.method() != Method::POST {
        return Err(PublicError::method_not_allowed("use POST /v1/webhooks/verify"));
    }
    let limit = 4 << 20;
    let body = crate::http::read_body(req, limit).await?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        PublicError::bad_request(format!("the body is not valid JSON (line {}, column {})", e.line(), e.column()))
    })?;
    let field = |name: &str| v.get(name).and_then(serde_json::Value::as_str);
    let provider_name = field("provider").ok_or_else(|| PublicError::bad_request("provider is required"))?;
    let url = field("url").ok_or_else(|| PublicError::bad_request("url is required (the URL the provider called)"))?;
    let method = field("method").unwrap_or("POST");
    let raw_body = base64::engine::general_purpose::STANDARD
        .decode(field("body_base64").unwrap_or(""))
        .map_err(|_| PublicError::bad_request("body_base64 is not base64"))?;
    let mut headers = HeaderMap::new();
    let mut add = |k: &str, val: &str| -> Result<(), PublicError> {
        let n = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| PublicError::bad_request(format!("{k:?} is not a header name")))?;
        let hv = HeaderValue::from_str(val)
            .map_err(|_| PublicError::bad_request(format!("the value of {k} is not a valid header value")))?;
        headers.append(n, hv);
        Ok(())
    };
    match v.get("headers") {
        Some(serde_json::Value::Object(m)) => {
            for (k, val) in m {
                add(k, val.as_str().ok_or_else(|| PublicError::bad_request("header values must be strings"))?)?;
            }
        }
        Some(serde_json::Value::Array(a)) => {
            for pair in a {
                match pair.as_array().map(Vec::as_slice) {
                    Some([k, val]) => add(k.as_str().unwrap_or(""), val.as_str().unwrap_or(""))?,
                    _ => return Err(PublicError::bad_request("headers as a list must hold [name, value] pairs")),
                }
            }
        }
        None => {}
        _ => return Err(PublicError::bad_request("headers must be an object or a list of [name, value] pairs")),
    }
    let tenant = match field("tenant") {
        Some(t) => Some(keyward_core::ids::TenantId::parse(t).map_err(|e| PublicError::bad_request(e.to_string()))?),
        None => None,
    };
    let def = creds.providers().get(provider_name).cloned().ok_or_else(|| {
        PublicError::new(StatusCode::NOT_FOUND, "unknown_provider", format!("unknown provider {provider_name:?}"))
    })?;
    let now = keyward_core::time::now_secs();
    let d = keyward_core::providers::inbound::Delivery { method, url, headers: &headers, body: &raw_body, now };
    let rejected = |r: super::verify::Rejection| serde_json::json!({"valid": false, "tenant": null, "reason": r.code, "detail": r.detail});
    // The client policy comes first: a client may learn nothing, not even why a delivery
    // fails, about a tenant it may not use. A tenant that cannot be resolved names no one.
    let answer = match super::verify::resolve_tenant(creds, &def, tenant, &d).await {
        Err(r) => rejected(r),
        Ok(tenant) => {
            if !policy.allows(peer, &tenant, provider_name) {
                return Err(PublicError::new(
                    StatusCode::FORBIDDEN,
                    "tenant_not_allowed",
                    "this client may not verify deliveries for that tenant",
                ));
            }
            match super::verify::verify_for(creds, None, &def, tenant, &d).await {
                Ok(v) => serde_json::json!({"valid": true, "tenant": v.tenant, "reason": null, "event_id": v.event_id}),
                Err(r) => rejected(r),
            }
        }
    };
    let mut resp = Response::new(
        http_body_util::Full::new(Bytes::from(answer.to_string())).map_err(|never| match never {}).boxed_unsync(),
    );
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}
