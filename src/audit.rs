//! The tamper-evident audit chain: appending events and `audit verify`.
//!
//! Every filing, verdict, queued reply, status change and field change is
//! an event. Event `n` stores `hash = SHA-256(prev_hash ‖ canonical)` where
//! `prev_hash` is event `n-1`'s hash (64 zeros for event 1) and
//! `canonical` is the compact JSON array
//! `[id, at, actor, case_id, kind, data]` (`data` being the event's JSON
//! text exactly as stored), both as UTF-8 bytes — so the chain can be
//! recomputed with any SHA-256 tool and a JSON library.
//!
//! `verify` recomputes the chain and then checks that the tables agree
//! with what the events vouch for: each message's bytes against its
//! recorded hash and its filing event, each verdict, each queued reply's,
//! notice's and digest's recipient and Message-ID (and, for a notice or
//! digest, the SHA-256 of what it says, head hash included), and each
//! case's fields replayed from its events. A reply's delivery fields (status, attempts, times, last error)
//! are not checked against its `reply_*` events: they change by design as
//! the reply is sent, and the events themselves are in the chain. So an edit, deletion, insertion or reordering of an event or a
//! message fails verification even when the append-only triggers have been
//! dropped. What the chain alone cannot show — a rewrite of the whole
//! file, or the newest events cut off — the head hashes already mailed to
//! the legal team can (`--head`).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::store::{EventRow, GENESIS, Ops, Store};

/// Event kinds.
pub mod kind {
    pub const CASE_OPENED: &str = "case_opened";
    pub const MESSAGE_FILED: &str = "message_filed";
    pub const VERDICT: &str = "verdict";
    pub const REPLY_QUEUED: &str = "reply_queued";
    /// An internal notice queued by a filing, one per `notify.to`
    /// address; its data names the audit head the notice carries.
    pub const NOTICE_QUEUED: &str = "notice_queued";
    /// A daily digest queued, one per `notify.to` address.
    pub const DIGEST_QUEUED: &str = "digest_queued";
    /// The delivery of a queued row of the outbox — reply, notice or
    /// digest alike (see `outbox`): an attempt starts, and how it ended;
    /// a person's resend.
    pub const REPLY_SENDING: &str = "reply_sending";
    pub const REPLY_SENT: &str = "reply_sent";
    pub const REPLY_RETRY: &str = "reply_retry";
    pub const REPLY_FAILED: &str = "reply_failed";
    pub const REPLY_UNKNOWN: &str = "reply_unknown";
    pub const REPLY_RESEND: &str = "reply_resend";
    pub const REPLY_RESEND_AUTO: &str = "reply_resend_auto";
    pub const STATUS_CHANGED: &str = "status_changed";
    pub const FIELD_CHANGED: &str = "field_changed";
    pub const NOTE: &str = "note";
    pub const CASE_EXPORTED: &str = "case_exported";
    /// The case board's accounts (`users`): no case, and never a password
    /// or its hash in the data.
    pub const ACCOUNT_ADDED: &str = "account_added";
    pub const ACCOUNT_PASSWORD: &str = "account_password_changed";
    pub const ACCOUNT_DISABLED: &str = "account_disabled";
    pub const ACCOUNT_ENABLED: &str = "account_enabled";
    /// A session of the board started or ended by its account (a failed
    /// login is a log line, not an event: the chain is not for noise).
    pub const SIGNED_IN: &str = "signed_in";
    pub const SIGNED_OUT: &str = "signed_out";
}

/// The actor recorded for what the daemon and `ingest` do by themselves.
pub const SYSTEM_ACTOR: &str = "legal-intake";

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The canonical serialisation an event's hash covers (module docs).
pub fn canonical(e: &EventRow) -> String {
    serde_json::to_string(&(e.id, &e.at, &e.actor, e.case_id, &e.kind, &e.data))
        .expect("strings and integers always serialise")
}

/// The hash of an event given its predecessor's.
pub fn event_hash(prev_hash: &str, e: &EventRow) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical(e).as_bytes());
    hex::encode(h.finalize())
}

/// Appends an event after the current head, inside the caller's
/// transaction.
pub fn append(
    ops: &Ops<'_>,
    at: &str,
    actor: &str,
    case_id: Option<i64>,
    kind: &str,
    data: &Value,
) -> anyhow::Result<EventRow> {
    let (last_id, prev_hash) = ops
        .last_event()?
        .unwrap_or_else(|| (0, GENESIS.to_string()));
    let mut e = EventRow {
        id: last_id + 1,
        at: at.to_string(),
        actor: actor.to_string(),
        case_id,
        kind: kind.to_string(),
        data: serde_json::to_string(data)?,
        prev_hash,
        hash: String::new(),
    };
    e.hash = event_hash(&e.prev_hash, &e);
    ops.insert_event(&e)?;
    Ok(e)
}

