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
    CallbackUrl(TenantId, ProviderName),
    OAuthStart(TenantId, ProviderName),
    PutRoute(RouteKind, RouteId),
    GetRoute(RouteKind, RouteId),
    DeleteRoute(RouteKind, RouteId),
    Audit,
    AuditVerify,
    AuditCheckpoint,
    RotateKeys,
    KeyStatus,
    SetLogLevel,
    Users,
    OpenApi,
    TenantRoutes(TenantId),
    Stats,
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
            Endpoint::CallbackUrl(..) => "credential.callback_url",
            Endpoint::OAuthStart(..) => "oauth.start",
            Endpoint::PutRoute(..) => "route.put",
            Endpoint::GetRoute(..) => "route.get",
            Endpoint::DeleteRoute(..) => "route.delete",
            Endpoint::Audit => "audit.list",
            Endpoint::AuditVerify => "audit.verify",
            Endpoint::AuditCheckpoint => "audit.checkpoint",
            Endpoint::RotateKeys => "keys.rotate",
            Endpoint::KeyStatus => "keys.status",
            Endpoint::SetLogLevel => "log.level",
            Endpoint::Users => "users.list",
            Endpoint::OpenApi => "openapi",
            Endpoint::TenantRoutes(_) => "tenant.routes",
            Endpoint::Stats => "stats",
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
            | Endpoint::AuditCheckpoint
            | Endpoint::KeyStatus
            | Endpoint::OpenApi
            | Endpoint::TenantRoutes(_)
            | Endpoint::Stats => Role::Viewer,
            Endpoint::DeleteTenant(_)
            | Endpoint::PutCredential(..)
            | Endpoint::DeleteCredential(..)
            | Endpoint::RestoreCredential(..)
            | Endpoint::VerifyCredential(..)
            | Endpoint::CallbackUrl(..)
            | Endpoint::OAuthStart(..)
            | Endpoint::PutRoute(..)
            | Endpoint::DeleteRoute(..) => Role::Operator,
            Endpoint::RotateKeys | Endpoint::SetLogLevel | Endpoint::Users => Role::Admin,
        }
    }

    /// The tenant and provider it acts on, for the audit entry of a refusal.
    pub(crate) fn subject(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Endpoint::DeleteTenant(t) | Endpoint::ListCredentials(t) => (Some(t.as_str()), None),
            Endpoint::OAuthStart(t, p)
            | Endpoint::PutCredential(t, p)
            | Endpoint::GetCredential(t, p)
            | Endpoint::DeleteCredential(t, p)
            | Endpoint::RestoreCredential(t, p)
            | Endpoint::VerifyCredential(t, p)
            | Endpoint::CallbackUrl(t, p) => (Some(t.as_str()), Some(p.as_str())),
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

/// Every admin operation: method, path template (`{name}` is one segment), and its name —
/// the one list the router matches and the OpenAPI description (docs/openapi.json) is
/// checked against, both ways.
pub(crate) const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/v1/tenants", "tenants.list"),
    ("DELETE", "/v1/tenants/{tenant}", "tenant.delete"),
    ("GET", "/v1/tenants/{tenant}/credentials", "credentials.list"),
    ("GET", "/v1/tenants/{tenant}/routes", "tenant.routes"),
    ("PUT", "/v1/tenants/{tenant}/credentials/{provider}", "credential.put"),
    ("GET", "/v1/tenants/{tenant}/credentials/{provider}", "credential.get"),
    ("DELETE", "/v1/tenants/{tenant}/credentials/{provider}", "credential.delete"),
    ("POST", "/v1/tenants/{tenant}/credentials/{provider}/restore", "credential.restore"),
    ("POST", "/v1/tenants/{tenant}/credentials/{provider}/verify", "credential.verify"),
    ("POST", "/v1/tenants/{tenant}/credentials/{provider}/callback-url", "credential.callback_url"),
    ("POST", "/v1/tenants/{tenant}/oauth/{provider}/start", "oauth.start"),
    ("PUT", "/v1/routes/{kind}/{id}", "route.put"),
    ("GET", "/v1/routes/{kind}/{id}", "route.get"),
    ("DELETE", "/v1/routes/{kind}/{id}", "route.delete"),
    ("GET", "/v1/audit", "audit.list"),
    ("GET", "/v1/audit/verify", "audit.verify"),
    ("GET", "/v1/audit/checkpoint", "audit.checkpoint"),
    ("POST", "/v1/keys/rotate", "keys.rotate"),
    ("GET", "/v1/keys/status", "keys.status"),
    ("PUT", "/v1/log/level", "log.level"),
    ("GET", "/v1/users", "users.list"),
    ("GET", "/v1/openapi.json", "openapi"),
    ("GET", "/v1/stats", "stats"),
];

