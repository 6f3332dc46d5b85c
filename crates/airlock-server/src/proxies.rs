//! The `[[proxies.http]]`, `[[proxies.authz]]` and `[[proxies.postgres]]`
//! listeners `airlock serve` runs itself: each asks the service in process
//! (`LocalGate`, no network hop) as an enforcer identity of its own,
//! `proxy.NAME`, `authz.NAME` or `postgres.NAME`, which the audit log
//! records by key id `proxy:NAME`, `authz:NAME` or `postgres:NAME`.

use std::net::SocketAddr;
use std::sync::Arc;

use airlock_client::Gate;
use airlock_core::UserName;
use airlock_proxy_http::{Authz, Proxy, ProxyError};
use airlock_proxy_pg::PgProxy;
use airlock_store::Role;
use tokio::net::TcpListener;

use crate::service::LocalGate;
use crate::{Airlock, Caller};

/// Binds every configured proxy and authorization endpoint and serves each
/// on a task of its own; their names and bound addresses. One that cannot
/// start stops the server from starting: a door that should be guarded is
/// never left open.
pub async fn spawn(airlock: &Arc<Airlock>) -> Result<Vec<(String, SocketAddr)>, ProxyError> {
    let proxies = airlock.config.load().proxies.clone();
    let mut started = Vec::new();
    for cfg in proxies.http {
        let proxy = Proxy::new(cfg.clone(), gate(airlock, "proxy", &cfg.name)?)?;
        let listener = proxy.bind().await?;
        started.push((
            format!("proxy {}", proxy.name()),
            bound(&listener, proxy.name())?,
        ));
        tokio::spawn(proxy.serve(listener));
    }
    for cfg in proxies.authz {
        let authz = Authz::new(cfg.clone(), gate(airlock, "authz", &cfg.name)?)?;
        let listener = authz.bind().await?;
        started.push((
            format!("authz {}", authz.name()),
            bound(&listener, authz.name())?,
        ));
        tokio::spawn(authz.serve(listener));
    }
    for cfg in proxies.postgres {
        let pg = PgProxy::new(cfg.clone(), gate(airlock, "postgres", &cfg.name)?)
            .map_err(|e| ProxyError::Config(e.to_string()))?;
        let listener = pg
            .bind()
            .await
            .map_err(|e| ProxyError::Config(e.to_string()))?;
        started.push((
            format!("postgres {}", pg.name()),
            bound(&listener, pg.name())?,
        ));
        tokio::spawn(pg.serve(listener));
    }
    Ok(started)
}

/// The in-process gate of one listener, as its own enforcer.
fn gate(airlock: &Arc<Airlock>, kind: &str, name: &str) -> Result<Arc<dyn Gate>, ProxyError> {
    let user = UserName::parse(&format!("{kind}.{name}"))
        .map_err(|e| ProxyError::Config(format!("proxies.{kind} name {name:?}: {e}")))?;
    let caller = Caller {
        user,
        role: Role::Enforcer,
        key_id: format!("{kind}:{name}"),
    };
    Ok(Arc::new(LocalGate::new(airlock.clone(), caller)))
}

fn bound(listener: &TcpListener, name: &str) -> Result<SocketAddr, ProxyError> {
    listener.local_addr().map_err(|source| ProxyError::Listen {
        name: name.to_owned(),
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}
