//! Opening a store to read it without running Airlock: what offline tools
//! such as `airlock audit verify` use, on either backend.

use std::path::Path;

use crate::{Location, PostgresBackend, ReadTx, SqliteBackend, StoreError};

/// A store opened for reading only: no writer, no migrations, no events.
#[derive(Debug)]
pub struct ReadOnlyStore {
    location: Location,
}

impl ReadOnlyStore {
    /// Names the store by the same URL `[storage] url` takes. Nothing is
    /// opened until [`ReadOnlyStore::read`].
    pub fn new(url: &str, base: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            location: Location::parse(url, base)?,
        })
    }

    /// Runs `f` in one consistent read-only snapshot. Blocks; call it
    /// outside an async runtime.
    pub fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn ReadTx) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        match &self.location {
            Location::Sqlite(path) => SqliteBackend::read_only(path)?.read(f),
            Location::Postgres(url) => PostgresBackend::read_once(url, f),
        }
    }
}
