//! A request on a shared HTTP/2 connection, spoken with the h2 crate directly.
//!
//! Why not hyper's HTTP/2 client: it hands each request through a channel to the
//! connection's task, which spawns a task of its own per request to await the response and
//! send it back through a second channel. Here the request's own task opens the stream and
//! awaits the response head; the connection's task (`Pool::share`) only does the
//! connection's I/O. A request body, when there is one, is streamed by a task of its own, as
//! hyper does, so that the response can come back while the body is still going out.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::body::{content_length, BoxError, ProxyBody};

/// The sending half every request to one host clones.
pub(crate) type Sender = h2::client::SendRequest<Bytes>;
/// The connection's I/O, driven by a task of its own.
pub(crate) type Driver<T> = h2::client::Connection<T, Bytes>;

/// hyper's client defaults (the spec's 64 KiB windows are small for a provider's answer).
const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const MAX_FRAME: u32 = 16 * 1024;
const MAX_SEND_BUF: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// The HTTP/2 handshake on a connection whose TLS chose `h2`.
pub(crate) async fn handshake<T>(io: T) -> Result<(Sender, Driver<T>), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(MAX_SEND_BUF)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false)
        .handshake(io)
        .await
}

/// The connection's I/O, polled one turn after each wake-up: a request's task that queues a
/// frame wakes the connection's task, which tokio runs right after it (its LIFO slot), so
/// each request's frame went out in a write of its own. Going to the back of the run queue
/// once lets every request ready now queue its frame first: one write carries them all
/// (1.9 `writev` per request at saturation otherwise, against 1.06 with hyper's client:
/// docs/benchmarks.md).
pub(crate) struct Batched<T> {
    conn: Driver<T>,
    yielded: bool,
}

