//! Pure: what the legal team is told — an internal notice per filed
//! message and a daily digest — as facts and as RFC 5322 bytes.
//!
//! The facts ([`NoticeFacts`], [`DigestFacts`]) are fixed when the mail is
//! queued and stored with it as JSON (`outbox.payload`, vouched for by the
//! audit event that queued it); they are rendered when the mail is sent,
//! like a reply. Both carry the audit chain head at the moment they were
//! queued, so every mail the legal team holds anchors the chain outside
//! the machine (`audit verify --head HASH`, SPEC.md "Evidence").
//!
//! A notice says what the team needs to decide whether to look now:
//! reference, agency, decision and its reason, request kind, the
//! emergency flag (prominently), the deadline if any, the sender and the
//! sanitised subject. It never carries the message body or its
//! attachments (not even their names): those stay in the case log.
//!
//! Bodies are plain UTF-8 text wrapped at [`WIDTH`] columns, with a
//! hanging indent for long values. Everything that came from a sender
//! (address, subject) is cleaned again here with [`crate::text::clean`],
//! so nothing in it can create a header or a control character.

use mail_builder::MessageBuilder;
use mail_builder::headers::raw::Raw;
use serde::{Deserialize, Serialize};
use time::{Date, Duration, OffsetDateTime};

use crate::case::{Case, Status};
use crate::clock::parse_instant;
use crate::decide::Decision;
use crate::text::clean;

/// The column at which bodies are wrapped.
pub const WIDTH: usize = 72;

/// The emergency line, exactly as the team learns to look for it.
pub const EMERGENCY: &str = "EMERGENCY — confirm out of band before acting";

/// At most this many cases are listed per digest section; the count is
/// always complete.
pub const MAX_LISTED: usize = 100;

/// How far ahead the digest looks for deadlines.
pub const DUE_WITHIN_DAYS: i64 = 7;

/// Why a notice is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeEvent {
    /// The message opened a case.
    NewCase,
    /// The message was filed on an existing case.
    MessageAdded,
}

/// What a notice says, fixed at filing time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeFacts {
    pub event: NoticeEvent,
    /// `LR-2026-0042`.
    pub reference: String,
    /// The case's status after the filing.
    pub status: String,
    /// The allowlisted agency of the case.
    pub agency: Option<String>,
    /// This message's decision and its one-line reason.
    pub decision: Decision,
    pub reason: String,
    /// The case's request kind and emergency flag after the filing.
    pub kind: String,
    pub emergency: bool,
    /// The case's response deadline, when one is set.
    pub deadline: Option<String>,
    /// This message's From address, when it had a usable one.
    pub from: Option<String>,
    /// Whether that address was authenticated (decision acknowledge or
    /// reject).
    pub authenticated: bool,
    /// This message's subject, sanitised.
    pub subject: Option<String>,
    /// The reply queued for the message (`acknowledgement`, `rejection`).
    pub reply: Option<String>,
    /// Why no reply was queued, when the decision called for one.
    pub reply_suppressed: Option<String>,
    /// The message's position on the case (1 for the first).
    pub message_number: i64,
    /// When it was filed (stored form).
    pub filed_at: String,
    /// The audit chain head once this filing's events are in the chain.
    pub head: String,
}

/// One case as a digest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestCase {
    pub reference: String,
    pub status: String,
    pub kind: String,
    pub agency: Option<String>,
    pub requester: Option<String>,
    pub authenticated: bool,
    pub emergency: bool,
    pub deadline: Option<String>,
    pub opened_at: String,
}

/// A section of the digest: how many cases it has and the first
/// [`MAX_LISTED`] of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub total: usize,
    pub cases: Vec<DigestCase>,
}

impl Section {
    fn push(&mut self, c: DigestCase) {
        self.total += 1;
        if self.cases.len() < MAX_LISTED {
            self.cases.push(c);
        }
    }
}

/// What a daily digest says, fixed when it is queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestFacts {
    /// The local calendar day it is for (`2026-11-29`).
    pub day: String,
    /// The local time zone that day is in (`Europe/Gibraltar`).
    pub zone: String,
    /// When it was made (stored form, UTC).
    pub made_at: String,
    /// Cases not closed (quarantined ones included: they await review).
    pub open: Section,
    /// Deadlines from today up to [`DUE_WITHIN_DAYS`] days ahead, soonest
    /// first, of cases neither closed nor responded.
    pub due_soon: Section,
    /// Deadlines passed, of cases neither closed nor responded, most
    /// overdue first.
    pub overdue: Section,
    /// Cases in `quarantined`.
    pub quarantined: Section,
    /// What the team should be reminded of, case by case
    /// (`Case::reminders`); absent from digests queued before there were
    /// reminders.
    #[serde(default)]
    pub reminders: Vec<Reminder>,
    /// The audit chain head when the digest was made; `None` while the
    /// log has no events.
    pub head: Option<String>,
}

