//! The IMAP edge (`legal_intake::imap`) against a real Dovecot on
//! 127.0.0.1: login and its failures, TLS and STARTTLS, byte-exact fetch,
//! the three ways of moving a message, mailbox creation, IDLE.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use legal_intake::config::{self, Tls};
use legal_intake::imap::{
    self, Capability, FILED_KEYWORD, FatalKind, IdleOutcome, ImapError, MoveOutcome, Session,
};
use testkit::dovecot::{Dovecot, PASSWORD};
use tokio_util::sync::CancellationToken;

use crate::support::{DovecotImap, free_port};

/// A request as the MX stores it: CRLF line ends, 8-bit UTF-8 in headers
/// and body, a line holding only a dot, trailing white space, a `From `
/// line inside the body — everything a careless client would rewrite.
fn message(n: u32) -> Vec<u8> {
    format!(
        "Return-Path: <officer@police.gi>\r\n\
         From: Officer Núñez <officer@police.gi>\r\n\
         To: legal@ivpn.net\r\n\
         Subject: Production order {n} — £50 café\r\n\
         Message-ID: <{n}.request@police.gi>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         Señor, order number {n}.\r\n\
         .\r\n\
         From the court, with trailing spaces   \r\n\
         \tand a tab\r\n\
         \r\n"
    )
    .into_bytes()
}

