//! Replay protection (PROVIDERS.md §1.6): a verified delivery's replay key is held as
//! in-flight while the app handles it, and recorded when the app answers 2xx; the same key
//! seen again before it expires is `replayed`. A failed forward releases the key, so the
//! provider's retry still passes.
//!
//! Memory is bounded: entries expire, and past `capacity` the oldest entries are evicted
//! first (with a warning, since that shortens protection). Only verified deliveries reach
//! the cache, so filling it needs valid signatures.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One tenant's recorded keys, oldest first.
#[derive(Debug, Default)]
struct Bucket {
    seen: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl Bucket {
    /// Drops expired keys; returns how many.
    fn purge(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while self.order.front().is_some_and(|(exp, _)| *exp <= now) {
            if let Some((exp, key)) = self.order.pop_front() {
                if self.seen.get(&key) == Some(&exp) {
                    self.seen.remove(&key);
                    n += 1;
                }
            }
        }
        n
    }

    /// Drops the oldest key; returns how many were dropped (0 or 1).
    fn evict_oldest(&mut self) -> usize {
        while let Some((exp, key)) = self.order.pop_front() {
            if self.seen.get(&key) == Some(&exp) {
                self.seen.remove(&key);
                return 1;
            }
        }
        0
    }
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<String, Bucket>,
    total: usize,
    inflight: HashSet<String>,
    evicted_early: u64,
}

/// The key was seen (or is in flight): the delivery is a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replayed;

/// The replay cache. Each tenant has a bounded share of it, so a tenant that signs a flood
/// of unique deliveries with its own secret evicts its own keys, not everyone's: past its
/// share its oldest key goes; when the whole cache is full, the largest tenant's oldest.
#[derive(Debug, Clone)]
pub(crate) struct ReplayCache {
    state: Arc<Mutex<State>>,
    capacity: usize,
    share: usize,
}

/// A key held in flight; record it with [`Reservation::commit`], or drop it to release.
#[derive(Debug)]
pub(crate) struct Reservation {
    cache: ReplayCache,
    scope: String,
    key: String,
    keep: std::time::Duration,
    committed: bool,
}

/// The fraction of the cache one tenant may hold.
const SHARE_DIVISOR: usize = 8;

impl ReplayCache {
    /// A cache holding at most `capacity` recorded keys, an eighth of them per tenant.
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self::with_share(capacity, (capacity / SHARE_DIVISOR).max(1))
    }

    /// A cache holding at most `capacity` keys, `share` of them per tenant.
    pub(crate) fn with_share(capacity: usize, share: usize) -> Self {
        ReplayCache { state: Arc::default(), capacity: capacity.max(1), share: share.clamp(1, capacity.max(1)) }
    }

    /// Reserves `key` in `scope` (the tenant), or refuses it as a replay.
    pub(crate) fn reserve(&self, scope: &str, key: String, keep: std::time::Duration) -> Result<Reservation, Replayed> {
        let now = Instant::now();
        let Ok(mut st) = self.state.lock() else { return Err(Replayed) };
        let (mut purged, mut seen) = (0, false);
        if let Some(b) = st.buckets.get_mut(scope) {
            purged = b.purge(now);
            seen = b.seen.contains_key(&key);
        }
        st.total -= purged;
        // One lookup for both: `insert` says whether the key was already in flight.
        if seen || !st.inflight.insert(key.clone()) {
            return Err(Replayed);
        }
        Ok(Reservation { cache: self.clone(), scope: scope.to_string(), key, keep, committed: false })
    }

    /// Recorded (not in-flight) keys.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().map(|s| s.total).unwrap_or(0)
    }

    fn record(&self, scope: &str, key: String, keep: std::time::Duration) {
        let Ok(mut st) = self.state.lock() else { return };
        st.inflight.remove(&key);
        let now = Instant::now();
        let exp = now + keep;
        let mut early = false;
        if let Some(b) = st.buckets.get_mut(scope).filter(|b| b.seen.len() >= self.share) {
            let mut gone = b.purge(now);
            if b.seen.len() >= self.share {
                gone += b.evict_oldest();
                early = true;
            }
            st.total -= gone;
        }
        if st.total >= self.capacity {
            // Rare (the whole cache full): one pass over the tenants, dropping the expired
            // and the empty buckets, then the largest tenant's oldest key.
            let mut gone = 0;
            st.buckets.retain(|_, b| {
                gone += b.purge(now);
                !b.seen.is_empty()
            });
            st.total -= gone;
            if st.total >= self.capacity {
                if let Some(b) = st.buckets.values_mut().max_by_key(|b| b.seen.len()) {
                    st.total -= b.evict_oldest();
                    early = true;
                }
            }
        }
        if early {
            st.evicted_early += 1;
            if st.evicted_early.is_power_of_two() {
                tracing::warn!(
                    evicted = st.evicted_early,
                    capacity = self.capacity,
                    share = self.share,
                    "replay cache full (a tenant's share or the whole): evicting unexpired keys"
                );
            }
        }
        let b = st.buckets.entry(scope.to_string()).or_default();
        if b.seen.insert(key.clone(), exp).is_none() {
            st.total += 1;
        }
        if let Some(b) = st.buckets.get_mut(scope) {
            b.order.push_back((exp, key));
        }
    }
}

impl crate::metrics::DerivedSource for ReplayCache {
    fn values(&self) -> Vec<(&'static str, &'static str, bool, u64)> {
        vec![("keyward_webhook_replay_keys", "Webhook replay keys remembered", false, self.len() as u64)]
    }
}

