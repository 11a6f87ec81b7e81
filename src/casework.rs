//! The legal team's work on the case log, the same from the command line
//! (`cases …`) and the case board: the changes a person makes and the
//! readings of one case.
//!
//! Every change is made in one write transaction that reads the case,
//! checks the change, writes it and appends an audit event naming the
//! actor (the Unix user, `cmd::cases::operator`, or the board's account,
//! `web:NAME`) and the time. The status rules are `case::Status::next`.

use std::str::FromStr;

use serde::Serialize;
use serde_json::{Value, json};

use crate::audit::{self, kind};
use crate::case::{Case, DateSetting, Field, OutcomeSetting, Reference, Status, UserNotice};
use crate::clock::{self, Clock};
use crate::store::{EventRow, MessageRow, ReplyRow, Store, VerdictRow};
use crate::triage::RequestKind;

/// A command that makes no sense as given (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A change that the case's state does not allow, or a case that does not
/// exist (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("no case {0}")]
    NoSuchCase(Reference),
    #[error("{reference}: {reason}")]
    Move {
        reference: Reference,
        reason: String,
    },
    #[error("{0}: no reply is unknown or failed, so there is nothing to send again")]
    NothingToResend(Reference),
}

/// The changes `cases set` asks for (its options, and the board's forms).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Changes {
    /// When the duplicate hard copy was served in person (`none` clears).
    #[arg(long, value_name = "DATE", value_parser = crate::case::parse_date_setting)]
    pub hard_copy_served: Option<DateSetting>,
    /// Whether the user may be notified under the legal process.
    #[arg(long, value_name = "permitted|prohibited|unknown", value_parser = UserNotice::from_str)]
    pub user_notice: Option<UserNotice>,
    /// Until when notice is prohibited (with `--user-notice prohibited`).
    #[arg(long, value_name = "DATE", value_parser = crate::case::parse_date_setting, requires = "user_notice")]
    pub until: Option<DateSetting>,
    /// When the user was told of the request (`none` clears); ends the
    /// reminders to tell them.
    #[arg(long, value_name = "DATE", value_parser = crate::case::parse_date_setting)]
    pub user_notified: Option<DateSetting>,
    /// The response deadline (`none` clears).
    #[arg(long, value_name = "DATE", value_parser = crate::case::parse_date_setting)]
    pub deadline: Option<DateSetting>,
    /// Correct the request kind read by triage.
    #[arg(long, value_name = "KIND", value_parser = parse_kind)]
    pub kind: Option<RequestKind>,
    /// Set or clear the emergency flag (yes or no).
    #[arg(long, value_name = "yes|no", hide_possible_values = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub emergency: Option<bool>,
    /// How the request ended, for `cases stats` (`none` clears).
    #[arg(long, value_name = "data_produced|none_held|challenged", value_parser = crate::case::parse_outcome_setting)]
    pub outcome: Option<OutcomeSetting>,
    /// A note, recorded with the changes (or alone).
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
}

/// Parses a [`RequestKind`] (for clap).
fn parse_kind(s: &str) -> Result<RequestKind, String> {
    RequestKind::parse(s).ok_or_else(|| {
        let all: Vec<&str> = RequestKind::ALL.iter().map(|k| k.as_str()).collect();
        format!("`{s}` is not a request kind; one of: {}", all.join(", "))
    })
}

impl Changes {
    /// The field values asked for, checked against each other.
    fn fields(&self, case: &Case) -> Result<Vec<(Field, Value)>, UsageError> {
        let mut out = Vec::new();
        let date = |d: &DateSetting| d.0.clone().map_or(Value::Null, Value::String);
        if let Some(d) = &self.hard_copy_served {
            out.push((Field::HardCopyServed, date(d)));
        }
        if let Some(n) = self.user_notice {
            if n == UserNotice::ProhibitedUnconfirmed {
                return Err(UsageError(
                    "--user-notice takes permitted, prohibited or unknown; \"to be confirmed\" is set by triage only"
                        .into(),
                ));
            }
            out.push((Field::UserNotice, n.as_str().into()));
            match (&self.until, n) {
                (Some(u), UserNotice::Prohibited) => out.push((Field::UserNoticeUntil, date(u))),
                (Some(_), _) => {
                    return Err(UsageError(
                        "--until applies only with --user-notice prohibited".into(),
                    ));
                }
                // Notice that is no longer prohibited has no end date.
                (None, _) if n != UserNotice::Prohibited => {
                    out.push((Field::UserNoticeUntil, Value::Null))
                }
                (None, _) => {}
            }
        } else if self.until.is_some() {
            return Err(UsageError("--until needs --user-notice prohibited".into()));
        }
        if let Some(d) = &self.user_notified {
            out.push((Field::UserNotified, date(d)));
        }
        if let Some(d) = &self.deadline {
            out.push((Field::Deadline, date(d)));
        }
        if let Some(k) = self.kind {
            out.push((Field::Kind, k.as_str().into()));
        }
        if let Some(e) = self.emergency {
            out.push((Field::Emergency, e.into()));
        }
        if let Some(o) = self.outcome {
            out.push((Field::Outcome, o.0.map(|o| o.as_str()).into()));
        }
        // Only real changes become events.
        out.retain(|(f, v)| case.value(*f) != *v);
        Ok(out)
    }

