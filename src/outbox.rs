//! The outgoing queue: replies and the legal team's notices, queued at
//! filing time, and the daily digest are sent from here.
//!
//! [`drain`] takes the rows that are due, and for each one:
//!
//! ```text
//! claim (pending → sending, committed) ─▶ render (reply | notice) ─▶ DKIM-sign ─▶ SMTP (smtp) ─▶ record
//! ```
//!
//! The queue holds four kinds of row: the two replies (`acknowledgement`,
//! `rejection`) to a request's sender, an internal `notice` to each
//! `notify.to` address per filed message, and the daily `digest` to each
//! of them. They share one life, and the same `reply_*` delivery events
//! (each names its outbox row; the row says what it is):
//!
//! | from | to | event | when |
//! |---|---|---|---|
//! | (filed) | `pending` | `reply_queued`, `notice_queued` | the filing transaction queued it |
//! | (the digest hour) | `pending` | `digest_queued` | [`queue_digest_if_due`] queued the day's digest |
//! | `pending` | `sending` | `reply_sending` | an attempt starts; committed before any byte goes out, naming the process |
//! | `sending` | `sent` | `reply_sent` | the server's final reply was positive |
//! | `sending` | `pending` | `reply_retry` | not accepted (server down, 4xx, TLS, AUTH): next try after 1, 2, 4 … minutes, at most an hour apart; or the process died before any content went out: due at once |
//! | `sending` | `pending` | `reply_resend_auto` | the content went out and no final reply came: the same bytes are sent again (after a dropped connection or a silent server at most [`MAX_AUTO_RESENDS`] times; after the process died, always) |
//! | `sending` | `failed` | `reply_failed` | refused for good (5xx for this message), or still not accepted 5 days after it was queued |
//! | `sending` | `unknown` | `reply_unknown` | the server left the outcome unknown again after [`MAX_AUTO_RESENDS`] re-sends |
//! | `unknown`, `failed` | `pending` | `reply_resend` | a person ran `cases resend` |
//!
//! Nothing is lost and nothing is sent twice without cause. A row is
//! claimed in a write transaction that only succeeds while it is
//! `pending`. Just before the content goes to the server (after `DATA`),
//! the exact bytes and the moment are committed (`content_started_at`): a
//! process killed before that certainly delivered nothing, and its row is
//! simply due again; one killed after it may have delivered, and the same
//! bytes (same Message-ID, Date and DKIM signature) are sent again, so an
//! agency's mail system sees one message twice at most and can tell the
//! copy by its Message-ID, rather than never hearing from us. The case
//! shows each automatic re-send. A `sending` row whose process is gone
//! (pid and start time, see `process`) is settled at once; where that
//! cannot be told it is left alone for [`SENDING_LEASE`], so two processes
//! draining the same log (the daemon and a `run --once`) never settle each
//! other's sends. The bytes stay with the row: what a recipient was sent
//! can be shown, and is exported with the case, whatever the templates
//! say today.

