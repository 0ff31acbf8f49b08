//! `[app]`: the app listener, its TLS and `[[app.clients]]`.

use super::build::{parse_mode, Ctx};
use super::raw::*;
use super::*;

/// `[app] max_connections` unless set: app replicas keep pools of keep-alive connections.
const DEFAULT_APP_CONNECTIONS: usize = 4096;

pub(super) fn build_app(ctx: &Ctx<'_>, a: RawApp, plain_tcp: bool) -> Result<AppConfig, ConfigError> {
    let unix = a.unix.as_deref().map(|p| ctx.path("app.unix", p)).transpose()?;
    let unix_mode = match &a.unix_mode {
        Some(m) => parse_mode(m).map_err(|e| ctx.err("app.unix_mode", e))?,
        None => 0o660,
    };
    let tcp = a.tcp.as_deref().map(|s| ctx.addr("app.tcp", s)).transpose()?;
    let tls = a
        .tls
        .map(|t| -> Result<MtlsFiles, ConfigError> {
            Ok(MtlsFiles {
                cert: ctx.path("app.tls.cert", &t.cert)?,
                key: ctx.path("app.tls.key", &t.key)?,
                client_ca: ctx.path("app.tls.client_ca", &t.client_ca)?,
            })
        })
        .transpose()?;
    if tcp.is_some() && tls.is_none() && !plain_tcp {
        return Err(
            ctx.err("app.tls", "app.tcp needs [app.tls] with cert, key and client_ca (mTLS is required on TCP)")
        );
    }
    if unix.is_none() && tcp.is_none() {
        return Err(ctx.err("app", "set app.unix or app.tcp"));
    }
    let mut clients = Vec::new();
    for (i, c) in a.clients.into_iter().enumerate() {
        let key = format!("app.clients[{i}]");
        let identity = match (c.uid, c.san) {
            (Some(u), None) => ClientIdentity::Uid(u),
            (None, Some(s)) if !s.is_empty() => ClientIdentity::San(s),
            _ => return Err(ctx.err(&key, "set exactly one of uid or san")),
        };
        let tenants = if c.tenants.iter().any(|t| t == "*") {
            None
        } else {
            Some(
                c.tenants
                    .iter()
                    .map(|t| TenantId::parse(t).map_err(|e| ctx.err(&format!("{key}.tenants"), e.to_string())))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let providers = match c.providers {
            None => None,
            Some(p) if p.iter().any(|p| p == "*") => None,
            Some(p) => Some(
                p.iter()
                    .map(|p| ProviderName::parse(p).map_err(|e| ctx.err(&format!("{key}.providers"), e.to_string())))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        clients.push(ClientPolicy { identity, tenants, providers });
    }
    let max_connections = a.max_connections.unwrap_or(DEFAULT_APP_CONNECTIONS);
    if max_connections == 0 {
        return Err(ctx.err("app.max_connections", "must be above zero"));
    }
    Ok(AppConfig { unix, unix_mode, tcp, tls, clients, max_connections })
}
