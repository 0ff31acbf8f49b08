//! Admin path routing: method + path into a typed [`Route`] with parsed ids. Pure.

use http::Method;
use percent_encoding::percent_decode_str;

use super::roles::Role;
use crate::error::PublicError;
use keyward_core::ids::{ProviderName, RouteId, RouteKind, TenantId};

/// A recognised admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    ListTenants,
    DeleteTenant(TenantId),
    ListCredentials(TenantId),
    PutCredential(TenantId, ProviderName),
    GetCredential(TenantId, ProviderName),
    DeleteCredential(TenantId, ProviderName),
    RestoreCredential(TenantId, ProviderName),
    VerifyCredential(TenantId, ProviderName),
    GoogleStart(TenantId),
    PutRoute(RouteKind, RouteId),
    GetRoute(RouteKind, RouteId),
    DeleteRoute(RouteKind, RouteId),
    Audit,
    AuditVerify,
    RotateKeys,
    KeyStatus,
    SetLogLevel,
    Users,
}

impl Endpoint {
    /// A static name for logs and metrics.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Endpoint::ListTenants => "tenants.list",
            Endpoint::DeleteTenant(_) => "tenant.delete",
            Endpoint::ListCredentials(_) => "credentials.list",
            Endpoint::PutCredential(..) => "credential.put",
            Endpoint::GetCredential(..) => "credential.get",
            Endpoint::DeleteCredential(..) => "credential.delete",
            Endpoint::RestoreCredential(..) => "credential.restore",
            Endpoint::VerifyCredential(..) => "credential.verify",
            Endpoint::GoogleStart(..) => "oauth.google.start",
            Endpoint::PutRoute(..) => "route.put",
            Endpoint::GetRoute(..) => "route.get",
            Endpoint::DeleteRoute(..) => "route.delete",
            Endpoint::Audit => "audit.list",
            Endpoint::AuditVerify => "audit.verify",
            Endpoint::RotateKeys => "keys.rotate",
            Endpoint::KeyStatus => "keys.status",
            Endpoint::SetLogLevel => "log.level",
            Endpoint::Users => "users.list",
        }
    }

    /// The least role that may call it (CONTRACT.md §8.2).
    pub(crate) fn role(&self) -> Role {
        match self {
            Endpoint::ListTenants
            | Endpoint::ListCredentials(_)
            | Endpoint::GetCredential(..)
            | Endpoint::GetRoute(..)
            | Endpoint::Audit
            | Endpoint::AuditVerify
            | Endpoint::KeyStatus => Role::Viewer,
            Endpoint::DeleteTenant(_)
            | Endpoint::PutCredential(..)
            | Endpoint::DeleteCredential(..)
            | Endpoint::RestoreCredential(..)
            | Endpoint::VerifyCredential(..)
            | Endpoint::GoogleStart(_)
            | Endpoint::PutRoute(..)
            | Endpoint::DeleteRoute(..) => Role::Operator,
            Endpoint::RotateKeys | Endpoint::SetLogLevel | Endpoint::Users => Role::Admin,
        }
    }

    /// The tenant and provider it acts on, for the audit entry of a refusal.
    pub(crate) fn subject(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Endpoint::DeleteTenant(t) | Endpoint::ListCredentials(t) | Endpoint::GoogleStart(t) => {
                (Some(t.as_str()), None)
            }
            Endpoint::PutCredential(t, p)
            | Endpoint::GetCredential(t, p)
            | Endpoint::DeleteCredential(t, p)
            | Endpoint::RestoreCredential(t, p)
            | Endpoint::VerifyCredential(t, p) => (Some(t.as_str()), Some(p.as_str())),
            _ => (None, None),
        }
    }
}

fn segment(raw: &str) -> Result<String, PublicError> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| PublicError::bad_request("a path segment is not valid UTF-8 after percent-decoding"))
}

fn tenant(raw: &str) -> Result<TenantId, PublicError> {
    TenantId::parse(&segment(raw)?).map_err(|e| PublicError::bad_request(e.to_string()))
}

fn provider(raw: &str) -> Result<ProviderName, PublicError> {
    ProviderName::parse(&segment(raw)?)
        .map_err(|e| PublicError::new(http::StatusCode::NOT_FOUND, "unknown_provider", e.to_string()))
}

fn route_pair(kind: &str, id: &str) -> Result<(RouteKind, RouteId), PublicError> {
    let k = RouteKind::parse(&segment(kind)?).map_err(|e| PublicError::bad_request(e.to_string()))?;
    let i = RouteId::parse(&segment(id)?).map_err(|e| PublicError::bad_request(e.to_string()))?;
    Ok((k, i))
}

