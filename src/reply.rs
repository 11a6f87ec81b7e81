//! Pure: a queued reply and its case → RFC 5322 bytes.
//!
//! The texts are templates the operator may edit
//! (`config/templates/acknowledgement.txt` and `rejection.txt`, which
//! [`crate::outbox`] reads from the `templates` folder beside the
//! configuration file and [`Templates::checked`] vets), with named
//! placeholders; copies of the shipped templates are compiled in, so a
//! missing template folder never silences the daemon. The filled text is
//! plain UTF-8, wrapped at [`WIDTH`] columns (see [`wrap`]). Everything copied
//! from the request (its subject) has already been through
//! [`crate::text::clean`] and is cleaned again here, so nothing a
//! sender writes can create or alter a header of the reply.

use mail_builder::MessageBuilder;
use mail_builder::headers::raw::Raw;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

pub use crate::case::ReplyKind;
use crate::text::clean;

/// The headquarters address where the hard copy must be served.
pub const HEADQUARTERS: &str = "    IVPN Limited\n    5 Secretary's lane\n    GX11 1AA, Gibraltar";

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 6] = [
    "reference",
    "agency",
    "received",
    "subject",
    "headquarters",
    "requester",
];

/// The two reply texts.
#[derive(Debug, Clone)]
pub struct Templates {
    pub acknowledgement: String,
    pub rejection: String,
}

impl Templates {
    /// The templates shipped with the product.
    pub fn builtin() -> Templates {
        Templates {
            acknowledgement: include_str!("../config/templates/acknowledgement.txt").to_string(),
            rejection: include_str!("../config/templates/rejection.txt").to_string(),
        }
    }

    /// A template's text as read from its file, ready for use: a leading
    /// byte-order mark (some editors write one) dropped, and every
    /// placeholder known. The error says what is wrong with it.
    pub fn checked(text: &str) -> Result<String, String> {
        let text = text.trim_start_matches('\u{feff}');
        check(text)?;
        Ok(text.to_string())
    }

    fn get(&self, kind: ReplyKind) -> &str {
        match kind {
            ReplyKind::Acknowledgement => &self.acknowledgement,
            ReplyKind::Rejection => &self.rejection,
        }
    }
}

/// Every `{name}` in a template must be a known placeholder; `{{` and `}}`
/// are literal braces.
fn check(template: &str) -> Result<(), String> {
    if template.trim().is_empty() {
        return Err("template is empty".into());
    }
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        if rest[i..].starts_with("{{") {
            rest = &rest[i + 2..];
            continue;
        }
        let Some(j) = rest[i..].find('}') else {
            return Err("unclosed `{`".into());
        };
        let name = &rest[i + 1..i + j];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder `{{{name}}}`; known: {}",
                PLACEHOLDERS.join(", ")
            ));
        }
        rest = &rest[i + j + 1..];
    }
    Ok(())
}

/// Fills the placeholders. Values are cleaned (no control or bidi
/// characters, bounded length) before insertion.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if let Some(j) = tail.strip_prefix('{').and_then(|t| t.find('}')) {
            let name = &tail[1..j + 1];
            match values.iter().find(|(k, _)| *k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..j + 2]),
            }
            rest = &tail[j + 2..];
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The column at which a filled paragraph is wrapped.
pub const WIDTH: usize = 72;

/// Wraps the filled text without undoing the template's layout: a
/// paragraph (lines between blank lines) is re-flowed only when one of its
/// lines is longer than `width` — a long subject or date pushed it over —
/// and indented lines (the headquarters address) are never joined to
/// their neighbours. Short lines, such as a signature's, stay as written.
pub fn wrap(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut paragraph: Vec<&str> = Vec::new();
    let flush = |paragraph: &mut Vec<&str>, out: &mut String| {
        if paragraph.iter().any(|l| l.chars().count() > width) {
            // Runs of unindented lines are joined and re-flowed; an
            // indented line keeps its own line (wrapped only if too long,
            // keeping its indentation).
            let mut run: Vec<&str> = Vec::new();
            let emit_run = |run: &mut Vec<&str>, out: &mut String| {
                if !run.is_empty() {
                    fill_words(&run.join(" "), "", width, out);
                    run.clear();
                }
            };
            for line in paragraph.iter() {
                if line.starts_with([' ', '\t']) {
                    emit_run(&mut run, out);
                    let body = line.trim_start();
                    let indent = &line[..line.len() - body.len()];
                    fill_words(body, indent, width, out);
                } else {
                    run.push(line.trim_end());
                }
            }
            emit_run(&mut run, out);
        } else {
            for line in paragraph.iter() {
                out.push_str(line.trim_end());
                out.push('\n');
            }
        }
        paragraph.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut paragraph, &mut out);
            out.push('\n');
        } else {
            paragraph.push(line);
        }
    }
    flush(&mut paragraph, &mut out);
    out
}

