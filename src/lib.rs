//! legal-intake: files, authenticates and answers legal-process e-mail.
//!
//! A message travels one way:
//!
//! ```text
//! IMAP ─▶ message::parse ─▶ authenticate ─▶ decide ─▶ store ─▶ reply queue ─▶ SMTP
//!           pure              edge (DNS)      pure      edge
//! ```
//!
//! `pipeline` is the one place that orders the side effects of filing a
//! message; `store` is the one module with SQL.
//!
//! - [`config`]: the TOML file, validated once into a `Config`.
//! - [`domain`]: domain names as the policy compares them.
//! - [`message`]: raw bytes → `Inbound`, the facts the decision needs.
//! - [`received`]: one `Received` line read strictly: the trusted hop's HELO and client address, pure.
//! - [`authenticate`]: DKIM through mail-auth, SPF through `spf` → `Evidence`.
//! - [`spf`]: RFC 7208 `check_host()`, strict, over hickory or an in-memory zone.
//! - [`decide`]: the decision table of SPEC.md, a pure function.
//! - [`judge`]: the three above in order, shared by every command.
//! - [`verify`]: the `verify` command's output.
//! - [`logging`]: journald, JSON or text log lines.
//! - [`triage`]: request kind, emergency flag and identifiers read from the text, pure.
//! - [`check`]: `check-config --connect`: IMAP, SMTP and DNS tried, one line each.
//! - [`cli`]: the command line's clap definitions (also used for the man page).
//! - [`clock`]: the stored form of times, and the clock passed down from `main`.
//! - [`case`]: references, statuses and their transitions, the case record.
//! - [`store`]: the SQLite case log: schema, migrations, every SQL statement.
//! - [`audit`]: the tamper-evident hash chain of events and `audit verify`.
//! - [`pipeline`]: a judged message filed: threading, history, decision, case, reply, events.
//! - [`ingest`]: the `ingest` command: concurrent judging, batched filing.
//! - [`cases`]: the legal team's `cases list|show|set-status|set` commands.
//! - [`export`]: `cases export`, the evidence bundle with its manifest.
//! - [`daemon`]: `run`: passes over the mailbox, IDLE, reconnection, signals, systemd.
//! - [`metrics`]: `run`'s optional Prometheus endpoint: counters, case-log gauges, a tiny HTTP server.
//! - [`imap`]: the IMAP edge: connect, IDLE/poll, fetch, move.
//! - [`reply`]: a queued reply rendered from its template, pure.
//! - [`notice`]: the legal team's notices and daily digest: facts and rendering, pure.
//! - [`outbox`]: the outgoing queue: claim, render, sign, send, record; retries and `unknown`.
//! - [`smtp`]: the SMTP edge: one transaction per reply, and what its failure means.

pub mod audit;
pub mod authenticate;
pub mod case;
pub mod cases;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod decide;
pub mod domain;
pub mod evidence;
pub mod export;
pub mod imap;
pub mod ingest;
pub mod judge;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod msgid;
pub mod notice;
pub mod outbox;
pub mod pipeline;
pub mod process;
pub mod received;
pub mod reply;
pub mod smtp;
pub mod spf;
pub mod store;
pub mod text;
pub mod triage;
pub mod verify;
