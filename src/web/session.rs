//! Signing in and out, the session behind every page, CSRF tokens and the
//! sign-in rate limit.
//!
//! - A session is a random 32-byte token in a cookie (`HttpOnly; Secure;
//!   SameSite=Strict; Path=/`), stored in the case log only as its SHA-256
//!   beside its account, its CSRF token and its end (`web.session_hours`
//!   after signing in). Disabling an account or changing its password ends
//!   its sessions (`users`).
//! - Every form carries the session's CSRF token, compared in constant
//!   time; the sign-in form, before any session, carries a token that must
//!   equal a short-lived cookie's (double submit), so no other site can
//!   sign a browser in to an account of its choosing.
//! - Failed sign-ins are counted per account name and per peer address in
//!   a sliding window ([`Limiter`]); past the limit the form answers 429
//!   until the oldest failure leaves the window. A wrong name and a wrong
//!   password take the same time and say the same thing.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use askama::Template;
use axum::Form;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{AppendHeaders, Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use super::{Board, Failure};
use crate::accounts::{self, Role, Session};
use crate::audit::{self, kind, sha256_hex};
use crate::clock;

pub const SESSION_COOKIE: &str = "legal_intake_session";
const LOGIN_COOKIE: &str = "legal_intake_login";

/// The sliding window of failed sign-ins.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Failed sign-ins for one account name within [`WINDOW`].
pub const ACCOUNT_LIMIT: usize = 5;
/// Failed sign-ins from one peer address within [`WINDOW`] (behind a
/// reverse proxy every peer is the proxy, so this is the wider bound).
pub const PEER_LIMIT: usize = 30;
/// At most this many names and addresses are tracked; past it the
/// quietest are forgotten first.
const MAX_KEYS: usize = 10_000;

/// Failed sign-ins by key (`account:NAME`, `peer:ADDRESS`).
#[derive(Default)]
pub struct Limiter {
    failures: HashMap<String, VecDeque<Instant>>,
}

impl Limiter {
    /// How long until `key` may try again, when it is over `limit`.
    fn wait(&mut self, key: &str, limit: usize, now: Instant) -> Option<Duration> {
        let q = self.failures.get_mut(key)?;
        while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            q.pop_front();
        }
        if q.len() < limit {
            return None;
        }
        q.front()
            .map(|t| WINDOW.saturating_sub(now.duration_since(*t)))
    }

    fn fail(&mut self, key: String, now: Instant) {
        if self.failures.len() >= MAX_KEYS && !self.failures.contains_key(&key) {
            self.failures
                .retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
            if self.failures.len() >= MAX_KEYS {
                let quietest = self
                    .failures
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied())
                    .map(|(k, _)| k.clone());
                if let Some(k) = quietest {
                    self.failures.remove(&k);
                }
            }
        }
        self.failures.entry(key).or_default().push_back(now);
    }

    fn forget(&mut self, key: &str) {
        self.failures.remove(key);
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn set_cookie(name: &str, value: &str, max_age: u64) -> String {
    format!("{name}={value}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age}")
}

/// A request from a signed-in account. Without a live session the
/// request is sent to the sign-in form.
pub struct Signed(pub Session);

impl FromRequestParts<Arc<Board>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, board: &Arc<Board>) -> Result<Self, Response> {
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(Redirect::to("/login").into_response());
        };
        let hash = sha256_hex(token.as_bytes());
        let now = clock::stamp(board.clock.now());
        match board
            .store
            .run(move |s| s.read().session(&hash, &now))
            .await
        {
            Ok(Some(session)) => Ok(Signed(session)),
            Ok(None) => Err(Redirect::to("/login").into_response()),
            Err(e) => Err(Failure::from(e).into_response()),
        }
    }
}

impl Signed {
    /// The form's CSRF token is this session's.
    pub fn check_csrf(&self, token: &str) -> Result<(), Failure> {
        if accounts::same_token(&self.0.csrf, token) {
            Ok(())
        } else {
            Err(Failure::Forbidden(
                "The form is not from this session (its CSRF token does not match). Reload the page and try again."
                    .into(),
            ))
        }
    }

    /// The account may change cases.
    pub fn check_editor(&self) -> Result<(), Failure> {
        if self.0.account.role == Role::Editor {
            Ok(())
        } else {
            Err(Failure::Forbidden(format!(
                "{} is a viewer; changes need an editor account.",
                self.0.account.name
            )))
        }
    }

