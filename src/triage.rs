//! Pure: a request's text → [`Findings`], what the legal team needs first
//! (SPEC.md "Triage").
//!
//! The findings are shown on the case and never change the decision: they
//! are hints read from the subject, the text parts and the attachment
//! names — the request kind and emergency flag, the identifiers it names,
//! whether it asks for data IVPN does not hold, and whether it mentions a
//! non-disclosure order. Reading is bounded (the first [`TEXT_LIMIT`] bytes
//! of text) and cannot fail: an unreadable message gives kind `other`.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::{Anchored, MatchKind, PatternID, dfa::DFA};
use mail_parser::{MessageParser, MimeHeaders};
use regex::Regex;
use serde::Serialize;

/// How much text is read from one message.
pub const TEXT_LIMIT: usize = 256 * 1024;

/// At most this many identifiers of each kind are kept.
const MAX_IDENTIFIERS: usize = 50;

/// At most this many attachment names are kept.
const MAX_ATTACHMENTS: usize = 100;

/// What kind of legal process a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    Subpoena,
    SearchWarrant,
    CourtOrder,
    Preservation,
    Emergency,
    Other,
}

impl RequestKind {
    pub const ALL: [RequestKind; 6] = [
        RequestKind::Subpoena,
        RequestKind::SearchWarrant,
        RequestKind::CourtOrder,
        RequestKind::Preservation,
        RequestKind::Emergency,
        RequestKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Subpoena => "subpoena",
            RequestKind::SearchWarrant => "search_warrant",
            RequestKind::CourtOrder => "court_order",
            RequestKind::Preservation => "preservation",
            RequestKind::Emergency => "emergency",
            RequestKind::Other => "other",
        }
    }

    /// Reads `search_warrant`, `search-warrant` or `search warrant`.
    pub fn parse(s: &str) -> Option<RequestKind> {
        let s = s.trim().to_ascii_lowercase().replace(['-', ' '], "_");
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What was read in one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Findings {
    pub kind: RequestKind,
    /// Emergency wording: the request must be confirmed out of band.
    pub emergency: bool,
    /// The words that raised the emergency flag.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub emergency_terms: Vec<String>,
    /// IVPN account IDs matching `triage.account_patterns`.
    pub accounts: Vec<String>,
    pub emails: Vec<String>,
    pub ips: Vec<String>,
    pub timestamps: Vec<String>,
    /// Why the request can only be answered from data IVPN does not hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_logs_hint: Option<String>,
    /// The wording of a non-disclosure (gag) order, if one is mentioned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gag_order: Option<String>,
    /// Attachment names as the message gave them (sanitised, never used
    /// as paths).
    pub attachments: Vec<String>,
    /// The text was cut at [`TEXT_LIMIT`].
    pub truncated: bool,
}

impl Default for Findings {
    fn default() -> Self {
        Findings {
            kind: RequestKind::Other,
            emergency: false,
            emergency_terms: Vec::new(),
            accounts: Vec::new(),
            emails: Vec::new(),
            ips: Vec::new(),
            timestamps: Vec::new(),
            no_logs_hint: None,
            gag_order: None,
            attachments: Vec::new(),
            truncated: false,
        }
    }
}

/// The guideline the no-logs hint cites.
pub const NO_LOGS_GUIDELINE: &str = "IVPN keeps no connection, activity or IP address logs (no-logs policy, law enforcement guidelines): no such records exist to disclose";

/// Kind phrases, most specific process first; searched per source
/// (subject, then attachment names, then body), the first source with any
/// match deciding.
const KIND_PHRASES: &[(RequestKind, &[&str])] = &[
    (
        RequestKind::SearchWarrant,
        &[
            "search warrant",
            "search and seizure warrant",
            "warrant to search",
        ],
    ),
    (
        RequestKind::CourtOrder,
        &[
            "court order",
            "order of the court",
            "production order",
            "disclosure order",
            "judicial order",
            "2703(d) order",
            "norwich pharmacal",
        ],
    ),
    (
        RequestKind::Subpoena,
        &[
            "subpoena",
            "witness summons",
            "summons to produce",
            "grand jury",
        ],
    ),
    (
        RequestKind::Preservation,
        &[
            "preservation",
            "preserve",
            "2703(f)",
            "retain the data",
            "retain all data",
        ],
    ),
    (
        RequestKind::Emergency,
        &[
            "emergency disclosure",
            "emergency request",
            "emergency data request",
            "exigent circumstances",
            "emergency",
        ],
    ),
];

/// Wording that flags a request for out-of-band confirmation.
const EMERGENCY_PHRASES: &[&str] = &[
    "emergency",
    "urgent",
    "urgently",
    "imminent",
    "exigent",
    "threat to life",
    "risk to life",
    "danger to life",
    "danger of death",
    "life-threatening",
    "life threatening",
    "serious bodily harm",
    "serious bodily injury",
    "serious physical injury",
    "kidnap",
    "kidnapped",
    "kidnapping",
    "abduction",
    "hostage",
    "suicide",
    "missing child",
    "bomb threat",
];

/// Wording of a non-disclosure order.
const GAG_PHRASES: &[&str] = &[
    "non-disclosure order",
    "nondisclosure order",
    "non disclosure order",
    "gag order",
    "2705(b)",
    "do not notify",
    "must not notify",
    "shall not notify",
    "not to notify",
    "without notifying",
    "refrain from notifying",
    "do not disclose the existence",
    "not to disclose the existence",
    "shall not disclose the existence",
    "must not disclose the existence",
    "tipping off",
    "tipping-off",
];

/// Requests for records that a no-logs service does not have.
const LOG_PHRASES: &[&str] = &[
    "connection log",
    "connection logs",
    "connection records",
    "connection history",
    "activity log",
    "activity logs",
    "session log",
    "session logs",
    "traffic log",
    "traffic logs",
    "traffic data",
    "usage log",
    "usage logs",
    "access log",
    "access logs",
    "browsing history",
    "dns log",
    "dns logs",
    "ip log",
    "ip logs",
    "ip address logs",
    "login history",
    "log files",
    "logs",
];

/// What finding a phrase means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Says {
    Kind(RequestKind),
    Emergency,
    Gag,
    Logs,
}

