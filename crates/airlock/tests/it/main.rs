//! The integration suite: real `airlock serve` processes on real sockets,
//! driven over HTTP and through the real `airlock` binary. One test binary
//! (`cargo test -p airlock --test it`) with one module per area; what they
//! share is in `support`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

mod api;
mod audit;
mod authz;
mod breakglass;
mod chat;
mod cli;
mod console;
mod crash;
mod dlp;
mod faults;
mod grants;
mod hardening;
mod nodes;
mod notify;
mod policy;
mod proxy_http;
mod proxy_pg;
mod requests;
mod sso;
mod stepup;
