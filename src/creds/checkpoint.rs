//! Anchoring: signed checkpoints of the audit chain's head, so that truncating or rewriting
//! the chain is detectable by whoever kept an earlier checkpoint outside the host (a SIEM
//! fed by `audit tail --follow`, the log).
//!
//! The signing key is Ed25519 with a seed derived from the store's integrity key (itself
//! sealed under the master key, or by the KMS that holds it): every sidecar of a fleet signs
//! with the same key, nothing new is stored, and the public key alone verifies a checkpoint.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::*;

/// The audit action of a checkpoint entry.
pub(crate) const CHECKPOINT_ACTION: &str = "audit.checkpoint";

/// A signed statement: the chain had `seq` entries ending in `head` at `time`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    /// Always `keyward.audit.checkpoint/v1`.
    pub kind: String,
    /// The head's sequence number.
    pub seq: u64,
    /// The head's hash (hex).
    pub head: String,
    /// When it was signed (RFC 3339, UTC).
    pub time: String,
    /// The Ed25519 public key (hex) that verifies `signature`.
    pub public_key: String,
    /// Ed25519 over [`message`] (hex).
    pub signature: String,
}

const KIND: &str = "keyward.audit.checkpoint/v1";

/// The bytes signed: kind, sequence, head and time, one per line.
fn message(seq: u64, head: &str, time: &str) -> Vec<u8> {
    format!("{KIND}\n{seq}\n{head}\n{time}\n").into_bytes()
}

/// Why a checkpoint does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CheckpointError {
    /// Not a checkpoint keyward wrote.
    #[error("not a keyward checkpoint: {0}")]
    Malformed(String),
    /// The signature does not verify under the key it names.
    #[error("the checkpoint's signature does not verify: it was altered or not signed by keyward")]
    BadSignature,
}

impl Checkpoint {
    /// Checks the signature under the checkpoint's own public key (compare that key with the
    /// daemon's, or a pinned one, to know who signed).
    pub(crate) fn verify_signature(&self) -> Result<(), CheckpointError> {
        if self.kind != KIND {
            return Err(CheckpointError::Malformed(format!("kind is {:?}, not {KIND}", self.kind)));
        }
        let hex32 = |s: &str, what: &str| -> Result<Vec<u8>, CheckpointError> {
            hex::decode(s).map_err(|_| CheckpointError::Malformed(format!("{what} is not hex")))
        };
        let pk: [u8; 32] = hex32(&self.public_key, "public_key")?
            .try_into()
            .map_err(|_| CheckpointError::Malformed("public_key is not 32 bytes".into()))?;
        let sig: [u8; 64] = hex32(&self.signature, "signature")?
            .try_into()
            .map_err(|_| CheckpointError::Malformed("signature is not 64 bytes".into()))?;
        let key = VerifyingKey::from_bytes(&pk).map_err(|_| CheckpointError::Malformed("public_key".into()))?;
        key.verify_strict(&message(self.seq, &self.head, &self.time), &Signature::from_bytes(&sig))
            .map_err(|_| CheckpointError::BadSignature)
    }
}

impl Credentials {
    fn checkpoint_key(&self) -> SigningKey {
        let seed = Zeroizing::new(self.integrity.mac("keyward/audit-checkpoint/v1", &[]));
        SigningKey::from_bytes(&seed)
    }

    /// A checkpoint of the current head, signed now (not recorded).
    pub(crate) async fn checkpoint(&self) -> Result<Checkpoint, CredError> {
        let head = self.store.audit_head().await?;
        let time = keyward_core::time::rfc3339(keyward_core::time::now_millis());
        let key = self.checkpoint_key();
        let signature = key.sign(&message(head.seq, &head.hash, &time));
        Ok(Checkpoint {
            kind: KIND.into(),
            seq: head.seq,
            head: head.hash,
            time,
            public_key: hex::encode(key.verifying_key().as_bytes()),
            signature: hex::encode(signature.to_bytes()),
        })
    }

    /// Signs the head and records the checkpoint as an audit entry (its `target` is the
    /// checkpoint's JSON), so that it travels with the audit stream. Skipped when nothing
    /// but the previous checkpoint was committed since `last` (the head it signed).
    pub(crate) async fn record_checkpoint(&self, last: Option<u64>) -> Result<Option<Checkpoint>, CredError> {
        let head = self.store.audit_head().await?;
        if head.seq == 0 || last.is_some_and(|l| head.seq <= l + 1) {
            return Ok(None);
        }
        let cp = self.checkpoint().await?;
        // A struct of strings and a number: serialising it cannot fail.
        let json = serde_json::to_string(&cp).unwrap_or_default();
        self.commit(vec![], draft("keyward", CHECKPOINT_ACTION, None, None, Some(json))).await?;
        Ok(Some(cp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(seq: u64) -> Checkpoint {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let (head, time) = ("ab".repeat(32), "2026-12-02T00:00:00.000Z".to_string());
        let sig = key.sign(&message(seq, &head, &time));
        Checkpoint {
            kind: KIND.into(),
            seq,
            head,
            time,
            public_key: hex::encode(key.verifying_key().as_bytes()),
            signature: hex::encode(sig.to_bytes()),
        }
    }

    #[test]
    fn a_checkpoint_verifies_and_any_edit_breaks_it() {
        assert_eq!(signed(5).verify_signature(), Ok(()));
        let mut moved = signed(5);
        moved.seq = 4;
        assert_eq!(moved.verify_signature(), Err(CheckpointError::BadSignature));
        let mut rehead = signed(5);
        rehead.head = "cd".repeat(32);
        assert_eq!(rehead.verify_signature(), Err(CheckpointError::BadSignature));
        let mut other = signed(5);
        other.kind = "x".into();
        assert!(matches!(other.verify_signature(), Err(CheckpointError::Malformed(_))));
    }
}