/// The compiled patterns; built once from the configuration and shared.
#[derive(Debug, Clone)]
pub struct Triage {
    accounts: Option<Regex>,
    ipv4: Regex,
    timestamp: Regex,
    /// Every phrase of every list in one automaton, so a text is scanned
    /// once whatever the number of phrases.
    phrases: DFA,
    /// What each phrase (by pattern index) means, kinds in priority order
    /// first, then the lists in their order.
    meaning: Vec<(Says, &'static str)>,
}

impl Triage {
    /// `patterns` are `triage.account_patterns`: `X` is any letter or
    /// digit, every other character stands for itself (case-insensitive).
    pub fn new(patterns: &[String]) -> Triage {
        // One alternation for all patterns: one pass over the text.
        let alternatives: Vec<String> = patterns
            .iter()
            .map(|p| {
                p.chars()
                    .map(|c| {
                        if c == 'X' {
                            "[a-z0-9]".to_string()
                        } else {
                            regex::escape(&c.to_string())
                        }
                    })
                    .collect::<String>()
            })
            .collect();
        let accounts = (!alternatives.is_empty()).then(|| {
            Regex::new(&format!("(?i)(?:{})", alternatives.join("|")))
                .expect("escaped literals and a class always compile")
        });
        const ZONE: &str = r"(?:\s?(?:z|utc|gmt|bst|cet|cest|[+-]\d{2}:?\d{2}))?";
        const MONTH: &str = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?";
        const CLOCK: &str = r"\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:\s?[ap]\.?m\.?)?";
        let timestamp = format!(
            r"(?i)(?-u:\b)(?:\d{{4}}-\d{{2}}-\d{{2}}[t ]{CLOCK}|\d{{1,2}}[/.]\d{{1,2}}[/.]\d{{2,4}},?\s+(?:at\s+)?{CLOCK}|\d{{1,2}}(?:st|nd|rd|th)?\s+{MONTH}\s+\d{{4}},?\s+(?:at\s+)?{CLOCK}|{MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}},?\s+(?:at\s+)?{CLOCK}){ZONE}"
        );
        let mut meaning: Vec<(Says, &'static str)> = Vec::new();
        for (kind, list) in KIND_PHRASES {
            meaning.extend(list.iter().map(|p| (Says::Kind(*kind), *p)));
        }
        meaning.extend(EMERGENCY_PHRASES.iter().map(|p| (Says::Emergency, *p)));
        meaning.extend(GAG_PHRASES.iter().map(|p| (Says::Gag, *p)));
        meaning.extend(LOG_PHRASES.iter().map(|p| (Says::Logs, *p)));
        let phrases = DFA::builder()
            .match_kind(MatchKind::Standard)
            .build(meaning.iter().map(|(_, p)| p))
            .expect("a few hundred short literals always build");
        assert!(
            phrases.max_pattern_len() < LOOK_BACK,
            "a phrase longer than the scan's look-back"
        );
        Triage {
            accounts,
            ipv4: Regex::new(r"\d{1,3}(?:\.\d{1,3}){3}").expect("static pattern"),
            timestamp: Regex::new(&timestamp).expect("static pattern"),
            phrases,
            meaning,
        }
    }

    /// Which phrases occur in `text` as whole words once it is normalised
    /// (lowercase, each whitespace run one space), by pattern index. The
    /// normalised text is fed to the automaton as it is produced instead
    /// of being built first: one pass over the bytes, and ASCII, nearly
    /// all of a request, a byte at a time without decoding.
    fn phrases_in(&self, text: &str) -> Vec<bool> {
        let mut scan = PhraseScan::new(&self.phrases, self.meaning.len());
        let mut state = scan.start();
        // At the start, as after a space: leading whitespace is dropped.
        let mut space = true;
        let bytes = text.as_bytes();
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if b.is_ascii() {
                i += 1;
                // `char::is_whitespace` on ASCII: space, \t, \n, \v, \f, \r.
                if b == b' ' || (b'\t'..=b'\r').contains(&b) {
                    if !space {
                        state = scan.byte(state, b' ', false);
                        space = true;
                    }
                } else {
                    space = false;
                    state = scan.byte(state, b.to_ascii_lowercase(), b.is_ascii_alphanumeric());
                }
                continue;
            }
            let Some(c) = text[i..].chars().next() else {
                break;
            };
            i += c.len_utf8();
            if c.is_whitespace() {
                if !space {
                    state = scan.byte(state, b' ', false);
                    space = true;
                }
            } else {
                space = false;
                for l in c.to_lowercase() {
                    let mut buf = [0; 4];
                    let alnum = l.is_alphanumeric();
                    for &b in l.encode_utf8(&mut buf).as_bytes() {
                        state = scan.byte(state, b, alnum);
                    }
                }
            }
        }
        scan.finish()
    }

