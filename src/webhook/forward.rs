//! Forwarding verified deliveries to the app (`webhooks.forward_to`: HTTP or a Unix
//! socket), through a pooled client, and relaying the app's answer.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::http::{ProxyBody, UpstreamError};
use url::Url;

/// A Unix-socket stream usable by the pooled client.
#[derive(Debug)]
pub(crate) struct UnixIo(TokioIo<tokio::net::UnixStream>);

impl Connection for UnixIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for UnixIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UnixIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Connects every request to one Unix socket, whatever the URI says.
#[derive(Debug, Clone)]
pub(crate) struct UnixConnector(Arc<PathBuf>);

impl tower_service::Service<Uri> for UnixConnector {
    type Response = UnixIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<UnixIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(UnixIo(TokioIo::new(tokio::net::UnixStream::connect(&*path).await?))) })
    }
}

#[derive(Debug, Clone)]
enum Inner {
    Http(Client<HttpConnector, ProxyBody>),
    Unix(Client<UnixConnector, ProxyBody>),
}

/// The client that carries verified deliveries to the app.
#[derive(Debug, Clone)]
pub(crate) struct AppClient {
    inner: Inner,
    /// `scheme://authority` and path prefix requests are sent to.
    base: String,
    timeout: Duration,
}

impl AppClient {
    /// Builds the client for `forward_to`.
    pub(crate) fn new(to: &ForwardTo, timeout: Duration) -> AppClient {
        let builder = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.timer(TokioTimer::new()).pool_timer(TokioTimer::new()).pool_idle_timeout(Duration::from_secs(60));
            b
        };
        match to {
            ForwardTo::Http(u) => {
                let mut http = HttpConnector::new();
                http.set_nodelay(true);
                http.set_connect_timeout(Some(Duration::from_secs(5)));
                AppClient {
                    inner: Inner::Http(builder().build(http)),
                    base: u.as_str().trim_end_matches('/').to_string(),
                    timeout,
                }
            }
            ForwardTo::Unix(p) => AppClient {
                inner: Inner::Unix(builder().build(UnixConnector(Arc::new(p.clone())))),
                base: "http://localhost".to_string(),
                timeout,
            },
        }
    }

    /// The URI for a delivery's path and query.
    pub(crate) fn uri(&self, path_and_query: &str) -> Result<Uri, http::uri::InvalidUri> {
        format!("{}{path_and_query}", self.base).parse()
    }

    /// Sends and waits for the app's response head.
    pub(crate) async fn send(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, UpstreamError> {
        let fut = async {
            match &self.inner {
                Inner::Http(c) => c.request(req).await,
                Inner::Unix(c) => c.request(req).await,
            }
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) if e.is_connect() => {
                Err(UpstreamError::Connect("could not connect to the app (webhooks.forward_to)".into()))
            }
            Ok(Err(_)) => {
                Err(UpstreamError::Connect("the app closed the connection or sent an invalid response".into()))
            }
        }
    }
}

/// Where verified webhooks go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardTo {
    /// `http://host:port` (a path prefix is kept).
    Http(Url),
    /// `unix:/path/to/socket`
    Unix(PathBuf),
}