/// One reminder about one case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reminder {
    pub reference: String,
    pub text: String,
}

/// A deadline as the team sets it: a calendar day (due by the end of that
/// local day) or an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Deadline {
    Day(Date),
    At(OffsetDateTime),
}

fn parse_deadline(s: &str) -> Option<Deadline> {
    let s = s.trim();
    if s.len() == 10 {
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        return Date::parse(s, fmt).ok().map(Deadline::Day);
    }
    parse_instant(s).map(Deadline::At)
}

/// Where a deadline stands on `today` (local) at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Overdue,
    Soon,
    Later,
}

fn due(deadline: Deadline, today: Date, now: OffsetDateTime) -> Due {
    let within = Duration::days(DUE_WITHIN_DAYS);
    match deadline {
        Deadline::Day(d) if d < today => Due::Overdue,
        Deadline::Day(d) if d <= today + within => Due::Soon,
        Deadline::At(t) if t < now => Due::Overdue,
        Deadline::At(t) if t <= now + within => Due::Soon,
        _ => Due::Later,
    }
}

/// The digest of `cases` (the log's cases that are not closed) on the
/// local day `today` at the instant `now`.
pub fn digest(
    cases: &[Case],
    today: Date,
    zone: &str,
    now: OffsetDateTime,
    head: Option<String>,
    hard_copy_days: u32,
) -> DigestFacts {
    let mut facts = DigestFacts {
        day: crate::clock::day(today),
        zone: zone.to_string(),
        made_at: crate::clock::stamp(now),
        open: Section::default(),
        due_soon: Section::default(),
        overdue: Section::default(),
        quarantined: Section::default(),
        reminders: Vec::new(),
        head,
    };
    let mut soon = Vec::new();
    let mut overdue = Vec::new();
    for c in cases.iter().filter(|c| c.status != Status::Closed) {
        let listed = DigestCase {
            reference: c.reference.to_string(),
            status: c.status.as_str().to_string(),
            kind: c.kind.as_str().to_string(),
            agency: c.agency.clone(),
            requester: c.requester.clone(),
            authenticated: c.authenticated,
            emergency: c.emergency,
            deadline: c.deadline.clone(),
            opened_at: c.opened_at.clone(),
        };
        facts.open.push(listed.clone());
        for text in c.reminders(today, hard_copy_days) {
            facts.reminders.push(Reminder {
                reference: c.reference.to_string(),
                text,
            });
        }
        if c.status == Status::Quarantined {
            facts.quarantined.push(listed.clone());
        }
        // A responded case has met its deadline; a closed one is done.
        if c.status == Status::Responded {
            continue;
        }
        if let Some(d) = c.deadline.as_deref().and_then(parse_deadline) {
            match due(d, today, now) {
                Due::Overdue => overdue.push((d, listed)),
                Due::Soon => soon.push((d, listed)),
                Due::Later => {}
            }
        }
    }
    soon.sort_by_key(|(d, _)| *d);
    overdue.sort_by_key(|(d, _)| *d);
    for (_, c) in soon {
        facts.due_soon.push(c);
    }
    for (_, c) in overdue {
        facts.overdue.push(c);
    }
    facts
}

/// The headers of a notice or digest that do not depend on its content.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// The configured `smtp.from` header value.
    pub from: &'a str,
    /// One `notify.to` address.
    pub to: &'a str,
    /// This mail's Message-ID, with brackets, recorded when queued.
    pub message_id: &'a str,
    /// The first notice about the same case to the same address.
    pub in_reply_to: Option<&'a str>,
    /// When it is sent.
    pub date: OffsetDateTime,
}