/// Greedy word wrap of one run of text, each line starting with `indent`;
/// a word longer than the width gets a line of its own.
fn fill_words(text: &str, indent: &str, width: usize, out: &mut String) {
    let mut line = String::from(indent);
    let mut len = indent.chars().count();
    let mut empty = true;
    for word in text.split_whitespace() {
        let w = word.chars().count();
        if !empty && len + 1 + w > width {
            out.push_str(&line);
            out.push('\n');
            line = String::from(indent);
            len = indent.chars().count();
            empty = true;
        }
        if !empty {
            line.push(' ');
            len += 1;
        }
        line.push_str(word);
        len += w;
        empty = false;
    }
    if !empty {
        out.push_str(&line);
        out.push('\n');
    }
}

/// At most this many Message-IDs in a reply's `References`: the first of
/// the thread and the latest ones (RFC 5322 §3.6.4 allows trimming), so a
/// long thread cannot make the header absurdly long.
const MAX_REFERENCES: usize = 10;

/// Everything a reply is made of.
#[derive(Debug, Clone)]
pub struct Reply<'a> {
    pub kind: ReplyKind,
    /// The case reference, `LR-2026-0042`.
    pub reference: &'a str,
    pub agency: Option<&'a str>,
    /// The configured `smtp.from` header value.
    pub from: &'a str,
    /// The authenticated From address of the request.
    pub to: &'a str,
    /// The request's subject (already sanitised once).
    pub original_subject: Option<&'a str>,
    /// The request's Message-ID, with brackets.
    pub in_reply_to: Option<&'a str>,
    /// The request's References, with brackets.
    pub references: &'a [String],
    /// When the request was received.
    pub received: OffsetDateTime,
    /// This reply's Message-ID, with brackets, recorded on the case.
    pub message_id: &'a str,
    /// The Date of the reply.
    pub date: OffsetDateTime,
}

/// The longest original subject copied into a reply's subject.
const MAX_SUBJECT: usize = 120;

/// `[LR-2026-0042] Re: <original>`, without stacking `Re:` prefixes or
/// repeating the reference.
pub fn subject(reference: &str, original: Option<&str>) -> String {
    let mut s = clean(original.unwrap_or(""), 998);
    let tag = format!("[{reference}]");
    s = s.replace(&tag, " ");
    let mut s = s.trim();
    loop {
        let lower = s.to_ascii_lowercase();
        // "Re:" and its German and Scandinavian forms, stacked by clients.
        if ["re:", "aw:", "sv:"].iter().any(|p| lower.starts_with(p)) {
            s = s[3..].trim_start();
        } else {
            break;
        }
    }
    let mut s = clean(s, MAX_SUBJECT);
    if s.is_empty() {
        s = "(no subject)".to_string();
    }
    format!("{tag} Re: {s}")
}

