//! `[webhooks]`: the webhook listener, where verified deliveries go, trusted proxies.

use super::build::Ctx;
use super::raw::*;
use super::*;

pub(super) fn build_webhooks(ctx: &Ctx<'_>, w: RawWebhooks) -> Result<WebhooksConfig, ConfigError> {
    let listen = ctx.addr("webhooks.listen", &w.listen)?;
    let public_base_url = ctx.url("webhooks.public_base_url", w.public_base_url.trim_end_matches('/'), true)?;
    let forward_to = if let Some(p) = w.forward_to.strip_prefix("unix:") {
        ForwardTo::Unix(ctx.path("webhooks.forward_to", p)?)
    } else {
        let u = Url::parse(&w.forward_to)
            .map_err(|e| ctx.err("webhooks.forward_to", format!("\"{}\" is not a URL: {e}", w.forward_to)))?;
        if u.scheme() != "http" || u.host_str().is_none() {
            return Err(ctx.err("webhooks.forward_to", "must be http://host:port or unix:/path (the app is local)"));
        }
        ForwardTo::Http(u)
    };
    let max_body = match &w.max_body {
        Some(s) => parse_size(s).map_err(|m| ctx.err("webhooks.max_body", m))?,
        None => 1 << 20,
    };
    if max_body == 0 {
        return Err(ctx.err("webhooks.max_body", "must be above zero"));
    }
    let trusted_proxies = w
        .trusted_proxies
        .iter()
        .map(|c| {
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| ctx.err("webhooks.trusted_proxies", format!("\"{c}\" is not a CIDR like 10.0.0.0/8")))
        })
        .collect::<Result<_, _>>()?;
    let tls = w
        .tls
        .map(|t| -> Result<TlsFiles, ConfigError> {
            Ok(TlsFiles { cert: ctx.path("webhooks.tls.cert", &t.cert)?, key: ctx.path("webhooks.tls.key", &t.key)? })
        })
        .transpose()?;
    let forward_timeout =
        ctx.duration("webhooks.forward_timeout", w.forward_timeout.as_deref(), Duration::from_secs(30))?;
    if forward_timeout.is_zero() {
        return Err(ctx.err("webhooks.forward_timeout", "must be above zero"));
    }
    let positive = |key: &str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(ctx.err(key, "must be above zero")),
        v => Ok(v.unwrap_or(default)),
    };
    let max_connections = positive("webhooks.max_connections", w.max_connections, 1024)?;
    let max_connections_per_source =
        positive("webhooks.max_connections_per_source", w.max_connections_per_source, 128)?;
    let body_read_timeout =
        ctx.duration("webhooks.body_read_timeout", w.body_read_timeout.as_deref(), Duration::from_secs(10))?;
    let idle_timeout = ctx.duration("webhooks.idle_timeout", w.idle_timeout.as_deref(), Duration::from_secs(60))?;
    if body_read_timeout.is_zero() || idle_timeout.is_zero() {
        return Err(ctx.err("webhooks.body_read_timeout", "body_read_timeout and idle_timeout must be above zero"));
    }
    Ok(WebhooksConfig {
        listen,
        public_base_url,
        forward_to,
        max_body,
        trusted_proxies,
        tls,
        forward_timeout,
        max_connections,
        max_connections_per_source,
        body_read_timeout,
        idle_timeout,
    })
}