    fn is_empty(&self) -> bool {
        self.hard_copy_served.is_none()
            && self.user_notice.is_none()
            && self.until.is_none()
            && self.user_notified.is_none()
            && self.deadline.is_none()
            && self.kind.is_none()
            && self.emergency.is_none()
            && self.outcome.is_none()
            && self.note.is_none()
    }
}

/// `cases set`: changes fields; returns one line per change made.
pub fn set(
    store: &mut Store,
    reference: Reference,
    changes: &Changes,
    actor: &str,
    clock: Clock,
) -> anyhow::Result<Vec<String>> {
    if changes.is_empty() {
        return Err(UsageError(
            "nothing to change: give --hard-copy-served, --user-notice, --user-notified, --deadline, --kind, --emergency, --outcome or --note"
                .into(),
        )
        .into());
    }
    let note = changes.note.as_deref().map(|n| crate::text::clean(n, 2000));
    let tx = store.begin()?;
    let ops = tx.ops();
    let case = ops.case(reference)?.ok_or(Refused::NoSuchCase(reference))?;
    let at = clock::stamp(clock.now());
    let mut said = Vec::new();
    for (field, to) in changes.fields(&case)? {
        let from = case.value(field);
        ops.set_field(case.id, field, &to, &at)?;
        let mut data = json!({ "field": field.as_str(), "from": from, "to": to });
        if let Some(n) = &note {
            data["note"] = n.clone().into();
        }
        audit::append(&ops, &at, actor, Some(case.id), kind::FIELD_CHANGED, &data)?;
        said.push(format!("{reference}: {} {from} → {to}", field.as_str()));
    }
    if said.is_empty() {
        match &note {
            Some(n) => {
                audit::append(
                    &ops,
                    &at,
                    actor,
                    Some(case.id),
                    kind::NOTE,
                    &json!({ "note": n }),
                )?;
                said.push(format!("{reference}: note recorded"));
            }
            None => said.push(format!("{reference}: nothing changed")),
        }
    }
    tx.commit()?;
    Ok(said)
}

/// `cases set-status`: moves a case along; returns the line to print.
pub fn set_status(
    store: &mut Store,
    reference: Reference,
    to: Status,
    note: Option<&str>,
    actor: &str,
    clock: Clock,
) -> anyhow::Result<String> {
    let note = note.map(|n| crate::text::clean(n, 2000));
    let tx = store.begin()?;
    let ops = tx.ops();
    let case = ops.case(reference)?.ok_or(Refused::NoSuchCase(reference))?;
    case.status
        .check_move(to, note.as_deref())
        .map_err(|reason| Refused::Move { reference, reason })?;
    let at = clock::stamp(clock.now());
    ops.set_status(case.id, to, &at)?;
    let mut data = json!({ "from": case.status.as_str(), "to": to.as_str() });
    if let Some(n) = &note {
        data["note"] = n.clone().into();
    }
    audit::append(&ops, &at, actor, Some(case.id), kind::STATUS_CHANGED, &data)?;
    tx.commit()?;
    Ok(format!(
        "{reference}: {} → {} (by {actor})",
        case.status.as_str(),
        to.as_str()
    ))
}

