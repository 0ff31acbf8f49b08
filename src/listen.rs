//! Listeners: binding Unix sockets (mode, stale-socket removal, peer uid) and TCP ports,
//! and the one accept loop every listener uses (HTTP/1.1 + HTTP/2, optional TLS, graceful
//! drain on shutdown).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, UnixListener};

use crate::shutdown::Shutdown;

/// Binding failures. Each names the address or path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A live process already serves this socket.
    #[error("{0} is in use by a running process (another keyward?); stop it or choose another path")]
    SocketInUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// Binding or preparing a Unix socket failed.
    #[error("cannot bind {path}: {reason}")]
    Unix {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// Binding a TCP port failed.
    #[error("cannot listen on {addr}: {reason}")]
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        reason: String,
    },
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Peer {
    /// A Unix-socket peer, identified by SO_PEERCRED.
    Unix {
        /// Effective uid of the peer process.
        uid: u32,
        /// Its pid, when known.
        pid: Option<i32>,
    },
    /// A TCP peer; `san` is the verified client certificate's URI or DNS SAN (mTLS).
    Tcp {
        /// Remote address.
        addr: SocketAddr,
        /// Client certificate identity, when mTLS verified one.
        san: Option<String>,
    },
}

/// A bound Unix socket; the file is removed when this is dropped.
#[derive(Debug)]
pub(crate) struct UnixBinding {
    /// The listener.
    pub listener: UnixListener,
    /// Its path.
    pub path: PathBuf,
}

impl Drop for UnixBinding {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a Unix socket at `path` with `mode`. A stale socket (nobody listening) is removed;
/// a live one is refused. The socket is bound inside a fresh private directory (0700, a
/// random name, created exclusively), given its mode, then renamed into place: connecting
/// needs search permission on the directory, so no other user can connect while the socket
/// still has the default permissions, and no name can be squatted in advance.
pub(crate) fn bind_unix(path: &Path, mode: u32) -> Result<UnixBinding, ListenError> {
    let err = |e: std::io::Error| ListenError::Unix { path: path.to_path_buf(), reason: e.to_string() };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ListenError::NotASocket(path.to_path_buf()));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ListenError::SocketInUse(path.to_path_buf())),
            Err(_) => std::fs::remove_file(path).map_err(err)?,
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let private = private_dir(path).map_err(err)?;
    let tmp = private.join("s");
    let bound = std::os::unix::net::UnixListener::bind(&tmp)
        .and_then(|l| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map(|()| l))
        .and_then(|l| std::fs::rename(&tmp, path).map(|()| l));
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&private);
    let std_listener = bound.map_err(err)?;
    std_listener.set_nonblocking(true).map_err(err)?;
    let listener = UnixListener::from_std(std_listener).map_err(err)?;
    Ok(UnixBinding { listener, path: path.to_path_buf() })
}

/// A new directory beside `path`, mode 0700, with a random name.
fn private_dir(path: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = path.parent().unwrap_or(Path::new("."));
    let mut last = None;
    for _ in 0..8 {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).map_err(|e| std::io::Error::other(e.to_string()))?;
        let dir = parent.join(format!(".keyward-bind-{}", hex::encode(r)));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("cannot create a private directory")))
}

/// Binds a TCP port (port 0 picks a free one; read it back with `local_addr`).
pub(crate) fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let err = |e: std::io::Error| ListenError::Tcp { addr, reason: e.to_string() };
    let std_listener = std::net::TcpListener::bind(addr).map_err(err)?;
    std_listener.set_nonblocking(true).map_err(err)?;
    TcpListener::from_std(std_listener).map_err(err)
}

/// A bound listener of either kind.
#[derive(Debug)]
pub(crate) enum Bound {
    /// Unix socket.
    Unix(UnixBinding),
    /// TCP port.
    Tcp(TcpListener),
}

impl Bound {
    /// A printable address (path or ip:port).
    pub(crate) fn describe(&self) -> String {
        match self {
            Bound::Unix(u) => u.path.display().to_string(),
            Bound::Tcp(t) => t.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        }
    }
}

