//! The API key lookup every authenticated request makes, on PostgreSQL:
//! one prepared query on an async `tokio-postgres` connection, run on
//! the caller's own task. The blocking reader pool's way (a blocking
//! thread, and the `postgres` crate's client driving its connection on
//! it) cost two thread hand-offs per request (docs/PERFORMANCE.md).

use std::sync::{Arc, Mutex};

use tokio_postgres::{Client, NoTls, Statement};

use super::keys::{api_key_row, BY_HASH};
use crate::model::ApiKeyRecord;
use crate::StoreError;

/// Idle lookup connections kept open.
const IDLE: usize = 8;

/// A pool of async connections for key lookups.
pub(crate) struct Lookup {
    config: tokio_postgres::Config,
    idle: Mutex<Vec<Conn>>,
}

struct Conn {
    client: Client,
    by_hash: Statement,
}

impl Lookup {
    pub(crate) fn new(mut config: tokio_postgres::Config) -> Arc<Self> {
        // Named apart in `pg_stat_activity` from the node's other
        // connections.
        config.application_name("airlock-keys");
        Arc::new(Self {
            config,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The key with this hash, if any. A pooled connection that turns
    /// out to be dead (the server restarted, the network cut it while
    /// idle) is dropped and the query made once more on a new one: the
    /// read changes nothing, so asking twice is safe, and one lost
    /// connection does not fail a request.
    pub(crate) async fn by_hash(
        self: Arc<Self>,
        hash: String,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        if let Some(conn) = self.take() {
            match conn.client.query_opt(&conn.by_hash, &[&hash]).await {
                Ok(row) => {
                    self.give_back(conn);
                    return to_record(row);
                }
                Err(e) if !lost(&e, &conn.client) => return Err(e.into()),
                Err(_) => {}
            }
        }
        let conn = self.connect().await?;
        let row = conn.client.query_opt(&conn.by_hash, &[&hash]).await?;
        self.give_back(conn);
        to_record(row)
    }

    fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(conn) = idle.pop() {
            if !conn.client.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    fn give_back(&self, conn: Conn) {
        if conn.client.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < IDLE {
                idle.push(conn);
            }
        }
    }

    /// A new connection, driven by a task on the caller's runtime until
    /// its client is dropped.
    async fn connect(&self) -> Result<Conn, StoreError> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(|e| {
            StoreError::Db(format!(
                "cannot connect to PostgreSQL: {}",
                super::describe(&e)
            ))
        })?;
        tokio::spawn(async move {
            // Its end (the client dropped, or the server gone) shows as a
            // closed client on the next use.
            let _ = connection.await;
        });
        let by_hash = client.prepare(BY_HASH).await?;
        Ok(Conn { client, by_hash })
    }
}

/// Whether the connection is gone (not the query refused): closed, or
/// ended by the server with a FATAL or PANIC error, which can arrive
/// before the client sees its connection close.
fn lost(e: &tokio_postgres::Error, client: &Client) -> bool {
    use tokio_postgres::error::Severity;
    e.is_closed()
        || client.is_closed()
        || e.as_db_error().is_some_and(|db| {
            matches!(
                db.parsed_severity(),
                Some(Severity::Fatal | Severity::Panic)
            )
        })
}

fn to_record(row: Option<tokio_postgres::Row>) -> Result<Option<ApiKeyRecord>, StoreError> {
    row.as_ref()
        .map(api_key_row)
        .transpose()?
        .map(crate::logic::ApiKeyRow::into_record)
        .transpose()
}