/// `[LR-2026-0042] New case: acknowledge — Royal Gibraltar Police`, with
/// `EMERGENCY` after the reference when the case is flagged.
pub fn notice_subject(f: &NoticeFacts) -> String {
    let what = match f.event {
        NoticeEvent::NewCase => "New case",
        NoticeEvent::MessageAdded => "Message added",
    };
    let flag = if f.emergency { "EMERGENCY " } else { "" };
    let agency = clean(f.agency.as_deref().unwrap_or("no agency"), 200);
    format!(
        "[{}] {flag}{what}: {} — {agency}",
        clean(&f.reference, 40),
        f.decision.as_str()
    )
}

/// The notice's text (before wrapping into a message).
pub fn notice_body(f: &NoticeFacts) -> String {
    let reference = clean(&f.reference, 40);
    let mut out = String::new();
    let title = match f.event {
        NoticeEvent::NewCase => format!("New case {reference}"),
        NoticeEvent::MessageAdded => format!(
            "Message {} added to case {reference}",
            f.message_number.max(1)
        ),
    };
    out.push_str(&title);
    out.push_str("\n\n");
    if f.emergency {
        out.push_str(&format!("*** {EMERGENCY} ***\n"));
        push_wrapped(
            &mut out,
            "The request uses emergency wording. An authenticated agency address is not proof of a legitimate request: confirm it with the agency through a known telephone number or in person before acting on it.",
            "",
        );
        out.push('\n');
    }
    field(&mut out, "Reference", &reference);
    field(&mut out, "Status", &clean(&f.status, 40));
    field(
        &mut out,
        "Agency",
        &clean(
            f.agency
                .as_deref()
                .unwrap_or("none (not an allowlisted agency)"),
            200,
        ),
    );
    field(&mut out, "Decision", f.decision.as_str());
    field(&mut out, "Reason", &clean(&f.reason, 1000));
    field(&mut out, "Kind", &clean(&f.kind, 40).replace('_', " "));
    field(
        &mut out,
        "Emergency",
        if f.emergency {
            "YES — confirm out of band before acting"
        } else {
            "no"
        },
    );
    if let Some(d) = &f.deadline {
        field(&mut out, "Deadline", &clean(d, 40));
    }
    let from = match &f.from {
        Some(a) if f.authenticated => format!("{} (authenticated)", clean(a, 320)),
        Some(a) => format!("{} (NOT authenticated)", clean(a, 320)),
        None => "(no usable From address)".to_string(),
    };
    field(&mut out, "From", &from);
    field(
        &mut out,
        "Subject",
        &clean(f.subject.as_deref().unwrap_or("(no subject)"), 300),
    );
    field(
        &mut out,
        "Filed",
        &format!(
            "{}, message {} on this case",
            clean(&f.filed_at, 40),
            f.message_number.max(1)
        ),
    );
    let reply = match (&f.reply, &f.reply_suppressed) {
        (Some(kind), _) => format!("{} queued to the sender", clean(kind, 40)),
        (None, Some(why)) => format!("none: {}", clean(why, 300)),
        (None, None) => "none".to_string(),
    };
    field(&mut out, "Reply", &reply);
    out.push('\n');
    push_head(
        &mut out,
        "Audit chain head after this filing:",
        Some(&f.head),
    );
    out.push('\n');
    push_wrapped(
        &mut out,
        &format!(
            "The message itself and its attachments are not in this notice; they are in the case log: legal-intake cases show {reference}"
        ),
        "",
    );
    out
}

/// `legal-intake daily digest 2026-11-29: 3 open, 1 overdue, 2 quarantined`.
pub fn digest_subject(f: &DigestFacts) -> String {
    format!(
        "legal-intake daily digest {}: {} open, {} overdue, {} quarantined",
        clean(&f.day, 10),
        f.open.total,
        f.overdue.total,
        f.quarantined.total
    )
}

