//! The daemon loop: `run` and `run --once`.
//!
//! ```text
//! connect ─▶ pass ─▶ (once: exit) ─▶ IDLE / poll ─▶ pass ─▶ …
//!    ▲                                   │ error
//!    └──────── backoff with jitter ◀─────┘
//! ```
//!
//! A pass fetches every message in the watched mailbox (`BODY.PEEK[]`, in
//! small batches), judges the ones not yet filed, files each batch in one
//! transaction, and only then moves the batch's messages out: filed ones
//! to `processed_mailbox` or `quarantine_mailbox`, deferred ones nowhere.
//! Messages are recognised by the SHA-256 of their bytes, not by UID, so a
//! crash between commit and move, a redelivered copy or a UIDVALIDITY
//! change only ever leads to a move, never to a second filing.
//!
//! Replies and the legal team's notices are sent by a task of its own
//! (`outbox::worker`, with its own connection to the case log), woken
//! after every pass and every minute for retries, so neither a slow SMTP
//! server nor a slow IMAP server holds up the other; the same task queues
//! the daily digest when its local hour has come. `run --once` queues
//! today's digest too if its hour has passed and it is missing, then
//! makes one attempt at every queued row, due or not, after its pass (and
//! even when the pass could not run).
//!
//! Shutdown (SIGTERM, SIGINT) is a cancellation token that is looked at
//! between batches and while waiting, never in the middle of filing: the
//! batch in hand is filed and moved, the reply in hand is sent and
//! recorded, then the daemon exits 0. SIGHUP re-reads the configuration
//! and keeps the old one when the new one is invalid.
//!
//! With `[metrics]`, `run` (not `--once`) also serves `GET /metrics` from
//! a task of its own (`metrics::endpoint::serve`) with a read-only connection to
//! the case log; the counters are bumped here and in `outbox` where the
//! log lines are written.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::audit::sha256_hex;
use crate::clock::Clock;
use crate::config::Config;
use crate::decide::Decision;
use crate::imap::{self, Capability, IdleOutcome, ImapError, Session};
use crate::judge::Judge;
use crate::metrics::{self, FigureReader, Metrics};
use crate::outbox::{self, Mailer};
use crate::pipeline::{Filer, Filing, Prepared, log_outcome};
use crate::store::{SharedStore, Store};
use crate::triage::Triage;

/// Messages fetched, prepared, filed and moved together: at most this many
/// and [`BATCH_BYTES`] (a larger message travels alone). Large enough that
/// one commit's fsync and one MOVE are shared by many messages, small
/// enough that memory stays bounded and a shutdown waits for little.
const BATCH: usize = 256;
const BATCH_BYTES: u64 = 8 << 20;

/// IDLE is re-issued this often (RFC 2177 asks for less than 29 minutes).
const IDLE_REISSUE: Duration = Duration::from_secs(600);

/// Reconnection backoff: from 1 s doubling to 5 minutes.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Everything a pass needs that is derived from the configuration; rebuilt
/// on SIGHUP.
struct Setup {
    config: Config,
    judge: Judge,
    triage: Arc<Triage>,
    filer: Arc<Filer>,
    /// The signing key, templates and SMTP client of the replies.
    mailer: Arc<Mailer>,
}

impl Setup {
    fn new(config: Config) -> anyhow::Result<Setup> {
        Ok(Setup {
            judge: Judge::new(&config)?,
            triage: Arc::new(Triage::new(&config.triage.account_patterns)),
            filer: Arc::new(Filer::new(&config)),
            mailer: Arc::new(Mailer::new(&config)?),
            config,
        })
    }
}

/// What one pass did, for the status line and the log.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    filed: u32,
    deferred: u32,
    moved: u32,
    skipped: u32,
}