    /// Reads a raw message: subject, text parts (HTML converted to text)
    /// and attachment names, with mail-parser's full MIME parse.
    pub fn read(&self, raw: &[u8], subject: Option<&str>) -> Findings {
        // mail-parser is not expected to panic, but a hostile message must
        // never take the daemon down through a path that is only a hint.
        let parsed = std::panic::catch_unwind(|| text_of(raw));
        let (body, attachments, truncated) = parsed.unwrap_or_default();
        let mut f = self.findings(subject.unwrap_or(""), &body, &attachments);
        f.truncated = truncated;
        f
    }

    /// The findings for already extracted text.
    pub fn findings(&self, subject: &str, body: &str, attachments: &[String]) -> Findings {
        let sources = [
            self.phrases_in(subject),
            self.phrases_in(&attachments.join(" ").replace(['_', '.'], " ")),
            self.phrases_in(body),
        ];
        // The kind: the first source (subject, attachment names, body) that
        // names any, and in it the most specific process.
        let kind = sources
            .iter()
            .find_map(|found| {
                self.meaning
                    .iter()
                    .zip(found)
                    .find_map(|((says, _), hit)| match says {
                        Says::Kind(k) if *hit => Some(*k),
                        _ => None,
                    })
            })
            .unwrap_or(RequestKind::Other);
        let anywhere = |i: usize| sources.iter().any(|found| found[i]);
        let said = |what: Says| -> Vec<&'static str> {
            self.meaning
                .iter()
                .enumerate()
                .filter(|(i, (says, _))| *says == what && anywhere(*i))
                .map(|(_, (_, p))| *p)
                .collect()
        };
        let emergency_terms: Vec<String> = said(Says::Emergency)
            .into_iter()
            .map(String::from)
            .collect();