/// Connection-level limits shared by listeners.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// Time allowed for a client to send a request head (slow-client defence).
    pub header_read_timeout: Duration,
    /// Largest request head (HTTP/1) before 431.
    pub max_header_bytes: usize,
    /// How long in-flight requests may run after shutdown starts.
    pub drain_grace: Duration,
    /// TLS handshake deadline.
    pub tls_handshake_timeout: Duration,
    /// Open connections at most; past it a new one is closed at once.
    pub max_connections: usize,
    /// Open connections at most from one remote IP (TCP only).
    pub max_per_source: Option<usize>,
    /// A connection with no request in flight for this long is closed (HTTP/1 between
    /// requests is bounded by `header_read_timeout` as well).
    pub idle_timeout: Duration,
    /// HTTP/2 PING interval; an unanswered PING closes the connection after as long again.
    pub h2_keepalive: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            drain_grace: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_per_source: None,
            idle_timeout: Duration::from_secs(60),
            h2_keepalive: Duration::from_secs(30),
        }
    }
}

/// The listener's open connections, in all and per remote IP.
struct Admission {
    open: std::sync::atomic::AtomicUsize,
    per_source: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    refused: std::sync::atomic::AtomicU64,
}

/// A connection's place under the caps, released when the connection ends.
struct Admitted {
    admission: Arc<Admission>,
    source: Option<std::net::IpAddr>,
}

impl Admission {
    fn admit(self: &Arc<Self>, limits: &ConnLimits, peer: &Peer) -> Option<Admitted> {
        use std::sync::atomic::Ordering;
        if self.open.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let source = match (peer, limits.max_per_source) {
            (Peer::Tcp { addr, .. }, Some(cap)) => {
                let ip = addr.ip();
                let Ok(mut m) = self.per_source.lock() else {
                    self.open.fetch_sub(1, Ordering::AcqRel);
                    return None;
                };
                let n = m.entry(ip).or_insert(0);
                if *n >= cap {
                    drop(m);
                    self.open.fetch_sub(1, Ordering::AcqRel);
                    return None;
                }
                *n += 1;
                Some(ip)
            }
            _ => None,
        };
        Some(Admitted { admission: self.clone(), source })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        if let Some(ip) = self.source {
            if let Ok(mut m) = self.admission.per_source.lock() {
                if let Some(n) = m.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(&ip);
                    }
                }
            }
        }
        self.admission.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Optional TLS on a TCP listener: the acceptor plus how to name the verified peer.
#[derive(Clone)]
pub(crate) struct TlsSetup {
    /// rustls acceptor.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Extracts a client identity from the verified certificate chain.
    pub identity: Option<fn(&rustls::ServerConnection) -> Option<String>>,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSetup")
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4). A cleartext connection that starts with it
/// speaks HTTP/2 with prior knowledge (h2c); anything else is HTTP/1.1. Over TLS the version
/// comes from ALPN instead (RFC 9113 §3.3: prior knowledge is for cleartext only).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    H1,
    H2,
}

/// Decides from the first bytes of a cleartext connection; `None` while they are still a
/// strict prefix of the HTTP/2 preface.
fn classify(seen: &[u8]) -> Option<Version> {
    let n = seen.len().min(H2_PREFACE.len());
    if seen[..n] != H2_PREFACE[..n] {
        Some(Version::H1)
    } else if n == H2_PREFACE.len() {
        Some(Version::H2)
    } else {
        None
    }
}

