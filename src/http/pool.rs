//! HTTP/1.1 keep-alive connections to the few hosts a sidecar talks to, each driven inside
//! the task of the request that holds it.
//!
//! Why not hyper-util's pooled client: it runs every connection as a task of its own, so a
//! request crosses tasks twice (request in, response out) and its body once per chunk, and
//! each checkout builds a pool key and takes a global lock with many hosts in mind. Here a
//! request takes an idle connection (a short lock over a list of a handful of hosts), drives
//! it itself until the response head, and hands it on inside the response body, which drives
//! it while the app reads and puts it back when the body ends. nginx's upstream keep-alive
//! is the model; bench/run measures the difference (docs/benchmarks.md).

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::body::ProxyBody;

/// Idle connections kept per host at most; more are closed when they come back.
const MAX_IDLE_PER_HOST: usize = 256;

/// How a pool reaches its hosts.
#[derive(Clone)]
pub(crate) enum Dial {
    /// TCP, with TLS for `https` when there is a connector, plain for `http` when
    /// `allow_http`.
    Net { tls: Option<tokio_rustls::TlsConnector>, allow_http: bool },
    /// One Unix socket whatever the URI names (the webhook app behind `forward_to`).
    Unix(Arc<PathBuf>),
}

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum PoolError {
    /// Resolving, TCP or the Unix socket failed.
    Connect(io::Error),
    /// No connection within the connect timeout.
    ConnectTimeout,
    /// The TLS handshake failed.
    Tls(io::Error),
    /// The URI has no host, or a scheme the pool does not carry.
    BadTarget(&'static str),
    /// The connection broke or the answer was not HTTP.
    Http(hyper::Error),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Connect(e) | PoolError::Tls(e) => write!(f, "{e}"),
            PoolError::ConnectTimeout => f.write_str("timed out"),
            PoolError::BadTarget(why) => f.write_str(why),
            PoolError::Http(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PoolError::Connect(e) | PoolError::Tls(e) => Some(e),
            PoolError::Http(e) => Some(e),
            _ => None,
        }
    }
}

/// A failed request and the `host:port` it was for.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) error: PoolError,
    pub(crate) target: String,
}

/// One pool of keep-alive connections; cheap to clone.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    dial: Dial,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// A handful of hosts: a list scanned under a short lock beats hashing a key.
    idle: Mutex<Vec<HostIdle>>,
}

struct HostIdle {
    key: Key,
    /// Oldest first; checkout takes the newest (warmest).
    conns: Vec<(Box<Conn>, Instant)>,
}

/// Where a connection goes.
#[derive(Clone, PartialEq, Eq)]
struct Key {
    tls: bool,
    host: String,
    port: u16,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Key {
    fn of(uri: &Uri) -> Result<Key, PoolError> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(PoolError::BadTarget("the URI has no http or https scheme")),
        };
        let host = uri.host().ok_or(PoolError::BadTarget("the URI has no host"))?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        Ok(Key { tls, host: host.to_string(), port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }) })
    }

    fn matches(&self, tls: bool, host: &str, port: u16) -> bool {
        self.tls == tls && self.port == port && self.host == host
    }
}

/// A connection: the handle requests go in by, and the state machine that does its I/O,
/// which whoever holds the connection polls.
struct Conn {
    send: http1::SendRequest<ProxyBody>,
    driver: http1::Connection<TokioIo<Stream>, ProxyBody>,
    /// The driver finished (the peer closed, or `Connection: close`): never reused.
    done: bool,
}

impl Conn {
    /// Polls the driver; true while the connection can still carry requests.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.done && Pin::new(&mut self.driver).poll(cx).is_ready() {
            self.done = true;
        }
        !self.done
    }

    /// Idle and alive: the previous exchange is over and the peer has not closed.
    fn reusable(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && self.send.is_ready()
    }
}

impl Pool {
    pub(crate) fn new(dial: Dial, connect_timeout: Duration, idle_timeout: Duration) -> Pool {
        Pool { inner: Arc::new(Inner { dial, connect_timeout, idle_timeout, idle: Mutex::new(Vec::new()) }) }
    }

    /// Sends `req` (absolute URI) on an idle connection to its host, or a new one, and
    /// waits for the response head. A request that an idle connection turned out unable to
    /// take (the peer had closed it) goes once more on a new connection.
    pub(crate) async fn send(&self, req: Request<ProxyBody>) -> Result<Response<PooledBody>, Failed> {
        let key = Key::of(req.uri()).map_err(|error| Failed { error, target: "the provider".into() })?;
        self.send_to(key, req).await.map_err(|(error, key)| Failed { error, target: key.to_string() })
    }