/// One thing wrong with the log.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The event at fault, or that vouches for the row at fault.
    pub event: Option<i64>,
    pub what: String,
}

/// What `audit verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub events: u64,
    pub messages: u64,
    /// The current head, `None` for an empty log.
    pub head: Option<String>,
    /// The event whose hash is the `--head` asked about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor: Option<i64>,
    /// Problems, the first broken event first.
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }

    /// The human report.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(first) = self.problems.first() {
            out.push(match first.event {
                Some(id) => format!("audit chain broken: first bad event {id}: {}", first.what),
                None => format!("audit chain broken: {}", first.what),
            });
            for p in self.problems.iter().skip(1).take(20) {
                out.push(match p.event {
                    Some(id) => format!("  also event {id}: {}", p.what),
                    None => format!("  also: {}", p.what),
                });
            }
            if self.problems.len() > 21 {
                out.push(format!("  and {} more", self.problems.len() - 21));
            }
        } else {
            out.push(format!(
                "audit chain intact: {} events, {} messages checked, head {}",
                self.events,
                self.messages,
                self.head.as_deref().unwrap_or("(empty)")
            ));
            if let Some(id) = self.anchor {
                out.push(format!("the given head is event {id} of the chain"));
            }
        }
        out
    }
}

/// What the events say about one message, verdict or reply.
#[derive(Default)]
struct Vouched {
    event: i64,
    data: Map<String, Value>,
    case_id: Option<i64>,
}

/// Recomputes the chain and checks the tables against it; `head` is a
/// hash recorded earlier that must still be in the chain.
pub fn verify(store: &mut Store, head: Option<&str>) -> anyhow::Result<Report> {
    // One snapshot for every query: a filing committed while this runs
    // must not look like a row without its event.
    let snapshot = store.snapshot()?;
    let ops = snapshot.ops();
    let mut problems: Vec<Problem> = Vec::new();
    let mut count = 0u64;
    let mut prev: Option<(i64, String)> = None;
    let mut hashes: HashMap<String, i64> = HashMap::new();
    let mut filed: BTreeMap<i64, Vouched> = BTreeMap::new();
    let mut verdicts: BTreeMap<i64, Vouched> = BTreeMap::new();
    let mut replies: BTreeMap<i64, Vouched> = BTreeMap::new();
    // Per case: the fields its events add up to, and its latest event.
    let mut cases: HashMap<i64, (Map<String, Value>, i64)> = HashMap::new();

    ops.each_event(|e| {
        count += 1;
        let (expected_id, expected_prev) = match &prev {
            Some((id, hash)) => (id + 1, hash.as_str()),
            None => (1, GENESIS),
        };
        if e.id != expected_id {
            problems.push(Problem {
                event: Some(e.id),
                what: format!(
                    "expected event {expected_id} here: events are missing, inserted or renumbered"
                ),
            });
        } else if e.prev_hash != expected_prev {
            problems.push(Problem {
                event: Some(e.id),
                what: format!(
                    "does not follow event {}: an event before it was changed, removed, inserted or reordered",
                    e.id - 1
                ),
            });
        }
        if event_hash(&e.prev_hash, &e) != e.hash {
            problems.push(Problem {
                event: Some(e.id),
                what: format!("its content ({}) does not match its hash: edited", e.kind),
            });
        }
        hashes.insert(e.hash.clone(), e.id);
        collect(&e, &mut filed, &mut verdicts, &mut replies, &mut cases, &mut problems);
        prev = Some((e.id, e.hash));
        Ok(())
    })?;

    let messages = check_messages(&ops, &filed, &mut problems)?;
    check_verdicts(&ops, &verdicts, &mut problems)?;
    check_replies(&ops, &replies, &mut problems)?;
    check_cases(&ops, &cases, &mut problems)?;

    let mut anchor = None;
    if let Some(h) = head {
        let h = h.trim().to_ascii_lowercase();
        match hashes.get(&h) {
            Some(id) => anchor = Some(*id),
            None => problems.push(Problem {
                event: None,
                what: format!(
                    "the given head {h} is not the hash of any event in the chain: the log was rewritten or cut short since it was recorded"
                ),
            }),
        }
    }

    // The first broken event first; problems no event vouches for last.
    problems.sort_by_key(|p| p.event.unwrap_or(i64::MAX));
    Ok(Report {
        events: count,
        messages,
        head: prev.map(|(_, h)| h),
        anchor,
        problems,
    })
}