/// Everything a connection task needs, built once per listener.
struct ConnCtx<F> {
    name: &'static str,
    make: F,
    tls: Option<TlsSetup>,
    limits: ConnLimits,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

/// Serves `bound` until `shutdown` fires, then drains in-flight connections for up to
/// `limits.drain_grace`. `make` builds a service for each connection from its [`Peer`].
pub(crate) async fn serve<F, S, B>(
    name: &'static str,
    bound: Bound,
    tls: Option<TlsSetup>,
    limits: ConnLimits,
    mut shutdown: Shutdown,
    make: F,
) where
    F: Fn(Peer) -> S + Send + Sync + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // A strict limit on the parsed head: `max_buf_size` alone is only checked while a
        // head is incomplete, so one large read can slip a bigger head past it.
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192));
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(limits.h2_keepalive))
        .keep_alive_timeout(limits.h2_keepalive);
    let ctx = Arc::new(ConnCtx { name, make, tls, limits, h1, h2 });
    let admission =
        Arc::new(Admission { open: Default::default(), per_source: Default::default(), refused: Default::default() });
    // Every connection task holds a clone of `live`; the drain is over when the receiver
    // sees all of them dropped.
    let (live, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    // Keep the Unix binding alive (and its file present) until the loop ends.
    let (unix, tcp) = match bound {
        Bound::Unix(u) => (Some(u), None),
        Bound::Tcp(t) => (None, Some(t)),
    };
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            accepted = accept(unix.as_ref(), tcp.as_ref()) => {
                let (conn, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Over a cap the connection is closed at once: its descriptor is back before
                // the next accept, so a flood on one listener cannot starve the others.
                let Some(admitted) = admission.admit(&limits, &peer) else {
                    let n = admission.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        tracing::warn!(listener = name, refused = n, max = limits.max_connections, per_source = ?limits.max_per_source, "connection cap reached: closing new connections");
                    }
                    drop(conn);
                    continue;
                };
                let (ctx, stop, live) = (ctx.clone(), shutdown.clone(), live.clone());
                tokio::spawn(async move {
                    ctx.connection(conn, peer, stop).await;
                    drop(admitted);
                    drop(live);
                });
            }
        }
    }
    // Stop accepting at once (and remove the socket file), then drain.
    drop(unix);
    drop(tcp);
    drop(live);
    if tokio::time::timeout(limits.drain_grace, drained.recv()).await.is_err() {
        tracing::warn!(listener = name, grace = ?limits.drain_grace, "drain grace period over; closing remaining connections");
    }
}

impl<F, S, B> ConnCtx<F>
where
    F: Fn(Peer) -> S + Send + Sync + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// One accepted connection: find its HTTP version (peeking at a cleartext stream, ALPN
    /// after a TLS handshake), then serve it until it ends or shutdown drains it.
    async fn connection(&self, conn: Accepted, peer: Peer, mut stop: Shutdown) {
        let name = self.name;
        let served = match (conn, &self.tls) {
            (Accepted::Tcp(s), Some(setup)) => {
                let hs =
                    tokio::time::timeout(self.limits.tls_handshake_timeout, Box::pin(setup.acceptor.accept(s))).await;
                let stream = match hs {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::debug!(listener = name, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(listener = name, "TLS handshake timed out"),
                };
                let tls = stream.get_ref().1;
                let version = if tls.alpn_protocol() == Some(b"h2") { Version::H2 } else { Version::H1 };
                let san = setup.identity.and_then(|f| f(tls));
                let peer = match peer {
                    Peer::Tcp { addr, .. } => Peer::Tcp { addr, san },
                    p => p,
                };
                self.http(TokioIo::new(Linger::new(stream)), version, peer, stop)
            }
            (conn, _) => {
                let sniffed = tokio::select! {
                    v = tokio::time::timeout(self.limits.header_read_timeout, conn.sniff()) => v,
                    _ = stop.wait() => return,
                };
                let version = match sniffed {
                    Ok(Ok(Some(v))) => v,
                    Ok(Ok(None)) => return, // closed before sending anything
                    Ok(Err(e)) => return tracing::debug!(listener = name, error = %e, "reading the connection failed"),
                    Err(_) => return tracing::debug!(listener = name, "no request before the header read timeout"),
                };
                match conn {
                    Accepted::Unix(s) => self.http(TokioIo::new(Linger::new(s)), version, peer, stop),
                    Accepted::Tcp(s) => self.http(TokioIo::new(Linger::new(s)), version, peer, stop),
                }
            }
        };
        if let Err(e) = served.await {
            tracing::debug!(listener = name, error = %e, "connection ended with an error");
        }
    }

    /// The connection's HTTP machinery, boxed: a task then holds only this box across its
    /// awaits, sized for the protocol actually spoken, instead of an inline state machine
    /// sized for the largest of TLS, HTTP/1 and HTTP/2 (10 KiB per idle connection).
    fn http<I>(&self, io: I, version: Version, peer: Peer, stop: Shutdown) -> BoxFuture<hyper::Result<()>>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let svc = Tracked { inner: (self.make)(peer), activity: activity.clone() };
        let idle = Idle { activity, after: self.limits.idle_timeout };
        match version {
            Version::H1 => Box::pin(drain_on(
                self.h1.serve_connection(io, svc).with_upgrades(),
                |c| c.graceful_shutdown(),
                stop,
                idle,
            )),
            Version::H2 => Box::pin(drain_on(self.h2.serve_connection(io, svc), |c| c.graceful_shutdown(), stop, idle)),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Requests in flight on one connection, and when the last one ended.
struct Activity {
    inflight: std::sync::atomic::AtomicUsize,
    /// Milliseconds from `opened` to the end of the last request: an atomic rather than a
    /// locked `Instant`, and no clock read when a request starts (it is in flight then).
    ended_ms: std::sync::atomic::AtomicU64,
    opened: tokio::time::Instant,
}

impl Activity {
    fn new() -> Self {
        Self { inflight: Default::default(), ended_ms: Default::default(), opened: tokio::time::Instant::now() }
    }

    /// The time is stored before the count drops, so the idle check never sees nothing in
    /// flight beside the time of an earlier end.
    fn end(&self) {
        use std::sync::atomic::Ordering;
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.ended_ms.fetch_max(ms, Ordering::Release);
        self.inflight.fetch_sub(1, Ordering::AcqRel);
    }

    /// When the last request ended, or the connection opened if none has.
    fn last_end(&self) -> tokio::time::Instant {
        self.opened + Duration::from_millis(self.ended_ms.load(std::sync::atomic::Ordering::Acquire))
    }
}

/// The connection's service, counting requests in flight for the idle timeout.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

/// Decrements the in-flight count when the response body is done (dropped), or when the
/// service failed: a streamed response keeps its connection busy until its last byte.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl<S, R, B> hyper::service::Service<R> for Tracked<S>
where
    S: hyper::service::Service<R, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Guarded<B>>;
    type Error = S::Error;
    type Future = Tracking<S::Future>;

    fn call(&self, req: R) -> Self::Future {
        self.activity.inflight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let guard = Some(InFlight(self.activity.clone()));
        Tracking { fut: self.inner.call(req), guard }
    }
}

pin_project_lite::pin_project! {
    /// The service's future, whose response body takes over the in-flight mark (a named
    /// future rather than a boxed `async` block: one allocation less per request).
    struct Tracking<F> {
        #[pin]
        fut: F,
        guard: Option<InFlight>,
    }
}

impl<F, B, E> std::future::Future for Tracking<F>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Guarded<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let resp = std::task::ready!(this.fut.poll(cx))?;
        match this.guard.take() {
            Some(guard) => std::task::Poll::Ready(Ok(resp.map(|body| Guarded { body, _guard: guard }))),
            // Polled again after it was ready: a caller's bug, answered as hyper would.
            None => std::task::Poll::Pending,
        }
    }
}