async fn connect(cfg: &config::Imap) -> Session {
    imap::connect(cfg)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

fn expect_fatal(result: Result<Session, ImapError>, kind: FatalKind) -> String {
    match result {
        Ok(_) => panic!("connected, but a {kind:?} error was expected"),
        Err(e) => {
            assert!(!e.is_transient(), "{e} should be fatal");
            assert_eq!(e.fatal_kind(), Some(kind), "{e}");
            e.to_string()
        }
    }
}

/// Dovecot's login log lines that say the session was secured with TLS.
fn tls_logins(d: &Dovecot) -> usize {
    d.log()
        .lines()
        .filter(|l| l.contains("Login: user=<") && l.contains(", TLS"))
        .count()
}

/// Whether `f` becomes true within a few seconds. Dovecot's log process
/// writes a little after the event.
fn eventually(f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    f()
}

// ---- Login -------------------------------------------------------------------

#[tokio::test]
async fn logs_in_with_a_password_and_reads_the_capabilities() {
    let d = Dovecot::start();
    let s = connect(&d.imap("")).await;
    assert!(s.has(Capability::Idle));
    assert!(s.has(Capability::Move));
    assert!(s.has(Capability::Uidplus));
    s.logout().await.unwrap();
    assert!(
        eventually(|| d.log().contains("Login: user=<legal@ivpn.net>")),
        "{}",
        d.log()
    );
}

#[tokio::test]
async fn a_wrong_password_is_fatal_and_not_repeated_in_the_error() {
    let d = Dovecot::start();
    let mut cfg = d.imap("");
    let wrong = d.dir().join("wrong.password");
    std::fs::write(&wrong, "hunter2-not-it\n").unwrap();
    cfg.password_file = Some(wrong);
    let message = expect_fatal(imap::connect(&cfg).await, FatalKind::Authentication);
    assert!(!message.contains("hunter2"), "{message}");
    assert!(message.contains("legal@ivpn.net"), "{message}");
}

#[tokio::test]
async fn a_missing_password_file_is_fatal_and_names_the_path() {
    let d = Dovecot::start();
    let mut cfg = d.imap("");
    let missing = d.dir().join("no-such.password");
    cfg.password_file = Some(missing.clone());
    let message = expect_fatal(imap::connect(&cfg).await, FatalKind::Configuration);
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(!message.contains(PASSWORD), "{message}");
}

#[tokio::test]
async fn an_unreachable_server_is_transient() {
    let d = Dovecot::start();
    let mut cfg = d.imap("");
    // A port nobody listens on.
    cfg.port = free_port();
    let e = imap::connect(&cfg).await.expect_err("nothing listens");
    assert!(e.is_transient(), "{e}");
}

#[tokio::test]
async fn a_server_that_goes_away_breaks_the_session_for_good() {
    let d = Dovecot::start();
    let mut s = connect(&d.imap("")).await;
    s.select("INBOX").await.unwrap();
    drop(d); // SIGTERM: Dovecot says BYE and closes.
    let e = s.uids().await.expect_err("the server is gone");
    assert!(e.is_transient(), "{e}");
    // The session stays broken, so a caller cannot carry on by accident.
    let e = s.noop().await.expect_err("still gone");
    assert!(e.is_transient(), "{e}");
    let e = s
        .idle(Duration::from_secs(5), &CancellationToken::new())
        .await
        .expect_err("still gone");
    assert!(e.is_transient(), "{e}");
}

// ---- TLS ---------------------------------------------------------------------

#[tokio::test]
async fn implicit_tls_verifies_against_the_configured_ca() {
    let d = Dovecot::start_tls();
    let cfg = d.imap("");
    assert_eq!(cfg.tls, Tls::Implicit);
    assert_eq!(Some(cfg.port), d.tls_port);
    assert_eq!(cfg.ca_file.as_deref(), Some(d.ca_file()));
    let mut s = connect(&cfg).await;
    s.select("INBOX").await.unwrap();
    s.logout().await.unwrap();
    assert!(eventually(|| tls_logins(&d) == 1), "{}", d.log());
}

#[tokio::test]
async fn implicit_tls_without_the_ca_is_a_certificate_error() {
    let d = Dovecot::start_tls();
    let mut cfg = d.imap("");
    cfg.ca_file = None; // system roots only: the test CA is not among them
    let message = expect_fatal(imap::connect(&cfg).await, FatalKind::Certificate);
    assert!(message.contains("127.0.0.1"), "{message}");
}

#[tokio::test]
async fn starttls_upgrades_the_plain_port_and_verifies_the_certificate() {
    let d = Dovecot::start_tls();
    let mut cfg = d.imap("");
    cfg.tls = Tls::Starttls;
    cfg.port = d.port;
    let mut s = connect(&cfg).await;
    s.select("INBOX").await.unwrap();
    s.logout().await.unwrap();
    assert!(
        eventually(|| tls_logins(&d) == 1),
        "the login was not over TLS: {}",
        d.log()
    );

    cfg.ca_file = None;
    expect_fatal(imap::connect(&cfg).await, FatalKind::Certificate);
}

#[tokio::test]
async fn starttls_against_a_server_without_tls_is_fatal() {
    let d = Dovecot::start(); // ssl = no: no STARTTLS
    let mut cfg = d.imap("");
    cfg.tls = Tls::Starttls;
    let message = expect_fatal(imap::connect(&cfg).await, FatalKind::Tls);
    assert!(message.contains("STARTTLS"), "{message}");
}

// ---- XOAUTH2 -------------------------------------------------------------------

#[tokio::test]
async fn xoauth2_logs_in_and_rereads_the_token_at_each_login() {
    let d = Dovecot::start_oauth2();
    let token_file = d.dir().join("imap.token");
    let mut cfg = d.imap("");
    cfg.password_file = None;
    cfg.access_token_file = Some(token_file.clone());

    d.accept_token("token-one");
    std::fs::write(&token_file, "token-one\n").unwrap();
    connect(&cfg).await.logout().await.unwrap();

    // The helper renewed the token, but the provider does not know it yet.
    std::fs::write(&token_file, "token-two\n").unwrap();
    let message = expect_fatal(imap::connect(&cfg).await, FatalKind::Authentication);
    assert!(!message.contains("token-two"), "{message}");

    d.accept_token("token-two");
    connect(&cfg).await.logout().await.unwrap();
    assert_eq!(d.tokens_seen(), ["token-one", "token-two", "token-two"]);
}

#[tokio::test]
async fn a_missing_token_file_is_fatal() {
    let d = Dovecot::start();
    let mut cfg = d.imap("");
    cfg.password_file = None;
    cfg.access_token_file = Some(PathBuf::from("/nonexistent/imap.token"));
    let message = expect_fatal(imap::connect(&cfg).await, FatalKind::Configuration);
    assert!(message.contains("/nonexistent/imap.token"), "{message}");
}

// ---- Mailboxes, select, fetch ---------------------------------------------------

#[tokio::test]
async fn ensure_mailbox_creates_once_and_is_idempotent() {
    let d = Dovecot::start();
    let mut s = connect(&d.imap("")).await;
    assert!(s.ensure_mailbox("Processed").await.unwrap());
    assert!(!s.ensure_mailbox("Processed").await.unwrap());
    assert!(s.ensure_mailbox("Quarantäne").await.unwrap());
    assert!(!s.ensure_mailbox("Quarantäne").await.unwrap());
    assert!(!s.ensure_mailbox("INBOX").await.unwrap());
    let names = d.mailboxes();
    assert!(names.contains(&"Processed".to_string()), "{names:?}");
    // Stored in modified UTF-7, as RFC 3501 wants.
    assert!(names.contains(&"Quarant&AOQ-ne".to_string()), "{names:?}");
    // And usable under its configured name.
    s.select("Quarantäne").await.unwrap();
}

#[tokio::test]
async fn selecting_a_missing_mailbox_is_fatal() {
    let d = Dovecot::start();
    let mut s = connect(&d.imap("")).await;
    let e = s.select("Nowhere").await.expect_err("no such mailbox");
    assert_eq!(e.fatal_kind(), Some(FatalKind::Server), "{e}");
    // A refused command leaves the connection usable.
    s.select("INBOX").await.unwrap();
}

#[tokio::test]
async fn fetch_returns_the_stored_bytes_and_leaves_seen_alone() {
    let d = Dovecot::start();
    let first = d.append("INBOX", &message(1));
    let second = d.append("INBOX", &message(2));
    let mut s = connect(&d.imap("")).await;

    let selected = s.select("INBOX").await.unwrap();
    assert_eq!(selected.exists, 2);
    assert_eq!(selected.uid_next, Some(second + 1));
    assert_ne!(selected.uid_validity, 0);
    assert_eq!(s.selected(), Some("INBOX"));

    let uids = s.uids().await.unwrap();
    assert_eq!(uids, [first, second]);
    // Asked in any order, with a duplicate and a UID that does not exist.
    let fetched = s.fetch(&[second, 999, first, second]).await.unwrap();
    assert_eq!(fetched, [(first, message(1)), (second, message(2))]);
    assert!(s.fetch(&[]).await.unwrap().is_empty());

    for stored in d.stored("INBOX") {
        assert!(
            !stored.flags.iter().any(|f| f == "\\Seen"),
            "fetch set \\Seen on {}: {:?}",
            stored.uid,
            stored.flags
        );
    }
}

#[tokio::test]
async fn a_recreated_mailbox_has_a_new_uidvalidity() {
    let d = Dovecot::start();
    d.create_mailbox("Box");
    d.append("Box", &message(1));
    let mut s = connect(&d.imap("")).await;
    let before = s.select("Box").await.unwrap();
    assert_eq!(before.exists, 1);
    s.select("INBOX").await.unwrap();

    d.delete_mailbox("Box");
    d.create_mailbox("Box");
    let after = s.select("Box").await.unwrap();
    assert_eq!(after.exists, 0);
    assert_ne!(before.uid_validity, after.uid_validity);
}

// ---- Moving --------------------------------------------------------------------

/// INBOX with the message to file and another client's message marked
/// `\Deleted` (which only that client may expunge), Processed created, a
/// session on INBOX that pretends the server lacks `without`. Returns
/// (the session, to file, other client's).
async fn moving_world(d: &Dovecot, without: &[Capability]) -> (Session, u32, u32) {
    let mut s = connect(&d.imap("")).await;
    for &c in without {
        s.pretend_without(c);
    }
    let ours = d.append("INBOX", &message(1));
    let theirs = d.append_with_flags("INBOX", "\\Deleted", &message(2));
    s.ensure_mailbox("Processed").await.unwrap();
    s.select("INBOX").await.unwrap();
    (s, ours, theirs)
}

#[tokio::test]
async fn move_uid_uses_move() {
    let d = Dovecot::start();
    let (mut s, ours, theirs) = moving_world(&d, &[]).await;

    assert_eq!(
        s.move_uid(ours, "Processed").await.unwrap(),
        MoveOutcome::Moved
    );
    assert_eq!(d.messages("Processed"), [message(1)]);
    let inbox = d.stored("INBOX");
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].uid, theirs);
    assert!(inbox[0].flags.contains(&"\\Deleted".to_string()));

    // Safe to repeat: the UID is gone, nothing else changes.
    s.move_uid(ours, "Processed").await.unwrap();
    assert_eq!(d.messages("Processed").len(), 1);
    assert_eq!(d.stored("INBOX").len(), 1);
}

