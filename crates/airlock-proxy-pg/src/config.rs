//! The `[[proxies.postgres]]` settings: where the proxy listens, how it
//! reaches the database, how long it holds a statement, and what it does to
//! result rows.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// What is done to result rows (`response_dlp`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowsDlp {
    /// Not scanned.
    #[default]
    Off,
    /// Scanned; findings (counts by type) recorded and in the result's
    /// decision.
    Report,
    /// Scanned; each finding replaced in place before the row leaves.
    Mask,
    /// Scanned; a result with any finding is refused (ERROR `AL003`).
    Block,
}

/// `[[proxies.postgres]]`: one listener in front of one database server.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgProxyConfig {
    /// A name for logs and the audit log (letters, digits, `_ - .`).
    pub name: String,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// How Airlock connects to the database:
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DB[?sslmode=disable|require|verify-full]`.
    /// The database in the URL is the only one clients reach; the user
    /// and password are Airlock's, never the client's.
    pub upstream: String,
    /// How long a statement needing approval is held before ERROR `AL001`.
    /// Default 20.
    #[serde(default = "default_hold")]
    pub hold_seconds: u64,
    /// What is done to result rows. Default `off`.
    #[serde(default)]
    pub response_dlp: RowsDlp,
    /// Result columns masked whole, by name (case-insensitive), whatever
    /// DLP finds: `["ssn", "card_number"]`. Where a result's columns cannot
    /// be told, it is withheld rather than sent unmasked.
    #[serde(default)]
    pub mask_columns: Vec<String>,
    /// Rows one result may return; more → the rest withheld with ERROR
    /// `AL003`. Default: no cap.
    #[serde(default)]
    pub max_rows: Option<u64>,
    /// Decide each result set before it leaves: the action (e.g.
    /// `sql.result`) on each table the statement read, params binding the
    /// statement and the result's SHA-256, context `rows`, `dlp` (counts by
    /// type), `columns` and, with `result_preview_rows`, `preview`. Allow →
    /// released; deny → `AL002`; approval → held like a statement (the
    /// identical result on a re-run uses the approval once). Results are
    /// buffered whole for this, up to `max_result_bytes`. Default: none.
    #[serde(default)]
    pub result_action: Option<String>,
    /// The largest result buffered for `result_action`; larger → `AL003`.
    /// Default 64 MiB.
    #[serde(default = "default_max_result_bytes")]
    pub max_result_bytes: u64,
    /// With `result_action`: how many first rows, masked, go into the
    /// decision's `context.preview` for approvers. Whatever the detectors
    /// miss is then in the request and its records: opt in. Default 0.
    #[serde(default)]
    pub result_preview_rows: usize,
    /// Certificate chain (PEM) offered to clients that ask for TLS; with
    /// `tls_key`. Without them, TLS requests are declined and clients fall
    /// back to plain text or give up, as their `sslmode` says.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that the upstream's certificate must chain to
    /// when the upstream URL asks for TLS (`sslmode=require` or
    /// `verify-full`: both verify here). Default: the system's roots are
    /// not used; without this file, an upstream asking for TLS is an error.
    #[serde(default)]
    pub upstream_ca: Option<PathBuf>,
    /// Sessions served at once; more are refused with `too_many_connections`.
    /// Default 256.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one client address may have logging in at once; more
    /// are refused (`53300`) until those finish or time out (30 s), so
    /// connections that never log in cannot hold every place. Size it for
    /// the largest pool that connects from one host. Default 64.
    #[serde(default = "default_logins_per_address")]
    pub max_logins_per_address: usize,
    /// Extra detectors for result rows (`[proxies.postgres.dlp]`), as in
    /// `airlock_dlp::Config`.
    #[serde(default)]
    pub dlp: airlock_dlp::Config,
}

impl std::fmt::Debug for PgProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The upstream URL may carry Airlock's database password.
        f.debug_struct("PgProxyConfig")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

fn default_hold() -> u64 {
    20
}

fn default_max_result_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_logins_per_address() -> usize {
    64
}

fn default_max_connections() -> usize {
    256
}