fn collect(
    e: &EventRow,
    filed: &mut BTreeMap<i64, Vouched>,
    verdicts: &mut BTreeMap<i64, Vouched>,
    replies: &mut BTreeMap<i64, Vouched>,
    cases: &mut HashMap<i64, (Map<String, Value>, i64)>,
    problems: &mut Vec<Problem>,
) {
    let data = match serde_json::from_str::<Value>(&e.data) {
        Ok(Value::Object(m)) => m,
        _ => {
            problems.push(Problem {
                event: Some(e.id),
                what: "its data is not a JSON object".to_string(),
            });
            return;
        }
    };
    let vouched = |key: &str| {
        data.get(key).and_then(Value::as_i64).map(|id| {
            (
                id,
                Vouched {
                    event: e.id,
                    data: data.clone(),
                    case_id: e.case_id,
                },
            )
        })
    };
    match e.kind.as_str() {
        kind::MESSAGE_FILED => {
            if let Some((id, v)) = vouched("message") {
                filed.insert(id, v);
            }
        }
        kind::VERDICT => {
            if let Some((id, v)) = vouched("message") {
                verdicts.insert(id, v);
            }
        }
        kind::REPLY_QUEUED | kind::NOTICE_QUEUED | kind::DIGEST_QUEUED => {
            if let Some((id, v)) = vouched("outbox") {
                replies.insert(id, v);
            }
        }
        kind::CASE_OPENED => {
            if let Some(id) = e.case_id {
                let fields = data
                    .get("fields")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                cases.insert(id, (fields, e.id));
            }
        }
        kind::STATUS_CHANGED | kind::FIELD_CHANGED => {
            let Some((fields, last)) = e.case_id.and_then(|id| cases.get_mut(&id)) else {
                problems.push(Problem {
                    event: Some(e.id),
                    what: "changes a case that no earlier event opened".to_string(),
                });
                return;
            };
            let field = if e.kind == kind::STATUS_CHANGED {
                Some("status")
            } else {
                data.get("field").and_then(Value::as_str)
            };
            if let Some(field) = field {
                fields.insert(
                    field.to_string(),
                    data.get("to").cloned().unwrap_or(Value::Null),
                );
            }
            *last = e.id;
        }
        _ => {
            if let Some((_, last)) = e.case_id.and_then(|id| cases.get_mut(&id)) {
                *last = e.id;
            }
        }
    }
}

fn check_messages(
    ops: &Ops<'_>,
    filed: &BTreeMap<i64, Vouched>,
    problems: &mut Vec<Problem>,
) -> anyhow::Result<u64> {
    let mut seen = HashSet::new();
    let mut count = 0;
    let rows: HashMap<i64, _> = ops.all_messages()?.into_iter().map(|m| (m.id, m)).collect();
    ops.each_message_raw(|id, recorded, raw| {
        count += 1;
        seen.insert(id);
        let v = filed.get(&id);
        let event = v.map(|v| v.event);
        if sha256_hex(raw) != recorded {
            problems.push(Problem {
                event,
                what: format!("message {id}: its bytes do not match its recorded SHA-256 {recorded}"),
            });
        }
        let Some(v) = v else {
            problems.push(Problem {
                event: None,
                what: format!("message {id} ({recorded}) has no filing event: inserted outside the pipeline"),
            });
            return Ok(());
        };
        if v.data.get("sha256").and_then(Value::as_str) != Some(recorded.as_str()) {
            problems.push(Problem {
                event,
                what: format!("message {id}: its recorded SHA-256 is not the one its filing event vouches for"),
            });
        }
        if let Some(m) = rows.get(&id) {
            let same_case = v.case_id == Some(m.case_id);
            let same_findings = v.data.get("findings_sha256").and_then(Value::as_str)
                == Some(sha256_hex(m.findings_json.as_bytes()).as_str());
            let same_msgid = v.data.get("msgid").cloned().unwrap_or(Value::Null)
                == m.msgid.clone().map_or(Value::Null, Value::String);
            if !(same_case && same_findings && same_msgid) {
                problems.push(Problem {
                    event,
                    what: format!("message {id}: its case, Message-ID or findings differ from its filing event"),
                });
            }
        }
        Ok(())
    })?;
    for (id, v) in filed {
        if !seen.contains(id) {
            problems.push(Problem {
                event: Some(v.event),
                what: format!("message {id} named by this event is missing: deleted"),
            });
        }
    }
    Ok(count)
}

