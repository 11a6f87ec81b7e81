//! Edge: the program's one HTTP/1.1 server, hyper under an axum router,
//! for the case board (`serve`) and the Prometheus endpoint (`run`).
//!
//! axum's own `serve` has no limits to set, and a service on a mail host
//! must not be held open by clients that connect and say nothing: here
//! every connection has a deadline for its request head
//! ([`Limits::head_timeout`]; past it the connection is closed), a bound
//! on the head's size (larger: 431), and at most
//! [`Limits::max_connections`] are served at once (others wait in the
//! listen backlog). Each request carries its peer address as axum's
//! `ConnectInfo`. On cancellation the listener closes at once, and each
//! connection finishes the request in hand.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

/// What one server allows its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// The request head must arrive within this time.
    pub head_timeout: Duration,
    /// The largest request head (request line and header fields).
    pub max_head_bytes: usize,
    /// Whether a connection may carry more than one request.
    pub keep_alive: bool,
    /// What the log lines call the server.
    pub name: &'static str,
}

/// Binds `addr`, naming the configuration key in the error.
pub async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {key} {addr}"))
}

/// Serves `router` on `listener` until `cancel`, then waits for the
/// connections in hand to finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    cancel: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = cancel.cancelled() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = cancel.cancelled() => break,
        };
        // Reap the connections that ended, so the set stays small.
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, peer)) => {
                let router = router.clone();
                let cancel = cancel.clone();
                connections.spawn(async move {
                    connection(stream, peer, router, limits, cancel).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: pause instead of
                // spinning.
                tracing::warn!(error = %e, "{}: accepting a connection failed", limits.name);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    cancel: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        async move { Ok::<_, Infallible>(router.call(request).await.unwrap_or_else(|e| match e {})) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_header_size(limits.max_head_bytes)
        .keep_alive(limits.keep_alive);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "{}: connection ended", limits.name);
    }
}
