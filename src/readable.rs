//! A filed message as a person reads it on the case board: its text (a
//! sender's HTML turned into text by mail-parser, never shown as HTML) and
//! its attachments with their sizes and SHA-256, each downloadable only as
//! a file.
//!
//! Pure: bytes in, plain values out. What the text may contain is made
//! safe here for any display (control characters and bidirectional
//! overrides removed); what it means as HTML is the template's escaping.

use mail_parser::{MessageParser, MimeHeaders};
use sha2::{Digest, Sha256};

/// At most this much text is shown; the rest is in the raw message.
pub const TEXT_LIMIT: usize = 512 * 1024;

/// A message's readable parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readable {
    pub text: String,
    /// Whether the text was cut at [`TEXT_LIMIT`].
    pub truncated: bool,
    /// Whether no text part was found and the HTML part was read as text.
    pub from_html: bool,
    pub attachments: Vec<Attachment>,
}

/// One attachment, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Its position among the message's attachments (the download's number).
    pub index: usize,
    /// Its name as the sender gave it, cleaned (`attachment-N` without one).
    pub name: String,
    /// Its declared content type, for information only: a download is
    /// always `application/octet-stream`.
    pub content_type: String,
    pub size: usize,
    pub sha256: String,
}

/// Reads a raw message. Unparseable bytes give no text and no attachments
/// (the raw message itself stays downloadable).
pub fn read(raw: &[u8]) -> Readable {
    let Some(message) = MessageParser::new().parse(raw) else {
        return Readable::default();
    };
    // mail-parser's text body is the text parts, or the HTML parts
    // turned into text where a message has no text alternative.
    let count = message.text_body_count();
    let parts: Vec<String> = (0..count)
        .filter_map(|i| message.body_text(i))
        .map(|t| t.into_owned())
        .collect();
    let from_html = (0..count).any(|i| {
        u32::try_from(i)
            .ok()
            .and_then(|i| message.text_part(i))
            .is_some_and(|p| p.is_text_html())
    });
    let mut text = displayable(&parts.join("\n"));
    let truncated = text.len() > TEXT_LIMIT;
    if truncated {
        let mut cut = TEXT_LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    let attachments = message
        .attachments()
        .enumerate()
        .map(|(index, part)| Attachment {
            index,
            name: name_of(part.attachment_name(), index),
            content_type: part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{sub}", ct.ctype()),
                    None => ct.ctype().to_string(),
                })
                .map_or_else(
                    || "application/octet-stream".into(),
                    |t| crate::text::clean(&t, 100),
                ),
            size: part.contents().len(),
            sha256: hex::encode(Sha256::digest(part.contents())),
        })
        .collect();
    Readable {
        text,
        truncated,
        from_html,
        attachments,
    }
}

/// The attachment at `index`: its cleaned name and its decoded bytes.
pub fn attachment(raw: &[u8], index: usize) -> Option<(String, Vec<u8>)> {
    let message = MessageParser::new().parse(raw)?;
    let part = message.attachments().nth(index)?;
    Some((
        name_of(part.attachment_name(), index),
        part.contents().to_vec(),
    ))
}

fn name_of(name: Option<&str>, index: usize) -> String {
    let name = name.map(|n| crate::text::clean(n, 200)).unwrap_or_default();
    // A name is shown and offered as a file name; path separators and a
    // leading dot would make it something else.
    let name: String = name
        .chars()
        .map(|c| if matches!(c, '/' | '\\') { '_' } else { c })
        .collect();
    let name = name.trim_start_matches('.').trim();
    if name.is_empty() {
        format!("attachment-{}", index + 1)
    } else {
        name.to_string()
    }
}

/// Text with every control character but newline and tab removed, and
/// the bidirectional and invisible format characters that can make text
/// read differently from what it is (CVE-2021-42574's "Trojan Source"),
/// as [`crate::text::clean`] removes them from header text.
fn displayable(s: &str) -> String {
    s.replace("\r\n", "\n")
        .chars()
        .filter(|&c| (c == '\n' || c == '\t' || !c.is_control()) && !crate::text::is_format_char(c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &[u8] = b"From: a@police.gi\r\nTo: legal@ivpn.net\r\nSubject: x\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/html\r\n\r\n\
<p>Production order</p><script>alert(1)</script>\r\n--b\r\n\
Content-Type: application/pdf; name=\"../../order\xe2\x80\xae.pdf\"\r\nContent-Disposition: attachment; filename=\"../../order\xe2\x80\xaefdp.exe\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n";

    #[test]
    fn html_is_read_as_text_and_attachments_are_listed_with_hashes() {
        let r = read(MIXED);
        assert!(r.from_html);
        assert!(r.text.contains("Production order"), "{:?}", r.text);
        assert!(!r.text.contains('<'), "{:?}", r.text);
        assert_eq!(r.attachments.len(), 1);
        let a = &r.attachments[0];
        assert_eq!(a.size, 9);
        assert_eq!(a.sha256, hex::encode(Sha256::digest(b"%PDF-1.4\n")));
        assert_eq!(a.content_type, "application/pdf");
        // No path, no right-to-left override.
        assert!(
            !a.name.contains('/') && !a.name.contains('\u{202E}'),
            "{}",
            a.name
        );
        let (name, bytes) = attachment(MIXED, 0).unwrap();
        assert_eq!((name, bytes), (a.name.clone(), b"%PDF-1.4\n".to_vec()));
        assert!(attachment(MIXED, 1).is_none());
    }

    #[test]
    fn control_characters_and_overrides_are_removed() {
        assert_eq!(displayable("a\r\nb\u{1b}[31m\u{202E}c\td"), "a\nb[31mc\td");
    }

    #[test]
    fn garbage_gives_nothing_and_does_not_panic() {
        assert_eq!(read(b""), Readable::default());
        let _ = read(&[0xff; 300]);
        assert!(attachment(b"", 0).is_none());
    }
}
