//! `keyward store migrate --from CONFIG_A --to CONFIG_B`: copies one store into another
//! (sled into PostgreSQL, or back), records verbatim: ciphertext stays ciphertext, so no
//! master key is needed. Resumable: records already copied are skipped, the audit chain
//! continues from the target's head. Ends by verifying the target's audit chain.

use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::config::{Backend, Config, Env};
use keyward_core::ids::{RouteId, RouteKind, TenantId};
use keyward_store::{Imported, Store};

async fn open(cfg: &Config, env: &dyn Env) -> Result<Arc<dyn Store>> {
    Ok(match &cfg.store.backend {
        Backend::Sled => Arc::new(keyward_store::SledStore::open(&cfg.store.path).with_context(|| {
            format!("cannot open {} (stop the daemon that uses it first)", cfg.store.path.display())
        })?),
        Backend::Postgres(pg) => keyward_store::PgStore::open(crate::app::pg_target_for_tools(pg, env)?).await?,
    })
}

/// What a migration copied.
#[derive(Debug, Default, Clone, Copy)]
pub struct Copied {
    /// Tenants.
    pub tenants: u64,
    /// Credentials.
    pub credentials: u64,
    /// Routes.
    pub routes: u64,
    /// Audit entries (new to the target).
    pub audit: u64,
}

/// Runs the migration with a progress bar on stderr.
pub async fn migrate(from: &Config, to: &Config, env: &dyn Env) -> Result<Copied> {
    if format!("{:?}{:?}", from.store.backend, from.store.path) == format!("{:?}{:?}", to.store.backend, to.store.path)
    {
        bail!("--from and --to name the same store");
    }
    let src = open(from, env).await?;
    let dst = open(to, env).await?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} {bar:40} {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut n = Copied::default();

    // The key check value first: a target sealed under another master key is refused.
    if let Some(v) = src.get_meta("keycheck").await? {
        dst.import(vec![Imported::Meta { key: "keycheck".into(), value: v }])
            .await
            .context("the target store belongs to another master key")?;
    }

    bar.set_message("tenants");
    let mut after: Option<TenantId> = None;
    loop {
        let page = src.list_tenants(after.as_ref(), 500).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.tenant.clone());
        bar.inc_length(page.len() as u64);
        let mut items: Vec<Imported> = Vec::new();
        for t in &page {
            for c in src.list_credentials(&t.tenant).await? {
                items.push(Imported::Credential(c));
                n.credentials += 1;
            }
        }
        items.splice(0..0, page.iter().cloned().map(Imported::Tenant));
        dst.import(items).await?;
        n.tenants += page.len() as u64;
        bar.inc(page.len() as u64);
    }

    bar.set_message("routes");
    let mut after: Option<(RouteKind, RouteId)> = None;
    loop {
        let page = src.list_routes(after.as_ref().map(|(k, i)| (k, i)), 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.kind.clone(), last.id.clone()));
        bar.inc_length(page.len() as u64);
        n.routes += page.len() as u64;
        bar.inc(page.len() as u64);
        // Verbatim, MAC included: the copy needs no master key.
        dst.import(page.into_iter().map(Imported::Route).collect()).await?;
    }

    bar.set_message("audit");
    let src_head = src.audit_head().await?;
    let start = dst.audit_head().await?.seq;
    bar.inc_length(src_head.seq.saturating_sub(start));
    let mut after = start;
    loop {
        let page = src.audit_range(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        n.audit += page.len() as u64;
        bar.inc(page.len() as u64);
        dst.import(page.into_iter().map(Imported::Audit).collect()).await?;
    }
    bar.finish_and_clear();

    // The copy must verify on its own: sequence, links and head (the MACs are checked by
    // `keyward audit verify` on the daemon that holds the master key).
    let report = keyward_store::verify_store(&*dst, None).await?;
    let head = dst.audit_head().await?;
    if !report.ok {
        bail!("the target's audit chain does not verify: {}", report.problem.unwrap_or_default());
    }
    if head.seq != src_head.seq || head.hash != src_head.hash {
        bail!("the target's audit head differs from the source's (the target had other entries)");
    }
    Ok(n)
}
