//! The `legal-intake` binary: argument parsing, logging set-up and the
//! mapping of errors to exit codes (0 success, 1 runtime failure, 2 bad
//! usage or configuration). Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use legal_intake::config::{self, Config};
use legal_intake::judge::Judge;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Judge messages from files exactly as the daemon would, writing nothing.
    Verify {
        /// Print one JSON document (an object for one file, an array for several).
        #[arg(long)]
        json: bool,
        /// Message files; `-` reads standard input.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Validate the configuration and print a one-line summary.
    CheckConfig,
}

/// A failure and the exit code it maps to.
enum Failure {
    /// Bad configuration: exit 2.
    Config(config::ConfigError),
    /// Anything else at run time: exit 1.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LEGAL_INTAKE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(Failure::Config(e)) => {
            eprintln!("legal-intake: configuration error: {e}");
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
            println!("{}", config.summary());
            Ok(true)
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
    }
}
