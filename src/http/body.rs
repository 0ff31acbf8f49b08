//! Body types and the one bounded read of a request body.

use bytes::Bytes;
use http::Request;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Limited};
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

/// The length a message's `Content-Length` declares, when it is a number.
pub(crate) fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Reads a whole request body of at most `limit` bytes into zeroized memory (admin bodies
/// carry secrets). A `Content-Length` over the limit is refused before reading. Chunks are
/// copied into one buffer sized from `Content-Length` (grown by moving into a new zeroized
/// buffer, never by `realloc`, which would leave the old bytes behind), and each chunk is
/// wiped when keyward holds its only reference.
pub(crate) async fn read_body<B>(req: Request<B>, limit: u64) -> Result<Zeroizing<Vec<u8>>, BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = content_length(req.headers());
    if declared.is_some_and(|len| len > limit) {
        return Err(BodyError::TooLarge(limit));
    }
    let cap = usize::try_from(declared.unwrap_or(0).min(limit)).unwrap_or(0);
    let mut out = Zeroizing::new(Vec::with_capacity(cap));
    let mut body = Limited::new(req.into_body(), usize::try_from(limit).unwrap_or(usize::MAX));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                BodyError::TooLarge(limit)
            } else {
                BodyError::Unreadable
            }
        })?;
        let Ok(data) = frame.into_data() else { continue };
        if out.len() + data.len() > out.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity((out.len() + data.len()).max(out.capacity() * 2)));
            bigger.extend_from_slice(&out);
            out = bigger;
        }
        out.extend_from_slice(&data);
        if let Ok(mut owned) = data.try_into_mut() {
            owned.as_mut().fill(0);
        }
    }
    Ok(out)
}
