//! Webhook routes (a provider's id to the tenant that owns it). Writes go through the one
//! audited commit like every other mutation.

use super::*;

impl Credentials {
    /// Maps a route to a tenant. `keep_other_owner` refuses to move a route another tenant
    /// owns (automatic discovery); operators may move routes explicitly.
    pub async fn put_route(
        &self,
        actor: &str,
        kind: &RouteKind,
        id: &RouteId,
        tenant: &TenantId,
        keep_other_owner: bool,
    ) -> Result<(), CredError> {
        let op = Op::PutRoute { kind: kind.clone(), id: id.clone(), tenant: tenant.clone(), keep_other_owner };
        self.commit(vec![op], draft(actor, "route.put", Some(tenant.as_str()), None, Some(format!("{kind}/{id}"))))
            .await?;
        Ok(())
    }

    /// The tenant a route points at: one store lookup, O(1) in the number of routes. A kind
    /// or id that is not a valid route id routes nowhere.
    pub async fn route(&self, kind: &str, id: &str) -> Result<Option<TenantId>, CredError> {
        let (Ok(kind), Ok(id)) = (RouteKind::parse(kind), RouteId::parse(id)) else { return Ok(None) };
        Ok(self.store.get_route(&kind, &id).await?)
    }

    /// The routes that lead to `tenant`, as `(kind, id)`, each checked through the store's
    /// authenticated read. A scan of the routing index: for the console and the CLI, not
    /// for a request path.
    pub async fn tenant_routes(&self, tenant: &TenantId) -> Result<Vec<(RouteKind, RouteId)>, CredError> {
        let mut out = Vec::new();
        let mut after: Option<(RouteKind, RouteId)> = None;
        loop {
            let page = self.store.list_routes(after.as_ref().map(|(k, i)| (k, i)), 1000).await?;
            let Some(last) = page.last() else { break };
            after = Some((last.kind.clone(), last.id.clone()));
            for row in page {
                if row.tenant == *tenant && self.store.get_route(&row.kind, &row.id).await?.as_ref() == Some(tenant) {
                    out.push((row.kind, row.id));
                }
            }
        }
        Ok(out)
    }

    /// Removes a route; false when there was none.
    pub async fn delete_route(&self, actor: &str, kind: &RouteKind, id: &RouteId) -> Result<bool, CredError> {
        let Some(owner) = self.store.get_route(kind, id).await? else {
            return Ok(false);
        };
        let op = Op::DeleteRoute { kind: kind.clone(), id: id.clone() };
        let target = Some(format!("{kind}/{id}"));
        self.commit(vec![op], draft(actor, "route.delete", Some(owner.as_str()), None, target)).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn route_writes_go_through_the_one_commit_so_the_chain_length_keeps_up() {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::creds::for_tests(dir.path()).await;
        let (kind, id, tenant) = (
            RouteKind::parse("vapi-assistant").unwrap(),
            RouteId::parse("asst_1").unwrap(),
            TenantId::parse("acme").unwrap(),
        );
        c.put_route("test", &kind, &id, &tenant, false).await.unwrap();
        assert_eq!(c.audit_length(), c.store().audit_head().await.unwrap().seq, "after route.put");
        assert!(c.delete_route("test", &kind, &id).await.unwrap());
        assert_eq!(c.audit_length(), c.store().audit_head().await.unwrap().seq, "after route.delete");
    }
}