        let raw_text = format!("{subject}\n{}\n{body}", attachments.join("\n"));
        let accounts = self.accounts(&raw_text);
        let emails = emails(&raw_text);
        let ips = self.ips(&raw_text);
        let timestamps = self.timestamps(&raw_text);

        let no_logs_hint = if !ips.is_empty() && !timestamps.is_empty() {
            Some(format!(
                "asks about an IP address at a point in time: {NO_LOGS_GUIDELINE}"
            ))
        } else {
            said(Says::Logs)
                .first()
                .map(|p| format!("asks for \"{p}\": {NO_LOGS_GUIDELINE}"))
        };
        let gag_order = said(Says::Gag).first().map(|p| p.to_string());

        Findings {
            kind,
            emergency: !emergency_terms.is_empty(),
            emergency_terms,
            accounts,
            emails,
            ips,
            timestamps,
            no_logs_hint,
            gag_order,
            attachments: attachments.iter().take(MAX_ATTACHMENTS).cloned().collect(),
            truncated: false,
        }
    }

    fn accounts(&self, text: &str) -> Vec<String> {
        let Some(re) = &self.accounts else {
            return Vec::new();
        };
        let found = re.find_iter(text).filter_map(|m| {
            // Whole tokens only: `ivpnABCDEFGH1` is not an account ID.
            let before = text[..m.start()].chars().next_back();
            let after = text[m.end()..].chars().next();
            (!before.is_some_and(|c| c.is_ascii_alphanumeric())
                && !after.is_some_and(|c| c.is_ascii_alphanumeric()))
            .then(|| m.as_str().to_string())
        });
        unique(found)
    }

