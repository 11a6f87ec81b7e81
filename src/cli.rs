//! The command line: every subcommand and flag, as clap definitions.
//!
//! Kept in the library (not in `main.rs`) so that the man page and the
//! shell completions are generated from the very same definitions
//! (`cargo run -p xtask -- dist`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::accounts::Role;
use crate::case::{Reference, Status};
use crate::casework::Changes;
use crate::config;

#[derive(Parser)]
#[command(
    name = "legal-intake",
    version,
    about = "Files, authenticates and answers legal-process e-mail"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, global = true, value_name = "PATH", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Log lines on stderr as text or one JSON object each (under systemd,
    /// text goes to the journal with native fields).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: crate::logging::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// The daemon: watch the mailbox (IMAP IDLE, polling as fallback), file,
    /// reply and move; SIGTERM finishes the batch in hand and exits 0.
    Run {
        /// One full pass over the mailbox (deferred messages judged again)
        /// and one attempt at every queued reply, due or not, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Judge messages from files exactly as the daemon would, writing nothing.
    Verify {
        /// Print one JSON document (an object for one file, an array for several).
        #[arg(long)]
        json: bool,
        /// Message files; `-` reads standard input.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// File messages into the case log exactly as the daemon would (replies
    /// queued too): replay and MTA-pipe delivery.
    Ingest {
        /// Print one JSON array, one object per message.
        #[arg(long)]
        json: bool,
        /// Message files; `-` reads standard input.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// The case log.
    Cases {
        #[command(subcommand)]
        command: CasesCommand,
    },
    /// The tamper-evident audit chain.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The case board: the legal team's web workspace on `web.listen`
    /// (loopback; TLS at the host's reverse proxy).
    Serve,
    /// The case board's accounts.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Validate the configuration (and the signing key and templates) and
    /// print a one-line summary; exit 2 naming the file, key and reason.
    CheckConfig {
        /// Also log in to IMAP and SMTP and resolve the agency domains,
        /// one line per check; exit 1 when one fails.
        #[arg(long)]
        connect: bool,
    },
}

#[derive(Subcommand)]
pub enum CasesCommand {
    /// List cases, oldest first.
    List {
        /// Only cases in this status.
        #[arg(long, value_name = "STATUS", value_parser = parse_status)]
        status: Option<Status>,
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// One case: messages with verdicts and evidence, replies, events.
    Show {
        /// The case reference, e.g. LR-2026-0001.
        #[arg(value_name = "ID", value_parser = parse_reference)]
        id: Reference,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Move a case along: received → under_review → responded | challenged |
    /// rejected → closed (see `legal_intake::case` for every rule).
    SetStatus {
        #[arg(value_name = "ID", value_parser = parse_reference)]
        id: Reference,
        #[arg(value_name = "STATUS", value_parser = parse_status)]
        status: Status,
        /// Why (recorded in the audit event; required to reopen a closed case).
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
    },
    /// Change case fields; each change is an audit event.
    Set {
        #[arg(value_name = "ID", value_parser = parse_reference)]
        id: Reference,
        #[command(flatten)]
        changes: Changes,
    },
    /// Release a quarantined request confirmed out of band: the case moves
    /// to under_review and an acknowledgement is queued to its requester.
    Release {
        #[arg(value_name = "ID", value_parser = parse_reference)]
        id: Reference,
        /// How the request was confirmed (required; recorded in the events).
        #[arg(long, value_name = "TEXT")]
        note: String,
    },
    /// Send a case's replies again whose delivery is unknown or failed
    /// (queued as pending; the daemon or `run --once` sends them).
    Resend {
        #[arg(value_name = "ID", value_parser = parse_reference)]
        id: Reference,
        /// Why (recorded in the audit event).
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
    },
    /// The transparency figures of a year: requests by kind, agency,
    /// decision and outcome, quarantine counted apart, with the audit head.
    Stats {
        /// The year of the case references (default: this year).
        #[arg(long, value_name = "YEAR")]
        year: Option<i32>,
        /// Print one JSON object.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print `section,key,count` rows.
        #[arg(long)]
        csv: bool,
    },
    /// Write the evidence bundle of a case into a new or empty folder.
    Export {
        #[arg(value_name = "ID", value_parser = parse_reference)]
        id: Reference,
        /// The folder; it must not exist or must be empty.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Add an account; its password is read from --password-file or
    /// standard input (asked twice on a terminal), never an argument.
    Add {
        /// 1 to 32 of a-z, 0-9, `.`, `_`, `-`.
        #[arg(value_name = "NAME")]
        name: String,
        /// viewer: reads everything; editor: also changes cases.
        #[arg(long, value_name = "viewer|editor", value_parser = parse_role)]
        role: Role,
        /// A file whose first line is the password (at least 12 characters).
        #[arg(long, value_name = "PATH")]
        password_file: Option<PathBuf>,
    },
    /// Set a new password; the account's sessions end.
    Passwd {
        #[arg(value_name = "NAME")]
        name: String,
        /// A file whose first line is the password (at least 12 characters).
        #[arg(long, value_name = "PATH")]
        password_file: Option<PathBuf>,
    },
    /// Disable an account (it is kept: the audit trail names it); its
    /// sessions end.
    Disable {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Enable a disabled account again.
    Enable {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// List the accounts.
    List {
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain and check every stored message against it.
    Verify {
        /// A head hash recorded earlier (a notice, a digest) that must still
        /// be part of the chain.
        #[arg(long, value_name = "HASH")]
        head: Option<String>,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

fn parse_reference(s: &str) -> Result<Reference, String> {
    s.parse()
}

fn parse_status(s: &str) -> Result<Status, String> {
    s.parse()
}

/// The clap command, for the man page and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
