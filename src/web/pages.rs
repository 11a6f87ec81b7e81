//! The board's views: open cases by state, deadlines, the quarantine,
//! search, and one case with everything filed on it; the raw message and
//! attachment downloads.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::session::{Frame, Signed};
use super::{Board, Failure, page, reference};
use crate::case::{Case, Status};
use crate::casework::{self, Dossier};
use crate::clock;
use crate::notice;
use crate::readable::{self, Readable};
use crate::store::ReplyRow;

/// A case as one line of a list.
pub struct Row {
    pub reference: String,
    pub status: &'static str,
    pub opened: String,
    pub kind: &'static str,
    pub agency: String,
    pub requester: String,
    pub authenticated: bool,
    pub emergency: bool,
    pub deadline: String,
    pub reminders: Vec<String>,
}

impl Row {
    fn of(c: &Case, today: Today) -> Row {
        Row {
            reference: c.reference.to_string(),
            status: c.status.as_str(),
            opened: c.opened_at.get(..10).unwrap_or(&c.opened_at).to_string(),
            kind: c.kind.as_str(),
            agency: c.agency.clone().unwrap_or_default(),
            requester: c.requester.clone().unwrap_or_default(),
            authenticated: c.authenticated,
            emergency: c.emergency,
            deadline: c.deadline.clone().unwrap_or_default(),
            reminders: c.reminders(today.date, today.hard_copy_days),
        }
    }
}

/// A titled list of cases.
pub struct Group {
    pub title: String,
    pub rows: Vec<Row>,
}

/// The local day the board is looking at, and what its reminders count.
#[derive(Clone, Copy)]
struct Today {
    date: time::Date,
    hard_copy_days: u32,
}

impl Today {
    /// The digest's sorting of `cases` (its counts and deadline sections).
    fn digest(self, board: &Board, cases: &[Case]) -> notice::DigestFacts {
        notice::digest(
            cases,
            self.date,
            "",
            board.clock.now(),
            None,
            self.hard_copy_days,
        )
    }
}

fn today(board: &Board) -> Result<Today, Failure> {
    Ok(Today {
        date: clock::local(board.clock.now())?.date,
        hard_copy_days: board.hard_copy_days,
    })
}

async fn all_cases(board: &Board) -> Result<Vec<Case>, Failure> {
    Ok(board.store.run(|s| s.read().all_cases()).await?)
}

#[derive(Template)]
#[template(path = "board.html")]
struct BoardPage {
    frame: Frame,
    emergency: Vec<Row>,
    reminders: Vec<Row>,
    groups: Vec<Group>,
    quarantined: usize,
    overdue: usize,
    due_soon: usize,
}

/// `GET /`: open cases by state, emergencies and reminders first.
pub async fn board(State(board): State<Arc<Board>>, signed: Signed) -> Result<Response, Failure> {
    let today = today(&board)?;
    let cases = all_cases(&board).await?;
    let facts = today.digest(&board, &cases);
    let open: Vec<&Case> = cases
        .iter()
        .filter(|c| !matches!(c.status, Status::Closed | Status::Quarantined))
        .collect();
    let groups = Status::ALL
        .iter()
        .filter(|s| !matches!(s, Status::Closed | Status::Quarantined))
        .map(|s| Group {
            title: s.as_str().replace('_', " "),
            rows: open
                .iter()
                .filter(|c| c.status == *s)
                .map(|c| Row::of(c, today))
                .collect(),
        })
        .collect();
    page(&BoardPage {
        frame: Frame::from(&signed),
        emergency: open
            .iter()
            .filter(|c| c.emergency)
            .map(|c| Row::of(c, today))
            .collect(),
        reminders: open
            .iter()
            .map(|c| Row::of(c, today))
            .filter(|r| !r.reminders.is_empty())
            .collect(),
        groups,
        quarantined: facts.quarantined.total,
        overdue: facts.overdue.total,
        due_soon: facts.due_soon.total,
    })
}

#[derive(Template)]
#[template(path = "deadlines.html")]
struct DeadlinesPage {
    frame: Frame,
    groups: Vec<Group>,
}

