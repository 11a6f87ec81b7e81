//! The tiny HTTP/1.1 server of the Prometheus endpoint: `GET /metrics`
//! and nothing else.
//!
//! One request per connection (`Connection: close`), a request head of at
//! most [`MAX_REQUEST`] bytes read within [`READ_TIMEOUT`], at most
//! [`MAX_CONNECTIONS`] at once, and a parser that turns anything it does
//! not understand into a 400. Bound to a loopback address it also refuses
//! a `Host` that is not loopback, so that a web page in a browser on the
//! machine cannot read the figures through DNS rebinding.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{FigureReader, Metrics, render};

/// The content type of Prometheus's text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The largest request head (request line and headers) read; a scrape's
/// is a few hundred bytes.
pub const MAX_REQUEST: usize = 8 * 1024;

/// The whole request head must arrive within this time.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Writing the response may take at most this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once; further ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 8;

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `GET /metrics` (`head_only` for `HEAD`).
    Metrics { head_only: bool },
    /// An error status, with nothing read from the log.
    Error(Status),
}

/// The error statuses the server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not an HTTP/1.x request the parser understands.
    BadRequest,
    /// A `Host` that is not loopback while bound to loopback.
    Forbidden,
    /// Any path but `/metrics`.
    NotFound,
    /// `/metrics` with a method other than GET or HEAD.
    MethodNotAllowed,
    /// The head did not arrive within [`READ_TIMEOUT`].
    RequestTimeout,
    /// The head is longer than [`MAX_REQUEST`].
    TooLarge,
}

impl Status {
    fn line(self) -> (u16, &'static str) {
        match self {
            Status::BadRequest => (400, "Bad Request"),
            Status::Forbidden => (403, "Forbidden"),
            Status::NotFound => (404, "Not Found"),
            Status::MethodNotAllowed => (405, "Method Not Allowed"),
            Status::RequestTimeout => (408, "Request Timeout"),
            Status::TooLarge => (431, "Request Header Fields Too Large"),
        }
    }

    fn body(self) -> &'static str {
        match self {
            Status::BadRequest => "not an HTTP/1.x request\n",
            Status::Forbidden => {
                "bound to loopback, this endpoint answers only requests addressed to a loopback host\n"
            }
            Status::NotFound => "the only resource here is /metrics\n",
            Status::MethodNotAllowed => "/metrics answers GET and HEAD\n",
            Status::RequestTimeout => "the request took too long to arrive\n",
            Status::TooLarge => "the request is too large\n",
        }
    }
}

/// Judges a complete request head (up to and without the blank line).
/// `any_host`: accept any `Host` (the endpoint listens beyond loopback).
/// Pure and total: every input gets an answer, none panics.
pub fn answer(head: &[u8], any_host: bool) -> Answer {
    match parse_head(head, any_host) {
        Ok(a) => a,
        Err(status) => Answer::Error(status),
    }
}

fn parse_head(head: &[u8], any_host: bool) -> Result<Answer, Status> {
    let text = std::str::from_utf8(head).map_err(|_| Status::BadRequest)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or(Status::BadRequest)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Status::BadRequest);
    };
    if method.is_empty() || !method.bytes().all(is_token) {
        return Err(Status::BadRequest);
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(Status::BadRequest),
    };
    let mut host = None;
    for line in lines {
        if line.is_empty() {
            // Only trailing blank lines can follow; anything else is a
            // body we do not read.
            continue;
        }
        let (name, value) = line.split_once(':').ok_or(Status::BadRequest)?;
        if name.is_empty() || !name.bytes().all(is_token) {
            return Err(Status::BadRequest);
        }
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(Status::BadRequest);
            }
            host = Some(value.trim());
        }
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400.
    if http11 && host.is_none() {
        return Err(Status::BadRequest);
    }
    if !any_host && !host.is_none_or(is_loopback_host) {
        return Err(Status::Forbidden);
    }
    let path = origin_path(target).ok_or(Status::BadRequest)?;
    if path != "/metrics" {
        return Err(Status::NotFound);
    }
    match method {
        "GET" => Ok(Answer::Metrics { head_only: false }),
        "HEAD" => Ok(Answer::Metrics { head_only: true }),
        _ => Err(Status::MethodNotAllowed),
    }
}

