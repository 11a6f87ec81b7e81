//! The `ingest` command: file message files (or standard input) into the
//! case log exactly as the daemon files what it fetches, replies queued.
//!
//! Messages are prepared (examined and triaged) concurrently on the
//! runtime's worker threads (DNS waits and RSA verification), then filed in order in batches — several
//! messages per transaction, one fsync for all of them — on a blocking
//! thread, so the database never stalls the runtime. The line for a
//! message is printed only after the transaction holding it has
//! committed. At most [`WINDOW`] messages (and about [`WINDOW_KIB`] KiB) are
//! held in memory at once.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::clock::Clock;
use crate::config::Config;
use crate::judge::Judge;
use crate::pipeline::{Filer, Filing, Outcome, Prepared};
use crate::store::Store;
use crate::triage::Triage;

/// Messages being prepared at once.
const WINDOW: usize = 256;

/// KiB of messages held at once, beyond which no new file is read (one
/// message is always allowed, whatever its size).
const WINDOW_KIB: usize = 256 * 1024;

/// The most messages filed in one transaction.
const BATCH: usize = 128;

/// One `ingest --json` object.
#[derive(Debug, Serialize)]
pub struct Line {
    pub file: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Newly filed (not a duplicate, not deferred).
    pub new: bool,
}

impl Line {
    fn human(&self) -> String {
        let o = &self.outcome;
        let mut s = format!(
            "{}: case={} decision={} new={} new_case={} reply={}",
            self.file,
            o.case.map_or_else(|| "-".to_string(), |c| c.to_string()),
            o.decision,
            yes(self.new),
            yes(o.new_case),
            o.reply.map_or("none", |k| k.as_str()),
        );
        match o.filing {
            Filing::Duplicate => s.push_str(" (already filed)"),
            Filing::Deferred => s.push_str(&format!(
                " deferrals={} reason=\"{}\"",
                o.deferrals.unwrap_or(0),
                o.reason.replace('"', "'")
            )),
            Filing::New => {}
        }
        s
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// A message prepared, and the share of [`WINDOW_KIB`] it holds until
/// it is filed.
struct Ready {
    name: String,
    prepared: anyhow::Result<Prepared>,
    held: OwnedSemaphorePermit,
}

/// How an `ingest` run ended, for its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Every message filed (or recognised as filed before): exit 0.
    Filed,
    /// Every message filed but some deferred, their bytes not kept:
    /// exit 75 (EX_TEMPFAIL), so an MTA delivering through a pipe keeps
    /// the message and tries again; the deferral is counted, so the tries
    /// end in quarantine after `limits.defer_max_tries`.
    Deferred,
    /// A file could not be read or filed: exit 1 (reported on stderr).
    Failed,
}

/// Files every message and prints one line (or one JSON array) for them.
/// A file that cannot be read or filed is reported on stderr and makes the
/// result [`Ingested::Failed`], after the others.
pub async fn run(
    config: &Config,
    clock: Clock,
    files: Vec<PathBuf>,
    json: bool,
) -> anyhow::Result<Ingested> {
    let judge = Judge::new(config)?;
    let triage = Arc::new(Triage::new(&config.triage.account_patterns));
    let filer = Arc::new(Filer::new(config));
    let path = config.store.database.clone();
    let mut store = tokio::task::spawn_blocking(move || Store::open(&path)).await??;
    store.checkpoint_in_background()?;

    // The window: messages are opened in order, each waiting for its share
    // of the byte budget (in KiB; one message may always have it all),
    // prepared concurrently, and handed over in order in batches of what
    // is already prepared.
    let budget = Arc::new(Semaphore::new(WINDOW_KIB));
    #[expect(
        clippy::async_yields_async,
        reason = "the window's stage waits for the budget and yields the task, which `buffered` awaits"
    )]
    let mut batches = std::pin::pin!(
        futures_util::stream::iter(files)
            .then(|path| {
                let (judge, triage, budget) = (judge.clone(), triage.clone(), budget.clone());
                async move {
                    let opened = super::input::open_ahead(&path);
                    let kib = opened.size().div_ceil(1024).clamp(1, WINDOW_KIB as u64) as u32;
                    let held = budget
                        .acquire_many_owned(kib)
                        .await
                        .expect("the window's semaphore is never closed");
                    let name = path.display().to_string();
                    let source = format!("ingest:{}", crate::text::clean(&name, 200));
                    tokio::spawn(async move {
                        let prepared = async {
                            let raw = super::input::read_opened(&path, opened)?;
                            let sha256 = crate::audit::sha256_hex(&raw);
                            anyhow::Ok(
                                Prepared::prepare(&judge, &triage, source, raw, sha256).await,
                            )
                        };
                        Ready {
                            name,
                            prepared: prepared.await,
                            held,
                        }
                    })
                }
            })
            .buffered(WINDOW)
            .ready_chunks(BATCH)
    );
    let mut all_ok = true;
    let mut deferred = false;
    let mut lines = Vec::new();
    let mut stdout = std::io::stdout().lock();

    while let Some(batch) = batches.next().await {
        let mut names = Vec::new();
        let mut items = Vec::new();
        let mut held = Vec::new();
        for ready in batch {
            let ready = ready.context("examining a message failed")?;
            match ready.prepared {
                Ok(item) => {
                    names.push(ready.name);
                    items.push(item);
                    held.push(ready.held);
                }
                Err(e) => {
                    all_ok = false;
                    eprintln!("legal-intake: {e:#}");
                }
            }
        }
        if items.is_empty() {
            continue;
        }

        let filer = filer.clone();
        let (returned, outcomes) = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let outcomes = filer.file_batch(&mut store, &items, clock);
            tracing::debug!(
                messages = items.len(),
                ms = started.elapsed().as_secs_f64() * 1000.0,
                "batch filed"
            );
            (store, outcomes)
        })
        .await
        .context("the filing thread failed")?;
        store = returned;
        // A failed commit loses the whole batch: stop rather than report
        // later messages as filed around a hole.
        let outcomes = outcomes?;
        drop(held);

        for (name, outcome) in names.into_iter().zip(outcomes) {
            match outcome {
                Ok(outcome) => {
                    crate::pipeline::log_outcome(None, &outcome, None);
                    deferred |= matches!(outcome.filing, Filing::Deferred);
                    let line = Line {
                        file: name,
                        new: matches!(outcome.filing, Filing::New),
                        outcome,
                    };
                    if json {
                        lines.push(line);
                    } else {
                        writeln!(stdout, "{}", line.human())?;
                    }
                }
                Err(e) => {
                    all_ok = false;
                    eprintln!("legal-intake: {name}: cannot be filed: {e:#}");
                }
            }
        }
        stdout.flush()?;
    }

    if json {
        serde_json::to_writer_pretty(&mut stdout, &lines)?;
        writeln!(stdout)?;
    }
    stdout.flush()?;
    Ok(match (all_ok, deferred) {
        (false, _) => Ingested::Failed,
        (true, true) => Ingested::Deferred,
        (true, false) => Ingested::Filed,
    })
}
