//! Connections to the few hosts a sidecar talks to: HTTP/1.1 keep-alive connections, each
//! driven inside the task of the request that holds it, and, where a host's TLS handshake
//! chooses `h2` (ALPN), one shared HTTP/2 connection per host.
//!
//! Why not hyper-util's pooled client: it runs every connection as a task of its own, so an
//! HTTP/1.1 request crosses tasks twice (request in, response out) and its body once per
//! chunk; and each checkout, HTTP/2 too, builds a pool key, takes a global lock with many
//! hosts in mind, boxes its futures and adds a map of connection facts to every response.
//! Here an HTTP/1.1 request takes an idle connection (a short lock over a list of a handful
//! of hosts), drives it itself until the response head, and hands it on inside the response
//! body, which drives it while the app reads and puts it back when the body ends; an HTTP/2
//! request clones its host's sender under the same lock. nginx's upstream keep-alive is the
//! model; bench/run measures the difference (docs/benchmarks.md).

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::body::{BoxError, ProxyBody};
use super::h2conn::{self, H2Body, Refused};

/// Idle connections kept per host at most; more are closed when they come back.
const MAX_IDLE_PER_HOST: usize = 256;

/// How a pool reaches its hosts.
#[derive(Clone)]
pub(crate) enum Dial {
    /// TCP, with TLS for `https` when there is a connector, plain for `http` when
    /// `allow_http`. HTTP/2 is spoken where the connector offers `h2` and the host takes it.
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
    /// The HTTP/2 connection or stream failed.
    H2(h2::Error),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Connect(e) | PoolError::Tls(e) => write!(f, "{e}"),
            PoolError::ConnectTimeout => f.write_str("timed out"),
            PoolError::BadTarget(why) => f.write_str(why),
            PoolError::Http(e) => write!(f, "{e}"),
            PoolError::H2(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PoolError::Connect(e) | PoolError::Tls(e) => Some(e),
            PoolError::Http(e) => Some(e),
            PoolError::H2(e) => Some(e),
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

/// One pool of connections; cheap to clone.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    dial: Dial,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// A handful of hosts: a list scanned under a short lock beats hashing a key.
    hosts: Mutex<Vec<Host>>,
}

struct Host {
    key: Key,
    /// Idle HTTP/1.1 connections, oldest first; checkout takes the newest (warmest).
    idle: Vec<(Box<Conn>, Instant)>,
    /// The host's HTTP/2 connection, when it speaks HTTP/2.
    shared: Option<Shared>,
    /// Set once the host has chosen HTTP/2: held while a new connection to it is made.
    h2_gate: Option<Arc<tokio::sync::Mutex<()>>>,
}

/// An HTTP/2 connection every request to its host goes on; its driver is a task of its own,
/// since many requests' streams are on it at once.
struct Shared {
    send: h2conn::Sender,
    /// Told apart from a later connection to the same host, for the idle watch.
    id: u64,
    /// Requests sent on it: the idle watch sees the count unchanged over an idle timeout,
    /// without a clock read per request.
    sent: u64,
}

/// A host, as the pool keeps it (copied once, when its first connection is made).
#[derive(Clone, PartialEq, Eq)]
struct Key {
    tls: bool,
    host: String,
    port: u16,
}

impl Key {
    fn matches(&self, dest: &Dest) -> bool {
        self.tls == dest.tls && self.port == dest.port && self.host == dest.host()
    }
}

/// Where one request goes; shares its URI's authority (no copy per request).
#[derive(Clone)]
struct Dest {
    tls: bool,
    authority: Authority,
    port: u16,
    /// Where the host is in `authority`, found once: `Authority::host` searches the
    /// string on every call, and a request asks for the host a few times.
    host: std::ops::Range<usize>,
}

impl Dest {
    fn of(uri: &Uri) -> Result<Dest, PoolError> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(PoolError::BadTarget("the URI has no http or https scheme")),
        };
        let authority = uri.authority().ok_or(PoolError::BadTarget("the URI has no host"))?;
        let (whole, port) = super::target::host_and_port(authority.as_str());
        if whole.is_empty() {
            return Err(PoolError::BadTarget("the URI has no host"));
        }
        let port = port.unwrap_or(if tls { 443 } else { 80 });
        let host = whole.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(whole);
        // `host` is a slice of the authority's string: its offset there.
        let start = host.as_ptr() as usize - authority.as_str().as_ptr() as usize;
        Ok(Dest { tls, port, host: start..start + host.len(), authority: authority.clone() })
    }

    /// Without an IPv6 literal's brackets, as sockets and TLS server names take it.
    fn host(&self) -> &str {
        self.authority.as_str().get(self.host.clone()).unwrap_or_default()
    }

    fn key(&self) -> Key {
        Key { tls: self.tls, host: self.host().to_string(), port: self.port }
    }
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host().contains(':') {
            write!(f, "[{}]:{}", self.host(), self.port)
        } else {
            write!(f, "{}:{}", self.host(), self.port)
        }
    }
}

