//! `[master_key]`: exactly one source of the active key, and the older ones rotation reads.

use super::build::Ctx;
use super::raw::*;
use super::*;
use crate::vault::{Pkcs11Config, TransitAuth, TransitConfig};

/// How long an unwrapped tenant key stays in memory when a KMS holds the master key.
const DEFAULT_KMS_CACHE_TTL: Duration = Duration::from_secs(3600);
const SOURCES: &str = "file, env, credential, [master_key.vault_transit] or [master_key.pkcs11]";

pub(super) fn build_master_key(
    ctx: &Ctx<'_>,
    mk: RawMasterKey,
    create_missing: bool,
) -> Result<MasterKeyConfig, ConfigError> {
    let sources =
        [mk.file.is_some(), mk.env.is_some(), mk.credential.is_some(), mk.vault_transit.is_some(), mk.pkcs11.is_some()];
    let mut cache_ttl = None;
    let source_key = match sources.iter().filter(|b| **b).count() {
        1 => {
            if let Some(t) = &mk.vault_transit {
                cache_ttl = Some(ctx.duration(
                    "master_key.vault_transit.cache_ttl",
                    t.cache_ttl.as_deref(),
                    DEFAULT_KMS_CACHE_TTL,
                )?);
                KeySource::Transit(transit(ctx, "master_key.vault_transit", t)?)
            } else if let Some(p) = &mk.pkcs11 {
                cache_ttl =
                    Some(ctx.duration("master_key.pkcs11.cache_ttl", p.cache_ttl.as_deref(), DEFAULT_KMS_CACHE_TTL)?);
                KeySource::Pkcs11(pkcs11(ctx, "master_key.pkcs11", p)?)
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
        0 => return Err(ctx.err("master_key", format!("set one of {SOURCES}"))),
        _ => return Err(ctx.err("master_key", format!("set only one of {SOURCES}"))),
    };
    if cache_ttl.is_some_and(|d| d.is_zero()) {
        return Err(ctx.err("master_key", "cache_ttl must be above zero (a tenant key is unwrapped at least per use)"));
    }
    if create_missing && !matches!(source_key, KeySource::File(_)) {
        return Err(ctx.err("danger.create_missing_master_key", "needs master_key.file"));
    }
    let previous = mk
        .previous
        .iter()
        .enumerate()
        .map(|(i, p)| ctx.path(&format!("master_key.previous[{i}]"), p))
        .collect::<Result<_, _>>()?;
    let mut previous_kms = Vec::new();
    if let Some(t) = &mk.previous_vault_transit {
        if mk.vault_transit.is_some() {
            return Err(ctx.err(
                "master_key.previous_vault_transit",
                "only with a file key active: transit rotates its own key versions (`keyward key rotate` re-wraps)",
            ));
        }
        previous_kms.push(KeySource::Transit(transit(ctx, "master_key.previous_vault_transit", t)?));
    }
    if let Some(p) = &mk.previous_pkcs11 {
        if mk.pkcs11.is_some() {
            return Err(ctx.err("master_key.previous_pkcs11", "only while another source is active"));
        }
        previous_kms.push(KeySource::Pkcs11(pkcs11(ctx, "master_key.previous_pkcs11", p)?));
    }
    Ok(MasterKeyConfig { source: source_key, previous, previous_kms, cache_ttl })
}

fn transit(ctx: &Ctx<'_>, at: &str, t: &RawTransit) -> Result<TransitConfig, ConfigError> {
    let address = ctx.url(&format!("{at}.address"), &t.address, true)?;
    let loopback = address.host_str().is_some_and(|h| {
        h == "localhost" || h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|i| i.is_loopback())
    });
    if address.scheme() != "https" && !loopback {
        return Err(ctx.err(&format!("{at}.address"), "must be https:// (plain http only on loopback)"));
    }
    if t.key.is_empty() || t.key.contains('/') {
        return Err(ctx.err(&format!("{at}.key"), "must be a transit key name, without '/'"));
    }
    let mount_of =
        |m: &Option<String>, default: &str| m.clone().unwrap_or_else(|| default.into()).trim_matches('/').to_string();
    let auth = match (&t.token_file, &t.approle, &t.kubernetes) {
        (Some(f), None, None) => TransitAuth::TokenFile(ctx.path(&format!("{at}.token_file"), f)?),
        (None, Some(a), None) => TransitAuth::AppRole {
            role_id_file: ctx.path(&format!("{at}.approle.role_id_file"), &a.role_id_file)?,
            secret_id_file: ctx.path(&format!("{at}.approle.secret_id_file"), &a.secret_id_file)?,
            mount: mount_of(&a.mount, "approle"),
        },
        (None, None, Some(k)) => {
            if k.role.is_empty() {
                return Err(ctx.err(&format!("{at}.kubernetes.role"), "must name the Vault role"));
            }
            TransitAuth::Kubernetes {
                role: k.role.clone(),
                jwt_file: ctx.path(
                    &format!("{at}.kubernetes.jwt_file"),
                    k.jwt_file.as_deref().unwrap_or("/var/run/secrets/kubernetes.io/serviceaccount/token"),
                )?,
                mount: mount_of(&k.mount, "kubernetes"),
            }
        }
        (None, None, None) => return Err(ctx.err(at, "set one of token_file, approle or kubernetes")),
        _ => return Err(ctx.err(at, "set only one of token_file, approle or kubernetes")),
    };
    Ok(TransitConfig {
        address: t.address.trim_end_matches('/').to_string(),
        key: t.key.clone(),
        mount: mount_of(&t.mount, "transit"),
        auth,
        ca_file: t.ca_file.as_deref().map(|p| ctx.path(&format!("{at}.ca_file"), p)).transpose()?,
        namespace: t.namespace.clone(),
    })
}

fn pkcs11(ctx: &Ctx<'_>, at: &str, p: &RawPkcs11) -> Result<Pkcs11Config, ConfigError> {
    if p.token_label.is_empty() || p.token_label.len() > 32 {
        return Err(ctx.err(&format!("{at}.token_label"), "must be a token label of 1 to 32 characters"));
    }
    if p.key_label.is_empty() {
        return Err(ctx.err(&format!("{at}.key_label"), "must name the key object"));
    }
    let sessions = p.sessions.unwrap_or(4);
    if !(1..=64).contains(&sessions) {
        return Err(ctx.err(&format!("{at}.sessions"), "must be between 1 and 64"));
    }
    Ok(Pkcs11Config {
        module: ctx.path(&format!("{at}.module"), &p.module)?,
        token_label: p.token_label.clone(),
        pin_file: ctx.path(&format!("{at}.pin_file"), &p.pin_file)?,
        key_label: p.key_label.clone(),
        sessions,
    })
}
