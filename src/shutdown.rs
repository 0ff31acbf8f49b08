//! Signals and the drain handle: SIGTERM/SIGINT start a graceful shutdown; SIGHUP asks for
//! a configuration reload. Listeners hold a [`Shutdown`] and stop accepting when it fires.

use tokio::sync::watch;

/// A cloneable "stop now" signal.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The side that fires [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// A connected trigger and signal.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    /// Fires the signal (idempotent).
    pub fn fire(&self) {
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown has been requested.
    pub(crate) async fn wait(&mut self) {
        // An error means every trigger is gone: treat as shutdown.
        let _ = self.rx.wait_for(|v| *v).await;
    }

    /// Whether shutdown has been requested.
    pub(crate) fn is_fired(&self) -> bool {
        *self.rx.borrow()
    }
}

/// What a signal asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignalEvent {
    /// SIGTERM or SIGINT.
    Terminate,
    /// SIGHUP.
    Reload,
}

/// The process's signal streams, registered once so no signal is lost between waits.
#[derive(Debug)]
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers SIGTERM, SIGINT and SIGHUP handlers.
    pub(crate) fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next SIGTERM, SIGINT or SIGHUP.
    pub(crate) async fn next(&mut self) -> SignalEvent {
        tokio::select! {
            _ = self.term.recv() => SignalEvent::Terminate,
            _ = self.int.recv() => SignalEvent::Terminate,
            _ = self.hup.recv() => SignalEvent::Reload,
        }
    }
}

/// Tells systemd about the daemon's state (`READY=1`, `STOPPING=1`, `RELOADING=1`…) when it
/// runs under `Type=notify`: one datagram to `$NOTIFY_SOCKET`, which may be an abstract
/// socket (`@name`). Without the variable this does nothing.
pub(crate) fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let path = std::path::PathBuf::from(path);
    let sent = match path.to_str().and_then(|p| p.strip_prefix('@')) {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
        }
        None => sock.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn systemd_notifications_reach_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&p).unwrap();
        // The variable is process-wide: this is the only test that sets it.
        std::env::set_var("NOTIFY_SOCKET", &p);
        super::notify_systemd("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
