//! The daemon's optional Prometheus endpoint (`[metrics]`): counters kept
//! as the daemon works, and figures read from the case log when scraped;
//! [`endpoint`] serves both on `GET /metrics`.
//!
//! ```text
//! daemon.rs, outbox.rs ─▶ Metrics (atomics) ──┐
//!                                             ├─▶ render ─▶ endpoint: GET /metrics
//! case log (read-only connection) ─▶ LogFigures ┘
//! ```
//!
//! Counters count since the daemon started, at the same points where the
//! log lines are written (one `message` line, one `reply`/`notice` line, one
//! IMAP failure). Gauges about the case log are read at scrape time through
//! a read-only connection of their own ([`FigureReader`]), so a scrape never
//! waits for a filing and can never write. The figures reveal case
//! activity: how many legal requests arrive, how they were judged, how many
//! cases are open and due.

pub mod endpoint;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::clock::{self, Clock, day, stamp};
use crate::decide::Decision;
use crate::notice::DUE_WITHIN_DAYS;
use crate::outbox::{OnSend, SendOutcome};
use crate::store::{DeadlineCounts, DeadlineWindow, SharedStore, Store};

/// The longest a scrape waits for the case log's figures (Prometheus's
/// default scrape timeout is 10 s).
const LOG_READ_TIMEOUT: Duration = Duration::from_secs(8);

/// The decisions, in the order of [`Metrics::messages`].
const DECISIONS: [Decision; 5] = Decision::ALL;

