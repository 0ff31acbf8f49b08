//! Response scrubbing: when an upstream echoes the injected secret (an error message that
//! repeats the key, a debug endpoint that mirrors headers), the app sees it masked.
//!
//! keyward asks providers for `identity` encoding and refuses a compressed textual answer,
//! so every textual body (JSON, text, XML, forms) is scanned; audio and other binary
//! bodies stream untouched so the first chunk is never held back (their trailers are still
//! masked). Matches are replaced by `*` of the same length, so `Content-Length` stays true.
//! To catch a secret split across two chunks, the last `longest pattern − 1` bytes of each
//! chunk wait for the next one. Headers (`Location` included) and trailers are masked too.
//! WebSocket frames from the provider are relayed as they are: see docs/threat-model.md.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame};
use zeroize::Zeroizing;

pub(crate) use keyward_core::redact::mask;
use keyward_core::redact::{contains_any, ends_with_partial};

/// The byte strings a response is masked for: a credential's list, shared by its
/// requests, or one made for a request.
pub(crate) enum Patterns {
    /// The credential's ([`crate::creds::MadeInjection`]).
    Shared(Arc<[Zeroizing<Vec<u8>>]>),
    /// This request's.
    Own(Vec<Zeroizing<Vec<u8>>>),
}

impl Patterns {
    /// The list to add to (a shared one is copied first: the rare request that adds one).
    pub(crate) fn to_mut(&mut self) -> &mut Vec<Zeroizing<Vec<u8>>> {
        if let Patterns::Shared(shared) = self {
            *self = Patterns::Own(shared.to_vec());
        }
        match self {
            Patterns::Own(own) => own,
            Patterns::Shared(_) => unreachable!("made own above"),
        }
    }
}

impl std::ops::Deref for Patterns {
    type Target = [Zeroizing<Vec<u8>>];

    fn deref(&self) -> &Self::Target {
        match self {
            Patterns::Shared(shared) => shared,
            Patterns::Own(own) => own,
        }
    }
}

impl From<Vec<Zeroizing<Vec<u8>>>> for Patterns {
    fn from(own: Vec<Zeroizing<Vec<u8>>>) -> Self {
        Patterns::Own(own)
    }
}

/// Masks secrets in response header values. Returns how many headers were changed.
pub(crate) fn scrub_headers(headers: &mut HeaderMap, patterns: &[Zeroizing<Vec<u8>>]) -> usize {
    let mut changed = 0;
    // Searched in place first: a copy only for the (rare) value that echoes a secret.
    for v in headers.values_mut().filter(|v| contains_any(v.as_bytes(), patterns)) {
        let mut bytes = v.as_bytes().to_vec();
        if mask(&mut bytes, patterns) {
            if let Ok(nv) = HeaderValue::from_bytes(&bytes) {
                *v = nv;
                changed += 1;
            }
        }
    }
    changed
}

