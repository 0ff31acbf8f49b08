//! Listeners: binding Unix sockets (mode, stale-socket removal, peer uid) and TCP ports,
//! and the one accept loop every listener uses (HTTP/1.1 + HTTP/2, optional TLS, graceful
//! drain on shutdown).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
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
pub enum Peer {
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
pub struct UnixBinding {
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
/// a live one is refused. The socket is bound under a temporary name, given its mode, then
/// renamed into place, so no client can connect while it has the default permissions.
pub fn bind_unix(path: &Path, mode: u32) -> Result<UnixBinding, ListenError> {
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
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let std_listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(err)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    std_listener.set_nonblocking(true).map_err(err)?;
    let listener = UnixListener::from_std(std_listener).map_err(err)?;
    Ok(UnixBinding { listener, path: path.to_path_buf() })
}

/// Binds a TCP port (port 0 picks a free one; read it back with `local_addr`).
pub fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let err = |e: std::io::Error| ListenError::Tcp { addr, reason: e.to_string() };
    let std_listener = std::net::TcpListener::bind(addr).map_err(err)?;
    std_listener.set_nonblocking(true).map_err(err)?;
    TcpListener::from_std(std_listener).map_err(err)
}

/// A bound listener of either kind.
#[derive(Debug)]
pub enum Bound {
    /// Unix socket.
    Unix(UnixBinding),
    /// TCP port.
    Tcp(TcpListener),
}

impl Bound {
    /// A printable address (path or ip:port).
    pub fn describe(&self) -> String {
        match self {
            Bound::Unix(u) => u.path.display().to_string(),
            Bound::Tcp(t) => t.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        }
    }
}

/// Connection-level limits shared by listeners.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time allowed for a client to send a request head (slow-client defence).
    pub header_read_timeout: Duration,
    /// Largest request head (HTTP/1) before 431.
    pub max_header_bytes: usize,
    /// How long in-flight requests may run after shutdown starts.
    pub drain_grace: Duration,
    /// TLS handshake deadline.
    pub tls_handshake_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            drain_grace: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Optional TLS on a TCP listener: the acceptor plus how to name the verified peer.
#[derive(Clone)]
pub struct TlsSetup {
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

fn builder(limits: &ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    b.http2().timer(TokioTimer::new()).max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// Serves `bound` until `shutdown` fires, then drains in-flight connections for up to
/// `limits.drain_grace`. `make` builds a service for each connection from its [`Peer`].
pub async fn serve<F, S, B>(
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
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let make = Arc::new(make);
    let builder = Arc::new(builder(&limits));
    let graceful = GracefulShutdown::new();
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
                match conn {
                    Accepted::Unix(s) => {
                        let svc = make(peer);
                        let fut = graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(s), svc).into_owned());
                        tokio::spawn(async move {
                            if let Err(e) = fut.await {
                                tracing::debug!(listener = name, error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Accepted::Tcp(s) => match &tls {
                        None => {
                            let svc = make(peer);
                            let fut = graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(s), svc).into_owned());
                            tokio::spawn(async move {
                                if let Err(e) = fut.await {
                                    tracing::debug!(listener = name, error = %e, "connection ended with an error");
                                }
                            });
                        }
                        Some(setup) => {
                            let setup = setup.clone();
                            let make = make.clone();
                            let builder = builder.clone();
                            let watcher = graceful.watcher();
                            tokio::spawn(async move {
                                let hs = tokio::time::timeout(limits.tls_handshake_timeout, setup.acceptor.accept(s)).await;
                                let stream = match hs {
                                    Ok(Ok(s)) => s,
                                    Ok(Err(e)) => {
                                        tracing::debug!(listener = name, error = %e, "TLS handshake failed");
                                        return;
                                    }
                                    Err(_) => {
                                        tracing::debug!(listener = name, "TLS handshake timed out");
                                        return;
                                    }
                                };
                                let san = setup.identity.and_then(|f| f(stream.get_ref().1));
                                let peer = match peer {
                                    Peer::Tcp { addr, .. } => Peer::Tcp { addr, san },
                                    p => p,
                                };
                                let svc = make(peer);
                                let fut = watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned());
                                if let Err(e) = fut.await {
                                    tracing::debug!(listener = name, error = %e, "connection ended with an error");
                                }
                            });
                        }
                    },
                }
            }
        }
    }
    // Stop accepting at once (and remove the socket file), then drain.
    drop(unix);
    drop(tcp);
    if tokio::time::timeout(limits.drain_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(listener = name, grace = ?limits.drain_grace, "drain grace period over; closing remaining connections");
    }
}

enum Accepted {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
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
