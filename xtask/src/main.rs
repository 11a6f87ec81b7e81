//! `cargo run -p xtask -- dist DIR`: writes what the Debian package ships
//! besides the binary, generated from the very clap definitions the binary
//! uses (`legal_intake::cli`), so the documentation cannot drift:
//!
//! - `DIR/man/legal-intake.8` and one page per subcommand
//!   (`legal-intake-run.8`, `legal-intake-cases-show.8`, …);
//! - `DIR/man/legal-intake.toml.5`, copied from `docs/`;
//! - `DIR/completions/legal-intake.bash`, `_legal-intake` (zsh) and
//!   `legal-intake.fish`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, dir] if cmd == "dist" => match dist(Path::new(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: cargo run -p xtask -- dist DIR");
            ExitCode::from(2)
        }
    }
}

fn dist(dir: &Path) -> std::io::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    fs::create_dir_all(&man)?;
    fs::create_dir_all(&completions)?;

    let cmd = legal_intake::cli::command();
    pages(&cmd, "legal-intake", &man)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    fs::copy(
        root.join("docs/legal-intake.toml.5"),
        man.join("legal-intake.toml.5"),
    )?;

    for (shell, name) in [
        (Shell::Bash, "legal-intake.bash"),
        (Shell::Zsh, "_legal-intake"),
        (Shell::Fish, "legal-intake.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(
            shell,
            &mut legal_intake::cli::command(),
            "legal-intake",
            &mut out,
        );
        fs::write(completions.join(name), out)?;
    }
    println!("wrote {} and {}", man.display(), completions.display());
    Ok(())
}

/// Writes the page of `cmd` as `name.8`, then one per subcommand, named
/// like git's (`legal-intake-cases-show.8`).
fn pages(cmd: &clap::Command, name: &str, dir: &Path) -> std::io::Result<()> {
    let cmd = cmd
        .clone()
        .name(name.to_string())
        .disable_help_subcommand(true);
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Manager's Manual")
        .source(format!("legal-intake {}", env!("CARGO_PKG_VERSION")))
        .render(&mut out)?;
    let path: PathBuf = dir.join(format!("{name}.8"));
    fs::write(path, out)?;
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}