/// The daemon's state across connections.
struct Daemon {
    setup: Setup,
    config_path: PathBuf,
    store: SharedStore,
    /// A read-only connection for the "filed already?" look-ups, which
    /// then never wait for the batch being committed.
    reader: SharedStore,
    clock: Clock,
    cancel: CancellationToken,
    /// Deferred messages are retried with their own backoff, so that a
    /// burst of new mail during a DNS outage does not use up their tries.
    retry_after: HashMap<String, (Instant, u32)>,
    /// The UIDVALIDITY seen last, to log a change once.
    uid_validity: Option<u32>,
    /// The sending side: its own connection to the case log, the mailer
    /// it uses (replaced on SIGHUP), and the nudge given after each pass.
    outbox_store: SharedStore,
    mailer: tokio::sync::watch::Sender<Arc<Mailer>>,
    wake: Arc<tokio::sync::Notify>,
    /// The token of the IDLE wait in progress, which SIGHUP cancels so a
    /// reload does not wait for the next wake-up.
    idle_wake: Arc<Mutex<CancellationToken>>,
    /// The counters the metrics endpoint serves (kept, and cheap, without
    /// one).
    metrics: Arc<Metrics>,
}

/// Runs the daemon until SIGTERM/SIGINT (or, with `once`, for one pass).
/// Returns `Ok(true)` on a clean finish, `Ok(false)` when `--once` could
/// not complete its pass.
pub async fn run(
    config_path: PathBuf,
    config: Config,
    clock: Clock,
    once: bool,
) -> anyhow::Result<bool> {
    let open = |config: &Config| {
        let path = config.store.database.clone();
        let shown = path.display().to_string();
        async move {
            tokio::task::spawn_blocking(move || Store::open(&path))
                .await?
                .with_context(|| format!("cannot open the case log {shown}"))
        }
    };
    let mut store = open(&config).await?;
    store.checkpoint_in_background()?;
    let reader = {
        let path = config.store.database.clone();
        tokio::task::spawn_blocking(move || Store::open_read_only(&path))
            .await?
            .context("cannot open the case log for reading")?
    };
    let outbox_store = open(&config).await?;
    let metrics = Arc::new(Metrics::new());
    // The endpoint is bound before READY=1, so that a port already in use
    // fails the start instead of leaving a daemon nobody can scrape. The
    // log exists by now (opened above), so its read-only connection opens.
    let endpoint = match (&config.metrics, once) {
        (Some(m), false) => {
            let listener = metrics::endpoint::bind(m).await?;
            let path = config.store.database.clone();
            let log = tokio::task::spawn_blocking(move || FigureReader::open(&path, clock))
                .await?
                .context("cannot open the case log for the metrics endpoint")?;
            // Bound to loopback, only loopback `Host`s are answered
            // (DNS rebinding); a remote Prometheus uses its own names.
            Some((listener, log, !m.listen.ip().is_loopback()))
        }
        _ => None,
    };
    let cancel = CancellationToken::new();
    let idle_wake = Arc::new(Mutex::new(cancel.child_token()));
    let hup = spawn_signal_handlers(cancel.clone(), idle_wake.clone())?;
    let setup = Setup::new(config)?;
    let (mailer, mailer_rx) = tokio::sync::watch::channel(setup.mailer.clone());
    let mut daemon = Daemon {
        setup,
        config_path,
        store: SharedStore::new(store),
        reader: SharedStore::new(reader),
        clock,
        cancel: cancel.clone(),
        retry_after: HashMap::new(),
        uid_validity: None,
        outbox_store: SharedStore::new(outbox_store),
        mailer,
        wake: Arc::new(tokio::sync::Notify::new()),
        idle_wake,
        metrics: metrics.clone(),
    };
    notify(&[sd_notify::NotifyState::Ready]);
    let result = if once {
        daemon.once().await
    } else {
        let sender = tokio::spawn(outbox::worker(
            daemon.outbox_store.clone(),
            mailer_rx,
            clock,
            daemon.wake.clone(),
            cancel.clone(),
            metrics.on_send(),
        ));
        let server = endpoint.map(|(listener, log, any_host)| {
            tokio::spawn(metrics::endpoint::serve(
                listener,
                metrics.clone(),
                log,
                any_host,
                cancel.clone(),
            ))
        });
        let result = daemon.forever(hup).await;
        // The reply in hand is finished and recorded before the exit.
        cancel.cancel();
        if let Err(e) = sender.await {
            tracing::error!(error = %e, "the reply sender stopped abnormally");
        }
        if let Some(server) = server
            && let Err(e) = server.await
        {
            tracing::error!(error = %e, "the metrics endpoint stopped abnormally");
        }
        result
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    result
}

impl Daemon {
    async fn once(&mut self) -> anyhow::Result<bool> {
        let passed = self.once_pass().await;
        // Replies already queued go out even when the mailbox could not be
        // read: sending does not depend on IMAP.
        let mailer = self.setup.mailer.clone();
        if !mailer.can_send() {
            tracing::warn!("no [smtp] section: replies are queued but not sent");
        }
        // `run --once` stands in for the daemon where it runs from a
        // timer, so it queues today's digest as the daemon would — when
        // the digest hour has passed and today's is missing — after its
        // pass (the digest then includes what the pass filed) and before
        // the drain that sends it. A second run the same day finds it
        // queued and adds nothing.
        let mut ok = passed;
        if let Err(e) = outbox::queue_digest_if_due(&self.outbox_store, &mailer, self.clock).await {
            tracing::error!(error = %format!("{e:#}"), "queuing the daily digest failed");
            ok = false;
        }
        let t = outbox::drain(
            &self.outbox_store,
            &mailer,
            self.clock,
            outbox::Scope::All,
            &self.cancel,
            &self.metrics.on_send(),
        )
        .await
        .context("sending the queued replies")?;
        tracing::info!(
            sent = t.sent,
            retry = t.retry,
            failed = t.failed,
            unknown = t.unknown,
            "replies attempted"
        );
        Ok(ok)
    }

    /// The pass of `run --once`; false when it could not complete.
    async fn once_pass(&mut self) -> bool {
        let mut session = match imap::connect(&self.setup.config.imap).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot connect to the IMAP server");
                return false;
            }
        };
        let outcome = self.pass(&mut session, true).await;
        let _ = session.logout().await;
        match outcome {
            Ok(t) => {
                tracing::info!(
                    filed = t.filed,
                    deferred = t.deferred,
                    moved = t.moved,
                    "pass complete"
                );
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "the pass did not complete");
                false
            }
        }
    }

    async fn forever(&mut self, mut hup: tokio::sync::mpsc::Receiver<()>) -> anyhow::Result<bool> {
        // Failed connections in a row, for the backoff.
        let mut failures = 0;
        // The last error logged, so that a server that stays down is
        // reported once per change of state, not once per retry.
        let mut last_error: Option<String> = None;
        let watchdog = sd_notify::watchdog_enabled();
        while !self.cancel.is_cancelled() {
            self.reload_if_asked(&mut hup);
            let session = tokio::select! {
                s = imap::connect(&self.setup.config.imap) => s,
                () = self.cancel.cancelled() => break,
            };
            let mut session = match session {
                Ok(s) => {
                    if last_error.take().is_some() {
                        tracing::info!(host = %self.setup.config.imap.host, "connected to the IMAP server again");
                    }
                    s
                }
                Err(e) => {
                    self.failed(&e, &mut last_error);
                    self.sleep(retry_delay(&e, &mut failures)).await;
                    continue;
                }
            };
            match self.serve(&mut session, &mut hup, watchdog).await {
                Ok(()) => {
                    let _ = session.logout().await;
                    break;
                }
                Err(e) => {
                    self.failed(&e, &mut last_error);
                    self.sleep(retry_delay(&e, &mut failures)).await;
                }
            }
            if last_error.is_none() {
                failures = 0;
            }
        }
        Ok(true)
    }

    /// Passes and waits on one connection until it breaks or shutdown.
    async fn serve(
        &mut self,
        session: &mut Session,
        hup: &mut tokio::sync::mpsc::Receiver<()>,
        watchdog: Option<Duration>,
    ) -> Result<(), ImapError> {
        loop {
            let started = Instant::now();
            let t = self.pass(session, false).await?;
            // A pass cut short by shutdown saw only part of the mailbox.
            if !self.cancel.is_cancelled() {
                self.metrics.pass_completed(t.deferred + t.skipped);
            }
            // Whatever the pass queued is sent now, by the sender task.
            self.wake.notify_one();
            status(&format!(
                "last pass {}: {} filed, {} deferred, {} moved, {} waiting to retry ({} ms)",
                crate::clock::stamp(self.clock.now()),
                t.filed,
                t.deferred,
                t.moved,
                t.skipped,
                started.elapsed().as_millis()
            ));
            if t.filed + t.deferred + t.moved > 0 {
                tracing::info!(
                    filed = t.filed,
                    deferred = t.deferred,
                    moved = t.moved,
                    "pass complete"
                );
            }
            // Wait for news: IDLE where the server has it, else poll. The
            // wait is cut into watchdog-sized pieces so the main loop
            // itself proves it is alive.
            let total = if session.has(Capability::Idle) {
                IDLE_REISSUE
            } else {
                self.setup.config.imap.poll_interval
            };
            let deadline = Instant::now() + total;
            loop {
                notify(&[sd_notify::NotifyState::Watchdog]);
                if self.cancel.is_cancelled() {
                    return Ok(());
                }
                if self.reload_if_asked(hup) {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let piece = watchdog.map_or(left, |w| left.min(w / 3));
                // A token of its own for this wait, so that SIGHUP can end
                // it (the reload is then applied at the top of the loop)
                // without meaning shutdown.
                let wait = self.cancel.child_token();
                if let Ok(mut slot) = self.idle_wake.lock() {
                    *slot = wait.clone();
                }
                match session.idle(piece, &wait).await? {
                    IdleOutcome::NewData => break,
                    IdleOutcome::Cancelled if self.cancel.is_cancelled() => return Ok(()),
                    IdleOutcome::Cancelled | IdleOutcome::Timeout => {}
                }
                if !session.has(Capability::Idle) && Instant::now() >= deadline {
                    break;
                }
            }
        }
    }

    /// One pass over the watched mailbox.
    async fn pass(&mut self, session: &mut Session, once: bool) -> Result<Tally, ImapError> {
        let imap_cfg = self.setup.config.imap.clone();
        session.ensure_mailbox(&imap_cfg.processed_mailbox).await?;
        session.ensure_mailbox(&imap_cfg.quarantine_mailbox).await?;
        let selected = session.select(&imap_cfg.mailbox).await?;
        if self
            .uid_validity
            .is_some_and(|v| v != selected.uid_validity)
        {
            tracing::warn!(
                mailbox = %imap_cfg.mailbox,
                old = self.uid_validity,
                new = selected.uid_validity,
                "UIDVALIDITY changed: messages are matched by content, nothing is filed twice"
            );
        }
        self.uid_validity = Some(selected.uid_validity);
        let mut tally = Tally::default();
        let uids = session.uids().await?;
        let sizes = session.sizes(&uids).await?;
        // Filing is one writer on one core; preparing runs on the others,
        // and the connection is free most of the time. So while batch N is
        // committed on a blocking thread, N+1 is prepared, and the
        // connection moves N-1 out and fetches N+2; N+1's filing starts as
        // soon as N is committed and N+1 prepared. A batch moves only once it
        // is committed.
        let mut batches = batches(&sizes).into_iter();
        let mut judging = match batches.next().filter(|_| !self.cancel.is_cancelled()) {
            Some(b) => Some(self.prepare(session, &b, once, &mut tally.skipped).await?),
            None => None,
        };
        let mut in_flight: Option<InFlight> = None;
        while let Some(j) = judging.take() {
            let moves = match in_flight.take() {
                Some(f) => self.committed(f, &mut tally).await?,
                None => Moves::default(),
            };
            // The watchdog hears from every batch, so a long pass over a
            // backlog is not mistaken for a hang. After a shutdown request
            // the batches in hand are finished and no new one is fetched.
            notify(&[sd_notify::NotifyState::Watchdog]);
            let next = batches.next().filter(|_| !self.cancel.is_cancelled());
            let skipped = &mut tally.skipped;
            let hand_over = async { self.start_filing(j.finish().await) };
            let connection = async {
                let moved = move_out(session, &moves, &imap_cfg).await?;
                let judging = match next {
                    Some(b) => Some(self.prepare(session, &b, once, skipped).await?),
                    None => None,
                };
                Ok::<_, ImapError>((moved, judging))
            };
            let (filing, connection) = tokio::join!(hand_over, connection);
            match connection {
                Ok((moved, next)) => {
                    tally.moved += moved;
                    judging = next;
                    in_flight = Some(filing);
                }
                Err(e) => {
                    // The batch just handed over still commits; its
                    // messages move on the next pass, as already filed.
                    self.committed(filing, &mut tally).await?;
                    return Err(e);
                }
            }
        }
        if let Some(f) = in_flight.take() {
            let moves = self.committed(f, &mut tally).await?;
            tally.moved += move_out(session, &moves, &imap_cfg).await?;
        }
        Ok(tally)
    }

    /// Fetches a batch, finds what is filed already (one read of the case
    /// log) and starts judging the rest, concurrently.
    async fn prepare(
        &self,
        session: &mut Session,
        batch: &[u32],
        once: bool,
        skipped: &mut u32,
    ) -> Result<Preparing, ImapError> {
        let fetched = session.fetch(batch).await?;
        let started = Instant::now();
        let shas: Vec<String> = fetched.iter().map(|(_, raw)| sha256_hex(raw)).collect();
        let lookup = shas.clone();
        // A connection of its own, so this read does not wait for the
        // batch being committed: a copy of a message in that batch is
        // caught again inside the filing transaction.
        let filed = self
            .reader
            .spawn(move |s| {
                let ops = s.read();
                lookup
                    .iter()
                    .map(|sha| ops.filed(sha).map(|f| f.map(|f| f.decision)))
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .await
            .map_err(|e| store_failure(e.into()))?
            .map_err(store_failure)?;
        let mut already = Vec::new();
        let mut preparing = Vec::new();
        for (((uid, raw), sha), filed) in fetched.into_iter().zip(shas).zip(filed) {
            if let Some(decision) = filed {
                // Filed before (a crash before the move, a redelivery):
                // only the move is left to do.
                already.push((uid, decision));
                continue;
            }
            if !once
                && self
                    .retry_after
                    .get(&sha)
                    .is_some_and(|(at, _)| Instant::now() < *at)
            {
                *skipped += 1;
                continue;
            }
            let (judge, triage) = (self.setup.judge.clone(), self.setup.triage.clone());
            preparing.push((
                uid,
                tokio::spawn(async move {
                    Prepared::prepare(&judge, &triage, format!("imap:{uid}"), raw, sha).await
                }),
            ));
        }
        Ok(Preparing {
            already,
            preparing,
            started,
        })
    }

    /// Starts committing a prepared batch on a blocking thread.
    fn start_filing(&self, batch: Judged) -> InFlight {
        let Judged {
            already,
            uids,
            items,
            started,
        } = batch;
        let filer = self.setup.filer.clone();
        let clock = self.clock;
        let store = self.store.clone();
        let task =
            (!items.is_empty()).then(|| store.spawn(move |s| filer.file_batch(s, &items, clock)));
        InFlight {
            already,
            uids,
            task,
            started,
        }
    }

    /// Waits for a batch's commit and logs each message: what is to move
    /// where.
    async fn committed(&mut self, f: InFlight, tally: &mut Tally) -> Result<Moves, ImapError> {
        let mut moves = Moves::default();
        for (uid, decision) in &f.already {
            moves.add(*uid, *decision);
        }
        if let Some(task) = f.task {
            let outcomes = task
                .await
                .map_err(|e| store_failure(e.into()))?
                .map_err(store_failure)?;
            let ms = f.started.elapsed().as_secs_f64() * 1000.0;
            for (uid, outcome) in f.uids.into_iter().zip(outcomes) {
                let outcome = match outcome {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::error!(uid, error = %format!("{e:#}"), "filing a message failed; it stays in the mailbox");
                        continue;
                    }
                };
                log_outcome(Some(uid), &outcome, Some(ms));
                self.metrics.message(outcome.decision);
                match outcome.filing {
                    Filing::Deferred => {
                        tally.deferred += 1;
                        let tries = outcome.deferrals.unwrap_or(1);
                        // 1, 2, 4 … minutes, at most an hour.
                        let wait = Duration::from_secs(60 << tries.saturating_sub(1).min(6))
                            .min(Duration::from_secs(3600));
                        self.retry_after
                            .insert(outcome.sha256.clone(), (Instant::now() + wait, tries));
                    }
                    Filing::New | Filing::Duplicate => {
                        if matches!(outcome.filing, Filing::New) {
                            tally.filed += 1;
                        }
                        self.retry_after.remove(&outcome.sha256);
                        moves.add(uid, outcome.decision);
                    }
                }
            }
        }
        Ok(moves)
    }

    fn failed(&self, e: &ImapError, last: &mut Option<String>) {
        // Counted every time, logged once per change of state.
        self.metrics.imap_error(e.is_transient());
        let text = e.to_string();
        if last.as_deref() != Some(text.as_str()) {
            if e.is_transient() {
                tracing::warn!(host = %self.setup.config.imap.host, error = %text, "IMAP connection failed; retrying with backoff");
            } else {
                tracing::error!(host = %self.setup.config.imap.host, error = %text, "IMAP server refused us; an operator must act; retrying slowly");
            }
            status(&format!("IMAP: {text}"));
            *last = Some(text);
        }
    }

    async fn sleep(&self, d: Duration) {
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = self.cancel.cancelled() => {}
        }
    }

    /// Applies a pending SIGHUP: re-reads and validates the configuration,
    /// keeping the old one when the new one is invalid. True when the
    /// configuration changed.
    fn reload_if_asked(&mut self, hup: &mut tokio::sync::mpsc::Receiver<()>) -> bool {
        if hup.try_recv().is_err() {
            return false;
        }
        while hup.try_recv().is_ok() {}
        notify(&[sd_notify::NotifyState::Reloading, monotonic_usec()]);
        let result = Config::load(&self.config_path)
            .map_err(anyhow::Error::from)
            .and_then(|c| {
                if c.store.database != self.setup.config.store.database {
                    anyhow::bail!("store.database cannot change without a restart");
                }
                Setup::new(c)
            });
        let changed = match result {
            Ok(setup) => {
                if setup.config.metrics != self.setup.config.metrics {
                    tracing::warn!(
                        "the [metrics] section changed; the endpoint keeps its old setting until a restart"
                    );
                }
                self.mailer.send_replace(setup.mailer.clone());
                self.setup = setup;
                tracing::info!(config = %self.config_path.display(), "configuration reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "new configuration refused; keeping the old one");
                false
            }
        };
        notify(&[sd_notify::NotifyState::Ready]);
        changed
    }
}

/// A fetched batch whose messages are being prepared, each by a task.
struct Preparing {
    already: Vec<(u32, Decision)>,
    preparing: Vec<(u32, tokio::task::JoinHandle<Prepared>)>,
    started: Instant,
}

impl Preparing {
    async fn finish(self) -> Judged {
        let mut uids = Vec::new();
        let mut items = Vec::new();
        for (uid, task) in self.preparing {
            match task.await {
                Ok(p) => {
                    uids.push(uid);
                    items.push(p);
                }
                Err(e) => tracing::error!(uid, error = %e, "examining a message failed"),
            }
        }
        Judged {
            already: self.already,
            uids,
            items,
            started: self.started,
        }
    }
}

/// A fetched batch, prepared, not yet filed.
struct Judged {
    /// Messages whose bytes are filed already, with their decision.
    already: Vec<(u32, Decision)>,
    /// The UIDs of `items`, in the same order.
    uids: Vec<u32>,
    items: Vec<Prepared>,
    /// When the batch was fetched, for the log's `ms=`.
    started: Instant,
}

/// A batch whose commit is under way on a blocking thread.
struct InFlight {
    already: Vec<(u32, Decision)>,
    uids: Vec<u32>,
    /// `None` when there was nothing to file.
    task: Option<
        tokio::task::JoinHandle<anyhow::Result<Vec<anyhow::Result<crate::pipeline::Outcome>>>>,
    >,
    started: Instant,
}

/// Cuts the mailbox (UIDs with their sizes, ascending) into batches of at
/// most [`BATCH`] messages and [`BATCH_BYTES`] bytes.
fn batches(sizes: &[(u32, u32)]) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    let mut bytes = 0u64;
    for &(uid, size) in sizes {
        let fits = out
            .last()
            .is_some_and(|b| b.len() < BATCH && bytes + u64::from(size) <= BATCH_BYTES);
        if !fits {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += u64::from(size);
        if let Some(b) = out.last_mut() {
            b.push(uid);
        }
    }
    out
}

/// The messages of a committed batch, by destination.
#[derive(Debug, Default)]
struct Moves {
    processed: Vec<u32>,
    quarantine: Vec<u32>,
}

impl Moves {
    fn add(&mut self, uid: u32, decision: Decision) {
        if decision == Decision::Quarantine {
            self.quarantine.push(uid);
        } else {
            self.processed.push(uid);
        }
    }
}

/// Moves a committed batch out: one move per destination folder. Returns
/// how many messages left the mailbox.
async fn move_out(
    session: &mut Session,
    moves: &Moves,
    imap_cfg: &crate::config::Imap,
) -> Result<u32, ImapError> {
    let mut moved = 0;
    for (uids, to) in [
        (&moves.processed, imap_cfg.processed_mailbox.as_str()),
        (&moves.quarantine, imap_cfg.quarantine_mailbox.as_str()),
    ] {
        if uids.is_empty() {
            continue;
        }
        match session.move_uids(uids, to).await? {
            imap::MoveOutcome::FlaggedInPlace => tracing::warn!(
                messages = uids.len(),
                to,
                "the server has neither MOVE nor UIDPLUS: messages were copied and flagged, not removed"
            ),
            _ => moved += uids.len() as u32,
        }
    }
    Ok(moved)
}

/// A case log failure ends the pass like a broken connection: nothing is
/// moved, and the next pass starts again from the mailbox.
fn store_failure(e: anyhow::Error) -> ImapError {
    ImapError::Transient(format!("case log: {e:#}"))
}

/// Exponential backoff with jitter after one more failure; fatal errors
/// wait the longest.
fn retry_delay(e: &ImapError, failures: &mut u32) -> Duration {
    *failures = failures.saturating_add(1);
    let base = if e.is_transient() {
        crate::clock::backoff(*failures, BACKOFF_MIN, BACKOFF_MAX)
    } else {
        BACKOFF_MAX
    };
    // Up to a quarter more, from the clock's nanoseconds: enough to keep
    // several instances from reconnecting in step.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

/// SIGTERM and SIGINT cancel; SIGHUP is queued for the main loop.
fn spawn_signal_handlers(
    cancel: CancellationToken,
    idle_wake: Arc<Mutex<CancellationToken>>,
) -> anyhow::Result<tokio::sync::mpsc::Receiver<()>> {
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let token = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing the batch in hand, then exiting"),
            _ = int.recv() => tracing::info!("SIGINT: finishing the batch in hand, then exiting"),
        }
        token.cancel();
    });
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = tx.try_send(());
            // Wake a waiting IDLE so the reload happens promptly.
            if let Ok(slot) = idle_wake.lock() {
                slot.cancel();
            }
        }
    });
    Ok(rx)
}

fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

fn status(text: &str) {
    notify(&[sd_notify::NotifyState::Status(text)]);
}

/// systemd 253+ wants MONOTONIC_USEC with RELOADING=1.
fn monotonic_usec() -> sd_notify::NotifyState<'static> {
    sd_notify::NotifyState::monotonic_usec_now().unwrap_or(sd_notify::NotifyState::Ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_by_count_and_bytes() {
        let small: Vec<(u32, u32)> = (1..=600).map(|u| (u, 20_000)).collect();
        let b = batches(&small);
        assert_eq!(
            b.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![256, 256, 88]
        );
        assert_eq!(
            b.concat(),
            (1..=600).collect::<Vec<u32>>(),
            "every UID once, in order"
        );

        let mixed = [
            (1, 1_000),
            (2, 40 << 20),
            (3, 1_000),
            (4, 5 << 20),
            (5, 5 << 20),
        ];
        assert_eq!(batches(&mixed), vec![vec![1], vec![2], vec![3, 4], vec![5]]);
        assert!(batches(&[]).is_empty());
    }
}
