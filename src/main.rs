//! The `legal-intake` binary: argument parsing, logging set-up and the
//! mapping of errors to exit codes (0 success, 1 runtime failure, 2 bad
//! usage or configuration). Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use legal_intake::case::{Reference, Status, UserNotice};
use legal_intake::cases::{self, Changes, DateSetting, UsageError};
use legal_intake::clock::{self, Clock};
use legal_intake::config::{self, Config};
use legal_intake::judge::Judge;
use legal_intake::triage::RequestKind;

#[derive(Parser)]
#[command(
    name = "legal-intake",
    version,
    about = "Files, authenticates and answers legal-process e-mail"
)]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, value_name = "PATH", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Log lines on stderr as text or one JSON object each (under systemd,
    /// text goes to the journal with native fields).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: legal_intake::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// Validate the configuration and print a one-line summary.
    CheckConfig,
}

#[derive(Subcommand)]
enum CasesCommand {
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
        /// When the duplicate hard copy was served in person (`none` clears).
        #[arg(long, value_name = "DATE", value_parser = cases::parse_date_setting)]
        hard_copy_served: Option<DateSetting>,
        /// Whether the user may be notified under the legal process.
        #[arg(long, value_name = "permitted|prohibited|unknown", value_parser = parse_user_notice)]
        user_notice: Option<UserNotice>,
        /// Until when notice is prohibited (with `--user-notice prohibited`).
        #[arg(long, value_name = "DATE", value_parser = cases::parse_date_setting, requires = "user_notice")]
        until: Option<DateSetting>,
        /// The response deadline (`none` clears).
        #[arg(long, value_name = "DATE", value_parser = cases::parse_date_setting)]
        deadline: Option<DateSetting>,
        /// Correct the request kind read by triage.
        #[arg(long, value_name = "KIND", value_parser = parse_kind)]
        kind: Option<RequestKind>,
        /// Set or clear the emergency flag (yes or no).
        #[arg(long, value_name = "yes|no", value_parser = clap::builder::BoolishValueParser::new())]
        emergency: Option<bool>,
        /// A note, recorded with the changes (or alone).
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
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
enum AuditCommand {
    /// Recompute the hash chain and check every stored message against it.
    Verify {
        /// A head hash recorded earlier (a notice, a digest) that must still
        /// be part of the chain.
        #[arg(long, value_name = "HASH")]
        head: Option<String>,
    },
}

fn parse_reference(s: &str) -> Result<Reference, String> {
    s.parse()
}

fn parse_status(s: &str) -> Result<Status, String> {
    s.parse()
}

fn parse_user_notice(s: &str) -> Result<UserNotice, String> {
    s.parse()
}

fn parse_kind(s: &str) -> Result<RequestKind, String> {
    RequestKind::parse(s).ok_or_else(|| {
        let all: Vec<&str> = RequestKind::ALL.iter().map(|k| k.as_str()).collect();
        format!("`{s}` is not a request kind; one of: {}", all.join(", "))
    })
}

/// A failure and the exit code it maps to.
enum Failure {
    /// Bad configuration: exit 2.
    Config(config::ConfigError),
    /// A command that makes no sense as given: exit 2.
    Usage(String),
    /// Anything else at run time: exit 1.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<UsageError>() {
            Ok(usage) => Failure::Usage(usage.0),
            Err(e) => Failure::Runtime(e),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    legal_intake::logging::init(cli.log_format);
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(Failure::Config(e)) => {
            eprintln!("legal-intake: configuration error: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Usage(e)) => {
            eprintln!("legal-intake: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("legal-intake: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, Failure> {
    Config::load(path).map_err(Failure::Config)
}

/// What replying needs beyond the TOML: the DKIM key loads, the templates
/// are valid, the SMTP client can be set up.
fn check_replies(config: &Config) -> Result<(), Failure> {
    legal_intake::outbox::Mailer::new(config)
        .map(drop)
        .map_err(Failure::Config)
}

/// The clock: the system's, or the instant in `LEGAL_INTAKE_NOW` (RFC 3339).
/// The override exists for tests (numbering across years, the 24-hour and
/// 7-day reply limits) and is read here only, never by the library.
fn clock() -> Result<Clock, Failure> {
    match std::env::var("LEGAL_INTAKE_NOW") {
        Ok(s) if !s.is_empty() => clock::parse_instant(&s).map(Clock::Fixed).ok_or_else(|| {
            Failure::Usage(format!(
                "LEGAL_INTAKE_NOW: `{s}` is not an RFC 3339 time such as 2026-11-02T10:00:00Z"
            ))
        }),
        _ => Ok(Clock::System),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Runs the command; `Ok(false)` is a handled failure (exit 1).
fn run(cli: Cli) -> Result<bool, Failure> {
    match cli.command {
        Command::CheckConfig => {
            let config = load(&cli.config)?;
            check_replies(&config)?;
            println!("{}", config.summary());
            Ok(true)
        }
        Command::Run { once } => {
            let config = load(&cli.config)?;
            check_replies(&config)?;
            let clock = clock()?;
            let rt = runtime()?;
            Ok(rt.block_on(legal_intake::daemon::run(
                cli.config.clone(),
                config,
                clock,
                once,
            ))?)
        }
        Command::Verify { json, files } => {
            let config = load(&cli.config)?;
            let rt = runtime()?;
            let ok = rt.block_on(async {
                let judge = Judge::new(&config)?;
                legal_intake::verify::run(judge, files, json).await
            })?;
            Ok(ok)
        }
        Command::Ingest { json, files } => {
            let config = load(&cli.config)?;
            let clock = clock()?;
            let rt = runtime()?;
            Ok(rt.block_on(legal_intake::ingest::run(&config, clock, files, json))?)
        }
        Command::Cases { command } => {
            let config = load(&cli.config)?;
            let clock = clock()?;
            let mut store = cases::open(&config.store.database)?;
            let mut out = std::io::stdout().lock();
            match command {
                CasesCommand::List { status, json } => cases::list(&store, status, json, &mut out)?,
                CasesCommand::Show { id, json } => cases::show(&mut store, id, json, &mut out)?,
                CasesCommand::SetStatus { id, status, note } => {
                    let line = cases::set_status(
                        &mut store,
                        id,
                        status,
                        note.as_deref(),
                        &cases::operator(),
                        clock,
                    )?;
                    println!("{line}");
                }
                CasesCommand::Set {
                    id,
                    hard_copy_served,
                    user_notice,
                    until,
                    deadline,
                    kind,
                    emergency,
                    note,
                } => {
                    let changes = Changes {
                        hard_copy_served,
                        user_notice,
                        until,
                        deadline,
                        kind,
                        emergency,
                        note,
                    };
                    for line in cases::set(&mut store, id, &changes, &cases::operator(), clock)? {
                        println!("{line}");
                    }
                }
                CasesCommand::Resend { id, note } => {
                    for line in
                        cases::resend(&mut store, id, note.as_deref(), &cases::operator(), clock)?
                    {
                        println!("{line}");
                    }
                }
                CasesCommand::Export { id, out: dir } => {
                    let manifest = legal_intake::export::export(
                        &mut store,
                        id,
                        &dir,
                        &cases::operator(),
                        clock,
                    )?;
                    println!(
                        "{id}: {} files written to {}, listed in manifest.json",
                        manifest.files.len(),
                        dir.display()
                    );
                }
            }
            Ok(true)
        }
        Command::Audit {
            command: AuditCommand::Verify { head },
        } => {
            let config = load(&cli.config)?;
            let mut store = cases::open(&config.store.database)?;
            let report = legal_intake::audit::verify(&mut store, head.as_deref())?;
            for line in report.lines() {
                println!("{line}");
            }
            Ok(report.intact())
        }
    }
}
