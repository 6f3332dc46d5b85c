//! Test support: a fresh PostgreSQL database per test, so the suites run
//! against the real server in parallel without seeing each other.
//!
//! `AIRLOCK_TEST_POSTGRES` names the server (default
//! `postgres://postgres@127.0.0.1:5432/test`); set it to `skip` to run only
//! the SQLite half. An unreachable server fails the test rather than
//! skipping it, so a CI run cannot pass without PostgreSQL by accident.

use std::sync::atomic::{AtomicU32, Ordering};

use postgres::{Client, NoTls};

/// The environment variable naming the test server.
pub const ENV: &str = "AIRLOCK_TEST_POSTGRES";
/// The server used when [`ENV`] is unset.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A database made for one test and dropped after it.
#[derive(Debug)]
pub struct TestDb {
    admin: String,
    name: String,
    url: String,
}

fn admin_url() -> Option<String> {
    match std::env::var(ENV) {
        Ok(v) if v == "skip" => None,
        Ok(v) if !v.is_empty() => Some(v),
        _ => Some(DEFAULT_URL.to_owned()),
    }
}

/// Whether the PostgreSQL half of the suites is switched off.
pub fn skipped() -> bool {
    admin_url().is_none()
}

/// Replaces the database name in a `postgres://` URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

fn run_off_runtime<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    match std::thread::spawn(f).join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    }
}

impl TestDb {
    /// Makes a new empty database, or `None` when PostgreSQL tests are
    /// skipped. Panics (failing the test) if the server cannot be reached.
    pub fn create() -> Option<Self> {
        Some(Self::create_on(&admin_url()?))
    }

    /// Makes a new empty database on the server `admin` (a URL with a
    /// database it can connect to), such as a cluster a test runs itself.
    #[allow(clippy::panic)]
    pub fn create_on(admin: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let admin = admin.to_owned();
        let name = format!(
            "airlock_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let url = with_database(&admin, &name);
        let (a, n) = (admin.clone(), name.clone());
        run_off_runtime(move || {
            let mut c = Client::connect(&a, NoTls).unwrap_or_else(|e| {
                panic!("PostgreSQL at {a} is unreachable ({e}); start it, point {ENV} at one, or set {ENV}=skip")
            });
            static SWEEP: std::sync::Once = std::sync::Once::new();
            SWEEP.call_once(|| drop_orphans(&mut c));
            c.batch_execute(&format!("CREATE DATABASE {n}"))
                .unwrap_or_else(|e| panic!("CREATE DATABASE {n}: {e:?}"));
        });
        Self { admin, name, url }
    }

    /// The URL for `[storage] url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs SQL in the test database (to tamper with it, or break it).
    #[allow(clippy::panic)]
    pub fn execute(&self, sql: &str) {
        let (url, sql) = (self.url.clone(), sql.to_owned());
        run_off_runtime(move || {
            let mut c = Client::connect(&url, NoTls).unwrap_or_else(|e| panic!("{e}"));
            c.batch_execute(&sql)
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        });
    }
}

/// Drops the databases of test runs that died before dropping them (their
/// process is gone), so an interrupted run does not leave them for ever.
fn drop_orphans(c: &mut Client) {
    let Ok(rows) = c.query(
        "SELECT datname FROM pg_database WHERE datname LIKE 'airlock\\_test\\_%'",
        &[],
    ) else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

impl TestDb {
    /// One integer (any integer type) from the test database.
    #[allow(clippy::panic)]
    pub fn query_i64(&self, sql: &str) -> i64 {
        let (url, sql) = (self.url.clone(), sql.to_owned());
        run_off_runtime(move || {
            let mut c = Client::connect(&url, NoTls).unwrap_or_else(|e| panic!("{e}"));
            let row = c
                .query_one(&format!("SELECT ({sql})::bigint"), &[])
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            row.get(0)
        })
    }

    /// One text value from the test database.
    #[allow(clippy::panic)]
    pub fn query_text(&self, sql: &str) -> String {
        let (url, sql) = (self.url.clone(), sql.to_owned());
        run_off_runtime(move || {
            let mut c = Client::connect(&url, NoTls).unwrap_or_else(|e| panic!("{e}"));
            let row = c
                .query_one(&format!("SELECT ({sql})::text"), &[])
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            row.get(0)
        })
    }
}

impl TestDb {
    /// Stops the test database taking connections and cuts those named
    /// `application_name`: the server gone, as those clients see it.
    #[allow(clippy::panic)]
    pub fn shut_out(&self, application_name: &str) {
        let (admin, name, app) = (
            self.admin.clone(),
            self.name.clone(),
            application_name.to_owned(),
        );
        run_off_runtime(move || {
            let mut c = Client::connect(&admin, NoTls).unwrap_or_else(|e| panic!("{e}"));
            c.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
                .unwrap_or_else(|e| panic!("{e:?}"));
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND datname = $2",
                &[&app, &name],
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        });
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        run_off_runtime(move || {
            if let Ok(mut c) = Client::connect(&admin, NoTls) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_is_replaced() {
        assert_eq!(
            with_database("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
