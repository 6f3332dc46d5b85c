//! `airlock serve`: config or quickstart, then the server until a signal.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlock_server::{background, http, quickstart, Airlock, Config};
use anyhow::Context;

pub async fn run(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (config_path, quick) = match config {
        Some(p) => (p, None),
        None if Path::new("airlock.toml").exists() => (PathBuf::from("airlock.toml"), None),
        None => {
            let dir = PathBuf::from(".airlock");
            let p = quickstart::prepare(&dir).context("writing the quickstart to .airlock/")?;
            (p, Some(dir))
        }
    };
    // Before anything opens files: the default soft limit (often 1024)
    // would run out long before the connection cap.
    http::raise_open_file_limit();
    let config = Config::load(&config_path)?;
    let shutdown = shutdown_signal();
    let listen = config.server.listen;
    let (airlock, bg) = Airlock::start(config).await?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    airlock.set_bound(addr);
    background::spawn(&airlock, bg);
    let proxies = airlock_server::proxies::spawn(&airlock).await?;
    let url = format!("http://{addr}");
    say(format!("Airlock listening on {url}"));
    for (name, at) in &proxies {
        let scheme = if name.starts_with("postgres ") {
            "postgres"
        } else {
            "http"
        };
        say(format!("  {name} listening on {scheme}://{at}"));
    }
    say(format!(
        "  config: {}  policy version: {}",
        config_path.display(),
        airlock.policy_version()
    ));
    if let Some(dir) = quick {
        let creds = quickstart::credentials(&dir, airlock.store())
            .await
            .map_err(anyhow::Error::msg)?;
        print_quickstart(&url, &creds);
    }
    http::serve(airlock, listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

fn print_quickstart(url: &str, creds: &quickstart::Credentials) {
    let key = |u: &str| creds.key(u).unwrap_or("?").to_owned();
    say(String::new());
    say(
        "Quickstart: data, policies and keys are in .airlock/ (SQLite, nothing else to run)."
            .to_owned(),
    );
    say(format!("Admin key: {}", key("admin")));
    say(String::new());
    say("Try the loop. In a second terminal, ask to export 50,000 rows as alice:".to_owned());
    say(String::new());
    say(format!(
        "  AIRLOCK_URL={url} AIRLOCK_TOKEN={} \\",
        key("alice")
    ));
    say(
        "    airlock run --action export --resource Table:prod.orders --context rows=50000 \\"
            .to_owned(),
    );
    say("    --reason \"monthly report\" -- echo exported 50000 rows".to_owned());
    say(String::new());
    say("It waits for a data owner. In a third terminal, approve it as dave:".to_owned());
    say(String::new());
    say(format!(
        "  export AIRLOCK_URL={url} AIRLOCK_TOKEN={}",
        key("dave")
    ));
    say("  airlock requests list".to_owned());
    say("  airlock requests approve <REQUEST_ID> --reason \"ok for the report\"".to_owned());
    say(String::new());
    say(format!(
        "Other keys: bob={} carol={} erin={}",
        key("bob"),
        key("carol"),
        key("erin")
    ));
    say("Policies: .airlock/policies/quickstart.cedar (reloaded when you save them)".to_owned());
}

/// SIGTERM or Ctrl-C, as a future that ends the server gracefully. The
/// handlers are installed when this is called, not when the future is
/// first polled: called before the server says it listens, a supervisor's
/// SIGTERM right after that line stops it gracefully instead of killing
/// it by the signal's default action.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    async move {
        #[cfg(unix)]
        match signals {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down");
    }
}

/// Prints a line; a closed stdout (a supervisor that stopped reading) must
/// not take the server down.
pub(crate) fn say(line: String) {
    let _ = writeln!(std::io::stdout(), "{line}");
}