    /// Timestamps: every form has a clock (`14:22`), so the pattern only
    /// runs on a window around each colon with a digit before and two
    /// after — prose without times costs one memchr pass.
    fn timestamps(&self, text: &str) -> Vec<String> {
        let b = text.as_bytes();
        let mut found = Vec::new();
        let mut covered = 0;
        for (i, _) in text.match_indices(':') {
            let clock = i > 0
                && b[i - 1].is_ascii_digit()
                && b.get(i + 1).is_some_and(u8::is_ascii_digit)
                && b.get(i + 2).is_some_and(u8::is_ascii_digit);
            if !clock || i < covered {
                continue;
            }
            let mut start = i.saturating_sub(48);
            while !text.is_char_boundary(start) {
                start += 1;
            }
            let mut end = (i + 32).min(b.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let hit = self
                .timestamp
                .find_iter(&text[start..end])
                .find(|m| start + m.start() <= i && i < start + m.end());
            if let Some(m) = hit {
                covered = start + m.end();
                found.push(m.as_str().split_whitespace().collect::<Vec<_>>().join(" "));
            }
        }
        unique(found.into_iter())
    }

    fn ips(&self, text: &str) -> Vec<String> {
        // Whole tokens only: not part of a longer dotted or coloned run
        // (`1.2.3.4.5` is a version number, not an address).
        let whole = |start: usize, end: usize| {
            let before = text[..start].chars().next_back();
            let mut after = text[end..].chars();
            let next = after.next();
            let glued_before = before.is_some_and(|c| c.is_alphanumeric() || c == '.' || c == ':');
            let glued_after = next.is_some_and(char::is_alphanumeric)
                || (matches!(next, Some('.' | ':'))
                    && after.next().is_some_and(|c| c.is_ascii_alphanumeric()));
            !glued_before && !glued_after
        };
        let v4 = self.ipv4.find_iter(text).filter_map(|m| {
            let ip: Ipv4Addr = m.as_str().parse().ok()?;
            whole(m.start(), m.end()).then(|| (m.start(), ip.to_string()))
        });
        let v6 = v6_candidates(text).into_iter().filter_map(|(start, end)| {
            // A time such as 10:30:00 never parses as IPv6; `::` alone is
            // punctuation, not an address.
            let ip: Ipv6Addr = text[start..end].parse().ok()?;
            (whole(start, end) && !ip.is_unspecified()).then(|| (start, ip.to_string()))
        });
        // In the order the text names them.
        let mut all: Vec<(usize, String)> = v4.chain(v6).collect();
        all.sort();
        unique(all.into_iter().map(|(_, ip)| ip))
    }
}

/// Subject, text and attachment names of a raw message, the text cut at
/// [`TEXT_LIMIT`]; the flag says whether it was cut.
fn text_of(raw: &[u8]) -> (String, Vec<String>, bool) {
    let Some(message) = MessageParser::new().parse(raw) else {
        return (String::new(), Vec::new(), false);
    };
    let mut text = String::new();
    let mut truncated = false;
    let mut parts: Vec<Cow<'_, str>> = (0..message.text_body_count())
        .filter_map(|i| message.body_text(i))
        .collect();
    if parts.is_empty() {
        parts = (0..message.html_body_count())
            .filter_map(|i| message.body_text(i))
            .collect();
    }
    for part in parts {
        if text.len() + part.len() + 1 > TEXT_LIMIT {
            let room = TEXT_LIMIT.saturating_sub(text.len());
            let mut cut = room.min(part.len());
            while !part.is_char_boundary(cut) {
                cut -= 1;
            }
            text.push_str(&part[..cut]);
            truncated = true;
            break;
        }
        text.push_str(&part);
        text.push('\n');
    }
    let attachments = message
        .attachments()
        .filter_map(|a| a.attachment_name())
        .take(MAX_ATTACHMENTS)
        .map(|n| crate::text::clean(n, 200))
        .collect();
    (text, attachments, truncated)
}

/// How many bytes of normalised text the scan remembers: more than the
/// longest phrase, to see the character before a match.
const LOOK_BACK: usize = 64;

/// Overlapping matches of the phrase automaton over normalised text fed a
/// byte at a time, kept when they stand as whole words: no letter or
/// digit (Unicode) just before or just after.
struct PhraseScan<'a> {
    dfa: &'a DFA,
    /// Bytes fed so far.
    fed: usize,
    /// Whether each of the last [`LOOK_BACK`] bytes fed belongs to a
    /// letter or digit, at `position % LOOK_BACK`.
    alnum: [bool; LOOK_BACK],
    /// Matches ending at the last byte fed, waiting to see the next
    /// character.
    pending: Vec<PatternID>,
    found: Vec<bool>,
}

