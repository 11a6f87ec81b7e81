//! The `verify` command: judge message files exactly as `run` would,
//! writing nothing, and print SPEC.md's JSON objects or one line each.
//!
//! Messages are judged concurrently on the runtime's worker threads (RSA
//! verification is CPU work) while the output keeps the order of the
//! arguments; at most [`WINDOW`] messages are held in memory at once.
//! Each file is opened, and its pages asked for, when it enters the window,
//! so the disk works ahead of the workers instead of stalling them.
//!
//! The work is handed to the workers in runs of [`RUN`] consecutive files,
//! each run one task that judges its messages concurrently and hands back
//! their rendered reports together: a task per message cost a thread
//! wake-up per message (a futex call each way), a fifth of the time spent
//! outside DKIM itself (scripts/bench-verify).

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use futures_util::StreamExt;
use serde::Serialize;

use crate::decide::{Decision, History};
use crate::evidence::{AuthResult, DkimCheck};
use crate::judge::{Judge, Judgement};

/// Messages in flight at once.
const WINDOW: usize = 64;

/// Consecutive messages judged by one task.
const RUN: usize = 8;

/// One `verify --json` object (SPEC.md, Command line).
#[derive(Debug, Serialize)]
pub struct Report {
    pub file: String,
    pub message_id: Option<String>,
    pub sha256: String,
    pub from: Option<String>,
    pub from_domain: Option<String>,
    pub dkim: Vec<DkimCheck>,
    pub spf: SpfReport,
    pub dmarc: DmarcReport,
    pub agency: Option<String>,
    pub decision: Decision,
    pub reason: String,
    pub reply: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_suppressed: Option<String>,
    pub subject: Option<String>,
    pub size: usize,
}

#[derive(Debug, Serialize)]
pub struct SpfReport {
    pub result: AuthResult,
    pub domain: Option<String>,
    pub ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helo: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DmarcReport {
    pub result: AuthResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

impl Report {
    pub fn new(file: String, j: Judgement) -> Report {
        let Judgement {
            inbound,
            evidence,
            verdict,
        } = j;
        Report {
            file,
            message_id: inbound.message_id.clone(),
            sha256: inbound.sha256.clone(),
            from: inbound.from_address().map(str::to_string),
            from_domain: inbound.from_domain().map(|d| d.to_string()),
            dkim: evidence
                .dkim
                .into_iter()
                .map(|c| DkimCheck {
                    key_record: None,
                    ..c
                })
                .collect(),
            spf: SpfReport {
                result: evidence.spf.result,
                domain: evidence.spf.domain,
                ip: evidence.spf.ip,
                helo: evidence.spf.helo,
                reason: evidence.spf.reason,
            },
            dmarc: DmarcReport {
                result: evidence.dmarc.result,
                policy: evidence.dmarc.policy,
            },
            agency: verdict.agency,
            decision: verdict.decision,
            reason: verdict.reason,
            reply: verdict.reply,
            reply_suppressed: verdict.reply_suppressed,
            subject: inbound.subject,
            size: inbound.size,
        }
    }

    /// The one-line human form.
    pub fn line(&self) -> String {
        format!(
            "{}: decision={} reply={} from={} agency={} reason=\"{}\"",
            self.file,
            self.decision.as_str(),
            if self.reply { "yes" } else { "no" },
            self.from.as_deref().unwrap_or("-"),
            self.agency.as_deref().unwrap_or("-"),
            self.reason.replace('"', "'"),
        )
    }
}

/// Judges every file and writes the output. A file that cannot be read
/// is reported on stderr and makes the exit status 1, after the others.
///
/// Each worker renders its own report, so the output is written as the
/// results arrive, in argument order, rather than serialised in one go on
/// one thread at the end.
pub async fn run(judge: Judge, files: Vec<PathBuf>, json: bool) -> anyhow::Result<bool> {
    let single = files.len() == 1;
    let mut all_read = true;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut written = 0usize;
    let mut runs = futures_util::stream::iter(files.chunks(RUN).map(<[PathBuf]>::to_vec))
        .map(|run| {
            let judge = judge.clone();
            let opened: Vec<_> = run.iter().map(super::input::open_ahead).collect();
            tokio::spawn(async move {
                let reports = run.into_iter().zip(opened).map(|(path, opened)| {
                    let judge = &judge;
                    async move {
                        let raw = super::input::read_opened(&path, opened)?;
                        let j = judge.judge(&raw, &History::default()).await;
                        render(Report::new(path.display().to_string(), j), json, single)
                    }
                });
                futures_util::future::join_all(reports).await
            })
        })
        .buffered(WINDOW / RUN);
    while let Some(run) = runs.next().await {
        for report in run? {
            match report {
                Ok(text) => {
                    match (json && !single, written) {
                        (true, 0) => out.write_all(b"[\n")?,
                        (true, _) => out.write_all(b",\n")?,
                        (false, _) => {}
                    }
                    out.write_all(text.as_bytes())?;
                    if !json || single {
                        out.write_all(b"\n")?;
                    }
                    written += 1;
                }
                Err(e) => {
                    all_read = false;
                    // What is already written goes out before the complaint.
                    out.flush()?;
                    eprintln!("legal-intake: {e:#}");
                }
            }
        }
    }
    if json {
        match (single, written) {
            (_, 0) => out.write_all(b"[]\n")?,
            (true, _) => {}
            (false, _) => out.write_all(b"\n]\n")?,
        }
    }
    out.flush()?;
    Ok(all_read)
}

/// One report as printed: a line, a pretty object, or (for several files
/// in JSON) one element of a pretty array, indented one level.
fn render(report: Report, json: bool, single: bool) -> anyhow::Result<String> {
    Ok(if !json {
        report.line()
    } else if single {
        serde_json::to_string_pretty(&report)?
    } else {
        // JSON strings hold no raw newline, so every newline here is the
        // formatter's.
        let object = serde_json::to_string_pretty(&report)?;
        format!("  {}", object.replace('\n', "\n  "))
    })
}