/// A response body that holds its request's in-flight mark until it is dropped.
struct Guarded<B> {
    body: B,
    _guard: InFlight,
}

impl<B: http_body::Body + Unpin> http_body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// When a connection counts as idle.
struct Idle {
    activity: Arc<Activity>,
    after: Duration,
}

impl Idle {
    /// Resolves once the connection has had nothing in flight for `after`.
    async fn wait(&self) {
        loop {
            // The count first: once it reads zero, the end time stored before it is seen.
            let idle = self.activity.inflight.load(std::sync::atomic::Ordering::Acquire) == 0;
            let due = self.activity.last_end() + self.after;
            let now = tokio::time::Instant::now();
            if idle && now >= due {
                return;
            }
            tokio::time::sleep_until(if now >= due { now + self.after } else { due }).await;
        }
    }
}

/// Drives `conn` to its end; when shutdown fires first, asks it to finish gracefully (no new
/// requests, in-flight ones complete) and keeps driving it. A connection idle past its
/// timeout (an HTTP/2 client holding a connection open with no streams) is closed outright:
/// nothing is in flight, and HTTP/2's graceful close would wait for a PING answer that an
/// idle attacker never sends.
///
/// The shutdown signal and the idle timer are polled only when one of them woke the task
/// ([`SideWake`]), not on each of the connection's several wake-ups per request as a
/// `select!` would (~550 instructions a request, docs/benchmarks.md).
async fn drain_on<C>(conn: C, graceful: fn(Pin<&mut C>), mut stop: Shutdown, idle: Idle) -> hyper::Result<()>
where
    C: std::future::Future<Output = hyper::Result<()>>,
{
    use std::future::Future as _;
    use std::task::Poll;
    enum First {
        Ended(hyper::Result<()>),
        Stop,
        Idle,
    }
    let mut conn = std::pin::pin!(conn);
    let mut stopped = std::pin::pin!(stop.wait());
    let mut idled = std::pin::pin!(idle.wait());
    let side = Arc::new(SideWake::default());
    let side_waker = std::task::Waker::from(side.clone());
    let first = std::future::poll_fn(|cx| {
        if let Poll::Ready(ended) = conn.as_mut().poll(cx) {
            return Poll::Ready(First::Ended(ended));
        }
        // Registered before the flag is read: a side wake-up after this point wakes the
        // task again, one before it is seen below.
        side.task.register(cx.waker());
        if side.woken.swap(false, std::sync::atomic::Ordering::AcqRel) {
            let mut side_cx = std::task::Context::from_waker(&side_waker);
            if stopped.as_mut().poll(&mut side_cx).is_ready() {
                return Poll::Ready(First::Stop);
            }
            if idled.as_mut().poll(&mut side_cx).is_ready() {
                return Poll::Ready(First::Idle);
            }
        }
        Poll::Pending
    })
    .await;
    match first {
        First::Ended(ended) => ended,
        First::Stop => {
            graceful(conn.as_mut());
            conn.await
        }
        First::Idle => Ok(()),
    }
}

