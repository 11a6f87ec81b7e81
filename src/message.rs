//! Pure: raw bytes → [`Inbound`], the owned facts the decision needs.
//!
//! Nothing here can fail: a message that cannot be read is still an
//! `Inbound`, carrying [`Anomaly`] values that the decision turns into a
//! quarantine. Only the header section is parsed (mail-parser's
//! `parse_headers`), so a pathological body (10,000 nested multiparts, a
//! 40 MB attachment) costs nothing here; the DKIM body hash is mail-auth's
//! linear pass over the bytes.

use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::domain::{DomainName, normalize_domain};
use crate::text::clean;

/// What arrived, as far as the policy is concerned.
#[derive(Debug, Clone, Serialize)]
pub struct Inbound {
    /// Hex SHA-256 of the raw bytes: the message's identity in the case log.
    pub sha256: String,
    pub size: usize,
    /// `Message-ID` with its angle brackets, as the message gave it.
    pub message_id: Option<String>,
    /// The decoded subject, sanitised (no control or bidi characters).
    pub subject: Option<String>,
    /// The single author mailbox, or why there is none that can be trusted.
    pub from: Result<Mailbox, SenderProblem>,
    /// The topmost `Return-Path` (the envelope sender recorded at delivery).
    pub return_path: Option<ReturnPath>,
    /// `Received` lines, topmost (most recent) first.
    pub received: Vec<Hop>,
    /// Message-IDs named in `In-Reply-To` and `References`, with brackets.
    pub thread_ids: Vec<String>,
    /// Why this message is itself automatic (RFC 3834), if it is.
    pub automatic: Option<String>,
    /// Problems that make the message impossible to judge safely.
    pub anomalies: Vec<Anomaly>,
    /// Headers RFC 5322 allows once that appear more than once, with
    /// their counts, among those that steer what is done with the message
    /// (subject, threading): which one was signed cannot be told.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repeated: Vec<(&'static str, usize)>,
}

/// An author address that passed the syntax checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mailbox {
    /// `local@domain`, the domain normalised.
    pub address: String,
    pub local: String,
    pub domain: DomainName,
}

/// Why the author of a message cannot be established.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum SenderProblem {
    #[error("no From header")]
    Missing,
    #[error("{0} From headers")]
    SeveralHeaders(usize),
    #[error("From holds {0} mailboxes")]
    SeveralMailboxes(usize),
    #[error("From is a group")]
    Group,
    #[error("From address cannot be read")]
    Unreadable,
    #[error("From domain is not a valid domain name")]
    BadDomain,
    /// `officer@police.gi@freemail.example`, quoted or not: which part a
    /// reader takes for the domain depends on the reader.
    #[error("From address has an @ in its local part")]
    AtInLocalPart,
    /// `officer@police.gi <x@evil.example>`: an RFC 5322 display name
    /// cannot hold a bare `@`, and a reader may take the name for the
    /// sender.
    #[error("From display name holds an unquoted @")]
    AtInDisplayName,
}

/// The recorded envelope sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReturnPath {
    /// `<>`: a bounce or other automatic message.
    Null,
    Address(String),
}

pub use crate::received::Hop;

/// A reason a message cannot be judged on its merits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Anomaly {
    #[error("message of {size} bytes exceeds limits.max_message_bytes ({limit})")]
    Oversized { size: usize, limit: usize },
    #[error("no header section")]
    NoHeaders,
    /// A line in the header section that is neither a field (`Name:`) nor
    /// the continuation of one (RFC 5322 §2.2). Parsers disagree on what
    /// follows such a line, so a signature or header after it could be
    /// seen by one reader and not by another.
    #[error("header line {line} is neither a header field nor a continuation of one")]
    MalformedHeaderLine { line: usize },
    /// The header fields as mail-parser delimited them are not the fields
    /// the lines make (it has been seen to swallow the field after a
    /// `Date` with a one-letter zone): what it read is not what DKIM
    /// verified, so none of it is relied on.
    #[error("the header fields cannot be read unambiguously (field {field} is read two ways)")]
    MisreadHeaders { field: usize },
}