fn check_verdicts(
    ops: &Ops<'_>,
    vouched: &BTreeMap<i64, Vouched>,
    problems: &mut Vec<Problem>,
) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    for v in ops.all_verdicts()? {
        seen.insert(v.message_id);
        let Some(e) = vouched.get(&v.message_id) else {
            problems.push(Problem {
                event: None,
                what: format!(
                    "verdict {} has no verdict event: inserted outside the pipeline",
                    v.id
                ),
            });
            continue;
        };
        let d = &e.data;
        let same = d.get("decision").and_then(Value::as_str) == Some(v.decision.as_str())
            && d.get("reason").and_then(Value::as_str) == Some(v.reason.as_str())
            && d.get("reply").and_then(Value::as_bool) == Some(v.reply)
            && d.get("agency").cloned().unwrap_or(Value::Null)
                == v.agency.clone().map_or(Value::Null, Value::String)
            && d.get("evidence_sha256").and_then(Value::as_str)
                == Some(sha256_hex(v.evidence_json.as_bytes()).as_str());
        if !same {
            problems.push(Problem {
                event: Some(e.event),
                what: format!(
                    "the verdict on message {} differs from what this event recorded",
                    v.message_id
                ),
            });
        }
    }
    for (message, e) in vouched {
        if !seen.contains(message) {
            problems.push(Problem {
                event: Some(e.event),
                what: format!("the verdict on message {message} recorded by this event is missing"),
            });
        }
    }
    Ok(())
}

fn check_replies(
    ops: &Ops<'_>,
    vouched: &BTreeMap<i64, Vouched>,
    problems: &mut Vec<Problem>,
) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    for r in ops.all_replies()? {
        seen.insert(r.id);
        let Some(e) = vouched.get(&r.id) else {
            problems.push(Problem {
                event: None,
                what: format!(
                    "queued reply {} has no event: inserted outside the pipeline",
                    r.id
                ),
            });
            continue;
        };
        let d = &e.data;
        let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
        // Status and attempts change as the row is sent; who it goes to,
        // what it is, which case and message it is about, and what a
        // notice or digest says never do.
        let same = e.case_id == r.case_id
            && d.get("kind").and_then(Value::as_str) == Some(r.kind.as_str())
            && d.get("recipient").and_then(Value::as_str) == Some(r.recipient.as_str())
            && d.get("msgid").and_then(Value::as_str) == Some(r.msgid.as_str())
            && d.get("message").and_then(Value::as_i64) == r.message_id
            && d.get("in_reply_to").cloned().unwrap_or(Value::Null) == text(&r.in_reply_to)
            && d.get("dedupe_key").cloned().unwrap_or(Value::Null) == text(&r.dedupe_key)
            && d.get("payload_sha256").cloned().unwrap_or(Value::Null)
                == text(&r.payload.as_deref().map(|p| sha256_hex(p.as_bytes())));
        if !same {
            problems.push(Problem {
                event: Some(e.event),
                what: format!(
                    "queued reply {} differs from what this event recorded",
                    r.id
                ),
            });
        }
    }
    for (id, e) in vouched {
        if !seen.contains(id) {
            problems.push(Problem {
                event: Some(e.event),
                what: format!("queued reply {id} recorded by this event is missing"),
            });
        }
    }
    Ok(())
}

fn check_cases(
    ops: &Ops<'_>,
    replayed: &HashMap<i64, (Map<String, Value>, i64)>,
    problems: &mut Vec<Problem>,
) -> anyhow::Result<()> {
    for c in ops.all_cases()? {
        let Some((fields, last)) = replayed.get(&c.id) else {
            problems.push(Problem {
                event: None,
                what: format!(
                    "case {} has no opening event: inserted outside the pipeline",
                    c.reference
                ),
            });
            continue;
        };
        for (key, stored) in c.audited() {
            let said = fields.get(&key).cloned().unwrap_or(Value::Null);
            if said != stored {
                problems.push(Problem {
                    event: Some(*last),
                    what: format!(
                        "case {}: its {key} is {stored} but its events say {said}",
                        c.reference
                    ),
                });
            }
        }
    }
    Ok(())
}
