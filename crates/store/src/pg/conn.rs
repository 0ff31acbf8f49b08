//! Connections: connecting over rustls (or plain TCP to a loopback or Unix socket), the
//! LISTEN connection that turns NOTIFY into cache invalidations, and the supervisor that
//! reconnects with backoff and tells subscribers to resync.

use std::time::Duration;

use tokio::sync::broadcast;
use tokio_postgres::{Client, NoTls};

use super::*;

/// Connects once; spawns the connection task (which ends when the connection drops).
pub(super) async fn connect(target: &PgTarget) -> Result<(Client, tokio::task::JoinHandle<()>), StoreError> {
    let timeout = Duration::from_secs(5);
    let fut = async {
        match &target.tls {
            Some(tls) => {
                let (client, conn) = target
                    .config
                    .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone()))
                    .await
                    .map_err(unavailable)?;
                Ok::<_, StoreError>((
                    client,
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                ))
            }
            None => {
                let (client, conn) = target.config.connect(NoTls).await.map_err(unavailable)?;
                Ok((
                    client,
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                ))
            }
        }
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| unavailable("connect timed out"))?
}

/// A listening connection: issues `LISTEN keyward_changes` and forwards every NOTIFY
/// payload to `tx` until the connection drops.
pub(super) async fn listen(
    target: &PgTarget,
    tx: broadcast::Sender<Change>,
) -> Result<(Client, tokio::task::JoinHandle<()>), StoreError> {
    use futures_util::StreamExt;
    type Messages = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>> + Send>,
    >;
    let fut = async {
        match &target.tls {
            Some(tls) => {
                let (c, mut conn) = target
                    .config
                    .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone()))
                    .await
                    .map_err(unavailable)?;
                let messages: Messages = Box::pin(futures_util::stream::poll_fn(move |cx| conn.poll_message(cx)));
                Ok::<(Client, Messages), StoreError>((c, messages))
            }
            None => {
                let (c, mut conn) = target.config.connect(NoTls).await.map_err(unavailable)?;
                let messages: Messages = Box::pin(futures_util::stream::poll_fn(move |cx| conn.poll_message(cx)));
                Ok((c, messages))
            }
        }
    };
    let (client, mut messages) =
        tokio::time::timeout(Duration::from_secs(5), fut).await.map_err(|_| unavailable("connect timed out"))??;
    let task = tokio::spawn(async move {
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    let _ = tx.send(Change::parse(n.payload()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client.batch_execute("LISTEN keyward_changes").await.map_err(unavailable)?;
    Ok((client, task))
}

/// Watches the connections; on loss, marks the store down, reconnects with backoff
/// (0.2 s doubling to 5 s) and announces a full resync.
pub(super) async fn supervise(store: std::sync::Weak<PgStore>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(s) = store.upgrade() else { return };
        let healthy = match s.conns().await {
            Ok(c) => {
                let ping = tokio::time::timeout(Duration::from_secs(2), c.reader.simple_query("SELECT 1")).await;
                matches!(ping, Ok(Ok(_))) && !c.listener.is_closed() && !c.writer.lock().await.is_closed()
            }
            Err(_) => false,
        };
        if healthy {
            backoff = Duration::from_millis(200);
            drop(s);
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        s.mark_down().await;
        match s.establish().await {
            Ok(_) => {
                tracing::info!(db = %s.target.display, "PostgreSQL connection restored; resyncing the cache");
                let _ = s.changes.send(Change::All);
                backoff = Duration::from_millis(200);
            }
            Err(e) => {
                tracing::debug!(error = %e, "PostgreSQL reconnect failed");
                drop(s);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