//! Sending never holds up filing: the daemon drains on a task of its own
//! with its own connection to the case log, and a send has a time limit.
//!
//! The daily digest is queued by that same task (and by `run --once`)
//! once the machine's local hour has reached `notify.digest_hour` and the
//! day's digest is missing; its `dedupe_key` (`digest:YYYY-MM-DD:address`)
//! is unique, so neither a restart nor two processes ever queue one twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::audit::{self, SYSTEM_ACTOR, kind, sha256_hex};
use crate::case::{Case, ReplyKind};
use crate::clock::{self, Clock, parse_instant, stamp};
use crate::config::{Config, ConfigError};
use crate::notice::{self, DigestFacts, Envelope, NoticeFacts};
use crate::process;
use crate::reply::{self, Reply, Templates};
use crate::signer::Signer;
use crate::smtp::{self, Delivery};
use crate::store::{AttemptEnd, NewDigest, ReplyRow, SharedStore};

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
    pub const ALL: [SendOutcome; 4] = [
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

/// Told the outcome of each send attempt as its log line is written
/// (the daemon's counters, `metrics::Metrics::send`).
pub type OnSend = Arc<dyn Fn(SendOutcome) + Send + Sync>;

/// The longest one SMTP transaction may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// A `sending` row whose attempt started longer ago than this belongs to
/// no live process (an attempt ends within [`SEND_TIMEOUT`] and a few
/// seconds of bookkeeping), so it is settled (see [`recover`]) even when
/// whether its process still runs cannot be told.
pub const SENDING_LEASE: Duration = Duration::from_secs(300);

/// The first retry waits this long; each further one twice as long as the
/// one before, up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_secs(60);
pub const BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// An attempt whose outcome the server left unknown (the content went out,
/// then the connection broke or no answer came) is sent again by itself,
/// with the same bytes, this many times; after that it waits for a person
/// as `unknown`, since such a server may be taking every copy. A process
/// that died mid-send is always followed by the same bytes again: that
/// cause is ours, not the server's.
pub const MAX_AUTO_RESENDS: i64 = 3;

/// A reply not accepted this long after it was queued (or re-queued by a
/// person) is given up on.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(5 * 24 * 3600);

/// How often the daemon looks for retries that have become due.
pub const WAKE_EVERY: Duration = Duration::from_secs(60);

/// Everything needed to turn a queued row into a sent message; built from
/// the configuration at start and on SIGHUP.
#[derive(Debug)]
pub struct Mailer {
    /// `None` without an `[smtp]` section: replies wait in the queue.
    client: Option<smtp::Client>,
    signer: Option<Signer>,
    templates: Templates,
    /// `smtp.from`.
    from: String,
    /// The `notify.to` addresses, each once (empty without `[notify]`),
    /// and the local hour of the daily digest.
    notify_to: Vec<String>,
    digest_hour: u8,
    /// `reminders.hard_copy_days`, for the digest's reminders.
    hard_copy_days: u32,
    /// The domain of the digests' Message-IDs.
    msgid_domain: String,
}

/// The folder the reply templates are read from: `templates` beside the
/// configuration file.
pub fn templates_dir(config: &Config) -> PathBuf {
    config
        .path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("templates")
}

/// Reads `acknowledgement.txt` and `rejection.txt` from `dir`; a file
/// that is absent falls back to the built-in text, a file that is present
/// but wrong is an error naming it.
fn load_templates(dir: &Path) -> Result<Templates, ConfigError> {
    let builtin = Templates::builtin();
    let read = |name: &str, fallback: String| {
        let path = dir.join(name);
        let wrong = |reason: String| ConfigError {
            file: path.clone(),
            key: String::new(),
            reason,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Templates::checked(&text).map_err(wrong),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(fallback),
            Err(e) => Err(wrong(format!("cannot read: {e}"))),
        }
    };
    Ok(Templates {
        acknowledgement: read("acknowledgement.txt", builtin.acknowledgement)?,
        rejection: read("rejection.txt", builtin.rejection)?,
    })
}

impl Mailer {
    /// Loads the signing key and the templates and prepares the SMTP
    /// client. Every error names the file and key at fault.
    pub fn new(config: &Config) -> Result<Mailer, ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            file: config.path.clone(),
            key: key.to_string(),
            reason,
        };
        let signer = config
            .dkim_signing
            .as_ref()
            .map(|d| Signer::load(d).map_err(|e| err("dkim_signing.private_key_file", e)))
            .transpose()?;
        let templates = load_templates(&templates_dir(config))?;
        let client = config
            .smtp
            .as_ref()
            .map(|s| smtp::Client::new(s).map_err(|e| err("smtp", format!("{e:#}"))))
            .transpose()?;
        Ok(Mailer {
            client,
            signer,
            templates,
            from: config
                .smtp
                .as_ref()
                .map(|s| s.from.clone())
                .unwrap_or_default(),
            notify_to: config.notify_recipients(),
            digest_hour: config.notify.as_ref().map_or(0, |n| n.digest_hour),
            hard_copy_days: config.reminders.hard_copy_days,
            msgid_domain: crate::msgid::domain(config),
        })
    }

    /// Whether replies can be sent at all (an `[smtp]` section exists).
    pub fn can_send(&self) -> bool {
        self.client.is_some()
    }
}

/// Which pending replies a drain attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Those whose next attempt is due.
    Due,
    /// Every pending one, due or not (`run --once`).
    All,
}

/// What a drain did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub sent: u32,
    pub retry: u32,
    pub failed: u32,
    pub unknown: u32,
}

