//! `airlock proxy --config FILE`: the file's HTTP proxies, authorization
//! endpoints and PostgreSQL proxies, alone, asking a remote server over HTTP with an enforcer key.
//! No store, no signing key.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use airlock_client::{Client, Gate};
use airlock_proxy_http::{Authz, Proxy};
use airlock_proxy_pg::PgProxy;
use airlock_server::config::StandaloneConfig;
use anyhow::Context;

use crate::serve::{say, shutdown_signal};

pub async fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cfg: StandaloneConfig =
        toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    cfg.proxies
        .check()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if cfg.proxies.is_empty() {
        anyhow::bail!(
            "{}: no [[proxies.http]], [[proxies.authz]] or [[proxies.postgres]] to run",
            path.display()
        );
    }
    let shutdown = shutdown_signal();
    let client = Client::new(&cfg.proxy.server_url, &cfg.proxy.token)?;
    // The key must be an enforcer's: with a user key every check on behalf
    // of someone else would be refused, so say so now rather than per request.
    let me = client
        .whoami(&cfg.proxy.token)
        .await
        .context("asking the server who [proxy] token is")?;
    if me.role != "enforcer" {
        anyhow::bail!(
            "[proxy] token belongs to {} with role {}; a proxy needs an enforcer key",
            me.user.as_str(),
            me.role
        );
    }
    let gate: Arc<dyn Gate> = Arc::new(client);
    let mut tasks = Vec::new();
    for p in cfg.proxies.http {
        let proxy = Proxy::new(p, gate.clone())?;
        let listener = proxy.bind().await?;
        say(format!(
            "proxy {} listening on http://{}",
            proxy.name(),
            listener.local_addr()?
        ));
        tasks.push(tokio::spawn(proxy.serve(listener)));
    }
    for a in cfg.proxies.authz {
        let authz = Authz::new(a, gate.clone())?;
        let listener = authz.bind().await?;
        say(format!(
            "authz {} listening on http://{}",
            authz.name(),
            listener.local_addr()?
        ));
        tasks.push(tokio::spawn(authz.serve(listener)));
    }
    for p in cfg.proxies.postgres {
        let pg = PgProxy::new(p, gate.clone())?;
        let listener = pg.bind().await?;
        say(format!(
            "postgres {} listening on postgres://{}",
            pg.name(),
            listener.local_addr()?
        ));
        tasks.push(tokio::spawn(pg.serve(listener)));
    }
    shutdown.await;
    for t in tasks {
        t.abort();
    }
    Ok(ExitCode::SUCCESS)
}
