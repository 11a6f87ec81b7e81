//! The legal team's commands on the case log as the terminal shows them:
//! `cases list`, `cases show`, `cases stats`, and who runs them
//! ([`operator`]). The changes themselves (`set-status`, `set`, `release`,
//! `resend`) are `casework`'s, shared with the case board.

use std::io::Write;

use crate::case::{Case, Reference, Status};
use crate::casework::{dossier, evidence_summary, figures, findings_summary};
use crate::clock::Clock;
use crate::store::{ReplyRow, Store};
use anyhow::Context;

/// Who is running the command, as recorded on every change: the name of
/// the process's real user ID (from the password database, not `$USER`,
/// which anyone can set), and, when it runs through sudo, the account that
/// invoked sudo, recorded as such: `root (sudo from alice)`. Never trusted
/// for anything else.
pub fn operator() -> String {
    let clean = |s: &str| crate::text::clean(s.trim(), 64);
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let name = user_name(uid).map_or_else(|| format!("uid {uid}"), |n| clean(&n));
    match std::env::var("SUDO_USER") {
        Ok(by) if !by.trim().is_empty() => format!("{name} (sudo from {})", clean(&by)),
        _ => name,
    }
}

/// The login name of `uid` in the password database (NSS included).
fn user_name(uid: libc::uid_t) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: an all-zero passwd is a valid value to be overwritten.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, `buf` for its
        // length; on success `result` points at `pwd`, whose strings live
        // in `buf`.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: pw_name is a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        return Some(name.to_string_lossy().into_owned()).filter(|n| !n.is_empty());
    }
}

/// `cases stats`.
pub fn stats(
    store: &mut Store,
    year: Option<i32>,
    format: (bool, bool),
    clock: Clock,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let year = year.unwrap_or_else(|| clock.now().year());
    let f = figures(store, year, clock)?;
    match format {
        (true, _) => {
            serde_json::to_writer_pretty(&mut *out, &f)?;
            writeln!(out)?;
        }
        (_, true) => write!(out, "{}", f.csv())?,
        _ => write!(out, "{}", f.text())?,
    }
    Ok(())
}

/// `cases list`.
pub fn list(
    store: &Store,
    status: Option<Status>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let cases = store.read().cases(status)?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &cases)?;
        writeln!(out)?;
        return Ok(());
    }
    for c in &cases {
        writeln!(
            out,
            "{}  {:<19}  {}  {:<13}  {}{}  {}",
            c.reference,
            c.status.as_str(),
            &c.opened_at[..10.min(c.opened_at.len())],
            c.kind.as_str(),
            c.agency.as_deref().unwrap_or("-"),
            if c.emergency { "  EMERGENCY" } else { "" },
            c.requester.as_deref().unwrap_or("-"),
        )?;
    }
    if cases.is_empty() {
        writeln!(out, "no cases")?;
    }
    Ok(())
}