/// A claimed row with what rendering it needs.
struct Job {
    row: ReplyRow,
    /// The case it is about (`None` for a digest).
    case: Option<Case>,
    /// When the request a reply answers was received.
    received: OffsetDateTime,
    /// Message-IDs from the request's `In-Reply-To`/`References` (replies
    /// only).
    thread: Vec<String>,
    /// The bytes an earlier attempt started to hand over, when one did:
    /// sent again unchanged (same Message-ID, Date and signature), so a
    /// recipient who got the first copy can tell the second for what it is.
    bytes: Option<Vec<u8>>,
}

impl Job {
    fn reference(&self) -> String {
        self.case
            .as_ref()
            .map_or_else(|| "-".to_string(), |c| c.reference.to_string())
    }
}

/// Whether an outbox kind is a reply to a request's sender.
fn is_reply(kind: &str) -> bool {
    matches!(kind, "acknowledgement" | "rejection")
}

/// Settles `sending` rows that no live attempt can own any more: their
/// process is gone (`process::is_gone`), or, when that cannot be told, the
/// attempt started longer ago than [`SENDING_LEASE`]. A row whose content
/// never started to go out delivered nothing and is due again at once; one
/// whose content did is re-sent with the same bytes. Returns how many rows
/// became `unknown` (none today; the count is kept for the tally).
pub async fn recover(store: &SharedStore, clock: Clock, on_send: &OnSend) -> anyhow::Result<u32> {
    let on_send = on_send.clone();
    store.run(move |s| {
        let now = clock.now();
        let lease_start = now - SENDING_LEASE;
        let tx = s.begin()?;
        let ops = tx.ops();
        let at = stamp(now);
        let mut unknown = 0;
        for row in ops.sending()? {
            let started = row.last_attempt_at.as_deref().and_then(parse_instant);
            let gone = match row.claimed_by.as_deref() {
                Some(me) if me == process::this_process() => Some(false),
                Some(claimant) => process::is_gone(claimant),
                None => None,
            };
            let abandoned = gone.unwrap_or(false) || started.is_none_or(|t| t <= lease_start);
            if !abandoned {
                continue;
            }
            let how = if gone == Some(true) {
                "its process is gone"
            } else {
                "its process never recorded an outcome"
            };
            let since = row.last_attempt_at.as_deref().unwrap_or("an unknown time");
            let settled = match row.content_started_at {
                None => {
                    let error = format!(
                        "attempt {} started at {since} and stopped before any content was sent ({how}); tried again",
                        row.attempts
                    );
                    Settled::Retry(error)
                }
                // However often the process dies: each death is ours, not
                // the server's, and each re-send is the same message (a
                // crash loop is bounded by the service manager).
                Some(_) => Settled::Resend(format!(
                    "attempt {} started at {since} stopped while the content was being sent ({how}); the server may have it, so the same message is sent again",
                    row.attempts
                )),
            };
            let status = settle(&ops, &row, &settled, &at, &at)?;
            if status.is_none() {
                continue;
            }
            let reference = match row.case_id {
                Some(id) => ops.case_by_id(id)?,
                None => None,
            }
            .map_or_else(|| "-".to_string(), |c| c.reference.to_string());
            tracing::warn!(case = %reference, outbox = row.id, kind = %row.kind, to = %row.recipient, status = %status.unwrap_or("-"), attempt = row.attempts, error = ?settled.error(), "reply");
            if let Settled::Unknown(_) = settled {
                on_send(SendOutcome::Unknown);
                unknown += 1;
            }
        }
        tx.commit()?;
        Ok(unknown)
    })
    .await
}

/// How an attempt without a positive answer is settled.
enum Settled {
    /// Nothing was delivered: due again.
    Retry(String),
    /// The outcome cannot be known: the same bytes again.
    Resend(String),
    /// The outcome cannot be known, and the automatic re-sends are used up.
    Unknown(String),
}

impl Settled {
    fn error(&self) -> &str {
        match self {
            Settled::Retry(e) | Settled::Resend(e) | Settled::Unknown(e) => e,
        }
    }
}

