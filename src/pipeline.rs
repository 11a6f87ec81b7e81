//! The one place that orders side effects: a judged message is filed.
//!
//! [`Prepared::prepare`] does everything that needs no database — parse,
//! authenticate (DNS), triage — so no network wait ever happens inside a
//! write transaction. [`Filer::file`] then runs, inside one `BEGIN
//! IMMEDIATE` transaction, the fixed sequence:
//!
//! 1. bytes already filed? → recognised, filed nowhere twice;
//! 2. history from the log (earlier deferrals of these bytes, replies to
//!    this sender in 24 h) → a provisional decision (pure), which fixes
//!    the decision, the agency and the kind of reply; `defer` stops here
//!    with the deferral counted;
//! 3. threading, for a message authenticated for the case's own agency
//!    only: the case named by the message's own Message-ID, its
//!    `In-Reply-To`/`References` (our replies' Message-IDs included), or
//!    an `[LR-YYYY-NNNN]` in its subject; anyone else opens a case;
//! 4. the last piece of history (a reply of the same kind for that case
//!    within 7 days) → the final decision (pure);
//! 5. the case opened (next gap-free reference of the year) or updated —
//!    first, because the message row refers to it. A message joining a
//!    case never changes its status (people do); an authenticated one may
//!    add what triage found (emergency flag, a kind, a gag order);
//! 6. the message with its bytes and triage findings, and the verdict with
//!    its evidence as at receipt;
//! 7. the reply the decision calls for, queued;
//! 8. the audit events for all of the above;
//! 9. when `[notify]` is configured, a notice to each `notify.to` address,
//!    queued with its `notice_queued` event and threaded to the case's
//!    first notice to the same address. It carries the chain head after
//!    step 8 (the hash of this filing's last event), so the mail the team
//!    holds proves later, with `audit verify --head`, that this filing is
//!    still in the chain. (A notice cannot carry the hash of the event
//!    that records it: that hash depends on the notice.)
//!
//! and the caller commits. A duplicate or a deferral stops before any of
//! this, so it queues no reply and no notice; a notice is committed with
//! its filing or not at all. [`Filer::file_batch`] files several messages in
//! one transaction (one fsync for all) and returns only after the commit:
//! nothing is acknowledged before it is durable.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::audit::{self, SYSTEM_ACTOR, kind, sha256_hex};
use crate::case::{Case, Field, Reference, ReplyKind, Status, UserNotice, references_in};
use crate::clock::{Clock, stamp};
use crate::config::Config;
use crate::decide::{self, Decision, History, Policy, Verdict};
use crate::domain::normalize_domain;
use crate::evidence::Evidence;
use crate::judge::Judge;
use crate::message::Inbound;
use crate::msgid;
use crate::notice::{NoticeEvent, NoticeFacts};
use crate::store::{NewCase, NewMessage, NewNotice, NewReply, NewVerdict, Ops, Store};
use crate::triage::{Findings, RequestKind, Triage};

/// A message with all the work done that needs no database.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Where the message came from (`ingest:request.eml`, an IMAP UID).
    pub source: String,
    pub raw: Vec<u8>,
    pub inbound: Inbound,
    pub evidence: Evidence,
    pub findings: Findings,
}

impl Prepared {
    /// Prepares a message for filing: examines it (parse, authenticate) and
    /// triages it; `sha256` is the hex
    /// SHA-256 of `raw` (`audit::sha256_hex`), which the caller has
    /// already needed.
    pub async fn prepare(
        judge: &Judge,
        triage: &Triage,
        source: String,
        raw: Vec<u8>,
        sha256: String,
    ) -> Prepared {
        let (inbound, evidence) = judge.examine(&raw, sha256).await;
        // A message too large to judge is not read for triage either.
        let findings = if inbound.anomalies.is_empty() {
            triage.read(&raw, inbound.subject.as_deref())
        } else {
            triage.findings(inbound.subject.as_deref().unwrap_or(""), "", &[])
        };
        Prepared {
            source,
            raw,
            inbound,
            evidence,
            findings,
        }
    }
}