impl Reservation {
    /// Records the key (the app answered 2xx).
    pub(crate) fn commit(mut self) {
        self.committed = true;
        self.cache.record(&self.scope, std::mem::take(&mut self.key), self.keep);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.committed {
            if let Ok(mut st) = self.cache.state.lock() {
                st.inflight.remove(&self.key);
            }
        }
    }
}

/// Where replay keys live: this process's memory, or (fleet mode) the shared PostgreSQL
/// store, so a delivery replayed to another sidecar is still refused. When PostgreSQL is
/// unreachable the shared mode falls back to this process's memory (protection per
/// sidecar) rather than refusing every delivery.
#[derive(Debug, Clone)]
pub(crate) enum Replay {
    /// Per process.
    Memory(ReplayCache),
    /// Fleet-wide, with the local cache as fallback.
    Shared(Arc<dyn keyward_store::Store>, ReplayCache),
}

/// A replay key held while the app handles the delivery.
#[derive(Debug)]
pub(crate) enum Hold {
    /// In memory (released on drop).
    Memory(Reservation),
    /// In PostgreSQL.
    Shared {
        /// The store.
        store: Arc<dyn keyward_store::Store>,
        /// The key.
        key: String,
        /// How long to remember it.
        keep: std::time::Duration,
    },
}

/// How long a shared key stays in flight before it expires on its own (a crashed sidecar
/// must not block the provider's retry for longer).
const SHARED_INFLIGHT: std::time::Duration = std::time::Duration::from_secs(60);

impl Replay {
    /// Reserves `key` in `scope` (the tenant), or refuses it as a replay.
    pub(crate) async fn reserve(&self, scope: &str, key: String, keep: std::time::Duration) -> Result<Hold, Replayed> {
        match self {
            Replay::Memory(c) => c.reserve(scope, key, keep).map(Hold::Memory),
            Replay::Shared(store, local) => {
                let Some(pg) = store.as_pg() else { return local.reserve(scope, key, keep).map(Hold::Memory) };
                match pg.replay_reserve(&key, SHARED_INFLIGHT).await {
                    Ok(true) => Ok(Hold::Shared { store: store.clone(), key, keep }),
                    Ok(false) => Err(Replayed),
                    Err(e) => {
                        tracing::warn!(error = %e, "shared replay keys unavailable; using this sidecar's memory");
                        local.reserve(scope, key, keep).map(Hold::Memory)
                    }
                }
            }
        }
    }
}

impl Hold {
    /// Records the key (the app answered 2xx).
    pub(crate) async fn commit(self) {
        match self {
            Hold::Memory(r) => r.commit(),
            Hold::Shared { store, key, keep } => {
                if let Some(pg) = store.as_pg() {
                    if let Err(e) = pg.replay_commit(&key, keep).await {
                        tracing::warn!(error = %e, "could not record a replay key");
                    }
                }
            }
        }
    }

    /// Releases the key (the forward failed; the provider's retry must pass).
    pub(crate) async fn release(self) {
        match self {
            Hold::Memory(r) => drop(r),
            Hold::Shared { store, key, .. } => {
                if let Some(pg) = store.as_pg() {
                    let _ = pg.replay_release(&key).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_recorded_key_is_refused_until_it_expires() {
        let c = ReplayCache::new(100);
        c.reserve("t", "k".into(), Duration::from_millis(50)).unwrap().commit();
        assert!(c.reserve("t", "k".into(), Duration::from_secs(1)).is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.reserve("t", "k".into(), Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn an_in_flight_key_is_refused_and_released_when_dropped() {
        let c = ReplayCache::new(100);
        let r = c.reserve("t", "k".into(), Duration::from_secs(60)).unwrap();
        assert!(c.reserve("t", "k".into(), Duration::from_secs(60)).is_err(), "concurrent duplicate");
        drop(r);
        assert!(c.reserve("t", "k".into(), Duration::from_secs(60)).is_ok(), "a failed forward lets the retry through");
    }

    #[test]
    fn a_flood_of_unique_keys_stays_bounded() {
        let c = ReplayCache::with_share(1000, 1000);
        for i in 0..10_000 {
            c.reserve("t", format!("k{i}"), Duration::from_secs(600)).unwrap().commit();
        }
        assert_eq!(c.len(), 1000);
        assert!(c.reserve("t", "k9999".into(), Duration::from_secs(1)).is_err(), "the newest keys are kept");
    }

    #[test]
    fn a_tenant_flooding_its_own_keys_evicts_only_its_own() {
        let c = ReplayCache::with_share(1000, 100);
        for v in 0..5 {
            c.reserve(&format!("victim{v}"), "captured".into(), Duration::from_secs(600)).unwrap().commit();
        }
        for attacker in 0..20 {
            for i in 0..500 {
                let scope = format!("attacker{attacker}");
                c.reserve(&scope, format!("k{i}"), Duration::from_secs(600)).unwrap().commit();
            }
        }
        assert!(c.len() <= 1000, "bounded: {}", c.len());
        for v in 0..5 {
            let scope = format!("victim{v}");
            assert!(c.reserve(&scope, "captured".into(), Duration::from_secs(1)).is_err(), "{scope}'s key survived");
        }
        assert!(c.reserve("attacker0", "k499".into(), Duration::from_secs(1)).is_err(), "a flooder keeps its newest");
    }
}