/// The message, CRLF-terminated, ready to be DKIM-signed and sent.
pub fn render(templates: &Templates, r: &Reply<'_>) -> Vec<u8> {
    let received = r.received.format(&Rfc2822).unwrap_or_default();
    let original = clean(r.original_subject.unwrap_or("(no subject)"), MAX_SUBJECT);
    let agency = clean(r.agency.unwrap_or("Sir or Madam"), 200);
    let body = wrap(
        &fill(
            &templates.get(r.kind).replace("\r\n", "\n"),
            &[
                ("reference", r.reference),
                ("agency", &agency),
                ("received", &received),
                ("subject", &original),
                ("headquarters", HEADQUARTERS),
                ("requester", &clean(r.to, 320)),
            ],
        ),
        WIDTH,
    );
    let mut refs: Vec<String> = r.references.iter().map(|id| clean(id, 998)).collect();
    if let Some(id) = r.in_reply_to {
        let id = clean(id, 998);
        if !refs.contains(&id) {
            refs.push(id);
        }
    }
    if refs.len() > MAX_REFERENCES {
        refs.drain(1..refs.len() - (MAX_REFERENCES - 1));
    }
    let subject = subject(r.reference, r.original_subject);
    let mut builder = MessageBuilder::new()
        .from(parse_from(r.from))
        .to(clean(r.to, 320));
    // An ASCII subject is written as it reads, folded at spaces, so that
    // the reference stays greppable in the raw message; mail-builder would
    // turn a long one into encoded words. Anything else is RFC 2047.
    builder = if subject.is_ascii() {
        builder.header("Subject", Raw::new(fold("Subject", &subject)))
    } else {
        builder.subject(subject)
    };
    // Message-ID values are written raw (with their brackets, already
    // clean) so that mail-builder cannot re-wrap or re-quote them.
    let mut builder = builder
        .date(r.date.unix_timestamp())
        .header("Message-ID", Raw::new(r.message_id.to_string()))
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .header("X-Auto-Response-Suppress", Raw::new("All"))
        .text_body(body);
    if let Some(id) = r.in_reply_to {
        builder = builder.header("In-Reply-To", Raw::new(clean(id, 998)));
    }
    if !refs.is_empty() {
        // One identifier per line, so the header stays within the line
        // length limit however long the identifiers are.
        builder = builder.header("References", Raw::new(refs.join("\r\n ")));
    }
    builder.write_to_vec().unwrap_or_default()
}

/// A header value folded at spaces so that no line of the field is longer
/// than 78 characters where a space allows (RFC 5322 §2.2.3).
fn fold(name: &str, value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    let mut len = name.len() + 1;
    for (i, word) in value.split(' ').enumerate() {
        if i > 0 {
            if len + 1 + word.len() > 78 {
                out.push_str("\r\n");
                len = 0;
            }
            out.push(' ');
            len += 1;
        }
        out.push_str(word);
        len += word.len();
    }
    out
}

/// `Name <address>` or a bare address from the configuration; shared
/// with internal notices.
pub fn parse_from(from: &str) -> mail_builder::headers::address::Address<'static> {
    let from = clean(from, 320);
    match (from.rfind('<'), from.rfind('>')) {
        (Some(l), Some(r)) if l < r => {
            let name = from[..l].trim().trim_matches('"').to_string();
            let addr = from[l + 1..r].trim().to_string();
            if name.is_empty() {
                mail_builder::headers::address::Address::new_address(None::<String>, addr)
            } else {
                mail_builder::headers::address::Address::new_address(Some(name), addr)
            }
        }
        _ => mail_builder::headers::address::Address::new_address(None::<String>, from),
    }
}

/// A fresh Message-ID for a reply: the case reference, random bits and the
/// sender domain, so answers thread back to the case.
pub fn new_message_id(reference: &str, domain: &str, random: u128) -> String {
    format!("<{reference}.{random:032x}@{domain}>")
}