#[tokio::test]
async fn without_move_it_copies_and_expunges_only_that_uid() {
    let d = Dovecot::start();
    let (mut s, ours, theirs) = moving_world(&d, &[Capability::Move]).await;
    assert!(!s.has(Capability::Move));
    let later = d.append("INBOX", &message(3));

    assert_eq!(
        s.move_uid(ours, "Processed").await.unwrap(),
        MoveOutcome::CopiedAndExpunged
    );
    let processed = d.stored("Processed");
    assert_eq!(processed.len(), 1);
    assert_eq!(processed[0].raw, message(1));
    assert!(
        !processed[0].flags.contains(&"\\Deleted".to_string()),
        "the copy must not carry \\Deleted: {:?}",
        processed[0].flags
    );
    // The other client's \Deleted message survived: no bare EXPUNGE.
    let inbox: Vec<u32> = d.stored("INBOX").iter().map(|m| m.uid).collect();
    assert_eq!(inbox, [theirs, later]);
    assert_eq!(s.uids().await.unwrap(), [theirs, later]);
}

#[tokio::test]
async fn without_move_or_uidplus_it_copies_flags_and_leaves_the_message() {
    let d = Dovecot::start();
    let (mut s, ours, theirs) = moving_world(&d, &[Capability::Move, Capability::Uidplus]).await;

    assert_eq!(
        s.move_uid(ours, "Processed").await.unwrap(),
        MoveOutcome::FlaggedInPlace
    );
    assert_eq!(d.messages("Processed"), [message(1)]);
    let inbox = d.stored("INBOX");
    assert_eq!(
        inbox.iter().map(|m| m.uid).collect::<Vec<_>>(),
        [ours, theirs],
        "nothing may be expunged"
    );
    let flags = &inbox[0].flags;
    assert!(flags.contains(&FILED_KEYWORD.to_string()), "{flags:?}");
    assert!(flags.contains(&"\\Flagged".to_string()), "{flags:?}");
    assert!(!flags.contains(&"\\Deleted".to_string()), "{flags:?}");
    // The filed message is not offered again.
    assert_eq!(s.uids().await.unwrap(), [theirs]);
}

