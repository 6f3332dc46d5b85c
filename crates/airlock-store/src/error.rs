//! The store's one error type. Every variant means "not done": callers fail
//! closed on all of them.

/// A storage failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed (disk full, locked past the timeout,
    /// constraint, I/O).
    #[error("database: {0}")]
    Db(String),
    /// A stored value could not be read back (corruption or tampering).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The database schema is newer than this build understands.
    #[error("database schema version {found} is newer than this Airlock knows ({known}); upgrade Airlock before starting it on this database")]
    SchemaTooNew {
        /// Version in the database.
        found: i64,
        /// Newest this build knows.
        known: i64,
    },
    /// The writer thread stopped; nothing more can be written.
    #[error("storage writer is not running")]
    WriterGone,
    /// The storage URL names something this build cannot open.
    #[error("{0}")]
    Unsupported(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        // SQLite's own words ("database is locked") name neither who holds
        // the lock nor what to do.
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
            return StoreError::Db(format!(
                "{e}: another process holds the SQLite database's write lock \
                 (an `airlock` command, or a server writing or upgrading the schema); \
                 try again"
            ));
        }
        StoreError::Db(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    /// A write refused because another process holds the lock says so,
    /// and what to do.
    #[test]
    fn a_locked_database_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let holder = rusqlite::Connection::open(&path).unwrap();
        holder
            .execute_batch("CREATE TABLE t (x); BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
            .unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .busy_timeout(std::time::Duration::from_millis(10))
            .unwrap();
        let e: super::StoreError = other.execute_batch("BEGIN IMMEDIATE").unwrap_err().into();
        let text = e.to_string();
        assert!(text.contains("database is locked"), "{text}");
        assert!(text.contains("another process holds"), "{text}");
        assert!(text.contains("try again"), "{text}");
    }
}
