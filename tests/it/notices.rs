//! The legal team is told: internal notices per filed message and the
//! daily digest, end to end. The real binary files requests (`ingest`),
//! queues and sends through the same outgoing queue as the replies
//! (`run --once` and `run` over a real Dovecot) to a real SMTP server on
//! 127.0.0.1 (aiosmtpd, see `testkit::smtp_sink`), with the clock pinned by
//! `LEGAL_INTAKE_NOW` and the local time zone by `TZ`.

use std::process::{Command, Output};
use std::time::Duration;

use mail_auth::DkimResult;
use rusqlite::Connection;
use testkit::dkim::{KeyKind, generate};
use testkit::dovecot::Dovecot;
use testkit::smtp_sink::{Received, Sink};

use crate::support::*;

/// The instant requests are filed at (`LEGAL_INTAKE_NOW`).
const T: &str = "2026-11-02T10:00:00Z";

/// The legal team's two addresses.
const TEAM: &str = "legal-team@ivpn.net";
const DUTY: &str = "duty-officer@ivpn.net";

/// Words of the request body and its attachment that a notice must never
/// carry.
const BODY_MARKER: &str = "Kestrel-Body-7781";
const ATTACHMENT_NAME: &str = "Sealed-Affidavit-4419.pdf";
const ATTACHMENT_TEXT: &str = "Osprey-Attachment-5523";

/// A `[notify]` section.
fn notify(to: &[&str], digest_hour: u8) -> String {
    let to: Vec<String> = to.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[notify]\nto = [{}]\ndigest_hour = {digest_hour}\n",
        to.join(", ")
    )
}

/// A Dovecot for `run` to watch, an installation watching it whose
/// `[smtp]` section points at `sink`, and the time zone of its runs.
struct Rig {
    dovecot: Dovecot,
    install: Install,
}

impl Rig {
    fn new(sink: &Sink, extra: &str) -> Rig {
        let dovecot = Dovecot::start();
        let install = Install::watching(&dovecot, "", extra);
        let text = std::fs::read_to_string(&install.config).unwrap();
        let text = text.replace("port = 2525", &format!("port = {}", sink.port));
        std::fs::write(&install.config, text).unwrap();
        Rig { dovecot, install }
    }

    fn command(&self, args: &[&str], now: Option<&str>, tz: &str) -> Command {
        let mut cmd = self.install.operator_command(args, now);
        cmd.env("TZ", tz);
        cmd
    }

    fn run(&self, args: &[&str], now: Option<&str>, tz: &str) -> Output {
        self.command(args, now, tz).output().unwrap()
    }

    /// A command that must succeed; its standard output.
    fn ok(&self, args: &[&str], now: &str) -> String {
        let out = self.run(args, Some(now), "UTC");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `run --once` at `now` in `tz`, which must succeed; returns its log.
    fn once(&self, now: &str, tz: &str) -> String {
        let out = self.run(&["run", "--once"], Some(now), tz);
        let log = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "run --once failed:\n{log}");
        log
    }

    /// Files messages with `ingest --json` at `now`; one object each.
    fn ingest(&self, messages: &[&[u8]], now: &str) -> Vec<serde_json::Value> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let files: Vec<String> = messages
            .iter()
            .map(|raw| {
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.install.file(&format!("m{n}.eml"), raw)
            })
            .map(|p| p.display().to_string())
            .collect();
        let mut args = vec!["ingest", "--json"];
        args.extend(files.iter().map(String::as_str));
        let out = self.run(&args, Some(now), "UTC");
        let filed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        // EX_TEMPFAIL (75) exactly when a message was deferred, so an MTA retries it.
        let deferred = filed.iter().any(|m| m["decision"] == "defer");
        let expected = if deferred { Some(75) } else { Some(0) };
        assert_eq!(
            out.status.code(),
            expected,
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        filed
    }

    fn db(&self) -> Connection {
        self.install.db()
    }

    fn count(&self, sql: &str) -> i64 {
        self.install.count(sql)
    }

    fn texts(&self, sql: &str) -> Vec<String> {
        self.install.texts(sql)
    }