/// What happened to one message.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Filing {
    /// Filed now.
    New,
    /// These bytes were filed before; nothing was written.
    Duplicate,
    /// Not filed: to be judged again later.
    Deferred,
}

impl Filing {
    pub fn as_str(&self) -> &'static str {
        match self {
            Filing::New => "new",
            Filing::Duplicate => "duplicate",
            Filing::Deferred => "deferred",
        }
    }
}

/// The result of filing one message.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub sha256: String,
    /// The case the message is filed on (`None` when deferred).
    pub case: Option<Reference>,
    pub decision: Decision,
    pub filing: Filing,
    /// Whether filing it opened the case.
    pub new_case: bool,
    /// The reply queued for it.
    pub reply: Option<ReplyKind>,
    pub reason: String,
    /// The From address as the message gave it, when well formed.
    pub from: Option<String>,
    /// The message's own Message-ID, so that a message without a usable
    /// From can still be found from its log line.
    pub msgid: Option<String>,
    /// How many times these bytes have now been deferred.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferrals: Option<u32>,
}

/// Files judged messages into the case log.
#[derive(Debug, Clone)]
pub struct Filer {
    pub policy: Policy,
    /// The domain of our replies' and notices' Message-IDs (that of
    /// `smtp.from`).
    pub reply_domain: String,
    /// The `notify.to` addresses, each once; empty without `[notify]`.
    pub notify_to: Vec<String>,
}

impl Filer {
    pub fn new(config: &Config) -> Filer {
        Filer {
            policy: Policy::from_config(config),
            reply_domain: msgid::domain(config),
            notify_to: config.notify_recipients(),
        }
    }

    /// Files several messages in one transaction (one fsync for all).
    /// Returns after the commit; an error means nothing of the batch was
    /// filed. Should one message fail, the batch is rolled back and each
    /// message filed in a transaction of its own, so the failure costs only
    /// that message (savepoints per message would cost every batch a tenth
    /// of its time for a case that does not happen in practice). The
    /// messages of one transaction are filed at one instant, its start.
    pub fn file_batch(
        &self,
        store: &mut Store,
        items: &[Prepared],
        clock: Clock,
    ) -> anyhow::Result<Vec<anyhow::Result<Outcome>>> {
        let tx = store.begin()?;
        let mut state = TxState::new(clock.now());
        let mut outcomes = Vec::with_capacity(items.len());
        for p in items {
            match self.file(&tx.ops(), p, &mut state) {
                Ok(o) => outcomes.push(o),
                Err(_) => break,
            }
        }
        if outcomes.len() == items.len() {
            tx.commit()?;
            return Ok(outcomes.into_iter().map(Ok).collect());
        }
        drop(tx);
        Ok(items
            .iter()
            .map(|p| {
                let tx = store.begin()?;
                let o = self.file(&tx.ops(), p, &mut TxState::new(clock.now()))?;
                tx.commit()?;
                Ok(o)
            })
            .collect())
    }

