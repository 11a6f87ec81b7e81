//! Edge: the SQLite case log — every SQL statement of the program.
//!
//! One file (`store.database`) in WAL mode with `synchronous=FULL`, foreign
//! keys on and a busy timeout, so several processes (the daemon, `ingest`
//! from an MTA pipe, a person running `cases set-status`) can share it:
//! every write is one `BEGIN IMMEDIATE` transaction, which takes the write
//! lock up front and so never fails half-way on a lock upgrade. The schema
//! is versioned with `PRAGMA user_version` and migrated forward on open; a
//! database from a newer binary is refused rather than misread.
//!
//! Writers get a [`Tx`] (one transaction, possibly many messages) that
//! hands out [`Ops`], the small statements the pipeline orders. Raw messages, verdicts and audit
//! events are append-only: triggers refuse UPDATE and DELETE, and the
//! audit chain (see `audit`) proves it even if the triggers are dropped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use crate::accounts::{Account, Role, Session};
use crate::case::{Case, Field, Reference, ReplyKind, Status, UserNotice};
use crate::decide::Decision;
use crate::triage::RequestKind;

/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a read-only statement waits (WAL readers wait only in rare
/// moments such as recovery): a scrape must answer within Prometheus's
/// default 10-second timeout.
const READ_ONLY_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The hash that precedes the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Schema migrations; `MIGRATIONS[i]` takes `user_version` from `i` to
/// `i + 1`. Append only: a released migration is never edited.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const V1: &str = r#"
CREATE TABLE cases (
    id INTEGER PRIMARY KEY,
    reference TEXT NOT NULL UNIQUE,
    year INTEGER NOT NULL,
    number INTEGER NOT NULL CHECK (number > 0),
    status TEXT NOT NULL CHECK (status IN ('received', 'under_review', 'responded',
        'challenged', 'rejected', 'closed', 'quarantined', 'out_of_jurisdiction')),
    agency TEXT,
    requester TEXT,
    authenticated INTEGER NOT NULL CHECK (authenticated IN (0, 1)),
    kind TEXT NOT NULL CHECK (kind IN ('subpoena', 'search_warrant', 'court_order',
        'preservation', 'emergency', 'other')),
    emergency INTEGER NOT NULL CHECK (emergency IN (0, 1)),
    hard_copy_served TEXT,
    user_notice TEXT NOT NULL CHECK (user_notice IN ('unknown', 'permitted', 'prohibited',
        'prohibited_unconfirmed')),
    user_notice_until TEXT,
    deadline TEXT,
    opened_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (year, number)
) STRICT;

CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    case_id INTEGER NOT NULL REFERENCES cases (id),
    sha256 TEXT NOT NULL UNIQUE,
    raw BLOB NOT NULL,
    size INTEGER NOT NULL,
    msgid TEXT,
    subject TEXT,
    sender TEXT,
    source TEXT NOT NULL,
    received_at TEXT NOT NULL,
    findings TEXT NOT NULL
) STRICT;
CREATE INDEX messages_case ON messages (case_id);
CREATE INDEX messages_msgid ON messages (msgid);

CREATE TABLE verdicts (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL UNIQUE REFERENCES messages (id),
    decided_at TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('acknowledge', 'reject', 'quarantine')),
    reason TEXT NOT NULL,
    agency TEXT,
    reply INTEGER NOT NULL CHECK (reply IN (0, 1)),
    reply_suppressed TEXT,
    evidence TEXT NOT NULL
) STRICT;

CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    case_id INTEGER NOT NULL REFERENCES cases (id),
    message_id INTEGER NOT NULL REFERENCES messages (id),
    kind TEXT NOT NULL CHECK (kind IN ('acknowledgement', 'rejection')),
    recipient TEXT NOT NULL,
    msgid TEXT NOT NULL UNIQUE,
    in_reply_to TEXT,
    subject TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts INTEGER NOT NULL,
    next_attempt_at TEXT NOT NULL,
    queued_at TEXT NOT NULL,
    sent_at TEXT,
    last_error TEXT
) STRICT;
CREATE INDEX outbox_recipient ON outbox (recipient COLLATE NOCASE, queued_at);
CREATE INDEX outbox_case ON outbox (case_id, kind, queued_at);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);

CREATE TABLE deferrals (
    sha256 TEXT PRIMARY KEY,
    tries INTEGER NOT NULL,
    first_at TEXT NOT NULL,
    last_at TEXT NOT NULL,
    last_reason TEXT NOT NULL
) STRICT;

CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    case_id INTEGER REFERENCES cases (id),
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE
) STRICT;
CREATE INDEX events_case ON events (case_id);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
CREATE TRIGGER messages_no_update BEFORE UPDATE ON messages
BEGIN SELECT RAISE(ABORT, 'filed messages are append-only'); END;
CREATE TRIGGER messages_no_delete BEFORE DELETE ON messages
BEGIN SELECT RAISE(ABORT, 'filed messages are append-only'); END;
CREATE TRIGGER verdicts_no_update BEFORE UPDATE ON verdicts
BEGIN SELECT RAISE(ABORT, 'verdicts are append-only'); END;
CREATE TRIGGER verdicts_no_delete BEFORE DELETE ON verdicts
BEGIN SELECT RAISE(ABORT, 'verdicts are append-only'); END;
"#;

/// The outgoing queue's states (see `outbox`): `sending` is committed
/// before an SMTP transaction starts, so a crash in the middle of one is
/// visible afterwards; `unknown` is a transaction that broke after the
/// message content went out. `pending_since` starts the give-up window (a
/// person's resend starts a new one); `last_attempt_at` is when the latest
/// attempt started. SQLite cannot change a CHECK constraint in place, so
/// the table is rebuilt; nothing refers to it.
const V2: &str = r#"
CREATE TABLE outbox_v2 (
    id INTEGER PRIMARY KEY,
    case_id INTEGER NOT NULL REFERENCES cases (id),
    message_id INTEGER NOT NULL REFERENCES messages (id),
    kind TEXT NOT NULL CHECK (kind IN ('acknowledgement', 'rejection')),
    recipient TEXT NOT NULL,
    msgid TEXT NOT NULL UNIQUE,
    in_reply_to TEXT,
    subject TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'unknown')),
    attempts INTEGER NOT NULL,
    next_attempt_at TEXT NOT NULL,
    queued_at TEXT NOT NULL,
    sent_at TEXT,
    last_error TEXT,
    pending_since TEXT NOT NULL,
    last_attempt_at TEXT
) STRICT;
INSERT INTO outbox_v2 (id, case_id, message_id, kind, recipient, msgid, in_reply_to, subject,
    status, attempts, next_attempt_at, queued_at, sent_at, last_error, pending_since)
SELECT id, case_id, message_id, kind, recipient, msgid, in_reply_to, subject,
    status, attempts, next_attempt_at, queued_at, sent_at, last_error, queued_at FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v2 RENAME TO outbox;
CREATE INDEX outbox_recipient ON outbox (recipient COLLATE NOCASE, queued_at);
CREATE INDEX outbox_case ON outbox (case_id, kind, queued_at);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
"#;

/// The legal team's mail goes through the same queue as the replies:
/// `notice` (one per filed message and `notify.to` address, queued in the
/// filing's transaction) and `digest` (one per local day and address, not
/// about any one case, so without a case or message). Both carry what
/// they say as JSON in `payload`, fixed when queued and rendered when
/// sent (`notice`). `dedupe_key` is unique: a digest's
/// `digest:YYYY-MM-DD:address` makes a second queuing of the same day's
/// digest impossible, whichever process tries. The table is rebuilt, as
/// in V2, to change its CHECK constraints; every row is kept.
const V3: &str = r#"
CREATE TABLE outbox_v3 (
    id INTEGER PRIMARY KEY,
    case_id INTEGER REFERENCES cases (id),
    message_id INTEGER REFERENCES messages (id),
    kind TEXT NOT NULL CHECK (kind IN ('acknowledgement', 'rejection', 'notice', 'digest')),
    recipient TEXT NOT NULL,
    msgid TEXT NOT NULL UNIQUE,
    in_reply_to TEXT,
    subject TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'unknown')),
    attempts INTEGER NOT NULL,
    next_attempt_at TEXT NOT NULL,
    queued_at TEXT NOT NULL,
    sent_at TEXT,
    last_error TEXT,
    pending_since TEXT NOT NULL,
    last_attempt_at TEXT,
    dedupe_key TEXT UNIQUE,
    payload TEXT,
    CHECK ((kind = 'digest') = (case_id IS NULL)),
    CHECK ((kind = 'digest') = (message_id IS NULL)),
    CHECK ((kind IN ('notice', 'digest')) = (payload IS NOT NULL))
) STRICT;
INSERT INTO outbox_v3 (id, case_id, message_id, kind, recipient, msgid, in_reply_to, subject,
    status, attempts, next_attempt_at, queued_at, sent_at, last_error, pending_since,
    last_attempt_at)
SELECT id, case_id, message_id, kind, recipient, msgid, in_reply_to, subject,
    status, attempts, next_attempt_at, queued_at, sent_at, last_error, pending_since,
    last_attempt_at FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v3 RENAME TO outbox;
CREATE INDEX outbox_recipient ON outbox (recipient COLLATE NOCASE, queued_at);
CREATE INDEX outbox_case ON outbox (case_id, kind, queued_at);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
"#;

