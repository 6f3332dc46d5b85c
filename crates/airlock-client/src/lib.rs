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