/// RFC 9110 token characters (method and header names).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The path of an origin-form (`/metrics?x`) or absolute-form
/// (`http://host/metrics`) target.
fn origin_path(target: &str) -> Option<&str> {
    let rest = if target.starts_with('/') {
        target
    } else {
        let lower = target.get(..7)?.to_ascii_lowercase();
        if lower != "http://" {
            return None;
        }
        let after = &target[7..];
        after.find('/').map_or("/", |i| &after[i..])
    };
    Some(rest.split(['?', '#']).next().unwrap_or(rest))
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

/// The bytes of a response; `body` is left out for HEAD but counted.
fn response(
    code: u16,
    reason: &str,
    content_type: &str,
    body: &str,
    with_body: bool,
    allow: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        body.len()
    );
    if allow {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if with_body {
        out.push_str(body);
    }
    out.into_bytes()
}

/// How reading a request head ended.
enum Head {
    /// The head, without its blank line.
    Complete(Vec<u8>),
    /// More than [`MAX_REQUEST`] bytes without the end of the head.
    TooLarge,
    /// The client closed the connection first.
    Closed,
}

/// Reads up to the blank line that ends the head (CRLF CRLF, or bare LF
/// LF from a lax client).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(if buf.is_empty() {
                Head::Closed
            } else {
                Head::Complete(buf)
            });
        }
        // The end may straddle two reads: search from a little before.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        let window = &buf[from..];
        let crlf = window.windows(4).position(|w| w == b"\r\n\r\n");
        let lf = window.windows(2).position(|w| w == b"\n\n");
        let end = match (crlf, lf) {
            (Some(a), Some(b)) => Some(from + a.min(b)),
            (a, b) => a.or(b).map(|i| from + i),
        };
        if let Some(end) = end {
            if end > MAX_REQUEST {
                return Ok(Head::TooLarge);
            }
            buf.truncate(end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() > MAX_REQUEST {
            return Ok(Head::TooLarge);
        }
    }
}

/// Everything the server needs.
#[derive(Clone)]
struct Server {
    metrics: Arc<Metrics>,
    log: FigureReader,
    any_host: bool,
}

/// Binds the configured address.
pub async fn bind(cfg: &crate::config::Metrics) -> anyhow::Result<TcpListener> {
    TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on metrics.listen {}", cfg.listen))
}

