//! The `[[proxies.http]]` listeners `airlock serve` runs itself: each asks
//! the service in process (`LocalGate`, no network hop) as an enforcer
//! identity of its own, `proxy.NAME`, which the audit log records by key id
//! `proxy:NAME`.

use std::net::SocketAddr;
use std::sync::Arc;

use airlock_core::UserName;
use airlock_proxy_http::{Proxy, ProxyError};
use airlock_store::Role;

use crate::service::LocalGate;
use crate::{Airlock, Caller};

/// Binds every configured HTTP proxy and serves each on a task of its own;
/// their names and bound addresses. A proxy that cannot start stops the
/// server from starting: a door that should be guarded is never left open.
pub async fn spawn(airlock: &Arc<Airlock>) -> Result<Vec<(String, SocketAddr)>, ProxyError> {
    let configs = airlock.config.load().proxies.http.clone();
    let mut started = Vec::new();
    for cfg in configs {
        let user = UserName::parse(&format!("proxy.{}", cfg.name))
            .map_err(|e| ProxyError::Config(format!("proxies.http name {:?}: {e}", cfg.name)))?;
        let caller = Caller {
            user,
            role: Role::Enforcer,
            key_id: format!("proxy:{}", cfg.name),
        };
        let gate = Arc::new(LocalGate::new(airlock.clone(), caller));
        let proxy = Proxy::new(cfg, gate)?;
        let listener = proxy.bind().await?;
        let addr = listener.local_addr().map_err(|source| ProxyError::Listen {
            name: proxy.name().to_owned(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        started.push((proxy.name().to_owned(), addr));
        tokio::spawn(proxy.serve(listener));
    }
    Ok(started)
}