#[tokio::test]
async fn moving_into_a_missing_mailbox_is_fatal() {
    let d = Dovecot::start();
    let uid = d.append("INBOX", &message(1));
    let mut s = connect(&d.imap("")).await;
    s.select("INBOX").await.unwrap();
    let e = s.move_uid(uid, "Nowhere").await.expect_err("TRYCREATE");
    assert_eq!(e.fatal_kind(), Some(FatalKind::Server), "{e}");
    assert_eq!(d.messages("INBOX"), [message(1)]);
}

// ---- IDLE ----------------------------------------------------------------------

/// Runs `f` on the side client after `delay`, from another thread, while
/// the test's session is idling.
fn later(delay: Duration, f: impl FnOnce() + Send + 'static) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        thread::sleep(delay);
        f();
    })
}

async fn idling_session(d: &Dovecot) -> Session {
    let mut s = connect(&d.imap("")).await;
    s.select("INBOX").await.unwrap();
    s.uids().await.unwrap();
    s
}

/// IDLE for up to `secs` seconds or until `cancel` fires: the outcome and
/// how long it took.
async fn timed_idle(
    s: &mut Session,
    secs: u64,
    cancel: &CancellationToken,
) -> (Result<IdleOutcome, ImapError>, Duration) {
    let start = Instant::now();
    let outcome = s.idle(Duration::from_secs(secs), cancel).await;
    (outcome, start.elapsed())
}

/// IDLE returned in under `secs` seconds.
fn promptly(elapsed: Duration, secs: u64) {
    assert!(elapsed < Duration::from_secs(secs), "{elapsed:?}");
}

