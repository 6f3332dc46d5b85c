//! Verifying the audit log: the hash chain record by record, and the
//! signed checkpoints over it. One walk, used by `airlock audit verify`
//! and by the console's audit explorer.

use std::collections::BTreeMap;

use airlock_core::{ChainError, ChainHash, ChainVerifier};
use airlock_keys::{Checkpoint, PublicKey};

use crate::{ReadTx, StoreError};

/// What a walk of the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Records checked (the head's seq when intact).
    pub head: i64,
    /// The head's hash.
    pub head_hash: ChainHash,
    /// Signed checkpoints found.
    pub checkpoints: usize,
    /// The first bad record and why, if any.
    pub broken: Option<(i64, String)>,
}

/// Walks the whole log in pages and checks it against `key`.
pub fn verify_chain(r: &mut dyn ReadTx, keys: &[PublicKey]) -> Result<Verification, StoreError> {
    let signed = |cp: &Checkpoint| keys.iter().any(|k| cp.verify(k).is_ok());
    let checkpoints: BTreeMap<i64, Checkpoint> =
        r.checkpoints()?.into_iter().map(|c| (c.seq, c)).collect();
    let mut v = ChainVerifier::default();
    let mut after = 0;
    let broken = 'walk: loop {
        let page = r.audit_after(after, 10_000)?;
        if page.is_empty() {
            break None;
        }
        for rec in &page {
            if let Err(e) = v.push(rec) {
                break 'walk Some((e.seq(), e.to_string()));
            }
            if let Some(cp) = checkpoints.get(&rec.seq) {
                if !signed(cp) {
                    break 'walk Some((cp.seq, bad_signature(cp.seq)));
                }
                if cp.hash != rec.hash {
                    let e = ChainError::Checkpoint { seq: rec.seq };
                    break 'walk Some((rec.seq, e.to_string()));
                }
            }
            after = rec.seq;
        }
    };
    let head = v.head_seq();
    let broken = broken
        .or_else(|| {
            // A signed checkpoint past the end means records were cut off.
            checkpoints.values().find(|cp| cp.seq > head).map(|cp| {
                (
                    head + 1,
                    format!(
                        "records {}..={} are missing: a signed checkpoint covers record {}",
                        head + 1,
                        cp.seq,
                        cp.seq
                    ),
                )
            })
        })
        .or_else(|| {
            checkpoints
                .values()
                .find(|cp| cp.seq <= head && !signed(cp))
                .map(|cp| (cp.seq, bad_signature(cp.seq)))
        });
    Ok(Verification {
        head,
        head_hash: v.head_hash(),
        checkpoints: checkpoints.len(),
        broken,
    })
}

fn bad_signature(seq: i64) -> String {
    format!("checkpoint at record {seq} has a bad signature")
}
