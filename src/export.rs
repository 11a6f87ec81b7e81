//! `cases export ID --out DIR`: the evidence bundle of one case.
//!
//! The folder gets the raw messages byte for byte (`msg1.eml`, ...), their
//! attachments decoded under names made here (`msg1-att2.pdf`: the
//! message's own file name is kept only as data, never as a path, and only
//! a short alphanumeric extension survives from it), every reply and notice
//! exactly as it was handed to the mail server (`out1-acknowledgement.eml`,
//! ...: what the recipient got, whatever the templates say today), the case
//! with its replies, the verdicts with their evidence and triage findings, the
//! case's audit events with their hashes, and `manifest.json` listing every
//! other file with its SHA-256. An export never overwrites: the folder must
//! not exist or be empty. The export itself is an audit event carrying the
//! manifest's hash, so the bundle handed to a court can be tied to the log.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use mail_parser::{MessageParser, MimeHeaders};
use serde::Serialize;
use serde_json::json;

use crate::audit::{self, kind, sha256_hex};
use crate::case::Reference;
use crate::casework::{Dossier, dossier};
use crate::clock::{self, Clock};
use crate::store::Store;

/// The export folder is not usable (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}: the export folder must not exist or must be empty; nothing was written")]
pub struct NotEmpty(pub String);

/// One file of the bundle.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub name: String,
    pub sha256: String,
    pub size: usize,
    /// What the file is.
    pub what: String,
    /// For an attachment: the name the message gave it (data only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_name: Option<String>,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub case: Reference,
    pub exported_at: String,
    pub exported_by: String,
    /// The audit chain head when the bundle was made.
    pub chain_head: Option<String>,
    pub files: Vec<Entry>,
}

/// Writes the bundle; returns the manifest.
pub fn export(
    store: &mut Store,
    reference: Reference,
    out: &Path,
    actor: &str,
    clock: Clock,
) -> anyhow::Result<Manifest> {
    let d = dossier(store, reference, true)?;
    let shown = out.display().to_string();
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(NotEmpty(shown).into());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).with_context(|| format!("cannot create {shown}"))?;
        }
        Err(_) if out.exists() => return Err(NotEmpty(shown).into()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {shown}")),
    }

    let at = clock::stamp(clock.now());
    let head = store.head()?;
    let mut files = Vec::new();
    write_messages(out, &d, &mut files)?;

    for (n, r) in d.replies.iter().enumerate() {
        let Some(bytes) = store.read().sent_bytes(r.id)? else {
            continue;
        };
        write(
            out,
            &format!("out{}-{}.eml", n + 1, r.kind),
            &bytes,
            &format!(
                "the {} to {} exactly as handed to the mail server (Message-ID {}, status {})",
                r.kind, r.recipient, r.msgid, r.status
            ),
            &mut files,
        )?;
    }

    let case_json = serde_json::to_vec_pretty(&json!({ "case": d.case, "replies": d.replies }))?;
    write(
        out,
        "case.json",
        &case_json,
        "the case and its queued replies",
        &mut files,
    )?;
    let verdicts: Vec<_> = d
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            json!({
                "file": format!("msg{}.eml", i + 1),
                "message": m.message,
                "verdict": m.verdict,
            })
        })
        .collect();
    write(
        out,
        "verdicts.json",
        &serde_json::to_vec_pretty(&verdicts)?,
        "each message's verdict with its evidence as at receipt, and its triage findings",
        &mut files,
    )?;
    write(
        out,
        "events.json",
        &serde_json::to_vec_pretty(&json!({ "chain_head": head, "events": d.events }))?,
        "the case's audit events; each hash is SHA-256(prev_hash || [id, at, actor, case_id, kind, data])",
        &mut files,
    )?;

    let manifest = Manifest {
        case: reference,
        exported_at: at.clone(),
        exported_by: actor.to_string(),
        chain_head: head,
        files,
    };
    let bytes = serde_json::to_vec_pretty(&manifest)?;
    create(&out.join("manifest.json"), &bytes)?;

    let tx = store.begin()?;
    audit::append(
        &tx.ops(),
        &at,
        actor,
        Some(d.case.id),
        kind::CASE_EXPORTED,
        &json!({
            "manifest_sha256": sha256_hex(&bytes),
            "files": manifest.files.len(),
            "directory": crate::text::clean(&shown, 500),
        }),
    )?;
    tx.commit()?;
    Ok(manifest)
}

