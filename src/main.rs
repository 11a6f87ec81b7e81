//! The `legal-intake` binary: argument parsing, logging set-up and the
//! mapping of errors to exit codes (0 success, 1 runtime failure, 2 bad
//! usage or configuration, 75 `ingest` deferred a message). Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use legal_intake::cases::{self, Changes, UsageError};
use legal_intake::cli::{AuditCommand, CasesCommand, Cli, Command};
use legal_intake::clock::{self, Clock};
use legal_intake::config::{self, Config};
use legal_intake::ingest::Ingested;
use legal_intake::judge::Judge;

/// sysexits.h: a temporary failure; the caller (an MTA) should try again.
const EX_TEMPFAIL: u8 = 75;

/// How a command that ran ended.
enum Exit {
    /// Exit 0.
    Success,
    /// A handled failure, already reported: exit 1.
    Failed,
    /// Try again later (`ingest` with a deferred message): exit 75.
    TempFail,
}

impl From<bool> for Exit {
    fn from(ok: bool) -> Exit {
        if ok { Exit::Success } else { Exit::Failed }
    }
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
        Ok(Exit::Success) => ExitCode::SUCCESS,
        Ok(Exit::Failed) => ExitCode::from(1),
        Ok(Exit::TempFail) => ExitCode::from(EX_TEMPFAIL),
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

/// Runs the command.
fn run(cli: Cli) -> Result<Exit, Failure> {
    match cli.command {
        Command::CheckConfig { connect } => {
            let config = load(&cli.config)?;
            check_replies(&config)?;
            println!("{}", config.summary());
            if !connect {
                return Ok(Exit::Success);
            }
            let rt = runtime()?;
            let mut out = std::io::stdout().lock();
            Ok(rt
                .block_on(legal_intake::check::connect(&config, &mut out))?
                .into())
        }
        Command::Run { once } => {
            let config = load(&cli.config)?;
            check_replies(&config)?;
            let clock = clock()?;
            let rt = runtime()?;
            Ok(rt
                .block_on(legal_intake::daemon::run(
                    cli.config.clone(),
                    config,
                    clock,
                    once,
                ))?
                .into())
        }
        Command::Verify { json, files } => {
            let config = load(&cli.config)?;
            let rt = runtime()?;
            let ok = rt.block_on(async {
                let judge = Judge::new(&config)?;
                legal_intake::verify::run(judge, files, json).await
            })?;
            Ok(ok.into())
        }
        Command::Ingest { json, files } => {
            let config = load(&cli.config)?;
            let clock = clock()?;
            let rt = runtime()?;
            Ok(
                match rt.block_on(legal_intake::ingest::run(&config, clock, files, json))? {
                    Ingested::Filed => Exit::Success,
                    Ingested::Deferred => Exit::TempFail,
                    Ingested::Failed => Exit::Failed,
                },
            )
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
            Ok(Exit::Success)
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
            Ok(report.intact().into())
        }
    }
}
