//! Body types and the one bounded read of a request body.

use bytes::Bytes;
use http::Request;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use zeroize::Zeroizing;

/// Errors carried by proxied bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response keyward relays.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why a request body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    /// Declared or sent larger than the limit.
    #[error("the body is larger than the {0}-byte limit")]
    TooLarge(u64),
    /// The connection failed or the framing was invalid.
    #[error("the request body could not be read")]
    Unreadable,
}

/// Reads a whole request body of at most `limit` bytes into zeroized memory (admin bodies
/// carry secrets). A `Content-Length` over the limit is refused before reading.
pub(crate) async fn read_body(req: Request<Incoming>, limit: u64) -> Result<Zeroizing<Vec<u8>>, BodyError> {
    if let Some(len) = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit {
            return Err(BodyError::TooLarge(limit));
        }
    }
    let limited = Limited::new(req.into_body(), usize::try_from(limit).unwrap_or(usize::MAX));
    let collected = limited.collect().await.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            BodyError::TooLarge(limit)
        } else {
            BodyError::Unreadable
        }
    })?;
    Ok(Zeroizing::new(collected.to_bytes().to_vec()))
}