/// `GET /deadlines`: overdue, then due within a week, then later.
pub async fn deadlines(
    State(board): State<Arc<Board>>,
    signed: Signed,
) -> Result<Response, Failure> {
    let today = today(&board)?;
    let cases = all_cases(&board).await?;
    let facts = today.digest(&board, &cases);
    let rows = |section: &notice::Section| -> Vec<Row> {
        section
            .cases
            .iter()
            .filter_map(|d| {
                cases
                    .iter()
                    .find(|c| c.reference.to_string() == d.reference)
            })
            .map(|c| Row::of(c, today))
            .collect()
    };
    let listed: Vec<String> = facts
        .overdue
        .cases
        .iter()
        .chain(&facts.due_soon.cases)
        .map(|d| d.reference.clone())
        .collect();
    let later = cases
        .iter()
        .filter(|c| {
            c.deadline.is_some()
                && !matches!(c.status, Status::Closed | Status::Responded)
                && !listed.contains(&c.reference.to_string())
        })
        .map(|c| Row::of(c, today))
        .collect();
    page(&DeadlinesPage {
        frame: Frame::from(&signed),
        groups: vec![
            Group {
                title: "Overdue".into(),
                rows: rows(&facts.overdue),
            },
            Group {
                title: format!("Due within {} days", notice::DUE_WITHIN_DAYS),
                rows: rows(&facts.due_soon),
            },
            Group {
                title: "Later".into(),
                rows: later,
            },
        ],
    })
}

/// A quarantined case with why each of its messages was held.
pub struct Held {
    pub row: Row,
    pub messages: Vec<HeldMessage>,
}

pub struct HeldMessage {
    pub received_at: String,
    pub sender: String,
    pub subject: String,
    pub reason: String,
    pub evidence: String,
}

#[derive(Template)]
#[template(path = "quarantine.html")]
struct QuarantinePage {
    frame: Frame,
    held: Vec<Held>,
}

/// `GET /quarantine`: every quarantined case and its verdicts' reasons.
pub async fn quarantine(
    State(board): State<Arc<Board>>,
    signed: Signed,
) -> Result<Response, Failure> {
    let today = today(&board)?;
    let held = board
        .store
        .run(move |s| {
            let cases = s.read().cases(Some(Status::Quarantined))?;
            let mut held = Vec::new();
            for c in cases {
                let d = casework::dossier(s, c.reference, false)?;
                held.push(Held {
                    row: Row::of(&c, today),
                    messages: d
                        .messages
                        .iter()
                        .map(|m| HeldMessage {
                            received_at: m.message.received_at.clone(),
                            sender: m.message.sender.clone().unwrap_or_default(),
                            subject: m.message.subject.clone().unwrap_or_default(),
                            reason: m
                                .verdict
                                .as_ref()
                                .map(|v| v.verdict.reason.clone())
                                .unwrap_or_default(),
                            evidence: m
                                .verdict
                                .as_ref()
                                .map(|v| casework::evidence_summary(&v.evidence))
                                .unwrap_or_default(),
                        })
                        .collect(),
                });
            }
            Ok(held)
        })
        .await?;
    page(&QuarantinePage {
        frame: Frame::from(&signed),
        held,
    })
}

#[derive(Deserialize, Default)]
pub struct SearchQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

#[derive(Template)]
#[template(path = "search.html")]
struct SearchPage {
    frame: Frame,
    q: String,
    from: String,
    to: String,
    searched: bool,
    rows: Vec<Row>,
}

/// `GET /search?q=&from=&to=`: by reference, agency, requester, subject,
/// identifier (account ID, IP, address: the triage findings) or the
/// message text, and by the day the case was opened.
pub async fn search(
    State(board): State<Arc<Board>>,
    signed: Signed,
    Query(query): Query<SearchQuery>,
) -> Result<Response, Failure> {
    let today = today(&board)?;
    let q = crate::text::clean(query.q.trim(), 200);
    let day = |s: &str| -> Result<String, Failure> {
        let s = s.trim();
        if s.is_empty() || clock::parse_date_or_instant(s).is_some_and(|d| d.len() == 10) {
            Ok(s.to_string())
        } else {
            Err(Failure::BadRequest(format!(
                "`{s}` is not a day such as 2026-12-01"
            )))
        }
    };
    let (from, to) = (day(&query.from)?, day(&query.to)?);
    let searched = !(q.is_empty() && from.is_empty() && to.is_empty());
    let rows = if searched {
        let needle = q.clone();
        let cases = board.store.run(move |s| s.read().search(&needle)).await?;
        cases
            .iter()
            .filter(|c| {
                let opened = c.opened_at.get(..10).unwrap_or(&c.opened_at);
                (from.is_empty() || opened >= from.as_str())
                    && (to.is_empty() || opened <= to.as_str())
            })
            .map(|c| Row::of(c, today))
            .collect()
    } else {
        Vec::new()
    };
    page(&SearchPage {
        frame: Frame::from(&signed),
        q,
        from: query.from.trim().to_string(),
        to: query.to.trim().to_string(),
        searched,
        rows,
    })
}

