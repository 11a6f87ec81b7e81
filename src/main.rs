//! The `legal-intake` binary: parses the arguments, sets up logging and
//! hands the command to [`legal_intake::cmd`]; what comes back is the
//! exit status (0 success, 1 runtime failure, 2 bad usage or
//! configuration, 75 `ingest` deferred a message).

use std::process::ExitCode;

use clap::Parser;
use legal_intake::cli::Cli;
use legal_intake::cmd::{self, EX_TEMPFAIL, Exit, Failure};

fn main() -> ExitCode {
    let cli = Cli::parse();
    legal_intake::logging::init(cli.log_format);
    match cmd::run(cli) {
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