/// The digest's text (before wrapping into a message).
pub fn digest_body(f: &DigestFacts) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "legal-intake daily digest for {} ({})\n\n",
        clean(&f.day, 10),
        clean(&f.zone, 64)
    ));
    push_wrapped(
        &mut out,
        &format!(
            "{} open, {} overdue, {} due within {DUE_WITHIN_DAYS} days, {} quarantined.",
            f.open.total, f.overdue.total, f.due_soon.total, f.quarantined.total
        ),
        "",
    );
    if !f.reminders.is_empty() {
        out.push_str(&format!("\nReminders: {}\n", f.reminders.len()));
        for r in f.reminders.iter().take(MAX_LISTED) {
            push_wrapped(
                &mut out,
                &format!("{}: {}", clean(&r.reference, 40), clean(&r.text, 300)),
                "  ",
            );
        }
    }
    let line = |c: &DigestCase, with_deadline: bool| {
        let mut parts = vec![clean(&c.reference, 40)];
        if with_deadline && let Some(d) = &c.deadline {
            parts.push(format!("deadline {}", clean(d, 40)));
        }
        parts.push(clean(&c.status, 40));
        parts.push(clean(&c.kind, 40).replace('_', " "));
        parts.push(match (&c.agency, &c.requester) {
            (Some(a), _) => clean(a, 200),
            (None, Some(r)) if c.authenticated => clean(r, 320),
            (None, Some(r)) => format!("from {} (not authenticated)", clean(r, 320)),
            (None, None) => "no sender".to_string(),
        });
        if c.emergency {
            parts.push("EMERGENCY".to_string());
        }
        parts
    };
    let sections: [(&str, &Section, bool, &str); 4] = [
        (
            "Overdue (deadline passed; not closed or responded)",
            &f.overdue,
            true,
            "",
        ),
        ("Deadlines in the next 7 days", &f.due_soon, true, ""),
        (
            "Quarantine (not authenticated or not judgeable; awaiting review)",
            &f.quarantined,
            false,
            " --status quarantined",
        ),
        ("Open cases (not closed)", &f.open, true, ""),
    ];
    for (title, section, with_deadline, filter) in sections {
        out.push('\n');
        out.push_str(&format!("{title}: {}\n", section.total));
        if section.total == 0 {
            out.push_str("  none\n");
            continue;
        }
        for c in &section.cases {
            push_parts(&mut out, &line(c, with_deadline));
        }
        if section.total > section.cases.len() {
            push_wrapped(
                &mut out,
                &format!(
                    "… and {} more: legal-intake cases list{filter}",
                    section.total - section.cases.len()
                ),
                "  ",
            );
        }
    }
    out.push('\n');
    push_head(
        &mut out,
        &format!("Audit chain head at {}:", clean(&f.made_at, 40)),
        f.head.as_deref(),
    );
    out
}

/// A notice as a message, CRLF-terminated, ready to be signed and sent.
pub fn render_notice(f: &NoticeFacts, e: &Envelope<'_>) -> Vec<u8> {
    build(&notice_subject(f), &notice_body(f), e)
}

/// A digest as a message, CRLF-terminated, ready to be signed and sent.
pub fn render_digest(f: &DigestFacts, e: &Envelope<'_>) -> Vec<u8> {
    build(&digest_subject(f), &digest_body(f), e)
}

fn build(subject: &str, body: &str, e: &Envelope<'_>) -> Vec<u8> {
    let mut builder = MessageBuilder::new()
        .from(crate::reply::parse_from(e.from))
        .to(clean(e.to, 320))
        .subject(clean(subject, 400))
        .date(e.date.unix_timestamp())
        // Message-ID values are written raw (with their brackets, already
        // clean) so that mail-builder cannot re-wrap or re-quote them.
        .header("Message-ID", Raw::new(clean(e.message_id, 998)))
        .header("Auto-Submitted", Raw::new("auto-generated"))
        .header("X-Auto-Response-Suppress", Raw::new("All"))
        .text_body(body.to_string());
    if let Some(id) = e.in_reply_to {
        let id = clean(id, 998);
        builder = builder
            .header("In-Reply-To", Raw::new(id.clone()))
            .header("References", Raw::new(id));
    }
    builder.write_to_vec().unwrap_or_default()
}

/// The column where a field's value starts.
const LABEL: usize = 12;

/// `Label:     value`, the value wrapped with a hanging indent.
fn field(out: &mut String, label: &str, value: &str) {
    let head = format!("{label}:");
    let head = format!("{head:<LABEL$}");
    let indent = " ".repeat(LABEL);
    let mut first = true;
    for line in wrap_words(value, WIDTH - LABEL) {
        out.push_str(if first { &head } else { &indent });
        out.push_str(&line);
        out.push('\n');
        first = false;
    }
    if first {
        out.push_str(head.trim_end());
        out.push('\n');
    }
}

/// A paragraph wrapped at [`WIDTH`], each line starting with `indent`.
fn push_wrapped(out: &mut String, text: &str, indent: &str) {
    for line in wrap_words(text, WIDTH - indent.chars().count()) {
        out.push_str(indent);
        out.push_str(&line);
        out.push('\n');
    }
}

