//! The audit chain on either backend: linking a record to the head (kept
//! across a batch's appends, so only its first append reads it), and its
//! rows and checkpoints read back.

use airlock_core::{AuditRecord, ChainHash, NewAuditRecord, RecordedJson};
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
        Ok(AuditRecord {
            seq: self.seq,
            ts: self.ts,
            kind: self.kind,
            actor: self.actor,
            subject: self.subject,
            details: RecordedJson::from_stored(self.details).map_err(corrupt)?,
            prev_hash: ChainHash::parse(&self.prev_hash).map_err(corrupt)?,
            hash: ChainHash::parse(&self.hash).map_err(corrupt)?,
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
    /// Stores a linked record; `request` fills the column listings by
    /// request search.
    fn insert_audit_row(
        &mut self,
        record: &AuditRecord,
        request: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Every checkpoint, oldest first.
    fn checkpoint_rows(&mut self) -> Result<Vec<CheckpointRow>, StoreError>;
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
    tx.insert_audit_row(&record, request.as_deref())?;
    if let Some(e) = tx.effects() {
        e.head = Some((record.seq, record.hash));
    }
    Ok(record)
}