impl<'a> PhraseScan<'a> {
    fn new(dfa: &'a DFA, patterns: usize) -> PhraseScan<'a> {
        PhraseScan {
            dfa,
            fed: 0,
            alnum: [false; LOOK_BACK],
            pending: Vec::new(),
            found: vec![false; patterns],
        }
    }

    /// The automaton's state before the first byte.
    fn start(&self) -> StateID {
        self.dfa
            .start_state(Anchored::No)
            .expect("a DFA built for unanchored search")
    }

    /// One byte of normalised text, fed to the automaton in `state`
    /// (kept by the caller, where it can stay in a register); `alnum`
    /// says whether the character the byte belongs to is a letter or
    /// digit. Returns the next state.
    #[inline(always)]
    fn byte(&mut self, state: StateID, b: u8, alnum: bool) -> StateID {
        if !self.pending.is_empty() {
            // Phrases are ASCII, so a match ends on a whole character and
            // this byte starts the one after it.
            for p in self.pending.drain(..) {
                if !alnum {
                    self.found[p.as_usize()] = true;
                }
            }
        }
        let state = self.dfa.next_state(Anchored::No, state, b);
        self.alnum[self.fed % LOOK_BACK] = alnum;
        self.fed += 1;
        if self.dfa.is_special(state) && self.dfa.is_match(state) {
            for i in 0..self.dfa.match_len(state) {
                let p = self.dfa.match_pattern(state, i);
                let start = self.fed - self.dfa.pattern_len(p);
                if start == 0 || !self.alnum[(start - 1) % LOOK_BACK] {
                    self.pending.push(p);
                }
            }
        }
        state
    }

    /// The phrases found, by pattern index; a match at the very end of the
    /// text has nothing after it.
    fn finish(mut self) -> Vec<bool> {
        for p in self.pending.drain(..) {
            self.found[p.as_usize()] = true;
        }
        self.found
    }
}

/// E-mail addresses, found from their `@`: the local part (letters,
/// digits, `._%+-`) before it, a dotted domain after it.
fn emails(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let local = |c: u8| c.is_ascii_alphanumeric() || b"._%+-".contains(&c);
    let host = |c: u8| c.is_ascii_alphanumeric() || c == b'.' || c == b'-';
    let found = text.match_indices('@').filter_map(|(at, _)| {
        let mut start = at;
        while start > 0 && local(b[start - 1]) {
            start -= 1;
        }
        let mut end = at + 1;
        while end < b.len() && host(b[end]) {
            end += 1;
        }
        let domain = text[at + 1..end].trim_end_matches(['.', '-']);
        let valid = start < at
            && domain.contains('.')
            && domain
                .split('.')
                .all(|l| !l.is_empty() && !l.starts_with('-'));
        valid.then(|| format!("{}@{domain}", &text[start..at]).to_ascii_lowercase())
    });
    unique(found)
}

/// Where IPv6 addresses may be: the runs of hex digits, colons and dots
/// around each colon (found with memchr, so prose without colons costs
/// nothing), less trailing punctuation.
fn v6_candidates(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let is_token = |c: u8| c.is_ascii_hexdigit() || c == b':' || c == b'.';
    let mut out = Vec::new();
    let mut scanned = 0;
    for (i, _) in text.match_indices(':') {
        if i < scanned {
            continue;
        }
        let mut start = i;
        while start > 0 && is_token(b[start - 1]) {
            start -= 1;
        }
        let mut end = i;
        while end < b.len() && is_token(b[end]) {
            end += 1;
        }
        scanned = end;
        while end > start && b[end - 1] == b'.' {
            end -= 1;
        }
        if end - start > 2 && b[end - 1] == b':' && b[end - 2] != b':' {
            end -= 1;
        }
        if text[start..end].matches(':').count() >= 2 {
            out.push((start, end));
        }
    }
    out
}

/// First occurrences in order, at most [`MAX_IDENTIFIERS`].
fn unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if out.len() >= MAX_IDENTIFIERS {
            break;
        }
        if !item.is_empty() && !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triage() -> Triage {
        Triage::new(&crate::config::DEFAULT_ACCOUNT_PATTERNS.map(String::from))
    }

    /// The definition [`Triage::phrases_in`] must agree with: normalise
    /// the whole text, search it for every (overlapping) occurrence of
    /// every phrase, keep those with no letter or digit either side.
    fn phrases_by_definition(
        t: &Triage,
        searcher: &aho_corasick::AhoCorasick,
        text: &str,
    ) -> Vec<bool> {
        let mut norm = String::new();
        let mut space = true;
        for c in text.chars() {
            if c.is_whitespace() {
                if !space {
                    norm.push(' ');
                    space = true;
                }
            } else {
                space = false;
                norm.extend(c.to_lowercase());
            }
        }
        if norm.ends_with(' ') {
            norm.pop();
        }
        let mut found = vec![false; t.meaning.len()];
        for m in searcher.find_overlapping_iter(&norm) {
            let before = norm[..m.start()].chars().next_back();
            let after = norm[m.end()..].chars().next();
            if !before.is_some_and(char::is_alphanumeric)
                && !after.is_some_and(char::is_alphanumeric)
            {
                found[m.pattern().as_usize()] = true;
            }
        }
        found
    }