/// `cases release`: a person has confirmed a quarantined request out of
/// band and decides it is to be answered. The case moves to
/// `under_review` and an acknowledgement to its requester is queued, in
/// reply to its first message; both events name the person and carry the
/// note (required: the decision is theirs, not the evidence's). The
/// daemon (or `run --once`) sends it. `reply_domain` is that of our
/// Message-IDs (`msgid::domain`).
pub fn release(
    store: &mut Store,
    reference: Reference,
    note: &str,
    reply_domain: &str,
    actor: &str,
    clock: Clock,
) -> anyhow::Result<Vec<String>> {
    let note = crate::text::clean(note, 2000);
    if note.is_empty() {
        return Err(
            UsageError("--note is required: say how the request was confirmed".into()).into(),
        );
    }
    let tx = store.begin()?;
    let ops = tx.ops();
    let case = ops.case(reference)?.ok_or(Refused::NoSuchCase(reference))?;
    let refuse = |reason: &str| Refused::Move {
        reference,
        reason: reason.to_string(),
    };
    if case.status != Status::Quarantined {
        return Err(refuse(&format!(
            "only a quarantined case is released; this one is {}",
            case.status.as_str()
        ))
        .into());
    }
    let Some(recipient) = case.requester.clone() else {
        return Err(refuse("the case has no requester's address to acknowledge").into());
    };
    let Some(first) = ops.messages_of(case.id, false)?.into_iter().next() else {
        return Err(refuse("the case has no message").into());
    };
    let to = Status::UnderReview;
    case.status
        .check_move(to, Some(&note))
        .map_err(|reason| Refused::Move { reference, reason })?;
    let now = clock.now();
    let at = clock::stamp(now);
    ops.set_status(case.id, to, &at)?;
    audit::append(
        &ops,
        &at,
        actor,
        Some(case.id),
        kind::STATUS_CHANGED,
        &json!({ "from": case.status.as_str(), "to": to.as_str(), "note": note, "released": true }),
    )?;
    let kind = crate::case::ReplyKind::Acknowledgement;
    let tag = crate::msgid::fresh_tag(
        now,
        &[
            first.sha256.as_bytes(),
            kind.as_str().as_bytes(),
            b"release",
        ],
    );
    let msgid = format!("<{reference}.{tag}@{reply_domain}>");
    let outbox = ops.queue_reply(&crate::store::NewReply {
        case_id: case.id,
        message_id: first.id,
        kind,
        recipient: &recipient,
        msgid: &msgid,
        in_reply_to: first.msgid.as_deref(),
        subject: first.subject.as_deref(),
        now: &at,
    })?;
    audit::append(
        &ops,
        &at,
        actor,
        Some(case.id),
        kind::REPLY_QUEUED,
        &json!({
            "outbox": outbox,
            "message": first.id,
            "kind": kind,
            "recipient": recipient,
            "msgid": msgid,
            "in_reply_to": first.msgid,
            "released_by": actor,
            "note": note,
        }),
    )?;
    tx.commit()?;
    Ok(vec![
        format!("{reference}: quarantined → under_review (released by {actor})"),
        format!(
            "{reference}: acknowledgement to {recipient} queued; it is sent at the daemon's next drain"
        ),
    ])
}

/// `cases resend`: a person decides that the case's replies whose fate is
/// `unknown` (a transaction broke after the content went out) or that
/// `failed` are to be sent again. Each goes back to `pending`, due now,
/// with a new give-up window, and a `reply_resend` event names who asked;
/// the daemon (or `run --once`) sends them. Returns one line per reply.
pub fn resend(
    store: &mut Store,
    reference: Reference,
    note: Option<&str>,
    actor: &str,
    clock: Clock,
) -> anyhow::Result<Vec<String>> {
    let note = note.map(|n| crate::text::clean(n, 2000));
    let tx = store.begin()?;
    let ops = tx.ops();
    let case = ops.case(reference)?.ok_or(Refused::NoSuchCase(reference))?;
    let at = clock::stamp(clock.now());
    let mut said = Vec::new();
    for r in ops.replies_of(case.id)? {
        if !(r.status == "unknown" || r.status == "failed") || !ops.requeue_reply(r.id, &at)? {
            continue;
        }
        let mut data = json!({
            "outbox": r.id,
            "from": r.status,
            "attempts": r.attempts,
            "last_error": r.last_error,
        });
        if let Some(n) = &note {
            data["note"] = n.clone().into();
        }
        audit::append(&ops, &at, actor, Some(case.id), kind::REPLY_RESEND, &data)?;
        said.push(format!(
            "{reference}: {} to {} {} → pending (by {actor}); it is sent at the daemon's next drain",
            r.kind, r.recipient, r.status
        ));
    }
    if said.is_empty() {
        return Err(Refused::NothingToResend(reference).into());
    }
    tx.commit()?;
    Ok(said)
}

