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
//! The modules, by layer:
//!
//! Pure core (no network, database, clock or environment):
//! - [`domain`]: domain names as the policy compares them.
//! - [`text`]: header text made safe to store, log and show.
//! - [`message`]: raw bytes → `Inbound`, the facts the decision needs.
//! - [`readable`]: a filed message as the board shows it: text and attachments.
//! - [`received`]: one `Received` line read strictly: the trusted hop's HELO and client address.
//! - [`evidence`]: what authentication found, and its alignment with the From domain.
//! - [`decide`]: the decision table of SPEC.md.
//! - [`triage`]: request kind, emergency flag and identifiers read from the text.
//! - [`case`]: references, statuses and their transitions, the case record.
//! - [`reply`]: a queued reply rendered from its template.
//! - [`notice`]: the legal team's notices and daily digest: facts and rendering.
//! - [`stats`]: the transparency figures of a year.
//! - [`tar`]: a ustar archive of a few files (the board's evidence bundle).
//! - [`accounts`]: the case board's account names, roles, password hashes and tokens.
//!
//! Edges:
//! - [`config`]: the TOML file, validated once into a `Config`.
//! - [`clock`]: the stored form of times, and the clock passed down from `main`.
//! - [`authenticate`]: DKIM through mail-auth, SPF through `spf`, over hickory → `Evidence`.
//! - [`spf`]: RFC 7208 `check_host()`, strict, over hickory or an in-memory zone.
//! - [`store`]: the SQLite case log: schema, migrations, every SQL statement.
//! - [`imap`]: connect, IDLE/poll, fetch, move.
//! - [`smtp`]: one transaction per reply, and what its failure means.
//! - [`process`]: this process as `pid:start time`, and whether another still runs.
//! - [`logging`]: journald, JSON or text log lines.
//! - [`http`]: the one HTTP/1.1 server (hyper under axum), with its limits.
//!
//! The message's way through:
//! - [`judge`]: parse → authenticate → decide, shared by every command.
//! - [`pipeline`]: a judged message filed: threading, history, decision, case, reply, events.
//! - [`audit`]: the tamper-evident hash chain of events and `audit verify`.
//! - [`msgid`]: the Message-IDs of what we send.
//! - [`signer`]: the DKIM signature on what we send, its key loaded once.
//! - [`outbox`]: the outgoing queue: claim, render, sign, send, record; retries and `unknown`.
//! - [`daemon`]: `run`: passes over the mailbox, IDLE, reconnection, signals, systemd.
//! - [`metrics`]: `run`'s optional Prometheus endpoint.
//! - [`web`]: `serve`, the legal team's case board over the case log.
//!
//! Commands:
//! - [`cli`]: the command line's clap definitions (also used for the man page).
//! - [`casework`]: the legal team's changes and readings of a case, shared by `cases` and the board.
//! - [`export`]: `cases export` and the board's evidence bundle: a case as files.
//! - [`cmd`]: each command's set-up and output, and its exit status.

/// The one DNS stack: hickory, the very version mail-auth resolves with
/// (its re-export), so `authenticate` and `spf` share one resolver and one
/// cache, and no second hickory enters the tree.
pub(crate) use mail_auth::hickory_resolver;

#[cfg(test)]
mod layering;

pub mod accounts;
pub mod audit;
pub mod authenticate;
pub mod case;
pub mod casework;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod daemon;
pub mod decide;
pub mod domain;
pub mod evidence;
pub mod export;
pub mod http;
pub mod imap;
pub mod judge;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod msgid;
pub mod notice;
pub mod outbox;
pub mod pipeline;
pub mod process;
pub mod readable;
pub mod received;
pub mod reply;
pub mod signer;
pub mod smtp;
pub mod spf;
pub mod stats;
pub mod store;
pub mod tar;
pub mod text;
pub mod triage;
pub mod web;
