//! `users add|passwd|disable|enable|list`: the case board's accounts.
//!
//! A password is never an argument (it would show in `ps` and the shell's
//! history): it is read from `--password-file` or standard input, where a
//! terminal is asked twice with echo off. Each change is one transaction
//! that appends an audit event naming the Unix user who ran the command;
//! disabling an account or changing its password ends its sessions.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::Context;
use serde_json::json;

use crate::accounts::{self, Role};
use crate::audit::{self, kind};
use crate::casework::UsageError;
use crate::clock::{self, Clock};
use crate::store::Store;

/// A change the accounts do not allow (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("no account {0}")]
    NoSuchAccount(String),
    #[error("there is already an account {0}")]
    Exists(String),
}

/// Reads a new password: the first line of `file`, or of standard input.
pub fn read_password(file: Option<&Path>) -> anyhow::Result<String> {
    let password = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            first_line(&text)
        }
        None if std::io::stdin().is_terminal() => {
            let first = prompt("New password: ")?;
            if prompt("Again: ")? != first {
                return Err(UsageError("the two passwords differ".into()).into());
            }
            first
        }
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read standard input")?;
            first_line(&line)
        }
    };
    accounts::check_password(&password).map_err(UsageError)?;
    Ok(password)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").to_string()
}

/// Asks on the terminal with echo off, and restores it whatever happens.
fn prompt(question: &str) -> anyhow::Result<String> {
    use std::os::fd::AsRawFd;
    let fd = std::io::stdin().as_raw_fd();
    eprint!("{question}");
    std::io::stderr().flush()?;
    // SAFETY: an all-zero termios is a valid value for tcgetattr to fill.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is standard input, `saved` a valid termios.
    let have_termios = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if have_termios {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: as above; `quiet` is a copy of the terminal's settings.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if have_termios {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    eprintln!();
    read.context("cannot read the terminal")?;
    Ok(first_line(&line))
}

/// `users add`.
pub fn add(
    store: &mut Store,
    name: &str,
    role: Role,
    password: &str,
    actor: &str,
    clock: Clock,
) -> anyhow::Result<String> {
    accounts::check_name(name).map_err(UsageError)?;
    let phc = accounts::hash_password(password)?;
    let tx = store.begin()?;
    let ops = tx.ops();
    if ops.account(name)?.is_some() {
        return Err(Refused::Exists(name.to_string()).into());
    }
    let at = clock::stamp(clock.now());
    ops.insert_account(name, role, &phc, &at)?;
    audit::append(
        &ops,
        &at,
        actor,
        None,
        kind::ACCOUNT_ADDED,
        &json!({ "account": name, "role": role.as_str() }),
    )?;
    tx.commit()?;
    Ok(format!("{name}: added as {role} (by {actor})"))
}

/// `users passwd`.
pub fn passwd(
    store: &mut Store,
    name: &str,
    password: &str,
    actor: &str,
    clock: Clock,
) -> anyhow::Result<String> {
    let phc = accounts::hash_password(password)?;
    let tx = store.begin()?;
    let ops = tx.ops();
    let (account, _) = ops
        .account(name)?
        .ok_or_else(|| Refused::NoSuchAccount(name.to_string()))?;
    let at = clock::stamp(clock.now());
    ops.set_account_password(account.id, &phc, &at)?;
    let ended = ops.delete_sessions_of(account.id)?;
    audit::append(
        &ops,
        &at,
        actor,
        None,
        kind::ACCOUNT_PASSWORD,
        &json!({ "account": name, "sessions_ended": ended }),
    )?;
    tx.commit()?;
    Ok(format!(
        "{name}: password changed, {ended} session(s) ended (by {actor})"
    ))
}

/// `users disable` and `users enable`.
pub fn set_disabled(
    store: &mut Store,
    name: &str,
    disabled: bool,
    actor: &str,
    clock: Clock,
) -> anyhow::Result<String> {
    let tx = store.begin()?;
    let ops = tx.ops();
    let (account, _) = ops
        .account(name)?
        .ok_or_else(|| Refused::NoSuchAccount(name.to_string()))?;
    if account.disabled == disabled {
        return Ok(format!(
            "{name}: already {}",
            if disabled { "disabled" } else { "enabled" }
        ));
    }
    let at = clock::stamp(clock.now());
    ops.set_account_disabled(account.id, disabled, &at)?;
    let ended = if disabled {
        ops.delete_sessions_of(account.id)?
    } else {
        0
    };
    let (event, what) = if disabled {
        (kind::ACCOUNT_DISABLED, "disabled")
    } else {
        (kind::ACCOUNT_ENABLED, "enabled")
    };
    let mut data = json!({ "account": name });
    if disabled {
        data["sessions_ended"] = ended.into();
    }
    audit::append(&ops, &at, actor, None, event, &data)?;
    tx.commit()?;
    Ok(if disabled {
        format!("{name}: {what}, {ended} session(s) ended (by {actor})")
    } else {
        format!("{name}: {what} (by {actor})")
    })
}

/// `users list`.
pub fn list(store: &Store, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let all = store.read().accounts()?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &all)?;
        writeln!(out)?;
        return Ok(());
    }
    for a in &all {
        writeln!(
            out,
            "{:<32}  {:<6}  {}  since {}",
            a.name,
            a.role.as_str(),
            if a.disabled { "disabled" } else { "active  " },
            a.created_at
        )?;
    }
    if all.is_empty() {
        writeln!(out, "no accounts")?;
    }
    Ok(())
}
