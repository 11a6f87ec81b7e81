//! Logging set-up: where the lines go and in which form.
//!
//! - Under systemd, when `JOURNAL_STREAM` names the very file stderr is,
//!   records go to the journal natively: `MESSAGE` is the same text line
//!   (so `journalctl -u legal-intake | grep decision=quarantine` works),
//!   and every field is also a journal field with the `LI_` prefix, so
//!   `journalctl -u legal-intake LI_DECISION=quarantine` matches exactly.
//! - `--log-format json` writes one JSON object per line to stderr.
//! - Otherwise, text lines on stderr (`key=value` fields), coloured only on
//!   a terminal.
//!
//! The level comes from `LEGAL_INTAKE_LOG` (default `info`).

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// The journal's native protocol socket (systemd.journal-fields(7)).
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The form of log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_env("LEGAL_INTAKE_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
}

/// True when stderr is the journal stream systemd connected us to
/// (`JOURNAL_STREAM=dev:inode`, sd_journal_stream_fd(3)).
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    value
        .to_str()
        .is_some_and(|v| names_file(v, meta.dev(), meta.ino()))
}

/// Whether a `JOURNAL_STREAM` value (`device:inode`) names this file.
fn names_file(value: &str, dev: u64, ino: u64) -> bool {
    value.split_once(':').is_some_and(|(d, i)| {
        d.parse::<u64>().is_ok_and(|d| d == dev) && i.parse::<u64>().is_ok_and(|i| i == ino)
    })
}

/// Installs the global subscriber.
pub fn init(format: LogFormat) {
    if format == LogFormat::Text
        && stderr_is_journal()
        && let Ok(socket) = UnixDatagram::unbound()
        && socket.connect(JOURNAL_SOCKET).is_ok()
    {
        tracing_subscriber::registry()
            .with(filter())
            .with(Journal { socket })
            .init();
        return;
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// Sends each event to the journal as one entry.
struct Journal {
    socket: UnixDatagram,
}

/// An event's message and fields, formatted as the text lines are.
#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.push((field.name(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.push((field.name(), text));
        }
    }
}

impl<S: Subscriber> Layer<S> for Journal {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let mut text = f.message.clone();
        for (k, v) in &f.fields {
            let _ = write!(text, " {k}={v}");
        }
        let priority = match *event.metadata().level() {
            Level::ERROR => "3",
            Level::WARN => "4",
            Level::INFO => "6",
            Level::DEBUG | Level::TRACE => "7",
        };
        let mut entry = Vec::with_capacity(text.len() + 256);
        put(&mut entry, "MESSAGE", &text);
        put(&mut entry, "PRIORITY", priority);
        put(&mut entry, "SYSLOG_IDENTIFIER", "legal-intake");
        for (k, v) in &f.fields {
            let name: String = k
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            put(&mut entry, &format!("LI_{name}"), v.trim_matches('"'));
        }
        // A lost log line must never stop the daemon.
        let _ = self.socket.send(&entry);
    }
}

/// Appends one field in the journal's native format: `KEY=value\n`, or
/// for a value with a newline, `KEY\n`, its length (64-bit little endian),
/// the bytes and `\n`.
fn put(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    if value.contains('\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        out.extend_from_slice(value.as_bytes());
    } else {
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_fields_are_encoded_natively() {
        let mut out = Vec::new();
        put(&mut out, "MESSAGE", "message uid=1 decision=quarantine");
        put(&mut out, "LI_REASON", "two\nlines");
        let mut expected = b"MESSAGE=message uid=1 decision=quarantine\nLI_REASON\n".to_vec();
        expected.extend_from_slice(&9u64.to_le_bytes());
        expected.extend_from_slice(b"two\nlines\n");
        assert_eq!(out, expected);
    }

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(names_file("8:1234", 8, 1234));
        assert!(!names_file("8:1235", 8, 1234));
        assert!(!names_file("9:1234", 8, 1234));
        assert!(!names_file("garbage", 8, 1234));
    }
}