/// The endpoint `name` with its path parameters parsed (in template order).
fn build(name: &str, p: &[&str]) -> Result<Endpoint, PublicError> {
    let arg = |i: usize| p.get(i).copied().unwrap_or_default();
    Ok(match name {
        "tenants.list" => Endpoint::ListTenants,
        "tenant.delete" => Endpoint::DeleteTenant(tenant(arg(0))?),
        "credentials.list" => Endpoint::ListCredentials(tenant(arg(0))?),
        "credential.put" => Endpoint::PutCredential(tenant(arg(0))?, provider(arg(1))?),
        "credential.get" => Endpoint::GetCredential(tenant(arg(0))?, provider(arg(1))?),
        "credential.delete" => Endpoint::DeleteCredential(tenant(arg(0))?, provider(arg(1))?),
        "credential.restore" => Endpoint::RestoreCredential(tenant(arg(0))?, provider(arg(1))?),
        "credential.verify" => Endpoint::VerifyCredential(tenant(arg(0))?, provider(arg(1))?),
        "credential.callback_url" => Endpoint::CallbackUrl(tenant(arg(0))?, provider(arg(1))?),
        "oauth.start" => Endpoint::OAuthStart(tenant(arg(0))?, provider(arg(1))?),
        "route.put" | "route.get" | "route.delete" => {
            let (k, i) = route_pair(arg(0), arg(1))?;
            match name {
                "route.put" => Endpoint::PutRoute(k, i),
                "route.get" => Endpoint::GetRoute(k, i),
                _ => Endpoint::DeleteRoute(k, i),
            }
        }
        "audit.list" => Endpoint::Audit,
        "audit.verify" => Endpoint::AuditVerify,
        "audit.checkpoint" => Endpoint::AuditCheckpoint,
        "keys.rotate" => Endpoint::RotateKeys,
        "keys.status" => Endpoint::KeyStatus,
        "log.level" => Endpoint::SetLogLevel,
        "users.list" => Endpoint::Users,
        "openapi" => Endpoint::OpenApi,
        "tenant.routes" => Endpoint::TenantRoutes(tenant(arg(0))?),
        "stats" => Endpoint::Stats,
        other => return Err(PublicError::not_found(format!("no admin endpoint named {other}"))),
    })
}

/// Whether `path`'s segments fit `template`'s; the parameters if so.
fn fit<'a>(template: &str, segs: &[&'a str]) -> Option<Vec<&'a str>> {
    let want: Vec<&str> = template.split('/').skip(1).collect();
    if want.len() != segs.len() {
        return None;
    }
    let mut params = Vec::new();
    for (w, s) in want.iter().zip(segs) {
        if w.starts_with('{') {
            params.push(*s);
        } else if w != s {
            return None;
        }
    }
    Some(params)
}

/// Routes a request. Unknown paths answer 404, wrong methods 405, bad ids 400.
pub(crate) fn route(method: &Method, path: &str) -> Result<Endpoint, PublicError> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let mut allowed: Vec<&str> = Vec::new();
    for (m, template, name) in ROUTES {
        let Some(params) = fit(template, &segs) else { continue };
        if *m == method.as_str() {
            return build(name, &params);
        }
        allowed.push(m);
    }
    if allowed.is_empty() {
        return Err(PublicError::not_found(format!(
            "no admin endpoint at {}",
            path.chars().take(200).collect::<String>()
        )));
    }
    Err(PublicError::method_not_allowed(format!("{method} is not allowed here; use {}", allowed.join(" or "))))
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

#[cfg(test)]
mod table_tests {
    use super::*;

    #[test]
    fn every_table_entry_routes_to_its_name_and_other_methods_are_405() {
        for (m, template, name) in ROUTES {
            let path = template
                .replace("{tenant}", "acme")
                .replace("{provider}", "vapi")
                .replace("{kind}", "twilio-number")
                .replace("{id}", "AC123");
            let e = route(&Method::from_bytes(m.as_bytes()).unwrap(), &path).unwrap();
            assert_eq!(e.name(), *name, "{m} {template}");
            assert_eq!(route(&Method::PATCH, &path).unwrap_err().code, "method_not_allowed", "{template}");
        }
    }
}
