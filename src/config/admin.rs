//! `[admin]`: the admin listeners and who may use them.

use super::build::Ctx;
use super::raw::*;
use super::*;
use crate::admin::roles::{valid_user_name, AdminUser, Role};

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
        users: users(ctx, &admin_raw.users)?,
        console: admin_raw.console,
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
    if admin.tcp.is_some() && admin.token_file.is_none() && admin.users.is_empty() {
        return Err(ctx.err(
            "admin.token_file",
            "admin.tcp needs a token_file holding the bearer token, or [[admin.users]] (`keyward admin token new NAME`)",
        ));
    }
    if admin.console {
        match admin.tcp {
            None => return Err(ctx.err("admin.console", "the console is served on admin.tcp: set it")),
            // Session cookies and tokens would cross the network in clear.
            Some(a) if !a.ip().is_loopback() && admin.tls.is_none() => {
                return Err(ctx.err("admin.console", format!("{a} is not loopback: the console needs [admin.tls]")))
            }
            _ => {}
        }
    }
    if !admin.users.is_empty() && admin.tcp.is_none() {
        return Err(ctx.err(
            "admin.users",
            "named users log in over admin.tcp (the Unix socket goes by peer uid): set admin.tcp",
        ));
    }
    Ok(admin)
}

/// `[[admin.users]]`: names unique and plain, roles known, digests 64 hex digits and unique.
fn users(ctx: &Ctx<'_>, raw: &[RawUser]) -> Result<Vec<AdminUser>, ConfigError> {
    let mut out: Vec<AdminUser> = Vec::new();
    for (i, u) in raw.iter().enumerate() {
        let at = |k: &str| format!("admin.users[{i}].{k}");
        if !valid_user_name(&u.name) {
            return Err(ctx.err(&at("name"), "must be 1 to 64 letters, digits, '.', '_', '-' or '@'"));
        }
        let role = Role::parse(&u.role).ok_or_else(|| {
            ctx.err(&at("role"), format!("\"{}\" is not a role: use viewer, operator or admin", u.role))
        })?;
        let mut digest = [0u8; 32];
        if u.token_sha256.len() != 64 || hex::decode_to_slice(&u.token_sha256, &mut digest).is_err() {
            return Err(ctx.err(
                &at("token_sha256"),
                "must be the 64 hex digits of the token's SHA-256 (`keyward admin token new NAME` prints both)",
            ));
        }
        if out.iter().any(|o| o.name == u.name) {
            return Err(ctx.err(&at("name"), format!("\"{}\" is listed twice", u.name)));
        }
        if out.iter().any(|o| o.token_sha256 == digest) {
            return Err(ctx.err(&at("token_sha256"), "is another user's token: give each user their own"));
        }
        out.push(AdminUser { name: u.name.clone(), role, token_sha256: digest });
    }
    Ok(out)
}
