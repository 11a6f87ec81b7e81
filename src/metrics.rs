//! The daemon's optional Prometheus endpoint (`[metrics]`): counters kept
//! as the daemon works, figures read from the case log when scraped, and
//! the small HTTP/1.1 server that serves both on `GET /metrics`.
//!
//! ```text
//! daemon.rs, outbox.rs ─▶ Metrics (atomics) ──┐
//!                                             ├─▶ render ─▶ GET /metrics
//! case log (read-only connection) ─▶ LogFigures ┘
//! ```
//!
//! Counters count since the daemon started, at the same points where the
//! log lines are written (one `message` line, one `reply`/`notice` line, one
//! IMAP failure). Gauges about the case log are read at scrape time through
//! a read-only connection of their own, so a scrape never waits for a
//! filing and can never write.
//!
//! The server is deliberately tiny: one request per connection
//! (`Connection: close`), a request head of at most [`MAX_REQUEST`] bytes
//! read within [`READ_TIMEOUT`], at most [`MAX_CONNECTIONS`] at once, and a
//! parser that turns anything it does not understand into a 400. Bound to
//! a loopback address it also refuses a `Host` that is not loopback, so
//! that a web page in a browser on the machine cannot read the figures
//! through DNS rebinding. The figures reveal case activity: how many legal
//! requests arrive, how they were judged, how many cases are open and due.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::clock::{self, Clock, day, stamp};
use crate::decide::Decision;
use crate::notice::DUE_WITHIN_DAYS;
use crate::store::{DeadlineCounts, DeadlineWindow, Store};

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

/// The longest a scrape waits for the case log's figures (Prometheus's
/// default scrape timeout is 10 s).
const LOG_READ_TIMEOUT: Duration = Duration::from_secs(8);

/// The decisions, in the order of [`Metrics::messages`].
const DECISIONS: [Decision; 5] = [
    Decision::Acknowledge,
    Decision::Reject,
    Decision::Quarantine,
    Decision::Defer,
    Decision::Internal,
];

/// What became of one attempt to send a queued row (reply, notice or
/// digest), as the `reply`/`notice` log line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// The server accepted it.
    Sent,
    /// Not accepted; it is tried again later.
    Retry,
    /// Refused for good, or given up on.
    Failed,
    /// It may or may not have arrived; a person decides.
    Unknown,
}

impl SendOutcome {
    const ALL: [SendOutcome; 4] = [
        SendOutcome::Sent,
        SendOutcome::Retry,
        SendOutcome::Failed,
        SendOutcome::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SendOutcome::Sent => "sent",
            SendOutcome::Retry => "retry",
            SendOutcome::Failed => "failed",
            SendOutcome::Unknown => "unknown",
        }
    }

    /// The outcome of an attempt that left its row in `status`.
    pub fn from_status(status: &str) -> SendOutcome {
        match status {
            "sent" => SendOutcome::Sent,
            "pending" => SendOutcome::Retry,
            "failed" => SendOutcome::Failed,
            _ => SendOutcome::Unknown,
        }
    }
}