/// `cases show`.
pub fn show(
    store: &mut Store,
    reference: Reference,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let d = dossier(store, reference, false)?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &d)?;
        writeln!(out)?;
        return Ok(());
    }
    let c = &d.case;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    writeln!(out, "{}  {}", c.reference, c.status.as_str())?;
    writeln!(out, "  agency:           {}", opt(&c.agency))?;
    writeln!(
        out,
        "  requester:        {}{}",
        opt(&c.requester),
        if c.authenticated {
            ""
        } else {
            " (not authenticated)"
        }
    )?;
    writeln!(out, "  kind:             {}", c.kind.as_str())?;
    writeln!(
        out,
        "  emergency:        {}",
        if c.emergency {
            "YES: confirm out of band before acting"
        } else {
            "no"
        }
    )?;
    writeln!(
        out,
        "  hard copy served: {}",
        c.hard_copy_served.as_deref().unwrap_or("not yet")
    )?;
    writeln!(
        out,
        "  user notice:      {}{}",
        c.user_notice.describe(),
        c.user_notice_until
            .as_deref()
            .map(|u| format!(" until {u}"))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "  user told:        {}",
        c.user_notified.as_deref().unwrap_or("not yet")
    )?;
    writeln!(out, "  deadline:         {}", opt(&c.deadline))?;
    writeln!(
        out,
        "  outcome:          {}",
        c.outcome.map_or("-", |o| o.as_str())
    )?;
    writeln!(out, "  opened:           {}", c.opened_at)?;

    writeln!(out, "messages:")?;
    for (i, m) in d.messages.iter().enumerate() {
        let msg = &m.message;
        writeln!(
            out,
            "  #{} {} {} bytes sha256={} {}",
            i + 1,
            msg.received_at,
            msg.size,
            msg.sha256,
            msg.msgid.as_deref().unwrap_or("(no Message-ID)")
        )?;
        writeln!(
            out,
            "     from {} subject {:?}",
            msg.sender.as_deref().unwrap_or("-"),
            msg.subject.as_deref().unwrap_or("")
        )?;
        if let Some(v) = &m.verdict {
            writeln!(
                out,
                "     decision={} reply={} reason={:?}",
                v.verdict.decision,
                if v.verdict.reply { "yes" } else { "no" },
                v.verdict.reason
            )?;
            if let Some(why) = &v.verdict.reply_suppressed {
                writeln!(out, "     no reply: {why}")?;
            }
            writeln!(out, "     evidence: {}", evidence_summary(&v.evidence))?;
        }
        writeln!(out, "     triage: {}", findings_summary(&msg.findings))?;
    }
    // The outgoing rows of the case: replies to the sender, then the
    // legal team's notices.
    let (notices, replies): (Vec<&ReplyRow>, Vec<&ReplyRow>) =
        d.replies.iter().partition(|r| r.kind == "notice");
    for (title, rows) in [("replies", replies), ("notices", notices)] {
        writeln!(out, "{title}:")?;
        if rows.is_empty() {
            writeln!(out, "  none")?;
        }
        for r in rows {
            outgoing(out, c, r)?;
        }
    }
    writeln!(out, "events:")?;
    for e in &d.events {
        writeln!(out, "  {} {} {} {} {}", e.id, e.at, e.actor, e.kind, e.data)?;
    }
    Ok(())
}

/// One reply or notice of a case and where its delivery stands.
fn outgoing(out: &mut dyn Write, c: &Case, r: &ReplyRow) -> anyhow::Result<()> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    writeln!(
        out,
        "  {} to {} {} {} attempts={} queued {}",
        r.kind, r.recipient, r.msgid, r.status, r.attempts, r.queued_at
    )?;
    match r.status.as_str() {
        "sent" => writeln!(out, "     sent {}", opt(&r.sent_at))?,
        "pending" if r.attempts > 0 => writeln!(
            out,
            "     next attempt {}; last error: {}",
            r.next_attempt_at,
            opt(&r.last_error)
        )?,
        "sending" => writeln!(
            out,
            "     being sent since {} (if the process sending it stopped, it is tried again)",
            opt(&r.last_attempt_at)
        )?,
        "unknown" => writeln!(
            out,
            "     UNKNOWN whether it was delivered: {}\n     check with the recipient, or send it again: legal-intake cases resend {}",
            opt(&r.last_error),
            c.reference
        )?,
        "failed" => writeln!(
            out,
            "     FAILED: {}\n     send it again: legal-intake cases resend {}",
            opt(&r.last_error),
            c.reference
        )?,
        _ => {}
    }
    if r.auto_resends > 0 {
        writeln!(
            out,
            "     re-sent automatically {} time(s), the same message with the same Message-ID: an earlier delivery was interrupted after its content went out",
            r.auto_resends
        )?;
    }
    if let Some(size) = r.sent_bytes {
        writeln!(
            out,
            "     the {size} bytes handed to the server are kept (cases export)"
        )?;
    }
    Ok(())
}

/// Opens the case log named by the configuration for a read or a change.
pub fn open(path: &std::path::Path) -> anyhow::Result<Store> {
    Store::open_existing(path).context("cannot open the case log")
}