    pub fn actor(&self) -> String {
        self.0.account.actor()
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    csrf: &'a str,
    name: &'a str,
    problem: &'a str,
}

/// `GET /login`: the form, with a fresh double-submit token.
pub async fn login_form() -> Result<Response, Failure> {
    login_page(StatusCode::OK, "", "")
}

fn login_page(code: StatusCode, name: &str, problem: &str) -> Result<Response, Failure> {
    let token = accounts::token()?;
    let html = LoginPage {
        csrf: &token,
        name,
        problem,
    }
    .render()?;
    Ok((
        code,
        [(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, &token, 3600))],
        Html(html),
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /login`.
pub async fn login(
    State(board): State<Arc<Board>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, Failure> {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if expected.is_empty() || !accounts::same_token(expected, &form.csrf) {
        return Err(Failure::Forbidden(
            "The sign-in form has expired or is not from this site. Open it again.".into(),
        ));
    }
    let name = crate::text::clean(form.name.trim(), 64);
    let account_key = format!("account:{name}");
    let peer_key = format!("peer:{}", peer.ip());
    let now = Instant::now();
    let wait = {
        let mut limiter = board.limiter.lock().expect("the limiter is never poisoned");
        limiter
            .wait(&account_key, ACCOUNT_LIMIT, now)
            .or_else(|| limiter.wait(&peer_key, PEER_LIMIT, now))
    };
    if let Some(wait) = wait {
        tracing::warn!(account = %name, peer = %peer.ip(), "sign-in refused: too many failures");
        return Err(Failure::TooMany(format!(
            "Too many failed sign-ins. Try again in {} minute(s).",
            wait.as_secs().div_ceil(60).max(1)
        )));
    }
    let lookup = name.clone();
    let found = board.store.run(move |s| s.read().account(&lookup)).await?;
    let password = form.password;
    let (account, ok) = tokio::task::spawn_blocking(move || {
        let (account, phc) = match found {
            Some((a, phc)) if !a.disabled => (Some(a), Some(phc)),
            _ => (None, None),
        };
        let ok = accounts::verify_password(phc.as_deref(), &password);
        (account, ok)
    })
    .await
    .map_err(|e| Failure::Internal(e.into()))?;
    let Some(account) = account.filter(|_| ok) else {
        {
            let mut limiter = board.limiter.lock().expect("the limiter is never poisoned");
            limiter.fail(account_key, now);
            limiter.fail(peer_key, now);
        }
        tracing::warn!(account = %name, peer = %peer.ip(), "sign-in refused: wrong name or password");
        return login_page(
            StatusCode::UNAUTHORIZED,
            &name,
            "The name or the password is wrong.",
        );
    };
    board
        .limiter
        .lock()
        .expect("the limiter is never poisoned")
        .forget(&account_key);

    let token = accounts::token()?;
    let started = board.clock.now();
    let hours = board.session_hours;
    let session = Session {
        csrf: accounts::token()?,
        created_at: clock::stamp(started),
        expires_at: clock::stamp(started + time::Duration::hours(i64::from(hours))),
        account,
    };
    let hash = sha256_hex(token.as_bytes());
    let actor = session.account.actor();
    let peer_ip = peer.ip().to_string();
    board
        .store
        .run(move |s| {
            let tx = s.begin()?;
            let ops = tx.ops();
            ops.delete_expired_sessions(&session.created_at)?;
            ops.insert_session(&session, &hash)?;
            audit::append(
                &ops,
                &session.created_at,
                &actor,
                None,
                kind::SIGNED_IN,
                &json!({ "account": session.account.name, "peer": peer_ip, "until": session.expires_at }),
            )?;
            tx.commit()
        })
        .await?;
    tracing::info!(account = %name, peer = %peer.ip(), "signed in to the case board");
    Ok((
        // Two cookies: appended, as one header each.
        AppendHeaders([
            (
                header::SET_COOKIE,
                set_cookie(SESSION_COOKIE, &token, u64::from(hours) * 3600),
            ),
            (header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0)),
        ]),
        Redirect::to("/"),
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// `POST /logout`.
pub async fn logout(
    State(board): State<Arc<Board>>,
    signed: Signed,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, Failure> {
    signed.check_csrf(&form.csrf)?;
    let hash = sha256_hex(cookie(&headers, SESSION_COOKIE).unwrap_or("").as_bytes());
    let at = clock::stamp(board.clock.now());
    let actor = signed.actor();
    let name = signed.0.account.name.clone();
    board
        .store
        .run(move |s| {
            let tx = s.begin()?;
            let ops = tx.ops();
            if ops.delete_session(&hash)? {
                audit::append(
                    &ops,
                    &at,
                    &actor,
                    None,
                    kind::SIGNED_OUT,
                    &json!({ "account": name }),
                )?;
            }
            tx.commit()
        })
        .await?;
    Ok((
        [(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0))],
        Redirect::to("/login"),
    )
        .into_response())
}

/// A page's frame: who is signed in, and the sign-out form's token.
pub struct Frame {
    pub account: String,
    pub role: &'static str,
    pub editor: bool,
    pub csrf: String,
}

impl From<&Signed> for Frame {
    fn from(s: &Signed) -> Frame {
        Frame {
            account: s.0.account.name.clone(),
            role: s.0.account.role.as_str(),
            editor: s.0.account.role == Role::Editor,
            csrf: s.0.csrf.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_for_the_window_then_lifts() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..ACCOUNT_LIMIT {
            assert_eq!(l.wait("account:a", ACCOUNT_LIMIT, t0), None, "{i}");
            l.fail("account:a".into(), t0);
        }
        let wait = l.wait("account:a", ACCOUNT_LIMIT, t0 + Duration::from_secs(60));
        assert_eq!(wait, Some(WINDOW - Duration::from_secs(60)));
        assert_eq!(l.wait("account:b", ACCOUNT_LIMIT, t0), None, "per key");
        assert_eq!(l.wait("account:a", ACCOUNT_LIMIT, t0 + WINDOW), None);
        l.fail("account:c".into(), t0);
        l.forget("account:c");
        assert!(!l.failures.contains_key("account:c"));
    }

    #[test]
    fn the_limiter_stays_bounded() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..MAX_KEYS + 10 {
            l.fail(format!("peer:{i}"), t0 + Duration::from_millis(i as u64));
        }
        assert!(l.failures.len() <= MAX_KEYS);
        // The newest is kept.
        assert!(l.failures.contains_key(&format!("peer:{}", MAX_KEYS + 9)));
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            "a=1; legal_intake_session_x=2".parse().unwrap(),
        );
        h.append(header::COOKIE, "legal_intake_session=3".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("3"));
        assert_eq!(cookie(&h, "a"), Some("1"));
        assert_eq!(cookie(&h, "b"), None);
        let c = set_cookie(SESSION_COOKIE, "t", 60);
        for attr in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/",
            "Max-Age=60",
        ] {
            assert!(c.contains(attr), "{c}");
        }
    }
}
