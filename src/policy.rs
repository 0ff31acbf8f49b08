//! Who may use which tenant and provider (`[[app.clients]]`), and per-tenant rate limits
//! (token buckets per tenant and provider, from `[providers.*] rate_limit`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::listen::Peer;
use keyward_core::ids::ProviderName;
use keyward_core::ids::TenantId;
use keyward_core::providers::config::RateLimit;

/// The client policy table. Empty means every client may use every tenant.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    rules: Vec<ClientPolicy>,
}

impl Policy {
    /// From `[[app.clients]]`.
    pub(crate) fn new(rules: Vec<ClientPolicy>) -> Self {
        Policy { rules }
    }

    /// Whether `peer` may call `provider` for `tenant`. Several rules for one identity
    /// add up.
    pub(crate) fn allows(&self, peer: &Peer, tenant: &TenantId, provider: &str) -> bool {
        if self.rules.is_empty() {
            return true;
        }
        self.rules.iter().any(|r| {
            let who = match (&r.identity, peer) {
                (ClientIdentity::Uid(u), Peer::Unix { uid, .. }) => u == uid,
                (ClientIdentity::San(s), Peer::Tcp { san: Some(p), .. }) => s == p,
                _ => false,
            };
            who && r.tenants.as_ref().is_none_or(|ts| ts.contains(tenant))
                && r.providers.as_ref().is_none_or(|ps| ps.iter().any(|p| p.as_str() == provider))
        })
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by (tenant, provider). Idle full buckets are pruned, so a flood of
/// tenant ids cannot grow the table without bound.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

const PRUNE_AT: usize = 50_000;

impl RateLimiter {
    /// Takes one token, or says how long until one is available.
    pub(crate) fn check(&self, tenant: &TenantId, provider: &str, limit: RateLimit) -> Result<(), Duration> {
        let now = Instant::now();
        let Ok(mut map) = self.buckets.lock() else { return Ok(()) };
        if map.len() >= PRUNE_AT {
            map.retain(|_, b| {
                b.tokens + now.duration_since(b.last).as_secs_f64() * limit.per_second < f64::from(limit.burst)
            });
        }
        let b = map
            .entry((tenant.as_str().to_string(), provider.to_string()))
            .or_insert(Bucket { tokens: f64::from(limit.burst), last: now });
        let refill = now.duration_since(b.last).as_secs_f64() * limit.per_second;
        b.tokens = (b.tokens + refill).min(f64::from(limit.burst));
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / limit.per_second))
        }
    }
}

/// Who a client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientIdentity {
    /// A peer uid on the Unix socket.
    Uid(u32),
    /// A URI or DNS SAN of an mTLS client certificate.
    San(String),
}

/// One `[[app.clients]]` entry.
#[derive(Debug, Clone)]
pub struct ClientPolicy {
    /// Whom it applies to.
    pub identity: ClientIdentity,
    /// Allowed tenants; `None` means all (`"*"`).
    pub tenants: Option<Vec<TenantId>>,
    /// Allowed providers; `None` means all (`"*"`).
    pub providers: Option<Vec<ProviderName>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_core::ids::ProviderName;

    fn t(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn without_rules_everyone_may_use_everything() {
        assert!(Policy::default().allows(&Peer::Unix { uid: 7, pid: None }, &t("acme"), "vapi"));
    }

    #[test]
    fn rules_match_identity_tenant_and_provider() {
        let p = Policy::new(vec![
            ClientPolicy {
                identity: ClientIdentity::Uid(1000),
                tenants: None,
                providers: Some(vec![ProviderName::parse("twilio").unwrap()]),
            },
            ClientPolicy {
                identity: ClientIdentity::San("spiffe://x/app".into()),
                tenants: Some(vec![t("acme")]),
                providers: None,
            },
        ]);
        let u = Peer::Unix { uid: 1000, pid: None };
        assert!(p.allows(&u, &t("anyone"), "twilio"));
        assert!(!p.allows(&u, &t("anyone"), "vapi"));
        assert!(!p.allows(&Peer::Unix { uid: 1001, pid: None }, &t("acme"), "twilio"));
        let s = Peer::Tcp { addr: "127.0.0.1:1".parse().unwrap(), san: Some("spiffe://x/app".into()) };
        assert!(p.allows(&s, &t("acme"), "vapi"));
        assert!(!p.allows(&s, &t("globex"), "vapi"));
        let anon = Peer::Tcp { addr: "127.0.0.1:1".parse().unwrap(), san: None };
        assert!(!p.allows(&anon, &t("acme"), "vapi"));
    }

    #[test]
    fn a_bucket_allows_its_burst_then_says_when_to_retry() {
        let rl = RateLimiter::default();
        let limit = RateLimit { per_second: 1.0, burst: 3 };
        for _ in 0..3 {
            assert!(rl.check(&t("acme"), "vapi", limit).is_ok());
        }
        let wait = rl.check(&t("acme"), "vapi", limit).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(rl.check(&t("globex"), "vapi", limit).is_ok(), "buckets are per tenant");
    }
}
