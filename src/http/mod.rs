//! HTTP machinery shared by every listener and client, below the services that use it:
//! body types and bounded reads, the hop-by-hop rules, the upstream client and the app
//! listener's request-target parser. Nothing here knows credentials or answers a request.

pub(crate) mod body;
mod h2conn;
pub(crate) mod headers;
pub(crate) mod pool;
pub(crate) mod target;
pub(crate) mod upstream;

pub(crate) use body::{read_body, BodyError, BoxError, ProxyBody};
pub(crate) use target::RouteError;
pub(crate) use upstream::{Upstream, UpstreamBody, UpstreamConfig, UpstreamError};
