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
//! | POST | /v1/tenants/{t}/oauth/google/start | authorization URL of the Google connect flow |
//! | PUT GET DELETE | /v1/routes/{kind}/{id} | routing index |
//! | GET | /v1/audit?after=&limit= | audit entries |
//! | GET | /v1/audit/verify | chain check |
//! | POST | /v1/keys/rotate?limit= | re-wrap tenant keys under the active master key |
//! | GET | /v1/keys/status | tenant keys per wrapping source and key version |
//! | PUT | /v1/log/level | change the log filter at run time |
//!
//! Authorisation: on the Unix socket (mode 0600) the peer uid must be keyward's own or
//! root; on TCP a bearer token, compared as SHA-256 digests in constant time. Handlers go
//! through `creds`, never the store.

mod handlers;
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
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::creds::Credentials;
use crate::error::PublicError;
use crate::listen::Peer;
use crate::telemetry::LogHandle;

/// Largest admin request body.
pub(crate) const MAX_ADMIN_BODY: u64 = 64 * 1024;

/// Shared state of the admin listener.
#[derive(Debug)]
pub(crate) struct AdminState {
    /// The credential service.
    pub creds: Arc<Credentials>,
    /// Run-time log level control.
    pub log: LogHandle,
    /// SHA-256 of the admin TCP bearer token.
    pub token_digest: Option<[u8; 32]>,
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
    fn authorize(&self, peer: &Peer, req: &Request<Incoming>) -> Result<String, PublicError> {
        match peer {
            Peer::Unix { uid, .. } => {
                let me = rustix::process::geteuid().as_raw();
                if *uid == me || *uid == 0 {
                    Ok(format!("uid:{uid}"))
                } else {
                    Err(PublicError::new(
                        http::StatusCode::FORBIDDEN,
                        "forbidden",
                        format!("uid {uid} may not use the admin socket; run the CLI as uid {me} or root"),
                    ))
                }
            }
            Peer::Tcp { addr, .. } => {
                let expected = self.token_digest.ok_or_else(|| {
                    PublicError::new(
                        http::StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "admin TCP has no token configured",
                    )
                })?;
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
                let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
                if bool::from(digest.ct_eq(&expected)) {
                    Ok(format!("token:{}@{}", hex::encode(&expected[..4]), addr.ip()))
                } else {
                    Err(PublicError::new(
                        http::StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "the admin token is not valid",
                    ))
                }
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
        Ok(actor) => match router::route(&method, req.uri().path()) {
            Err(e) => (e.into_response(), "unrouted"),
            Ok(route) => {
                let name = route.name();
                (handlers::dispatch(&state, &actor, route, req).await, name)
            }
        },
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
}

/// The admin router, for `fuzz/`.
pub(crate) fn fuzz_route(method: &http::Method, path: &str) -> bool {
    router::route(method, path).is_ok()
}