/// Moves a `sending` row as `settled` says, due again at `next`, with its
/// event; the new status, or `None` when the row was no longer `sending`.
fn settle(
    ops: &crate::store::Ops<'_>,
    row: &ReplyRow,
    settled: &Settled,
    at: &str,
    next: &str,
) -> anyhow::Result<Option<&'static str>> {
    let attempt = row.attempts;
    let (moved, event, status, data) = match settled {
        Settled::Retry(error) => (
            ops.finish_attempt(
                row.id,
                AttemptEnd::Retry {
                    next_attempt_at: next,
                    error,
                },
            )?,
            kind::REPLY_RETRY,
            "pending",
            json!({ "outbox": row.id, "attempt": attempt, "error": error, "next_attempt_at": next }),
        ),
        Settled::Resend(error) => (
            ops.resend_automatically(row.id, next, error)?,
            kind::REPLY_RESEND_AUTO,
            "pending",
            json!({ "outbox": row.id, "attempt": attempt, "error": error, "next_attempt_at": next,
                    "resend": row.auto_resends + 1, "same_message_id": row.msgid }),
        ),
        Settled::Unknown(error) => (
            ops.finish_attempt(row.id, AttemptEnd::Unknown { error })?,
            kind::REPLY_UNKNOWN,
            "unknown",
            json!({ "outbox": row.id, "attempt": attempt, "error": error }),
        ),
    };
    if !moved {
        return Ok(None);
    }
    audit::append(ops, at, SYSTEM_ACTOR, row.case_id, event, &data)?;
    Ok(Some(status))
}

/// One drain of the queue (module documentation). Stops between replies
/// when `cancel` fires; the reply in hand is finished and recorded. Each
/// outcome is told to `on_send` as its log line is written.
pub async fn drain(
    store: &SharedStore,
    mailer: &Mailer,
    clock: Clock,
    scope: Scope,
    cancel: &CancellationToken,
    on_send: &OnSend,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    tally.unknown += recover(store, clock, on_send).await?;
    let Some(client) = &mailer.client else {
        return Ok(tally);
    };
    let due_by = (scope == Scope::Due).then(|| stamp(clock.now()));
    let candidates = store
        .run(move |s| s.read().pending_replies(due_by.as_deref()))
        .await?;
    for candidate in candidates {
        if cancel.is_cancelled() {
            break;
        }
        let Some(job) = claim(store, candidate.id, clock).await? else {
            continue;
        };
        let started = Instant::now();
        let now = clock.now();
        let again = job.bytes.is_some();
        let message = match &job.bytes {
            Some(bytes) => Ok(bytes.clone()),
            None => render(mailer, &job, now),
        };
        let delivery = match &message {
            Ok(bytes) => {
                let content_starts = mark_content(store, job.row.id, bytes.clone(), clock);
                client
                    .send(&job.row.recipient, bytes, SEND_TIMEOUT, content_starts)
                    .await
            }
            // Nothing went out: a configuration matter, retried.
            Err(e) => Delivery::Transient(format!("{e:#}")),
        };
        let sent = message.as_deref().ok().map(sha256_hex);
        let facts = Facts {
            envelope_from: client.envelope_from(),
            dkim: mailer
                .signer
                .as_ref()
                .map(|s| format!("d={} s={}", s.domain, s.selector)),
            sha256: sent,
            date: (!again).then(|| stamp(now)),
            again,
        };
        let status = record(store, &job, delivery.clone(), facts, clock).await?;
        let ms = started.elapsed().as_millis();
        let reference = job.reference();
        // Replies log as "reply", the team's mail as "notice", so that a
        // grep for either finds only its own.
        let what = if is_reply(&job.row.kind) {
            "reply"
        } else {
            "notice"
        };
        on_send(SendOutcome::from_status(status));
        match &delivery {
            Delivery::Accepted(reply) => {
                tally.sent += 1;
                tracing::info!(case = %reference, outbox = job.row.id, kind = %job.row.kind, to = %job.row.recipient, status = %status, attempt = job.row.attempts, ms, detail = ?reply, "{what}");
            }
            Delivery::Transient(e) | Delivery::Permanent(e) | Delivery::Unknown(e) => {
                match status {
                    "pending" => tally.retry += 1,
                    "failed" => tally.failed += 1,
                    _ => tally.unknown += 1,
                }
                tracing::warn!(case = %reference, outbox = job.row.id, kind = %job.row.kind, to = %job.row.recipient, status = %status, attempt = job.row.attempts, ms, error = ?e, "{what}");
            }
        }
    }
    Ok(tally)
}

