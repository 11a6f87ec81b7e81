//! Edge: `serve`, the case board — the legal team's web workspace over
//! the case log.
//!
//! One axum router over plain HTTP/1.1 on `web.listen` (loopback unless
//! asked otherwise; TLS is the host's reverse proxy's). Every page but the
//! sign-in form needs a session ([`session`]); every form carries the
//! session's CSRF token; every change goes through the same functions as
//! the CLI (`casework`), so it is one transaction with an audit event,
//! its actor the account (`web:NAME`).
//!
//! What a sender wrote is shown as text only: askama escapes every value
//! in the HTML templates, message bodies are mail-parser's text (HTML
//! parts turned into text, never rendered), attachments are downloaded as
//! `application/octet-stream` attachments, and the Content-Security-Policy
//! allows no script, no frame and no resource from anywhere but the board's
//! own stylesheet.
//!
//! - [`session`]: sign-in, sessions, CSRF tokens, the sign-in rate limit.
//! - [`pages`]: the views (board, quarantine, deadlines, search, case,
//!   figures).
//! - [`actions`]: the editors' changes (status, fields, note, release from
//!   quarantine).

mod actions;
mod pages;
mod session;

use std::sync::{Arc, Mutex};

use anyhow::Context;
use askama::Template;
use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};

use crate::clock::Clock;
use crate::config::Config;
use crate::store::{SharedStore, Store};

/// What every request handler shares.
pub struct Board {
    store: SharedStore,
    clock: Clock,
    session_hours: u32,
    limiter: Mutex<session::Limiter>,
    /// The domain of the Message-IDs of replies queued from the board.
    reply_domain: String,
    /// `reminders.hard_copy_days`.
    hard_copy_days: u32,
}

/// `serve`: the board until SIGTERM or SIGINT.
pub async fn serve(config: Config, web: crate::config::Web, clock: Clock) -> anyhow::Result<()> {
    let store = Store::open(&config.store.database).context("cannot open the case log")?;
    let board = Arc::new(Board {
        store: SharedStore::new(store),
        clock,
        session_hours: web.session_hours,
        limiter: Mutex::new(session::Limiter::default()),
        reply_domain: crate::msgid::domain(&config),
        hard_copy_days: config.reminders.hard_copy_days,
    });
    let listener = crate::http::bind(web.listen, "web.listen").await?;
    let addr = listener.local_addr()?;
    tracing::info!(listen = %addr, "case board listening on http://{addr}/");
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    let signals = tokio::spawn(async move {
        stopped().await;
        stop.cancel();
    });
    crate::http::serve(listener, router(board), LIMITS, cancel).await;
    signals.abort();
    tracing::info!("case board stopped");
    Ok(())
}

/// The board's connections: a browser keeps a few open; a request head
/// (cookies included) fits in 16 KiB and arrives within 10 seconds.
pub const LIMITS: crate::http::Limits = crate::http::Limits {
    max_connections: 64,
    head_timeout: std::time::Duration::from_secs(10),
    max_head_bytes: 16 * 1024,
    keep_alive: true,
    name: "case board",
};

async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing the requests in hand"),
        _ = int.recv() => tracing::info!("SIGINT: finishing the requests in hand"),
    }
}

/// Every route of the board.
pub fn router(board: Arc<Board>) -> Router {
    Router::new()
        .route("/", get(pages::board))
        .route("/login", get(session::login_form).post(session::login))
        .route("/logout", post(session::logout))
        .route("/quarantine", get(pages::quarantine))
        .route("/deadlines", get(pages::deadlines))
        .route("/search", get(pages::search))
        .route("/stats", get(pages::stats))
        .route("/cases/{reference}", get(pages::case))
        .route("/cases/{reference}/status", post(actions::status))
        .route("/cases/{reference}/fields", post(actions::fields))
        .route("/cases/{reference}/note", post(actions::note))
        .route("/cases/{reference}/release", post(actions::release))
        .route("/cases/{reference}/bundle", get(pages::bundle))
        .route("/cases/{reference}/messages/{id}/raw", get(pages::raw))
        .route(
            "/cases/{reference}/messages/{id}/attachments/{index}",
            get(pages::attachment),
        )
        .route("/board.css", get(stylesheet))
        .fallback(|| async { Failure::NotFound })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(board)
}

/// The one stylesheet, compiled in: no external asset, no script.
async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("board.css"),
    )
        .into_response()
}

/// Sent with every response: no script, frame, plugin or foreign
/// resource; no sniffing a download into something runnable; no page
/// kept in a shared cache or framed by another site.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ] {
        // A download sets its own, stricter policy.
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    }
    res
}

/// Why a request was not answered with its page.
#[derive(Debug)]
pub enum Failure {
    NotFound,
    /// A viewer asking for a change, or a form without its CSRF token.
    Forbidden(String),
    /// A form whose values make no sense.
    BadRequest(String),
    /// A change the case's state does not allow.
    Conflict(String),
    /// Too many failed sign-ins.
    TooMany(String),
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        use crate::casework::{Refused, UsageError};
        if let Some(r) = e.downcast_ref::<Refused>() {
            return match r {
                Refused::NoSuchCase(_) => Failure::NotFound,
                _ => Failure::Conflict(r.to_string()),
            };
        }
        if let Some(u) = e.downcast_ref::<UsageError>() {
            return Failure::BadRequest(u.0.clone());
        }
        Failure::Internal(e)
    }
}

impl From<askama::Error> for Failure {
    fn from(e: askama::Error) -> Failure {
        Failure::Internal(anyhow::anyhow!("a template failed: {e}"))
    }
}

#[derive(Template)]
#[template(path = "failure.html")]
struct FailurePage<'a> {
    title: &'a str,
    detail: &'a str,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (code, title, detail) = match &self {
            Failure::NotFound => (StatusCode::NOT_FOUND, "Not found", String::new()),
            Failure::Forbidden(d) => (StatusCode::FORBIDDEN, "Refused", d.clone()),
            Failure::BadRequest(d) => (StatusCode::BAD_REQUEST, "Not understood", d.clone()),
            Failure::Conflict(d) => (StatusCode::CONFLICT, "Not allowed", d.clone()),
            Failure::TooMany(d) => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many attempts",
                d.clone(),
            ),
            Failure::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "case board: a request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something failed",
                    "The error is in the service's log.".to_string(),
                )
            }
        };
        let page = FailurePage {
            title,
            detail: &detail,
        };
        match page.render() {
            Ok(html) => (code, Html(html)).into_response(),
            Err(_) => (code, title.to_string()).into_response(),
        }
    }
}

/// The case reference of a path; a malformed one is simply not found.
fn reference(s: &str) -> Result<crate::case::Reference, Failure> {
    s.parse().map_err(|_| Failure::NotFound)
}

/// A page rendered, or the failure to.
fn page(t: &impl Template) -> Result<Response, Failure> {
    Ok(Html(t.render()?).into_response())
}
