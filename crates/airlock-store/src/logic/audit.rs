//! The audit chain on either backend: linking a record to the head (kept
//! across a batch's appends, so only its first append reads it), and its
//! rows and checkpoints read back.

use airlock_core::{merkle, AuditRecord, ChainHash, NewAuditRecord, RecordedJson};
use airlock_keys::Checkpoint;
use chrono::{DateTime, Utc};

use super::{corrupt, Rows};
use crate::model::AuditFilter;
use crate::time::fmt;
use crate::StoreError;

/// An audit record's row, as stored.
pub(crate) struct AuditRow {
    pub(crate) seq: i64,
    pub(crate) ts: String,
    pub(crate) kind: String,
    pub(crate) actor: String,
    pub(crate) subject: String,
    pub(crate) details: String,
    pub(crate) prev_hash: String,
    pub(crate) hash: String,
}

impl AuditRow {
    fn into_record(self) -> Result<AuditRecord, StoreError> {
        // Named by its seq: whoever reads the error (`audit verify`) must
        // learn which record is damaged.
        let seq = self.seq;
        let at =
            |e: airlock_core::ParseError| StoreError::Corrupt(format!("audit record {seq}: {e}"));
        Ok(AuditRecord {
            seq,
            ts: self.ts,
            kind: self.kind,
            actor: self.actor,
            subject: self.subject,
            details: RecordedJson::from_stored(self.details).map_err(at)?,
            prev_hash: ChainHash::parse(&self.prev_hash).map_err(at)?,
            hash: ChainHash::parse(&self.hash).map_err(at)?,
        })
    }
}

/// A checkpoint's row, as stored.
pub(crate) struct CheckpointRow {
    pub(crate) seq: i64,
    pub(crate) hash: String,
    pub(crate) ts: String,
    pub(crate) signature: String,
}

/// What a backend does with audit rows: SQL and column reading only.
pub(crate) trait AuditRows {
    /// Rows with `seq > after`, oldest first.
    fn audit_rows_after(&mut self, after: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError>;
    /// Rows with this subject, oldest first.
    fn audit_rows_about(&mut self, subject: &str, limit: u32) -> Result<Vec<AuditRow>, StoreError>;
    /// Rows matching `filter`, newest first.
    fn audit_rows_matching(
        &mut self,
        filter: &AuditFilter,
        limit: u32,
    ) -> Result<Vec<AuditRow>, StoreError>;
    /// The last record's `(seq, hash)`, if there is one.
    fn head_row(&mut self) -> Result<Option<(i64, String)>, StoreError>;
    /// The request column of records with `seq > after`, oldest first.
    fn filing_rows_after(
        &mut self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Option<String>)>, StoreError>;
    /// Stores a linked record and the perfect subtrees its leaf completed;
    /// `request` fills the column listings by request search. PostgreSQL
    /// stages it, to send a batch's appends as one statement.
    fn insert_audit_row(
        &mut self,
        record: &AuditRecord,
        request: Option<&str>,
        nodes: &[(u32, u64, airlock_core::merkle::Hash)],
    ) -> Result<(), StoreError>;
    /// Every checkpoint, oldest first.
    fn checkpoint_rows(&mut self) -> Result<Vec<CheckpointRow>, StoreError>;
    /// A perfect subtree's hash (hex), if stored.
    fn tree_node_row(&mut self, level: u32, index: u64) -> Result<Option<String>, StoreError>;
    /// Several perfect subtrees' hashes (hex), in the order asked. One
    /// query per node by default; PostgreSQL asks for them all at once.
    fn tree_node_rows(
        &mut self,
        positions: &[(u32, u64)],
    ) -> Result<Vec<Option<String>>, StoreError> {
        positions
            .iter()
            .map(|&(level, index)| self.tree_node_row(level, index))
            .collect()
    }
    /// How many leaves the stored tree has.
    fn tree_leaves(&mut self) -> Result<u64, StoreError>;
    /// Every signed tree checkpoint `(size, note)`, smallest first.
    fn note_rows(&mut self) -> Result<Vec<(i64, String)>, StoreError>;
    /// See [`crate::WriteTx::insert_audit_note`].
    fn insert_audit_note(&mut self, size: i64, note: &str) -> Result<(), StoreError>;
    /// See [`crate::WriteTx::cosign_audit_note`].
    fn cosign_audit_note(&mut self, size: i64, lines: &str) -> Result<(), StoreError>;
    /// Stores perfect subtrees' hashes.
    fn insert_tree_nodes(
        &mut self,
        nodes: &[(u32, u64, airlock_core::merkle::Hash)],
    ) -> Result<(), StoreError>;
    /// See [`crate::WriteTx::insert_checkpoint`].
    fn insert_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), StoreError>;
}