    #[test]
    fn the_phrase_scan_agrees_with_its_definition() {
        let t = triage();
        let searcher = aho_corasick::AhoCorasick::new(t.meaning.iter().map(|(_, p)| p)).unwrap();
        let fixed = [
            "",
            "emergency",
            "  EMERGENCY\r\n\tREQUEST  ",
            "emergency requests",
            "an emergency-request",
            "search\u{a0}\u{2003}warrant",
            "Search\r\n\r\n  Warrant, urgently",
            "xsubpoena subpoenax subpoena2 (subpoena)",
            "connection logs; logs. catalogs",
            "2703(d) order 2703(f)x 2705(b).",
            "ÉMERGENCY émergency İmminent imminentİ",
            "\u{212a}idnap kidnapé kidnap\u{301}",
            "tipping-off tipping off life-threatening",
            "danger of death\u{2028}bomb threat\u{85}",
            "ΣΟΦΟΣ preservation ß preserve",
        ];
        for text in fixed {
            assert_eq!(
                t.phrases_in(text),
                phrases_by_definition(&t, &searcher, text),
                "{text:?}"
            );
        }
        // Generated texts from pieces that straddle the rules: phrase
        // fragments, whitespace of every kind, letters that change length
        // when lowercased, and punctuation.
        let pieces = [
            "emergency",
            " request",
            "search",
            " warrant",
            "logs",
            "connection",
            "gag",
            " order",
            "non-",
            "disclosure",
            "2703(f)",
            " ",
            "  ",
            "\t",
            "\r\n",
            "\u{a0}",
            "\u{3000}",
            "İ",
            "É",
            "ς",
            "x",
            "9",
            ".",
            "-",
            "(",
            "\u{301}",
            "URGENT",
            "kid",
            "nap",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut with_phrases = 0;
        for _ in 0..5000 {
            let mut text = String::new();
            for _ in 0..(seed % 12) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let found = t.phrases_in(&text);
            assert_eq!(
                found,
                phrases_by_definition(&t, &searcher, &text),
                "{text:?}"
            );
            with_phrases += usize::from(found.contains(&true));
        }
        assert!(with_phrases > 500, "{with_phrases} texts named a phrase");
    }

    fn check(subject: &str, body: &str, attachments: &[&str], kind: RequestKind, emergency: bool) {
        let names: Vec<String> = attachments.iter().map(|s| s.to_string()).collect();
        let f = triage().findings(subject, body, &names);
        assert_eq!(
            (f.kind, f.emergency),
            (kind, emergency),
            "{subject:?} / {body:?}: {f:?}"
        );
    }

    #[test]
    fn kinds() {
        use RequestKind::*;
        check("Search warrant 2026/117", "", &[], SearchWarrant, false);
        check(
            "Request",
            "Attached is a production order.",
            &[],
            CourtOrder,
            false,
        );
        check(
            "Request",
            "",
            &["Production_Order-117.pdf"],
            CourtOrder,
            false,
        );
        check("SUBPOENA duces tecum", "", &[], Subpoena, false);
        check(
            "Data preservation request",
            "a court order will follow",
            &[],
            Preservation,
            false,
        );
        check("Emergency disclosure request", "", &[], Emergency, true);
        check(
            "Request",
            "There is an imminent threat to life.",
            &[],
            Other,
            true,
        );
        // The subject outweighs the body; the body's order is a formality.
        check(
            "Preservation",
            "Please preserve. A search\r\n warrant follows.",
            &[],
            Preservation,
            false,
        );
        check("Hello", "Nothing to see", &[], Other, false);
        // Whole words only.
        check("Preserved fruit", "subpoenaed", &[], Other, false);
    }

    #[test]
    fn identifiers() {
        let f = triage().findings(
            "Account i-AB12-CD34-EF56",
            "Also ivpnAbCd1234 and ivpnTOOLONG123 and i-AAAA-BBBB-CCCC.\n\
             Mail suspect@example.com, connected from 192.0.2.44 and 2001:db8::7 and ::ffff:198.51.100.9 \
             on 2026-10-30 14:22:05 UTC. Version 1.2.3.4.5 is no address; 10:30:00 is a time.",
            &[],
        );
        assert_eq!(
            f.accounts,
            ["i-AB12-CD34-EF56", "ivpnAbCd1234", "i-AAAA-BBBB-CCCC"]
        );
        assert_eq!(f.emails, ["suspect@example.com"]);
        assert_eq!(f.ips, ["192.0.2.44", "2001:db8::7", "::ffff:198.51.100.9"]);
        assert_eq!(f.timestamps, ["2026-10-30 14:22:05 UTC"]);
        assert!(f.no_logs_hint.unwrap().contains("no-logs"));
    }

    #[test]
    fn email_addresses() {
        let f = triage().findings(
            "",
            "Write to Jane.Doe+ivpn@Example.ORG. Not user@localhost, not @alone, \
             not x@-bad.example; twice: jane.doe+ivpn@example.org",
            &[],
        );
        assert_eq!(f.emails, ["jane.doe+ivpn@example.org"]);
    }

    #[test]
    fn timestamp_forms() {
        for (text, expected) in [
            ("at 2026-10-30T14:22:05Z from", "2026-10-30T14:22:05Z"),
            ("on 30/10/2026 14:22 GMT", "30/10/2026 14:22 GMT"),
            (
                "on 30 October 2026 at 2:22 pm",
                "30 October 2026 at 2:22 pm",
            ),
            (
                "on Oct 30, 2026 14:22:05 +0100",
                "Oct 30, 2026 14:22:05 +0100",
            ),
        ] {
            let f = triage().findings("", text, &[]);
            assert_eq!(f.timestamps, [expected], "{text}");
        }
    }

    #[test]
    fn no_logs_and_gag() {
        let f = triage().findings(
            "Request",
            "Provide the connection logs for the account.",
            &[],
        );
        assert!(f.no_logs_hint.unwrap().contains("connection logs"));
        let f = triage().findings("Request", "Please provide the account e-mail.", &[]);
        assert_eq!(f.no_logs_hint, None);
        let f = triage().findings(
            "Order",
            "This order is accompanied by a non-disclosure\norder under 18 U.S.C. 2705(b).",
            &[],
        );
        assert_eq!(f.gag_order.as_deref(), Some("non-disclosure order"));
        let f = triage().findings("Order", "You may notify the customer.", &[]);
        assert_eq!(f.gag_order, None);
    }

    #[test]
    fn configured_account_patterns() {
        let t = Triage::new(&["acct-XXX".to_string()]);
        let f = t.findings("", "acct-9z9 and acct-9z99 and xacct-111", &[]);
        assert_eq!(f.accounts, ["acct-9z9"]);
    }

    #[test]
    fn messages_are_read_whole_and_never_panic() {
        let raw = b"From: a@police.gi\r\nSubject: Court order\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
Urgent: account i-ABCD-EFGH-JKLM\r\n--b\r\nContent-Type: application/pdf\r\n\
Content-Disposition: attachment; filename=\"../../etc/passwd.pdf\"\r\n\r\nxx\r\n--b--\r\n";
        let f = triage().read(raw, Some("Court order"));
        assert_eq!(f.kind, RequestKind::CourtOrder);
        assert!(f.emergency);
        assert_eq!(f.accounts, ["i-ABCD-EFGH-JKLM"]);
        assert_eq!(f.attachments, ["../../etc/passwd.pdf"]);
        for raw in [
            &b""[..],
            b"\0\0",
            b"\xff\xfe: \r\n\r\n\xff",
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x",
        ] {
            assert_eq!(triage().read(raw, None).kind, RequestKind::Other);
        }
        let mut big = b"Subject: x\r\n\r\n".to_vec();
        big.resize(TEXT_LIMIT * 2, b'a');
        let f = triage().read(&big, None);
        assert!(f.truncated);
    }
}
