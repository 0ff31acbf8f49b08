//! Console sessions: a random cookie value (kept only as its SHA-256) mapped to the user who
//! logged in, a CSRF token, and the idle and absolute deadlines. In memory: a restart logs
//! everyone out, which is the safe direction.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::admin::roles::Principal;

/// Idle time after which a session ends.
pub(crate) const IDLE: Duration = Duration::from_secs(15 * 60);
/// A session's longest life, however active.
pub(crate) const ABSOLUTE: Duration = Duration::from_secs(8 * 3600);
/// Sessions held at most (the oldest goes first).
const MAX_SESSIONS: usize = 1024;

struct Session {
    who: Principal,
    csrf: String,
    created: Instant,
    seen: Instant,
}

/// The live sessions.
#[derive(Default)]
pub(crate) struct Sessions {
    inner: Mutex<HashMap<[u8; 32], Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

fn random_b64() -> Option<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

fn key(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

impl Sessions {
    /// A new session for `who`: the cookie value to set.
    pub(crate) fn create(&self, who: Principal) -> Option<String> {
        let cookie = random_b64()?;
        let csrf = random_b64()?;
        let now = Instant::now();
        let mut map = self.inner.lock().ok()?;
        map.retain(|_, s| live(s, now));
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(key(&cookie), Session { who, csrf, created: now, seen: now });
        Some(cookie)
    }

    /// The user and CSRF token of a live session (its idle deadline moves on).
    pub(crate) fn get(&self, cookie: &str) -> Option<(Principal, String)> {
        let now = Instant::now();
        let mut map = self.inner.lock().ok()?;
        let k = key(cookie);
        match map.get_mut(&k) {
            Some(s) if live(s, now) => {
                s.seen = now;
                Some((s.who.clone(), s.csrf.clone()))
            }
            Some(_) => {
                map.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Ends a session (logout).
    pub(crate) fn remove(&self, cookie: &str) {
        if let Ok(mut map) = self.inner.lock() {
            map.remove(&key(cookie));
        }
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.seen) < IDLE && now.duration_since(s.created) < ABSOLUTE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::roles::Role;

    #[test]
    fn a_session_ends_at_logout_and_unknown_cookies_get_nothing() {
        let s = Sessions::default();
        let c = s.create(Principal { actor: "alice".into(), role: Role::Viewer }).unwrap();
        let (who, csrf) = s.get(&c).unwrap();
        assert_eq!(who.actor, "alice");
        assert!(csrf.len() >= 40);
        assert!(s.get("forged").is_none());
        s.remove(&c);
        assert!(s.get(&c).is_none());
    }

    #[test]
    fn idle_and_absolute_deadlines_end_a_session() {
        let now = Instant::now();
        let who = Principal { actor: "a".into(), role: Role::Admin };
        let idle = Session { who: who.clone(), csrf: String::new(), created: now, seen: now };
        assert!(live(&idle, now + IDLE - Duration::from_secs(1)));
        assert!(!live(&idle, now + IDLE));
        let busy = Session { who, csrf: String::new(), created: now, seen: now + ABSOLUTE - Duration::from_secs(1) };
        assert!(!live(&busy, now + ABSOLUTE));
    }
}
