//! Airlock's PostgreSQL wire proxy: clients log in with their Airlock user
//! name and API key (SCRAM-SHA-256), Airlock logs in to the database with
//! its own credentials, and every statement is read with PostgreSQL's own
//! grammar and decided before the server sees it: one check per table it
//! touches, all of which must pass. A statement needing approval is held
//! (a NOTICE names the request at once), runs once when approved, or ends
//! in ERROR `AL001` naming the request; running the identical statement
//! again after approval consumes the grant. Result rows can be scanned
//! with `airlock-dlp` (report, mask, block).
//!
//! It runs inside `airlock serve` (over the service's in-process gate) or
//! alone (`airlock proxy`, over [`airlock_client::Client`] with an enforcer
//! key); either way it holds no signing key and no database credentials of
//! Airlock's own store.
#![forbid(unsafe_code)]

mod auth;
mod binary;
pub mod classify;
pub mod codec;
pub mod config;
mod decide;
mod results;
mod session;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_client::Gate;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

pub use config::{PgProxyConfig, RowsDlp};
pub use decide::{BLOCKED, DENIED, HELD, UNDECIDED};

/// What can stop a PostgreSQL proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum PgProxyError {
    /// The settings are wrong.
    #[error("proxies.postgres {name:?}: {message}")]
    Config {
        /// The proxy.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The listener could not be bound.
    #[error("proxies.postgres {name:?}: cannot listen on {addr}: {source}")]
    Listen {
        /// The proxy.
        name: String,
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where and how Airlock logs in to the database.
pub(crate) struct Upstream {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    database: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
}

/// What every session of one proxy shares.
pub(crate) struct Shared {
    name: String,
    upstream: Upstream,
    decider: decide::Decider,
    hold: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
    rules: Arc<results::Rules>,
    result_action: Option<airlock_core::ActionName>,
    /// Open sessions by the cancel key their client was given.
    cancels: Mutex<HashMap<(i32, i32), Arc<Notify>>>,
    /// Connections still logging in, by client address: one address cannot
    /// hold every place with connections that never log in.
    logging_in: Mutex<HashMap<std::net::IpAddr, usize>>,
    max_logins_per_address: usize,
}

/// A place among an address's connections logging in, given back on drop.
pub(crate) struct LoginSlot<'a> {
    shared: &'a Shared,
    ip: std::net::IpAddr,
}

impl Drop for LoginSlot<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.shared.logging_in.lock() {
            if let Some(n) = m.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

impl Shared {
    /// A place for one more connection from `ip` to log in, if it has one.
    pub(crate) fn login_slot(&self, ip: std::net::IpAddr) -> Option<LoginSlot<'_>> {
        let mut m = self.logging_in.lock().ok()?;
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max_logins_per_address {
            return None;
        }
        *n += 1;
        Some(LoginSlot { shared: self, ip })
    }

    fn register_cancel(&self, key: (i32, i32), n: Arc<Notify>) {
        if let Ok(mut m) = self.cancels.lock() {
            m.insert(key, n);
        }
    }

    fn unregister_cancel(&self, key: (i32, i32)) {
        if let Ok(mut m) = self.cancels.lock() {
            m.remove(&key);
        }
    }

    /// A client's cancel request: ends the session's hold, if it is
    /// holding, and passes the cancel to the server. Keys this proxy did
    /// not hand out are ignored, so the proxy cannot be used to cancel
    /// other sessions of the server.
    async fn cancel(&self, pid: i32, secret: i32) {
        let found = self
            .cancels
            .lock()
            .ok()
            .and_then(|m| m.get(&(pid, secret)).cloned());
        let Some(notify) = found else {
            return;
        };
        notify.notify_one();
        let addr = (self.upstream.host.as_str(), self.upstream.port);
        if let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::AsyncWriteExt;
            let _ = tcp.write_all(&codec::build::cancel(pid, secret)).await;
        }
    }
}

/// One `[[proxies.postgres]]` listener.
pub struct PgProxy {
    shared: Arc<Shared>,
    listen: SocketAddr,
    max_connections: usize,
}

impl PgProxy {
    /// A proxy deciding through `gate` (an enforcer's).
    pub fn new(cfg: PgProxyConfig, gate: Arc<dyn Gate>) -> Result<Self, PgProxyError> {
        let bad = |message: String| PgProxyError::Config {
            name: cfg.name.clone(),
            message,
        };
        let upstream = tls::upstream(&cfg).map_err(bad)?;
        let acceptor = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(c), Some(k)) => Some(tls::acceptor(c, k).map_err(bad)?),
            (None, None) => None,
            _ => return Err(bad("tls_cert and tls_key go together".into())),
        };
        let result_action = cfg
            .result_action
            .as_deref()
            .map(|a| {
                airlock_core::ActionName::parse(a).map_err(|e| bad(format!("result_action: {e}")))
            })
            .transpose()?;
        // The preview for approvers is masked whatever the mode, so a
        // result decision needs the scanner too.
        let scanner = match (cfg.response_dlp, &result_action) {
            (RowsDlp::Off, None) => None,
            _ => Some(Arc::new(
                airlock_dlp::Scanner::new(&cfg.dlp).map_err(|e| bad(e.to_string()))?,
            )),
        };
        let rules = Arc::new(results::Rules {
            mode: cfg.response_dlp,
            scanner,
            mask_columns: cfg.mask_columns.clone(),
            max_rows: cfg.max_rows,
            max_result_bytes: cfg.max_result_bytes,
            preview_rows: cfg.result_preview_rows,
        });
        let hold = Duration::from_secs(cfg.hold_seconds);
        let scans = cfg.response_dlp != config::RowsDlp::Off;
        let decider = decide::Decider::new(&cfg.name, &upstream.database, gate, hold, scans);
        Ok(Self {
            shared: Arc::new(Shared {
                name: cfg.name.clone(),
                upstream,
                decider,
                hold,
                tls: acceptor,
                rules,
                result_action,
                cancels: Mutex::new(HashMap::new()),
                logging_in: Mutex::new(HashMap::new()),
                max_logins_per_address: cfg.max_logins_per_address.max(1),
            }),
            listen: cfg.listen,
            max_connections: cfg.max_connections.max(1),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Binds its listener.
    pub async fn bind(&self) -> Result<TcpListener, PgProxyError> {
        TcpListener::bind(self.listen)
            .await
            .map_err(|source| PgProxyError::Listen {
                name: self.shared.name.clone(),
                addr: self.listen,
                source,
            })
    }

    /// Serves sessions until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        let slots = Arc::new(Semaphore::new(self.max_connections));
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(proxy = %self.shared.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let mut tcp = tcp;
                    let _ = tcp
                        .write_all(&codec::build::fatal(
                            "53300",
                            "too many connections to Airlock's proxy",
                        ))
                        .await;
                });
                continue;
            };
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let name = shared.name.clone();
                if let Err(e) = session::run(shared, tcp, peer).await {
                    tracing::debug!(proxy = %name, %peer, error = %e, "session ended");
                }
                drop(permit);
            });
        }
    }
}
