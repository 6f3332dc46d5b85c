//! Accepting connections, for every listener of this crate: a place per
//! connection (the rest wait in the listen queue), no Nagle, HTTP/1.1 with a
//! header timeout and cleartext HTTP/2 (TLS is terminated in front).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::respond::Body;
use crate::ProxyError;

/// Binds `addr` for the listener `name`.
pub(crate) async fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Listen {
            name: name.to_owned(),
            addr,
            source,
        })
}

/// Serves connections from `listener` with `handle` until the task is
/// dropped.
pub(crate) async fn serve<F, Fut>(
    listener: TcpListener,
    name: &str,
    max_connections: usize,
    header_timeout: Duration,
    handle: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let places = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    loop {
        // A place first: when all are taken, new connections wait in the
        // listen queue rather than take the files the process needs.
        let Ok(place) = places.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off, go on.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A response streamed in pieces would otherwise stall ~40 ms on
        // Nagle and the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        tokio::spawn(async move {
            let _place = place;
            let svc = hyper::service::service_fn(move |req| {
                let answer = handle(req, peer);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            builder.http2().timer(TokioTimer::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}
