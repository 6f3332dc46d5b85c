//! The audit chain and its checkpoints: PostgreSQL's SQL and row reading.

use airlock_core::AuditRecord;
use airlock_keys::Checkpoint;
use postgres::Row;

use super::Tx;
use crate::logic::{AuditRow, AuditRows, CheckpointRow};
use crate::model::AuditFilter;
use crate::StoreError;

fn audit_row(r: &Row) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        seq: r.try_get(0)?,
        ts: r.try_get(1)?,
        kind: r.try_get(2)?,
        actor: r.try_get(3)?,
        subject: r.try_get(4)?,
        details: r.try_get(5)?,
        prev_hash: r.try_get(6)?,
        hash: r.try_get(7)?,
    })
}

/// Audit records and tree nodes appended in a batch and not yet sent:
/// they go to the database in one statement, before the next statement of
/// any kind on the connection and before COMMIT, so an append costs no
/// round trip of its own. The batch runner sends them before a job's
/// savepoint and drops them when that job rolls back.
#[derive(Debug, Default)]
pub(super) struct Staged {
    seq: Vec<i64>,
    ts: Vec<String>,
    kind: Vec<String>,
    actor: Vec<String>,
    subject: Vec<String>,
    details: Vec<String>,
    prev_hash: Vec<String>,
    hash: Vec<String>,
    request: Vec<Option<String>>,
    levels: Vec<i32>,
    indexes: Vec<i64>,
    node_hashes: Vec<String>,
}

impl Staged {
    fn push(
        &mut self,
        record: &AuditRecord,
        request: Option<&str>,
        nodes: &[(u32, u64, airlock_core::merkle::Hash)],
    ) {
        self.seq.push(record.seq);
        self.ts.push(record.ts.clone());
        self.kind.push(record.kind.clone());
        self.actor.push(record.actor.clone());
        self.subject.push(record.subject.clone());
        self.details.push(record.details.get().to_owned());
        self.prev_hash.push(record.prev_hash.to_string());
        self.hash.push(record.hash.to_string());
        self.request.push(request.map(str::to_owned));
        let (levels, indexes, hashes) = node_columns(nodes);
        self.levels.extend(levels);
        self.indexes.extend(indexes);
        self.node_hashes.extend(hashes);
    }

    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }
}

impl Tx<'_> {
    /// Sends the staged appends, if any (see [`Staged`]).
    pub(super) fn flush_staged(&mut self) -> Result<(), StoreError> {
        if self.staged.seq.is_empty() {
            return Ok(());
        }
        // Taken first: the statement below must not flush again.
        let s = std::mem::take(self.staged);
        // A data-modifying WITH runs whether or not the outer statement
        // reads it: records and nodes, one round trip.
        self.execute(
            "WITH records AS (
                 INSERT INTO audit (seq, ts, kind, actor, subject, details, prev_hash, hash, request_id)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                                      $6::text[], $7::text[], $8::text[], $9::text[]))
             INSERT INTO audit_nodes (level, idx, hash)
             SELECT * FROM unnest($10::int[], $11::bigint[], $12::text[])",
            &[
                &s.seq,
                &s.ts,
                &s.kind,
                &s.actor,
                &s.subject,
                &s.details,
                &s.prev_hash,
                &s.hash,
                &s.request,
                &s.levels,
                &s.indexes,
                &s.node_hashes,
            ],
        )?;
        Ok(())
    }
}