impl Inbound {
    /// The author domain when the sender is well formed.
    pub fn from_domain(&self) -> Option<&DomainName> {
        self.from.as_ref().ok().map(|m| &m.domain)
    }

    /// The `from` value for output: the address, or the raw problem.
    pub fn from_address(&self) -> Option<&str> {
        self.from.as_ref().ok().map(|m| m.address.as_str())
    }
}

/// How much of an oversized message is read to report on it: enough for
/// any real header section.
const OVERSIZED_HEADER_WINDOW: usize = 1 << 20;

/// Headers RFC 5322 allows once that steer what is done with a message
/// (its case, its triage, the reply): a second one is counted in
/// [`Inbound::repeated`].
const SINGLETONS: [(HeaderName<'static>, &str); 4] = [
    (HeaderName::Subject, "Subject"),
    (HeaderName::MessageId, "Message-ID"),
    (HeaderName::InReplyTo, "In-Reply-To"),
    (HeaderName::References, "References"),
];

/// Reads a raw message. Never panics and never fails.
pub fn parse(raw: &[u8], max_message_bytes: usize) -> Inbound {
    parse_hashed(raw, hex::encode(Sha256::digest(raw)), max_message_bytes)
}

/// [`parse`] for a caller that has already hashed the bytes (the daemon
/// hashes to look a message up before judging it): `sha256` must be the
/// lowercase hex SHA-256 of `raw`.
pub fn parse_hashed(raw: &[u8], sha256: String, max_message_bytes: usize) -> Inbound {
    debug_assert_eq!(sha256, hex::encode(Sha256::digest(raw)));
    let mut anomalies = Vec::new();
    // An oversized message is judged on its header section alone: its body
    // is neither parsed nor hashed for DKIM.
    let view = if raw.len() > max_message_bytes {
        anomalies.push(Anomaly::Oversized {
            size: raw.len(),
            limit: max_message_bytes,
        });
        header_section(&raw[..raw.len().min(OVERSIZED_HEADER_WINDOW)])
    } else {
        raw
    };

    let fields = field_starts(view);
    if let Err(line) = fields {
        anomalies.push(Anomaly::MalformedHeaderLine { line });
    }

    let mut inbound = Inbound {
        sha256,
        size: raw.len(),
        message_id: None,
        subject: None,
        from: Err(SenderProblem::Missing),
        return_path: None,
        received: Vec::new(),
        thread_ids: Vec::new(),
        automatic: None,
        anomalies,
        repeated: Vec::new(),
    };
    let mut singletons = SINGLETONS.map(|_| 0usize);

    let parsed = MessageParser::new().parse_headers(view);
    let headers = match &parsed {
        Some(m) if !m.root_part().headers.is_empty() => &m.root_part().headers,
        _ => {
            inbound.anomalies.push(Anomaly::NoHeaders);
            return inbound;
        }
    };
    if let Ok(starts) = &fields {
        let read: Vec<usize> = headers.iter().map(|h| h.offset_field as usize).collect();
        if *starts != read {
            let field = (starts.iter().zip(&read))
                .position(|(a, b)| a != b)
                .unwrap_or(starts.len().min(read.len()));
            inbound
                .anomalies
                .push(Anomaly::MisreadHeaders { field: field + 1 });
        }
    }

    let mut froms: Vec<&HeaderValue> = Vec::new();
    let mut from_raw = None;
    let mut list_header = None;
    // Every one of these headers counts: a sender adding a second
    // `Auto-Submitted` or `Precedence` still says the message is automatic.
    let mut auto_submitted = Vec::new();
    let mut precedence = Vec::new();
    let mut suppress = Vec::new();
    for h in headers {
        // The value as written, for the headers read here rather than by
        // mail-parser; made only for those.
        let raw_value = || {
            view.get(h.offset_start as usize..h.offset_end as usize)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        if let Some(i) = SINGLETONS.iter().position(|(n, _)| *n == h.name) {
            singletons[i] += 1;
        }
        match &h.name {
            HeaderName::From => {
                froms.push(&h.value);
                from_raw.get_or_insert_with(raw_value);
            }
            HeaderName::MessageId if inbound.message_id.is_none() => {
                inbound.message_id = h.value.as_text().map(|id| format!("<{}>", clean(id, 998)));
            }
            HeaderName::Subject if inbound.subject.is_none() => {
                inbound.subject = h.value.as_text().map(|s| clean(s, 998));
            }
            HeaderName::ReturnPath if inbound.return_path.is_none() => {
                inbound.return_path = Some(parse_return_path(&raw_value()));
            }
            HeaderName::Received => inbound.received.push(crate::received::parse(&raw_value())),
            HeaderName::InReplyTo | HeaderName::References => {
                for id in ids(&h.value) {
                    if inbound.thread_ids.len() < 100 && !inbound.thread_ids.contains(&id) {
                        inbound.thread_ids.push(id);
                    }
                }
            }
            name => {
                let n = name.as_str();
                if n.len() > 5 && n.as_bytes()[..5].eq_ignore_ascii_case(b"list-") {
                    list_header.get_or_insert_with(|| n.to_string());
                } else if n.eq_ignore_ascii_case("auto-submitted") {
                    auto_submitted.push(raw_value());
                } else if n.eq_ignore_ascii_case("precedence") {
                    precedence.push(raw_value());
                } else if n.eq_ignore_ascii_case("x-auto-response-suppress") {
                    suppress.push(raw_value());
                }
            }
        }
    }

    inbound.repeated = SINGLETONS
        .iter()
        .zip(singletons)
        .filter(|(_, n)| *n > 1)
        .map(|((_, name), n)| (*name, n))
        .collect();
    inbound.from = sender(&froms).and_then(|m| {
        match from_raw.as_deref().and_then(display_name_with_at) {
            // Some mailers write the address itself as the name, unquoted:
            // malformed, but it claims nothing else.
            Some(name) if !name.eq_ignore_ascii_case(&m.address) => {
                Err(SenderProblem::AtInDisplayName)
            }
            _ => Ok(m),
        }
    });
    inbound.automatic = automatic(
        &auto_submitted,
        &precedence,
        list_header.as_deref(),
        &suppress,
        inbound.return_path.as_ref(),
        inbound.from.as_ref().ok(),
    );
    inbound
}

/// Where each field of the header section starts (up to its first empty
/// line), or the first line (counted from 1) that is neither a field, a
/// name of printable ASCII other than `:` and then `:` (white space before
/// it is the obsolete syntax of RFC 5322 §4.5), nor a continuation starting
/// with white space after one.
fn field_starts(raw: &[u8]) -> Result<Vec<usize>, usize> {
    let mut starts = Vec::new();
    let mut at = 0;
    for (i, line) in raw.split(|&b| b == b'\n').enumerate() {
        let start = at;
        at += line.len() + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') && i > 0 {
            continue;
        }
        let name_len = line
            .iter()
            .position(|&b| !(b'!'..=b'~').contains(&b) || b == b':')
            .unwrap_or(line.len());
        let field = name_len > 0
            && line[name_len..]
                .iter()
                .find(|&&b| !matches!(b, b' ' | b'\t'))
                .is_some_and(|&b| b == b':');
        if !field {
            return Err(i + 1);
        }
        starts.push(start);
    }
    Ok(starts)
}

/// The bytes up to and including the blank line that ends the header
/// section (or everything, when there is none).
fn header_section(raw: &[u8]) -> &[u8] {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 2))
        .unwrap_or(raw.len());
    &raw[..end]
}