    /// Files one message: the order of side effects (module docs). Runs
    /// inside the caller's write transaction.
    fn file(&self, ops: &Ops<'_>, p: &Prepared, state: &mut TxState) -> anyhow::Result<Outcome> {
        let now = state.now;
        let inbound = &p.inbound;
        let at = stamp(now);
        let sender = inbound.from_address();

        // 1. The same bytes are one message, however often they arrive.
        if let Some(f) = ops.filed(&inbound.sha256)? {
            return Ok(Outcome {
                sha256: inbound.sha256.clone(),
                case: Some(f.case),
                decision: f.decision,
                filing: Filing::Duplicate,
                new_case: false,
                reply: None,
                reason: format!("already filed as message {}", f.message_id),
                from: sender.map(str::to_string),
                msgid: inbound.message_id.clone(),
                deferrals: None,
            });
        }

        // 2. History that needs no case, and the provisional decision.
        let mut history = History {
            previous_defers: ops.deferrals(&inbound.sha256)?,
            replies_to_sender_today: match sender {
                Some(s) => state.get(ops, s, self.policy.replies_per_sender_per_day)?,
                None => 0,
            },
            replied_to_case_recently: false,
        };
        let provisional = decide::decide(inbound, &p.evidence, &self.policy, &history);
        if provisional.decision == Decision::Defer {
            let tries = ops.record_deferral(&inbound.sha256, &at, &provisional.reason)?;
            return Ok(Outcome {
                sha256: inbound.sha256.clone(),
                case: None,
                decision: Decision::Defer,
                filing: Filing::Deferred,
                new_case: false,
                reply: None,
                reason: provisional.reason,
                from: sender.map(str::to_string),
                msgid: inbound.message_id.clone(),
                deferrals: Some(tries),
            });
        }

        // 3. Threading.
        let thread = self.thread(ops, inbound, &provisional)?;

        // 4. The rest of the history, and the decision.
        let reply_kind = ReplyKind::for_decision(provisional.decision);
        if let (Some((case, _)), Some(kind)) = (&thread, reply_kind) {
            history.replied_to_case_recently =
                ops.replied_to_case_since(case.id, kind, &stamp(now - time::Duration::days(7)))?;
        }
        let verdict = decide::decide(inbound, &p.evidence, &self.policy, &history);
        // Only a sender's own authenticated request may change a case; an
        // internal note never does.
        let authenticated = matches!(verdict.decision, Decision::Acknowledge | Decision::Reject);
        let mut events: Vec<(&'static str, Value)> = Vec::new();

        // 5. The case.
        let (case, joined) = match thread {
            Some((case, joined)) => {
                ops.touch_case(case.id, &at)?;
                (case, Some(joined))
            }
            None => {
                let reference = ops.next_reference(now.year())?;
                let id = ops.insert_case(&NewCase {
                    reference,
                    status: Status::opening(verdict.decision),
                    agency: verdict.agency.as_deref(),
                    requester: sender,
                    authenticated: authenticated || verdict.decision == Decision::Internal,
                    kind: p.findings.kind,
                    emergency: p.findings.emergency,
                    user_notice: if p.findings.gag_order.is_some() {
                        UserNotice::ProhibitedUnconfirmed
                    } else {
                        UserNotice::Unknown
                    },
                    now: &at,
                })?;
                let case = ops.case_by_id(id)?.ok_or_else(|| {
                    anyhow::anyhow!("case {reference} vanished while being opened")
                })?;
                events.push((
                    kind::CASE_OPENED,
                    json!({ "reference": reference, "fields": case.audited() }),
                ));
                (case, None)
            }
        };

        // 6. The message and its verdict.
        let findings_json = serde_json::to_string(&p.findings)?;
        let evidence_json = serde_json::to_string(&p.evidence)?;
        let message_id = ops.insert_message(&NewMessage {
            case_id: case.id,
            sha256: &inbound.sha256,
            raw: &p.raw,
            msgid: inbound.message_id.as_deref(),
            subject: inbound.subject.as_deref(),
            sender,
            source: &p.source,
            received_at: &at,
            findings: &findings_json,
        })?;
        events.push((
            kind::MESSAGE_FILED,
            json!({
                "message": message_id,
                "sha256": inbound.sha256,
                "size": p.raw.len(),
                "msgid": inbound.message_id,
                "subject": inbound.subject,
                "from": sender,
                "source": p.source,
                "joined": joined,
                "findings_sha256": sha256_hex(findings_json.as_bytes()),
            }),
        ));
        ops.insert_verdict(&NewVerdict {
            message_id,
            decided_at: &at,
            decision: verdict.decision.as_str(),
            reason: &verdict.reason,
            agency: verdict.agency.as_deref(),
            reply: verdict.reply,
            reply_suppressed: verdict.reply_suppressed.as_deref(),
            evidence: &evidence_json,
        })?;
        events.push((
            kind::VERDICT,
            verdict_event(message_id, &verdict, &p.evidence, &evidence_json),
        ));

        // A later authenticated message can add what the first one did not
        // say; an unauthenticated one never changes a case.
        if joined.is_some() && authenticated {
            for (field, to) in triage_changes(&case, &p.findings) {
                ops.set_field(case.id, field, &to, &at)?;
                events.push((
                    kind::FIELD_CHANGED,
                    json!({
                        "field": field.as_str(),
                        "from": case.value(field),
                        "to": to,
                        "note": format!("read in message {message_id}"),
                    }),
                ));
            }
        }

        // 7. The reply.
        let mut queued = None;
        if let (true, Some(kind), Some(recipient)) = (verdict.reply, reply_kind, sender) {
            let msgid = self.reply_msgid(now, case.reference, &inbound.sha256, kind);
            let outbox = ops.queue_reply(&NewReply {
                case_id: case.id,
                message_id,
                kind,
                recipient,
                msgid: &msgid,
                in_reply_to: inbound.message_id.as_deref(),
                subject: inbound.subject.as_deref(),
                now: &at,
            })?;
            events.push((
                kind::REPLY_QUEUED,
                json!({
                    "outbox": outbox,
                    "message": message_id,
                    "kind": kind,
                    "recipient": recipient,
                    "msgid": msgid,
                    "in_reply_to": inbound.message_id,
                }),
            ));
            state.queued(recipient);
            queued = Some(kind);
        }

        // 8. The audit events.
        let mut head = None;
        for (kind, data) in &events {
            head = Some(audit::append(ops, &at, SYSTEM_ACTOR, Some(case.id), kind, data)?.hash);
        }

        // 9. The legal team's notices.
        if !self.notify_to.is_empty() {
            let head = head.ok_or_else(|| anyhow::anyhow!("a filing without audit events"))?;
            // The case as this filing left it (triage may have changed it).
            let now_case = ops
                .case_by_id(case.id)?
                .ok_or_else(|| anyhow::anyhow!("case {} vanished while filing", case.reference))?;
            let facts = NoticeFacts {
                event: if joined.is_some() {
                    NoticeEvent::MessageAdded
                } else {
                    NoticeEvent::NewCase
                },
                reference: now_case.reference.to_string(),
                status: now_case.status.as_str().to_string(),
                agency: now_case.agency.clone(),
                decision: verdict.decision,
                reason: verdict.reason.clone(),
                kind: now_case.kind.as_str().to_string(),
                emergency: now_case.emergency,
                deadline: now_case.deadline.clone(),
                from: sender.map(str::to_string),
                authenticated,
                subject: inbound.subject.clone(),
                reply: queued.map(|k| k.as_str().to_string()),
                reply_suppressed: verdict.reply_suppressed.clone(),
                message_number: ops.message_count(case.id)?,
                filed_at: at.clone(),
                head: head.clone(),
            };
            let payload = serde_json::to_string(&facts)?;
            let payload_sha256 = sha256_hex(payload.as_bytes());
            for to in &self.notify_to {
                let in_reply_to = ops.first_notice(case.id, to)?;
                let tag =
                    msgid::fresh_tag(now, &[inbound.sha256.as_bytes(), b"notice", to.as_bytes()]);
                let msgid = format!("<{}.notice.{tag}@{}>", case.reference, self.reply_domain);
                let outbox = ops.queue_notice(&NewNotice {
                    case_id: case.id,
                    message_id,
                    recipient: to,
                    msgid: &msgid,
                    in_reply_to: in_reply_to.as_deref(),
                    subject: inbound.subject.as_deref(),
                    payload: &payload,
                    now: &at,
                })?;
                audit::append(
                    ops,
                    &at,
                    SYSTEM_ACTOR,
                    Some(case.id),
                    kind::NOTICE_QUEUED,
                    &json!({
                        "outbox": outbox,
                        "message": message_id,
                        "kind": "notice",
                        "recipient": to,
                        "msgid": msgid,
                        "in_reply_to": in_reply_to,
                        "head": head,
                        "payload_sha256": payload_sha256,
                    }),
                )?;
            }
        }

        Ok(Outcome {
            sha256: inbound.sha256.clone(),
            case: Some(case.reference),
            decision: verdict.decision,
            filing: Filing::New,
            new_case: joined.is_none(),
            reply: queued,
            reason: verdict.reason,
            from: sender.map(str::to_string),
            msgid: inbound.message_id.clone(),
            deferrals: None,
        })
    }

    /// The existing case a message belongs to, and how it was found.
    ///
    /// Only a message authenticated for the case's own agency joins it,
    /// whichever way it names the case: a Message-ID, `In-Reply-To` and
    /// `References` are as easy to copy as a reference in a subject, and a
    /// message that joins a case may change its fields and gets replies
    /// carrying its reference. Anyone else's message opens a case of its own.
    fn thread(
        &self,
        ops: &Ops<'_>,
        inbound: &Inbound,
        provisional: &Verdict,
    ) -> anyhow::Result<Option<(Case, Value)>> {
        let internal = provisional.decision == Decision::Internal;
        let authenticated = matches!(
            provisional.decision,
            Decision::Acknowledge | Decision::Reject
        );
        if !authenticated && !internal {
            return Ok(None);
        }
        // A colleague's note goes onto whichever case it is about; anyone
        // else's only onto a case of their own agency.
        let ours = |case: &Case| internal || same_agency(case, provisional, inbound);
        // A copy of a filed message with other bytes (another Received
        // line, a redelivery) goes where the first copy went.
        if let Some(id) = &inbound.message_id
            && let Some(case) = ops.case_by_msgid(id)?
            && ours(&case)
        {
            return Ok(Some((case, json!({ "by": "message_id", "id": id }))));
        }
        for id in &inbound.thread_ids {
            if let Some(case) = ops.case_by_msgid(id)?
                && ours(&case)
            {
                return Ok(Some((case, json!({ "by": "references", "id": id }))));
            }
        }
        if let Some(subject) = &inbound.subject {
            for reference in references_in(subject) {
                if let Some(case) = ops.case(reference)?
                    && ours(&case)
                {
                    return Ok(Some((
                        case,
                        json!({ "by": "subject", "reference": reference }),
                    )));
                }
            }
        }
        Ok(None)
    }

    /// A new Message-ID for a reply (see [`msgid::fresh_tag`]).
    fn reply_msgid(
        &self,
        now: OffsetDateTime,
        reference: Reference,
        request_sha256: &str,
        kind: ReplyKind,
    ) -> String {
        let tag = msgid::fresh_tag(now, &[request_sha256.as_bytes(), kind.as_str().as_bytes()]);
        format!("<{reference}.{tag}@{}>", self.reply_domain)
    }
}

/// What the filings of one transaction share: their instant, and the
/// replies queued to each sender in the 24 hours before it. A sender's
/// count is read from the log at its first message in the transaction,
/// then counted on as replies are queued, so a batch from one busy sender
/// reads the log once rather than once per message. Keys are folded as
/// `COLLATE NOCASE` folds them (ASCII only).
struct TxState {
    now: OffsetDateTime,
    since: String,
    known: HashMap<String, u32>,
}

impl TxState {
    fn new(now: OffsetDateTime) -> TxState {
        TxState {
            now,
            since: stamp(now - time::Duration::hours(24)),
            known: HashMap::new(),
        }
    }