/// The transparency figures of `year` from one snapshot of the log.
pub fn figures(
    store: &mut Store,
    year: i32,
    clock: Clock,
) -> anyhow::Result<crate::stats::Figures> {
    let snapshot = store.snapshot()?;
    let ops = snapshot.ops();
    Ok(crate::stats::figures(
        year,
        &ops.cases_of_year(year)?,
        clock::stamp(clock.now()),
        ops.head()?,
    ))
}

/// Everything about one case (`cases show --json`, and `cases export`).
#[derive(Debug, Serialize)]
pub struct Dossier {
    pub case: Case,
    pub messages: Vec<ShownMessage>,
    pub replies: Vec<ReplyRow>,
    pub events: Vec<ShownEvent>,
}

/// A message with its verdict.
#[derive(Debug, Serialize)]
pub struct ShownMessage {
    #[serde(flatten)]
    pub message: MessageRow,
    pub verdict: Option<ShownVerdict>,
}

#[derive(Debug, Serialize)]
pub struct ShownVerdict {
    #[serde(flatten)]
    pub verdict: VerdictRow,
    /// The evidence as at receipt.
    pub evidence: Value,
}

/// An event with its data parsed.
#[derive(Debug, Serialize)]
pub struct ShownEvent {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub kind: String,
    pub data: Value,
    pub prev_hash: String,
    pub hash: String,
}

impl From<EventRow> for ShownEvent {
    fn from(e: EventRow) -> Self {
        ShownEvent {
            id: e.id,
            at: e.at,
            actor: e.actor,
            kind: e.kind,
            data: serde_json::from_str(&e.data).unwrap_or(Value::String(e.data)),
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

/// Reads one case with everything filed on it.
pub fn dossier(store: &mut Store, reference: Reference, with_raw: bool) -> anyhow::Result<Dossier> {
    let snapshot = store.snapshot()?;
    let ops = snapshot.ops();
    let case = ops.case(reference)?.ok_or(Refused::NoSuchCase(reference))?;
    let mut verdicts = ops.verdicts_of(case.id)?;
    let messages = ops
        .messages_of(case.id, with_raw)?
        .into_iter()
        .map(|message| {
            let verdict = verdicts
                .iter()
                .position(|v| v.message_id == message.id)
                .map(|i| verdicts.swap_remove(i))
                .map(|v| ShownVerdict {
                    evidence: serde_json::from_str(&v.evidence_json).unwrap_or(Value::Null),
                    verdict: v,
                });
            ShownMessage { message, verdict }
        })
        .collect();
    Ok(Dossier {
        replies: ops.replies_of(case.id)?,
        events: ops
            .events_of(case.id)?
            .into_iter()
            .map(ShownEvent::from)
            .collect(),
        messages,
        case,
    })
}

/// One line about the evidence: each DKIM signature, SPF and DMARC.
pub fn evidence_summary(e: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let dkim: Vec<String> = e["dkim"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    format!(
                        "{}/{}={}",
                        s(&c["domain"]),
                        s(&c["selector"]),
                        s(&c["result"])
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "dkim {}; spf {} {} {}; dmarc {}",
        if dkim.is_empty() {
            "none".to_string()
        } else {
            dkim.join(" ")
        },
        s(&e["spf"]["result"]),
        s(&e["spf"]["domain"]),
        s(&e["spf"]["ip"]),
        s(&e["dmarc"]["result"]),
    )
}

/// One line about the triage findings.
pub fn findings_summary(f: &Value) -> String {
    let list = |k: &str| {
        f[k].as_array()
            .filter(|a| !a.is_empty())
            .map(|a| {
                format!(
                    " {k}={}",
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                )
            })
            .unwrap_or_default()
    };
    let mut s = format!(
        "kind={}{}",
        f["kind"].as_str().unwrap_or("other"),
        if f["emergency"].as_bool() == Some(true) {
            " EMERGENCY"
        } else {
            ""
        }
    );
    for k in ["accounts", "emails", "ips", "timestamps", "attachments"] {
        s.push_str(&list(k));
    }
    if let Some(g) = f["gag_order"].as_str() {
        s.push_str(&format!(" gag-order={g:?}"));
    }
    if let Some(h) = f["no_logs_hint"].as_str() {
        s.push_str(&format!(" hint: {h}"));
    }
    s
}