/// The waker the shutdown signal and idle timer are polled with: it notes that one of them
/// has something to say, then wakes the connection's task.
struct SideWake {
    woken: std::sync::atomic::AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl Default for SideWake {
    /// Woken: the first poll registers both.
    fn default() -> Self {
        SideWake { woken: std::sync::atomic::AtomicBool::new(true), task: futures_util::task::AtomicWaker::new() }
    }
}

impl std::task::Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, std::sync::atomic::Ordering::Release);
        self.task.wake();
    }
}

/// Lingering close for HTTP/1 (nginx's `lingering_close`): when keyward ends a connection
/// whose client is still sending (a 413, a refused id, answered before the body was read),
/// closing at once makes the kernel answer the unread bytes with a reset, and the client
/// loses the response it was about to read. On shutdown this sends FIN, then reads and
/// discards what still arrives, for at most [`LINGER_TOTAL`] and [`LINGER_BYTES`], and
/// gives up after [`LINGER_GAP`] of silence.
struct Linger<S> {
    inner: S,
    state: LingerState,
}

enum LingerState {
    Open,
    Draining { deadline: Pin<Box<tokio::time::Sleep>>, gap: Pin<Box<tokio::time::Sleep>>, left: usize },
    Done,
}

const LINGER_TOTAL: Duration = Duration::from_secs(10);
const LINGER_GAP: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 << 20;