/// An HTTP/1.1 connection: the handle requests go in by, and the state machine that does
/// its I/O, which whoever holds the connection polls.
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

/// What a request finds for its host (`Pool::find`).
enum Found {
    /// The host's open HTTP/2 connection, and which one it is.
    H2(h2conn::Sender, u64),
    /// A host that spoke HTTP/2 and has no open connection: the turn to make one.
    Gate(Arc<tokio::sync::Mutex<()>>),
    /// An HTTP/1.1 host, or one not met yet: its newest idle connection, if it has one.
    Idle(Option<(Box<Conn>, Instant)>),
}

/// A new connection, as the host's TLS handshake chose.
enum Dialed {
    H1(Box<Conn>),
    H2(h2conn::Sender),
}

impl Pool {
    pub(crate) fn new(dial: Dial, connect_timeout: Duration, idle_timeout: Duration) -> Pool {
        Pool { inner: Arc::new(Inner { dial, connect_timeout, idle_timeout, hosts: Mutex::new(Vec::new()) }) }
    }

    /// Sends `req` (absolute URI) and waits for the response head: on the host's HTTP/2
    /// connection, or an idle HTTP/1.1 one, or a new one. A request that an existing
    /// connection turned out unable to take (the peer had closed it) goes once more on a
    /// new connection.
    ///
    /// Not an `async fn`, for the reason `proxy::handle` gives: the request would be kept
    /// twice in the future.
    #[allow(clippy::manual_async_fn)] // on purpose, as said above
    pub(crate) fn send(
        &self,
        mut req: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<PooledBody>, Failed>> + Send + '_ {
        async move {
            let dest = Dest::of(req.uri()).map_err(|error| Failed { error, target: "the provider".into() })?;
            let failed = |error, dest: &Dest| Failed { error, target: dest.to_string() };
            let found = match self.find(&dest) {
                Found::H2(h2, id) => match h2conn::send(h2, req).await {
                    Ok(resp) => return Ok(resp.map(PooledBody::shared)),
                    // Never sent: the connection is closing. No later request is handed it
                    // again (its task may not have ended yet); a new one may take this.
                    Err(Refused::Closing(_, back)) => {
                        req = back;
                        self.unshare(&dest, id);
                        self.find(&dest)
                    }
                    Err(Refused::Failed(e)) => return Err(failed(PoolError::H2(e), &dest)),
                },
                other => other,
            };
            // Boxed: HTTP/1.1 and a new connection (its TLS handshake) make a large future, which
            // would otherwise size the request's future on the shared HTTP/2 path too.
            Box::pin(self.send_h1_or_new(dest, req, found)).await
        }
    }