impl<T> Batched<T> {
    pub(crate) fn new(conn: Driver<T>) -> Self {
        Batched { conn, yielded: false }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Future for Batched<T> {
    type Output = Result<(), h2::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.yielded {
            self.yielded = true;
            // A task that wakes itself is put at the back of the queue, not in the LIFO slot.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.yielded = false;
        Pin::new(&mut self.conn).poll(cx)
    }
}

/// Why a request got no response on the connection.
#[allow(clippy::large_enum_variant)] // a return value, never stored: boxing would only add an allocation
pub(crate) enum Refused {
    /// The connection is closing; the request was not sent and comes back.
    Closing(h2::Error, Request<ProxyBody>),
    /// Sent (or refused while being sent): not to be sent again.
    Failed(h2::Error),
}

/// Sends `req` (absolute URI) and waits for the response head.
///
/// Not an `async fn`, for the reason `proxy::handle` gives: the request would be kept twice
/// in the future.
#[allow(clippy::manual_async_fn)] // on purpose, as said above
pub(crate) fn send(
    mut sender: Sender,
    req: Request<ProxyBody>,
) -> impl Future<Output = Result<Response<H2Body>, Refused>> {
    async move {
        if let Err(e) = std::future::poll_fn(|cx| sender.poll_ready(cx)).await {
            return Err(Refused::Closing(e, req));
        }
        // A block of its own: the parts are gone once sent, and a binding that lived to the
        // end of the function would keep their 224 bytes in the future while it waits.
        let (response, stream, body, eos) = {
            let (mut parts, body) = req.into_parts();
            // HTTP/2 has no place for hop-by-hop headers (RFC 9113 §8.2.2) and h2 refuses a
            // request carrying one. The proxy has stripped them already, so this finds none.
            super::headers::strip_hop_by_hop(&mut parts.headers);
            if let Some(len) = body.size_hint().exact() {
                if (len != 0 || has_payload_semantics(&parts.method))
                    && !parts.headers.contains_key(header::CONTENT_LENGTH)
                {
                    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                }
            }
            let eos = body.is_end_stream();
            let (response, stream) =
                sender.send_request(Request::from_parts(parts, ()), eos).map_err(Refused::Failed)?;
            (response, stream, body, eos)
        };
        let mut cancel = None;
        if !eos {
            let (tx, rx) = oneshot::channel();
            cancel = Some(CancelOnDrop(Some(tx)));
            tokio::spawn(pipe(body, stream, rx));
        }
        let resp = response.await.map_err(Refused::Failed)?;
        // The head came: a body still going out goes on.
        if let Some(mut c) = cancel {
            c.0 = None;
        }
        let remaining = content_length(resp.headers());
        Ok(resp.map(|recv| H2Body { recv, remaining, data_done: false }))
    }
}

/// Methods whose requests may carry a body by definition (an empty one then gets
/// `Content-Length: 0`, as hyper does).
fn has_payload_semantics(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT)
}

/// Tells the body's task to reset the stream when the request is given up (a timeout, the
/// app went away) before the response head came.
struct CancelOnDrop(Option<oneshot::Sender<()>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Resolves when the request was given up; never once its response head came (the sender
/// is then dropped without a word).
struct GivenUp(Option<oneshot::Receiver<()>>);

impl GivenUp {
    async fn wait(&mut self) {
        if let Some(rx) = self.0.as_mut() {
            if rx.await.is_ok() {
                return;
            }
            self.0 = None;
        }
        std::future::pending::<()>().await
    }
}

/// Streams a request body onto its HTTP/2 stream within the provider's flow-control window.
async fn pipe(mut body: ProxyBody, mut stream: h2::SendStream<Bytes>, cancel: oneshot::Receiver<()>) {
    let mut given_up = GivenUp(Some(cancel));
    loop {
        let frame = tokio::select! {
            biased;
            _ = given_up.wait() => {
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
            // The provider reset the stream: the rest of the body has nowhere to go.
            _ = std::future::poll_fn(|cx| stream.poll_reset(cx)) => return,
            f = body.frame() => f,
        };
        let mut data = match frame {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "the request body failed; the stream is reset");
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        let _ = stream.send_trailers(t);
                    }
                    return;
                }
            },
        };
        while !data.is_empty() {
            stream.reserve_capacity(data.len());
            let granted = tokio::select! {
                biased;
                _ = given_up.wait() => {
                    stream.send_reset(h2::Reason::CANCEL);
                    return;
                }
                c = std::future::poll_fn(|cx| stream.poll_capacity(cx)) => c,
            };
            let n = match granted {
                Some(Ok(n)) => n,
                // Reset or closed by the provider.
                _ => return,
            };
            if n == 0 {
                continue;
            }
            let chunk = data.split_to(n.min(data.len()));
            let last = data.is_empty() && body.is_end_stream();
            if stream.send_data(chunk, last).is_err() || last {
                return;
            }
        }
    }
}

/// A response body read off its HTTP/2 stream, its window handed back as it is read.
pub(crate) struct H2Body {
    recv: h2::RecvStream,
    /// From `Content-Length`, less what was read (h2 checks the two agree).
    remaining: Option<u64>,
    data_done: bool,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.data_done {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(r) = this.remaining.as_mut() {
                        *r = r.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(ended(e)),
                None => this.data_done = true,
            }
        }
        match std::task::ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(ended(e)),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining.map(SizeHint::with_exact).unwrap_or_default()
    }
}

/// A stream the provider closed with `NO_ERROR` or `CANCEL` after the response ends the
/// body, as hyper reads it; any other reset is an error.
fn ended(e: h2::Error) -> Option<Result<Frame<Bytes>, BoxError>> {
    match e.reason() {
        Some(h2::Reason::NO_ERROR) | Some(h2::Reason::CANCEL) => None,
        _ => Some(Err(Box::new(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_gets_no_content_length_a_post_does() {
        assert!(!has_payload_semantics(&Method::GET));
        assert!(has_payload_semantics(&Method::POST));
    }
}
