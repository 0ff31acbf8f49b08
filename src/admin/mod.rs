//! Admin API (CONTRACT.md §6) on the admin socket, or admin TCP with a bearer token.
//!
//! Route table (all JSON):
//!
//! | method | path | handler |
//! | --- | --- | --- |
//! | GET | /v1/tenants?after=&limit= | tenant ids, paginated |
//! | DELETE | /v1/tenants/{t} | soft-delete every credential of a tenant |
//! | GET | /v1/tenants/{t}/credentials?include_deleted= | status objects |
//! | PUT GET DELETE | /v1/tenants/{t}/credentials/{p} | create/replace (`?verify=true`), status, soft delete |
//! | POST | /v1/tenants/{t}/credentials/{p}/restore | undo a soft delete |
//! | POST | /v1/tenants/{t}/credentials/{p}/verify | live check, then route discovery |
//! | POST | /v1/tenants/{t}/credentials/{p}/callback-url | the URL to configure at the provider |
//! | POST | /v1/tenants/{t}/oauth/{p}/start | authorization URL of an OAuth provider's connect flow |
//! | PUT GET DELETE | /v1/routes/{kind}/{id} | routing index |
//! | GET | /v1/audit?after=&limit= | audit entries |
//! | GET | /v1/audit/verify | chain check |
//! | POST | /v1/keys/rotate?limit= | re-wrap tenant keys under the active master key |
//! | GET | /v1/keys/status | tenant keys per wrapping source and key version |
//! | PUT | /v1/log/level | change the log filter at run time |
//! | GET | /v1/users | the named operators and their roles (admin) |
//!
//! Authorisation: on the Unix socket (mode 0600) the peer uid must be keyward's own or
//! root (role admin); on TCP a bearer token — the `token_file`'s (admin) or a named
//! user's (`[[admin.users]]`, its role) — compared as SHA-256 digests in constant time. A
//! request beyond the role answers 403 `forbidden_role` and is audited. Handlers go
//! through `creds`, never the store.

mod handlers;
mod openapi;
pub(crate) mod roles;
mod router;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use roles::{principal_for_token, AdminUser, Principal, Role};

use crate::creds::Credentials;
use crate::error::PublicError;
use crate::listen::Peer;
use crate::telemetry::LogHandle;

/// A request body the admin handlers read: the connection's, or one the console builds.
pub(crate) type AdminBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Largest admin request body.
pub(crate) const MAX_ADMIN_BODY: u64 = 64 * 1024;

/// Shared state of the admin listener.
#[derive(Debug)]
pub(crate) struct AdminState {
    /// The credential service.
    pub creds: Arc<Credentials>,
    /// Run-time log level control.
    pub log: LogHandle,
    /// SHA-256 of the admin TCP bearer token (`token_file`, role admin).
    pub token_digest: Option<[u8; 32]>,
    /// `[[admin.users]]`
    pub users: Arc<Vec<AdminUser>>,
    /// The daemon's counters, for `GET /v1/stats`.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Live checks and route discovery.
    pub live: Arc<crate::live::Live>,
    /// Google tokens (revocation on delete).
    pub tokens: Arc<crate::oauth::TokenManager>,
    /// Pending Google connect flows.
    pub connect: Arc<crate::oauth::connect::ConnectFlows>,
    /// `webhooks.public_base_url`, where the OAuth callback lives.
    pub public_base_url: Option<url::Url>,
    /// `verification.discover_routes`
    pub discover_routes: bool,
}

impl AdminState {
    /// Who is asking, or why they may not.
    fn authorize(&self, peer: &Peer, req: &Request<Incoming>) -> Result<Principal, PublicError> {
        match peer {
            Peer::Unix { uid, .. } => {
                let me = rustix::process::geteuid().as_raw();
                if *uid == me || *uid == 0 {
                    // The socket's uid rule is the admin's (CONTRACT.md §8.2).
                    Ok(Principal { actor: format!("uid:{uid}"), role: Role::Admin })
                } else {
                    Err(PublicError::new(
                        http::StatusCode::FORBIDDEN,
                        "forbidden",
                        format!("uid {uid} may not use the admin socket; run the CLI as uid {me} or root"),
                    ))
                }
            }
            Peer::Tcp { addr, .. } => {
                if self.token_digest.is_none() && self.users.is_empty() {
                    return Err(PublicError::new(
                        http::StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "admin TCP has no token configured",
                    ));
                }
                let given = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .ok_or_else(|| {
                        PublicError::new(
                            http::StatusCode::UNAUTHORIZED,
                            "unauthorized",
                            "send Authorization: Bearer <admin token>",
                        )
                    })?;
                principal_for_token(given, &self.users, self.token_digest.as_ref(), addr.ip()).ok_or_else(|| {
                    PublicError::new(
                        http::StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "the admin token is not valid (not the token_file's, nor any [[admin.users]] entry's)",
                    )
                })
            }
        }
    }
}

/// Handles one admin request.
pub(crate) async fn handle(
    state: Arc<AdminState>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let (resp, route) = match state.authorize(&peer, &req) {
        Err(e) => (e.into_response(), "unauthorized"),
        Ok(who) => {
            let req =
                req.map(|b| http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(b, Into::into)));
            api(&state, &who, req).await
        }
    };
    tracing::info!(
        listener = "admin",
        method = %method,
        route,
        status = resp.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "admin request"
    );
    Ok(resp)
}

/// Routes and answers one admin API request for `who`: the role check (a refusal is
/// `403 forbidden_role`, audited), then the handler. The console goes through here too, so
/// it can do nothing the API cannot.
pub(crate) async fn api(
    state: &AdminState,
    who: &Principal,
    req: Request<AdminBody>,
) -> (Response<Full<Bytes>>, &'static str) {
    match router::route(req.method(), req.uri().path()) {
        Err(e) => (e.into_response(), "unrouted"),
        Ok(route) if who.role < route.role() => {
            let name = route.name();
            let (tenant, provider) = route.subject();
            state.creds.audit_failure(&who.actor, name, tenant, provider, "forbidden_role").await;
            let e = PublicError::new(
                http::StatusCode::FORBIDDEN,
                "forbidden_role",
                format!(
                    "{} has the role {}; {name} needs {} (an admin changes roles in [[admin.users]])",
                    who.actor,
                    who.role,
                    route.role()
                ),
            );
            (e.into_response(), name)
        }
        Ok(route) => {
            let name = route.name();
            (handlers::dispatch(state, who, route, req).await, name)
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Unix socket (mode 0600).
    pub unix: Option<PathBuf>,
    /// TCP address, bearer token required.
    pub tcp: Option<SocketAddr>,
    /// File with the bearer token for `tcp`.
    pub token_file: Option<PathBuf>,
    /// Server certificate for `tcp` (required off loopback).
    pub tls: Option<crate::tls::TlsFiles>,
    /// Named operators and their roles.
    pub users: Vec<AdminUser>,
    /// Serve the web console at `/console/` on `tcp`.
    pub console: bool,
}

/// The admin router, for `fuzz/`.
pub(crate) fn fuzz_route(method: &http::Method, path: &str) -> bool {
    router::route(method, path).is_ok()
}