/// pending → sending in a committed transaction with its event, and what
/// rendering needs; `None` when another process took the row first.
async fn claim(store: &SharedStore, id: i64, clock: Clock) -> anyhow::Result<Option<Job>> {
    store
        .run(move |s| {
            let at = stamp(clock.now());
            let tx = s.begin()?;
            let ops = tx.ops();
            if !ops.start_attempt(id, &at, process::this_process())? {
                return Ok(None);
            }
            let bytes = ops.sent_bytes(id)?;
            let row = ops
                .reply(id)?
                .ok_or_else(|| anyhow::anyhow!("queued reply {id} vanished"))?;
            let case = match row.case_id {
                Some(case_id) => Some(ops.case_by_id(case_id)?.ok_or_else(|| {
                    anyhow::anyhow!("the case of queued {} {id} is missing", row.kind)
                })?),
                None => None,
            };
            // Only a reply needs the request itself (its thread); a notice
            // carries what it says.
            let message = match row.message_id {
                Some(message_id) if is_reply(&row.kind) => {
                    Some(ops.message(message_id, true)?.ok_or_else(|| {
                        anyhow::anyhow!("the request of queued reply {id} is missing")
                    })?)
                }
                _ => None,
            };
            audit::append(
                &ops,
                &at,
                SYSTEM_ACTOR,
                row.case_id,
                kind::REPLY_SENDING,
                &json!({ "outbox": id, "attempt": row.attempts }),
            )?;
            tx.commit()?;
            let thread = message
                .as_ref()
                .and_then(|m| m.raw.as_deref())
                .map(|raw| crate::message::parse(raw, usize::MAX).thread_ids)
                .unwrap_or_default();
            let received = message
                .as_ref()
                .and_then(|m| parse_instant(&m.received_at))
                .unwrap_or_else(|| clock.now());
            Ok(Some(Job {
                row,
                case,
                received,
                thread,
                bytes,
            }))
        })
        .await
}

/// The row's message, signed when a key is configured.
fn render(mailer: &Mailer, job: &Job, now: OffsetDateTime) -> anyhow::Result<Vec<u8>> {
    let envelope = || Envelope {
        from: &mailer.from,
        to: &job.row.recipient,
        message_id: &job.row.msgid,
        in_reply_to: job.row.in_reply_to.as_deref(),
        date: now,
    };
    let payload = || {
        job.row
            .payload
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("queued {} {} says nothing", job.row.kind, job.row.id))
    };
    let kind = match job.row.kind.as_str() {
        "acknowledgement" => ReplyKind::Acknowledgement,
        "rejection" => ReplyKind::Rejection,
        "notice" => {
            let facts: NoticeFacts = serde_json::from_str(payload()?)?;
            return sign(mailer, notice::render_notice(&facts, &envelope()));
        }
        "digest" => {
            let facts: DigestFacts = serde_json::from_str(payload()?)?;
            return sign(mailer, notice::render_digest(&facts, &envelope()));
        }
        other => anyhow::bail!("queued reply {} has an unknown kind {other}", job.row.id),
    };
    let case = job
        .case
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("queued reply {} is about no case", job.row.id))?;
    let reference = case.reference.to_string();
    let bytes = reply::render(
        &mailer.templates,
        &Reply {
            kind,
            reference: &reference,
            agency: case.agency.as_deref(),
            from: &mailer.from,
            to: &job.row.recipient,
            original_subject: job.row.subject.as_deref(),
            in_reply_to: job.row.in_reply_to.as_deref(),
            references: &job.thread,
            received: job.received,
            message_id: &job.row.msgid,
            date: now,
        },
    );
    sign(mailer, bytes)
}

/// Rendered bytes, DKIM-signed when a key is configured.
fn sign(mailer: &Mailer, bytes: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    if bytes.is_empty() {
        anyhow::bail!("the message could not be rendered");
    }
    match &mailer.signer {
        Some(signer) => signer.sign(&bytes),
        None => Ok(bytes),
    }
}