/// A filed message as the case page shows it.
pub struct ShownMessage {
    pub id: i64,
    pub received_at: String,
    pub sender: String,
    pub subject: String,
    pub msgid: String,
    pub size: i64,
    pub sha256: String,
    pub decision: String,
    pub reason: String,
    pub evidence: String,
    pub triage: String,
    pub readable: Readable,
}

/// A reply or notice as the case page shows it, with what was sent.
pub struct ShownReply {
    pub kind: String,
    pub recipient: String,
    pub status: String,
    pub queued_at: String,
    pub sent_at: String,
    pub last_error: String,
    pub text: String,
}

pub struct ShownEvent {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub kind: String,
    pub data: String,
}

#[derive(Template)]
#[template(path = "case.html")]
struct CasePage {
    frame: Frame,
    row: Row,
    case: Case,
    user_notice: String,
    next: Vec<&'static str>,
    messages: Vec<ShownMessage>,
    replies: Vec<ShownReply>,
    events: Vec<ShownEvent>,
    kinds: Vec<&'static str>,
}

/// `GET /cases/{reference}`.
pub async fn case(
    State(board): State<Arc<Board>>,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let reference = reference(&id)?;
    let today = today(&board)?;
    let (dossier, sent): (Dossier, Vec<Option<Vec<u8>>>) = board
        .store
        .run(move |s| {
            let d = casework::dossier(s, reference, true)?;
            let ops = s.read();
            let sent = d
                .replies
                .iter()
                .map(|r| ops.sent_bytes(r.id))
                .collect::<anyhow::Result<_>>()?;
            Ok((d, sent))
        })
        .await?;
    let c = &dossier.case;
    let messages = dossier
        .messages
        .iter()
        .map(|m| {
            let msg = &m.message;
            ShownMessage {
                id: msg.id,
                received_at: msg.received_at.clone(),
                sender: msg.sender.clone().unwrap_or_default(),
                subject: msg.subject.clone().unwrap_or_default(),
                msgid: msg.msgid.clone().unwrap_or_default(),
                size: msg.size,
                sha256: msg.sha256.clone(),
                decision: m
                    .verdict
                    .as_ref()
                    .map(|v| v.verdict.decision.clone())
                    .unwrap_or_default(),
                reason: m
                    .verdict
                    .as_ref()
                    .map(|v| v.verdict.reason.clone())
                    .unwrap_or_default(),
                evidence: m
                    .verdict
                    .as_ref()
                    .map(|v| casework::evidence_summary(&v.evidence))
                    .unwrap_or_default(),
                triage: casework::findings_summary(&msg.findings),
                readable: msg.raw.as_deref().map(readable::read).unwrap_or_default(),
            }
        })
        .collect();
    let replies = dossier
        .replies
        .iter()
        .zip(sent)
        .map(|(r, bytes): (&ReplyRow, _)| ShownReply {
            kind: r.kind.clone(),
            recipient: r.recipient.clone(),
            status: r.status.clone(),
            queued_at: r.queued_at.clone(),
            sent_at: r.sent_at.clone().unwrap_or_default(),
            last_error: r.last_error.clone().unwrap_or_default(),
            text: bytes
                .as_deref()
                .map(|b| readable::read(b).text)
                .unwrap_or_default(),
        })
        .collect();
    let events = dossier
        .events
        .iter()
        .map(|e| ShownEvent {
            id: e.id,
            at: e.at.clone(),
            actor: e.actor.clone(),
            kind: e.kind.clone(),
            data: e.data.to_string(),
        })
        .collect();
    page(&CasePage {
        frame: Frame::from(&signed),
        row: Row::of(c, today),
        user_notice: format!(
            "{}{}",
            c.user_notice.describe(),
            c.user_notice_until
                .as_deref()
                .map(|u| format!(" until {u}"))
                .unwrap_or_default()
        ),
        next: c.status.next().iter().map(|s| s.as_str()).collect(),
        messages,
        replies,
        events,
        kinds: crate::triage::RequestKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect(),
        case: dossier.case,
    })
}

