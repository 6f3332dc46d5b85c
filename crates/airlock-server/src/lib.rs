//! Airlock's service: the approval loop behind the HTTP API v1.
//!
//! `service` holds the loop (flag, decide, ask, review, grant, execute,
//! record); `http` turns it into routes and turns every error into a
//! response in one place; `background` runs the timers, checkpoints and
//! policy reloads; `config` is the configuration file's reference.
#![forbid(unsafe_code)]

pub mod background;
pub mod config;
mod error;
pub mod http;
mod integrations;
mod limits;
mod metrics;
pub mod proxies;
pub mod quickstart;
pub mod service;
mod web;
pub mod witness;

pub use config::Config;
pub use error::ApiError;
pub use service::{Airlock, Caller};