/// Parses rows into records.
pub(crate) fn records(rows: Vec<AuditRow>) -> Result<Vec<AuditRecord>, StoreError> {
    rows.into_iter().map(AuditRow::into_record).collect()
}

pub(crate) fn head<T: AuditRows + ?Sized>(tx: &mut T) -> Result<(i64, ChainHash), StoreError> {
    match tx.head_row()? {
        None => Ok((0, ChainHash::GENESIS)),
        Some((seq, hash)) => Ok((seq, ChainHash::parse(&hash).map_err(corrupt)?)),
    }
}

pub(crate) fn checkpoints<T: AuditRows + ?Sized>(
    tx: &mut T,
) -> Result<Vec<Checkpoint>, StoreError> {
    tx.checkpoint_rows()?
        .into_iter()
        .map(|r| {
            Ok(Checkpoint {
                seq: r.seq,
                hash: ChainHash::parse(&r.hash).map_err(corrupt)?,
                ts: r.ts,
                signature: r.signature,
            })
        })
        .collect()
}

pub(crate) fn append<T: Rows + ?Sized>(
    tx: &mut T,
    rec: NewAuditRecord,
    ts: DateTime<Utc>,
) -> Result<AuditRecord, StoreError> {
    // Read inside the write transaction, which holds the write lock
    // (SQLite's IMMEDIATE, PostgreSQL's advisory lock): no other process
    // or node can append between this read and the insert.
    let (seq, prev) = match tx.effects().and_then(|e| e.head) {
        Some(h) => h,
        None => head(tx)?,
    };
    let request = rec.request_id().map(str::to_owned);
    let record = AuditRecord::link(seq, prev, fmt(ts), rec);
    let index = u64::try_from(record.seq - 1).map_err(corrupt)?;
    let kept = |e: &mut crate::batch::Effects| {
        e.known
            .as_ref()
            .filter(|(h, _)| *h == (seq, prev))
            .map(|(_, f)| f.clone())
    };
    let mut frontier = match tx
        .effects()
        .and_then(|e| e.frontier.take().or_else(|| kept(e)))
    {
        Some(f) => f,
        None => frontier(tx, index)?,
    };
    let made = merkle::append(&mut frontier, index, record.leaf_hash());
    tx.insert_audit_row(&record, request.as_deref(), &made)?;
    if let Some(e) = tx.effects() {
        e.head = Some((record.seq, record.hash));
        e.frontier = Some(frontier);
    }
    Ok(record)
}

/// A stored node's hash, from hex.
fn node_hash(h: &str) -> Result<merkle::Hash, StoreError> {
    let bytes = hex::decode(h).map_err(corrupt)?;
    merkle::Hash::try_from(bytes.as_slice()).map_err(corrupt)
}

/// A perfect subtree's hash.
pub(crate) fn tree_node<T: AuditRows + ?Sized>(
    tx: &mut T,
    level: u32,
    index: u64,
) -> Result<Option<merkle::Hash>, StoreError> {
    tx.tree_node_row(level, index)?
        .map(|h| node_hash(&h))
        .transpose()
}

/// The frontier of the tree of `size` leaves, bringing the stored tree up
/// to `size` first: a log from before the tree was kept gets its leaves
/// added here, once, a page at a time.
fn frontier<T: Rows + ?Sized>(
    tx: &mut T,
    size: u64,
) -> Result<Vec<(u32, u64, merkle::Hash)>, StoreError> {
    let have = tx.tree_leaves()?;
    if have > size {
        return Err(corrupt(format!(
            "the Merkle tree has {have} leaves but the log only {size} records"
        )));
    }
    let load = |tx: &mut T, n: u64| -> Result<Vec<(u32, u64, merkle::Hash)>, StoreError> {
        let positions = merkle::frontier_positions(n);
        let hashes = tx.tree_node_rows(&positions)?;
        if hashes.len() != positions.len() {
            return Err(corrupt("the Merkle frontier read came back short"));
        }
        positions
            .into_iter()
            .zip(hashes)
            .map(|((level, index), h)| {
                let h =
                    h.ok_or_else(|| corrupt(format!("Merkle node {level}/{index} is missing")))?;
                Ok((level, index, node_hash(&h)?))
            })
            .collect()
    };
    let mut f = load(tx, have)?;
    let mut next = have;
    while next < size {
        let rows = tx.audit_rows_after(i64::try_from(next).map_err(corrupt)?, 1000)?;
        if rows.is_empty() {
            break;
        }
        for rec in records(rows)? {
            let index = u64::try_from(rec.seq - 1).map_err(corrupt)?;
            if index != next || index >= size {
                break;
            }
            let made = merkle::append(&mut f, index, rec.leaf_hash());
            tx.insert_tree_nodes(&made)?;
            next += 1;
        }
    }
    if next != size {
        return Err(corrupt(format!(
            "the Merkle tree could not be brought to {size} leaves (stopped at {next})"
        )));
    }
    Ok(f)
}
