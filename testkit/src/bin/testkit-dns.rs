//! `testkit-dns ZONEFILE [--port N]`: serves a zone file (see
//! `testkit::dns::Zone::parse` for the format) on 127.0.0.1, UDP and TCP,
//! until killed. Prints `listening 127.0.0.1:PORT` once ready, so a script
//! or the demo can start it with `--port 0` (the default) and read the port.

use std::io::Write;
use std::process::ExitCode;
use testkit::dns::{DnsServer, Zone};

const USAGE: &str = "usage: testkit-dns ZONEFILE [--port N]";

fn main() -> ExitCode {
    match run() {
        Ok(never) => match never {},
        Err(message) => {
            eprintln!("testkit-dns: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Serves forever; only returns on a startup error.
fn run() -> Result<std::convert::Infallible, String> {
    let (zone_path, port) = parse_args(std::env::args().skip(1))?;
    let text =
        std::fs::read_to_string(&zone_path).map_err(|e| format!("cannot read {zone_path}: {e}"))?;
    let zone = Zone::parse(&text).map_err(|e| format!("{zone_path}: {e}"))?;
    let server = DnsServer::start_on(zone, port)
        .map_err(|e| format!("cannot listen on port {port}: {e}"))?;

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening {}", server.addr())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(stdout);

    // The server threads do the work; this one just keeps `server` alive.
    loop {
        std::thread::park();
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(String, u16), String> {
    let mut zone_path = None;
    let mut port = 0;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                let value = args.next().ok_or(USAGE)?;
                port = value
                    .parse()
                    .map_err(|e| format!("bad port {value:?}: {e}\n{USAGE}"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ if arg.starts_with("--port=") => {
                let value = &arg["--port=".len()..];
                port = value
                    .parse()
                    .map_err(|e| format!("bad port {value:?}: {e}\n{USAGE}"))?;
            }
            _ if arg.starts_with('-') => {
                return Err(format!("unknown option {arg:?}\n{USAGE}"));
            }
            _ if zone_path.is_none() => zone_path = Some(arg),
            _ => return Err(format!("unexpected argument {arg:?}\n{USAGE}")),
        }
    }
    Ok((zone_path.ok_or(USAGE)?, port))
}