    async fn send_to(&self, key: Key, req: Request<ProxyBody>) -> Result<Response<PooledBody>, (PoolError, Key)> {
        let mut req = origin_form(req);
        let mut reused = self.checkout(&key).await;
        loop {
            let fresh = reused.is_none();
            let mut conn = match reused.take() {
                Some(c) => c,
                None => match self.connect(&key).await {
                    Ok(c) => c,
                    Err(e) => return Err((e, key)),
                },
            };
            let mut sending = std::pin::pin!(conn.send.try_send_request(req));
            let outcome = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = sending.as_mut().poll(cx) {
                    return Poll::Ready(r);
                }
                // Writes the request and reads the head; when it finishes early, `sending`
                // resolves with the reason on the next poll.
                if !conn.drive(cx) {
                    return sending.as_mut().poll(cx);
                }
                Poll::Pending
            })
            .await;
            match outcome {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let mut pooled = PooledBody { body, conn: Some(conn), key: Some(key), pool: self.clone() };
                    if pooled.body.is_end_stream() {
                        pooled.release();
                    }
                    return Ok(Response::from_parts(parts, pooled));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: a closed idle connection; a new one may take it.
                    Some(back) if !fresh => req = back,
                    _ => return Err((PoolError::Http(e.into_error()), key)),
                },
            }
        }
    }

    /// The newest idle connection to `key` that is still usable; stale ones are closed.
    async fn checkout(&self, key: &Key) -> Option<Box<Conn>> {
        loop {
            let (conn, since) = {
                let mut idle = self.inner.idle.lock().ok()?;
                let host = idle.iter_mut().find(|h| h.key.matches(key.tls, &key.host, key.port))?;
                host.conns.pop()?
            };
            if since.elapsed() >= self.inner.idle_timeout {
                continue;
            }
            let mut conn = conn;
            // One poll: reads a close the peer sent while the connection sat idle.
            if std::future::poll_fn(|cx| Poll::Ready(conn.reusable(cx))).await {
                return Some(conn);
            }
        }
    }

    fn checkin(&self, key: Key, conn: Box<Conn>) {
        let Ok(mut idle) = self.inner.idle.lock() else { return };
        let now = Instant::now();
        let at = match idle.iter().position(|h| h.key == key) {
            Some(i) => i,
            None => {
                idle.push(HostIdle { key, conns: Vec::new() });
                idle.len() - 1
            }
        };
        let conns = &mut idle[at].conns;
        // Oldest first: drop what timed out and what exceeds the cap.
        let stale = conns.iter().take_while(|(_, t)| now.duration_since(*t) >= self.inner.idle_timeout).count();
        let over = (conns.len() - stale + 1).saturating_sub(MAX_IDLE_PER_HOST);
        conns.drain(..stale + over);
        conns.push((conn, now));
    }

    // Boxed once here and kept boxed through every checkout: a response body carries it.
    async fn connect(&self, key: &Key) -> Result<Box<Conn>, PoolError> {
        let stream = tokio::time::timeout(self.inner.connect_timeout, self.dial(key))
            .await
            .map_err(|_| PoolError::ConnectTimeout)??;
        let (send, driver) = http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(PoolError::Http)?;
        Ok(Box::new(Conn { send, driver, done: false }))
    }

    async fn dial(&self, key: &Key) -> Result<Stream, PoolError> {
        match &self.inner.dial {
            Dial::Unix(path) => Ok(Stream::Unix(UnixStream::connect(&**path).await.map_err(PoolError::Connect)?)),
            Dial::Net { tls, allow_http } => {
                if !key.tls && !allow_http {
                    return Err(PoolError::BadTarget("plain http upstreams are not allowed"));
                }
                if key.tls && tls.is_none() {
                    return Err(PoolError::BadTarget("https is not carried here"));
                }
                let tcp = TcpStream::connect((key.host.as_str(), key.port)).await.map_err(PoolError::Connect)?;
                tcp.set_nodelay(true).map_err(PoolError::Connect)?;
                let sock = socket2::SockRef::from(&tcp);
                let _ = sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)));
                let Some(tls) = tls.as_ref().filter(|_| key.tls) else { return Ok(Stream::Tcp(tcp)) };
                let name = rustls::pki_types::ServerName::try_from(key.host.clone())
                    .map_err(|_| PoolError::BadTarget("the host is not a valid TLS server name"))?;
                let tls = tls.connect(name, tcp).await.map_err(PoolError::Tls)?;
                Ok(Stream::Tls(Box::new(tls)))
            }
        }
    }
}

/// HTTP/1.1 on the wire: the request line carries the path and query only, and the
/// authority goes in `Host` (added unless the request has one), as hyper-util's client and
/// every browser do; some servers refuse the absolute form.
fn origin_form(req: Request<ProxyBody>) -> Request<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    if let Some(authority) = uri.authority.take() {
        if !parts.headers.contains_key(http::header::HOST) {
            let default = match uri.scheme.as_ref().map(|s| s.as_str()) {
                Some("https") => 443,
                _ => 80,
            };
            let host = if authority.port_u16() == Some(default) { authority.host() } else { authority.as_str() };
            if let Ok(v) = http::HeaderValue::from_str(host) {
                parts.headers.insert(http::header::HOST, v);
            }
        }
    }
    uri.scheme = None;
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
    Request::from_parts(parts, body)
}

