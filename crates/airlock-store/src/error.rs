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
        StoreError::Db(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}
