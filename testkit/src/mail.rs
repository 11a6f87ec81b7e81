//! A tiny builder for RFC 5322 test messages.
//!
//! Messages come out the way they travel over SMTP: CRLF line endings, the
//! headers a real submission agent adds (Date, Message-ID, MIME-Version,
//! Content-Type), and a unique Message-ID on a documentation domain so that
//! deduplication logic sees distinct messages.
//!
//! ```
//! let msg = testkit::mail::message(
//!     "Court Clerk <clerk@example.org>",
//!     "legal@example.net",
//!     "Production order 2024-117",
//!     "Please see the attached order.\n",
//! );
//! let msg = testkit::mail::with_header(
//!     &msg,
//!     "Received",
//!     "from mx.example.org ([192.0.2.25]) by mx.example.net; Tue, 2 Jan 2024 10:00:00 +0000",
//! );
//! assert!(msg.starts_with(b"Received: from mx.example.org"));
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Domain of generated Message-IDs (RFC 2606 documentation domain).
pub const MESSAGE_ID_DOMAIN: &str = "testkit.example.org";

/// Builds a plain-text message with CRLF line endings.
///
/// `from` and `to` are header values as they should appear (a bare address
/// or `Name <address>`), `subject` must be a single line, and `body` may use
/// LF or CRLF line endings (bare LFs are converted to CRLF). Non-ASCII bodies
/// are declared as UTF-8 with 8bit transfer encoding.
pub fn message(from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let encoding = if body.is_ascii() { "7bit" } else { "8bit" };
    let mut out = format!(
        "From: {from}\r\n\
         To: {to}\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: {encoding}\r\n\
         \r\n",
        date = rfc5322_date(now),
        id = unique_message_id(),
    )
    .into_bytes();
    out.extend_from_slice(&crlf(body.as_bytes()));
    out
}

/// Returns `msg` with the header line `name: value` prepended, as a relay
/// adds Received or Return-Path. `value` is used as given (fold it yourself
/// with CRLF + whitespace if it is long).
pub fn with_header(msg: &[u8], name: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + value.len() + 4 + msg.len());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(msg);
    out
}

/// The header fields of `msg`, each with its folded lines and line
/// endings, and the body after the empty line that ends them.
pub fn fields(msg: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let end = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(msg.len(), |p| p + 2);
    let (head, body) = msg.split_at(end);
    let mut out: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    for (i, b) in head.iter().enumerate() {
        let next = head.get(i + 1);
        if *b == b'\n' && !next.is_some_and(|n| *n == b' ' || *n == b'\t') {
            out.push(&head[start..=i]);
            start = i + 1;
        }
    }
    if start < head.len() {
        out.push(&head[start..]);
    }
    (out, body.strip_prefix(b"\r\n").unwrap_or(body))
}

/// Whether `field` (as [`fields`] gives it) is a `name` field, in any case.
pub fn is_field(field: &[u8], name: &str) -> bool {
    field.len() > name.len()
        && field[..name.len()].eq_ignore_ascii_case(name.as_bytes())
        && field[name.len()] == b':'
}

/// Returns `msg` with every `name` header (its folded lines too) taken out
/// of the header section and `name: value` prepended: for a header a
/// message may carry only once, such as `Message-ID`.
pub fn replacing_header(msg: &[u8], name: &str, value: &str) -> Vec<u8> {
    let (fields, body) = fields(msg);
    let mut kept: Vec<u8> = fields
        .into_iter()
        .filter(|f| !is_field(f, name))
        .flatten()
        .copied()
        .collect();
    kept.extend_from_slice(b"\r\n");
    kept.extend_from_slice(body);
    with_header(&kept, name, value)
}

/// A Message-ID unique within the process and, thanks to the pid and the
/// clock, across concurrently running test processes.
fn unique_message_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{nanos:x}.{pid}.{n}@{MESSAGE_ID_DOMAIN}",
        pid = std::process::id()
    )
}

/// Converts bare LF line endings to CRLF, leaving existing CRLFs alone.
fn crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 32);
    let mut previous = 0u8;
    for &byte in text {
        if byte == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(byte);
        previous = byte;
    }
    out
}

/// Formats a Unix time as an RFC 5322 date in UTC, e.g.
/// `Tue, 02 Jan 2024 10:00:00 +0000`.
pub fn rfc5322_date(unix_seconds: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_seconds / 86_400;
    let secs = unix_seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31) in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`, for days >= 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_known_values() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_704_189_600),
            "Tue, 02 Jan 2024 10:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(4_133_980_799),
            "Fri, 31 Dec 2100 23:59:59 +0000"
        );
    }

    #[test]
    fn a_replaced_header_appears_once_and_the_rest_is_kept() {
        let msg = b"Subject: a\r\nMessage-ID: <1@x>\r\n\tfolded\r\nmessage-id: <2@x>\r\nTo: b\r\n\r\nMessage-ID: in the body\r\n";
        let out = String::from_utf8(replacing_header(msg, "Message-ID", "<3@x>")).unwrap();
        assert_eq!(
            out,
            "Message-ID: <3@x>\r\nSubject: a\r\nTo: b\r\n\r\nMessage-ID: in the body\r\n"
        );
    }

    #[test]
    fn message_has_crlf_headers_and_body() {
        let msg = message("a@example.org", "b@example.net", "Hi", "line 1\nline 2\r\n");
        let text = String::from_utf8(msg).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, "line 1\r\nline 2\r\n");
        assert!(!text.replace("\r\n", "").contains('\n'));
        let names: Vec<&str> = head
            .split("\r\n")
            .map(|line| line.split_once(':').unwrap().0)
            .collect();
        assert_eq!(
            names,
            [
                "From",
                "To",
                "Subject",
                "Date",
                "Message-ID",
                "MIME-Version",
                "Content-Type",
                "Content-Transfer-Encoding"
            ]
        );
        assert!(head.contains("Content-Transfer-Encoding: 7bit"));
    }

    #[test]
    fn message_ids_are_unique() {
        let id = |m: Vec<u8>| {
            let text = String::from_utf8(m).unwrap();
            text.lines()
                .find(|l| l.starts_with("Message-ID:"))
                .unwrap()
                .to_owned()
        };
        let a = id(message("a@example.org", "b@example.net", "s", ""));
        let b = id(message("a@example.org", "b@example.net", "s", ""));
        assert_ne!(a, b);
        assert!(a.ends_with("@testkit.example.org>"));
    }

    #[test]
    fn non_ascii_body_is_8bit() {
        let msg = message("a@example.org", "b@example.net", "s", "Grüße\n");
        let text = String::from_utf8(msg).unwrap();
        assert!(text.contains("Content-Transfer-Encoding: 8bit\r\n"));
    }

    #[test]
    fn with_header_prepends() {
        let msg = with_header(
            b"From: a@example.org\r\n\r\nx",
            "Return-Path",
            "<a@example.org>",
        );
        assert_eq!(
            msg,
            b"Return-Path: <a@example.org>\r\nFrom: a@example.org\r\n\r\nx"
        );
    }
}
