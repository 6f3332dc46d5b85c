//! Airlock's HTTP reverse proxy: puts Airlock in the data path in front of
//! an internal HTTP service. Each request is matched to a route (method and
//! path template → action on a `TYPE:ID` resource), checked for its end
//! user through a [`airlock_client::Gate`] with an enforcer's identity,
//! and then forwarded (allow), refused (deny, no route, no identity) or
//! held until approved; an approved request is forwarded exactly once, its
//! grant consumed first and completed with the upstream's status. Responses
//! can be scanned with `airlock-dlp` (report, mask, block).
//!
//! It runs inside `airlock serve` (over the service's in-process gate) or
//! alone (`airlock proxy`, over [`airlock_client::Client`] with an enforcer
//! key); either way it holds no signing key and no database credentials.
#![forbid(unsafe_code)]

mod authz;
mod body;
pub mod config;
mod door;
mod listen;
mod proxy;
mod respond;
mod route;
mod scan;

pub use authz::Authz;
pub use config::{AuthzConfig, HttpProxyConfig, ProxyClientConfig, ResponseDlp, RouteConfig};
pub use proxy::Proxy;
pub use respond::Body;
pub use route::{ambiguous_path, Matched, Route, Routes};

/// What can stop a proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The settings are wrong.
    #[error("proxy config: {0}")]
    Config(String),
    /// The listener could not be bound.
    #[error("proxy {name}: cannot listen on {addr}: {source}")]
    Listen {
        /// The proxy.
        name: String,
        /// Where.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
