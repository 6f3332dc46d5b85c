//! Verifying the audit log: the hash chain record by record, and the
//! signed checkpoints over it. One walk, used by `airlock audit verify`
//! and by the console's audit explorer.

use std::collections::BTreeMap;

use airlock_core::{AuditRecord, ChainError, ChainHash, ChainVerifier};
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
        let page = r.audit_after(after, PAGE)?;
        if page.is_empty() {
            break None;
        }
        // The same records' request column, in the same snapshot.
        let filed = r.audit_filing_after(after, PAGE)?;
        for (i, rec) in page.iter().enumerate() {
            if let Err(e) = v.push(rec) {
                break 'walk Some((e.seq(), e.to_string()));
            }
            if let Some(wrong) = misfiled(rec, filed.get(i)) {
                break 'walk Some((rec.seq, wrong));
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

/// Records read per page of the walk.
const PAGE: u32 = 10_000;

/// Why a record's request column disagrees with what its hashed content
/// says it belongs to, if it does. The column is what a request's history,
/// its `decisions` and the explorer's request filter read, and the chain
/// does not cover it: moved by hand, it would show one request's record
/// in another's history, or hide a refused attempt from its own (found by
/// a black-box pass).
fn misfiled(rec: &AuditRecord, filed: Option<&(i64, Option<String>)>) -> Option<String> {
    let Some((_, column)) = filed.filter(|(seq, _)| *seq == rec.seq) else {
        return Some(format!("record {}: its request column is missing", rec.seq));
    };
    let named = rec.request_id();
    if *column == named {
        return None;
    }
    let say = |r: &Option<String>| r.clone().unwrap_or_else(|| "no request".into());
    Some(format!(
        "record {} is filed under {} but its hashed content names {}",
        rec.seq,
        say(column),
        say(&named)
    ))
}

fn bad_signature(seq: i64) -> String {
    format!("checkpoint at record {seq} has a bad signature")
}