impl AuditRows for Tx<'_> {
    fn audit_rows_after(&mut self, after: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let rows = self.query(
            "SELECT seq, ts, kind, actor, subject, details, prev_hash, hash FROM audit
             WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&after, &i64::from(limit)],
        )?;
        rows.iter().map(audit_row).collect()
    }

    fn audit_rows_about(&mut self, subject: &str, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let rows = self.query(
            "SELECT seq, ts, kind, actor, subject, details, prev_hash, hash FROM audit
             WHERE subject = $1 AND subject <> '' ORDER BY seq LIMIT $2",
            &[&subject, &i64::from(limit)],
        )?;
        rows.iter().map(audit_row).collect()
    }

    fn audit_rows_matching(
        &mut self,
        f: &AuditFilter,
        limit: u32,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let (conditions, values) = f.where_clause(|n| format!("${n}"));
        let limit = i64::from(limit);
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = values
            .iter()
            .map(|v| v as &(dyn postgres::types::ToSql + Sync))
            .collect();
        params.push(&limit);
        let sql = format!(
            "SELECT seq, ts, kind, actor, subject, details, prev_hash, hash FROM audit{conditions}
             ORDER BY seq DESC LIMIT ${}",
            params.len()
        );
        let rows = self.query(&sql, &params)?;
        rows.iter().map(audit_row).collect()
    }

    fn filing_rows_after(
        &mut self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Option<String>)>, StoreError> {
        let rows = self.query(
            "SELECT seq, request_id FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&after, &i64::from(limit)],
        )?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    fn head_row(&mut self) -> Result<Option<(i64, String)>, StoreError> {
        let row = self.query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[])?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    fn tree_node_row(&mut self, level: u32, index: u64) -> Result<Option<String>, StoreError> {
        let row = self.query_opt(
            "SELECT hash FROM audit_nodes WHERE level = $1 AND idx = $2",
            &[&(level as i32), &(index as i64)],
        )?;
        row.map(|r| Ok(r.try_get(0)?)).transpose()
    }

    fn tree_node_rows(
        &mut self,
        positions: &[(u32, u64)],
    ) -> Result<Vec<Option<String>>, StoreError> {
        let levels: Vec<i32> = positions.iter().map(|p| p.0 as i32).collect();
        let indexes: Vec<i64> = positions.iter().map(|p| p.1 as i64).collect();
        // One primary-key lookup per position, in the order asked (a join
        // lets the planner hash the whole table).
        let rows = self.query(
            "SELECT (SELECT n.hash FROM audit_nodes n WHERE n.level = want.level AND n.idx = want.idx)
             FROM unnest($1::int[], $2::bigint[]) WITH ORDINALITY AS want(level, idx, ord)
             ORDER BY want.ord",
            &[&levels, &indexes],
        )?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    fn tree_leaves(&mut self) -> Result<u64, StoreError> {
        let row = self.query_opt("SELECT MAX(idx) FROM audit_nodes WHERE level = 0", &[])?;
        let n: Option<i64> = match row {
            Some(r) => r.try_get(0)?,
            None => None,
        };
        Ok(n.map_or(0, |n| n as u64 + 1))
    }

    fn note_rows(&mut self) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = self.query("SELECT size, note FROM audit_notes ORDER BY size", &[])?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    fn insert_audit_note(&mut self, size: i64, note: &str) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO audit_notes (size, note) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&size, &note],
        )?;
        Ok(())
    }

    fn cosign_audit_note(&mut self, size: i64, lines: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE audit_notes SET note = note || $2 WHERE size = $1 AND strpos(note, $2) = 0",
            &[&size, &lines],
        )?;
        Ok(())
    }

    fn insert_tree_nodes(
        &mut self,
        nodes: &[(u32, u64, airlock_core::merkle::Hash)],
    ) -> Result<(), StoreError> {
        let (levels, indexes, hashes) = node_columns(nodes);
        self.execute(
            "INSERT INTO audit_nodes (level, idx, hash)
             SELECT * FROM unnest($1::int[], $2::bigint[], $3::text[])",
            &[&levels, &indexes, &hashes],
        )?;
        Ok(())
    }

    fn insert_audit_row(
        &mut self,
        record: &AuditRecord,
        request: Option<&str>,
        nodes: &[(u32, u64, airlock_core::merkle::Hash)],
    ) -> Result<(), StoreError> {
        self.staged.push(record, request, nodes);
        Ok(())
    }

    fn checkpoint_rows(&mut self) -> Result<Vec<CheckpointRow>, StoreError> {
        let rows = self.query(
            "SELECT seq, hash, ts, signature FROM checkpoints ORDER BY seq",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                Ok(CheckpointRow {
                    seq: r.try_get(0)?,
                    hash: r.try_get(1)?,
                    ts: r.try_get(2)?,
                    signature: r.try_get(3)?,
                })
            })
            .collect()
    }

    fn insert_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO checkpoints (seq, hash, ts, signature) VALUES ($1, $2, $3, $4)
             ON CONFLICT (seq) DO UPDATE SET hash = excluded.hash, ts = excluded.ts, signature = excluded.signature",
            &[&cp.seq, &cp.hash.to_string(), &cp.ts, &cp.signature],
        )?;
        Ok(())
    }
}

/// Tree nodes as the three arrays `unnest` takes.
fn node_columns(
    nodes: &[(u32, u64, airlock_core::merkle::Hash)],
) -> (Vec<i32>, Vec<i64>, Vec<String>) {
    let mut levels = Vec::with_capacity(nodes.len());
    let mut indexes = Vec::with_capacity(nodes.len());
    let mut hashes = Vec::with_capacity(nodes.len());
    for (level, index, hash) in nodes {
        levels.push(*level as i32);
        indexes.push(*index as i64);
        hashes.push(hex::encode(hash));
    }
    (levels, indexes, hashes)
}
