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
    pub async fn wait(&mut self) {
        // An error means every trigger is gone: treat as shutdown.
        let _ = self.rx.wait_for(|v| *v).await;
    }

    /// Whether shutdown has been requested.
    pub fn is_fired(&self) -> bool {
        *self.rx.borrow()
    }
}

/// What a signal asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// SIGTERM or SIGINT.
    Terminate,
    /// SIGHUP.
    Reload,
}

/// Waits for the next SIGTERM, SIGINT or SIGHUP.
pub async fn next_signal() -> std::io::Result<SignalEvent> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::select! {
        _ = term.recv() => Ok(SignalEvent::Terminate),
        _ = int.recv() => Ok(SignalEvent::Terminate),
        _ = hup.recv() => Ok(SignalEvent::Reload),
    }
}
