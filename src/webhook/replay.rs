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

#[derive(Debug, Default)]
struct State {
    seen: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
    inflight: HashSet<String>,
    evicted_early: u64,
}

/// The key was seen (or is in flight): the delivery is a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replayed;

/// The replay cache.
#[derive(Debug, Clone)]
pub(crate) struct ReplayCache {
    state: Arc<Mutex<State>>,
    capacity: usize,
}

/// A key held in flight; record it with [`Reservation::commit`], or drop it to release.
#[derive(Debug)]
pub(crate) struct Reservation {
    cache: ReplayCache,
    key: String,
    keep: std::time::Duration,
    committed: bool,
}

impl ReplayCache {
    /// A cache holding at most `capacity` recorded keys.
    pub(crate) fn new(capacity: usize) -> Self {
        ReplayCache { state: Arc::default(), capacity: capacity.max(1) }
    }

    fn purge(st: &mut State, now: Instant) {
        while let Some((exp, _)) = st.order.front() {
            if *exp > now {
                break;
            }
            if let Some((exp, key)) = st.order.pop_front() {
                if st.seen.get(&key) == Some(&exp) {
                    st.seen.remove(&key);
                }
            }
        }
    }

    /// Reserves `key`, or refuses it as a replay.
    pub(crate) fn reserve(&self, key: String, keep: std::time::Duration) -> Result<Reservation, Replayed> {
        let now = Instant::now();
        let Ok(mut st) = self.state.lock() else { return Err(Replayed) };
        Self::purge(&mut st, now);
        if st.seen.contains_key(&key) || st.inflight.contains(&key) {
            return Err(Replayed);
        }
        st.inflight.insert(key.clone());
        Ok(Reservation { cache: self.clone(), key, keep, committed: false })
    }

    /// Recorded (not in-flight) keys.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().map(|s| s.seen.len()).unwrap_or(0)
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
        let Ok(mut st) = self.cache.state.lock() else { return };
        st.inflight.remove(&self.key);
        let exp = Instant::now() + self.keep;
        while st.seen.len() >= self.cache.capacity {
            let Some((_, old)) = st.order.pop_front() else { break };
            st.seen.remove(&old);
            st.evicted_early += 1;
            if st.evicted_early.is_power_of_two() {
                tracing::warn!(
                    evicted = st.evicted_early,
                    capacity = self.cache.capacity,
                    "replay cache full: evicting unexpired keys"
                );
            }
        }
        st.seen.insert(self.key.clone(), exp);
        st.order.push_back((exp, std::mem::take(&mut self.key)));
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
    /// Reserves `key`, or refuses it as a replay.
    pub(crate) async fn reserve(&self, key: String, keep: std::time::Duration) -> Result<Hold, Replayed> {
        match self {
            Replay::Memory(c) => c.reserve(key, keep).map(Hold::Memory),
            Replay::Shared(store, local) => {
                let Some(pg) = store.as_pg() else { return local.reserve(key, keep).map(Hold::Memory) };
                match pg.replay_reserve(&key, SHARED_INFLIGHT).await {
                    Ok(true) => Ok(Hold::Shared { store: store.clone(), key, keep }),
                    Ok(false) => Err(Replayed),
                    Err(e) => {
                        tracing::warn!(error = %e, "shared replay keys unavailable; using this sidecar's memory");
                        local.reserve(key, keep).map(Hold::Memory)
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
        c.reserve("k".into(), Duration::from_millis(50)).unwrap().commit();
        assert!(c.reserve("k".into(), Duration::from_secs(1)).is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.reserve("k".into(), Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn an_in_flight_key_is_refused_and_released_when_dropped() {
        let c = ReplayCache::new(100);
        let r = c.reserve("k".into(), Duration::from_secs(60)).unwrap();
        assert!(c.reserve("k".into(), Duration::from_secs(60)).is_err(), "concurrent duplicate");
        drop(r);
        assert!(c.reserve("k".into(), Duration::from_secs(60)).is_ok(), "a failed forward lets the retry through");
    }

    #[test]
    fn a_flood_of_unique_keys_stays_bounded() {
        let c = ReplayCache::new(1000);
        for i in 0..10_000 {
            c.reserve(format!("k{i}"), Duration::from_secs(600)).unwrap().commit();
        }
        assert_eq!(c.len(), 1000);
        assert!(c.reserve("k9999".into(), Duration::from_secs(1)).is_err(), "the newest keys are kept");
    }
}