    /// Replies to `sender` in the window, counted up to `cap`.
    fn get(&mut self, ops: &Ops<'_>, sender: &str, cap: u32) -> anyhow::Result<u32> {
        let key = sender.to_ascii_lowercase();
        if let Some(n) = self.known.get(&key) {
            return Ok((*n).min(cap));
        }
        let n = ops.replies_to_since(sender, &self.since, cap)?;
        self.known.insert(key, n);
        Ok(n)
    }

    /// A reply to `recipient` was queued in this transaction.
    fn queued(&mut self, recipient: &str) {
        if let Some(n) = self.known.get_mut(&recipient.to_ascii_lowercase()) {
            *n = n.saturating_add(1);
        }
    }
}

/// "From the same agency": the same allowlisted agency, or — for senders
/// that are on no allowlist — the same organizational domain as the
/// authenticated requester who opened the case.
fn same_agency(case: &Case, provisional: &Verdict, inbound: &Inbound) -> bool {
    match (&case.agency, &provisional.agency) {
        (Some(a), Some(b)) => a == b,
        (None, None) => {
            let org = |addr: &str| {
                addr.rsplit_once('@')
                    .and_then(|(_, d)| normalize_domain(d))
                    .map(|d| d.organizational().to_string())
            };
            case.authenticated
                && case.requester.as_deref().and_then(org).is_some()
                && case.requester.as_deref().and_then(org) == inbound.from_address().and_then(org)
        }
        _ => false,
    }
}

/// What a later message's triage adds to a case: the emergency flag, a
/// kind where there was none, a gag order where notice was undetermined.
fn triage_changes(case: &Case, f: &Findings) -> Vec<(Field, Value)> {
    let mut changes = Vec::new();
    if f.emergency && !case.emergency {
        changes.push((Field::Emergency, Value::Bool(true)));
    }
    if case.kind == RequestKind::Other && f.kind != RequestKind::Other {
        changes.push((Field::Kind, f.kind.as_str().into()));
    }
    if f.gag_order.is_some() && case.user_notice == UserNotice::Unknown {
        changes.push((
            Field::UserNotice,
            UserNotice::ProhibitedUnconfirmed.as_str().into(),
        ));
    }
    changes
}

/// The verdict event: the decision and a digest of the evidence it rested
/// on (the evidence itself is in the verdict row, hashed here).
fn verdict_event(message_id: i64, v: &Verdict, evidence: &Evidence, evidence_json: &str) -> Value {
    json!({
        "message": message_id,
        "decision": v.decision.as_str(),
        "reason": v.reason,
        "reply": v.reply,
        "reply_suppressed": v.reply_suppressed,
        "agency": v.agency,
        "dkim": evidence.dkim.iter().map(|c| json!({
            "domain": c.domain, "selector": c.selector, "result": c.result,
        })).collect::<Vec<_>>(),
        "spf": evidence.spf.result,
        "dmarc": evidence.dmarc.result,
        "evidence_sha256": sha256_hex(evidence_json.as_bytes()),
    })
}

/// The one INFO line per message that administrators grep the journal
/// for, with stable `key=value` fields (README, "Logs"). `uid` is the IMAP
/// UID (`-` for `ingest`), `ms` the time from fetch to commit.
pub fn log_outcome(uid: Option<u32>, o: &Outcome, ms: Option<f64>) {
    tracing::info!(
        uid = %uid.map_or_else(|| "-".to_string(), |u| u.to_string()),
        case = %o.case.map_or_else(|| "-".to_string(), |c| c.to_string()),
        from = %o.from.as_deref().unwrap_or("-"),
        decision = %o.decision,
        reply = %o.reply.map_or("none", |k| k.as_str()),
        filing = %o.filing.as_str(),
        msgid = %o.msgid.as_deref().unwrap_or("-"),
        ms = %ms.map_or_else(|| "-".to_string(), |m| format!("{m:.0}")),
        reason = ?o.reason,
        "message"
    );
}
