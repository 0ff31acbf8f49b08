//! The one mapping from internal errors to an HTTP status and a public code
//! (CONTRACT.md §4–§6). Handlers never choose a status themselves; they return a
//! [`PublicError`] built here. Messages tell the caller what to fix and never carry a
//! secret: the errors they come from hold ids and reasons, not values.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::creds::CredError;
use crate::proxy::UpstreamError;
use crate::vault::VaultError;
use keyward_core::providers::OutboundError;
use keyward_store::StoreError;

/// An error as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What happened and what to do.
    pub message: String,
    /// Seconds for a `Retry-After` header (rate limiting).
    pub retry_after: Option<u64>,
}

impl PublicError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        PublicError { retry_after: None, status, code, message: message.into() }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message)
    }

    /// 413 `payload_too_large`.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than the {limit}-byte limit"),
        )
    }

    /// 429 `rate_limited` with `Retry-After`.
    pub fn rate_limited(wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("this tenant's rate limit for the provider is exhausted; retry in {secs} s"),
        );
        e.retry_after = Some(secs.max(1));
        e
    }

    /// The JSON error response: `{"error":{"code","message"}}` plus `Keyward-Error`.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp.headers_mut().insert("keyward-error", HeaderValue::from_static(self.code));
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The public code of a credential-layer error (also used in audit results).
pub fn cred_code(e: &CredError) -> &'static str {
    PublicError::from(e).code
}

impl From<&StoreError> for PublicError {
    fn from(e: &StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            StoreError::RouteTaken { .. } => Self::new(StatusCode::CONFLICT, "route_taken", e.to_string()),
            StoreError::Unavailable(_) | StoreError::Locked(_) | StoreError::Directory { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the credential store is unavailable; retry, and check keyward's log",
            ),
            StoreError::Corrupt(what) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("{what} could not be decoded; run `keyward audit verify` and check the store"),
            ),
        }
    }
}

impl From<&VaultError> for PublicError {
    fn from(e: &VaultError) -> Self {
        match e {
            VaultError::UnknownKey(_) | VaultError::Integrity(_) | VaultError::Malformed(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "a stored record failed its integrity check (wrong key, or the store was altered); see keyward's log",
            ),
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "key handling failed; see keyward's log"),
        }
    }
}

impl From<&CredError> for PublicError {
    fn from(e: &CredError) -> Self {
        match e {
            CredError::UnknownProvider(..) => Self::new(StatusCode::NOT_FOUND, "unknown_provider", e.to_string()),
            CredError::Invalid(_) => Self::new(StatusCode::BAD_REQUEST, "invalid_credential", e.to_string()),
            CredError::NotFound { .. } | CredError::Deleted { .. } => {
                Self::new(StatusCode::NOT_FOUND, "no_credential", e.to_string())
            }
            CredError::NotDeleted { .. } => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            CredError::Inactive { .. } => Self::new(StatusCode::FORBIDDEN, "credential_inactive", e.to_string()),
            CredError::Revoked { .. } => Self::new(StatusCode::FORBIDDEN, "credential_revoked", e.to_string()),
            CredError::Store(s) => s.into(),
            CredError::Vault(v) => v.into(),
        }
    }
}

impl From<CredError> for PublicError {
    fn from(e: CredError) -> Self {
        (&e).into()
    }
}

impl From<crate::proxy::RouteError> for PublicError {
    fn from(e: crate::proxy::RouteError) -> Self {
        use crate::proxy::RouteError as R;
        match &e {
            R::BadRequest(_) => Self::bad_request(e.to_string()),
            R::UnknownProvider(_) => Self::new(StatusCode::NOT_FOUND, "unknown_provider", e.to_string()),
            R::HostNotAllowed(_) => Self::new(StatusCode::FORBIDDEN, "host_not_allowed", e.to_string()),
        }
    }
}

impl From<OutboundError> for PublicError {
    fn from(e: OutboundError) -> Self {
        match &e {
            OutboundError::HostNotAllowed(_) => Self::new(StatusCode::FORBIDDEN, "host_not_allowed", e.to_string()),
            OutboundError::AccountMismatch { .. } => {
                Self::new(StatusCode::FORBIDDEN, "account_mismatch", e.to_string())
            }
            OutboundError::MissingField(_) => Self::new(StatusCode::FORBIDDEN, "no_credential", e.to_string()),
            OutboundError::NoToken => Self::new(
                StatusCode::FORBIDDEN,
                "no_credential",
                "Google calls need an access token, and no token manager is running for this tenant",
            ),
        }
    }
}

impl From<UpstreamError> for PublicError {
    fn from(e: UpstreamError) -> Self {
        match &e {
            UpstreamError::Connect(_) => Self::new(StatusCode::BAD_GATEWAY, "upstream_connect_failed", e.to_string()),
            UpstreamError::Tls(_) => Self::new(StatusCode::BAD_GATEWAY, "upstream_tls", e.to_string()),
            UpstreamError::Timeout(_) => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", format!("the provider did not answer: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_carry_the_code_in_body_and_header() {
        let r = PublicError::bad_request("tenant id must match").into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()["keyward-error"], "bad_request");
    }

    #[test]
    fn store_outages_do_not_expose_internals() {
        let e = PublicError::from(&StoreError::Unavailable("io error at /var/lib/keyward/db: EIO".into()));
        assert_eq!(e.code, "store_unavailable");
        assert!(!e.message.contains("/var/lib"));
    }
}
