//! The commands: each one's configuration, runtime and output, and what
//! its outcome means as an exit status. `main` parses the arguments and
//! hands them here.
//!
//! - [`verify`]: judge message files and print SPEC.md's reports.
//! - [`ingest`]: file message files as `run` would (MTA pipe, replay).
//! - [`cases`]: the legal team's `cases list|show|set-status|set|release|resend|stats`.
//! - [`export`]: `cases export`, the evidence bundle with its manifest.
//! - [`check`]: `check-config --connect`: IMAP, SMTP and DNS tried.
//! - [`users`]: the case board's accounts, `users add|passwd|disable|enable|list`.

pub mod cases;
pub mod check;
pub mod ingest;
pub mod input;
pub mod users;
pub mod verify;

use crate::casework::{self, UsageError};
use crate::cli::{AuditCommand, CasesCommand, Cli, Command, UsersCommand};
use crate::clock::{self, Clock};
use crate::config::{self, Config};
use crate::export;
use crate::judge::Judge;
use ingest::Ingested;

/// sysexits.h: a temporary failure; the caller (an MTA) should try again.
pub const EX_TEMPFAIL: u8 = 75;

/// How a command that ran ended.
pub enum Exit {
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
pub enum Failure {
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

fn load(path: &std::path::Path) -> Result<Config, Failure> {
    Config::load(path).map_err(Failure::Config)
}

/// What replying needs beyond the TOML: the DKIM key loads, the templates
/// are valid, the SMTP client can be set up.
fn check_replies(config: &Config) -> Result<(), Failure> {
    crate::outbox::Mailer::new(config)
        .map(drop)
        .map_err(Failure::Config)
}

/// The clock: the system's, or the instant in `LEGAL_INTAKE_NOW` (RFC 3339).
/// The override exists for tests (numbering across years, the 24-hour and
/// 7-day reply limits) and is read here only, never deeper in the library.
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
pub fn run(cli: Cli) -> Result<Exit, Failure> {
    match cli.command {
        Command::CheckConfig { connect } => {
            let config = load(&cli.config)?;
            check_replies(&config)?;
            for warning in config.check_files().map_err(Failure::Config)? {
                eprintln!("legal-intake: warning: {warning}");
            }
            println!("{}", config.summary());
            if !connect {
                return Ok(Exit::Success);
            }
            let rt = runtime()?;
            let mut out = std::io::stdout().lock();
            Ok(rt.block_on(check::connect(&config, &mut out))?.into())
        }
        Command::Run { once } => {
            let config = load(&cli.config)?;
            check_replies(&config)?;
            let clock = clock()?;
            let rt = runtime()?;
            Ok(rt
                .block_on(crate::daemon::run(cli.config.clone(), config, clock, once))?
                .into())
        }
        Command::Verify { json, files } => {
            let config = load(&cli.config)?;
            let rt = runtime()?;
            let ok = rt.block_on(async {
                let judge = Judge::new(&config)?;
                verify::run(judge, files, json).await
            })?;
            Ok(ok.into())
        }
        Command::Ingest { json, files } => {
            let config = load(&cli.config)?;
            let clock = clock()?;
            let rt = runtime()?;
            Ok(
                match rt.block_on(ingest::run(&config, clock, files, json))? {
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
                    let line = casework::set_status(
                        &mut store,
                        id,
                        status,
                        note.as_deref(),
                        &cases::operator(),
                        clock,
                    )?;
                    println!("{line}");
                }
                CasesCommand::Set { id, changes } => {
                    for line in casework::set(&mut store, id, &changes, &cases::operator(), clock)?
                    {
                        println!("{line}");
                    }
                }
                CasesCommand::Release { id, note } => {
                    let domain = crate::msgid::domain(&config);
                    for line in casework::release(
                        &mut store,
                        id,
                        &note,
                        &domain,
                        &cases::operator(),
                        clock,
                    )? {
                        println!("{line}");
                    }
                }
                CasesCommand::Resend { id, note } => {
                    for line in casework::resend(
                        &mut store,
                        id,
                        note.as_deref(),
                        &cases::operator(),
                        clock,
                    )? {
                        println!("{line}");
                    }
                }
                CasesCommand::Stats { year, json, csv } => {
                    cases::stats(&mut store, year, (json, csv), clock, &mut out)?
                }
                CasesCommand::Export { id, out: dir } => {
                    let manifest = export::export(&mut store, id, &dir, &cases::operator(), clock)?;
                    println!(
                        "{id}: {} files written to {}, listed in manifest.json",
                        manifest.files.len(),
                        dir.display()
                    );
                }
            }
            Ok(Exit::Success)
        }
        Command::Users { command } => {
            let config = load(&cli.config)?;
            let clock = clock()?;
            let mut store = crate::store::Store::open(&config.store.database)?;
            let actor = cases::operator();
            let line = match command {
                UsersCommand::Add {
                    name,
                    role,
                    password_file,
                } => {
                    let password = users::read_password(password_file.as_deref())?;
                    users::add(&mut store, &name, role, &password, &actor, clock)?
                }
                UsersCommand::Passwd {
                    name,
                    password_file,
                } => {
                    let password = users::read_password(password_file.as_deref())?;
                    users::passwd(&mut store, &name, &password, &actor, clock)?
                }
                UsersCommand::Disable { name } => {
                    users::set_disabled(&mut store, &name, true, &actor, clock)?
                }
                UsersCommand::Enable { name } => {
                    users::set_disabled(&mut store, &name, false, &actor, clock)?
                }
                UsersCommand::List { json } => {
                    users::list(&store, json, &mut std::io::stdout().lock())?;
                    return Ok(Exit::Success);
                }
            };
            println!("{line}");
            Ok(Exit::Success)
        }
        Command::Serve => {
            let config = load(&cli.config)?;
            let Some(web) = config.web.clone() else {
                return Err(Failure::Config(config::ConfigError {
                    file: config.path.clone(),
                    key: "web".into(),
                    reason: "is required by `serve`: a [web] section with `listen`".into(),
                }));
            };
            let clock = clock()?;
            let rt = runtime()?;
            rt.block_on(crate::web::serve(config, web, clock))?;
            Ok(Exit::Success)
        }
        Command::Audit {
            command: AuditCommand::Verify { head },
        } => {
            let config = load(&cli.config)?;
            let mut store = cases::open(&config.store.database)?;
            let report = crate::audit::verify(&mut store, head.as_deref())?;
            for line in report.lines() {
                println!("{line}");
            }
            Ok(report.intact().into())
        }
    }
}