impl<S> Linger<S> {
    fn new(inner: S) -> Self {
        Linger { inner, state: LingerState::Open }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Linger<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Linger<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        loop {
            let me = &mut *self;
            match &mut me.state {
                LingerState::Open => {
                    std::task::ready!(Pin::new(&mut me.inner).poll_shutdown(cx))?;
                    me.state = LingerState::Draining {
                        deadline: Box::pin(tokio::time::sleep(LINGER_TOTAL)),
                        gap: Box::pin(tokio::time::sleep(LINGER_GAP)),
                        left: LINGER_BYTES,
                    };
                }
                LingerState::Draining { deadline, gap, left } => {
                    use std::future::Future;
                    if deadline.as_mut().poll(cx).is_ready() || gap.as_mut().poll(cx).is_ready() || *left == 0 {
                        me.state = LingerState::Done;
                        continue;
                    }
                    let mut scratch = [0u8; 8192];
                    let mut rb = tokio::io::ReadBuf::new(&mut scratch);
                    match Pin::new(&mut me.inner).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                            *left = left.saturating_sub(rb.filled().len());
                            gap.as_mut().reset(tokio::time::Instant::now() + LINGER_GAP);
                        }
                        // EOF or an error: the client is done.
                        Poll::Ready(_) => me.state = LingerState::Done,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                LingerState::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

enum Accepted {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

impl Accepted {
    /// The HTTP version of a cleartext connection, read with MSG_PEEK so the bytes stay in
    /// the socket. Why not read and replay them (as hyper-util's auto builder does): hyper
    /// would then find 24 bytes already in its 8 KiB read buffer and grow it to 16 KiB on
    /// the next read, for every connection (+8 MiB per 1,000 idle keep-alive connections).
    /// `None` when the peer closed without sending anything.
    async fn sniff(&self) -> std::io::Result<Option<Version>> {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = match self {
                Accepted::Tcp(s) => s.peek(&mut buf).await?,
                Accepted::Unix(s) => {
                    s.async_io(tokio::io::Interest::READABLE, || {
                        rustix::net::recv(s, &mut buf[..], rustix::net::RecvFlags::PEEK)
                            .map(|(got, _)| got)
                            .map_err(std::io::Error::from)
                    })
                    .await?
                }
            };
            if n == 0 {
                return Ok(None);
            }
            if let Some(v) = classify(&buf[..n]) {
                return Ok(Some(v));
            }
            // A preface split across packets: the socket stays readable while the bytes
            // sit unread, so wait a moment rather than spin (bounded by the caller's
            // header read timeout).
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

async fn accept(unix: Option<&UnixBinding>, tcp: Option<&TcpListener>) -> std::io::Result<(Accepted, Peer)> {
    if let Some(u) = unix {
        let (s, _) = u.listener.accept().await?;
        let cred = s.peer_cred()?;
        return Ok((Accepted::Unix(s), Peer::Unix { uid: cred.uid(), pid: cred.pid() }));
    }
    if let Some(t) = tcp {
        let (s, addr) = t.accept().await?;
        let _ = s.set_nodelay(true);
        return Ok((Accepted::Tcp(s), Peer::Tcp { addr, san: None }));
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_squatted_temporary_name_neither_blocks_nor_hijacks_the_bind() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.sock");
        // What the old bind used: a name anyone could predict and occupy first.
        std::fs::create_dir(p.with_extension(format!("tmp{}", std::process::id()))).unwrap();
        let b = bind_unix(&p, 0o660).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o660);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".keyward-bind-"))
            .collect();
        assert!(leftovers.is_empty(), "the private directory is removed");
        drop(b);
    }

    #[tokio::test]
    async fn a_socket_is_created_with_its_mode_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("admin.sock");
        let b = bind_unix(&p, 0o600).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        // A live socket is refused.
        assert!(matches!(bind_unix(&p, 0o600), Err(ListenError::SocketInUse(_))));
        // Leave a stale socket file behind: std's listener does not unlink on drop.
        let stale = std::os::unix::net::UnixListener::bind(dir.path().join("stale.sock")).unwrap();
        drop(stale);
        drop(b);
        assert!(!p.exists(), "the binding removes its file");
        let again = bind_unix(&dir.path().join("stale.sock"), 0o660).unwrap();
        assert_eq!(std::fs::metadata(&again.path).unwrap().permissions().mode() & 0o777, 0o660);
    }

    #[tokio::test]
    async fn a_regular_file_in_the_way_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.sock");
        std::fs::write(&p, b"data").unwrap();
        assert!(matches!(bind_unix(&p, 0o600), Err(ListenError::NotASocket(_))));
        assert_eq!(std::fs::read(&p).unwrap(), b"data");
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;
    use http_body_util::{BodyExt, Empty, Full};
    use std::future::Future;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    #[test]
    fn the_preface_decides_the_version() {
        assert_eq!(classify(H2_PREFACE), Some(Version::H2));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04"), Some(Version::H2));
        assert_eq!(classify(b"PRI * HTTP/2"), None, "a partial preface waits for more");
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Version::H1));
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), Some(Version::H1));
        assert_eq!(classify(b"P"), None);
        assert_eq!(classify(b"X"), Some(Version::H1));
    }

    /// A stream whose first write sends only a few bytes and whose next write waits, so the
    /// server sees the HTTP/2 preface arrive in two pieces.
    struct Trickle {
        inner: tokio::net::UnixStream,
        writes: usize,
        pause: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            let this = &mut *self;
            this.writes += 1;
            if this.writes == 1 {
                this.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                return Pin::new(&mut this.inner).poll_write(cx, &buf[..buf.len().min(5)]);
            }
            if let Some(p) = this.pause.as_mut() {
                std::task::ready!(p.as_mut().poll(cx));
                this.pause = None;
            }
            Pin::new(&mut this.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    async fn listener() -> (tempfile::TempDir, PathBuf, crate::shutdown::ShutdownTrigger) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let bound = Bound::Unix(bind_unix(&path, 0o600).unwrap());
        let (trigger, shutdown) = crate::shutdown::channel();
        tokio::spawn(serve("test", bound, None, ConnLimits::default(), shutdown, |_peer| {
            hyper::service::service_fn(|req: Request<Incoming>| async move {
                let body = format!("{:?}", req.version());
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
            })
        }));
        (dir, path, trigger)
    }

    #[tokio::test]
    async fn h2c_works_when_the_preface_arrives_in_pieces_and_http1_still_works() {
        let (_dir, path, _stop) = listener().await;
        let s = tokio::net::UnixStream::connect(&path).await.unwrap();
        let io = TokioIo::new(Trickle { inner: s, writes: 0, pause: None });
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        let res = send.send_request(Request::get("http://k/").body(Empty::<Bytes>::new()).unwrap()).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "HTTP/2.0");

        let s = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
        tokio::spawn(conn);
        for _ in 0..3 {
            let res = send.send_request(Request::get("/").body(Empty::<Bytes>::new()).unwrap()).await.unwrap();
            assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "HTTP/1.1");
        }
    }

    #[tokio::test]
    async fn a_connection_that_closes_before_a_byte_is_dropped_quietly() {
        let (_dir, path, _stop) = listener().await;
        drop(tokio::net::UnixStream::connect(&path).await.unwrap());
        let s = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
        tokio::spawn(conn);
        let res = send.send_request(Request::get("/").body(Empty::<Bytes>::new()).unwrap()).await.unwrap();
        assert_eq!(res.status(), 200);
    }

    /// A connection that never ends by itself, wakes its task `wakes` times a millisecond
    /// apart (a connection in use), and records the graceful-close request it gets.
    struct Busy {
        wakes_left: usize,
        tick: Option<Pin<Box<tokio::time::Sleep>>>,
        asked_to_close: Arc<std::sync::atomic::AtomicBool>,
        closing: bool,
    }

    impl std::future::Future for Busy {
        type Output = hyper::Result<()>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            if self.closing {
                return Poll::Ready(Ok(()));
            }
            if self.wakes_left > 0 {
                let tick = self.tick.get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(1))));
                if tick.as_mut().poll(cx).is_ready() {
                    self.tick = None;
                    self.wakes_left -= 1;
                    cx.waker().wake_by_ref();
                }
            }
            Poll::Pending
        }
    }

    fn busy(wakes: usize) -> (Busy, Arc<std::sync::atomic::AtomicBool>) {
        let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        (Busy { wakes_left: wakes, tick: None, asked_to_close: asked.clone(), closing: false }, asked)
    }

    fn close_gracefully(mut b: Pin<&mut Busy>) {
        b.asked_to_close.store(true, std::sync::atomic::Ordering::SeqCst);
        b.closing = true;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_a_busy_connection_asks_it_to_close_gracefully() {
        let (trigger, stop) = crate::shutdown::channel();
        let (conn, asked) = busy(1_000);
        let idle = Idle { activity: Arc::new(Activity::new()), after: Duration::from_secs(3600) };
        let driven = tokio::spawn(drain_on(conn, close_gracefully, stop, idle));
        // Fired while the connection keeps waking its task for its own reasons: the signal is
        // still seen, from its own wake-up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!asked.load(std::sync::atomic::Ordering::SeqCst));
        trigger.fire();
        tokio::time::timeout(Duration::from_secs(1), driven).await.expect("drained").unwrap().unwrap();
        assert!(asked.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_at_its_timeout_and_a_busy_one_is_not() {
        let (_trigger, stop) = crate::shutdown::channel();
        let activity = Arc::new(Activity::new());
        activity.inflight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (conn, asked) = busy(100);
        let idle = Idle { activity: activity.clone(), after: Duration::from_secs(2) };
        let started = tokio::time::Instant::now();
        let mut driven = tokio::spawn(drain_on(conn, close_gracefully, stop, idle));
        // A request in flight for 5 s: not idle, whatever the timer says.
        assert!(tokio::time::timeout(Duration::from_secs(5), &mut driven).await.is_err());
        activity.end();
        tokio::time::timeout(Duration::from_secs(10), driven).await.expect("closed when idle").unwrap().unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(7) && took < Duration::from_secs(10), "{took:?}");
        assert!(!asked.load(std::sync::atomic::Ordering::SeqCst), "an idle close is outright, not graceful");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ends_by_itself_ends_the_drive() {
        let (_trigger, stop) = crate::shutdown::channel();
        let idle = Idle { activity: Arc::new(Activity::new()), after: Duration::from_secs(60) };
        let ended = drain_on(async { Ok(()) }, |_| {}, stop, idle);
        tokio::time::timeout(Duration::from_millis(10), ended).await.expect("at once").unwrap();
    }
}