/// A message of the case (with its raw bytes), or not found.
async fn message_of(board: &Board, id: &str, message: i64) -> Result<(i64, Vec<u8>), Failure> {
    let reference = reference(id)?;
    board
        .store
        .run(move |s| {
            let ops = s.read();
            let Some(case) = ops.case(reference)? else {
                return Ok(None);
            };
            Ok(ops
                .message(message, true)?
                .filter(|m| m.case_id == case.id)
                .and_then(|m| m.raw.map(|raw| (m.id, raw))))
        })
        .await?
        .ok_or(Failure::NotFound)
}

/// A download: always a file to save, never a page to show.
fn download(name: &str, bytes: Vec<u8>) -> Response {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; sandbox".to_string(),
            ),
        ],
        bytes,
    )
        .into_response()
}

/// `GET /cases/{reference}/messages/{id}/raw`: the message as filed.
pub async fn raw(
    State(board): State<Arc<Board>>,
    _signed: Signed,
    Path((id, message)): Path<(String, i64)>,
) -> Result<Response, Failure> {
    let (mid, raw) = message_of(&board, &id, message).await?;
    Ok(download(&format!("{id}-message-{mid}.eml"), raw))
}

/// `GET /cases/{reference}/messages/{id}/attachments/{index}`.
pub async fn attachment(
    State(board): State<Arc<Board>>,
    _signed: Signed,
    Path((id, message, index)): Path<(String, i64, usize)>,
) -> Result<Response, Failure> {
    let (_, raw) = message_of(&board, &id, message).await?;
    let (name, bytes) = readable::attachment(&raw, index).ok_or(Failure::NotFound)?;
    Ok(download(&name, bytes))
}

/// `GET /cases/{reference}/bundle`: the evidence bundle of `cases export`
/// (an audit event names the account) as one ustar archive,
/// `LR-YYYY-NNNN/…` with its `manifest.json`.
pub async fn bundle(
    State(board): State<Arc<Board>>,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let reference = reference(&id)?;
    let (actor, clock) = (signed.actor(), board.clock);
    let archive = board
        .store
        .run(move |s| {
            let scratch = std::env::temp_dir()
                .join(format!("legal-intake-bundle-{}", crate::accounts::token()?));
            let folder = scratch.join(reference.to_string());
            let made = (|| {
                crate::export::export(s, reference, &folder, &actor, clock)?;
                let mut names = std::fs::read_dir(&folder)?
                    .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect::<Result<Vec<_>, _>>()?;
                names.sort();
                let files = names
                    .into_iter()
                    .map(|n| Ok((format!("{reference}/{n}"), std::fs::read(folder.join(&n))?)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let mtime = u64::try_from(clock.now().unix_timestamp()).unwrap_or(0);
                let entries: Vec<crate::tar::Entry<'_>> = files
                    .iter()
                    .map(|(path, bytes)| crate::tar::Entry { path, bytes, mtime })
                    .collect();
                crate::tar::ustar(&entries).map_err(anyhow::Error::msg)
            })();
            let _ = std::fs::remove_dir_all(&scratch);
            made
        })
        .await?;
    Ok(download(&format!("{reference}-evidence.tar"), archive))
}

#[derive(Deserialize, Default)]
pub struct StatsQuery {
    #[serde(default)]
    year: Option<i32>,
}

#[derive(Template)]
#[template(path = "stats.html")]
struct StatsPage {
    frame: Frame,
    figures: crate::stats::Figures,
    sections: Vec<(&'static str, Vec<(String, usize)>)>,
}

/// `GET /stats?year=`: the transparency figures of `cases stats`.
pub async fn stats(
    State(board): State<Arc<Board>>,
    signed: Signed,
    Query(query): Query<StatsQuery>,
) -> Result<Response, Failure> {
    let clock = board.clock;
    let year = query.year.unwrap_or_else(|| clock.now().year());
    if !(2000..=9999).contains(&year) {
        return Err(Failure::BadRequest(format!(
            "{year} is not a year of the case log"
        )));
    }
    let figures = board
        .store
        .run(move |s| casework::figures(s, year, clock))
        .await?;
    let pairs = |m: &std::collections::BTreeMap<String, usize>| {
        m.iter().map(|(k, n)| (k.replace('_', " "), *n)).collect()
    };
    let sections = vec![
        ("By decision", pairs(&figures.by_decision)),
        ("By kind", pairs(&figures.by_kind)),
        ("By agency", pairs(&figures.by_agency)),
        ("Acknowledged, by outcome", pairs(&figures.by_outcome)),
    ];
    page(&StatsPage {
        frame: Frame::from(&signed),
        figures,
        sections,
    })
}
