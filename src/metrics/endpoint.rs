//! `GET /metrics` on the program's HTTP server ([`crate::http`]): the
//! figures in Prometheus's text format, and nothing else.
//!
//! One request per connection (`Connection: close`), a request head of at
//! most [`MAX_REQUEST`] bytes read within [`READ_TIMEOUT`], at most
//! [`MAX_CONNECTIONS`] at once. Bound to a loopback address it also
//! refuses a `Host` that is not loopback, so that a web page in a browser
//! on the machine cannot read the figures through DNS rebinding.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{FigureReader, Metrics, render};
use crate::http::Limits;

/// The content type of Prometheus's text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The largest request head (request line and headers) read; a scrape's
/// is a few hundred bytes.
pub const MAX_REQUEST: usize = 8 * 1024;

/// The whole request head must arrive within this time.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once; further ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 8;

/// The server's limits.
pub const LIMITS: Limits = Limits {
    max_connections: MAX_CONNECTIONS,
    head_timeout: READ_TIMEOUT,
    max_head_bytes: MAX_REQUEST,
    keep_alive: false,
    name: "metrics",
};

/// Everything a scrape needs.
#[derive(Clone)]
struct Endpoint {
    metrics: Arc<Metrics>,
    log: FigureReader,
}

/// Binds the configured address.
pub async fn bind(cfg: &crate::config::Metrics) -> anyhow::Result<TcpListener> {
    crate::http::bind(cfg.listen, "metrics.listen").await
}

/// Serves `GET /metrics` on `listener` until `cancel`.
/// `any_host`: accept any `Host` (the endpoint listens beyond loopback).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    log: FigureReader,
    any_host: bool,
    cancel: CancellationToken,
) {
    let address = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    tracing::info!(listen = %address, "metrics endpoint listening");
    crate::http::serve(listener, router(metrics, log, any_host), LIMITS, cancel).await;
}

fn router(metrics: Arc<Metrics>, log: FigureReader, any_host: bool) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(scrape).fallback(|| async {
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    [(header::ALLOW, "GET, HEAD")],
                    "/metrics answers GET and HEAD\n",
                )
            }),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "the only resource here is /metrics\n",
            )
        })
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| host_check(req, next, any_host),
        ))
        .with_state(Endpoint { metrics, log })
}

async fn scrape(State(e): State<Endpoint>) -> Response {
    let log = e.log.figures().await;
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        render(&e.metrics, log.as_ref()),
    )
        .into_response()
}

/// Refuses, before anything is read from the log, a request without a
/// `Host` (HTTP/1.1, RFC 9112 §3.2) and, bound to loopback, one whose
/// `Host` is not a loopback name; every answer is `no-store`.
async fn host_check(req: Request, next: Next, any_host: bool) -> Response {
    let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
    let mut res = match hosts.as_slice() {
        [] if req.version() == Version::HTTP_11 => (
            StatusCode::BAD_REQUEST,
            "an HTTP/1.1 request names its Host\n",
        )
            .into_response(),
        [_, _, ..] => (StatusCode::BAD_REQUEST, "one Host, please\n").into_response(),
        [host] if !any_host && !host.to_str().is_ok_and(|h| is_loopback_host(h.trim())) => (
            StatusCode::FORBIDDEN,
            "bound to loopback, this endpoint answers only requests addressed to a loopback host\n",
        )
            .into_response(),
        _ => next.run(req).await,
    };
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Whether a `Host` value (`127.0.0.1:9187`, `[::1]:9187`, `localhost`)
/// names this machine's loopback.
fn is_loopback_host(host: &str) -> bool {
    let is_port = |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    let name = if let Some(v6) = host.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, "")) => addr,
            Some((addr, rest)) if rest.strip_prefix(':').is_some_and(is_port) => addr,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    crate::config::is_loopback(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_host_names() {
        for ok in [
            "127.0.0.1:9187",
            "localhost",
            "[::1]:9187",
            "127.0.0.2",
            "localhost:1",
            "[::1]",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "mail.ivpn.net:9187",
            "127.0.0.1.evil.example",
            "10.0.0.1",
            "[::1]x",
            "127.0.0.1:x",
            "127.0.0.1:123456",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
