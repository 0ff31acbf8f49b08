//! The one mapping from internal errors to an HTTP status and a public code
//! (CONTRACT.md §4–§6). Handlers never choose a status themselves; they return a
//! [`PublicError`] built here. Messages tell the caller what to fix and never carry a
//! secret: the errors they come from hold ids and reasons, not values.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::creds::CredError;
use crate::http::{BodyError, RouteError, UpstreamError};
use crate::live::LiveError;
use crate::oauth::connect::ConnectError;
use crate::oauth::AccessTokenError;
use crate::vault::VaultError;
use keyward_core::providers::OutboundError;
use keyward_store::StoreError;

/// An error as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublicError {
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
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        PublicError { retry_after: None, status, code, message: message.into() }
    }

    /// 400 `bad_request`.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 `not_found`.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405 `method_not_allowed`.
    pub(crate) fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message)
    }

    /// 413 `payload_too_large`.
    pub(crate) fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than the {limit}-byte limit"),
        )
    }

    /// 429 `rate_limited` with `Retry-After`.
    pub(crate) fn rate_limited(wait: std::time::Duration) -> Self {
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
    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
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

impl From<&StoreError> for PublicError {
    fn from(e: &StoreError) -> Self {
        let (status, message) = match e {
            StoreError::Conflict(_) | StoreError::TenantChanged(_) | StoreError::RouteTaken { .. } => {
                (StatusCode::CONFLICT, e.to_string())
            }
            StoreError::Unavailable(_) | StoreError::Locked(_) | StoreError::Directory { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the credential store is unavailable; retry, and check keyward's log".to_string(),
            ),
            StoreError::Tampered(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "a stored record failed its integrity check (the store was changed outside keyward); see keyward's log and run `keyward audit verify`".to_string(),
            ),
            StoreError::Corrupt(what) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{what} could not be decoded; run `keyward audit verify` and check the store"),
            ),
        };
        Self::new(status, e.code(), message)
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
            VaultError::KmsUnavailable(m) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "key_unavailable",
                format!("{m}; retry shortly (cached tenants keep working)"),
            ),
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "key handling failed; see keyward's log"),
        }
    }
}

impl From<&CredError> for PublicError {
    fn from(e: &CredError) -> Self {
        let status = match e {
            CredError::UnknownProvider(..) | CredError::NotFound { .. } | CredError::Deleted { .. } => {
                StatusCode::NOT_FOUND
            }
            CredError::Invalid(_) => StatusCode::BAD_REQUEST,
            CredError::NotDeleted { .. } => StatusCode::CONFLICT,
            CredError::Inactive { .. } | CredError::Revoked { .. } => StatusCode::FORBIDDEN,
            CredError::Store(s) => return s.into(),
            CredError::Vault(v) => return v.into(),
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<CredError> for PublicError {
    fn from(e: CredError) -> Self {
        (&e).into()
    }
}

impl From<BodyError> for PublicError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge(limit) => Self::too_large(limit),
            BodyError::Unreadable => Self::bad_request(e.to_string()),
        }
    }
}

impl From<RouteError> for PublicError {
    fn from(e: RouteError) -> Self {
        use RouteError as R;
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

impl From<AccessTokenError> for PublicError {
    fn from(e: AccessTokenError) -> Self {
        let status = match &e {
            AccessTokenError::Cred(c) => return c.into(),
            AccessTokenError::Revoked(_) => {
                return Self::new(StatusCode::FORBIDDEN, "credential_revoked", e.to_string())
            }
            AccessTokenError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            AccessTokenError::Failed(_) => StatusCode::BAD_GATEWAY,
        };
        let code = if status == StatusCode::GATEWAY_TIMEOUT { "upstream_timeout" } else { "upstream_connect_failed" };
        Self::new(status, code, e.to_string())
    }
}

impl From<ConnectError> for PublicError {
    fn from(e: ConnectError) -> Self {
        match &e {
            ConnectError::Cred(c) => c.into(),
            ConnectError::NoClientId | ConnectError::NotConnectable(_) => Self::bad_request(e.to_string()),
            ConnectError::TooMany => Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string()),
            ConnectError::Random => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
    }
}

impl From<LiveError> for PublicError {
    fn from(e: LiveError) -> Self {
        match &e {
            LiveError::UnknownProvider(_) => Self::new(StatusCode::NOT_FOUND, "unknown_provider", e.to_string()),
            LiveError::Cred(c) => c.into(),
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
    fn every_credential_error_answers_with_its_own_code() {
        let t = || "acme".to_string();
        let p = || "vapi".to_string();
        let cases = [
            CredError::UnknownProvider(p(), "vapi".into()),
            CredError::NotFound { tenant: t(), provider: p() },
            CredError::NotDeleted { tenant: t(), provider: p() },
            CredError::Store(StoreError::Conflict("x".into())),
            CredError::Store(StoreError::RouteTaken { kind: "k".into(), id: "i".into(), owner: "o".into() }),
            CredError::Store(StoreError::Unavailable("down".into())),
            CredError::Store(StoreError::Corrupt("x".into())),
        ];
        for e in cases {
            assert_eq!(PublicError::from(&e).code, e.code(), "{e:?}");
        }
    }

    #[test]
    fn store_outages_do_not_expose_internals() {
        let e = PublicError::from(&StoreError::Unavailable("io error at /var/lib/keyward/db: EIO".into()));
        assert_eq!(e.code, "store_unavailable");
        assert!(!e.message.contains("/var/lib"));
    }
}