/// Records, committed, that the content of `id` goes out now as `bytes`:
/// the future [`smtp::Client::send`] awaits after `DATA`.
async fn mark_content(
    store: &SharedStore,
    id: i64,
    bytes: Vec<u8>,
    clock: Clock,
) -> Result<(), String> {
    let marked = store
        .run(move |s| {
            let tx = s.begin()?;
            let marked = tx.ops().start_content(id, &stamp(clock.now()), &bytes)?;
            tx.commit()?;
            Ok(marked)
        })
        .await;
    match marked {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("queued reply {id} is no longer being sent")),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// What the audit event of a sent reply records about it.
struct Facts {
    envelope_from: String,
    dkim: Option<String>,
    /// SHA-256 of the exact bytes handed to the server.
    sha256: Option<String>,
    /// The instant in its `Date` header, when rendered for this attempt.
    date: Option<String>,
    /// The bytes of an earlier attempt, sent again.
    again: bool,
}

/// sending → the outcome, with its event; returns the new status.
async fn record(
    store: &SharedStore,
    job: &Job,
    delivery: Delivery,
    facts: Facts,
    clock: Clock,
) -> anyhow::Result<&'static str> {
    let id = job.row.id;
    let case_id = job.row.case_id;
    let attempt = job.row.attempts;
    let pending_since = job.row.pending_since.clone();
    store.run(move |s| {
        let now = clock.now();
        let at = stamp(now);
        let give_up = parse_instant(&pending_since)
            .is_some_and(|since| now >= since + GIVE_UP_AFTER);
        let next = stamp(now + backoff(attempt));
        let (end, event, status, data): (AttemptEnd<'_>, &str, &str, Value) = match &delivery {
            Delivery::Accepted(reply) => (
                AttemptEnd::Sent { at: &at },
                kind::REPLY_SENT,
                "sent",
                json!({
                    "outbox": id,
                    "attempt": attempt,
                    "response": reply,
                    "envelope_from": facts.envelope_from,
                    "dkim": facts.dkim,
                    "date": facts.date,
                    "sha256": facts.sha256,
                    "same_bytes_again": facts.again,
                }),
            ),
            Delivery::Transient(e) if give_up => (
                AttemptEnd::Failed { error: e },
                kind::REPLY_FAILED,
                "failed",
                json!({ "outbox": id, "attempt": attempt, "error": e,
                        "reason": "not accepted within 5 days of being queued" }),
            ),
            Delivery::Transient(e) => (
                AttemptEnd::Retry {
                    next_attempt_at: &next,
                    error: e,
                },
                kind::REPLY_RETRY,
                "pending",
                json!({ "outbox": id, "attempt": attempt, "error": e, "next_attempt_at": next }),
            ),
            Delivery::Permanent(e) => (
                AttemptEnd::Failed { error: e },
                kind::REPLY_FAILED,
                "failed",
                json!({ "outbox": id, "attempt": attempt, "error": e, "reason": "refused by the server" }),
            ),
            Delivery::Unknown(e) => {
                let tx = s.begin()?;
                let ops = tx.ops();
                let row = ops
                    .reply(id)?
                    .ok_or_else(|| anyhow::anyhow!("queued reply {id} vanished"))?;
                let settled = if row.auto_resends < MAX_AUTO_RESENDS {
                    Settled::Resend(format!("{e}; the server may have it, so the same message is sent again"))
                } else {
                    Settled::Unknown(format!("{e}; after {} automatic re-sends", row.auto_resends))
                };
                let Some(status) = settle(&ops, &row, &settled, &at, &next)? else {
                    anyhow::bail!("queued reply {id} was no longer sending when its outcome came in");
                };
                tx.commit()?;
                return Ok(status);
            }
        };
        let tx = s.begin()?;
        let ops = tx.ops();
        if !ops.finish_attempt(id, end)? {
            // Settled by someone else meanwhile (a clock far off); their
            // record stands.
            anyhow::bail!("queued reply {id} was no longer sending when its outcome came in");
        }
        audit::append(&ops, &at, SYSTEM_ACTOR, case_id, event, &data)?;
        tx.commit()?;
        Ok(status)
    })
    .await
}

/// The unique key of one day's digest to one address.
pub fn digest_key(day: &str, recipient: &str) -> String {
    format!("digest:{day}:{}", recipient.to_ascii_lowercase())
}