/// The head hash on a line of its own (64 characters fit the width), and
/// how to check it later.
fn push_head(out: &mut String, title: &str, head: Option<&str>) {
    out.push_str(title);
    out.push('\n');
    match head {
        Some(h) => {
            let h = clean(h, 64);
            out.push_str(&format!("  {h}\n"));
            push_wrapped(
                out,
                "Keep this mail: `legal-intake audit verify --head` with this hash proves at any later time that the case log still holds everything recorded up to this point.",
                "",
            );
        }
        None => out.push_str("  none (the case log has no events yet)\n"),
    }
}

/// One listed case: its parts two spaces apart on a line indented by two,
/// continued on lines indented by four when they do not fit (a part too
/// long for any line, such as a long address, is wrapped at its spaces).
fn push_parts(out: &mut String, parts: &[String]) {
    let mut line = String::from("  ");
    let mut len = 2;
    let mut fresh = true;
    let mut flush = |line: &mut String, len: &mut usize| {
        out.push_str(line);
        out.push('\n');
        *line = String::from("    ");
        *len = 4;
    };
    for part in parts {
        if !fresh && len + 2 + part.chars().count() > WIDTH {
            flush(&mut line, &mut len);
            fresh = true;
        }
        for (i, word) in part.split_whitespace().enumerate() {
            let gap = match (fresh, i) {
                (true, 0) => 0,
                (false, 0) => 2,
                _ => 1,
            };
            let w = word.chars().count();
            if !fresh && len + gap + w > WIDTH {
                flush(&mut line, &mut len);
            } else {
                line.push_str(&" ".repeat(gap));
                len += gap;
            }
            line.push_str(word);
            len += w;
            fresh = false;
        }
    }
    if !fresh {
        flush(&mut line, &mut len);
    }
}