/// The daemon's counters since it started; shared by the passes, the
/// sending task and the endpoint. Plain relaxed atomics: each figure is
/// independent and a scrape needs no consistent cut across them.
#[derive(Debug)]
pub struct Metrics {
    /// The origin of [`Metrics::last_pass`].
    started: Instant,
    /// Messages judged and filed (or deferred) by decision, in the order
    /// of [`DECISIONS`].
    messages: [AtomicU64; DECISIONS.len()],
    /// Send attempts by outcome, in the order of [`SendOutcome::ALL`].
    sends: [AtomicU64; 4],
    /// Failed IMAP connections or passes: transient, fatal.
    imap_errors: [AtomicU64; 2],
    /// Milliseconds from `started` to the end of the last complete pass,
    /// plus one; 0 before the first.
    last_pass: AtomicU64,
    /// Deferred messages in the watched mailbox at the end of the last
    /// complete pass (those deferred again and those waiting for their
    /// retry time).
    deferred_waiting: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            started: Instant::now(),
            messages: Default::default(),
            sends: Default::default(),
            imap_errors: Default::default(),
            last_pass: AtomicU64::new(0),
            deferred_waiting: AtomicU64::new(0),
        }
    }

    /// One message judged, by the decision its `message` log line names;
    /// counted when filed now or deferred, not when found filed before.
    pub fn message(&self, decision: Decision) {
        if let Some(i) = DECISIONS.iter().position(|d| *d == decision) {
            self.messages[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One send attempt finished.
    pub fn send(&self, outcome: SendOutcome) {
        // The variants are declared in the order of `SendOutcome::ALL`.
        self.sends[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// [`Metrics::send`] as the outgoing queue is given it.
    pub fn on_send(self: &Arc<Self>) -> OnSend {
        let metrics = self.clone();
        Arc::new(move |outcome| metrics.send(outcome))
    }

    /// One failed IMAP connection or pass.
    pub fn imap_error(&self, transient: bool) {
        self.imap_errors[usize::from(!transient)].fetch_add(1, Ordering::Relaxed);
    }

    /// A pass over the whole mailbox completed, leaving `deferred`
    /// deferred messages in it.
    pub fn pass_completed(&self, deferred: u32) {
        self.deferred_waiting
            .store(u64::from(deferred), Ordering::Relaxed);
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_pass.store(ms + 1, Ordering::Relaxed);
    }

    /// Seconds since the last complete pass, `None` before the first.
    fn since_last_pass(&self) -> Option<f64> {
        let at = self.last_pass.load(Ordering::Relaxed).checked_sub(1)?;
        let now = self.started.elapsed().as_secs_f64();
        Some((now - at as f64 / 1000.0).max(0.0))
    }
}

/// The case log's figures, read at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFigures {
    /// Cases not closed.
    pub open_cases: i64,
    /// Outgoing rows `pending` or `sending`.
    pub outbox_depth: i64,
    /// Deadlines of unanswered cases due within [`DUE_WITHIN_DAYS`] days,
    /// and past.
    pub deadlines: DeadlineCounts,
    /// Verdicts in the whole log, by decision.
    pub verdicts: Vec<(Decision, i64)>,
}

impl LogFigures {
    /// Reads the figures in one read transaction, so they agree with each
    /// other. `today` is the local day at `now`, as the daily digest
    /// counts deadlines.
    pub fn read(
        store: &mut Store,
        now: OffsetDateTime,
        today: time::Date,
    ) -> anyhow::Result<LogFigures> {
        let within = time::Duration::days(DUE_WITHIN_DAYS);
        let (today, last_day) = (day(today), day(today + within));
        let (now, until) = (stamp(now), stamp(now + within));
        let snapshot = store.snapshot()?;
        let ops = snapshot.ops();
        Ok(LogFigures {
            open_cases: ops.open_case_count()?,
            outbox_depth: ops.outbox_depth()?,
            deadlines: ops.deadline_counts(&DeadlineWindow {
                today: &today,
                last_day: &last_day,
                now: &now,
                until: &until,
            })?,
            // A word that is not a decision (only a hand-edited log has
            // one) is left out: `audit verify` is where it shows.
            verdicts: ops
                .verdict_counts()?
                .into_iter()
                .filter_map(|(d, n)| Some((d.parse().ok()?, n)))
                .collect(),
        })
    }
}

/// Reads the case log's figures for the endpoint, through a read-only
/// connection of its own.
#[derive(Clone)]
pub struct FigureReader {
    store: SharedStore,
    clock: Clock,
    /// Whether the last read failed, so a failure is logged once per
    /// change of state rather than at every scrape.
    failing: Arc<AtomicBool>,
}

impl FigureReader {
    /// Opens `path` (which must exist and be current) read-only.
    pub fn open(path: &std::path::Path, clock: Clock) -> anyhow::Result<FigureReader> {
        Ok(FigureReader {
            store: SharedStore::new(Store::open_read_only(path)?),
            clock,
            failing: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The figures now, or `None` (logged) when they cannot be read in
    /// time.
    pub(crate) async fn figures(&self) -> Option<LogFigures> {
        let clock = self.clock;
        let read = self.store.spawn(move |store| {
            let now = clock.now();
            let today = clock::local(now)?.date;
            LogFigures::read(store, now, today)
        });
        let result = match tokio::time::timeout(LOG_READ_TIMEOUT, read).await {
            Ok(Ok(Ok(figures))) => Ok(figures),
            Ok(Ok(Err(e))) => Err(format!("{e:#}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} s", LOG_READ_TIMEOUT.as_secs())),
        };
        match result {
            Ok(figures) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("metrics: the case log can be read again");
                }
                Some(figures)
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "metrics: cannot read the case log; its figures are left out");
                }
                None
            }
        }
    }
}

// ---- The exposition ---------------------------------------------------------

/// Every metric family: name after the `legal_intake_` prefix, type, help.
const FAMILIES: &[(&str, &str, &str)] = &[
    ("up", "gauge", "1 while the daemon answers scrapes."),
    (
        "build_info",
        "gauge",
        "The running version, as a label; always 1.",
    ),
    (
        "messages_total",
        "counter",
        "Messages judged and filed since the daemon started, by decision (defer: left in the mailbox to be judged again).",
    ),
    (
        "replies_total",
        "counter",
        "Attempts to send a queued reply, notice or digest since the daemon started, by outcome (retry: not accepted, tried again later; unknown: a person decides).",
    ),
    (
        "imap_errors_total",
        "counter",
        "Failed IMAP connections or passes since the daemon started (fatal: an operator must act; a case log failure that ends a pass is transient).",
    ),
    (
        "seconds_since_last_pass",
        "gauge",
        "Seconds since the last complete pass over the mailbox; absent before the first.",
    ),
    (
        "deferred_messages",
        "gauge",
        "Deferred messages in the watched mailbox at the end of the last complete pass; absent before the first.",
    ),
    (
        "case_log_up",
        "gauge",
        "1 when this scrape read the case log's figures; 0 when they could not be read and are left out.",
    ),
    (
        "case_log_verdicts",
        "gauge",
        "Verdicts in the case log, by decision, whoever filed them.",
    ),
    (
        "outbox_queue_depth",
        "gauge",
        "Replies, notices and digests queued and not yet settled (pending or sending).",
    ),
    ("open_cases", "gauge", "Cases whose status is not closed."),
    (
        "deadlines_due_within_7_days",
        "gauge",
        "Deadlines of cases neither closed nor responded that fall from today to 7 days ahead.",
    ),
    (
        "deadlines_overdue",
        "gauge",
        "Deadlines of cases neither closed nor responded that have passed.",
    ),
];

/// Writes samples, each family's HELP and TYPE lines before its first.
#[derive(Default)]
struct Exposition {
    out: String,
    family: &'static str,
}

impl Exposition {
    fn sample(&mut self, name: &'static str, labels: &str, value: impl std::fmt::Display) {
        use std::fmt::Write;
        if self.family != name {
            self.family = name;
            if let Some((_, kind, help)) = FAMILIES.iter().find(|f| f.0 == name) {
                let _ = write!(
                    self.out,
                    "# HELP legal_intake_{name} {help}\n# TYPE legal_intake_{name} {kind}\n"
                );
            }
        }
        let _ = writeln!(self.out, "legal_intake_{name}{labels} {value}");
    }

    /// One sample per label value.
    fn by<'a, V: std::fmt::Display>(
        &mut self,
        name: &'static str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, V)>,
    ) {
        for (v, n) in values {
            self.sample(name, &format!("{{{label}=\"{v}\"}}"), n);
        }
    }
}

/// The text exposition of the counters and, when they could be read, the
/// case log's figures.
pub fn render(m: &Metrics, log: Option<&LogFigures>) -> String {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut e = Exposition::default();
    e.sample("up", "", 1);
    e.by("build_info", "version", [(env!("CARGO_PKG_VERSION"), 1)]);
    let decisions = DECISIONS.map(Decision::as_str);
    e.by(
        "messages_total",
        "decision",
        decisions.iter().copied().zip(m.messages.iter().map(load)),
    );
    e.by(
        "replies_total",
        "outcome",
        SendOutcome::ALL
            .map(SendOutcome::as_str)
            .into_iter()
            .zip(m.sends.iter().map(load)),
    );
    e.by(
        "imap_errors_total",
        "kind",
        ["transient", "fatal"]
            .into_iter()
            .zip(m.imap_errors.iter().map(load)),
    );
    if let Some(s) = m.since_last_pass() {
        e.sample("seconds_since_last_pass", "", format!("{s:.3}"));
        e.sample("deferred_messages", "", load(&m.deferred_waiting));
    }
    e.sample("case_log_up", "", u8::from(log.is_some()));
    if let Some(log) = log {
        // Every decision a verdict can hold, 0 when the log has none.
        let verdicts = DECISIONS
            .into_iter()
            .filter(|d| *d != Decision::Defer)
            .map(|d| {
                let n = log
                    .verdicts
                    .iter()
                    .find(|(v, _)| *v == d)
                    .map_or(0, |v| v.1);
                (d.as_str(), n)
            });
        e.by("case_log_verdicts", "decision", verdicts);
        e.sample("outbox_queue_depth", "", log.outbox_depth);
        e.sample("open_cases", "", log.open_cases);
        e.sample("deadlines_due_within_7_days", "", log.deadlines.due_soon);
        e.sample("deadlines_overdue", "", log.deadlines.overdue);
    }
    e.out
}

#[cfg(test)]
mod tests {
    use super::*;
    fn well_formed(text: &str) {
        let mut current: Option<String> = None;
        let mut typed = false;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(name.starts_with("legal_intake_"), "{line}");
                current = Some(name.to_string());
                typed = false;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(Some(name), current.as_deref(), "{line}");
                assert!(["counter", "gauge"].contains(&kind), "{line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
                typed = true;
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(Some(name), current.as_deref(), "{line}");
                assert!(typed, "{line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
    }

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .map(str::to_string)
        })
    }

    #[test]
    fn counters_and_figures_render_as_the_text_format() {
        let m = Metrics::new();
        let before = render(&m, None);
        well_formed(&before);
        assert_eq!(value(&before, "legal_intake_up").as_deref(), Some("1"));
        assert_eq!(
            value(
                &before,
                "legal_intake_messages_total{decision=\"acknowledge\"}"
            )
            .as_deref(),
            Some("0")
        );
        assert_eq!(
            value(&before, "legal_intake_case_log_up").as_deref(),
            Some("0")
        );
        assert_eq!(value(&before, "legal_intake_seconds_since_last_pass"), None);
        assert_eq!(value(&before, "legal_intake_deferred_messages"), None);
        assert_eq!(value(&before, "legal_intake_open_cases"), None);

        m.message(Decision::Acknowledge);
        m.message(Decision::Quarantine);
        m.message(Decision::Quarantine);
        m.message(Decision::Defer);
        m.send(SendOutcome::from_status("pending"));
        m.send(SendOutcome::from_status("sent"));
        m.send(SendOutcome::from_status("unknown"));
        m.imap_error(true);
        m.imap_error(false);
        m.imap_error(false);
        m.pass_completed(3);
        let log = LogFigures {
            open_cases: 5,
            outbox_depth: 2,
            deadlines: DeadlineCounts {
                due_soon: 1,
                overdue: 4,
            },
            verdicts: vec![
                (Decision::Acknowledge, 7),
                (Decision::Quarantine, 2),
                (Decision::Internal, 1),
            ],
        };
        let text = render(&m, Some(&log));
        well_formed(&text);
        let build = format!(
            "legal_intake_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        for (series, expected) in [
            (build.as_str(), "1"),
            ("legal_intake_messages_total{decision=\"acknowledge\"}", "1"),
            ("legal_intake_messages_total{decision=\"reject\"}", "0"),
            ("legal_intake_messages_total{decision=\"quarantine\"}", "2"),
            ("legal_intake_messages_total{decision=\"defer\"}", "1"),
            ("legal_intake_replies_total{outcome=\"sent\"}", "1"),
            ("legal_intake_replies_total{outcome=\"retry\"}", "1"),
            ("legal_intake_replies_total{outcome=\"failed\"}", "0"),
            ("legal_intake_replies_total{outcome=\"unknown\"}", "1"),
            ("legal_intake_imap_errors_total{kind=\"transient\"}", "1"),
            ("legal_intake_imap_errors_total{kind=\"fatal\"}", "2"),
            ("legal_intake_deferred_messages", "3"),
            ("legal_intake_case_log_up", "1"),
            (
                "legal_intake_case_log_verdicts{decision=\"acknowledge\"}",
                "7",
            ),
            ("legal_intake_case_log_verdicts{decision=\"reject\"}", "0"),
            (
                "legal_intake_case_log_verdicts{decision=\"quarantine\"}",
                "2",
            ),
            // Internal notes hold verdicts too, and are counted.
            ("legal_intake_case_log_verdicts{decision=\"internal\"}", "1"),
            ("legal_intake_outbox_queue_depth", "2"),
            ("legal_intake_open_cases", "5"),
            ("legal_intake_deadlines_due_within_7_days", "1"),
            ("legal_intake_deadlines_overdue", "4"),
        ] {
            assert_eq!(
                value(&text, series).as_deref(),
                Some(expected),
                "{series}\n{text}"
            );
        }
        let since: f64 = value(&text, "legal_intake_seconds_since_last_pass")
            .unwrap()
            .parse()
            .unwrap();
        assert!((0.0..5.0).contains(&since), "{since}");
        assert!(text.ends_with('\n'));
    }
}
