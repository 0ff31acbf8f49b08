//! HTTP machinery shared by every listener and client, below the services that use it:
//! body types and bounded reads, the hop-by-hop rules, the upstream client and the app
//! listener's request-target parser. Nothing here knows credentials or answers a request.

pub mod body;
pub mod headers;
pub mod target;
pub mod upstream;

pub use body::{read_body, BodyError, BoxError, ProxyBody};
pub use target::RouteError;
pub use upstream::{Upstream, UpstreamConfig, UpstreamError};
