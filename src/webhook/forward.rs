//! Forwarding verified deliveries to the app (`webhooks.forward_to`: HTTP or a Unix
//! socket) over keep-alive connections driven in the delivery's own task
//! ([`crate::http::pool`]), and relaying the app's answer.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Uri};

use crate::http::pool::{Dial, Pool, PoolError, PooledBody};
use crate::http::{ProxyBody, UpstreamError};
use url::Url;

/// How long an idle connection to the app is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The client that carries verified deliveries to the app.
#[derive(Clone)]
pub(crate) struct AppClient {
    pool: Pool,
    /// `scheme://authority` and path prefix requests are sent to.
    base: String,
    timeout: Duration,
}

impl std::fmt::Debug for AppClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppClient").field("base", &self.base).finish()
    }
}

impl AppClient {
    /// Builds the client for `forward_to`.
    pub(crate) fn new(to: &ForwardTo, timeout: Duration) -> AppClient {
        let connect = Duration::from_secs(5);
        match to {
            // Plain HTTP (`forward_to` is checked to be http:// at load: the app is local).
            ForwardTo::Http(u) => AppClient {
                pool: Pool::new(Dial::Net { tls: None, allow_http: true }, connect, IDLE_TIMEOUT),
                base: u.as_str().trim_end_matches('/').to_string(),
                timeout,
            },
            ForwardTo::Unix(p) => AppClient {
                pool: Pool::new(Dial::Unix(Arc::new(p.clone())), connect, IDLE_TIMEOUT),
                base: "http://localhost".to_string(),
                timeout,
            },
        }
    }

    /// The URI for a delivery's path and query.
    pub(crate) fn uri(&self, path_and_query: &str) -> Result<Uri, http::uri::InvalidUri> {
        // Joined, not formatted, and handed over as a `String` the URI keeps as its bytes
        // (`parse` of a `&str` copies it again): this runs for every delivery.
        Uri::try_from([self.base.as_str(), path_and_query].concat())
    }

    /// Sends and waits for the app's response head. Combinators, not an `async fn`, for
    /// the reason `Upstream::send` gives: the request would sit in the future twice.
    pub(crate) fn send(
        &self,
        req: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<PooledBody>, UpstreamError>> + Send + '_ {
        use futures_util::FutureExt;
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.pool.send(req)).map(move |sent| match sent {
            Err(_) => Err(UpstreamError::Timeout(timeout)),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(f)) => match f.error {
                PoolError::Connect(_) | PoolError::ConnectTimeout | PoolError::Tls(_) | PoolError::BadTarget(_) => {
                    Err(UpstreamError::Connect("could not connect to the app (webhooks.forward_to)".into()))
                }
                PoolError::Http(_) | PoolError::H2(_) => {
                    Err(UpstreamError::Connect("the app closed the connection or sent an invalid response".into()))
                }
            },
        })
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