/// Queues today's digest (local day) to every `notify.to` address that
/// has not had it yet, once the local hour has reached
/// `notify.digest_hour`; returns how many were queued. The check and the
/// queuing are one write transaction, and the key is unique, so a restart
/// or a second process never queues a day's digest twice. A digest whose
/// hour passed while nothing ran (the machine was down) is queued late,
/// the same day; a day missed entirely is not made up.
pub async fn queue_digest_if_due(
    store: &SharedStore,
    mailer: &Mailer,
    clock: Clock,
) -> anyhow::Result<u32> {
    if mailer.notify_to.is_empty() {
        return Ok(0);
    }
    let now = clock.now();
    let local = clock::local(now)?;
    if local.hour < mailer.digest_hour {
        return Ok(0);
    }
    let day = crate::clock::day(local.date);
    let recipients = mailer.notify_to.clone();
    let domain = mailer.msgid_domain.clone();
    let hard_copy_days = mailer.hard_copy_days;
    store.run(move |s| {
        let tx = s.begin()?;
        let ops = tx.ops();
        let mut missing = Vec::new();
        for to in &recipients {
            if !ops.queued_key(&digest_key(&day, to))? {
                missing.push(to);
            }
        }
        if missing.is_empty() {
            return Ok(0);
        }
        // One view of the log for every address: the cases and the head
        // before any of this digest's own events.
        let facts = notice::digest(
            &ops.open_cases()?,
            local.date,
            &local.zone,
            now,
            ops.head()?,
            hard_copy_days,
        );
        let payload = serde_json::to_string(&facts)?;
        let payload_sha256 = sha256_hex(payload.as_bytes());
        let at = stamp(now);
        let mut queued = 0;
        for to in missing {
            let key = digest_key(&day, to);
            let tag = crate::msgid::fresh_tag(now, &[key.as_bytes()]);
            let msgid = format!("<digest.{day}.{tag}@{domain}>");
            let Some(outbox) = ops.queue_digest(&NewDigest {
                recipient: to,
                msgid: &msgid,
                dedupe_key: &key,
                payload: &payload,
                now: &at,
            })?
            else {
                continue;
            };
            audit::append(
                &ops,
                &at,
                SYSTEM_ACTOR,
                None,
                kind::DIGEST_QUEUED,
                &json!({
                    "outbox": outbox,
                    "message": null,
                    "kind": "digest",
                    "recipient": to,
                    "msgid": msgid,
                    "in_reply_to": null,
                    "day": day,
                    "zone": local.zone,
                    "dedupe_key": key,
                    "head": facts.head,
                    "payload_sha256": payload_sha256,
                }),
            )?;
            tracing::info!(day = %day, outbox, to = %to, open = facts.open.total, overdue = facts.overdue.total, quarantined = facts.quarantined.total, "digest queued");
            queued += 1;
        }
        tx.commit()?;
        Ok(queued)
    })
    .await
}

/// The wait after failed attempt `attempt` (1-based): 1, 2, 4 … minutes,
/// at most an hour.
pub fn backoff(attempt: i64) -> Duration {
    let failures = u32::try_from(attempt.max(0)).unwrap_or(u32::MAX);
    clock::backoff(failures, BACKOFF_MIN, BACKOFF_MAX)
}

/// The daemon's sending task: queues the daily digest when its hour has
/// come, and drains due rows when woken (after each pass) and every
/// [`WAKE_EVERY`] for retries, until `cancel`; the row in hand is
/// finished first. The mailer is re-read from `mailer` before
/// each drain, so a SIGHUP reload applies to the next one.
pub async fn worker(
    store: SharedStore,
    mailer: tokio::sync::watch::Receiver<Arc<Mailer>>,
    clock: Clock,
    wake: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
    on_send: OnSend,
) {
    let mut warned_unconfigured = false;
    while !cancel.is_cancelled() {
        let current = mailer.borrow().clone();
        if !current.can_send() && !warned_unconfigured {
            tracing::warn!("no [smtp] section: replies are queued but not sent");
            warned_unconfigured = true;
        }
        if let Err(e) = queue_digest_if_due(&store, &current, clock).await {
            tracing::error!(error = %format!("{e:#}"), "queuing the daily digest failed; trying again later");
        }
        if let Err(e) = drain(&store, &current, clock, Scope::Due, &cancel, &on_send).await {
            tracing::error!(error = %format!("{e:#}"), "sending replies failed; trying again later");
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(WAKE_EVERY) => {}
            () = cancel.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_minute_to_an_hour() {
        let minutes: Vec<u64> = (1..=9).map(|a| backoff(a).as_secs() / 60).collect();
        assert_eq!(minutes, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(0), BACKOFF_MIN);
        assert_eq!(backoff(i64::MAX), BACKOFF_MAX);
    }
}
