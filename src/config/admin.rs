//! `[admin]`: the admin listeners and who may use them.

use super::build::Ctx;
use super::raw::*;
use super::*;

pub(super) fn build_admin(ctx: &Ctx<'_>, admin_raw: RawAdmin, plain_tcp: bool) -> Result<AdminConfig, ConfigError> {
    let admin = AdminConfig {
        unix: admin_raw.unix.as_deref().map(|p| ctx.path("admin.unix", p)).transpose()?,
        tcp: admin_raw.tcp.as_deref().map(|a| ctx.addr("admin.tcp", a)).transpose()?,
        token_file: admin_raw.token_file.as_deref().map(|p| ctx.path("admin.token_file", p)).transpose()?,
        tls: admin_raw
            .tls
            .as_ref()
            .map(|t| -> Result<TlsFiles, ConfigError> {
                Ok(TlsFiles { cert: ctx.path("admin.tls.cert", &t.cert)?, key: ctx.path("admin.tls.key", &t.key)? })
            })
            .transpose()?,
    };
    if let Some(a) = admin.tcp {
        // The bearer token (and every credential put) would cross the network in clear.
        if !a.ip().is_loopback() && admin.tls.is_none() && !plain_tcp {
            return Err(ctx.err(
                "admin.tcp",
                format!("{a} is not a loopback address: add [admin.tls] cert and key, bind 127.0.0.1, or set [danger] admin_plain_tcp = true"),
            ));
        }
    }
    if admin.unix.is_none() && admin.tcp.is_none() {
        return Err(ctx.err("admin", "set admin.unix (and optionally admin.tcp)"));
    }
    if admin.tcp.is_some() && admin.token_file.is_none() {
        return Err(ctx.err("admin.token_file", "admin.tcp needs a token_file holding the bearer token"));
    }
    Ok(admin)
}