    async fn send_h1_or_new(
        &self,
        dest: Dest,
        req: Request<ProxyBody>,
        found: Found,
    ) -> Result<Response<PooledBody>, Failed> {
        let failed = |error, dest: &Dest| Failed { error, target: dest.to_string() };
        let on_h2 = |h2, req| async move {
            h2conn::send(h2, req).await.map(|r| r.map(PooledBody::shared)).map_err(|e| match e {
                Refused::Closing(e, _) | Refused::Failed(e) => PoolError::H2(e),
            })
        };
        let mut turn = None;
        let mut reused = match found {
            // Another request's new connection, found after this one's was closing.
            Found::H2(h2, _) => return on_h2(h2, req).await.map_err(|e| failed(e, &dest)),
            Found::Idle(idle) => self.checkout(&dest, idle).await,
            // A host known to speak HTTP/2 gets one new connection at a time: requests that
            // find none open (at a burst after the provider closed it) wait for the one being
            // made instead of each making a TLS handshake of their own.
            // A request that waited finds the new connection shared, or, if making it failed,
            // makes its own without waiting its turn (a host that is down costs every waiter
            // one connect timeout, not one each in a row).
            Found::Gate(gate) => {
                match gate.clone().try_lock_owned() {
                    Ok(t) => turn = Some(t),
                    Err(_) => drop(gate.lock().await),
                }
                if let Found::H2(h2, _) = self.find(&dest) {
                    drop(turn);
                    return on_h2(h2, req).await.map_err(|e| failed(e, &dest));
                }
                // (A host that chose HTTP/2 once and offers only HTTP/1.1 now has idle ones.)
                self.checkout(&dest, None).await
            }
        };
        let mut req = Some(req);
        loop {
            let fresh = reused.is_none();
            let conn = match reused.take() {
                Some(c) => c,
                None => {
                    let dialed = self.connect(&dest).await;
                    // Made (or failed): the next waiter finds it shared, or tries itself.
                    turn = None;
                    match dialed {
                        Ok(Dialed::H1(c)) => c,
                        Ok(Dialed::H2(h2)) => {
                            let Some(req) = req.take() else { unreachable!("a request is taken once") };
                            return on_h2(h2, req).await.map_err(|e| failed(e, &dest));
                        }
                        Err(e) => return Err(failed(e, &dest)),
                    }
                }
            };
            debug_assert!(turn.is_none());
            let Some(r) = req.take() else { unreachable!("a request is taken once") };
            match self.send_h1(conn, &dest, r).await {
                Ok(resp) => return Ok(resp),
                Err((e, back)) => match back {
                    // Never written: a closed idle connection; a new one may take it.
                    Some(back) if !fresh => req = Some(back),
                    _ => return Err(failed(PoolError::Http(e), &dest)),
                },
            }
        }
    }