/// Greedy word wrap; a word longer than `width` gets a line of its own.
fn wrap_words(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut len = 0;
    for word in text.split_whitespace() {
        let w = word.chars().count();
        if len > 0 && len + 1 + w > width {
            lines.push(std::mem::take(&mut line));
            len = 0;
        }
        if len > 0 {
            line.push(' ');
            len += 1;
        }
        line.push_str(word);
        len += w;
    }
    if len > 0 {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::{Reference, UserNotice};
    use crate::triage::RequestKind;
    use time::macros::{date, datetime};

    const HEAD: &str = "3f1c0a9e4b7d2c6f8a1e5b9d0c3f7a2e6b4d8c1f5a9e3b7d2c6f0a4e8b1d5c9f";

    fn facts(event: NoticeEvent, emergency: bool) -> NoticeFacts {
        NoticeFacts {
            event,
            reference: "LR-2026-0042".into(),
            status: "received".into(),
            agency: Some("Royal Gibraltar Police".into()),
            decision: Decision::Acknowledge,
            reason: "DKIM pass for police.gi, aligned with the From domain police.gi; Royal Gibraltar Police is on the allowlist".into(),
            kind: "search_warrant".into(),
            emergency,
            deadline: Some("2026-12-01".into()),
            from: Some("officer@police.gi".into()),
            authenticated: true,
            subject: Some("Search warrant RGP/2026/0117\r\nBcc: victim@example.org".into()),
            reply: Some("acknowledgement".into()),
            reply_suppressed: None,
            message_number: 1,
            filed_at: "2026-11-02T10:00:00Z".into(),
            head: HEAD.into(),
        }
    }

    fn envelope(in_reply_to: Option<&str>) -> Envelope<'_> {
        Envelope {
            from: "IVPN Legal <legal@ivpn.net>",
            to: "legal-team@ivpn.net",
            message_id: "<LR-2026-0042.notice.abc@ivpn.net>",
            in_reply_to,
            date: datetime!(2026-11-02 10:00:05 UTC),
        }
    }

    #[test]
    fn subjects() {
        for (event, emergency, expected) in [
            (
                NoticeEvent::NewCase,
                false,
                "[LR-2026-0042] New case: acknowledge — Royal Gibraltar Police",
            ),
            (
                NoticeEvent::MessageAdded,
                false,
                "[LR-2026-0042] Message added: acknowledge — Royal Gibraltar Police",
            ),
            (
                NoticeEvent::NewCase,
                true,
                "[LR-2026-0042] EMERGENCY New case: acknowledge — Royal Gibraltar Police",
            ),
        ] {
            assert_eq!(notice_subject(&facts(event, emergency)), expected);
        }
        let mut f = facts(NoticeEvent::NewCase, false);
        f.agency = None;
        f.decision = Decision::Quarantine;
        assert_eq!(
            notice_subject(&f),
            "[LR-2026-0042] New case: quarantine — no agency"
        );
    }

    #[test]
    fn a_notice_says_what_it_must_and_nothing_more() {
        let body = notice_body(&facts(NoticeEvent::NewCase, true));
        for needle in [
            "New case LR-2026-0042\n",
            "*** EMERGENCY — confirm out of band before acting ***\n",
            "Reference:  LR-2026-0042\n",
            "Agency:     Royal Gibraltar Police\n",
            "Decision:   acknowledge\n",
            "Kind:       search warrant\n",
            "Emergency:  YES — confirm out of band before acting\n",
            "Deadline:   2026-12-01\n",
            "From:       officer@police.gi (authenticated)\n",
            "Subject:    Search warrant RGP/2026/0117 Bcc: victim@example.org\n",
            "Reply:      acknowledgement queued to the sender\n",
            &format!("  {HEAD}\n"),
            "`legal-intake audit verify --head` with this hash",
        ] {
            assert!(body.contains(needle), "missing {needle:?} in\n{body}");
        }
        assert!(body.lines().all(|l| l.chars().count() <= WIDTH), "{body}");
        let plain = notice_body(&facts(NoticeEvent::MessageAdded, false));
        assert!(plain.starts_with("Message 1 added to case LR-2026-0042\n"));
        assert!(!plain.contains("EMERGENCY"), "{plain}");
        assert!(plain.contains("Emergency:  no\n"));
        let mut f = facts(NoticeEvent::NewCase, false);
        f.deadline = None;
        assert!(!notice_body(&f).contains("Deadline:"));
    }

    #[test]
    fn the_message_has_the_headers_of_automatic_mail_and_threads() {
        let f = facts(NoticeEvent::MessageAdded, false);
        let first = "<LR-2026-0042.notice.first@ivpn.net>";
        let bytes = render_notice(&f, &envelope(Some(first)));
        let text = String::from_utf8(bytes.clone()).unwrap();
        for needle in [
            "Auto-Submitted: auto-generated\r\n",
            "X-Auto-Response-Suppress: All\r\n",
            "Message-ID: <LR-2026-0042.notice.abc@ivpn.net>\r\n",
            &format!("In-Reply-To: {first}\r\n"),
            &format!("References: {first}\r\n"),
            "To: <legal-team@ivpn.net>\r\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        let headers = &text[..text.find("\r\n\r\n").unwrap()];
        assert!(!headers.lines().any(|l| l.starts_with("Bcc:")), "{headers}");
        let parsed = mail_parser::MessageParser::new().parse(&bytes).unwrap();
        assert_eq!(parsed.subject(), Some(notice_subject(&f).as_str()));
        assert!(
            parsed
                .body_text(0)
                .unwrap()
                .contains("Decision:   acknowledge")
        );
        let first_notice = String::from_utf8(render_notice(&f, &envelope(None))).unwrap();
        assert!(!first_notice.contains("In-Reply-To:"));
        assert!(!first_notice.contains("References:"));
    }

    #[test]
    fn long_values_wrap_with_a_hanging_indent() {
        let mut out = String::new();
        field(&mut out, "Reason", &"word ".repeat(40));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.len() > 1);
        assert!(lines[0].starts_with("Reason:     word"));
        assert!(lines[1..].iter().all(|l| l.starts_with("            word")));
        assert!(lines.iter().all(|l| l.chars().count() <= WIDTH));
    }

    fn case(number: u32, status: Status, deadline: Option<&str>) -> Case {
        Case {
            id: number.into(),
            reference: Reference { year: 2026, number },
            status,
            agency: Some("Royal Gibraltar Police".into()),
            requester: Some("officer@police.gi".into()),
            authenticated: status != Status::Quarantined,
            kind: RequestKind::Other,
            emergency: false,
            hard_copy_served: None,
            user_notice: UserNotice::Unknown,
            user_notice_until: None,
            user_notified: None,
            deadline: deadline.map(str::to_string),
            outcome: None,
            opened_at: "2026-11-02T10:00:00Z".into(),
            updated_at: "2026-11-02T10:00:00Z".into(),
        }
    }

    fn refs(s: &Section) -> Vec<u32> {
        s.cases
            .iter()
            .map(|c| c.reference.parse::<Reference>().unwrap().number)
            .collect()
    }

    #[test]
    fn the_digest_sorts_cases_into_its_sections() {
        let today = date!(2026 - 11 - 29);
        let now = datetime!(2026-11-29 07:00:00 UTC);
        let cases = [
            case(1, Status::UnderReview, Some("2026-11-28")), // overdue
            case(2, Status::Received, Some("2026-11-29")),    // due today
            case(3, Status::Challenged, Some("2026-12-06")),  // the 7th day
            case(4, Status::Received, Some("2026-12-07")),    // later
            case(5, Status::Responded, Some("2026-11-01")),   // met
            case(6, Status::Closed, Some("2026-11-01")),      // done
            case(7, Status::Quarantined, None),
            case(8, Status::UnderReview, Some("2026-11-29T06:59:59Z")), // overdue
            case(9, Status::UnderReview, Some("2026-12-06T07:00:00Z")), // soon
            case(10, Status::OutOfJurisdiction, Some("2026-11-20")),    // overdue
            case(11, Status::Quarantined, Some("not a date")),
        ];
        let f = digest(
            &cases,
            today,
            "Europe/Gibraltar",
            now,
            Some(HEAD.into()),
            14,
        );
        assert_eq!(refs(&f.open), [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]);
        assert_eq!(refs(&f.overdue), [10, 1, 8]);
        assert_eq!(refs(&f.due_soon), [2, 3, 9]);
        assert_eq!(refs(&f.quarantined), [7, 11]);
        assert_eq!(
            digest_subject(&f),
            "legal-intake daily digest 2026-11-29: 10 open, 3 overdue, 2 quarantined"
        );
        let body = digest_body(&f);
        assert!(body.starts_with("legal-intake daily digest for 2026-11-29 (Europe/Gibraltar)\n"));
        assert!(body.contains("Overdue (deadline passed; not closed or responded): 3\n"));
        assert!(body.contains("  LR-2026-0010  deadline 2026-11-20  out_of_jurisdiction"));
        assert!(
            body.contains("Quarantine (not authenticated or not judgeable; awaiting review): 2\n")
        );
        assert!(body.contains("LR-2026-0007  quarantined  other  Royal Gibraltar Police"));
        assert!(body.contains(&format!("  {HEAD}\n")));
        assert!(body.lines().all(|l| l.chars().count() <= WIDTH), "{body}");
        // Opened 27 days before, no hard copy yet: the agencies' cases
        // still waiting for one are reminded of.
        let reminded: Vec<&str> = f.reminders.iter().map(|r| r.reference.as_str()).collect();
        assert_eq!(
            reminded,
            [
                "LR-2026-0001",
                "LR-2026-0002",
                "LR-2026-0003",
                "LR-2026-0004",
                "LR-2026-0008",
                "LR-2026-0009"
            ]
        );
        assert!(body.contains("\nReminders: 6\n"), "{body}");
        assert!(
            body.contains(
                "  LR-2026-0001: hard copy not served 14 days after the request (opened\n  2026-11-02)"
            ),
            "{body}"
        );
        // A digest queued before reminders existed still reads.
        let mut old = serde_json::to_value(&f).unwrap();
        old.as_object_mut().unwrap().remove("reminders");
        let old: DigestFacts = serde_json::from_value(old).unwrap();
        assert!(old.reminders.is_empty() && !digest_body(&old).contains("Reminders"));
    }

    #[test]
    fn a_long_section_is_cut_but_counted() {
        let cases: Vec<Case> = (1..=150)
            .map(|n| case(n, Status::Quarantined, None))
            .collect();
        let f = digest(
            &cases,
            date!(2026 - 11 - 29),
            "UTC",
            datetime!(2026-11-29 07:00:00 UTC),
            None,
            14,
        );
        assert_eq!(
            (f.quarantined.total, f.quarantined.cases.len()),
            (150, MAX_LISTED)
        );
        let body = digest_body(&f);
        assert!(body.contains("… and 50 more: legal-intake cases list --status quarantined"));
        assert!(body.contains("none (the case log has no events yet)"));
        let empty = digest(
            &[],
            date!(2026 - 11 - 29),
            "UTC",
            datetime!(2026-11-29 07:00:00 UTC),
            None,
            14,
        );
        assert!(digest_body(&empty).contains("Open cases (not closed): 0\n  none\n"));
    }
}
