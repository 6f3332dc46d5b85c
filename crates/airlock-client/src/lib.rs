//! The enforcement side of Airlock: what a program that performs
//! sensitive actions (`airlock run`, the proxies) needs to ask first.
//!
//! - [`Client`]: a typed async client for HTTP API v1.
//! - [`Gate`]: the questions an enforcement point asks (check, wait,
//!   consume, complete), answered over HTTP by [`Client`] or, inside
//!   `airlock serve`, by the service itself with no network hop (the server
//!   crate implements it; this crate may not depend on the server).
//! - [`Enforcer`]: check → wait for the decision → consume the grant →
//!   report the outcome, over any [`Gate`].
//!
//! Ask, wait for approval, run once, report (the README's example; kept
//! here so it compiles):
//!
//! ```no_run
//! # async fn export(token: String, sql: String) -> Result<(), Box<dyn std::error::Error>> {
//! # fn run_export(_sql: &str) -> Result<(), std::io::Error> { Ok(()) }
//! use airlock_client::{api::{CheckBody, Outcome}, Client, Enforcer, Entry};
//!
//! let airlock = Enforcer::new(Client::new("http://127.0.0.1:8080", &token)?);
//! let body: CheckBody = serde_json::from_value(serde_json::json!({
//!     "action": "export", "resource": {"type": "Table", "id": "prod.customers"}, "params": {"sql": sql},
//! }))?;
//! match airlock.enter(&body, std::time::Duration::from_secs(600)).await? {
//!     Entry::Allowed { .. } => run_export(&sql)?,
//!     Entry::Granted { grant, .. } => {
//!         let ran = run_export(&sql);
//!         let outcome = if ran.is_ok() { Outcome::Success } else { Outcome::Failure };
//!         airlock.complete(grant.grant_id, outcome, Default::default()).await?;
//!         ran?
//!     }
//!     other => return Err(format!("not approved: {other:?}").into()),
//! }
//! # Ok(()) }
//! ```
//!
//! An enforcement point holds no signing key and no database credentials:
//! this crate depends on no store, server, key, auth or notification crate,
//! and a test below checks it from `cargo metadata`.
#![forbid(unsafe_code)]

mod enforcer;
mod error;
mod gate;
mod http;

pub use enforcer::{Enforcer, Entry, Waited, Waiter};
pub use error::ClientError;
pub use gate::Gate;
pub use http::Client;

/// The wire types, re-exported so callers need one dependency.
pub use airlock_api as api;

#[cfg(test)]
mod tests;
