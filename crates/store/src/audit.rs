//! The audit chain: how an entry is hashed and how a chain is checked.
//!
//! `hash = HMAC-SHA256(integrity key, prev ‖ canonical JSON of seq, ts and the draft)`.
//! Editing an entry changes its MAC, which only the key's holder can recompute; removing or
//! reordering entries breaks `prev` links or the gapless sequence; truncating the tail is
//! caught against the stored head, whose hash is itself such a MAC (a writer who truncates
//! both must produce the MAC of the new last entry, and cannot). Entries written before
//! keyed chains (below [`Integrity::keyed_from`]) keep plain SHA-256.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{AuditDraft, AuditEntry, AuditHead, Integrity, Millis, Store, StoreError};

/// The `prev` of the first entry.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Serialize)]
struct Canonical<'a> {
    seq: u64,
    ts: Millis,
    draft: &'a AuditDraft,
}

pub(crate) fn entry_hash(key: Option<&Integrity>, prev: &str, seq: u64, ts: Millis, draft: &AuditDraft) -> String {
    // serde_json writes struct fields in declaration order: canonical for our own types.
    let body = serde_json::to_vec(&Canonical { seq, ts, draft }).unwrap_or_default();
    match key.filter(|k| seq >= k.keyed_from()) {
        Some(k) => hex::encode(k.mac("keyward/audit/v1", &[prev.as_bytes(), &body])),
        None => {
            let mut h = Sha256::new();
            h.update(prev.as_bytes());
            h.update(b"\n");
            h.update(body);
            hex::encode(h.finalize())
        }
    }
}

pub(crate) fn chain(key: &Integrity, head: &AuditHead, ts: Millis, draft: AuditDraft) -> AuditEntry {
    let seq = head.seq + 1;
    let prev = if head.seq == 0 { GENESIS.to_string() } else { head.hash.clone() };
    let hash = entry_hash(Some(key), &prev, seq, ts, &draft);
    AuditEntry { seq, ts, draft, prev, hash }
}

/// Result of checking a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// Whether every check passed.
    pub ok: bool,
    /// Entries checked.
    pub entries: u64,
    /// The first bad sequence number, when not ok.
    pub first_bad_seq: Option<u64>,
    /// What is wrong, when not ok.
    pub problem: Option<String>,
}

/// Incremental chain checker, fed entries in order.
#[derive(Debug)]
pub struct ChainVerifier {
    key: Option<Integrity>,
    expected_seq: u64,
    prev: String,
    report: ChainReport,
}

impl ChainVerifier {
    /// A checker of MACs under `key`; `None` checks only sequence, links and the head
    /// (a copy tool without the master key), which a store writer can forge.
    pub fn new(key: Option<Integrity>) -> Self {
        ChainVerifier {
            key,
            expected_seq: 1,
            prev: GENESIS.to_string(),
            report: ChainReport { ok: true, entries: 0, first_bad_seq: None, problem: None },
        }
    }

    fn fail(&mut self, seq: u64, problem: String) {
        if self.report.ok {
            self.report.ok = false;
            self.report.first_bad_seq = Some(seq);
            self.report.problem = Some(problem);
        }
    }

    /// Checks the next entry. Returns false once the chain is broken.
    pub fn push(&mut self, e: &AuditEntry) -> bool {
        if !self.report.ok {
            return false;
        }
        if e.seq != self.expected_seq {
            self.fail(
                self.expected_seq,
                format!("entry {} is missing or out of order (found {})", self.expected_seq, e.seq),
            );
            return false;
        }
        if e.prev != self.prev {
            self.fail(e.seq, format!("entry {} does not link to entry {}", e.seq, e.seq - 1));
            return false;
        }
        if self.key.is_some() && entry_hash(self.key.as_ref(), &e.prev, e.seq, e.ts, &e.draft) != e.hash {
            self.fail(e.seq, format!("entry {} was altered (its MAC does not match)", e.seq));
            return false;
        }
        self.prev = e.hash.clone();
        self.expected_seq += 1;
        self.report.entries += 1;
        true
    }

    /// Final check against the stored head, which catches a truncated tail.
    pub fn finish(mut self, head: &AuditHead) -> ChainReport {
        if self.report.ok {
            let last = self.expected_seq - 1;
            if head.seq != last {
                self.fail(last + 1, format!("the log ends at entry {last} but the head records entry {}", head.seq));
            } else if last > 0 && head.hash != self.prev {
                self.fail(last, format!("entry {last} does not match the recorded head"));
            }
        }
        self.report
    }
}

/// Whether an imported entry (`keyward store migrate`) extends the target's chain: `Ok(false)`
/// when the target already holds it (a rerun), an error when it would fork the chain.
pub(super) fn import_continues(head: &AuditHead, e: &AuditEntry) -> Result<bool, super::StoreError> {
    if e.seq <= head.seq {
        return Ok(false);
    }
    let expected_prev = if head.seq == 0 { GENESIS } else { head.hash.as_str() };
    if e.seq != head.seq + 1 || e.prev != expected_prev {
        return Err(super::StoreError::Conflict(format!("audit entry {} does not continue the target's chain", e.seq)));
    }
    Ok(true)
}

/// Checks a whole chain held in memory.
pub fn verify_chain(key: Option<&Integrity>, entries: &[AuditEntry], head: &AuditHead) -> ChainReport {
    let mut v = ChainVerifier::new(key.cloned());
    for e in entries {
        if !v.push(e) {
            break;
        }
    }
    v.finish(head)
}