fn allow(method: &Method, allowed: &[Method]) -> Result<(), PublicError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        Err(PublicError::method_not_allowed(format!("{method} is not allowed here; use {}", names.join(" or "))))
    }
}

/// Routes a request. Unknown paths answer 404, wrong methods 405, bad ids 400.
pub(crate) fn route(method: &Method, path: &str) -> Result<Endpoint, PublicError> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let m = method;
    match segs.as_slice() {
        ["v1", "tenants"] => allow(m, &[Method::GET]).map(|()| Endpoint::ListTenants),
        ["v1", "tenants", t] => allow(m, &[Method::DELETE]).and_then(|()| Ok(Endpoint::DeleteTenant(tenant(t)?))),
        ["v1", "tenants", t, "credentials"] => {
            allow(m, &[Method::GET]).and_then(|()| Ok(Endpoint::ListCredentials(tenant(t)?)))
        }
        ["v1", "tenants", t, "credentials", p] => {
            allow(m, &[Method::PUT, Method::GET, Method::DELETE])?;
            let (t, p) = (tenant(t)?, provider(p)?);
            Ok(match *m {
                Method::PUT => Endpoint::PutCredential(t, p),
                Method::GET => Endpoint::GetCredential(t, p),
                _ => Endpoint::DeleteCredential(t, p),
            })
        }
        ["v1", "tenants", t, "credentials", p, "restore"] => {
            allow(m, &[Method::POST])?;
            Ok(Endpoint::RestoreCredential(tenant(t)?, provider(p)?))
        }
        ["v1", "tenants", t, "credentials", p, "verify"] => {
            allow(m, &[Method::POST])?;
            Ok(Endpoint::VerifyCredential(tenant(t)?, provider(p)?))
        }
        ["v1", "tenants", t, "oauth", "google", "start"] => {
            allow(m, &[Method::POST])?;
            Ok(Endpoint::GoogleStart(tenant(t)?))
        }
        ["v1", "routes", k, i] => {
            allow(m, &[Method::PUT, Method::GET, Method::DELETE])?;
            let (k, i) = route_pair(k, i)?;
            Ok(match *m {
                Method::PUT => Endpoint::PutRoute(k, i),
                Method::GET => Endpoint::GetRoute(k, i),
                _ => Endpoint::DeleteRoute(k, i),
            })
        }
        ["v1", "audit"] => allow(m, &[Method::GET]).map(|()| Endpoint::Audit),
        ["v1", "audit", "verify"] => allow(m, &[Method::GET]).map(|()| Endpoint::AuditVerify),
        ["v1", "keys", "rotate"] => allow(m, &[Method::POST]).map(|()| Endpoint::RotateKeys),
        ["v1", "keys", "status"] => allow(m, &[Method::GET]).map(|()| Endpoint::KeyStatus),
        ["v1", "log", "level"] => allow(m, &[Method::PUT]).map(|()| Endpoint::SetLogLevel),
        ["v1", "users"] => allow(m, &[Method::GET]).map(|()| Endpoint::Users),
        _ => {
            Err(PublicError::not_found(format!("no admin endpoint at {}", path.chars().take(200).collect::<String>())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_paths_route_by_method() {
        assert_eq!(route(&Method::PUT, "/v1/tenants/acme/credentials/twilio").unwrap().name(), "credential.put");
        assert_eq!(route(&Method::GET, "/v1/tenants/acme/credentials/twilio").unwrap().name(), "credential.get");
        assert_eq!(
            route(&Method::POST, "/v1/tenants/acme/credentials/twilio/restore").unwrap().name(),
            "credential.restore"
        );
        assert_eq!(route(&Method::POST, "/v1/tenants/acme/credentials/twilio").unwrap_err().code, "method_not_allowed");
    }

    #[test]
    fn bad_tenant_ids_are_refused_even_percent_encoded() {
        for p in [
            "/v1/tenants/..%2Fx/credentials",
            "/v1/tenants/ACME/credentials",
            "/v1/tenants/%00/credentials",
            "/v1/tenants/%C3%A9/credentials",
            "/v1/tenants/%FF/credentials",
        ] {
            assert_eq!(route(&Method::GET, p).unwrap_err().code, "bad_request", "{p}");
        }
    }

    #[test]
    fn route_ids_are_percent_decoded() {
        assert_eq!(
            route(&Method::GET, "/v1/routes/twilio-number/%2B14155551212").unwrap(),
            Endpoint::GetRoute(RouteKind::parse("twilio-number").unwrap(), RouteId::parse("+14155551212").unwrap())
        );
    }

    #[test]
    fn unknown_paths_are_404() {
        assert_eq!(route(&Method::GET, "/v2/tenants").unwrap_err().code, "not_found");
        assert_eq!(route(&Method::GET, "/").unwrap_err().code, "not_found");
    }
}