    /// Writes the request on `conn` and reads the response head; on failure, the request
    /// comes back when it was never written.
    async fn send_h1(
        &self,
        mut conn: Box<Conn>,
        dest: &Dest,
        req: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, (hyper::Error, Option<Request<ProxyBody>>)> {
        let mut sending = std::pin::pin!(conn.send.try_send_request(origin_form(req)));
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
                let held = Held { conn, dest: dest.clone(), pool: self.clone() };
                let end = body.is_end_stream();
                let mut pooled = PooledBody { body: Carried::H1(body), held: Some(held) };
                if end {
                    pooled.release();
                }
                Ok(Response::from_parts(parts, pooled))
            }
            Err(mut e) => {
                let back = e.take_message();
                Err((e.into_error(), back))
            }
        }
    }

    /// What the host has for a request, under one lock: its open HTTP/2 connection, else,
    /// for a host that spoke HTTP/2, the turn to make one, else its newest idle HTTP/1.1
    /// connection (taken out of the list).
    fn find(&self, dest: &Dest) -> Found {
        let Ok(mut hosts) = self.inner.hosts.lock() else { return Found::Idle(None) };
        let Some(host) = hosts.iter_mut().find(|h| h.key.matches(dest)) else { return Found::Idle(None) };
        // (Its task takes a closed connection out of here; a request that finds one
        // closing before that comes back unsent and goes on a new one.)
        if let Some(shared) = host.shared.as_mut() {
            shared.sent = shared.sent.wrapping_add(1);
            return Found::H2(shared.send.clone(), shared.id);
        }
        match &host.h2_gate {
            Some(gate) => Found::Gate(gate.clone()),
            None => Found::Idle(host.idle.pop()),
        }
    }

    /// Stops handing out HTTP/2 connection `id` (unless a newer one has replaced it already).
    fn unshare(&self, dest: &Dest, id: u64) {
        let Ok(mut hosts) = self.inner.hosts.lock() else { return };
        if let Some(host) = hosts.iter_mut().find(|h| h.key.matches(dest)) {
            if host.shared.as_ref().is_some_and(|s| s.id == id) {
                host.shared = None;
            }
        }
    }

    /// The newest idle HTTP/1.1 connection to `dest` that is still usable, starting with
    /// `first` (already taken out of the list) when given; stale ones are closed.
    async fn checkout(&self, dest: &Dest, mut first: Option<(Box<Conn>, Instant)>) -> Option<Box<Conn>> {
        loop {
            let (conn, since) = match first.take() {
                Some(c) => c,
                None => {
                    let mut hosts = self.inner.hosts.lock().ok()?;
                    let host = hosts.iter_mut().find(|h| h.key.matches(dest))?;
                    host.idle.pop()?
                }
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

    /// The host's entry, made on first use.
    fn host<'h>(hosts: &'h mut Vec<Host>, dest: &Dest) -> &'h mut Host {
        let at = match hosts.iter().position(|h| h.key.matches(dest)) {
            Some(i) => i,
            None => {
                hosts.push(Host { key: dest.key(), idle: Vec::new(), shared: None, h2_gate: None });
                hosts.len() - 1
            }
        };
        &mut hosts[at]
    }

    fn checkin(&self, dest: &Dest, conn: Box<Conn>) {
        let Ok(mut hosts) = self.inner.hosts.lock() else { return };
        let now = Instant::now();
        let idle = &mut Self::host(&mut hosts, dest).idle;
        // Oldest first: drop what timed out and what exceeds the cap.
        let stale = idle.iter().take_while(|(_, t)| now.duration_since(*t) >= self.inner.idle_timeout).count();
        let over = (idle.len() - stale + 1).saturating_sub(MAX_IDLE_PER_HOST);
        idle.drain(..stale + over);
        idle.push((conn, now));
    }

    // An HTTP/1.1 connection is boxed once here and kept boxed through every checkout: a
    // response body carries it.
    async fn connect(&self, dest: &Dest) -> Result<Dialed, PoolError> {
        let (stream, h2) = tokio::time::timeout(self.inner.connect_timeout, self.dial(dest))
            .await
            .map_err(|_| PoolError::ConnectTimeout)??;
        if h2 {
            let (send, driver) = h2conn::handshake(stream).await.map_err(PoolError::H2)?;
            self.share(dest, send.clone(), driver);
            return Ok(Dialed::H2(send));
        }
        let (send, driver) = http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(PoolError::Http)?;
        Ok(Dialed::H1(Box::new(Conn { send, driver, done: false })))
    }

    /// Makes a new HTTP/2 connection the host's (unless another request's new one got there
    /// first and is open: then this one carries only its own request and closes after it),
    /// and drives it in a task that also lets it go after an idle timeout without requests.
    fn share(&self, dest: &Dest, send: h2conn::Sender, driver: h2conn::Driver<Stream>) {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut hosts) = self.inner.hosts.lock() {
            let host = Self::host(&mut hosts, dest);
            host.h2_gate.get_or_insert_with(Default::default);
            if host.shared.is_none() {
                host.shared = Some(Shared { send, id, sent: 0 });
            }
        }
        let pool = Arc::downgrade(&self.inner);
        let (dest, after) = (dest.clone(), self.inner.idle_timeout);
        tokio::spawn(async move {
            let mut driver = std::pin::pin!(h2conn::Batched::new(driver));
            let mut watch = IdleWatch::default();
            loop {
                tokio::select! {
                    ended = driver.as_mut() => {
                        if let Err(e) = ended {
                            tracing::debug!(error = %e, "an HTTP/2 connection to a provider ended");
                        }
                        // Closed: requests now go on a new connection.
                        if let Some(inner) = pool.upgrade() {
                            Pool { inner }.unshare(&dest, id);
                        }
                        return;
                    }
                    _ = tokio::time::sleep(after / IdleWatch::LOOKS) => {
                        if !Self::still_used(&pool, &dest, id, &mut watch) {
                            // No longer handed out; in-flight streams finish, then it closes.
                            let _ = driver.await;
                            return;
                        }
                    }
                }
            }
        });
    }

    /// False once the connection is no longer the host's, or has carried no request over
    /// an idle timeout (it is then let go).
    fn still_used(pool: &Weak<Inner>, dest: &Dest, id: u64, watch: &mut IdleWatch) -> bool {
        let Some(inner) = pool.upgrade() else { return false };
        let Ok(mut hosts) = inner.hosts.lock() else { return false };
        let Some(host) = hosts.iter_mut().find(|h| h.key.matches(dest)) else { return false };
        let Some(shared) = host.shared.as_ref().filter(|s| s.id == id) else { return false };
        if watch.idle_after(shared.sent) {
            host.shared = None;
            return false;
        }
        true
    }

    /// The stream, and whether the TLS handshake chose HTTP/2.
    async fn dial(&self, dest: &Dest) -> Result<(Stream, bool), PoolError> {
        match &self.inner.dial {
            Dial::Unix(path) => {
                Ok((Stream::Unix(UnixStream::connect(&**path).await.map_err(PoolError::Connect)?), false))
            }
            Dial::Net { tls, allow_http } => {
                if !dest.tls && !allow_http {
                    return Err(PoolError::BadTarget("plain http upstreams are not allowed"));
                }
                if dest.tls && tls.is_none() {
                    return Err(PoolError::BadTarget("https is not carried here"));
                }
                let tcp = TcpStream::connect((dest.host(), dest.port)).await.map_err(PoolError::Connect)?;
                tcp.set_nodelay(true).map_err(PoolError::Connect)?;
                let sock = socket2::SockRef::from(&tcp);
                let _ = sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)));
                let Some(tls) = tls.as_ref().filter(|_| dest.tls) else { return Ok((Stream::Tcp(tcp), false)) };
                let name = rustls::pki_types::ServerName::try_from(dest.host().to_string())
                    .map_err(|_| PoolError::BadTarget("the host is not a valid TLS server name"))?;
                let tls = tls.connect(name, tcp).await.map_err(PoolError::Tls)?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                Ok((Stream::Tls(Box::new(tls)), h2))
            }
        }
    }
}

