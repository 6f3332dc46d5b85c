//! What an operator sees while a database's schema is upgraded: the
//! server answers nothing until it is done, which on a large audit log
//! takes seconds (about 5 s per million records for SQLite's version 16,
//! docs/PERFORMANCE.md), so a silent start would look like a hang.

use std::time::Instant;

/// A schema upgrade under way, announced in the log when it starts and
/// when it is done. Creating a new database is not an upgrade, and says
/// nothing.
pub(crate) struct Upgrade {
    started: Option<(Instant, &'static str, i64)>,
}

impl Upgrade {
    /// Announces an upgrade of `store` from `found` to `target`, if it is one.
    pub(crate) fn start(store: &'static str, found: i64, target: i64) -> Self {
        if found == 0 || found >= target {
            return Self { started: None };
        }
        tracing::info!(
            from = found,
            to = target,
            "upgrading the {store} database's schema; nothing is answered until it is done, \
             which takes seconds per million audit records"
        );
        Self {
            started: Some((Instant::now(), store, target)),
        }
    }

    /// Announces that the upgrade committed.
    pub(crate) fn done(self) {
        if let Some((started, store, target)) = self.started {
            tracing::info!(
                version = target,
                seconds = started.elapsed().as_secs_f64(),
                "the {store} database's schema is upgraded"
            );
        }
    }
}