fn sender(froms: &[&HeaderValue]) -> Result<Mailbox, SenderProblem> {
    let value = match froms {
        [] => return Err(SenderProblem::Missing),
        [one] => one,
        several => return Err(SenderProblem::SeveralHeaders(several.len())),
    };
    let addr = match value {
        HeaderValue::Address(Address::List(list)) => match list.as_slice() {
            [one] => one,
            [] => return Err(SenderProblem::Unreadable),
            several => return Err(SenderProblem::SeveralMailboxes(several.len())),
        },
        HeaderValue::Address(Address::Group(_)) => return Err(SenderProblem::Group),
        _ => return Err(SenderProblem::Unreadable),
    };
    let address = addr.address.as_deref().ok_or(SenderProblem::Unreadable)?;
    mailbox(address)
        .ok_or(SenderProblem::Unreadable)
        .and_then(|m| m)
}

/// The display name of a `name <address>` mailbox, trimmed, when it holds
/// an `@` outside quoted strings and comments (an RFC 5322 phrase cannot).
fn display_name_with_at(value: &str) -> Option<&str> {
    let (mut quoted, mut depth, mut escaped, mut at) = (false, 0usize, false, false);
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted || depth > 0 => escaped = true,
            '"' if depth == 0 => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            '<' if !quoted && depth == 0 => return at.then(|| value[..i].trim()),
            '@' if !quoted && depth == 0 => at = true,
            _ => {}
        }
    }
    // No angle address: any `@` is the address's own.
    None
}