/// A time in RFC 2822 form, as the templates' `{received}` shows it.
pub fn header_date(date: OffsetDateTime) -> String {
    date.format(&Rfc2822).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn reply<'a>(kind: ReplyKind, subject: Option<&'a str>, refs: &'a [String]) -> Reply<'a> {
        Reply {
            kind,
            reference: "LR-2026-0042",
            agency: Some("Royal Gibraltar Police"),
            from: "IVPN Legal <legal@ivpn.net>",
            to: "j.bosano@police.gi",
            original_subject: subject,
            in_reply_to: Some("<req-1@police.gi>"),
            references: refs,
            received: datetime!(2026-11-02 10:00:00 UTC),
            message_id: "<LR-2026-0042.0000000000000000000000000000abcd@ivpn.net>",
            date: datetime!(2026-11-02 10:00:05 UTC),
        }
    }

    fn text(kind: ReplyKind, subject: Option<&str>) -> String {
        String::from_utf8(render(&Templates::builtin(), &reply(kind, subject, &[]))).unwrap()
    }

    #[test]
    fn subjects() {
        for (original, expected) in [
            (Some("Search warrant"), "[LR-2026-0042] Re: Search warrant"),
            (
                Some("Re: RE: Search warrant"),
                "[LR-2026-0042] Re: Search warrant",
            ),
            (
                Some("Re: [LR-2026-0042] Re: Order"),
                "[LR-2026-0042] Re: Order",
            ),
            (None, "[LR-2026-0042] Re: (no subject)"),
            (
                Some("a\r\nBcc: victim@example.org"),
                "[LR-2026-0042] Re: a Bcc: victim@example.org",
            ),
            (Some("\u{202E}gpj.exe"), "[LR-2026-0042] Re: gpj.exe"),
        ] {
            assert_eq!(subject("LR-2026-0042", original), expected);
        }
        assert!(subject("LR-2026-0042", Some(&"x".repeat(500))).len() < 150);
    }

    #[test]
    fn acknowledgement_says_what_it_must() {
        let t = text(
            ReplyKind::Acknowledgement,
            Some("Search warrant RGP/2026/0117"),
        );
        for needle in [
            "Auto-Submitted: auto-replied\r\n",
            "X-Auto-Response-Suppress: All\r\n",
            "In-Reply-To: <req-1@police.gi>\r\n",
            "References: <req-1@police.gi>\r\n",
            "Message-ID: <LR-2026-0042.0000000000000000000000000000abcd@ivpn.net>\r\n",
            "Subject: [LR-2026-0042] Re: Search warrant RGP/2026/0117\r\n",
            "To: <j.bosano@police.gi>\r\n",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
        let flat = t.replace("=\r\n", "").replace("\r\n", " ");
        for needle in [
            "not acceptance of service",
            "5 Secretary's lane",
            "GX11 1AA",
            "will review",
            "no connection logs",
            "LR-2026-0042",
        ] {
            assert!(flat.contains(needle), "missing {needle:?}");
        }
        assert!(!flat.to_lowercase().contains("will disclose"));
    }

    #[test]
    fn injected_subject_creates_no_header() {
        let t = text(
            ReplyKind::Rejection,
            Some("hello\r\nBcc: victim@example.org\r\nX-Evil: 1"),
        );
        let headers = &t[..t.find("\r\n\r\n").unwrap()];
        assert!(
            !headers
                .lines()
                .any(|l| l.starts_with("Bcc:") || l.starts_with("X-Evil:")),
            "{headers}"
        );
    }

    #[test]
    fn long_filled_paragraphs_are_rewrapped_and_the_rest_left_alone() {
        let text = format!(
            "Dear X,\n\nWe received \"{}\" today.\nSecond line.\n\n    Indented\n    address\n\nIVPN Legal\nIVPN Limited\n",
            "word ".repeat(30).trim()
        );
        let wrapped = wrap(&text, 72);
        assert!(
            wrapped.lines().all(|l| l.chars().count() <= 72),
            "{wrapped}"
        );
        assert!(wrapped.starts_with("Dear X,\n\nWe received \"word word"));
        assert!(wrapped.contains("today. Second line.\n"), "{wrapped}");
        assert!(wrapped.ends_with("\n\n    Indented\n    address\n\nIVPN Legal\nIVPN Limited\n"));
        let short = "a\nb\n\nc\n";
        assert_eq!(wrap(short, 72), short);
    }

    #[test]
    fn templates_are_checked() {
        assert!(check("Dear {agency}, ref {reference} {{literal}}").is_ok());
        assert!(
            check("Dear {agnecy}")
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(check("Dear {agency").is_err());
        assert!(check("  ").is_err());
        assert_eq!(
            fill("a {reference} {{b}} {x}", &[("reference", "R")]),
            "a R {b} {x}"
        );
    }
}