#[tokio::test]
async fn idle_wakes_when_mail_arrives() {
    let d = Dovecot::start();
    let mut s = idling_session(&d).await;
    let account = d.account();
    let side = later(Duration::from_millis(300), move || {
        account.append("INBOX", &message(7));
    });
    let (outcome, elapsed) = timed_idle(&mut s, 30, &CancellationToken::new()).await;
    side.join().unwrap();
    assert_eq!(outcome.unwrap(), IdleOutcome::NewData);
    // Dovecot holds notifications about half a second; 30 s would mean the
    // wake-up was missed.
    promptly(elapsed, 10);
    // The session is back in the selected state and sees the message.
    assert_eq!(s.uids().await.unwrap().len(), 1);
}

#[tokio::test]
async fn idle_returns_at_once_for_mail_announced_while_busy() {
    let d = Dovecot::start();
    let existing = d.append("INBOX", &message(1));
    let mut s = idling_session(&d).await;
    d.append("INBOX", &message(2));
    // Any command lets Dovecot announce the new message.
    s.fetch(&[existing]).await.unwrap();
    let (outcome, elapsed) = timed_idle(&mut s, 30, &CancellationToken::new()).await;
    assert_eq!(outcome.unwrap(), IdleOutcome::NewData);
    promptly(elapsed, 5);
}

#[tokio::test]
async fn idle_returns_cancelled_when_the_token_fires() {
    let d = Dovecot::start();
    let mut s = idling_session(&d).await;
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let (outcome, elapsed) = timed_idle(&mut s, 30, &cancel).await;
    assert_eq!(outcome.unwrap(), IdleOutcome::Cancelled);
    promptly(elapsed, 5);
    // IDLE was ended properly: the session still works.
    assert!(!s.noop().await.unwrap());
    // A token that has already fired returns at once.
    assert_eq!(
        s.idle(Duration::from_secs(30), &cancel).await.unwrap(),
        IdleOutcome::Cancelled
    );
}

#[tokio::test]
async fn idle_times_out_when_nothing_happens() {
    let d = Dovecot::start();
    let mut s = idling_session(&d).await;
    let (outcome, elapsed) = timed_idle(&mut s, 2, &CancellationToken::new()).await;
    assert_eq!(outcome.unwrap(), IdleOutcome::Timeout);
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(8),
        "{elapsed:?}"
    );
    s.uids().await.unwrap();
}

#[tokio::test]
async fn idle_reports_a_server_shutdown_as_transient() {
    let d = Dovecot::start();
    let mut s = idling_session(&d).await;
    let side = later(Duration::from_millis(300), move || drop(d));
    let (outcome, elapsed) = timed_idle(&mut s, 30, &CancellationToken::new()).await;
    side.join().unwrap();
    let e = outcome.expect_err("the server went away");
    assert!(e.is_transient(), "{e}");
    promptly(elapsed, 10);
}

#[tokio::test]
async fn idle_keeps_waiting_through_changes_that_bring_no_mail() {
    let d = Dovecot::start();
    let uid = d.append("INBOX", &message(1));
    let mut s = idling_session(&d).await;
    let account = d.account();
    // Another client files the message away during our IDLE: an EXPUNGE,
    // which is no reason to scan.
    let side = later(Duration::from_millis(300), move || {
        account.create_mailbox("Elsewhere");
        account.move_message("INBOX", uid, "Elsewhere");
    });
    let outcome = s
        .idle(Duration::from_secs(3), &CancellationToken::new())
        .await
        .unwrap();
    side.join().unwrap();
    assert_eq!(outcome, IdleOutcome::Timeout);
    assert!(s.uids().await.unwrap().is_empty());
}

#[tokio::test]
async fn without_idle_it_polls_with_noop() {
    let d = Dovecot::start();
    let mut s = idling_session(&d).await;
    s.pretend_without(Capability::Idle);
    let cancel = CancellationToken::new();

    let start = Instant::now();
    assert_eq!(
        s.idle(Duration::from_secs(1), &cancel).await.unwrap(),
        IdleOutcome::Timeout
    );
    assert!(start.elapsed() >= Duration::from_secs(1));

    d.append("INBOX", &message(1));
    assert_eq!(
        s.idle(Duration::from_secs(1), &cancel).await.unwrap(),
        IdleOutcome::NewData
    );
    // Reported once.
    assert!(!s.noop().await.unwrap());
}