/// What an interrupted send needs to be finished without a person:
/// `content_started_at` is committed just before the message content goes
/// to the server (a row `sending` without it certainly delivered nothing,
/// and is tried again by itself); `bytes` are the exact bytes handed to
/// the server, kept so that what a recipient got can be shown and so that
/// a re-send after an ambiguous end is the same message, Message-ID,
/// Date and signature included; `auto_resends` counts those re-sends;
/// `claimed_by` names the process of the current attempt (`pid:start
/// time`), so that a dead one's rows are settled at once.
const V4: &str = r#"
ALTER TABLE outbox ADD COLUMN content_started_at TEXT;
ALTER TABLE outbox ADD COLUMN bytes BLOB;
ALTER TABLE outbox ADD COLUMN auto_resends INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
"#;

/// Verdicts may say `internal` (authenticated mail from the company's own
/// domains, `auth.own_domains`). The table is rebuilt to change its CHECK
/// constraint, every row kept with its id; the append-only triggers are
/// made again (dropping a table fires no trigger).
const V5: &str = r#"
CREATE TABLE verdicts_v5 (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL UNIQUE REFERENCES messages (id),
    decided_at TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('acknowledge', 'reject', 'quarantine', 'internal')),
    reason TEXT NOT NULL,
    agency TEXT,
    reply INTEGER NOT NULL CHECK (reply IN (0, 1)),
    reply_suppressed TEXT,
    evidence TEXT NOT NULL
) STRICT;
INSERT INTO verdicts_v5 (id, message_id, decided_at, decision, reason, agency, reply,
    reply_suppressed, evidence)
SELECT id, message_id, decided_at, decision, reason, agency, reply, reply_suppressed, evidence
FROM verdicts;
DROP TABLE verdicts;
ALTER TABLE verdicts_v5 RENAME TO verdicts;
CREATE TRIGGER verdicts_no_update BEFORE UPDATE ON verdicts
BEGIN SELECT RAISE(ABORT, 'verdicts are append-only'); END;
CREATE TRIGGER verdicts_no_delete BEFORE DELETE ON verdicts
BEGIN SELECT RAISE(ABORT, 'verdicts are append-only'); END;
"#;

/// The case board's accounts and sessions (`users`, `serve`), each case's
/// outcome for the transparency figures (`cases stats`), and when its
/// user was told (which ends the reminders to tell them). A password
/// is kept only as its argon2id PHC string; a session only as the SHA-256
/// of its cookie token, so a copy of the file opens no session. An account
/// is disabled, never deleted: the audit trail names it.
const V6: &str = r#"
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'editor')),
    password TEXT NOT NULL,
    disabled INTEGER NOT NULL CHECK (disabled IN (0, 1)),
    created_at TEXT NOT NULL,
    changed_at TEXT NOT NULL
) STRICT;
CREATE TRIGGER accounts_no_delete BEFORE DELETE ON accounts
BEGIN SELECT RAISE(ABORT, 'accounts are disabled, not deleted'); END;

CREATE TABLE sessions (
    token_sha256 TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts (id),
    csrf TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
) STRICT;
CREATE INDEX sessions_account ON sessions (account_id);

ALTER TABLE cases ADD COLUMN outcome TEXT
    CHECK (outcome IN ('data_produced', 'none_held', 'challenged'));
ALTER TABLE cases ADD COLUMN user_notified TEXT;
"#;

/// Failures a caller may want to tell apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{path}: the case log has schema version {found}, newer than this binary's {supported}; run a newer legal-intake"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("{0}: no case log there (nothing has been filed yet, or store.database is wrong)")]
    Missing(PathBuf),
}

/// The case log.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Set by [`Store::checkpoint_in_background`].
    checkpointer: Option<Checkpointer>,
}

