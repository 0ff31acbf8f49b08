//! `[master_key]`: exactly one source of the active key, and the older ones rotation reads.

use super::build::Ctx;
use super::raw::*;
use super::*;

pub(super) fn build_master_key(
    ctx: &Ctx<'_>,
    mk: RawMasterKey,
    create_missing: bool,
) -> Result<MasterKeyConfig, ConfigError> {
    let sources = [mk.file.is_some(), mk.env.is_some(), mk.credential.is_some(), mk.vault_transit.is_some()];
    let source_key = match sources.iter().filter(|b| **b).count() {
        1 => {
            if let Some(t) = &mk.vault_transit {
                let address = ctx.url("master_key.vault_transit.address", &t.address, true)?;
                let loopback = address.host_str().is_some_and(|h| {
                    h == "localhost"
                        || h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|i| i.is_loopback())
                });
                if address.scheme() != "https" && !loopback {
                    return Err(
                        ctx.err("master_key.vault_transit.address", "must be https:// (plain http only on loopback)")
                    );
                }
                if t.key.is_empty() || t.key.contains('/') {
                    return Err(ctx.err("master_key.vault_transit.key", "must be a transit key name, without '/'"));
                }
                KeySource::Transit(crate::vault::TransitConfig {
                    address: t.address.trim_end_matches('/').to_string(),
                    key: t.key.clone(),
                    mount: t.mount.clone().unwrap_or_else(|| "transit".into()).trim_matches('/').to_string(),
                    token_file: ctx.path("master_key.vault_transit.token_file", &t.token_file)?,
                    ca_file: t
                        .ca_file
                        .as_deref()
                        .map(|p| ctx.path("master_key.vault_transit.ca_file", p))
                        .transpose()?,
                    namespace: t.namespace.clone(),
                })
            } else if let Some(f) = &mk.file {
                KeySource::File(ctx.path("master_key.file", f)?)
            } else if let Some(v) = &mk.env {
                if v.is_empty() || !v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
                    return Err(
                        ctx.err("master_key.env", "must be an environment variable name like KEYWARD_MASTER_KEY")
                    );
                }
                KeySource::Env(v.clone())
            } else {
                let n = mk.credential.clone().unwrap_or_default();
                if n.is_empty() || n.contains('/') {
                    return Err(ctx.err(
                        "master_key.credential",
                        "must be a credential name (LoadCredential=NAME:…), without '/'",
                    ));
                }
                KeySource::Credential(n)
            }
        }
        0 => return Err(ctx.err("master_key", "set one of file, env, credential or [master_key.vault_transit]")),
        _ => return Err(ctx.err("master_key", "set only one of file, env, credential or [master_key.vault_transit]")),
    };
    if create_missing && !matches!(source_key, KeySource::File(_)) {
        return Err(ctx.err("create_missing", "needs master_key.file"));
    }
    let previous = mk
        .previous
        .iter()
        .enumerate()
        .map(|(i, p)| ctx.path(&format!("master_key.previous[{i}]"), p))
        .collect::<Result<_, _>>()?;
    Ok(MasterKeyConfig { source: source_key, previous })
}