/// Walks a store's whole audit chain page by page and checks it against the head, with
/// the store's integrity key (`None`: structure only). The head is read after the walk and
/// the walk continues to it, so entries appended meanwhile by other writers are checked
/// rather than reported as a truncation.
pub async fn verify_store(store: &dyn Store, key: Option<&Integrity>) -> Result<ChainReport, StoreError> {
    let mut v = ChainVerifier::new(key.cloned());
    let mut after = 0;
    loop {
        let page = store.audit_range(after, 1000).await?;
        match page.last() {
            Some(last) => {
                after = last.seq;
                if !page.iter().all(|e| v.push(e)) {
                    break;
                }
            }
            None => {
                let head = store.audit_head().await?;
                if head.seq > after {
                    // Appended after the page was read: keep walking up to this head.
                    continue;
                }
                return Ok(v.finish(&head));
            }
        }
    }
    Ok(v.finish(&store.audit_head().await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(action: &str) -> AuditDraft {
        AuditDraft {
            actor: "uid:0".into(),
            action: action.into(),
            tenant: Some("acme".into()),
            provider: None,
            target: None,
            result: "ok".into(),
        }
    }

    fn key() -> Integrity {
        Integrity::new([7; 32], 1)
    }

    fn build(n: u64) -> (Vec<AuditEntry>, AuditHead) {
        let mut head = AuditHead::default();
        let mut v = Vec::new();
        for i in 0..n {
            let e = chain(&key(), &head, 1000 + i as i64, draft(&format!("a{i}")));
            head = AuditHead { seq: e.seq, hash: e.hash.clone() };
            v.push(e);
        }
        (v, head)
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let (v, head) = build(5);
        let r = verify_chain(Some(&key()), &v, &head);
        assert!(r.ok && r.entries == 5, "{r:?}");
        assert!(verify_chain(Some(&key()), &[], &AuditHead::default()).ok);
    }

    #[test]
    fn an_edited_entry_is_detected() {
        let (mut v, head) = build(5);
        v[2].draft.result = "error:forged".into();
        let r = verify_chain(Some(&key()), &v, &head);
        assert_eq!(r.first_bad_seq, Some(3));
    }

    #[test]
    fn a_removed_entry_is_detected() {
        let (mut v, head) = build(5);
        v.remove(1);
        assert_eq!(verify_chain(Some(&key()), &v, &head).first_bad_seq, Some(2));
    }

    #[test]
    fn reordered_entries_are_detected() {
        let (mut v, head) = build(5);
        v.swap(1, 2);
        assert!(!verify_chain(Some(&key()), &v, &head).ok);
    }

    #[test]
    fn a_truncated_tail_is_detected_against_the_head() {
        let (mut v, head) = build(5);
        v.pop();
        let r = verify_chain(Some(&key()), &v, &head);
        assert!(!r.ok && r.problem.unwrap().contains("head"));
    }

    #[test]
    fn a_renumbered_and_rehashed_entry_still_breaks_the_next_link() {
        let (mut v, head) = build(4);
        v[1].draft.actor = "uid:666".into();
        v[1].hash = entry_hash(Some(&key()), &v[1].prev, v[1].seq, v[1].ts, &v[1].draft);
        assert_eq!(verify_chain(Some(&key()), &v, &head).first_bad_seq, Some(3));
    }

    #[test]
    fn a_chain_rewritten_with_plain_hashes_or_another_key_fails() {
        let (mut v, _) = build(4);
        // The writer edits entry 2 and recomputes every hash after it, as SHA-256 would allow.
        v[1].draft.actor = "uid:666".into();
        let mut prev = v[0].hash.clone();
        for e in v.iter_mut().skip(1) {
            e.prev = prev.clone();
            e.hash = entry_hash(None, &e.prev, e.seq, e.ts, &e.draft);
            prev = e.hash.clone();
        }
        let head = AuditHead { seq: 4, hash: prev };
        assert_eq!(verify_chain(Some(&key()), &v, &head).first_bad_seq, Some(2), "plain hashes");
        let other = Integrity::new([8; 32], 1);
        let mut prev = v[0].hash.clone();
        for e in v.iter_mut().skip(1) {
            e.prev = prev.clone();
            e.hash = entry_hash(Some(&other), &e.prev, e.seq, e.ts, &e.draft);
            prev = e.hash.clone();
        }
        let head = AuditHead { seq: 4, hash: prev };
        assert_eq!(verify_chain(Some(&key()), &v, &head).first_bad_seq, Some(2), "another key");
    }

    #[test]
    fn entries_before_keyed_from_keep_plain_hashes() {
        let legacy = Integrity::new([7; 32], 3);
        let mut head = AuditHead::default();
        let mut v = Vec::new();
        for i in 0..4 {
            let e = chain(&legacy, &head, 1000 + i, draft("a"));
            head = AuditHead { seq: e.seq, hash: e.hash.clone() };
            v.push(e);
        }
        assert_eq!(v[0].hash, entry_hash(None, &v[0].prev, 1, 1000, &v[0].draft));
        assert!(verify_chain(Some(&legacy), &v, &head).ok);
        assert!(!verify_chain(Some(&key()), &v, &head).ok, "from 1 on, the plain entries fail");
    }
}