/// The daemon's counters since it started; shared by the passes, the
/// sending task and the endpoint. Plain relaxed atomics: each figure is
/// independent and a scrape needs no consistent cut across them.
#[derive(Debug)]
pub struct Metrics {
    /// The origin of [`Metrics::last_pass`].
    started: Instant,
    /// Messages judged and filed (or deferred) by decision, in the order
    /// of [`DECISIONS`].
    messages: [AtomicU64; DECISIONS.len()],
    /// Send attempts by outcome, in the order of [`SendOutcome::ALL`].
    sends: [AtomicU64; 4],
    /// Failed IMAP connections or passes: transient, fatal.
    imap_errors: [AtomicU64; 2],
    /// Milliseconds from `started` to the end of the last complete pass,
    /// plus one; 0 before the first.
    last_pass: AtomicU64,
    /// Deferred messages in the watched mailbox at the end of the last
    /// complete pass (those deferred again and those waiting for their
    /// retry time).
    deferred_waiting: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            started: Instant::now(),
            messages: Default::default(),
            sends: Default::default(),
            imap_errors: Default::default(),
            last_pass: AtomicU64::new(0),
            deferred_waiting: AtomicU64::new(0),
        }
    }

    /// One message judged, by the decision its `message` log line names;
    /// counted when filed now or deferred, not when found filed before.
    pub fn message(&self, decision: &str) {
        if let Some(i) = DECISIONS.iter().position(|d| d.as_str() == decision) {
            self.messages[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One send attempt finished.
    pub fn send(&self, outcome: SendOutcome) {
        // The variants are declared in the order of `SendOutcome::ALL`.
        self.sends[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// One failed IMAP connection or pass.
    pub fn imap_error(&self, transient: bool) {
        self.imap_errors[usize::from(!transient)].fetch_add(1, Ordering::Relaxed);
    }

    /// A pass over the whole mailbox completed, leaving `deferred`
    /// deferred messages in it.
    pub fn pass_completed(&self, deferred: u32) {
        self.deferred_waiting
            .store(u64::from(deferred), Ordering::Relaxed);
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_pass.store(ms + 1, Ordering::Relaxed);
    }

    /// Seconds since the last complete pass, `None` before the first.
    fn since_last_pass(&self) -> Option<f64> {
        let at = self.last_pass.load(Ordering::Relaxed).checked_sub(1)?;
        let now = self.started.elapsed().as_secs_f64();
        Some((now - at as f64 / 1000.0).max(0.0))
    }
}

/// The case log's figures, read at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFigures {
    /// Cases not closed.
    pub open_cases: i64,
    /// Outgoing rows `pending` or `sending`.
    pub outbox_depth: i64,
    /// Deadlines of unanswered cases due within [`DUE_WITHIN_DAYS`] days,
    /// and past.
    pub deadlines: DeadlineCounts,
    /// Verdicts in the whole log, by decision.
    pub verdicts: Vec<(String, i64)>,
}

impl LogFigures {
    /// Reads the figures in one read transaction, so they agree with each
    /// other. `today` is the local day at `now`, as the daily digest
    /// counts deadlines.
    pub fn read(
        store: &mut Store,
        now: OffsetDateTime,
        today: time::Date,
    ) -> anyhow::Result<LogFigures> {
        let within = time::Duration::days(DUE_WITHIN_DAYS);
        let (today, last_day) = (day(today), day(today + within));
        let (now, until) = (stamp(now), stamp(now + within));
        let snapshot = store.snapshot()?;
        let ops = snapshot.ops();
        Ok(LogFigures {
            open_cases: ops.open_case_count()?,
            outbox_depth: ops.outbox_depth()?,
            deadlines: ops.deadline_counts(&DeadlineWindow {
                today: &today,
                last_day: &last_day,
                now: &now,
                until: &until,
            })?,
            verdicts: ops.verdict_counts()?,
        })
    }
}

/// The case log as the endpoint reads it: its own read-only connection.
#[derive(Clone)]
pub struct CaseLog {
    store: Arc<Mutex<Store>>,
    clock: Clock,
    /// Whether the last read failed, so a failure is logged once per
    /// change of state rather than at every scrape.
    failing: Arc<AtomicBool>,
}

impl CaseLog {
    /// Opens `path` (which must exist and be current) read-only.
    pub fn open(path: &std::path::Path, clock: Clock) -> anyhow::Result<CaseLog> {
        Ok(CaseLog {
            store: Arc::new(Mutex::new(Store::open_read_only(path)?)),
            clock,
            failing: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The figures now, or `None` (logged) when they cannot be read in
    /// time.
    async fn figures(&self) -> Option<LogFigures> {
        let (store, clock) = (self.store.clone(), self.clock);
        let read = tokio::task::spawn_blocking(move || {
            let now = clock.now();
            let today = clock::local(now)?.date;
            let mut store = store
                .lock()
                .map_err(|_| anyhow::anyhow!("the metrics connection's lock is poisoned"))?;
            LogFigures::read(&mut store, now, today)
        });
        let result = match tokio::time::timeout(LOG_READ_TIMEOUT, read).await {
            Ok(Ok(Ok(figures))) => Ok(figures),
            Ok(Ok(Err(e))) => Err(format!("{e:#}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} s", LOG_READ_TIMEOUT.as_secs())),
        };
        match result {
            Ok(figures) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("metrics: the case log can be read again");
                }
                Some(figures)
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "metrics: cannot read the case log; its figures are left out");
                }
                None
            }
        }
    }
}

// ---- The exposition ---------------------------------------------------------

/// Every metric family: name after the `legal_intake_` prefix, type, help.
const FAMILIES: &[(&str, &str, &str)] = &[
    ("up", "gauge", "1 while the daemon answers scrapes."),
    (
        "build_info",
        "gauge",
        "The running version, as a label; always 1.",
    ),
    (
        "messages_total",
        "counter",
        "Messages judged and filed since the daemon started, by decision (defer: left in the mailbox to be judged again).",
    ),
    (
        "replies_total",
        "counter",
        "Attempts to send a queued reply, notice or digest since the daemon started, by outcome (retry: not accepted, tried again later; unknown: a person decides).",
    ),
    (
        "imap_errors_total",
        "counter",
        "Failed IMAP connections or passes since the daemon started (fatal: an operator must act; a case log failure that ends a pass is transient).",
    ),
    (
        "seconds_since_last_pass",
        "gauge",
        "Seconds since the last complete pass over the mailbox; absent before the first.",
    ),
    (
        "deferred_messages",
        "gauge",
        "Deferred messages in the watched mailbox at the end of the last complete pass; absent before the first.",
    ),
    (
        "case_log_up",
        "gauge",
        "1 when this scrape read the case log's figures; 0 when they could not be read and are left out.",
    ),
    (
        "case_log_verdicts",
        "gauge",
        "Verdicts in the case log, by decision, whoever filed them.",
    ),
    (
        "outbox_queue_depth",
        "gauge",
        "Replies, notices and digests queued and not yet settled (pending or sending).",
    ),
    ("open_cases", "gauge", "Cases whose status is not closed."),
    (
        "deadlines_due_within_7_days",
        "gauge",
        "Deadlines of cases neither closed nor responded that fall from today to 7 days ahead.",
    ),
    (
        "deadlines_overdue",
        "gauge",
        "Deadlines of cases neither closed nor responded that have passed.",
    ),
];

/// Writes samples, each family's HELP and TYPE lines before its first.
#[derive(Default)]
struct Exposition {
    out: String,
    family: &'static str,
}

impl Exposition {
    fn sample(&mut self, name: &'static str, labels: &str, value: impl std::fmt::Display) {
        use std::fmt::Write;
        if self.family != name {
            self.family = name;
            if let Some((_, kind, help)) = FAMILIES.iter().find(|f| f.0 == name) {
                let _ = write!(
                    self.out,
                    "# HELP legal_intake_{name} {help}\n# TYPE legal_intake_{name} {kind}\n"
                );
            }
        }
        let _ = writeln!(self.out, "legal_intake_{name}{labels} {value}");
    }

    /// One sample per label value.
    fn by<'a, V: std::fmt::Display>(
        &mut self,
        name: &'static str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, V)>,
    ) {
        for (v, n) in values {
            self.sample(name, &format!("{{{label}=\"{v}\"}}"), n);
        }
    }
}

/// The text exposition of the counters and, when they could be read, the
/// case log's figures.
pub fn render(m: &Metrics, log: Option<&LogFigures>) -> String {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut e = Exposition::default();
    e.sample("up", "", 1);
    e.by("build_info", "version", [(env!("CARGO_PKG_VERSION"), 1)]);
    let decisions = DECISIONS.map(Decision::as_str);
    e.by(
        "messages_total",
        "decision",
        decisions.iter().copied().zip(m.messages.iter().map(load)),
    );
    e.by(
        "replies_total",
        "outcome",
        SendOutcome::ALL
            .map(SendOutcome::as_str)
            .into_iter()
            .zip(m.sends.iter().map(load)),
    );
    e.by(
        "imap_errors_total",
        "kind",
        ["transient", "fatal"]
            .into_iter()
            .zip(m.imap_errors.iter().map(load)),
    );
    if let Some(s) = m.since_last_pass() {
        e.sample("seconds_since_last_pass", "", format!("{s:.3}"));
        e.sample("deferred_messages", "", load(&m.deferred_waiting));
    }
    e.sample("case_log_up", "", u8::from(log.is_some()));
    if let Some(log) = log {
        // Every decision a verdict can hold, 0 when the log has none.
        let verdicts = decisions[..3].iter().map(|d| {
            let n = log.verdicts.iter().find(|(v, _)| v == d).map_or(0, |v| v.1);
            (*d, n)
        });
        e.by("case_log_verdicts", "decision", verdicts);
        e.sample("outbox_queue_depth", "", log.outbox_depth);
        e.sample("open_cases", "", log.open_cases);
        e.sample("deadlines_due_within_7_days", "", log.deadlines.due_soon);
        e.sample("deadlines_overdue", "", log.deadlines.overdue);
    }
    e.out
}

// ---- The HTTP side ----------------------------------------------------------

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
    match judge(head, any_host) {
        Ok(a) => a,
        Err(status) => Answer::Error(status),
    }
}