fn write_messages(out: &Path, d: &Dossier, files: &mut Vec<Entry>) -> anyhow::Result<()> {
    for (i, m) in d.messages.iter().enumerate() {
        let n = i + 1;
        let raw = m.message.raw.as_deref().unwrap_or_default();
        write(
            out,
            &format!("msg{n}.eml"),
            raw,
            &format!(
                "message {n} exactly as received (sha256 recorded at filing: {})",
                m.message.sha256
            ),
            files,
        )?;
        // Attachments are a convenience for the reader; the .eml is the
        // evidence. A message mail-parser cannot read has none.
        let attachments = std::panic::catch_unwind(|| attachments_of(raw)).unwrap_or_default();
        for (j, (bytes, original, ext)) in attachments.into_iter().enumerate() {
            let name = format!("msg{n}-att{}.{ext}", j + 1);
            write(
                out,
                &name,
                &bytes,
                &format!("attachment {} of message {n}, decoded", j + 1),
                files,
            )?;
            if let Some(e) = files.last_mut() {
                e.original_name = original;
            }
        }
    }
    Ok(())
}

/// Each attachment's decoded bytes, its own name (sanitised, as data) and
/// the extension to use.
fn attachments_of(raw: &[u8]) -> Vec<(Vec<u8>, Option<String>, String)> {
    let Some(message) = MessageParser::new().parse(raw) else {
        return Vec::new();
    };
    message
        .attachments()
        .map(|a| {
            let original = a.attachment_name().map(|n| crate::text::clean(n, 200));
            let from_name = original
                .as_deref()
                .and_then(|n| n.rsplit_once('.'))
                .map(|(_, e)| e.to_ascii_lowercase())
                .filter(|e| {
                    (1..=8).contains(&e.len()) && e.bytes().all(|b| b.is_ascii_alphanumeric())
                });
            let ext = from_name.unwrap_or_else(|| {
                let ct = a
                    .content_type()
                    .map(|c| {
                        format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")).to_ascii_lowercase()
                    })
                    .unwrap_or_default();
                extension_for(&ct, a.is_message()).to_string()
            });
            (a.contents().to_vec(), original, ext)
        })
        .collect()
}

fn extension_for(content_type: &str, is_message: bool) -> &'static str {
    if is_message {
        return "eml";
    }
    match content_type {
        "application/pdf" => "pdf",
        "text/plain" => "txt",
        "text/html" => "html",
        "text/csv" => "csv",
        "message/rfc822" => "eml",
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/tiff" => "tif",
        "application/zip" => "zip",
        "application/msword" => "doc",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => "docx",
        "application/vnd.ms-excel" => "xls",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => "xlsx",
        _ => "bin",
    }
}

fn write(
    out: &Path,
    name: &str,
    bytes: &[u8],
    what: &str,
    files: &mut Vec<Entry>,
) -> anyhow::Result<()> {
    create(&out.join(name), bytes)?;
    files.push(Entry {
        name: name.to_string(),
        sha256: sha256_hex(bytes),
        size: bytes.len(),
        what: what.to_string(),
        original_name: None,
    });
    Ok(())
}

/// Creates a file that must not exist yet.
fn create(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_names_never_become_paths() {
        let raw = b"From: a@police.gi\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n\
--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"../../x/order.PDF\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0x\r\n\
--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"evil.p/df\"\r\n\r\nxx\r\n\
--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment\r\n\r\nyy\r\n--b--\r\n";
        let a = attachments_of(raw);
        let exts: Vec<&str> = a.iter().map(|(_, _, e)| e.as_str()).collect();
        assert_eq!(exts, ["pdf", "pdf", "bin"]);
        assert_eq!(a[0].0, b"%PDF-1");
        assert_eq!(a[0].1.as_deref(), Some("../../x/order.PDF"));
    }
}