/// Splits and checks one address; the inner error distinguishes a bad
/// domain from an address that is not an address at all.
fn mailbox(address: &str) -> Option<Result<Mailbox, SenderProblem>> {
    if address.matches('@').count() > 1 {
        return Some(Err(SenderProblem::AtInLocalPart));
    }
    let (local, domain) = split_address(address)?;
    Some(match normalize_domain(domain) {
        Some(domain) => Ok(Mailbox {
            address: format!("{local}@{domain}"),
            local: local.to_string(),
            domain,
        }),
        None => Err(SenderProblem::BadDomain),
    })
}

/// `local@domain` split at its one `@`, both parts non-empty and free of
/// whitespace, control characters and angle brackets; an address with
/// several `@` is refused.
pub fn split_address(address: &str) -> Option<(&str, &str)> {
    let (local, domain) = address.split_once('@')?;
    if domain.contains('@') {
        return None;
    }
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 254
            && !s
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ','))
    };
    (ok(local) && ok(domain)).then_some((local, domain))
}

/// Parses a configured single-mailbox header value such as
/// `IVPN Legal <legal@ivpn.net>`, returning the address.
pub fn parse_address_header(value: &str) -> Option<String> {
    let raw = format!("From: {value}\r\n\r\n");
    let parsed = MessageParser::new().parse_headers(raw.as_bytes())?;
    let froms: Vec<&HeaderValue> = parsed
        .root_part()
        .headers
        .iter()
        .filter(|h| h.name == HeaderName::From)
        .map(|h| &h.value)
        .collect();
    sender(&froms).ok().map(|m| m.address)
}

fn parse_return_path(raw: &str) -> ReturnPath {
    let v = raw.trim();
    let inner = v
        .strip_prefix('<')
        .and_then(|s| s.split_once('>').map(|(a, _)| a))
        .unwrap_or(v)
        .trim();
    if inner.is_empty() {
        ReturnPath::Null
    } else {
        ReturnPath::Address(clean(inner, 320))
    }
}

