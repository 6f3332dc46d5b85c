//! The accept loop: HTTP/1 connections with a header-read timeout, a cap
//! on how many are served at once, and a bound on stalled bodies and
//! unread answers, so connections that stop halfway cannot starve everyone
//! else (axum's own `serve` has none of these).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt as _;
use tower_http::timeout::TimeoutBody;

use crate::config::ServerConfig;

/// How long connections still open at shutdown may take to finish their
/// answers before they are dropped (an event stream never finishes).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Open files kept for the store, keys, logs and outgoing calls when the
/// connection cap is fitted to the open-file limit.
const RESERVED_FILES: u64 = 64;

/// The limits every connection is served under.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    header_read: Duration,
    idle: Duration,
    max_connections: usize,
}

impl Limits {
    pub(crate) fn from_config(c: &ServerConfig) -> Self {
        let wanted = c.max_connections.get() as usize;
        Self {
            header_read: Duration::from_secs(c.header_read_timeout_seconds.get()),
            idle: Duration::from_secs(c.idle_timeout_seconds.get()),
            max_connections: fit_to_open_files(wanted),
        }
    }
}

/// Raises this process's open-file soft limit to its hard limit, so the
/// connection cap, not the default of 1024 files, decides how many clients
/// are served. Returns the soft limit now in force, if it can be read.
pub fn raise_open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// A cap the process cannot hold would fail accepts for everyone once the
/// files run out; a lower cap makes the rest wait their turn instead.
fn fit_to_open_files(wanted: usize) -> usize {
    let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
        return wanted;
    };
    let room = soft.saturating_sub(RESERVED_FILES).max(1);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if room < wanted {
        tracing::warn!(
            wanted,
            serving = room,
            open_file_limit = soft,
            "server.max_connections lowered to fit the open-file limit"
        );
    }
    wanted.min(room)
}

/// Accepts and serves connections until `shutdown` resolves, then lets
/// open ones finish (for at most [`SHUTDOWN_GRACE`]).
pub(crate) async fn run(
    app: Router,
    listener: TcpListener,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Take a place before accepting: when every place is taken, new
        // connections wait in the listen queue until a stalled one times
        // out, rather than taking files the server needs.
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of files or the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while tasks.try_join_next().is_some() {}
        tasks.spawn(connection(
            app.clone(),
            stream,
            peer,
            limits,
            stop_rx.clone(),
            permit,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = tasks.len(),
            "closing connections still open after the shutdown grace"
        );
        tasks.shutdown().await;
    }
}

async fn connection(
    app: Router,
    stream: TcpStream,
    peer: SocketAddr,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let stall = Arc::new(WriteStall::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        stall: stall.clone(),
    });
    let body_idle = limits.idle;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        // A body that stops arriving fails the request after `idle`
        // instead of holding a handler forever.
        let mut req = req.map(|b| TimeoutBody::new(body_idle, b));
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.oneshot(req).await.unwrap_or_else(|e| match e {})) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = stall.exceeds(limits.idle) => {
                tracing::debug!(%peer, "closing a connection whose client stopped reading");
                return;
            }
        }
    }
}

/// Since when writes to the client have been blocked (its receive window
/// is full: it stopped reading), as milliseconds since `start` plus one;
/// zero while writes go through.
struct WriteStall {
    start: Instant,
    blocked_since: AtomicU64,
}

impl WriteStall {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            blocked_since: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn blocked(&self) {
        let now = self.now_ms().saturating_add(1);
        let _ = self
            .blocked_since
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn flowing(&self) {
        self.blocked_since.store(0, Ordering::Relaxed);
    }

    /// Resolves once writes have been blocked for longer than `limit`.
    async fn exceeds(&self, limit: Duration) {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let tick = (limit / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            let since = self.blocked_since.load(Ordering::Relaxed);
            if since != 0 && self.now_ms().saturating_add(1).saturating_sub(since) > limit_ms {
                return;
            }
        }
    }
}

/// A TCP stream that notes when writes block.
struct Watched {
    inner: TcpStream,
    stall: Arc<WriteStall>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl Watched {
    fn note<T>(&self, p: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match &p {
            Poll::Pending => self.stall.blocked(),
            Poll::Ready(_) => self.stall.flowing(),
        }
        p
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(p)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(p)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(p)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