    /// How many sends of outbox rows of `kind` the audit chain records.
    fn sent(&self, kind: &str) -> i64 {
        self.count(&format!(
            "SELECT count(*) FROM events e JOIN outbox o ON o.id = json_extract(e.data, '$.outbox') \
             WHERE e.kind = 'reply_sent' AND o.kind = '{kind}'"
        ))
    }

    /// `audit verify`, with `--head` when given: (success, output).
    fn audit(&self, head: Option<&str>) -> (bool, String) {
        let mut args = vec!["audit", "verify"];
        if let Some(h) = head {
            args.extend(["--head", h]);
        }
        let out = self.run(&args, None, "UTC");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

/// A signed police request with a body and an attachment whose words a
/// notice must not repeat.
fn police_with_attachment(subject: &str) -> Vec<u8> {
    let body = format!(
        "--b1\r\nContent-Type: text/plain\r\n\r\nURGENT. {BODY_MARKER}: the order concerns account i-ABCD-EFGH-JKLM.\r\n\
--b1\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\"{ATTACHMENT_NAME}\"\r\n\r\n\
{ATTACHMENT_TEXT}\r\n--b1--\r\n"
    );
    let raw = format!(
        "From: Detective Inspector <officer@police.gi>\r\nTo: legal@ivpn.net\r\nSubject: {subject}\r\n\
Date: Mon, 02 Nov 2026 10:00:00 +0000\r\nMessage-ID: <notice-{}@police.gi>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n{body}",
        std::process::id()
    );
    genuine(raw.as_bytes())
}

/// A received mail, parsed: (decoded subject, decoded plain-text body).
fn parsed(r: &Received) -> (String, String) {
    let m = mail_parser::MessageParser::new()
        .parse(&r.data)
        .expect("a parsable message");
    (
        m.subject().unwrap_or_default().to_string(),
        m.body_text(0).unwrap_or_default().replace("\r\n", "\n"),
    )
}

/// The received mails whose decoded subject contains `needle`.
fn with_subject(got: &[Received], needle: &str) -> Vec<Received> {
    got.iter()
        .filter(|r| parsed(r).0.contains(needle))
        .cloned()
        .collect()
}

/// The head hash a notice or digest carries: the line after its title.
fn head_in(body: &str) -> String {
    let mut lines = body.lines();
    lines
        .find(|l| l.starts_with("Audit chain head"))
        .unwrap_or_else(|| panic!("no head in\n{body}"));
    let head = lines.next().unwrap().trim().to_string();
    assert_eq!(head.len(), 64, "{head:?}");
    assert!(head.bytes().all(|b| b.is_ascii_hexdigit()), "{head:?}");
    head
}

/// The references listed in one digest section (the lines under its
/// title up to the next blank line).
fn section(body: &str, title: &str) -> Vec<String> {
    let start = body
        .find(&format!("\n{title}"))
        .unwrap_or_else(|| panic!("no section {title:?} in\n{body}"));
    body[start + 1..]
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("LR-"))
        .map(str::to_string)
        .collect()
}

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn a_new_case_is_announced_to_every_address_with_its_facts_and_the_head_never_its_content() {
    // The team's notices are DKIM-signed like replies.
    let key = generate(KeyKind::Rsa(2048));
    world().dns.update(|z| {
        z.txt("notice-rsa._domainkey.ivpn.net", &key.dns_txt);
    });
    let sink = Sink::start();
    let rig = Rig::new(
        &sink,
        &format!(
            "{}[dkim_signing]\ndomain = \"ivpn.net\"\nselector = \"notice-rsa\"\nprivate_key_file = \"dkim.pem\"\n",
            notify(&[TEAM, DUTY], 23)
        ),
    );
    std::fs::write(rig.install.dir.path().join("dkim.pem"), &key.private_pem).unwrap();
    let request = police_with_attachment("Urgent search warrant RGP/2026/0117");
    let out = rig.ingest(&[&request], T);
    assert_eq!(out[0]["decision"], "acknowledge", "{}", out[0]);

    // Queued with the filing: one notice per address, with its event.
    assert_eq!(
        rig.texts("SELECT recipient FROM outbox WHERE kind = 'notice' ORDER BY id"),
        [TEAM, DUTY]
    );
    assert_eq!(
        rig.count("SELECT count(*) FROM events WHERE kind = 'notice_queued'"),
        2
    );
    // The head a notice carries is the hash of the filing's last event,
    // the one just before the notice events.
    let head_at_filing = rig.texts(
        "SELECT hash FROM events WHERE id = \
         (SELECT min(id) FROM events WHERE kind = 'notice_queued') - 1",
    );
    let filing_last_kind = rig.texts(
        "SELECT kind FROM events WHERE id = \
         (SELECT min(id) FROM events WHERE kind = 'notice_queued') - 1",
    );
    assert_eq!(filing_last_kind, ["reply_queued"]);

    rig.once(T, "UTC");
    let got = sink.wait_for(3, WAIT);
    assert_eq!(got.len(), 3, "the acknowledgement and two notices");
    let notices = with_subject(&got, "New case");
    assert_eq!(notices.len(), 2);
    let msgids = rig.texts("SELECT msgid FROM outbox WHERE kind = 'notice' ORDER BY id");
    let kind = rig.texts("SELECT kind FROM cases")[0].replace('_', " ");
    for (n, (to, msgid)) in notices.iter().zip([TEAM, DUTY].iter().zip(&msgids)) {
        let (subject, body) = parsed(n);
        assert_eq!(n.rcpt_tos, vec![to.to_string()]);
        assert_eq!(n.header("To"), format!("<{to}>"));
        assert_eq!(n.header("From"), "\"IVPN Legal\" <legal@ivpn.net>");
        assert_eq!(
            subject,
            "[LR-2026-0001] EMERGENCY New case: acknowledge — Royal Gibraltar Police"
        );
        assert_eq!(&n.header("Message-ID"), msgid);
        assert!(
            n.all("In-Reply-To").is_empty(),
            "the first notice of a case"
        );
        assert_eq!(n.header("Auto-Submitted"), "auto-generated");
        assert_eq!(n.header("X-Auto-Response-Suppress"), "All");
        assert_eq!(n.header("Date"), "Mon, 2 Nov 2026 10:00:00 +0000");
        for needle in [
            "New case LR-2026-0001\n",
            "*** EMERGENCY — confirm out of band before acting ***\n",
            "Reference:  LR-2026-0001\n",
            "Status:     received\n",
            "Agency:     Royal Gibraltar Police\n",
            "Decision:   acknowledge\n",
            &format!("Kind:       {kind}\n"),
            "Emergency:  YES — confirm out of band before acting\n",
            "From:       officer@police.gi (authenticated)\n",
            "Subject:    Urgent search warrant RGP/2026/0117\n",
            "Reply:      acknowledgement queued to the sender\n",
            "Reason:     ",
        ] {
            assert!(body.contains(needle), "missing {needle:?} in\n{body}");
        }
        assert!(!body.contains("Deadline:"), "no deadline is set\n{body}");
        assert_eq!(head_in(&body), head_at_filing[0]);
        // Never the body or the attachment, not even its name.
        for secret in [
            BODY_MARKER,
            ATTACHMENT_NAME,
            ATTACHMENT_TEXT,
            "i-ABCD-EFGH-JKLM",
        ] {
            assert!(!n.text().contains(secret), "{secret} in\n{}", n.text());
        }
        assert_eq!(
            dkim_results(&n.data),
            vec![("ivpn.net".to_string(), DkimResult::Pass)]
        );
    }
    // Sent through the same queue, recorded like a reply, never twice.
    assert_eq!(
        rig.count("SELECT count(*) FROM outbox WHERE kind = 'notice' AND status = 'sent'"),
        2
    );
    assert_eq!(rig.sent("notice"), 2);
    rig.once(T, "UTC");
    assert_eq!(sink.received().len(), 3);
    let shown = rig.ok(&["cases", "show", "LR-2026-0001"], T);
    let notices_part = &shown[shown.find("notices:").expect("a notices section")..];
    assert!(
        notices_part.contains(&format!("notice to {TEAM} {}", msgids[0]))
            && notices_part.contains("sent 2026-11-02T10:00:00Z"),
        "{shown}"
    );

    // The head a notice carries proves later that the chain still holds
    // it, however much is filed after it …
    let head = head_in(&parsed(&notices[0]).1);
    rig.ingest(
        &[
            &police_request_with("Another order", &[]),
            &forged("Forged order"),
        ],
        T,
    );
    let (ok, text) = rig.audit(Some(&head));
    assert!(ok, "{text}");
    assert!(text.contains("the given head is event"), "{text}");
    // … and a log rewritten since does not.
    let (ok, text) = rig.audit(Some(&"a".repeat(64)));
    assert!(!ok, "{text}");
    // What a notice says is vouched for by its event.
    rig.db()
        .execute(
            "UPDATE outbox SET payload = replace(payload, 'acknowledge', 'reject') WHERE id = \
             (SELECT min(id) FROM outbox WHERE kind = 'notice')",
            [],
        )
        .unwrap();
    let (ok, text) = rig.audit(None);
    assert!(
        !ok && text.contains("differs from what this event recorded"),
        "{text}"
    );
}

#[test]
fn a_message_joining_a_case_is_announced_threaded_to_the_first_notice_and_repeats_are_not() {
    let sink = Sink::start();
    let rig = Rig::new(&sink, &notify(&[TEAM, DUTY], 23));
    let first = police_request_with("Production order RGP/2026/0117", &[]);
    rig.ingest(&[&first], T);
    let first_notices = rig.texts("SELECT msgid FROM outbox WHERE kind = 'notice' ORDER BY id");
    assert_eq!(first_notices.len(), 2);

    // A follow-up naming the request joins the case.
    let follow_up = police_request_with(
        "Re: Production order RGP/2026/0117",
        &[("In-Reply-To", &message_id(&first))],
    );
    let out = rig.ingest(&[&follow_up], T);
    assert_eq!(
        (out[0]["case"].as_str(), out[0]["new_case"].as_bool()),
        (Some("LR-2026-0001"), Some(false))
    );
    // The same bytes again, and a message that cannot be judged yet: no
    // notice for either.
    let out = rig.ingest(&[&first, &follow_up, &unverifiable_request()], T);
    assert_eq!(out[0]["filing"], "duplicate");
    assert_eq!(out[1]["filing"], "duplicate");
    assert_eq!(out[2]["filing"], "deferred");
    assert_eq!(
        rig.count("SELECT count(*) FROM outbox WHERE kind = 'notice'"),
        4
    );
    assert_eq!(
        rig.count("SELECT count(*) FROM events WHERE kind = 'notice_queued'"),
        4
    );

    rig.once(T, "UTC");
    let got = sink.wait_for(5, WAIT);
    // The acknowledgement (the follow-up gets none: one per case in 7
    // days), two "new case" and two "message added" notices.
    assert_eq!(
        got.len(),
        5,
        "{:?}",
        got.iter().map(|r| parsed(r).0).collect::<Vec<_>>()
    );
    let added = with_subject(&got, "Message added");
    assert_eq!(added.len(), 2);
    for (n, (to, first_msgid)) in added.iter().zip([TEAM, DUTY].iter().zip(&first_notices)) {
        let (subject, body) = parsed(n);
        assert_eq!(n.rcpt_tos, vec![to.to_string()]);
        assert_eq!(
            subject,
            "[LR-2026-0001] Message added: acknowledge — Royal Gibraltar Police"
        );
        // Threaded to the case's first notice to the same address.
        assert_eq!(&n.header("In-Reply-To"), first_msgid);
        assert!(n.header("References").contains(first_msgid.as_str()));
        assert_ne!(&n.header("Message-ID"), first_msgid);
        assert!(
            body.starts_with("Message 2 added to case LR-2026-0001\n"),
            "{body}"
        );
        assert!(
            body.contains("Subject:    Re: Production order RGP/2026/0117\n"),
            "{body}"
        );
        assert!(body.contains("Emergency:  no\n"), "{body}");
        assert!(!body.contains("EMERGENCY"), "{body}");
        assert!(
            body.contains("Reply:      none: already answered for this case within 7 days\n"),
            "the follow-up got no reply, and the notice says why\n{body}"
        );
    }
    // Every notice of a case names it in its subject and is threaded.
    let news = with_subject(&got, "New case");
    assert_eq!(news.len(), 2);
    assert_eq!(
        news.iter()
            .map(|n| n.header("Message-ID"))
            .collect::<Vec<_>>(),
        first_notices
    );
    // A human reply to a notice (it references the notice) files onto
    // its case rather than opening a new one.
    let answer = police_request_with(
        "Re: [LR-2026-0001] notice",
        &[("References", &first_notices[0])],
    );
    let out = rig.ingest(&[&answer], T);
    assert_eq!(out[0]["case"], "LR-2026-0001");
    assert_eq!(rig.count("SELECT count(*) FROM cases"), 1);
    let (ok, text) = rig.audit(None);
    assert!(ok, "{text}");
}

#[test]
fn notices_never_count_against_the_reply_limits() {
    // A sender who is also on the notify list: if notices counted as
    // replies, the second request would hit the cap of two.
    let sink = Sink::start();
    let rig = Rig::new(
        &sink,
        &format!(
            "{}[limits]\nreplies_per_sender_per_day = 2\n",
            notify(&["officer@police.gi"], 23)
        ),
    );
    let out = rig.ingest(
        &[
            &police_request_with("Order one", &[]),
            &police_request_with("Order two", &[]),
        ],
        T,
    );
    for o in &out {
        assert_eq!(o["reply"], "acknowledgement", "{o}");
    }
    // The notice about the first request went to that same address.
    assert_eq!(
        rig.texts("SELECT recipient FROM outbox WHERE kind = 'notice' ORDER BY id"),
        ["officer@police.gi", "officer@police.gi"]
    );
    assert_eq!(
        rig.texts("SELECT kind FROM outbox ORDER BY id"),
        ["acknowledgement", "notice", "acknowledgement", "notice"]
    );
    // The third is over the cap of two replies a day, whatever the
    // notices: no reply, and still a notice.
    let out = rig.ingest(&[&police_request_with("Order three", &[])], T);
    assert!(out[0]["reply"].is_null(), "{}", out[0]);
    assert_eq!(
        rig.count(
            "SELECT count(*) FROM verdicts WHERE reply_suppressed LIKE '2 replies to this sender%'"
        ),
        1
    );
    assert_eq!(
        rig.count("SELECT count(*) FROM outbox WHERE kind = 'notice'"),
        3
    );
}

#[test]
fn the_digest_is_queued_once_a_local_day_at_its_hour_and_lists_the_case_log() {
    let sink = Sink::start();
    let rig = Rig::new(&sink, &notify(&[TEAM, DUTY], 8));
    let filed = "2026-11-20T10:00:00Z";
    let out = rig.ingest(
        &[
            &police_request_with("Order A", &[]), // LR-2026-0001: overdue
            &police_request_with("Order B", &[]), // 0002: due within 7 days
            &police_request_with("Order C", &[]), // 0003: due later
            &police_request_with("Order D", &[]), // 0004: responded, deadline passed
            &police_request_with("Order E", &[]), // 0005: closed
            &forged("Forged order F"),            // 0006: quarantined
            &forged("Forged order G"),            // 0007: quarantined
            &foreign_request("Ersuchen H"),       // 0008: out of jurisdiction
        ],
        filed,
    );
    assert_eq!(out.len(), 8);
    for (args, now) in [
        (vec!["set-status", "LR-2026-0001", "under_review"], filed),
        (
            vec!["set", "LR-2026-0001", "--deadline", "2026-11-28"],
            filed,
        ),
        (
            vec![
                "set",
                "LR-2026-0002",
                "--deadline",
                "2026-12-03T17:00:00+01:00",
            ],
            filed,
        ),
        (
            vec!["set", "LR-2026-0003", "--deadline", "2026-12-20"],
            filed,
        ),
        (vec!["set-status", "LR-2026-0004", "under_review"], filed),
        (vec!["set-status", "LR-2026-0004", "responded"], filed),
        (
            vec!["set", "LR-2026-0004", "--deadline", "2026-11-21"],
            filed,
        ),
        (vec!["set-status", "LR-2026-0005", "under_review"], filed),
        (vec!["set-status", "LR-2026-0005", "rejected"], filed),
        (vec!["set-status", "LR-2026-0005", "closed"], filed),
        (
            vec!["set", "LR-2026-0005", "--deadline", "2026-11-01"],
            filed,
        ),
    ] {
        let mut full = vec!["cases"];
        full.extend(args);
        rig.ok(&full, now);
    }
    // The filings' replies and notices go out, and the 20th's digest (its
    // hour has passed).
    rig.once("2026-11-20T10:00:00Z", "Europe/Gibraltar");
    let digests = || rig.count("SELECT count(*) FROM outbox WHERE kind = 'digest'");
    assert_eq!(digests(), 2, "the 20th's digest, one per address");
    assert_eq!(
        rig.count("SELECT count(*) FROM outbox WHERE kind = 'notice'"),
        8 * 2
    );
    let before = rig.count("SELECT count(*) FROM outbox") as usize;
    assert_eq!(sink.wait_for(before, WAIT).len(), before);

    // 07:30 UTC is 07:30 in UTC, before the hour; it is 08:30 in Gibraltar
    // (CET), after it. 06:59:59 UTC is 07:59:59 in Gibraltar: not yet.
    rig.once("2026-11-29T07:30:00Z", "UTC");
    assert_eq!(digests(), 2, "not before the hour in the machine's zone");
    rig.once("2026-11-29T06:59:59Z", "Europe/Gibraltar");
    assert_eq!(digests(), 2, "not before the hour");
    rig.once("2026-11-29T07:30:00Z", "Europe/Gibraltar");
    assert_eq!(digests(), 4, "one per address at the hour");
    let got = sink.wait_for(before + 2, WAIT);
    assert_eq!(got.len(), before + 2);
    let day29 = with_subject(&got, "digest 2026-11-29");
    assert_eq!(day29.len(), 2);
    let mut heads = Vec::new();
    for (d, to) in day29.iter().zip([TEAM, DUTY]) {
        let (subject, body) = parsed(d);
        assert_eq!(d.rcpt_tos, vec![to.to_string()]);
        assert_eq!(
            subject,
            "legal-intake daily digest 2026-11-29: 7 open, 1 overdue, 2 quarantined"
        );
        assert_eq!(d.header("Auto-Submitted"), "auto-generated");
        assert!(d.all("In-Reply-To").is_empty());
        assert!(
            body.starts_with("legal-intake daily digest for 2026-11-29 (Europe/Gibraltar)\n"),
            "{body}"
        );
        assert_eq!(section(&body, "Overdue"), ["LR-2026-0001"], "{body}");
        assert_eq!(
            section(&body, "Deadlines in the next 7 days"),
            ["LR-2026-0002"]
        );
        assert_eq!(
            section(&body, "Quarantine"),
            ["LR-2026-0006", "LR-2026-0007"]
        );
        assert_eq!(
            section(&body, "Open cases"),
            [1, 2, 3, 4, 6, 7, 8].map(|n| format!("LR-2026-{n:04}"))
        );
        assert!(
            body.contains("LR-2026-0001  deadline 2026-11-28  under_review"),
            "{body}"
        );
        assert!(
            body.contains("LR-2026-0002  deadline 2026-12-03T16:00:00Z  received"),
            "{body}"
        );
        heads.push(head_in(&body));
    }
    assert_eq!(heads[0], heads[1], "one view of the log for every address");
    assert_eq!(
        rig.texts(
            "SELECT dedupe_key FROM outbox WHERE kind = 'digest' AND dedupe_key LIKE 'digest:2026-11-29:%' ORDER BY id"
        ),
        [
            format!("digest:2026-11-29:{TEAM}"),
            format!("digest:2026-11-29:{DUTY}")
        ]
    );

    // Later the same local day, and just after midnight UTC-wise but
    // before the hour of the next local day: nothing more.
    rig.ok(
        &["cases", "set-status", "LR-2026-0006", "closed"],
        "2026-11-29T12:00:00Z",
    );
    rig.once("2026-11-29T21:00:00Z", "Europe/Gibraltar");
    rig.once("2026-11-30T06:30:00Z", "Europe/Gibraltar");
    assert_eq!(digests(), 4, "once a day");
    // The next day's hour: a fresh digest, of the log as it is then.
    rig.once("2026-11-30T07:00:00Z", "Europe/Gibraltar");
    assert_eq!(digests(), 6);
    let got = sink.wait_for(before + 4, WAIT);
    let day30 = with_subject(&got, "digest 2026-11-30");
    assert_eq!(day30.len(), 2);
    let (subject, body) = parsed(&day30[0]);
    assert_eq!(
        subject,
        "legal-intake daily digest 2026-11-30: 6 open, 1 overdue, 1 quarantined"
    );
    assert_eq!(section(&body, "Quarantine"), ["LR-2026-0007"]);
    assert_eq!(sink.received().len(), before + 4, "nothing sent twice");

    // Queuing is an audit event; sending is recorded like a reply; the
    // digests' heads stay in the chain.
    assert_eq!(
        rig.count("SELECT count(*) FROM events WHERE kind = 'digest_queued' AND case_id IS NULL"),
        6
    );
    assert_eq!(rig.sent("digest"), 6);
    for head in [&heads[0], &head_in(&body)] {
        let (ok, text) = rig.audit(Some(head));
        assert!(ok, "{text}");
    }
}

#[test]
fn the_daemon_queues_the_digest_by_itself_and_a_restart_does_not_repeat_it() {
    let sink = Sink::start();
    let rig = Rig::new(&sink, &notify(&[TEAM], 8));
    rig.ingest(&[&police_request_with("Order", &[])], T);
    // After the filing (so its mail is due) and the digest hour.
    let now = "2026-11-02T10:30:00Z";
    let mut daemon = rig.command(&["run"], Some(now), "UTC").spawn().unwrap();
    // The acknowledgement, the notice and the day's digest.
    let got = sink.wait_for(3, Duration::from_secs(30));
    stop(&mut daemon);
    let digest = with_subject(&got, "legal-intake daily digest 2026-11-02");
    assert_eq!(
        digest.len(),
        1,
        "{:?}",
        got.iter().map(|r| parsed(r).0).collect::<Vec<_>>()
    );
    assert_eq!(
        parsed(&digest[0]).0,
        "legal-intake daily digest 2026-11-02: 1 open, 0 overdue, 0 quarantined"
    );

    // A restart the same day: the new notice goes out, the digest does not
    // again (the daemon's sending task looks for the digest before every
    // drain, so the notice arriving proves it looked).
    rig.ingest(&[&police_request_with("Second order", &[])], T);
    let mut daemon = rig.command(&["run"], Some(now), "UTC").spawn().unwrap();
    wait_for(Duration::from_secs(30), "the second notice", || {
        with_subject(&sink.received(), "[LR-2026-0002] New case").len() == 1
    });
    stop(&mut daemon);
    let all = sink.received();
    assert_eq!(with_subject(&all, "daily digest").len(), 1);
    assert_eq!(
        rig.count("SELECT count(*) FROM outbox WHERE kind = 'digest'"),
        1
    );
    assert!(rig.dovecot.mailboxes().iter().any(|m| m == "Processed"));
}

#[test]
fn without_notify_nothing_is_queued_for_the_team() {
    let sink = Sink::start();
    let rig = Rig::new(&sink, "");
    let first = police_request_with("Order", &[]);
    let follow_up = police_request_with("Re: Order", &[("In-Reply-To", &message_id(&first))]);
    rig.ingest(&[&first, &follow_up, &forged("Forged")], T);
    // Late in the day, in any zone: no digest either.
    rig.once("2026-11-02T23:30:00Z", "Europe/Gibraltar");
    assert_eq!(
        rig.texts("SELECT kind FROM outbox ORDER BY id"),
        ["acknowledgement"]
    );
    assert_eq!(
        rig.count("SELECT count(*) FROM events WHERE kind IN ('notice_queued', 'digest_queued')"),
        0
    );
    let got = sink.wait_for(1, WAIT);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_tos, vec!["officer@police.gi".to_string()]);
    let (ok, text) = rig.audit(None);
    assert!(ok, "{text}");
}