fn judge(head: &[u8], any_host: bool) -> Result<Answer, Status> {
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
    log: CaseLog,
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
    log: CaseLog,
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
    fn well_formed(text: &str) {
        let mut current: Option<String> = None;
        let mut typed = false;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(name.starts_with("legal_intake_"), "{line}");
                current = Some(name.to_string());
                typed = false;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(Some(name), current.as_deref(), "{line}");
                assert!(["counter", "gauge"].contains(&kind), "{line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
                typed = true;
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(Some(name), current.as_deref(), "{line}");
                assert!(typed, "{line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
    }

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .map(str::to_string)
        })
    }

    #[test]
    fn counters_and_figures_render_as_the_text_format() {
        let m = Metrics::new();
        let before = render(&m, None);
        well_formed(&before);
        assert_eq!(value(&before, "legal_intake_up").as_deref(), Some("1"));
        assert_eq!(
            value(
                &before,
                "legal_intake_messages_total{decision=\"acknowledge\"}"
            )
            .as_deref(),
            Some("0")
        );
        assert_eq!(
            value(&before, "legal_intake_case_log_up").as_deref(),
            Some("0")
        );
        assert_eq!(value(&before, "legal_intake_seconds_since_last_pass"), None);
        assert_eq!(value(&before, "legal_intake_deferred_messages"), None);
        assert_eq!(value(&before, "legal_intake_open_cases"), None);

        m.message("acknowledge");
        m.message("quarantine");
        m.message("quarantine");
        m.message("defer");
        m.message("nonsense");
        m.send(SendOutcome::from_status("pending"));
        m.send(SendOutcome::from_status("sent"));
        m.send(SendOutcome::from_status("unknown"));
        m.imap_error(true);
        m.imap_error(false);
        m.imap_error(false);
        m.pass_completed(3);
        let log = LogFigures {
            open_cases: 5,
            outbox_depth: 2,
            deadlines: DeadlineCounts {
                due_soon: 1,
                overdue: 4,
            },
            verdicts: vec![("acknowledge".into(), 7), ("quarantine".into(), 2)],
        };
        let text = render(&m, Some(&log));
        well_formed(&text);
        let build = format!(
            "legal_intake_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        for (series, expected) in [
            (build.as_str(), "1"),
            ("legal_intake_messages_total{decision=\"acknowledge\"}", "1"),
            ("legal_intake_messages_total{decision=\"reject\"}", "0"),
            ("legal_intake_messages_total{decision=\"quarantine\"}", "2"),
            ("legal_intake_messages_total{decision=\"defer\"}", "1"),
            ("legal_intake_replies_total{outcome=\"sent\"}", "1"),
            ("legal_intake_replies_total{outcome=\"retry\"}", "1"),
            ("legal_intake_replies_total{outcome=\"failed\"}", "0"),
            ("legal_intake_replies_total{outcome=\"unknown\"}", "1"),
            ("legal_intake_imap_errors_total{kind=\"transient\"}", "1"),
            ("legal_intake_imap_errors_total{kind=\"fatal\"}", "2"),
            ("legal_intake_deferred_messages", "3"),
            ("legal_intake_case_log_up", "1"),
            (
                "legal_intake_case_log_verdicts{decision=\"acknowledge\"}",
                "7",
            ),
            ("legal_intake_case_log_verdicts{decision=\"reject\"}", "0"),
            (
                "legal_intake_case_log_verdicts{decision=\"quarantine\"}",
                "2",
            ),
            ("legal_intake_outbox_queue_depth", "2"),
            ("legal_intake_open_cases", "5"),
            ("legal_intake_deadlines_due_within_7_days", "1"),
            ("legal_intake_deadlines_overdue", "4"),
        ] {
            assert_eq!(
                value(&text, series).as_deref(),
                Some(expected),
                "{series}\n{text}"
            );
        }
        let since: f64 = value(&text, "legal_intake_seconds_since_last_pass")
            .unwrap()
            .parse()
            .unwrap();
        assert!((0.0..5.0).contains(&since), "{since}");
        assert!(text.ends_with('\n'));
    }

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