impl Store {
    /// Opens the case log, creating and migrating it as needed.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        Self::open_with(path, true)
    }

    /// Opens an existing case log (read commands: nothing to create).
    pub fn open_existing(path: &Path) -> anyhow::Result<Store> {
        Self::open_with(path, false)
    }

    /// Opens an existing, current case log for reading only (the metrics
    /// endpoint): SQLite refuses any write through this connection, and
    /// nothing is created or migrated, so the schema must already be this
    /// binary's (the daemon opens the log for writing first).
    pub fn open_read_only(path: &Path) -> anyhow::Result<Store> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_path_buf()).into());
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open the case log {} to read", path.display()))?;
        conn.busy_timeout(READ_ONLY_BUSY_TIMEOUT)?;
        stable_plans(&conn)?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
            checkpointer: None,
        };
        let found = store.user_version()?;
        store.check_not_newer(found)?;
        if found != SCHEMA_VERSION {
            anyhow::bail!(
                "{}: the case log has schema version {found}, older than this binary's {SCHEMA_VERSION}; it is migrated when opened for writing",
                path.display()
            );
        }
        Ok(store)
    }

    fn open_with(path: &Path, create: bool) -> anyhow::Result<Store> {
        if !create && !path.exists() {
            return Err(StoreError::Missing(path.to_path_buf()).into());
        }
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(path, flags)
            .with_context(|| format!("cannot open the case log {}", path.display()))?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            checkpointer: None,
        };
        store
            .configure()
            .with_context(|| format!("cannot set up the case log {}", path.display()))?;
        store.migrate()?;
        Ok(store)
    }

    fn configure(&self) -> rusqlite::Result<()> {
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        stable_plans(&self.conn)?;
        // Switching to WAL needs a moment of exclusive access; when several
        // processes open a new file at once, the losers retry, for as long
        // as any other statement would wait for a lock.
        let started = std::time::Instant::now();
        loop {
            match self
                .conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
            {
                Ok(_) => break,
                Err(e) if is_busy(&e) && started.elapsed() < BUSY_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(e) => return Err(e),
            }
        }
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        self.conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(())
    }

    fn migrate(&mut self) -> anyhow::Result<()> {
        let found = self.user_version()?;
        if found == SCHEMA_VERSION {
            return self.check_not_newer(found);
        }
        self.check_not_newer(found)?;
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have migrated while this one waited.
        let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path,
                found,
                supported: SCHEMA_VERSION,
            }
            .into());
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.execute_batch(sql)
                .with_context(|| format!("schema migration {} failed", i + 1))?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()
            .with_context(|| format!("cannot migrate the case log {}", path.display()))?;
        Ok(())
    }

    fn user_version(&self) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn check_not_newer(&self, found: i64) -> anyhow::Result<()> {
        if found > SCHEMA_VERSION {
            return Err(self.too_new(found).into());
        }
        Ok(())
    }

    fn too_new(&self, found: i64) -> StoreError {
        StoreError::TooNew {
            path: self.path.clone(),
            found,
            supported: SCHEMA_VERSION,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE`: the write lock is
    /// taken now, waiting up to the busy timeout for other writers).
    pub fn begin(&mut self) -> anyhow::Result<Tx<'_>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("cannot start a write transaction on the case log")?;
        Ok(Tx {
            tx,
            checkpointer: self.checkpointer.as_ref(),
        })
    }

    /// For a connection that commits large batches back to back (the
    /// daemon, `ingest`): the write-ahead log is copied into the database
    /// by a thread of its own after each commit, instead of by the commit
    /// that happens to cross SQLite's 1,000-page mark, so the copy and its
    /// fsync overlap the next batch instead of delaying it. Should that
    /// thread fall behind, this connection still checkpoints by itself
    /// once the log passes [`WAL_BACKSTOP_PAGES`].
    pub fn checkpoint_in_background(&mut self) -> anyhow::Result<()> {
        if self.checkpointer.is_none() {
            self.checkpointer = Some(Checkpointer::start(&self.path)?);
            self.conn
                .pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES)?;
        }
        Ok(())
    }

    /// Statements that read, outside any write transaction (each sees the
    /// log as it is when it runs).
    pub fn read(&self) -> Ops<'_> {
        Ops { c: &self.conn }
    }

    /// A read transaction: every statement made through it sees the same
    /// state of the log, however many writers commit meanwhile (WAL), so a
    /// report built from several queries is consistent.
    pub fn snapshot(&mut self) -> anyhow::Result<Snapshot<'_>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .context("cannot start a read transaction on the case log")?;
        Ok(Snapshot { tx })
    }

    /// The hash of the latest audit event (the chain head), `None` while
    /// the log is empty.
    pub fn head(&self) -> anyhow::Result<Option<String>> {
        self.read().head()
    }
}

/// One write transaction.
pub struct Tx<'s> {
    tx: rusqlite::Transaction<'s>,
    checkpointer: Option<&'s Checkpointer>,
}

impl Tx<'_> {
    pub fn ops(&self) -> Ops<'_> {
        Ops { c: &self.tx }
    }

    /// Commits; nothing written is visible or durable before this returns.
    pub fn commit(self) -> anyhow::Result<()> {
        self.tx.commit().context("cannot commit to the case log")?;
        if let Some(c) = self.checkpointer {
            c.nudge();
        }
        Ok(())
    }
}

/// A consistent view of the log; dropping it ends the read transaction.
pub struct Snapshot<'s> {
    tx: rusqlite::Transaction<'s>,
}

impl Snapshot<'_> {
    pub fn ops(&self) -> Ops<'_> {
        Ops { c: &self.tx }
    }
}

/// A message already in the log.
#[derive(Debug, Clone)]
pub struct Filed {
    pub message_id: i64,
    pub case: Reference,
    /// The verdict's decision. A filing whose verdict is missing or not a
    /// decision (only a hand-edited log has one) counts as quarantined, so
    /// its message goes where a person looks.
    pub decision: Decision,
}

/// A case opened by the pipeline.
#[derive(Debug, Clone)]
pub struct NewCase<'a> {
    pub reference: Reference,
    pub status: Status,
    pub agency: Option<&'a str>,
    pub requester: Option<&'a str>,
    pub authenticated: bool,
    pub kind: RequestKind,
    pub emergency: bool,
    pub user_notice: UserNotice,
    pub now: &'a str,
}

/// A message to file.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub case_id: i64,
    pub sha256: &'a str,
    pub raw: &'a [u8],
    pub msgid: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub sender: Option<&'a str>,
    pub source: &'a str,
    pub received_at: &'a str,
    pub findings: &'a str,
}

/// A verdict to record with its evidence (JSON).
#[derive(Debug, Clone)]
pub struct NewVerdict<'a> {
    pub message_id: i64,
    pub decided_at: &'a str,
    pub decision: &'a str,
    pub reason: &'a str,
    pub agency: Option<&'a str>,
    pub reply: bool,
    pub reply_suppressed: Option<&'a str>,
    pub evidence: &'a str,
}

/// A reply to queue: what a renderer needs, nothing rendered.
#[derive(Debug, Clone)]
pub struct NewReply<'a> {
    pub case_id: i64,
    pub message_id: i64,
    pub kind: ReplyKind,
    pub recipient: &'a str,
    pub msgid: &'a str,
    pub in_reply_to: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub now: &'a str,
}

/// An internal notice to queue: one filed message, one `notify.to`
/// address; `payload` is the notice's content as JSON (see `notice`).
#[derive(Debug, Clone)]
pub struct NewNotice<'a> {
    pub case_id: i64,
    pub message_id: i64,
    pub recipient: &'a str,
    pub msgid: &'a str,
    /// The Message-ID of the case's first notice to this address.
    pub in_reply_to: Option<&'a str>,
    /// The filed message's subject (already sanitised).
    pub subject: Option<&'a str>,
    pub payload: &'a str,
    pub now: &'a str,
}

/// A daily digest to queue for one address.
#[derive(Debug, Clone)]
pub struct NewDigest<'a> {
    pub recipient: &'a str,
    pub msgid: &'a str,
    /// Unique over the whole queue (`digest:YYYY-MM-DD:address`).
    pub dedupe_key: &'a str,
    pub payload: &'a str,
    pub now: &'a str,
}

/// A stored message (the raw bytes only when asked for).
#[derive(Debug, Clone, Serialize)]
pub struct MessageRow {
    pub id: i64,
    #[serde(skip)]
    pub case_id: i64,
    pub sha256: String,
    pub size: i64,
    pub msgid: Option<String>,
    pub subject: Option<String>,
    pub sender: Option<String>,
    pub source: String,
    pub received_at: String,
    /// Triage findings.
    pub findings: serde_json::Value,
    /// The findings as stored (JSON text, hashed by the audit chain).
    #[serde(skip)]
    pub findings_json: String,
    #[serde(skip)]
    pub raw: Option<Vec<u8>>,
}

/// A stored verdict.
#[derive(Debug, Clone, Serialize)]
pub struct VerdictRow {
    pub id: i64,
    pub message_id: i64,
    pub decided_at: String,
    pub decision: String,
    pub reason: String,
    pub agency: Option<String>,
    pub reply: bool,
    pub reply_suppressed: Option<String>,
    /// The evidence as stored (JSON text, hashed by the audit chain).
    #[serde(skip)]
    pub evidence_json: String,
}

/// A row of the outgoing queue: a reply (`acknowledgement`,
/// `rejection`), an internal `notice` or a daily `digest`.
#[derive(Debug, Clone, Serialize)]
pub struct ReplyRow {
    pub id: i64,
    /// The case it is about; `None` for a digest.
    #[serde(skip)]
    pub case_id: Option<i64>,
    /// The filed message it answers or announces; `None` for a digest.
    pub message_id: Option<i64>,
    pub kind: String,
    pub recipient: String,
    pub msgid: String,
    pub in_reply_to: Option<String>,
    pub subject: Option<String>,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: String,
    pub queued_at: String,
    pub sent_at: Option<String>,
    pub last_error: Option<String>,
    /// The start of the current give-up window: when the reply was queued,
    /// or when a person last asked for it to be sent again.
    pub pending_since: String,
    /// When the latest attempt started.
    pub last_attempt_at: Option<String>,
    /// The unique key of a row that must never be queued twice (a day's
    /// digest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedupe_key: Option<String>,
    /// What a notice or digest says (JSON), fixed when it was queued.
    #[serde(skip)]
    pub payload: Option<String>,
    /// When the content of the latest attempt started to go out.
    pub content_started_at: Option<String>,
    /// Re-sends of the same bytes after an attempt whose outcome could
    /// not be known.
    pub auto_resends: i64,
    /// The process of the current attempt (`pid:start time`).
    #[serde(skip)]
    pub claimed_by: Option<String>,
    /// The size of the bytes handed to the server, once content went out.
    pub sent_bytes: Option<i64>,
}

/// The states of a queued reply (the `outbox.status` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyStatus {
    /// Waiting for its next attempt (`next_attempt_at`).
    Pending,
    /// An SMTP transaction for it has started (committed before it did).
    Sending,
    /// The SMTP server accepted it.
    Sent,
    /// Refused for good, or not deliverable within the give-up window.
    Failed,
    /// The content went out but no final answer came back (or the process
    /// died mid-transaction), and the automatic re-sends of the same bytes
    /// are used up: it may or may not have been delivered, and waits for a
    /// person.
    Unknown,
}

impl ReplyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyStatus::Pending => "pending",
            ReplyStatus::Sending => "sending",
            ReplyStatus::Sent => "sent",
            ReplyStatus::Failed => "failed",
            ReplyStatus::Unknown => "unknown",
        }
    }
}

/// What an attempt ended in, for [`Ops::finish_attempt`].
#[derive(Debug, Clone, Copy)]
pub enum AttemptEnd<'a> {
    /// Accepted by the server at this instant.
    Sent { at: &'a str },
    /// Not accepted; tried again at `next_attempt_at`.
    Retry {
        next_attempt_at: &'a str,
        error: &'a str,
    },
    /// Given up on.
    Failed { error: &'a str },
    /// Outcome not known.
    Unknown { error: &'a str },
}

/// A stored audit event.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub case_id: Option<i64>,
    pub kind: String,
    /// The data exactly as hashed (JSON text).
    pub data: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Statements on a connection, a transaction or a savepoint.
#[derive(Clone, Copy)]
pub struct Ops<'c> {
    c: &'c Connection,
}

const CASE_COLUMNS: &str = "id, reference, status, agency, requester, authenticated, kind, emergency, \
     hard_copy_served, user_notice, user_notice_until, deadline, opened_at, updated_at, outcome, \
     user_notified";

fn case_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Case> {
    let text = |i: usize| -> rusqlite::Result<String> { r.get(i) };
    let bad = |i: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("not a {what}").into(),
        )
    };
    Ok(Case {
        id: r.get(0)?,
        reference: text(1)?.parse().map_err(|_| bad(1, "reference"))?,
        status: text(2)?.parse().map_err(|_| bad(2, "status"))?,
        agency: r.get(3)?,
        requester: r.get(4)?,
        authenticated: r.get(5)?,
        kind: RequestKind::parse(&text(6)?).ok_or_else(|| bad(6, "request kind"))?,
        emergency: r.get(7)?,
        hard_copy_served: r.get(8)?,
        user_notice: text(9)?.parse().map_err(|_| bad(9, "user notice"))?,
        user_notice_until: r.get(10)?,
        deadline: r.get(11)?,
        opened_at: r.get(12)?,
        updated_at: r.get(13)?,
        outcome: r
            .get::<_, Option<String>>(14)?
            .map(|o| o.parse().map_err(|_| bad(14, "outcome")))
            .transpose()?,
        user_notified: r.get(15)?,
    })
}

/// A column list with each column qualified by a table alias (`c.id, c.reference, …`),
/// for the statements that join.
fn qualified(columns: &str, alias: &str) -> String {
    columns
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const ACCOUNT_COLUMNS: &str = "id, name, role, disabled, created_at, changed_at";

fn account_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    let role: String = r.get(2)?;
    Ok(Account {
        id: r.get(0)?,
        name: r.get(1)?,
        role: role.parse().map_err(|_| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Text,
                "not a role".into(),
            )
        })?,
        disabled: r.get(3)?,
        created_at: r.get(4)?,
        changed_at: r.get(5)?,
    })
}

const MESSAGE_COLUMNS: &str =
    "id, case_id, sha256, size, msgid, subject, sender, source, received_at, findings";

fn message_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRow> {
    let findings: String = r.get(9)?;
    Ok(MessageRow {
        id: r.get(0)?,
        case_id: r.get(1)?,
        sha256: r.get(2)?,
        size: r.get(3)?,
        msgid: r.get(4)?,
        subject: r.get(5)?,
        sender: r.get(6)?,
        source: r.get(7)?,
        received_at: r.get(8)?,
        findings: serde_json::from_str(&findings).unwrap_or(serde_json::Value::Null),
        findings_json: findings,
        raw: None,
    })
}

const VERDICT_COLUMNS: &str = "v.id, v.message_id, v.decided_at, v.decision, v.reason, v.agency, v.reply, v.reply_suppressed, v.evidence";

fn verdict_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VerdictRow> {
    Ok(VerdictRow {
        id: r.get(0)?,
        message_id: r.get(1)?,
        decided_at: r.get(2)?,
        decision: r.get(3)?,
        reason: r.get(4)?,
        agency: r.get(5)?,
        reply: r.get(6)?,
        reply_suppressed: r.get(7)?,
        evidence_json: r.get(8)?,
    })
}

const REPLY_COLUMNS: &str = "id, case_id, message_id, kind, recipient, msgid, in_reply_to, subject, \
     status, attempts, next_attempt_at, queued_at, sent_at, last_error, pending_since, last_attempt_at, \
     dedupe_key, payload, content_started_at, auto_resends, claimed_by, \
     CASE WHEN bytes IS NULL THEN NULL ELSE length(bytes) END";

fn reply_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReplyRow> {
    Ok(ReplyRow {
        id: r.get(0)?,
        case_id: r.get(1)?,
        message_id: r.get(2)?,
        kind: r.get(3)?,
        recipient: r.get(4)?,
        msgid: r.get(5)?,
        in_reply_to: r.get(6)?,
        subject: r.get(7)?,
        status: r.get(8)?,
        attempts: r.get(9)?,
        next_attempt_at: r.get(10)?,
        queued_at: r.get(11)?,
        sent_at: r.get(12)?,
        last_error: r.get(13)?,
        pending_since: r.get(14)?,
        last_attempt_at: r.get(15)?,
        dedupe_key: r.get(16)?,
        payload: r.get(17)?,
        content_started_at: r.get(18)?,
        auto_resends: r.get(19)?,
        claimed_by: r.get(20)?,
        sent_bytes: r.get(21)?,
    })
}

const EVENT_COLUMNS: &str = "id, at, actor, case_id, kind, data, prev_hash, hash";

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        id: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        case_id: r.get(3)?,
        kind: r.get(4)?,
        data: r.get(5)?,
        prev_hash: r.get(6)?,
        hash: r.get(7)?,
    })
}

/// How large (in pages) the write-ahead log of a connection with a
/// background checkpointer may grow before that connection checkpoints by
/// itself: 64 MiB with 4 KiB pages.
const WAL_BACKSTOP_PAGES: i64 = 16_384;

/// Turns on SQLite's query planner stability guarantee: a statement's plan
/// no longer depends on the values bound to it. Without it, the bundled
/// SQLite (built with STAT4) may mark a parameter as able to change the
/// plan, and then every new binding recompiles the cached statement on its
/// next step: a parse and a plan for each lookup by hash or reference.
/// The case log's queries are simple lookups through indexes chosen by
/// their shape, so one plan per statement is the right plan.
fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// A store shared between a process's tasks. SQLite calls block, so every
/// use runs on a blocking thread, one at a time behind the lock.
#[derive(Clone)]
pub struct SharedStore(Arc<Mutex<Store>>);

impl SharedStore {
    pub fn new(store: Store) -> SharedStore {
        SharedStore(Arc::new(Mutex::new(store)))
    }

    /// Starts `f` with the store on a blocking thread; the handle gives its
    /// result.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> anyhow::Result<T> + Send + 'static,
    ) -> tokio::task::JoinHandle<anyhow::Result<T>> {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = store
                .lock()
                .map_err(|_| anyhow::anyhow!("the case log lock is poisoned"))?;
            f(&mut s)
        })
    }

    /// Runs `f` with the store on a blocking thread.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.spawn(f).await?
    }
}

/// A thread with its own connection that runs a passive checkpoint (one
/// that never waits for, or blocks, readers and the writer) each time it
/// is nudged; nudges that arrive while it works fold into one.
struct Checkpointer {
    nudge: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> anyhow::Result<Checkpointer> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open the case log {} to checkpoint", path.display()))?;
        // The copy is synced to the database file before the log is reused.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let (nudge, nudged) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("case-log-checkpoint".into())
            .spawn(move || {
                while nudged.recv().is_ok() {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::warn!(error = %e, "checkpointing the case log failed; the next commit retries");
                    }
                }
            })
            .context("cannot start the case log's checkpoint thread")?;
        Ok(Checkpointer {
            nudge: Some(nudge),
            thread: Some(thread),
        })
    }

    fn nudge(&self) {
        if let Some(n) = &self.nudge {
            // Full: a checkpoint is due already and will cover this commit.
            let _ = n.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    /// Lets the checkpoint in progress finish; closing the last connection
    /// then checkpoints the rest.
    fn drop(&mut self) {
        self.nudge.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

impl Ops<'_> {
    // ---- Filing ------------------------------------------------------------

    /// The filing of a message with these bytes, if there is one.
    pub fn filed(&self, sha256: &str) -> anyhow::Result<Option<Filed>> {
        Ok(self
            .c
            .prepare_cached(
                "SELECT m.id, c.reference, v.decision FROM messages m \
                 JOIN cases c ON c.id = m.case_id \
                 LEFT JOIN verdicts v ON v.message_id = m.id WHERE m.sha256 = ?1",
            )?
            .query_row([sha256], |r| {
                let reference: String = r.get(1)?;
                Ok((r.get(0)?, reference, r.get::<_, Option<String>>(2)?))
            })
            .optional()?
            .map(|(message_id, reference, decision)| Filed {
                message_id,
                case: reference
                    .parse()
                    .unwrap_or(Reference { year: 0, number: 0 }),
                decision: decision
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(Decision::Quarantine),
            }))
    }

    /// How many times the message with these bytes was deferred.
    pub fn deferrals(&self, sha256: &str) -> anyhow::Result<u32> {
        Ok(self
            .c
            .prepare_cached("SELECT tries FROM deferrals WHERE sha256 = ?1")?
            .query_row([sha256], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    /// Counts one more deferral; returns the new count.
    pub fn record_deferral(&self, sha256: &str, now: &str, reason: &str) -> anyhow::Result<u32> {
        Ok(self
            .c
            .prepare_cached(
                "INSERT INTO deferrals (sha256, tries, first_at, last_at, last_reason) \
                 VALUES (?1, 1, ?2, ?2, ?3) \
                 ON CONFLICT (sha256) DO UPDATE SET tries = tries + 1, last_at = ?2, last_reason = ?3 \
                 RETURNING tries",
            )?
            .query_row(params![sha256, now, reason], |r| r.get(0))?)
    }

    /// Replies queued to this address since `since` (any case, either
    /// reply kind; the legal team's notices and digests are not replies),
    /// counted up to `cap`: the decision only asks whether the daily limit
    /// is reached, and a busy sender must not make every filing slower.
    pub fn replies_to_since(&self, recipient: &str, since: &str, cap: u32) -> anyhow::Result<u32> {
        Ok(self
            .c
            .prepare_cached(
                "SELECT count(*) FROM (SELECT 1 FROM outbox \
                 WHERE recipient = ?1 COLLATE NOCASE AND queued_at > ?2 \
                 AND kind IN ('acknowledgement', 'rejection') LIMIT ?3)",
            )?
            .query_row(params![recipient, since, cap], |r| r.get(0))?)
    }

    /// Whether a reply of this kind was queued for the case since `since`.
    pub fn replied_to_case_since(
        &self,
        case_id: i64,
        kind: ReplyKind,
        since: &str,
    ) -> anyhow::Result<bool> {
        Ok(self
            .c
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE case_id = ?1 AND kind = ?2 AND queued_at > ?3)",
            )?
            .query_row(params![case_id, kind.as_str(), since], |r| r.get(0))?)
    }

    /// The case holding a message, or a reply or notice of ours, with
    /// this Message-ID (a digest is about no one case).
    pub fn case_by_msgid(&self, msgid: &str) -> anyhow::Result<Option<Case>> {
        let id: Option<i64> = self
            .c
            .prepare_cached(
                "SELECT case_id FROM messages WHERE msgid = ?1 \
                 UNION ALL SELECT case_id FROM outbox WHERE msgid = ?1 AND case_id IS NOT NULL \
                 LIMIT 1",
            )?
            .query_row([msgid], |r| r.get(0))
            .optional()?;
        match id {
            Some(id) => self.case_by_id(id),
            None => Ok(None),
        }
    }

    pub fn case_by_id(&self, id: i64) -> anyhow::Result<Option<Case>> {
        Ok(self
            .c
            .prepare_cached(&format!("SELECT {CASE_COLUMNS} FROM cases WHERE id = ?1"))?
            .query_row([id], case_row)
            .optional()?)
    }

    pub fn case(&self, reference: Reference) -> anyhow::Result<Option<Case>> {
        Ok(self
            .c
            .prepare_cached(&format!(
                "SELECT {CASE_COLUMNS} FROM cases WHERE reference = ?1"
            ))?
            .query_row([reference.to_string()], case_row)
            .optional()?)
    }

    /// The next reference of the year: one more than the highest, so the
    /// numbering has no gaps (the write lock is held, and a rolled-back
    /// case gives its number back).
    pub fn next_reference(&self, year: i32) -> anyhow::Result<Reference> {
        let max: Option<u32> = self
            .c
            .prepare_cached("SELECT max(number) FROM cases WHERE year = ?1")?
            .query_row([year], |r| r.get(0))?;
        Ok(Reference {
            year,
            number: max.unwrap_or(0) + 1,
        })
    }

    pub fn insert_case(&self, c: &NewCase<'_>) -> anyhow::Result<i64> {
        self.c
            .prepare_cached(
                "INSERT INTO cases (reference, year, number, status, agency, requester, authenticated, \
                 kind, emergency, user_notice, opened_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
            )?
            .execute(params![
                c.reference.to_string(),
                c.reference.year,
                c.reference.number,
                c.status.as_str(),
                c.agency,
                c.requester,
                c.authenticated,
                c.kind.as_str(),
                c.emergency,
                c.user_notice.as_str(),
                c.now,
            ])?;
        Ok(self.c.last_insert_rowid())
    }

    /// Notes that the case changed (a message joined it).
    pub fn touch_case(&self, case_id: i64, now: &str) -> anyhow::Result<()> {
        self.c
            .prepare_cached("UPDATE cases SET updated_at = ?2 WHERE id = ?1")?
            .execute(params![case_id, now])?;
        Ok(())
    }

    pub fn set_status(&self, case_id: i64, status: Status, now: &str) -> anyhow::Result<()> {
        self.c
            .prepare_cached("UPDATE cases SET status = ?2, updated_at = ?3 WHERE id = ?1")?
            .execute(params![case_id, status.as_str(), now])?;
        Ok(())
    }

    /// Sets one field; `value` is as [`Case::value`] gives it.
    pub fn set_field(
        &self,
        case_id: i64,
        field: Field,
        value: &serde_json::Value,
        now: &str,
    ) -> anyhow::Result<()> {
        // The column name comes from this match, never from input.
        let column = match field {
            Field::Kind => "kind",
            Field::Emergency => "emergency",
            Field::HardCopyServed => "hard_copy_served",
            Field::UserNotice => "user_notice",
            Field::UserNoticeUntil => "user_notice_until",
            Field::UserNotified => "user_notified",
            Field::Deadline => "deadline",
            Field::Outcome => "outcome",
        };
        let sql = format!("UPDATE cases SET {column} = ?2, updated_at = ?3 WHERE id = ?1");
        let mut stmt = self.c.prepare_cached(&sql)?;
        match value {
            serde_json::Value::Bool(b) => stmt.execute(params![case_id, b, now])?,
            serde_json::Value::String(s) => stmt.execute(params![case_id, s, now])?,
            serde_json::Value::Null => stmt.execute(params![case_id, None::<String>, now])?,
            other => anyhow::bail!("a case field cannot hold {other}"),
        };
        Ok(())
    }

    pub fn insert_message(&self, m: &NewMessage<'_>) -> anyhow::Result<i64> {
        self.c
            .prepare_cached(
                "INSERT INTO messages (case_id, sha256, raw, size, msgid, subject, sender, source, \
                 received_at, findings) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                m.case_id,
                m.sha256,
                m.raw,
                m.raw.len() as i64,
                m.msgid,
                m.subject,
                m.sender,
                m.source,
                m.received_at,
                m.findings,
            ])?;
        Ok(self.c.last_insert_rowid())
    }

    pub fn insert_verdict(&self, v: &NewVerdict<'_>) -> anyhow::Result<i64> {
        self.c
            .prepare_cached(
                "INSERT INTO verdicts (message_id, decided_at, decision, reason, agency, reply, \
                 reply_suppressed, evidence) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                v.message_id,
                v.decided_at,
                v.decision,
                v.reason,
                v.agency,
                v.reply,
                v.reply_suppressed,
                v.evidence,
            ])?;
        Ok(self.c.last_insert_rowid())
    }

    /// Queues a reply: pending, never tried, due now.
    pub fn queue_reply(&self, r: &NewReply<'_>) -> anyhow::Result<i64> {
        self.c
            .prepare_cached(
                "INSERT INTO outbox (case_id, message_id, kind, recipient, msgid, in_reply_to, subject, \
                 status, attempts, next_attempt_at, queued_at, pending_since) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', 0, ?8, ?8, ?8)",
            )?
            .execute(params![
                r.case_id,
                r.message_id,
                r.kind.as_str(),
                r.recipient,
                r.msgid,
                r.in_reply_to,
                r.subject,
                r.now,
            ])?;
        Ok(self.c.last_insert_rowid())
    }

    /// Queues an internal notice: pending, never tried, due now.
    pub fn queue_notice(&self, n: &NewNotice<'_>) -> anyhow::Result<i64> {
        self.c
            .prepare_cached(
                "INSERT INTO outbox (case_id, message_id, kind, recipient, msgid, in_reply_to, subject, \
                 status, attempts, next_attempt_at, queued_at, pending_since, payload) \
                 VALUES (?1, ?2, 'notice', ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?7, ?7, ?8)",
            )?
            .execute(params![
                n.case_id,
                n.message_id,
                n.recipient,
                n.msgid,
                n.in_reply_to,
                n.subject,
                n.now,
                n.payload,
            ])?;
        Ok(self.c.last_insert_rowid())
    }

    /// The Message-ID of the first notice about a case to this address
    /// (the one later notices thread to).
    pub fn first_notice(&self, case_id: i64, recipient: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .c
            .prepare_cached(
                "SELECT msgid FROM outbox WHERE case_id = ?1 AND kind = 'notice' \
                 AND recipient = ?2 COLLATE NOCASE ORDER BY id LIMIT 1",
            )?
            .query_row(params![case_id, recipient], |r| r.get(0))
            .optional()?)
    }

    /// Queues a digest unless a row with its `dedupe_key` exists; `None`
    /// when one does (nothing written).
    pub fn queue_digest(&self, d: &NewDigest<'_>) -> anyhow::Result<Option<i64>> {
        let n = self
            .c
            .prepare_cached(
                "INSERT INTO outbox (kind, recipient, msgid, status, attempts, next_attempt_at, \
                 queued_at, pending_since, dedupe_key, payload) \
                 VALUES ('digest', ?1, ?2, 'pending', 0, ?3, ?3, ?3, ?4, ?5) \
                 ON CONFLICT (dedupe_key) DO NOTHING",
            )?
            .execute(params![
                d.recipient,
                d.msgid,
                d.now,
                d.dedupe_key,
                d.payload
            ])?;
        Ok((n == 1).then(|| self.c.last_insert_rowid()))
    }

    /// Whether a row with this `dedupe_key` was ever queued.
    pub fn queued_key(&self, dedupe_key: &str) -> anyhow::Result<bool> {
        Ok(self
            .c
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox WHERE dedupe_key = ?1)")?
            .query_row([dedupe_key], |r| r.get(0))?)
    }

    // ---- The outgoing queue ------------------------------------------------
    //
    // Every change below moves a row from one stated status to another and
    // reports whether it did: a row another process moved first is left
    // alone.

    pub fn reply(&self, id: i64) -> anyhow::Result<Option<ReplyRow>> {
        Ok(self
            .c
            .prepare_cached(&format!("SELECT {REPLY_COLUMNS} FROM outbox WHERE id = ?1"))?
            .query_row([id], reply_row)
            .optional()?)
    }

    /// Pending replies, soonest due first: those due by `due_by`, or all of
    /// them when it is `None`.
    pub fn pending_replies(&self, due_by: Option<&str>) -> anyhow::Result<Vec<ReplyRow>> {
        let mut stmt = self.c.prepare_cached(&format!(
            "SELECT {REPLY_COLUMNS} FROM outbox WHERE status = 'pending' \
             AND (?1 IS NULL OR next_attempt_at <= ?1) ORDER BY next_attempt_at, id"
        ))?;
        let rows = stmt.query_map([due_by], reply_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every row `sending` now.
    pub fn sending(&self) -> anyhow::Result<Vec<ReplyRow>> {
        let mut stmt = self.c.prepare_cached(&format!(
            "SELECT {REPLY_COLUMNS} FROM outbox WHERE status = 'sending' ORDER BY id"
        ))?;
        let rows = stmt.query_map([], reply_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// pending → sending: an attempt starts now. False when the row is not
    /// pending (another process took it).
    pub fn start_attempt(&self, id: i64, now: &str, claimant: &str) -> anyhow::Result<bool> {
        let n = self
            .c
            .prepare_cached(
                "UPDATE outbox SET status = 'sending', attempts = attempts + 1, \
                 last_attempt_at = ?2, content_started_at = NULL, claimed_by = ?3 \
                 WHERE id = ?1 AND status = 'pending'",
            )?
            .execute(params![id, now, claimant])?;
        Ok(n == 1)
    }

    /// The content of a `sending` row starts to go out now, as `bytes`
    /// (kept: a later attempt sends them again unchanged). False when the
    /// row is not `sending`.
    pub fn start_content(&self, id: i64, now: &str, bytes: &[u8]) -> anyhow::Result<bool> {
        let n = self
            .c
            .prepare_cached(
                "UPDATE outbox SET content_started_at = ?2, bytes = ?3 \
                 WHERE id = ?1 AND status = 'sending'",
            )?
            .execute(params![id, now, bytes])?;
        Ok(n == 1)
    }

    /// The bytes last handed to the server for a row, if content went out.
    pub fn sent_bytes(&self, id: i64) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self
            .c
            .prepare_cached("SELECT bytes FROM outbox WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?
            .flatten())
    }

    /// sending → pending, due at `next_attempt_at`, as an automatic
    /// re-send of the same bytes after an outcome that could not be known.
    /// False when the row is not `sending`.
    pub fn resend_automatically(
        &self,
        id: i64,
        next_attempt_at: &str,
        error: &str,
    ) -> anyhow::Result<bool> {
        let n = self
            .c
            .prepare_cached(
                "UPDATE outbox SET status = 'pending', next_attempt_at = ?2, last_error = ?3, \
                 auto_resends = auto_resends + 1 WHERE id = ?1 AND status = 'sending'",
            )?
            .execute(params![id, next_attempt_at, error])?;
        Ok(n == 1)
    }

    /// sending → sent | pending | failed | unknown. False when the row is
    /// not `sending` (it was already settled by someone else).
    pub fn finish_attempt(&self, id: i64, end: AttemptEnd<'_>) -> anyhow::Result<bool> {
        let (status, next, sent_at, error) = match end {
            AttemptEnd::Sent { at } => (ReplyStatus::Sent, None, Some(at), None),
            AttemptEnd::Retry {
                next_attempt_at,
                error,
            } => (
                ReplyStatus::Pending,
                Some(next_attempt_at),
                None,
                Some(error),
            ),
            AttemptEnd::Failed { error } => (ReplyStatus::Failed, None, None, Some(error)),
            AttemptEnd::Unknown { error } => (ReplyStatus::Unknown, None, None, Some(error)),
        };
        let n = self
            .c
            .prepare_cached(
                "UPDATE outbox SET status = ?2, next_attempt_at = coalesce(?3, next_attempt_at), \
                 sent_at = ?4, last_error = coalesce(?5, last_error) \
                 WHERE id = ?1 AND status = 'sending'",
            )?
            .execute(params![id, status.as_str(), next, sent_at, error])?;
        Ok(n == 1)
    }

    /// unknown | failed → pending, due now, with a new give-up window and
    /// the attempt count started afresh (the events keep the old one).
    /// False when the row is in neither state.
    pub fn requeue_reply(&self, id: i64, now: &str) -> anyhow::Result<bool> {
        let n = self
            .c
            .prepare_cached(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?2, \
                 pending_since = ?2, auto_resends = 0, \
                 bytes = CASE status WHEN 'unknown' THEN bytes END \
                 WHERE id = ?1 AND status IN ('unknown', 'failed')",
            )?
            .execute(params![id, now])?;
        Ok(n == 1)
    }

    /// A filed message by row id, with its bytes when `with_raw`.
    pub fn message(&self, id: i64, with_raw: bool) -> anyhow::Result<Option<MessageRow>> {
        Ok(self
            .c
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS}, raw FROM messages WHERE id = ?1"
            ))?
            .query_row([id], |r| {
                let mut m = message_row(r)?;
                if with_raw {
                    m.raw = Some(r.get(10)?);
                }
                Ok(m)
            })
            .optional()?)
    }

    // ---- The audit chain ---------------------------------------------------

    /// The id and hash of the latest event.
    pub fn last_event(&self) -> anyhow::Result<Option<(i64, String)>> {
        Ok(self
            .c
            .prepare_cached("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    pub fn head(&self) -> anyhow::Result<Option<String>> {
        Ok(self.last_event()?.map(|(_, h)| h))
    }

    /// Appends an event whose id and hashes were computed by `audit`.
    pub fn insert_event(&self, e: &EventRow) -> anyhow::Result<()> {
        self.c
            .prepare_cached(&format!(
                "INSERT INTO events ({EVENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ))?
            .execute(params![
                e.id,
                e.at,
                e.actor,
                e.case_id,
                e.kind,
                e.data,
                e.prev_hash,
                e.hash
            ])?;
        Ok(())
    }

    /// Every event in id order, one at a time.
    pub fn each_event(
        &self,
        mut f: impl FnMut(EventRow) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut stmt = self
            .c
            .prepare(&format!("SELECT {EVENT_COLUMNS} FROM events ORDER BY id"))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            f(event_row(r)?)?;
        }
        Ok(())
    }

    /// Every stored message's id, recorded hash and bytes, one at a time
    /// (a case log can be larger than memory).
    pub fn each_message_raw(
        &self,
        mut f: impl FnMut(i64, String, &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut stmt = self
            .c
            .prepare("SELECT id, sha256, raw FROM messages ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let raw = r.get_ref(2)?.as_blob().unwrap_or_default();
            f(r.get(0)?, r.get(1)?, raw)?;
        }
        Ok(())
    }

    // ---- Accounts and sessions of the case board ---------------------------

    pub fn insert_account(
        &self,
        name: &str,
        role: Role,
        phc: &str,
        now: &str,
    ) -> anyhow::Result<i64> {
        self.c.execute(
            "INSERT INTO accounts (name, role, password, disabled, created_at, changed_at) \
             VALUES (?1, ?2, ?3, 0, ?4, ?4)",
            params![name, role.as_str(), phc, now],
        )?;
        Ok(self.c.last_insert_rowid())
    }

    /// An account and its password's PHC string.
    pub fn account(&self, name: &str) -> anyhow::Result<Option<(Account, String)>> {
        Ok(self
            .c
            .query_row(
                &format!("SELECT {ACCOUNT_COLUMNS}, password FROM accounts WHERE name = ?1"),
                [name],
                |r| Ok((account_row(r)?, r.get(6)?)),
            )
            .optional()?)
    }

    pub fn accounts(&self) -> anyhow::Result<Vec<Account>> {
        let mut stmt = self.c.prepare(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY name"
        ))?;
        let rows = stmt.query_map([], account_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_account_password(&self, id: i64, phc: &str, now: &str) -> anyhow::Result<()> {
        self.c.execute(
            "UPDATE accounts SET password = ?2, changed_at = ?3 WHERE id = ?1",
            params![id, phc, now],
        )?;
        Ok(())
    }

    pub fn set_account_disabled(&self, id: i64, disabled: bool, now: &str) -> anyhow::Result<()> {
        self.c.execute(
            "UPDATE accounts SET disabled = ?2, changed_at = ?3 WHERE id = ?1",
            params![id, disabled, now],
        )?;
        Ok(())
    }

    pub fn insert_session(&self, s: &Session, token_sha256: &str) -> anyhow::Result<()> {
        self.c.execute(
            "INSERT INTO sessions (token_sha256, account_id, csrf, created_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                token_sha256,
                s.account.id,
                s.csrf,
                s.created_at,
                s.expires_at
            ],
        )?;
        Ok(())
    }

    /// The live session whose token hashes to `token_sha256`: not expired
    /// at `now`, its account not disabled.
    pub fn session(&self, token_sha256: &str, now: &str) -> anyhow::Result<Option<Session>> {
        let columns = qualified(ACCOUNT_COLUMNS, "a");
        Ok(self
            .c
            .query_row(
                &format!(
                    "SELECT {columns}, s.csrf, s.created_at, s.expires_at \
                     FROM sessions s JOIN accounts a ON a.id = s.account_id \
                     WHERE s.token_sha256 = ?1 AND s.expires_at > ?2 AND a.disabled = 0"
                ),
                [token_sha256, now],
                |r| {
                    Ok(Session {
                        account: account_row(r)?,
                        csrf: r.get(6)?,
                        created_at: r.get(7)?,
                        expires_at: r.get(8)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn delete_session(&self, token_sha256: &str) -> anyhow::Result<bool> {
        Ok(self.c.execute(
            "DELETE FROM sessions WHERE token_sha256 = ?1",
            [token_sha256],
        )? == 1)
    }

    /// Ends every session of an account (disabled, or its password
    /// changed); returns how many there were.
    pub fn delete_sessions_of(&self, account_id: i64) -> anyhow::Result<usize> {
        Ok(self
            .c
            .execute("DELETE FROM sessions WHERE account_id = ?1", [account_id])?)
    }

    pub fn delete_expired_sessions(&self, now: &str) -> anyhow::Result<usize> {
        Ok(self
            .c
            .execute("DELETE FROM sessions WHERE expires_at <= ?1", [now])?)
    }

    // ---- Reading cases -----------------------------------------------------

    pub fn cases(&self, status: Option<Status>) -> anyhow::Result<Vec<Case>> {
        let mut stmt = self.c.prepare(&format!(
            "SELECT {CASE_COLUMNS} FROM cases WHERE ?1 IS NULL OR status = ?1 ORDER BY year, number"
        ))?;
        let rows = stmt.query_map([status.map(|s| s.as_str())], case_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Cases whose reference, agency or requester, or one of whose
    /// messages' subject, sender, triage findings (account IDs, addresses,
    /// IPs) or raw text contains `needle`, case-insensitively (ASCII);
    /// oldest first. An empty needle matches every case.
    pub fn search(&self, needle: &str) -> anyhow::Result<Vec<Case>> {
        let columns = qualified(CASE_COLUMNS, "c");
        let mut stmt = self.c.prepare(&format!(
            "SELECT {columns} FROM cases c WHERE ?1 = '' \
               OR instr(lower(c.reference), ?1) OR instr(lower(coalesce(c.agency, '')), ?1) \
               OR instr(lower(coalesce(c.requester, '')), ?1) \
               OR EXISTS (SELECT 1 FROM messages m WHERE m.case_id = c.id AND ( \
                   instr(lower(coalesce(m.subject, '')), ?1) OR instr(lower(coalesce(m.sender, '')), ?1) \
                   OR instr(lower(m.findings), ?1) OR instr(lower(CAST(m.raw AS TEXT)), ?1))) \
             ORDER BY c.year, c.number"
        ))?;
        let rows = stmt.query_map([needle.to_ascii_lowercase()], case_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The cases of a year, each with the decision on its opening message
    /// (`None` without a verdict), in reference order (`cases stats`).
    pub fn cases_of_year(&self, year: i32) -> anyhow::Result<Vec<(Case, Option<String>)>> {
        let columns = qualified(CASE_COLUMNS, "c");
        let mut stmt = self.c.prepare(&format!(
            "SELECT {columns}, (SELECT v.decision FROM messages m JOIN verdicts v ON v.message_id = m.id \
               WHERE m.case_id = c.id ORDER BY m.id LIMIT 1) \
             FROM cases c WHERE c.year = ?1 ORDER BY c.number"
        ))?;
        let rows = stmt.query_map([year], |r| Ok((case_row(r)?, r.get(16)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Cases not closed, oldest first (the daily digest).
    pub fn open_cases(&self) -> anyhow::Result<Vec<Case>> {
        let mut stmt = self.c.prepare(&format!(
            "SELECT {CASE_COLUMNS} FROM cases WHERE status != 'closed' ORDER BY year, number"
        ))?;
        let rows = stmt.query_map([], case_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many messages are filed on a case.
    pub fn message_count(&self, case_id: i64) -> anyhow::Result<i64> {
        Ok(self
            .c
            .prepare_cached("SELECT count(*) FROM messages WHERE case_id = ?1")?
            .query_row([case_id], |r| r.get(0))?)
    }

    /// Every message and verdict row of the log without the bytes (the
    /// audit cross-checks).
    pub fn all_messages(&self) -> anyhow::Result<Vec<MessageRow>> {
        let mut stmt = self.c.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages ORDER BY id"
        ))?;
        let rows = stmt.query_map([], message_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn all_verdicts(&self) -> anyhow::Result<Vec<VerdictRow>> {
        let mut stmt = self.c.prepare(&format!(
            "SELECT {VERDICT_COLUMNS} FROM verdicts v ORDER BY v.id"
        ))?;
        let rows = stmt.query_map([], verdict_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn all_replies(&self) -> anyhow::Result<Vec<ReplyRow>> {
        let mut stmt = self
            .c
            .prepare(&format!("SELECT {REPLY_COLUMNS} FROM outbox ORDER BY id"))?;
        let rows = stmt.query_map([], reply_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The messages of a case, in filing order, with their bytes when
    /// `with_raw`.
    pub fn messages_of(&self, case_id: i64, with_raw: bool) -> anyhow::Result<Vec<MessageRow>> {
        let mut stmt = self.c.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS}, raw FROM messages WHERE case_id = ?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([case_id], |r| {
            let mut m = message_row(r)?;
            if with_raw {
                m.raw = Some(r.get(10)?);
            }
            Ok(m)
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn verdicts_of(&self, case_id: i64) -> anyhow::Result<Vec<VerdictRow>> {
        let mut stmt = self.c.prepare(&format!(
            "SELECT {VERDICT_COLUMNS} FROM verdicts v JOIN messages m ON m.id = v.message_id \
             WHERE m.case_id = ?1 ORDER BY v.id"
        ))?;
        let rows = stmt.query_map([case_id], verdict_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn replies_of(&self, case_id: i64) -> anyhow::Result<Vec<ReplyRow>> {
        let mut stmt = self.c.prepare(&format!(
            "SELECT {REPLY_COLUMNS} FROM outbox WHERE case_id = ?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([case_id], reply_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn events_of(&self, case_id: i64) -> anyhow::Result<Vec<EventRow>> {
        let mut stmt = self.c.prepare(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE case_id = ?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([case_id], event_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether some event has this hash.
    pub fn event_with_hash(&self, hash: &str) -> anyhow::Result<Option<i64>> {
        Ok(self
            .c
            .prepare_cached("SELECT id FROM events WHERE hash = ?1")?
            .query_row([hash], |r| r.get(0))
            .optional()?)
    }

    /// All cases (audit replay).
    pub fn all_cases(&self) -> anyhow::Result<Vec<Case>> {
        self.cases(None)
    }

    // ---- Figures for the metrics endpoint ------------------------------------

    /// Cases whose status is not `closed`.
    pub fn open_case_count(&self) -> anyhow::Result<i64> {
        Ok(self
            .c
            .prepare_cached("SELECT count(*) FROM cases WHERE status != 'closed'")?
            .query_row([], |r| r.get(0))?)
    }

    /// Outgoing rows (replies, notices, digests) not yet settled: `pending`
    /// and `sending`.
    pub fn outbox_depth(&self) -> anyhow::Result<i64> {
        Ok(self
            .c
            .prepare_cached("SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending')")?
            .query_row([], |r| r.get(0))?)
    }

    /// Deadlines of cases neither closed nor responded, as the daily digest
    /// sorts them: a calendar-day deadline (`2026-12-01`) against the local
    /// days `today` and `last_day`, an instant against `now` and `until`
    /// (all in the stored forms, which compare as text).
    pub fn deadline_counts(&self, window: &DeadlineWindow<'_>) -> anyhow::Result<DeadlineCounts> {
        Ok(self
            .c
            .prepare_cached(
                "SELECT \
                   coalesce(sum((length(deadline) = 10 AND deadline >= ?1 AND deadline <= ?2) \
                             OR (length(deadline) > 10 AND deadline >= ?3 AND deadline <= ?4)), 0), \
                   coalesce(sum((length(deadline) = 10 AND deadline < ?1) \
                             OR (length(deadline) > 10 AND deadline < ?3)), 0) \
                 FROM cases WHERE status NOT IN ('closed', 'responded') AND deadline IS NOT NULL",
            )?
            .query_row(
                params![window.today, window.last_day, window.now, window.until],
                |r| {
                    Ok(DeadlineCounts {
                        due_soon: r.get(0)?,
                        overdue: r.get(1)?,
                    })
                },
            )?)
    }

    /// Verdicts in the log by decision (`acknowledge`, `reject`,
    /// `quarantine`; a deferral is not a verdict).
    pub fn verdict_counts(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let mut stmt = self.c.prepare_cached(
            "SELECT decision, count(*) FROM verdicts GROUP BY decision ORDER BY decision",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The span [`Ops::deadline_counts`] calls "due soon", in stored forms.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineWindow<'a> {
    /// The local day today and the last local day of the window.
    pub today: &'a str,
    pub last_day: &'a str,
    /// The instant now and the end of the window.
    pub now: &'a str,
    pub until: &'a str,
}

/// Deadlines of cases still to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeadlineCounts {
    /// Within the window.
    pub due_soon: i64,
    /// Already past.
    pub overdue: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_until_it_expires_or_its_account_is_disabled() {
        use crate::accounts::Role;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.sqlite")).unwrap();
        let ops = store.read();
        let id = ops
            .insert_account("alice", Role::Editor, "$argon2id$x", "2026-11-02T10:00:00Z")
            .unwrap();
        let (account, phc) = ops.account("alice").unwrap().unwrap();
        assert_eq!(
            (account.id, account.role, phc.as_str()),
            (id, Role::Editor, "$argon2id$x")
        );
        let session = Session {
            account,
            csrf: "c".into(),
            created_at: "2026-11-02T10:00:00Z".into(),
            expires_at: "2026-11-02T18:00:00Z".into(),
        };
        ops.insert_session(&session, "h").unwrap();
        let live = ops.session("h", "2026-11-02T17:59:59Z").unwrap().unwrap();
        assert_eq!(
            (live.account.name.as_str(), live.csrf.as_str()),
            ("alice", "c")
        );
        assert!(
            ops.session("h", "2026-11-02T18:00:00Z").unwrap().is_none(),
            "expired"
        );
        assert!(
            ops.session("other", "2026-11-02T11:00:00Z")
                .unwrap()
                .is_none()
        );
        ops.set_account_disabled(id, true, "2026-11-02T11:00:00Z")
            .unwrap();
        assert!(
            ops.session("h", "2026-11-02T11:00:00Z").unwrap().is_none(),
            "disabled"
        );
        assert_eq!(
            ops.delete_expired_sessions("2026-11-02T18:00:00Z").unwrap(),
            1
        );
        let err = store.conn.execute("DELETE FROM accounts", []).unwrap_err();
        assert!(err.to_string().contains("disabled, not deleted"), "{err}");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cases.sqlite");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = Store::open(&path).err().unwrap();
        let too_new = err.downcast_ref::<StoreError>();
        assert!(
            matches!(too_new, Some(StoreError::TooNew { .. })),
            "{err:#}"
        );
        assert!(err.to_string().contains("newer"), "{err:#}");
    }

    #[test]
    fn a_v1_outbox_keeps_its_rows_and_gains_the_new_states() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(V1).unwrap();
        conn.execute_batch(
            "INSERT INTO cases (reference, year, number, status, authenticated, kind, emergency, \
               user_notice, opened_at, updated_at) VALUES ('LR-2026-0001', 2026, 1, 'received', 1, \
               'other', 0, 'unknown', 't', 't');
             INSERT INTO messages (case_id, sha256, raw, size, source, received_at, findings) \
               VALUES (1, 'h', x'00', 1, 's', 't', '{}');
             INSERT INTO outbox (case_id, message_id, kind, recipient, msgid, status, attempts, \
               next_attempt_at, queued_at) VALUES (1, 1, 'rejection', 'a@b.c', '<m@x>', 'pending', 0, \
               '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z');
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.user_version().unwrap(), SCHEMA_VERSION);
        let ops = store.read();
        let row = ops.reply(1).unwrap().unwrap();
        assert_eq!(
            (
                row.status.as_str(),
                row.pending_since.as_str(),
                row.msgid.as_str()
            ),
            ("pending", "2026-01-01T00:00:00Z", "<m@x>")
        );
        assert!(ops.start_attempt(1, "2026-01-01T00:01:00Z", "1:1").unwrap());
        assert!(
            !ops.start_attempt(1, "2026-01-01T00:01:00Z", "1:1").unwrap(),
            "claimed once"
        );
        assert!(
            ops.finish_attempt(1, AttemptEnd::Unknown { error: "e" })
                .unwrap()
        );
        assert!(ops.requeue_reply(1, "2026-01-02T00:00:00Z").unwrap());
        let row = ops.reply(1).unwrap().unwrap();
        assert_eq!((row.status.as_str(), row.attempts), ("pending", 0));
        assert_eq!(row.pending_since, "2026-01-02T00:00:00Z");
    }

    #[test]
    fn a_v2_outbox_keeps_its_rows_and_takes_notices_and_digests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(V1).unwrap();
        conn.execute_batch(V2).unwrap();
        conn.execute_batch(
            "INSERT INTO cases (reference, year, number, status, authenticated, kind, emergency, \
               user_notice, opened_at, updated_at) VALUES ('LR-2026-0001', 2026, 1, 'received', 1, \
               'other', 0, 'unknown', 't', 't');
             INSERT INTO messages (case_id, sha256, raw, size, source, received_at, findings) \
               VALUES (1, 'h', x'00', 1, 's', 't', '{}');
             INSERT INTO outbox (case_id, message_id, kind, recipient, msgid, in_reply_to, status, \
               attempts, next_attempt_at, queued_at, sent_at, pending_since, last_attempt_at) \
               VALUES (1, 1, 'acknowledgement', 'a@b.c', '<m@x>', '<r@b.c>', 'sent', 1, \
               '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', '2026-01-01T00:00:01Z', \
               '2026-01-01T00:00:00Z', '2026-01-01T00:00:01Z');
             PRAGMA user_version = 2;",
        )
        .unwrap();
        drop(conn);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.user_version().unwrap(), SCHEMA_VERSION);
        let ops = store.read();
        let row = ops.reply(1).unwrap().unwrap();
        assert_eq!(
            (
                row.case_id,
                row.message_id,
                row.kind.as_str(),
                row.status.as_str(),
                row.in_reply_to.as_deref(),
                row.last_attempt_at.as_deref(),
                row.dedupe_key.as_deref(),
                row.payload.as_deref(),
            ),
            (
                Some(1),
                Some(1),
                "acknowledgement",
                "sent",
                Some("<r@b.c>"),
                Some("2026-01-01T00:00:01Z"),
                None,
                None
            )
        );
        // Notices are not replies: neither the per-sender cap nor the
        // 7-day rule counts them.
        let notice = ops
            .queue_notice(&NewNotice {
                case_id: 1,
                message_id: 1,
                recipient: "team@b.c",
                msgid: "<n1@x>",
                in_reply_to: None,
                subject: Some("s"),
                payload: "{}",
                now: "2026-01-02T00:00:00Z",
            })
            .unwrap();
        assert_eq!(
            ops.first_notice(1, "TEAM@b.c").unwrap().as_deref(),
            Some("<n1@x>")
        );
        assert_eq!(
            ops.replies_to_since("team@b.c", "2026-01-01T00:00:00Z", 10)
                .unwrap(),
            0
        );
        assert_eq!(
            ops.replies_to_since("a@b.c", "2025-12-31T00:00:00Z", 10)
                .unwrap(),
            1
        );
        assert_eq!(ops.case_by_msgid("<n1@x>").unwrap().unwrap().id, 1);
        let digest = |msgid: &'static str| NewDigest {
            recipient: "team@b.c",
            msgid,
            dedupe_key: "digest:2026-01-02:team@b.c",
            payload: "{}",
            now: "2026-01-02T08:00:00Z",
        };
        let first = ops.queue_digest(&digest("<d1@x>")).unwrap();
        assert!(first.is_some() && first != Some(notice));
        assert!(ops.queued_key("digest:2026-01-02:team@b.c").unwrap());
        assert!(!ops.queued_key("digest:2026-01-03:team@b.c").unwrap());
        assert_eq!(
            ops.queue_digest(&digest("<d2@x>")).unwrap(),
            None,
            "once a day"
        );
        // A digest is about no case, so its Message-ID threads nothing.
        assert!(ops.case_by_msgid("<d1@x>").unwrap().is_none());
        let digest_row = ops.reply(first.unwrap()).unwrap().unwrap();
        assert_eq!((digest_row.case_id, digest_row.message_id), (None, None));
        // The constraints hold the kinds to their shapes.
        for bad in [
            "INSERT INTO outbox (kind, recipient, msgid, status, attempts, next_attempt_at, \
             queued_at, pending_since) VALUES ('notice', 'x@y', '<b1@x>', 'pending', 0, 't', 't', 't')",
            "INSERT INTO outbox (case_id, message_id, kind, recipient, msgid, status, attempts, \
             next_attempt_at, queued_at, pending_since, payload) VALUES (1, 1, 'digest', 'x@y', \
             '<b2@x>', 'pending', 0, 't', 't', 't', '{}')",
            "INSERT INTO outbox (case_id, message_id, kind, recipient, msgid, status, attempts, \
             next_attempt_at, queued_at, pending_since) VALUES (1, 1, 'notice', 'x@y', '<b3@x>', \
             'pending', 0, 't', 't', 't')",
            "INSERT INTO outbox (case_id, message_id, kind, recipient, msgid, status, attempts, \
             next_attempt_at, queued_at, pending_since) VALUES (1, 1, 'bulletin', 'x@y', '<b4@x>', \
             'pending', 0, 't', 't', 't')",
        ] {
            assert!(store.conn.execute(bad, []).is_err(), "{bad}");
        }
    }

    /// Commits of a connection with a background checkpointer reach the
    /// database file while it is still open, though they are far below its
    /// own checkpoint threshold.
    #[test]
    fn the_background_checkpointer_copies_commits_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let mut store = Store::open(&path).unwrap();
        store.checkpoint_in_background().unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        for n in 1..=4 {
            let tx = store.begin().unwrap();
            tx.ops()
                .c
                .execute(
                    "INSERT INTO cases (reference, year, number, status, authenticated, kind, \
                     emergency, user_notice, opened_at, updated_at) \
                     VALUES (?1, 2026, ?2, 'received', 1, 'other', 0, 'unknown', 't', 't')",
                    params![format!("LR-2026-{n:04}"), n],
                )
                .unwrap();
            tx.ops()
                .c
                .execute(
                    "INSERT INTO messages (case_id, sha256, raw, size, source, received_at, findings) \
                     VALUES (?1, ?2, zeroblob(1000000), 1000000, 's', 't', '{}')",
                    params![n, format!("h{n}")],
                )
                .unwrap();
            tx.commit().unwrap();
        }
        // Well under WAL_BACKSTOP_PAGES: only the checkpointer copies.
        let wal = std::fs::metadata(dir.path().join("c.sqlite-wal"))
            .unwrap()
            .len();
        assert!(wal < (WAL_BACKSTOP_PAGES as u64) * 4096, "{wal}");
        let started = std::time::Instant::now();
        while std::fs::metadata(&path).unwrap().len() < before + 4_000_000 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the database file stayed at {} bytes",
                std::fs::metadata(&path).unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let copied: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(copied, 4);
    }

    #[test]
    fn figures_for_the_metrics_endpoint_through_a_read_only_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        assert!(
            Store::open_read_only(&path).is_err(),
            "nothing is created read-only"
        );
        let store = Store::open(&path).unwrap();
        // (number, status, deadline)
        let cases = [
            (1, "received", Some("2026-11-05")),            // due in 3 days
            (2, "under_review", Some("2026-11-09")),        // the last day of the window
            (3, "challenged", Some("2026-11-10")),          // later
            (4, "quarantined", Some("2026-11-01")),         // overdue
            (5, "responded", Some("2026-11-01")),           // answered: not counted
            (6, "closed", Some("2026-11-03")),              // closed: neither open nor due
            (7, "out_of_jurisdiction", None),               // open, no deadline
            (8, "received", Some("2026-11-02T09:59:59Z")),  // an instant just past
            (9, "received", Some("2026-11-09T10:00:00Z")),  // an instant at the window's end
            (10, "received", Some("2026-11-09T10:00:01Z")), // just after it
        ];
        for (n, status, deadline) in cases {
            store
                .conn
                .execute(
                    "INSERT INTO cases (reference, year, number, status, authenticated, kind, \
                     emergency, user_notice, deadline, opened_at, updated_at) \
                     VALUES (?1, 2026, ?2, ?3, 1, 'other', 0, 'unknown', ?4, 't', 't')",
                    params![format!("LR-2026-{n:04}"), n, status, deadline],
                )
                .unwrap();
            store
                .conn
                .execute(
                    "INSERT INTO messages (case_id, sha256, raw, size, source, received_at, findings) \
                     VALUES (?1, ?2, x'00', 1, 's', 't', '{}')",
                    params![n, format!("h{n}")],
                )
                .unwrap();
            let decision = match status {
                "quarantined" => "quarantine",
                "out_of_jurisdiction" => "reject",
                _ => "acknowledge",
            };
            store
                .conn
                .execute(
                    "INSERT INTO verdicts (message_id, decided_at, decision, reason, reply, evidence) \
                     VALUES (?1, 't', ?2, 'r', 0, '{}')",
                    params![n, decision],
                )
                .unwrap();
        }
        for (i, status) in ["pending", "sending", "sent", "failed", "unknown", "pending"]
            .iter()
            .enumerate()
        {
            store
                .conn
                .execute(
                    "INSERT INTO outbox (case_id, message_id, kind, recipient, msgid, status, \
                     attempts, next_attempt_at, queued_at, pending_since) \
                     VALUES (1, 1, 'acknowledgement', 'a@b.c', ?1, ?2, 0, 't', 't', 't')",
                    params![format!("<m{i}@x>"), status],
                )
                .unwrap();
        }
        let mut reader = Store::open_read_only(&path).unwrap();
        let snapshot = reader.snapshot().unwrap();
        let ops = snapshot.ops();
        assert_eq!(ops.open_case_count().unwrap(), 9);
        assert_eq!(ops.outbox_depth().unwrap(), 3);
        assert_eq!(
            ops.deadline_counts(&DeadlineWindow {
                today: "2026-11-02",
                last_day: "2026-11-09",
                now: "2026-11-02T10:00:00Z",
                until: "2026-11-09T10:00:00Z",
            })
            .unwrap(),
            DeadlineCounts {
                due_soon: 3,
                overdue: 2
            }
        );
        assert_eq!(
            ops.verdict_counts().unwrap(),
            vec![
                ("acknowledge".to_string(), 8),
                ("quarantine".to_string(), 1),
                ("reject".to_string(), 1)
            ]
        );
        drop(snapshot);
        let write = reader
            .conn
            .execute("UPDATE cases SET status = 'closed'", []);
        assert!(write.is_err(), "the connection cannot write");
        assert_eq!(reader.read().open_case_count().unwrap(), 9);
    }

    #[test]
    fn settings_and_triggers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.sqlite")).unwrap();
        let mode: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let sync: i64 = store
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        let fk: i64 = store
            .conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), sync, fk), ("wal", 2, 1));
        assert_eq!(store.user_version().unwrap(), SCHEMA_VERSION);
        let triggers: i64 = store
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        // Messages, verdicts and events append-only; accounts never deleted.
        assert_eq!(triggers, 7);
    }
}