/// Whether the body is sent as it is (no content coding).
pub(crate) fn is_identity(headers: &HeaderMap) -> bool {
    headers.get(http::header::CONTENT_ENCODING).is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// Whether the body is text a secret could be echoed in.
pub(crate) fn is_textual(headers: &HeaderMap) -> bool {
    let has = |ct: &[u8], word: &[u8]| ct.windows(word.len()).any(|w| w.eq_ignore_ascii_case(word));
    headers.get(http::header::CONTENT_TYPE).is_none_or(|v| {
        let ct = v.as_bytes();
        ct.get(..5).is_some_and(|t| t.eq_ignore_ascii_case(b"text/"))
            || has(ct, b"json")
            || has(ct, b"xml")
            || has(ct, b"x-www-form-urlencoded")
            || has(ct, b"javascript")
    })
}

/// A body wrapper that masks secrets as the body streams.
pub(crate) struct Scrubbed<B> {
    inner: B,
    patterns: Patterns,
    carry: BytesMut,
    keep: usize,
    /// Whether data frames are scanned (text), or only trailers (binary).
    scan: bool,
    done: bool,
    trailers: Option<HeaderMap>,
}

impl<B> Scrubbed<B> {
    pub(crate) fn new(inner: B, patterns: Patterns, scan: bool) -> Self {
        let keep = patterns.iter().map(|p| p.len()).max().unwrap_or(1).saturating_sub(1);
        Scrubbed { inner, patterns, carry: BytesMut::new(), keep, scan, done: false, trailers: None }
    }
}

impl<B> Body for Scrubbed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if this.done {
                if !this.carry.is_empty() {
                    let rest = this.carry.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    mask(&mut this.carry, &this.patterns);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !this.scan => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    // Nothing held, nothing to mask and nothing that could continue into
                    // the next chunk: passed on as it came, without a copy (the usual case).
                    Ok(data)
                        if this.carry.is_empty()
                            && !contains_any(&data, &this.patterns)
                            && !ends_with_partial(&data, &this.patterns) =>
                    {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(data) => {
                        this.carry.extend_from_slice(&data);
                        mask(&mut this.carry, &this.patterns);
                        let emit = this.carry.len().saturating_sub(this.keep);
                        if emit > 0 {
                            let out = this.carry.split_to(emit).freeze();
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        // Trailers end the body: flush what is held, then send them masked.
                        this.done = true;
                        mask(&mut this.carry, &this.patterns);
                        this.trailers = frame.into_trailers().ok().map(|mut t| {
                            scrub_headers(&mut t, &this.patterns);
                            t
                        });
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.carry.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        // Masking keeps lengths, so the inner hint stays exact.
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn pats(p: &[&str]) -> Vec<Zeroizing<Vec<u8>>> {
        p.iter().map(|s| Zeroizing::new(s.as_bytes().to_vec())).collect()
    }

    #[test]
    fn every_occurrence_is_masked_with_the_same_length() {
        let mut b = b"key=sk-123 and again sk-123.".to_vec();
        assert!(mask(&mut b, &pats(&["sk-123"])));
        assert_eq!(b, b"key=****** and again ******.");
        let mut none = b"nothing here".to_vec();
        assert!(!mask(&mut none, &pats(&["sk-123"])));
    }

    #[tokio::test]
    async fn a_secret_split_across_chunks_is_still_masked() {
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            ["{\"error\":\"bad key sk-1", "23456 was rejected\"}"]
                .iter()
                .map(|s| Ok(Frame::data(Bytes::from(*s))))
                .collect();
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let out = Scrubbed::new(body, pats(&["sk-123456"]).into(), true).collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"{\"error\":\"bad key ********* was rejected\"}");
    }

    #[tokio::test]
    async fn a_secret_split_at_every_offset_and_into_every_three_parts_is_masked() {
        let text = "{\"error\":\"key sk-123456 refused; again: sk-123456\"}";
        let want = text.replace("sk-123456", "*********");
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = [&text[..i], &text[i..j], &text[j..]]
                    .iter()
                    .map(|s| Ok(Frame::data(Bytes::copy_from_slice(s.as_bytes()))))
                    .collect();
                let body = StreamBody::new(futures_util::stream::iter(chunks));
                let out = Scrubbed::new(body, pats(&["sk-123456"]).into(), true).collect().await.unwrap().to_bytes();
                assert_eq!(&out[..], want.as_bytes(), "split at {i} and {j}");
            }
        }
    }

    #[tokio::test]
    async fn trailers_are_masked_even_when_the_body_is_binary() {
        let mut t = HeaderMap::new();
        t.insert("x-debug", HeaderValue::from_static("used sk-123456"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            vec![Ok(Frame::data(Bytes::from_static(b"\x00audio sk-123456"))), Ok(Frame::trailers(t))];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let collected = Scrubbed::new(body, pats(&["sk-123456"]).into(), false).collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["x-debug"], "used *********");
        assert_eq!(&collected.to_bytes()[..], b"\x00audio sk-123456", "binary data streams untouched");
    }

    #[test]
    fn only_identity_text_bodies_are_scanned() {
        // As `phases::respond` decides it.
        let is_scannable = |h: &HeaderMap| is_identity(h) && is_textual(h);
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        assert!(is_scannable(&h));
        h.insert("content-encoding", HeaderValue::from_static("gzip"));
        assert!(!is_scannable(&h));
        let mut a = HeaderMap::new();
        a.insert("content-type", HeaderValue::from_static("audio/mpeg"));
        assert!(!is_scannable(&a));
    }

    #[test]
    fn header_values_are_masked() {
        let mut h = HeaderMap::new();
        h.insert("x-echo", HeaderValue::from_static("Bearer sk-123"));
        assert_eq!(scrub_headers(&mut h, &pats(&["sk-123"])), 1);
        assert_eq!(h["x-echo"], "Bearer ******");
    }
}
