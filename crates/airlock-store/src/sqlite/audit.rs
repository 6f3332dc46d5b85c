//! The audit chain and its checkpoints: SQLite's SQL and row reading.

use airlock_core::{merkle, AuditRecord};
use airlock_keys::Checkpoint;
use rusqlite::{params, OptionalExtension};

use super::Tx;
use crate::logic::{corrupt, AuditRow, AuditRows, CheckpointRow};
use crate::model::AuditFilter;
use crate::StoreError;

const AUDIT_COLS: &str = "seq, ts, kind, actor, subject, details, prev_hash, hash";

/// A subject's records, oldest first: `subject <> ''` lets the planner use
/// the subject index, which leaves out records without one.
fn about_sql() -> String {
    format!(
        "SELECT {AUDIT_COLS} FROM audit WHERE subject = ?1 AND subject <> '' ORDER BY seq LIMIT ?2"
    )
}

/// A perfect subtree's key in `audit_nodes`: its in-order position.
fn position(level: u32, index: u64) -> Result<i64, StoreError> {
    merkle::in_order_position(level, index)
        .and_then(|p| i64::try_from(p).ok())
        .ok_or_else(|| {
            corrupt(format!(
                "Merkle node {level}/{index} is past the tree's size"
            ))
        })
}

impl Tx<'_> {
    fn audit_rows(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut st = self.conn.prepare_cached(sql)?;
        let mut rows = st.query(params)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(AuditRow {
                seq: r.get(0)?,
                ts: r.get(1)?,
                kind: r.get(2)?,
                actor: r.get(3)?,
                subject: r.get(4)?,
                details: r.get(5)?,
                prev_hash: r.get(6)?,
                hash: r.get(7)?,
            });
        }
        Ok(out)
    }
}

impl AuditRows for Tx<'_> {
    fn audit_rows_after(&mut self, after: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        self.audit_rows(
            &format!("SELECT {AUDIT_COLS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"),
            params![after, limit],
        )
    }

    fn audit_rows_about(&mut self, subject: &str, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        self.audit_rows(&about_sql(), params![subject, limit])
    }

    fn audit_rows_matching(
        &mut self,
        f: &AuditFilter,
        limit: u32,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let (conditions, mut values) = f.where_clause(|n| format!("?{n}"));
        let limit = limit.to_string();
        let n = values.len() + 1;
        values.push(&limit);
        self.audit_rows(
            &format!("SELECT {AUDIT_COLS} FROM audit{conditions} ORDER BY seq DESC LIMIT ?{n}"),
            rusqlite::params_from_iter(values),
        )
    }

    fn filing_rows_after(
        &mut self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Option<String>)>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT seq, request_id FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = st.query_map(params![after, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn head_row(&mut self) -> Result<Option<(i64, String)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    fn insert_audit_row(
        &mut self,
        record: &AuditRecord,
        request: Option<&str>,
        nodes: &[(u32, u64, airlock_core::merkle::Hash)],
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO audit (seq, ts, kind, actor, subject, details, prev_hash, hash, request_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                record.seq,
                record.ts,
                record.kind,
                record.actor,
                record.subject,
                record.details.get(),
                record.prev_hash.to_string(),
                record.hash.to_string(),
                request,
            ])?;
        self.insert_tree_nodes(nodes)
    }

    fn tree_node_row(&mut self, level: u32, index: u64) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT hash FROM audit_nodes WHERE pos = ?1")?
            .query_row(params![position(level, index)?], |r| r.get(0))
            .optional()?)
    }

    fn tree_leaves(&mut self) -> Result<u64, StoreError> {
        let last: Option<i64> = self
            .conn
            .prepare_cached("SELECT MAX(pos) FROM audit_nodes")?
            .query_row([], |r| r.get(0))?;
        last.map_or(Ok(0), |last| {
            u64::try_from(last)
                .ok()
                .and_then(merkle::leaves_below)
                .ok_or_else(|| {
                    corrupt(format!(
                        "the Merkle tree's last node is at {last}, not at a leaf"
                    ))
                })
        })
    }

    fn note_rows(&mut self) -> Result<Vec<(i64, String)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT size, note FROM audit_notes ORDER BY size")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn insert_audit_note(&mut self, size: i64, note: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO audit_notes (size, note) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            )?
            .execute(params![size, note])?;
        Ok(())
    }

    fn cosign_audit_note(&mut self, size: i64, lines: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE audit_notes SET note = note || ?2 WHERE size = ?1 AND instr(note, ?2) = 0",
            )?
            .execute(params![size, lines])?;
        Ok(())
    }

    fn insert_tree_nodes(
        &mut self,
        nodes: &[(u32, u64, airlock_core::merkle::Hash)],
    ) -> Result<(), StoreError> {
        let mut st = self
            .conn
            .prepare_cached("INSERT INTO audit_nodes (pos, hash) VALUES (?1, ?2)")?;
        for (level, index, hash) in nodes {
            st.execute(params![position(*level, *index)?, hex::encode(hash)])?;
        }
        Ok(())
    }

    fn checkpoint_rows(&mut self) -> Result<Vec<CheckpointRow>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT seq, hash, ts, signature FROM checkpoints ORDER BY seq")?;
        let rows = st.query_map([], |r| {
            Ok(CheckpointRow {
                seq: r.get(0)?,
                hash: r.get(1)?,
                ts: r.get(2)?,
                signature: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn insert_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO checkpoints (seq, hash, ts, signature) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![cp.seq, cp.hash.to_string(), cp.ts, cp.signature])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// SQLite's plan for `sql` with these values, one line per step.
    fn plan(conn: &rusqlite::Connection, sql: &str, values: Vec<String>) -> Vec<String> {
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(rusqlite::params_from_iter(values), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A request's history is read on every `?wait` answer: it must go
    /// through the index, not scan a log of millions of records.
    #[test]
    fn a_requests_history_is_read_through_the_index() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::sqlite::schema::migrate(&mut conn).unwrap();
        for kind in [None, Some("decision".to_owned())] {
            let f = AuditFilter {
                request: Some("req_x".into()),
                kind,
                ..Default::default()
            };
            let (conditions, values) = f.where_clause(|n| format!("?{n}"));
            let n = values.len() + 1;
            let mut values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
            values.push("10".into());
            let plan = plan(
                &conn,
                &format!("SELECT {AUDIT_COLS} FROM audit{conditions} ORDER BY seq DESC LIMIT ?{n}"),
                values,
            );
            assert!(
                plan.iter()
                    .any(|p| p.contains("USING INDEX audit_by_request")),
                "{plan:?}"
            );
        }
    }

    /// The subject index leaves decisions out (they have no subject), so a
    /// subject's records are found through it only when the query says
    /// the subject is not empty.
    #[test]
    fn a_subjects_records_are_read_through_the_partial_index() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::sqlite::schema::migrate(&mut conn).unwrap();
        let f = AuditFilter {
            subject: Some("grt_x".into()),
            ..Default::default()
        };
        let (conditions, values) = f.where_clause(|n| format!("?{n}"));
        let queries = [
            (
                format!("SELECT {AUDIT_COLS} FROM audit{conditions} ORDER BY seq DESC LIMIT 10"),
                values.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
            ),
            (about_sql(), vec!["grt_x".to_owned(), "10".to_owned()]),
        ];
        for (sql, values) in queries {
            let plan = plan(&conn, &sql, values);
            assert!(
                plan.iter()
                    .any(|p| p.contains("USING INDEX audit_by_subject")),
                "{sql}: {plan:?}"
            );
        }
    }
}