fn ids(value: &HeaderValue) -> Vec<String> {
    match value {
        HeaderValue::Text(t) => vec![format!("<{}>", clean(t, 998))],
        HeaderValue::TextList(list) => list
            .iter()
            .map(|t| format!("<{}>", clean(t, 998)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Decides whether a message is itself automatic, following RFC 3834 §2
/// and RFC 5230 §4.5 practice; returns the reason.
fn automatic(
    auto_submitted: &[String],
    precedence: &[String],
    list_header: Option<&str>,
    suppress: &[String],
    return_path: Option<&ReturnPath>,
    from: Option<&Mailbox>,
) -> Option<String> {
    for v in auto_submitted {
        // RFC 3834 §5: the keyword before any parameter, comments aside
        // (`no (personal)` is `no`).
        let v = without_comments(v);
        let keyword = v.split(';').next().unwrap_or("").trim();
        if !keyword.eq_ignore_ascii_case("no") {
            return Some(format!("Auto-Submitted: {}", clean(keyword, 40)));
        }
    }
    for v in precedence {
        // The first word, comments, quotes and any parameter aside
        // (`bulk (newsletter)`, `"junk"`, `list;`).
        let v = without_comments(v);
        let word = v
            .split(|c: char| c == ';' || c.is_whitespace())
            .map(|w| w.trim_matches('"'))
            .find(|w| !w.is_empty())
            .unwrap_or("");
        if ["bulk", "junk", "list"]
            .iter()
            .any(|p| word.eq_ignore_ascii_case(p))
        {
            return Some(format!("Precedence: {}", clean(word, 20)));
        }
    }
    if let Some(name) = list_header {
        return Some(format!("{} header", clean(name, 40)));
    }
    for v in suppress {
        // Microsoft writes commas; semicolons and spaces are read too.
        for word in v.split(|c: char| c == ',' || c == ';' || c.is_whitespace()) {
            if ["all", "autoreply", "oof"]
                .iter()
                .any(|w| word.eq_ignore_ascii_case(w))
            {
                return Some(format!("X-Auto-Response-Suppress: {}", clean(word, 20)));
            }
        }
    }
    match return_path {
        Some(ReturnPath::Null) => return Some("empty return path".to_string()),
        Some(ReturnPath::Address(a)) => {
            // A source route (`@relay:`) aside; a path without a domain
            // (`<MAILER-DAEMON>`, as Sendmail writes the null sender) is
            // all local part.
            let mailbox = a.rsplit_once(':').map_or(a.as_str(), |(_, m)| m);
            let local = mailbox.rsplit_once('@').map_or(mailbox, |(l, _)| l);
            if local.trim_matches('"').is_empty() {
                return Some(format!("empty return path ({})", clean(a, 80)));
            }
            if is_automatic_local_part(local) {
                return Some(format!("return path {}", clean(a, 80)));
            }
        }
        None => {}
    }
    if let Some(m) = from
        && is_automatic_local_part(&m.local)
    {
        return Some(format!("sender {}", m.address));
    }
    None
}

/// Local parts that belong to software, not people; a `+` subaddress
/// (`noreply+tag`) does not make them a person's.
fn is_automatic_local_part(local: &str) -> bool {
    let l = local.to_ascii_lowercase();
    let l = l.trim_matches('"');
    let l = l.split_once('+').map_or(l, |(base, _)| base);
    matches!(
        l,
        "mailer-daemon"
            | "postmaster"
            | "noreply"
            | "no-reply"
            | "no_reply"
            | "donotreply"
            | "do-not-reply"
            | "listserv"
            | "majordomo"
    ) || l.starts_with("owner-")
        || l.ends_with("-request")
}

/// A structured header value with its RFC 5322 comments (nested,
/// with quoted pairs) replaced by a space; quoted strings are kept as they
/// are. An unclosed comment runs to the end.
fn without_comments(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut depth = 0usize;
    let mut quoted = false;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if depth > 0 || quoted => {
                let next = chars.next();
                if depth == 0 {
                    out.push(c);
                    out.extend(next);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => {
                if depth == 0 {
                    out.push(' ');
                }
                depth += 1;
            }
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Inbound {
        parse(s.as_bytes(), 1 << 20)
    }

    #[test]
    fn headers_allowed_once_are_counted() {
        let once = parse_str(
            "From: a@police.gi\r\nSubject: x\r\nMessage-ID: <1@p.gi>\r\nReferences: <0@p.gi>\r\n\r\nb\r\n",
        );
        assert!(once.repeated.is_empty());
        let twice = parse_str(
            "Subject: EMERGENCY\r\nFrom: a@police.gi\r\nsubject: x\r\nIn-Reply-To: <1@p.gi>\r\nIn-Reply-To: <2@p.gi>\r\nIn-Reply-To: <3@p.gi>\r\n\r\nb\r\n",
        );
        assert_eq!(twice.repeated, [("Subject", 2), ("In-Reply-To", 3)]);
    }

    /// Whether parsing `raw` finds `anomaly`.
    fn finds(raw: &str, anomaly: Anomaly) -> bool {
        parse_str(raw).anomalies.contains(&anomaly)
    }

    /// The header anomalies of `raw`, of either kind.
    fn header_anomalies(raw: &str) -> Vec<Anomaly> {
        let header = |a: &Anomaly| {
            matches!(
                a,
                Anomaly::MalformedHeaderLine { .. } | Anomaly::MisreadHeaders { .. }
            )
        };
        parse_str(raw)
            .anomalies
            .into_iter()
            .filter(header)
            .collect()
    }

    #[test]
    fn a_header_line_that_is_no_field_is_an_anomaly() {
        // Well formed: folded values, obsolete white space before the
        // colon, bare LF endings, a body that is anything at all.
        for good in [
            "From: a@police.gi\r\nSubject: x\r\n\ty\r\n  z\r\n\r\nX-Note\r\nno colon\r\n",
            "From: a@police.gi\nSubject : x\nX-Empty:\n\nbody\n",
            "From: a@police.gi\r\n",
        ] {
            assert_eq!(header_anomalies(good), [], "{good:?}");
        }
        for (bad, at) in [
            // A name without a colon, hiding what follows from one parser.
            (
                "From: a@police.gi\r\nX-Note\r\nDKIM-Signature: v=1\r\n\r\nb\r\n",
                2,
            ),
            // A continuation with nothing to continue.
            (" folded: x\r\nFrom: a@police.gi\r\n\r\nb\r\n", 1),
            // An mbox separator, a name with a space, a control character.
            (
                "From a@police.gi Mon Nov  2 10:00:00 2026\nFrom: a@police.gi\n\nb\n",
                1,
            ),
            ("From: a@police.gi\r\nX Bad: y\r\n\r\nb\r\n", 2),
            ("From: a@police.gi\r\nX\x01: y\r\n\r\nb\r\n", 2),
            ("From: a@police.gi\r\n: no name\r\n\r\nb\r\n", 2),
            // No empty line: what follows the fields is not a field.
            ("From: a@police.gi\r\nSubject: x\r\nDear IVPN,\r\n", 3),
        ] {
            assert!(
                finds(bad, Anomaly::MalformedHeaderLine { line: at }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn fields_mail_parser_delimits_otherwise_are_an_anomaly() {
        let message = |zone: &str| {
            format!(
                "Date: Mon, 2 Nov 2026 09:58:12 {zone}\r\nFrom: officer@police.gi\r\nSubject: x\r\n\r\nb\r\n"
            )
        };
        for zone in ["+0000", "GMT", "UT", "EST", "+0000 (GMT)", "foo"] {
            assert_eq!(header_anomalies(&message(zone)), [], "{zone}");
        }
        // A one-letter (military) zone: mail-parser reads the From line as
        // part of the Date, so the From it reports is not the one signed.
        for zone in ["Z", "A", "z"] {
            assert_eq!(
                header_anomalies(&message(zone)),
                [Anomaly::MisreadHeaders { field: 2 }],
                "{zone}"
            );
        }
        assert_eq!(
            header_anomalies("From: a@police.gi\nSubject : x\n\tfolded\n\nb\n"),
            []
        );
    }

    fn check_from(from_lines: &str, expected: Result<&str, SenderProblem>) {
        let m = parse_str(&format!("{from_lines}Subject: x\r\n\r\nbody\r\n"));
        assert_eq!(
            m.from.map(|m| m.address).as_deref().map_err(Clone::clone),
            expected,
            "{from_lines:?}"
        );
    }

    #[test]
    fn sender_rules() {
        check_from(
            "From: Officer <officer@CID.Police.GI>\r\n",
            Ok("officer@cid.police.gi"),
        );
        check_from(
            "From: \"officer@police.gi\" <x@evil.example>\r\n",
            Ok("x@evil.example"),
        );
        check_from("", Err(SenderProblem::Missing));
        check_from(
            "From: a@police.gi\r\nFrom: b@evil.example\r\n",
            Err(SenderProblem::SeveralHeaders(2)),
        );
        check_from(
            "From: a@police.gi, b@evil.example\r\n",
            Err(SenderProblem::SeveralMailboxes(2)),
        );
        check_from("From: undisclosed:;\r\n", Err(SenderProblem::Group));
        check_from("From: nobody\r\n", Err(SenderProblem::Unreadable));
        check_from(
            "From: x@bad_domain.example\r\n",
            Err(SenderProblem::BadDomain),
        );
        for two_ats in [
            "From: officer@police.gi@freemail.example\r\n",
            "From: Officer <officer@police.gi@freemail.example>\r\n",
            "From: \"officer@police.gi\"@freemail.example\r\n",
            "From: <\"officer@police.gi\"@freemail.example>\r\n",
            "From: officer@@freemail.example\r\n",
        ] {
            let m = parse_str(&format!("{two_ats}Subject: x\r\n\r\nbody\r\n"));
            assert!(
                matches!(
                    m.from,
                    Err(SenderProblem::AtInLocalPart | SenderProblem::Unreadable)
                ),
                "{two_ats:?}: {:?}",
                m.from
            );
        }
        check_from(
            "From: officer@police.gi@freemail.example\r\n",
            Err(SenderProblem::AtInLocalPart),
        );
        assert_eq!(split_address("a@b@c.example"), None);
        // A bare @ in the display name is malformed; quoted, commented or
        // encoded it is a name (never evidence either way).
        check_from(
            "From: officer@police.gi <x@evil.example>\r\n",
            Err(SenderProblem::AtInDisplayName),
        );
        check_from(
            "From: Officer (officer@police.gi) <x@evil.example>\r\n",
            Ok("x@evil.example"),
        );
        check_from(
            "From: =?utf-8?q?officer=40police.gi?= <x@evil.example>\r\n",
            Ok("x@evil.example"),
        );
        check_from("From: <officer@police.gi>\r\n", Ok("officer@police.gi"));
        check_from(
            "From: Officer@Police.gi <officer@police.gi>\r\n",
            Ok("officer@police.gi"),
        );
        check_from(
            "From: officer@police.gi (Officer <x>)\r\n",
            Ok("officer@police.gi"),
        );
    }

    #[test]
    fn received_lines_are_read() {
        let m = parse_str(
            "Received: from mail.police.gi (mail.police.gi [192.0.2.10])\r\n\tby mx1.ivpn.net (Postfix) with ESMTPS id 4X; Mon, 2 Nov 2026 10:00:00 +0000\r\n\
             Received: from helo.example (unknown [IPv6:2001:db8::25])\r\n\tby mx1.ivpn.net (Postfix) with ESMTP id 5Y; Mon, 2 Nov 2026 10:00:00 +0000\r\n\
             From: a@police.gi\r\n\r\nx\r\n",
        );
        assert_eq!(m.received.len(), 2);
        let top = &m.received[0];
        assert_eq!(top.by.as_ref().map(|d| d.as_str()), Some("mx1.ivpn.net"));
        assert_eq!(top.helo.as_deref(), Some("mail.police.gi"));
        assert_eq!(top.ip, Some("192.0.2.10".parse().unwrap()));
        assert!(top.is_smtp());
        assert_eq!(m.received[1].ip, Some("2001:db8::25".parse().unwrap()));
        assert_eq!(m.received[1].helo.as_deref(), Some("helo.example"));
    }

    #[test]
    fn automatic_messages() {
        for (headers, automatic) in [
            ("Auto-Submitted: auto-replied\r\n", true),
            ("Auto-Submitted: no\r\n", false),
            ("Auto-Submitted: no (personal)\r\n", false),
            ("Auto-Submitted: (sent by a person) No\r\n", false),
            ("Auto-Submitted: no (a (nested\\) comment))\r\n", false),
            ("Auto-Submitted: auto-generated (daily report)\r\n", true),
            ("Auto-Submitted: (no) auto-replied\r\n", true),
            ("Return-Path: <bounces+123@gateway.police.gi>\r\n", false),
            ("Return-Path: <bounce-abc@gateway.police.gi>\r\n", false),
            ("Precedence: bulk\r\n", true),
            ("Precedence: first-class\r\n", false),
            ("List-Id: <x.example>\r\n", true),
            ("List-Unsubscribe: <mailto:x@example.com>\r\n", true),
            ("X-Auto-Response-Suppress: DR, OOF\r\n", true),
            ("X-Auto-Response-Suppress: DR\r\n", false),
            ("X-Auto-Response-Suppress: DR; OOF\r\n", true),
            ("X-Auto-Response-Suppress: DR OOF\r\n", true),
            ("Precedence: bulk (newsletter)\r\n", true),
            ("Precedence: junk;\r\n", true),
            ("Precedence: \"bulk\"\r\n", true),
            ("Precedence: first-class\r\nPrecedence: bulk\r\n", true),
            ("Precedence: (not bulk) first-class\r\n", false),
            (
                "Auto-Submitted: no\r\nAuto-Submitted: auto-replied\r\n",
                true,
            ),
            ("Return-Path: <MAILER-DAEMON>\r\n", true),
            ("Return-Path: MAILER-DAEMON\r\n", true),
            (
                "Return-Path: <@relay.police.gi:mailer-daemon@police.gi>\r\n",
                true,
            ),
            ("Return-Path: <\"\">\r\n", true),
            ("Return-Path: <postmaster+x@police.gi>\r\n", true),
            ("Return-Path: <noreply+tag@police.gi>\r\n", true),
            ("Return-Path: <officer+case@police.gi>\r\n", false),
            ("Return-Path: <>\r\n", true),
            ("Return-Path: <MAILER-DAEMON@police.gi>\r\n", true),
            ("Return-Path: <officer@police.gi>\r\n", false),
        ] {
            let m = parse_str(&format!("{headers}From: officer@police.gi\r\n\r\nx\r\n"));
            assert_eq!(
                m.automatic.is_some(),
                automatic,
                "{headers:?}: {:?}",
                m.automatic
            );
        }
        for local in [
            "postmaster",
            "owner-list",
            "list-request",
            "noreply",
            "MAILER-DAEMON",
        ] {
            let m = parse_str(&format!("From: {local}@police.gi\r\n\r\nx\r\n"));
            assert!(m.automatic.is_some(), "{local}");
        }
    }

    #[test]
    fn oversized_messages_are_judged_on_headers() {
        let mut raw = b"From: a@police.gi\r\nSubject: big\r\n\r\n".to_vec();
        raw.resize(5000, b'x');
        let m = parse(&raw, 1024);
        assert_eq!(
            m.anomalies,
            vec![Anomaly::Oversized {
                size: 5000,
                limit: 1024
            }]
        );
        assert_eq!(m.subject.as_deref(), Some("big"));
    }

    #[test]
    fn garbage_never_panics() {
        for raw in [
            &b""[..],
            b"\0\0\0",
            b"\r\n\r\n",
            b"no colon here",
            b"\xff\xfe\xfd: \xff\r\n\r\n",
        ] {
            let m = parse(raw, 1 << 20);
            assert!(m.from.is_err());
        }
    }
}