/// Serves `GET /metrics` on `listener` until `cancel`; connections in
/// hand finish within their time limits.
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
    let server = Server {
        metrics,
        log,
        any_host,
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
        match accepted {
            Ok((stream, peer)) => {
                let server = server.clone();
                tokio::spawn(async move {
                    server.connection(stream, peer).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: pause instead of
                // spinning.
                tracing::warn!(error = %e, "metrics: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

impl Server {
    async fn connection(&self, mut stream: TcpStream, peer: SocketAddr) {
        let answer = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
            Err(_) => Answer::Error(Status::RequestTimeout),
            Ok(Err(_)) | Ok(Ok(Head::Closed)) => return,
            Ok(Ok(Head::TooLarge)) => Answer::Error(Status::TooLarge),
            Ok(Ok(Head::Complete(head))) => answer(&head, self.any_host),
        };
        let bytes = match answer {
            Answer::Metrics { head_only } => {
                let log = self.log.figures().await;
                let body = render(&self.metrics, log.as_ref());
                response(200, "OK", CONTENT_TYPE, &body, !head_only, false)
            }
            Answer::Error(status) => {
                let (code, reason) = status.line();
                response(
                    code,
                    reason,
                    "text/plain; charset=utf-8",
                    status.body(),
                    true,
                    status == Status::MethodNotAllowed,
                )
            }
        };
        let code = match answer {
            Answer::Metrics { .. } => 200,
            Answer::Error(s) => s.line().0,
        };
        tracing::debug!(peer = %peer, status = code, "metrics request");
        if !matches!(
            tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&bytes)).await,
            Ok(Ok(()))
        ) {
            return;
        }
        // Close gracefully: end our side, then read (and drop) whatever the
        // client still sends for a moment, so that unread request bytes do
        // not turn the close into a reset that loses the response.
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let drain = async {
            let mut total = 0usize;
            while let Ok(n) = stream.read(&mut sink).await {
                total += n;
                if n == 0 || total > 64 * 1024 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(expected: Answer, any_host: bool, heads: &[&str]) {
        for head in heads {
            assert_eq!(answer(head.as_bytes(), any_host), expected, "{head:?}");
        }
    }

    #[test]
    fn requests_and_their_answers() {
        use Status::*;
        let ok = Answer::Metrics { head_only: false };
        check(
            ok,
            false,
            &[
                "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9187",
                "GET /metrics HTTP/1.1\r\nhost:localhost\r\nAccept: */*",
                "GET /metrics HTTP/1.1\r\nHost: [::1]:9187",
                "GET /metrics HTTP/1.1\r\nHost: 127.0.0.2",
                "GET /metrics?name[]=up HTTP/1.1\r\nHost: localhost:1",
                "GET http://127.0.0.1:9187/metrics HTTP/1.1\r\nHost: 127.0.0.1:9187",
                "GET /metrics HTTP/1.0",
                "GET /metrics HTTP/1.1\nHost: 127.0.0.1",
            ],
        );
        check(
            Answer::Metrics { head_only: true },
            false,
            &["HEAD /metrics HTTP/1.1\r\nHost: 127.0.0.1"],
        );
        // With allow_remote, any host name.
        check(
            ok,
            true,
            &["GET /metrics HTTP/1.1\r\nHost: mail.ivpn.net:9187"],
        );
        // Bound to loopback, a page on a name rebound to it is refused.
        check(
            Answer::Error(Forbidden),
            false,
            &[
                "GET /metrics HTTP/1.1\r\nHost: mail.ivpn.net:9187",
                "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1.evil.example",
                "GET /metrics HTTP/1.1\r\nHost: 10.0.0.1",
                "GET /metrics HTTP/1.1\r\nHost: [::1]x",
                "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:x",
                "GET /other HTTP/1.1\r\nHost: evil.example",
            ],
        );
        check(
            Answer::Error(NotFound),
            false,
            &[
                "GET / HTTP/1.1\r\nHost: 127.0.0.1",
                "GET /metrics/ HTTP/1.1\r\nHost: 127.0.0.1",
                "GET /Metrics HTTP/1.1\r\nHost: 127.0.0.1",
                "POST /other HTTP/1.1\r\nHost: 127.0.0.1",
            ],
        );
        check(
            Answer::Error(MethodNotAllowed),
            false,
            &[
                "POST /metrics HTTP/1.1\r\nHost: 127.0.0.1",
                "DELETE /metrics HTTP/1.1\r\nHost: 127.0.0.1",
            ],
        );
        // Not HTTP/1.x as this server reads it.
        check(
            Answer::Error(BadRequest),
            false,
            &[
                "",
                "GET /metrics",
                "GET /metrics HTTP/1.1",
                "GET  /metrics HTTP/1.1\r\nHost: 127.0.0.1",
                "GET /metrics HTTP/2.0\r\nHost: 127.0.0.1",
                "PRI * HTTP/2.0",
                "GET metrics HTTP/1.1\r\nHost: 127.0.0.1",
                "G(T /metrics HTTP/1.1\r\nHost: 127.0.0.1",
                "GET /metrics HTTP/1.1\r\nHost 127.0.0.1",
                "GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b",
                "GET /metrics HTTP/1.1\r\n: x\r\nHost: 127.0.0.1",
                "\u{16}\u{3}\u{1}\u{2}\u{0}\u{1}",
            ],
        );
        assert_eq!(
            answer(b"GET /metrics HTTP/1.1\r\nHost: \xff", false),
            Answer::Error(BadRequest)
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // xorshift: a fixed sequence, so that a failure reproduces.
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let alphabet = b"GETHAD /metrics:\r\n\n[]1.0HTTP/\xff\x00?";
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    let r = seed.rotate_left(i as u32 * 5);
                    if r.is_multiple_of(3) {
                        r as u8
                    } else {
                        alphabet[(r as usize / 3) % alphabet.len()]
                    }
                })
                .collect();
            let _ = answer(&bytes, seed.is_multiple_of(2));
        }
    }

    /// Every sample belongs to a family announced just before it with
    /// HELP and TYPE; names and labels are the documented ones.
    #[test]
    fn responses_carry_length_and_close() {
        let r = String::from_utf8(response(
            405,
            "Method Not Allowed",
            "text/plain",
            "no\n",
            true,
            true,
        ))
        .unwrap();
        assert_eq!(
            r,
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
             Cache-Control: no-store\r\nConnection: close\r\nAllow: GET, HEAD\r\n\r\nno\n"
        );
        let head =
            String::from_utf8(response(200, "OK", CONTENT_TYPE, "abc", false, false)).unwrap();
        assert!(
            head.ends_with(
                "Content-Length: 3\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
            ),
            "{head}"
        );
    }
}
