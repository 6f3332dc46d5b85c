//! Signed checkpoints of the audit chain head: they let an offline verifier
//! notice records cut off the end of the log, which hashing alone cannot.

use airlock_core::ChainHash;
use ed25519_dalek::{Signature, Signer, Verifier};
use serde::{Deserialize, Serialize};

use crate::{Keyring, PublicKey};

/// A signature over `(seq, hash, ts)` of the chain head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The head's sequence number.
    pub seq: i64,
    /// The head's hash.
    pub hash: ChainHash,
    /// When it was signed (RFC 3339).
    pub ts: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

/// A checkpoint whose signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("checkpoint at record {seq}: bad signature")]
pub struct CheckpointError {
    /// The checkpoint's sequence number.
    pub seq: i64,
}

fn message(seq: i64, hash: &ChainHash, ts: &str) -> Vec<u8> {
    let mut m = b"airlock-checkpoint-v1\0".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&hash.0);
    m.extend_from_slice(ts.as_bytes());
    m
}

impl Keyring {
    /// Signs the chain head.
    pub fn sign_checkpoint(&self, seq: i64, hash: ChainHash, ts: String) -> Checkpoint {
        let sig = self.audit.sign(&message(seq, &hash, &ts));
        Checkpoint {
            seq,
            hash,
            ts,
            signature: hex::encode(sig.to_bytes()),
        }
    }
}

impl Checkpoint {
    /// Verifies the signature with the audit public key.
    pub fn verify(&self, key: &PublicKey) -> Result<(), CheckpointError> {
        let err = CheckpointError { seq: self.seq };
        let mut raw = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut raw).map_err(|_| err.clone())?;
        key.0
            .verify(
                &message(self.seq, &self.hash, &self.ts),
                &Signature::from_bytes(&raw),
            )
            .map_err(|_| err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_and_refuses_changes() {
        let k = Keyring::ephemeral();
        let c = k.sign_checkpoint(7, ChainHash([3; 32]), "2026-01-01T00:00:00.000Z".into());
        assert!(c.verify(&k.public().audit).is_ok());
        assert!(c.verify(&k.public().grant).is_err());
        let mut moved = c.clone();
        moved.seq = 6;
        assert!(moved.verify(&k.public().audit).is_err());
    }
}
