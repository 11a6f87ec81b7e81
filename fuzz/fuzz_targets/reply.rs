//! Reply rendering with hostile inputs: whatever the request's subject,
//! agency name and thread identifiers hold, the reply parses back with
//! exactly the headers a benign reply has, its reference in the subject
//! and its own Message-ID.
#![no_main]

use legal_intake::reply::{self, Reply, ReplyKind, Templates};
use libfuzzer_sys::fuzz_target;
use mail_parser::MessageParser;
use time::OffsetDateTime;

const REFERENCE: &str = "LR-2026-0042";
const MESSAGE_ID: &str = "<LR-2026-0042.0123456789abcdef0123456789abcdef@ivpn.net>";

/// The header names of a message, lowercase, in order.
fn header_names(raw: &[u8]) -> Vec<String> {
    let message = MessageParser::default()
        .parse_headers(raw)
        .expect("the reply parses");
    message
        .headers()
        .iter()
        .map(|h| h.name().to_ascii_lowercase())
        .collect()
}

fn render(
    kind: ReplyKind,
    subject: Option<&str>,
    agency: Option<&str>,
    in_reply_to: Option<&str>,
    references: &[String],
) -> Vec<u8> {
    let date = OffsetDateTime::from_unix_timestamp(1_793_000_000).unwrap();
    reply::render(
        &Templates::builtin(),
        &Reply {
            kind,
            reference: REFERENCE,
            agency,
            from: "IVPN Legal <legal@ivpn.net>",
            to: "officer@police.gi",
            original_subject: subject,
            in_reply_to,
            references,
            received: date,
            message_id: MESSAGE_ID,
            date,
        },
    )
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\u{0}');
    let subject = fields.next();
    let agency = fields.next();
    let in_reply_to = fields.next();
    let references: Vec<String> = fields.map(str::to_string).collect();
    let kind = if data.first().is_some_and(|b| b & 1 == 1) {
        ReplyKind::Rejection
    } else {
        ReplyKind::Acknowledgement
    };
    let hostile = render(kind, subject, agency, in_reply_to, &references);
    let benign_refs: Vec<String> = references.iter().map(|_| "<a@b>".to_string()).collect();
    let benign = render(
        kind,
        subject.map(|_| "Order"),
        agency.map(|_| "Agency"),
        in_reply_to.map(|_| "<a@b>"),
        &benign_refs,
    );
    assert_eq!(header_names(&hostile), header_names(&benign), "{text:?}");
    let message = MessageParser::default()
        .parse(&hostile)
        .expect("the reply parses");
    let subject_back = message.subject().unwrap_or_default();
    assert!(
        subject_back.starts_with(&format!("[{REFERENCE}] Re: ")),
        "{subject_back:?}"
    );
    assert_eq!(
        message.message_id(),
        Some(MESSAGE_ID.trim_matches(['<', '>'])),
        "{text:?}"
    );
    // The body never ends the message early or adds a part.
    assert_eq!(message.text_body_count(), 1);
    assert_eq!(message.attachment_count(), 0);
});