/// Looks at a shared connection's request count a few times per idle timeout: idle once
/// the count stood still for a whole timeout (let go within 1¼ timeouts of its last use).
#[derive(Default)]
struct IdleWatch {
    last: u64,
    still: u32,
}

impl IdleWatch {
    const LOOKS: u32 = 4;

    fn idle_after(&mut self, sent: u64) -> bool {
        if sent == self.last {
            self.still += 1;
        } else {
            (self.last, self.still) = (sent, 0);
        }
        self.still >= Self::LOOKS
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

/// An HTTP/1.1 connection a response body holds, and where it goes back to.
struct Held {
    conn: Box<Conn>,
    dest: Dest,
    pool: Pool,
}

/// A response body. Over HTTP/1.1 it drives its connection while it is read and returns it
/// to the pool when it ends; dropped early, it closes the connection (the rest of the answer
/// would still be on it). Over HTTP/2 the connection's own task drives it.
pub(crate) struct PooledBody {
    body: Carried,
    held: Option<Held>,
}

/// Which protocol a response body comes over.
enum Carried {
    H1(Incoming),
    H2(H2Body),
}

impl PooledBody {
    fn shared(body: H2Body) -> PooledBody {
        PooledBody { body: Carried::H2(body), held: None }
    }

    fn release(&mut self) {
        if let Some(Held { conn, dest, pool }) = self.held.take() {
            if !conn.done {
                pool.checkin(&dest, conn);
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let (polled, end) = match &mut this.body {
            Carried::H2(b) => return Pin::new(b).poll_frame(cx),
            Carried::H1(b) => {
                if let Some(held) = &mut this.held {
                    // Reads the next chunk into the body's channel (or learns the peer closed).
                    held.conn.drive(cx);
                }
                let polled = Pin::new(&mut *b).poll_frame(cx);
                (polled, b.is_end_stream())
            }
        };
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if end => this.release(),
            Poll::Ready(Some(Err(_))) => this.held = None,
            _ => {}
        }
        polled.map(|f| f.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Carried::H1(b) => b.is_end_stream(),
            Carried::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Carried::H1(b) => b.size_hint(),
            Carried::H2(b) => b.size_hint(),
        }
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

    /// A TLS server offering `alpn` with a self-signed certificate for `localhost`; each
    /// connection serves `per_conn` requests and then closes gracefully (GOAWAY on HTTP/2).
    /// Counts connections accepted and connections ended; the pool trusts the certificate.
    /// A TLS server side for `localhost` offering `alpn`, and a pool that trusts it.
    fn tls_pair(alpn: &[&[u8]]) -> (tokio_rustls::TlsAcceptor, Pool) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let client = crate::tls::client_config(Some(&ca), &[b"h2", b"http/1.1"]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let mut server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let dial = Dial::Net { tls: Some(tokio_rustls::TlsConnector::from(Arc::new(client))), allow_http: false };
        (
            tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            Pool::new(dial, Duration::from_secs(2), Duration::from_millis(400)),
        )
    }

    async fn tls_server(alpn: &[&[u8]], per_conn: usize) -> (String, Pool, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (acceptor, pool) = tls_pair(alpn);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted, ended) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, e) = (accepted.clone(), ended.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                let (acceptor, e) = (acceptor.clone(), e.clone());
                tokio::spawn(async move {
                    let tls = acceptor.accept(tcp).await.unwrap();
                    let served = Arc::new(AtomicUsize::new(0));
                    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        if n >= per_conn {
                            let _ = stop_tx.send(true);
                        }
                        async move { Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tls), svc);
                    let mut conn = std::pin::pin!(conn);
                    let mut stop_rx = stop_rx;
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = async { drop(stop_rx.wait_for(|s| *s).await) } => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (format!("https://localhost:{port}"), pool, accepted, ended)
    }

    /// A request given up while its body is still going out (the app went away, a timeout)
    /// resets its HTTP/2 stream: the body's task does not hold the stream, and the
    /// provider's window, open for ever.
    #[tokio::test]
    async fn a_request_given_up_before_its_answer_resets_its_stream() {
        let (acceptor, pool) = tls_pair(&[b"h2"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<(Bytes, Option<h2::Reason>)>();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(tcp).await.unwrap();
            let mut conn = h2::server::handshake(tls).await.unwrap();
            let (req, _respond) = conn.accept().await.unwrap().unwrap();
            // Never answers; reads the body while the connection runs.
            tokio::spawn(async move {
                let mut body = req.into_body();
                let first = body.data().await.unwrap().unwrap();
                let then = body.data().await;
                let _ = seen_tx.send((first, then.and_then(|r| r.err()).and_then(|e| e.reason())));
            });
            while conn.accept().await.is_some() {}
        });
        let chunks = futures_util::StreamExt::chain(
            futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"first chunk")))]),
            futures_util::stream::pending(),
        );
        let mut req = Request::new(http_body_util::StreamBody::new(chunks).boxed_unsync());
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = format!("https://localhost:{port}/upload").parse().unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(300), pool.send(req)).await;
        assert!(gave_up.is_err(), "the server never answers");
        let (first, then) = tokio::time::timeout(Duration::from_secs(3), seen_rx).await.unwrap().unwrap();
        assert_eq!(first, Bytes::from_static(b"first chunk"));
        assert_eq!(then, Some(h2::Reason::CANCEL), "the stream was reset, not left open");
    }

    async fn read_h(resp: Response<PooledBody>) -> (http::Version, usize) {
        (resp.version(), read(resp).await)
    }

    #[tokio::test]
    async fn an_http2_host_gets_one_shared_connection_for_every_request() {
        let (url, pool, accepted, _) = tls_server(&[b"h2", b"http/1.1"], usize::MAX).await;
        assert_eq!(read_h(pool.send(get(&url)).await.unwrap()).await, (http::Version::HTTP_2, 2));
        let at_once = futures_util::future::join_all((0..16).map(|_| pool.send(get(&url)))).await;
        for r in at_once {
            assert_eq!(read_h(r.unwrap()).await, (http::Version::HTTP_2, 2));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "sixteen at once shared the first connection");
    }

    #[tokio::test]
    async fn a_host_that_offers_only_http1_over_tls_gets_keep_alive() {
        let (url, pool, accepted, _) = tls_server(&[b"http/1.1"], usize::MAX).await;
        for _ in 0..5 {
            assert_eq!(read_h(pool.send(get(&url)).await.unwrap()).await, (http::Version::HTTP_11, 2));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_shared_connection_the_host_closed_is_replaced_without_an_error() {
        // Every connection takes three requests, then the server says GOAWAY.
        let (url, pool, accepted, ended) = tls_server(&[b"h2"], 3).await;
        for _ in 0..10 {
            assert_eq!(read_h(pool.send(get(&url)).await.unwrap()).await, (http::Version::HTTP_2, 2));
            // Lets the GOAWAY arrive, as it would between a provider's calls.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // HTTP/2's graceful close takes a round trip (GOAWAY, PING, GOAWAY), during which a
        // connection may take a request more than three.
        let (n, closed) = (accepted.load(Ordering::SeqCst), ended.load(Ordering::SeqCst));
        assert!((2..=10).contains(&n) && closed >= 1, "{n} connections, {closed} closed, for 10 requests");
    }

    #[tokio::test]
    async fn a_burst_after_the_shared_connection_closed_makes_one_new_connection() {
        // The first connection takes one request and closes; sixteen at once then need a new
        // one, and wait for a single handshake rather than making sixteen.
        let (url, pool, accepted, ended) = tls_server(&[b"h2"], 1).await;
        read_h(pool.send(get(&url)).await.unwrap()).await;
        for _ in 0..100 {
            if ended.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(ended.load(Ordering::SeqCst), 1, "the server closed the first connection");
        let at_once = futures_util::future::join_all((0..16).map(|_| pool.send(get(&url)))).await;
        let ok = at_once.into_iter().filter(|r| r.is_ok()).count();
        // The new connection also closes after its first request: those after it on that
        // connection may fail or go on a third; what matters is no handshake per request.
        assert!(ok >= 1, "{ok} of 16 answered");
        let n = accepted.load(Ordering::SeqCst);
        assert!(n <= 4, "{n} connections for a burst of 16: each made its own");
    }

    #[tokio::test]
    async fn requests_to_a_host_that_is_down_fail_together_not_one_timeout_after_another() {
        // A host that chose HTTP/2 once now takes TCP connections and never answers the TLS
        // handshake: sixteen waiting requests must not each wait a turn (16 × the 2 s connect
        // timeout) but fail within about two timeouts.
        let (url, pool, _, _) = tls_server(&[b"h2"], usize::MAX).await;
        read_h(pool.send(get(&url)).await.unwrap()).await;
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let down = format!("https://localhost:{}", silent.local_addr().unwrap().port());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = silent.accept().await {
                held.push(tcp);
            }
        });
        {
            let dest = Dest::of(&down.parse().unwrap()).unwrap();
            let mut hosts = pool.inner.hosts.lock().unwrap();
            Pool::host(&mut hosts, &dest).h2_gate = Some(Default::default());
        }
        let started = Instant::now();
        let at_once = futures_util::future::join_all((0..16).map(|_| pool.send(get(&down)))).await;
        assert!(at_once.iter().all(|r| matches!(r, Err(Failed { error: PoolError::ConnectTimeout, .. }))));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(7), "{took:?}: the waiters queued one timeout after another");
    }

    #[tokio::test]
    async fn an_idle_shared_connection_is_let_go_after_the_idle_timeout() {
        let (url, pool, accepted, ended) = tls_server(&[b"h2"], usize::MAX).await;
        read_h(pool.send(get(&url)).await.unwrap()).await;
        // In use: requests every 100 ms for longer than the 400 ms timeout keep it.
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            read_h(pool.send(get(&url)).await.unwrap()).await;
        }
        assert_eq!((accepted.load(Ordering::SeqCst), ended.load(Ordering::SeqCst)), (1, 0));
        // Idle: let go within 1¼ timeouts; the server sees the connection end.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(ended.load(Ordering::SeqCst), 1, "the idle connection was closed");
        assert_eq!(read_h(pool.send(get(&url)).await.unwrap()).await, (http::Version::HTTP_2, 2));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_destination_names_its_host_without_brackets_or_user_info() {
        for (uri, host, port, shown) in [
            ("https://api.vapi.ai/x", "api.vapi.ai", 443, "api.vapi.ai:443"),
            ("http://[::1]:8080/", "::1", 8080, "[::1]:8080"),
            ("https://user@example.com:9443", "example.com", 9443, "example.com:9443"),
        ] {
            let d = Dest::of(&uri.parse().unwrap()).unwrap();
            assert_eq!((d.host(), d.port, d.to_string().as_str()), (host, port, shown), "{uri}");
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