/// A response body that drives its connection while it is read and returns it to the
/// pool when it ends; dropped early, it closes the connection (the rest of the answer
/// would still be on it).
pub(crate) struct PooledBody {
    body: Incoming,
    conn: Option<Box<Conn>>,
    key: Option<Key>,
    pool: Pool,
}

impl PooledBody {
    fn release(&mut self) {
        if let (Some(conn), Some(key)) = (self.conn.take(), self.key.take()) {
            if !conn.done {
                self.pool.checkin(key, conn);
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(conn) = &mut this.conn {
            // Reads the next chunk into the body's channel (or learns the peer closed).
            conn.drive(cx);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The transports a pooled connection runs over.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Empty, Full};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;
    use crate::http::BoxError;

    /// A plain-HTTP server that counts the connections it accepted; `close_after` makes it
    /// answer `Connection: close` to every request when set.
    async fn server(close: bool, body_len: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| async move {
                        // What an HTTP/1.1 server may insist on: origin-form and a Host.
                        assert!(req.uri().scheme().is_none() && req.uri().authority().is_none(), "{}", req.uri());
                        let host = req.headers().get(http::header::HOST).map(|h| h.to_str().unwrap().to_string());
                        assert_eq!(host, Some(addr.to_string()));
                        let got = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                        let mut resp = Response::new(Full::new(Bytes::from(vec![b'x'; body_len + got])));
                        if close {
                            resp.headers_mut().insert(http::header::CONNECTION, "close".parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
        });
        (format!("http://{addr}"), accepted)
    }

    fn pool() -> Pool {
        Pool::new(Dial::Net { tls: None, allow_http: true }, Duration::from_secs(2), Duration::from_secs(30))
    }

    fn get(url: &str) -> Request<ProxyBody> {
        let mut r = Request::new(Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync());
        *r.uri_mut() = url.parse().unwrap();
        r
    }

    async fn read(resp: Response<PooledBody>) -> usize {
        resp.into_body().collect().await.unwrap().to_bytes().len()
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let (url, accepted) = server(false, 3000).await;
        let pool = pool();
        for _ in 0..20 {
            assert_eq!(read(pool.send(get(&format!("{url}/a"))).await.unwrap()).await, 3000);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // A POST body goes up on the same connection.
        let mut post = get(&format!("{url}/b"));
        *post.method_mut() = http::Method::POST;
        *post.body_mut() =
            Full::new(Bytes::from_static(b"12345")).map_err(|never| -> BoxError { match never {} }).boxed_unsync();
        assert_eq!(read(pool.send(post).await.unwrap()).await, 3005);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_one_connection_each_and_then_reuse_them() {
        let (url, accepted) = server(false, 10).await;
        let pool = pool();
        let heads = futures_util::future::join_all((0..4).map(|_| pool.send(get(&url)))).await;
        for h in heads {
            assert_eq!(read(h.unwrap()).await, 10);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        for _ in 0..8 {
            read(pool.send(get(&url)).await.unwrap()).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4, "the idle ones were reused");
    }

    #[tokio::test]
    async fn a_body_dropped_half_read_closes_its_connection() {
        let (url, accepted) = server(false, 1 << 20).await;
        let pool = pool();
        let resp = pool.send(get(&url)).await.unwrap();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.data_ref().is_some_and(|d| d.len() < 1 << 20));
        drop(body);
        assert_eq!(read(pool.send(get(&url)).await.unwrap()).await, 1 << 20);
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "the unread rest was not taken for the next answer");
    }

    #[tokio::test]
    async fn connection_close_and_a_peer_that_hung_up_are_not_reused() {
        let (url, accepted) = server(true, 5).await;
        let pool = pool();
        for _ in 0..3 {
            assert_eq!(read(pool.send(get(&url)).await.unwrap()).await, 5);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);

        // A server that closes every idle connection right after answering: the idle
        // connection is found closed and the request goes on a new one, without an error.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 4096];
                    let _ = tcp.read(&mut buf).await;
                    let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                    // Hangs up without saying so in the response.
                });
            }
        });
        for _ in 0..3 {
            assert_eq!(read(pool.send(get(&format!("http://{addr}/"))).await.unwrap()).await, 2);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn refused_and_timed_out_connects_are_told_apart() {
        let pool = pool();
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        match pool.send(get(&format!("http://{closed}/"))).await {
            Err(Failed { error: PoolError::Connect(e), target }) => {
                assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
                assert_eq!(target, closed.to_string());
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        let strict =
            Pool::new(Dial::Net { tls: None, allow_http: false }, Duration::from_secs(1), Duration::from_secs(1));
        assert!(matches!(
            strict.send(get("http://127.0.0.1:1/")).await,
            Err(Failed { error: PoolError::BadTarget(_), .. })
        ));
    }
}
