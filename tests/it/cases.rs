//! The case log, end to end: `ingest` files DKIM-signed messages verified
//! against the real test DNS server into a real SQLite file, and `cases`,
//! `audit verify` and `cases export` read and change it — idempotence,
//! threading, numbering, state transitions, tampering, concurrency and
//! crash safety.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use rusqlite::Connection;
use serde_json::Value;
use testkit::mail::with_header;

use crate::support::*;

// ---- The world of these tests ------------------------------------------------

/// The instant the binary is told it is, unless a test says otherwise:
/// references and reply limits must not depend on when the tests run.
const NOW: &str = "2026-11-02T10:00:00Z";

/// No reply limit per sender: tests that file hundreds of requests from
/// one address want every reply queued.
const UNLIMITED: &str = "[limits]\nreplies_per_sender_per_day = 1000000\n";

/// A case log in a temporary installation.
struct Log {
    install: Install,
}

impl Log {
    fn new() -> Log {
        Self::with("")
    }

    /// `extra` is appended to the configuration (e.g. a `[limits]` table).
    fn with(extra: &str) -> Log {
        Log {
            install: Install::new(extra),
        }
    }

    fn dir(&self) -> &Path {
        self.install.dir.path()
    }

    fn db_path(&self) -> PathBuf {
        self.dir().join("cases.sqlite")
    }

    fn command(&self, now: Option<&str>, args: &[&str]) -> Command {
        // `$USER` is anyone's to set: the actor comes from the real
        // user ID, with the sudo caller recorded beside it.
        let mut cmd = self
            .install
            .operator_command(args, Some(now.unwrap_or(NOW)));
        cmd.env("LEGAL_INTAKE_LOG", "warn");
        cmd
    }

    /// `ingest` with `flags` over the files, at `now`.
    fn ingest_command(&self, now: Option<&str>, flags: &[&str], files: &[PathBuf]) -> Command {
        let mut args: Vec<String> = ["ingest"]
            .iter()
            .chain(flags)
            .map(|a| a.to_string())
            .collect();
        args.extend(files.iter().map(|f| f.display().to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.command(now, &args)
    }

    /// Runs the binary at `now` ([`NOW`] when `None`).
    fn run_at(&self, now: Option<&str>, args: &[&str]) -> Output {
        self.command(now, args).output().expect("run legal-intake")
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_at(None, args)
    }

    /// Writes messages to files and ingests them in one process at `now`;
    /// the parsed `--json` array.
    fn ingest_at(&self, now: Option<&str>, messages: &[&[u8]]) -> Vec<Value> {
        let files: Vec<PathBuf> = messages.iter().map(|m| self.write(m)).collect();
        self.ingest_files_at(now, &files)
    }

    fn ingest(&self, messages: &[&[u8]]) -> Vec<Value> {
        self.ingest_at(None, messages)
    }

    fn ingest_files_at(&self, now: Option<&str>, files: &[PathBuf]) -> Vec<Value> {
        let out = self
            .ingest_command(now, &["--json"], files)
            .output()
            .expect("run legal-intake");
        let v: Value = serde_json::from_slice(&out.stdout).expect("ingest --json prints JSON");
        let v = v.as_array().expect("ingest --json prints an array").clone();
        // 75 (EX_TEMPFAIL) exactly when a message was deferred, so that an
        // MTA piping into `ingest` keeps it and tries again.
        let deferred = v.iter().any(|o| o["filing"] == "deferred");
        assert_eq!(
            out.status.code(),
            Some(if deferred { 75 } else { 0 }),
            "ingest: {}",
            text(&out)
        );
        v
    }

    /// Writes a message into a new file of the installation.
    fn write(&self, raw: &[u8]) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!("m{}.eml", N.fetch_add(1, Ordering::Relaxed));
        self.install.file(&name, raw)
    }

    fn show(&self, id: &str) -> Value {
        let out = self.run(&["cases", "show", id, "--json"]);
        assert!(out.status.success(), "cases show {id}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn status(&self, id: &str) -> String {
        self.show(id)["case"]["status"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn references(&self) -> Vec<String> {
        let out = self.run(&["cases", "list", "--json"]);
        assert!(out.status.success(), "cases list: {}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["reference"].as_str().unwrap().to_string())
            .collect()
    }

    fn audit(&self, head: Option<&str>) -> Output {
        let mut args = vec!["audit", "verify"];
        if let Some(h) = head {
            args.extend(["--head", h]);
        }
        self.run(&args)
    }

    fn assert_intact(&self) {
        let out = self.audit(None);
        assert!(out.status.success(), "audit verify: {}", text(&out));
        assert!(text(&out).contains("intact"), "{}", text(&out));
    }

    fn db(&self) -> Connection {
        self.install.db()
    }

    fn count(&self, sql: &str) -> i64 {
        self.install.count(sql)
    }

    fn head(&self) -> String {
        self.install
            .value("SELECT hash FROM events ORDER BY id DESC LIMIT 1")
    }

    /// The Message-ID of the first reply queued on case `id`.
    fn reply_msgid(&self, id: &str) -> String {
        s(&self.show(id)["replies"][0]["msgid"]).to_string()
    }

    /// `cases export` of case `id` into `dir`.
    fn export(&self, id: &str, dir: &Path) -> Output {
        self.run(&["cases", "export", id, "--out", dir.to_str().unwrap()])
    }

    /// A copy of this log (configuration and database) to tamper with.
    fn copy(&self) -> Log {
        let copy = Log::new();
        std::fs::copy(self.db_path(), copy.db_path()).unwrap();
        copy
    }
}

/// stdout and stderr together, for assertions and failure messages.
/// The actor every change of these tests records: the test process's
/// real user (as `id -un` names it), run "through sudo" by alice.
fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

/// The command exited with `status` and said `what`.
fn failed_with(out: &Output, status: i32, what: &str) {
    assert_eq!(code(out), status, "{}", text(out));
    assert!(text(out).contains(what), "{}", text(out));
}

/// (case, decision, whether a new case) of each filing.
fn outcomes(out: &[Value]) -> Vec<(&str, &str, bool)> {
    out.iter()
        .map(|o| {
            (
                s(&o["case"]),
                s(&o["decision"]),
                o["new_case"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// A request from HM Government of Gibraltar (Ed25519): acknowledged.
fn government(subject: &str) -> Vec<u8> {
    signed(
        &request("Attorney General <ag@gibraltar.gov.gi>", subject),
        &world().keys.government,
        "gibraltar.gov.gi",
        "ed2026",
    )
}

/// An authenticated request from a foreign agency: rejected.
fn foreign(subject: &str) -> Vec<u8> {
    signed(
        &request("Ermittler <ermittler@bka.de>", subject),
        &world().keys.other,
        "bka.de",
        "sel",
    )
}

// ---- Filing ------------------------------------------------------------------

#[test]
fn filing_keeps_bytes_verdict_evidence_and_queues_the_reply() {
    let log = Log::new();
    let ack = police_request("Production order 2026/117");
    let rej = foreign("Auskunftsersuchen");
    let quar = forged("Urgent disclosure");
    let out = log.ingest(&[&ack, &rej, &quar]);
    let decisions: Vec<(&str, &str, &Value)> = out
        .iter()
        .map(|o| (s(&o["case"]), s(&o["decision"]), &o["reply"]))
        .collect();
    let (ackn, rejn) = (Value::from("acknowledgement"), Value::from("rejection"));
    assert_eq!(
        decisions,
        [
            ("LR-2026-0001", "acknowledge", &ackn),
            ("LR-2026-0002", "reject", &rejn),
            ("LR-2026-0003", "quarantine", &Value::Null),
        ]
    );
    assert!(
        out.iter()
            .all(|o| o["new"] == true && o["new_case"] == true)
    );

    // The bytes, byte for byte, with their hash.
    let stored: Vec<u8> = log
        .db()
        .query_row("SELECT raw FROM messages WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, ack);
    assert_eq!(s(&out[0]["sha256"]), legal_intake::audit::sha256_hex(&ack));

    // Statuses follow the decision.
    assert_eq!(log.status("LR-2026-0001"), "received");
    assert_eq!(log.status("LR-2026-0002"), "out_of_jurisdiction");
    assert_eq!(log.status("LR-2026-0003"), "quarantined");

    // The evidence as at receipt: key record, SPF record, trusted hop.
    let shown = log.show("LR-2026-0001");
    let case = &shown["case"];
    assert_eq!(case["agency"], "Royal Gibraltar Police");
    assert_eq!(case["requester"], "officer@police.gi");
    assert_eq!(case["kind"], "court_order");
    let verdict = &shown["messages"][0]["verdict"];
    assert_eq!(verdict["decision"], "acknowledge");
    let evidence = &verdict["evidence"];
    assert_eq!(evidence["dkim"][0]["result"], "pass");
    assert!(s(&evidence["dkim"][0]["key_record"]).starts_with("v=DKIM1"));
    assert!(s(&evidence["spf"]["record"]).starts_with("v=spf1"));
    assert!(s(&evidence["spf"]["received"]).contains(MX));
    assert_eq!(evidence["dmarc"]["record"], "v=DMARC1; p=reject");
    assert_eq!(
        shown["messages"][0]["findings"]["accounts"],
        serde_json::json!(["i-ABCD-EFGH-JKLM"])
    );

    // The reply, queued for a renderer.
    let reply = &shown["replies"][0];
    assert_eq!(reply["kind"], "acknowledgement");
    assert_eq!(reply["recipient"], "officer@police.gi");
    assert_eq!(reply["status"], "pending");
    assert_eq!(reply["attempts"], 0);
    assert_eq!(reply["next_attempt_at"], reply["queued_at"]);
    assert_eq!(s(&reply["in_reply_to"]), message_id(&ack));
    assert_eq!(reply["subject"], "Production order 2026/117");
    let msgid = s(&reply["msgid"]);
    assert!(
        msgid.starts_with("<LR-2026-0001.") && msgid.ends_with("@ivpn.net>"),
        "{msgid}"
    );
    assert_eq!(log.show("LR-2026-0002")["replies"][0]["kind"], "rejection");
    assert!(
        log.show("LR-2026-0003")["replies"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Every filing, verdict and reply is an event.
    let kinds: Vec<&str> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| s(&e["kind"]))
        .collect();
    assert_eq!(
        kinds,
        ["case_opened", "message_filed", "verdict", "reply_queued"]
    );
    log.assert_intact();
}

#[test]
fn the_evidence_keeps_the_txt_record_that_is_the_key() {
    let log = Log::new();
    // Another TXT record stands before the key at its name.
    let raw = from_police_server(&signed(
        &request("Detective Inspector <officer@police.gi>", "Order"),
        &world().keys.police,
        "police.gi",
        "multi",
    ));
    assert_eq!(log.ingest(&[&raw])[0]["decision"], "acknowledge");
    let shown = log.show("LR-2026-0001");
    let dkim = &shown["messages"][0]["verdict"]["evidence"]["dkim"][0];
    assert_eq!(dkim["result"], "pass");
    assert_eq!(dkim["key_record"], world().keys.police.dns_txt);
}

#[test]
fn the_log_line_names_the_message_id_of_a_message_without_a_from() {
    let log = Log::new();
    let mut raw = forged("No author");
    // Drop the From header: the Message-ID is what finds it again.
    let text = String::from_utf8(raw).unwrap();
    raw = text
        .split_inclusive("\r\n")
        .filter(|l| !l.starts_with("From:"))
        .collect::<String>()
        .into_bytes();
    let id = message_id(&raw);
    let file = log.write(&raw);
    let out = log
        .command(None, &["ingest", file.to_str().unwrap()])
        .env("LEGAL_INTAKE_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("decision=quarantine"))
        .unwrap_or_else(|| panic!("no log line: {stderr}"));
    assert!(line.contains("from=-"), "{line}");
    assert!(line.contains(&format!("msgid={id}")), "{line}");
}

#[test]
fn the_same_bytes_are_filed_once() {
    let log = Log::new();
    let raw = police_request("Preservation request");
    let file = log.write(&raw);
    let first = log.ingest_files_at(None, &[file.clone(), file.clone()]);
    assert_eq!(first[0]["new"], true);
    assert_eq!(first[1]["new"], false);
    assert_eq!(first[1]["filing"], "duplicate");
    assert_eq!(first[1]["case"], "LR-2026-0001");
    let again = log.ingest_files_at(None, std::slice::from_ref(&file));
    assert_eq!(
        (&again[0]["new"], &again[0]["case"]),
        (&Value::Bool(false), &Value::from("LR-2026-0001"))
    );
    // Standard input is the same message.
    let out = log
        .command(None, &["ingest", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&raw)?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("case=LR-2026-0001") && text(&out).contains("new=no"),
        "{}",
        text(&out)
    );

    assert_eq!(log.count("SELECT count(*) FROM messages"), 1);
    assert_eq!(log.count("SELECT count(*) FROM cases"), 1);
    assert_eq!(log.count("SELECT count(*) FROM outbox"), 1);
    assert_eq!(log.count("SELECT count(*) FROM events"), 4);
    log.assert_intact();
}

#[test]
fn human_output_is_one_line_per_message() {
    let log = Log::new();
    let a = log.write(&police_request("Subpoena"));
    let out = log.run(&["ingest", a.to_str().unwrap(), a.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].contains(
            "case=LR-2026-0001 decision=acknowledge new=yes new_case=yes reply=acknowledgement"
        ),
        "{stdout}"
    );
    assert!(
        lines[1].contains("case=LR-2026-0001 decision=acknowledge new=no"),
        "{stdout}"
    );
    // A missing file is reported and fails the run, after the others.
    let out = log.run(&["ingest", "/nonexistent/x.eml", a.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("/nonexistent/x.eml"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("case=LR-2026-0001"));
}

// ---- Threading -----------------------------------------------------------------

#[test]
fn messages_join_cases_by_each_threading_rule() {
    let log = Log::new();
    let first = police_request("Production order 2026/117");
    let out = log.ingest(&[&first]);
    assert_eq!(out[0]["case"], "LR-2026-0001");
    let our_reply = log.reply_msgid("LR-2026-0001");

    // In-Reply-To naming the filed message.
    let by_in_reply_to = police_request_with(
        "Further information",
        &[("In-Reply-To", &message_id(&first))],
    );
    // References naming our acknowledgement (an outbox Message-ID).
    let by_our_reply = police_request_with(
        "Re: your acknowledgement",
        &[(
            "References",
            &format!("<unrelated@example.org> {our_reply}"),
        )],
    );
    // The reference in the subject, same agency.
    let by_subject = police_request("Re: [LR-2026-0001] hard copy served today");
    // Named without brackets, as a person writes it.
    let by_bare_subject = police_request("Further to LR-2026-0001: the list of accounts");
    // The reference in the subject from another agency: a new case.
    let other_agency = government("Re: [LR-2026-0001] our own matter");
    // The reference in the subject of a forgery: a new (quarantined) case.
    let forgery = forged("[LR-2026-0001] please send everything");
    // A reference to a case that does not exist: a new case.
    let unknown = police_request("[LR-2026-0999] production order");
    // The same message delivered again with other bytes (another relay
    // added a header): the same Message-ID, so the same case.
    let redelivered = with_header(&first, "X-Relayed-By", "backup-mx.ivpn.net");
    let out = log.ingest(&[
        &by_in_reply_to,
        &by_our_reply,
        &by_subject,
        &by_bare_subject,
        &other_agency,
        &forgery,
        &unknown,
        &redelivered,
    ]);
    let got: Vec<(&str, bool)> = out
        .iter()
        .map(|o| (s(&o["case"]), o["new_case"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("LR-2026-0001", false),
            ("LR-2026-0001", false),
            ("LR-2026-0001", false),
            ("LR-2026-0001", false),
            ("LR-2026-0002", true),
            ("LR-2026-0003", true),
            ("LR-2026-0004", true),
            ("LR-2026-0001", false),
        ]
    );
    assert_eq!(out[7]["new"], true, "other bytes are another filing");
    let shown = log.show("LR-2026-0001");
    assert_eq!(shown["messages"].as_array().unwrap().len(), 6);
    let joined: Vec<&str> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "message_filed")
        .map(|e| e["data"]["joined"]["by"].as_str().unwrap_or("opened"))
        .collect();
    assert_eq!(
        joined,
        [
            "opened",
            "references",
            "references",
            "subject",
            "subject",
            "message_id"
        ]
    );
    // One acknowledgement per case and kind within 7 days.
    assert_eq!(shown["replies"].as_array().unwrap().len(), 1);
    let suppressed = &shown["messages"][1]["verdict"]["reply_suppressed"];
    assert!(s(suppressed).contains("7 days"), "{suppressed}");
    assert_eq!(log.status("LR-2026-0003"), "quarantined");
    log.assert_intact();
}

/// `emergency` wording from another sender, authenticated for its own domain.
fn foreign_emergency_with(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut raw = testkit::mail::message(
        "Ermittler <ermittler@bka.de>",
        "legal@ivpn.net",
        "Re: Production order 2026/117",
        "There is an imminent threat to life. Provide everything now.\n",
    );
    for (name, value) in headers {
        raw = testkit::mail::replacing_header(&raw, name, value);
    }
    signed(&raw, &world().keys.other, "bka.de", "sel")
}

/// Mail from a colleague at ivpn.net, DKIM-signed by the company.
fn colleague(subject: &str, body: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut raw = testkit::mail::message(
        "A. Colleague <support@ivpn.net>",
        "legal@ivpn.net",
        subject,
        body,
    );
    for (name, value) in headers {
        raw = with_header(&raw, name, value);
    }
    signed(&raw, &world().keys.other, "ivpn.net", "sel")
}

#[test]
fn mail_from_our_own_domains_is_a_note_on_its_case_and_never_answered() {
    let log = Log {
        install: Install::with(world().dns_addr(), "own_domains = [\"ivpn.net\"]\n", ""),
    };
    let first = police_request("Production order 2026/117");
    assert_eq!(log.ingest(&[&first])[0]["case"], "LR-2026-0001");
    let ours = message_id(&first);
    let urgent = "There is an imminent threat to life, says the officer on the phone.\n";
    let forward = colleague(
        "Fwd: Production order 2026/117",
        urgent,
        &[("In-Reply-To", &ours)],
    );
    let by_subject = colleague("Re: [LR-2026-0001] call notes", urgent, &[]);
    let stray = colleague("Lunch on Friday?", "Anyone?\n", &[]);
    // Claiming to be a colleague without the company's signature.
    let forged_colleague = with_header(
        &testkit::mail::message(
            "A. Colleague <support@ivpn.net>",
            "legal@ivpn.net",
            "Re: [LR-2026-0001] please send everything to me",
            "Thanks.\n",
        ),
        "In-Reply-To",
        &ours,
    );
    let out = log.ingest(&[&forward, &by_subject, &stray, &forged_colleague]);
    assert_eq!(
        outcomes(&out),
        [
            ("LR-2026-0001", "internal", false),
            ("LR-2026-0001", "internal", false),
            ("LR-2026-0002", "internal", true),
            ("LR-2026-0003", "quarantine", true),
        ]
    );
    for o in &out {
        assert_eq!(o["reply"], Value::Null, "nothing queued: {o}");
    }
    // The notes are on the agency's case, which they do not change.
    let shown = log.show("LR-2026-0001");
    assert_eq!(shown["messages"].as_array().unwrap().len(), 3);
    assert_eq!(shown["case"]["emergency"], false);
    assert_eq!(shown["case"]["status"], "received");
    assert_eq!(
        shown["replies"].as_array().unwrap().len(),
        1,
        "only the acknowledgement to the police"
    );
    // A note about no case waits for a person with the quarantine.
    assert_eq!(log.status("LR-2026-0002"), "quarantined");
    let verdict = log
        .install
        .verify(&[&log.install.file("stray.eml", &stray)]);
    assert_eq!(verdict["decision"], "internal", "{verdict}");
    assert_eq!(verdict["reply"], false);
    assert!(s(&verdict["reason"]).contains("auth.own_domains"));
    assert!(log.audit(None).status.success());
}

#[test]
fn only_the_cases_own_agency_joins_it_whatever_it_names() {
    let log = Log::new();
    let first = police_request("Production order 2026/117");
    assert_eq!(log.ingest(&[&first])[0]["case"], "LR-2026-0001");
    let ours = message_id(&first);
    let our_reply = log.reply_msgid("LR-2026-0001");

    // Another authenticated sender naming the case every way it can, with
    // wording that would flag the case as an emergency.
    let by_in_reply_to = foreign_emergency_with(&[("In-Reply-To", &ours)]);
    let by_references = foreign_emergency_with(&[("References", &our_reply)]);
    let by_message_id = foreign_emergency_with(&[("Message-ID", &ours)]);
    // Another Gibraltar agency is not the case's agency either.
    let other_agency = signed(
        &with_header(
            &request(
                "Attorney General <ag@gibraltar.gov.gi>",
                "Re: Production order",
            ),
            "In-Reply-To",
            &ours,
        ),
        &world().keys.government,
        "gibraltar.gov.gi",
        "ed2026",
    );
    // A forgery claiming the police, threaded by In-Reply-To and by a copy
    // of the first message's Message-ID.
    let forged_reply = with_header(
        &forged("Re: Production order 2026/117"),
        "In-Reply-To",
        &ours,
    );
    let forged_copy =
        testkit::mail::replacing_header(&forged("Production order 2026/117"), "Message-ID", &ours);
    let out = log.ingest(&[
        &by_in_reply_to,
        &by_references,
        &by_message_id,
        &other_agency,
        &forged_reply,
        &forged_copy,
    ]);
    assert_eq!(
        outcomes(&out),
        [
            ("LR-2026-0002", "reject", true),
            ("LR-2026-0003", "reject", true),
            ("LR-2026-0004", "reject", true),
            ("LR-2026-0005", "acknowledge", true),
            ("LR-2026-0006", "quarantine", true),
            ("LR-2026-0007", "quarantine", true),
        ]
    );

    // The agency's case is untouched: one message, no emergency flag.
    let shown = log.show("LR-2026-0001");
    assert_eq!(shown["messages"].as_array().unwrap().len(), 1);
    assert_eq!(shown["case"]["emergency"], false);
    assert_eq!(shown["replies"].as_array().unwrap().len(), 1);
    // No reply to anyone else carries the agency's reference.
    let db = log.db();
    let mut stmt = db
        .prepare(
            "SELECT o.recipient, c.reference, o.msgid FROM outbox o \
             JOIN cases c ON c.id = o.case_id WHERE o.recipient <> 'officer@police.gi'",
        )
        .unwrap();
    let others: Vec<(String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(others.len(), 4, "{others:?}");
    for reply in &others {
        let rendered = format!("{reply:?}");
        assert!(!rendered.contains("LR-2026-0001"), "{rendered}");
    }
    log.assert_intact();
}

#[test]
fn foreign_agencies_thread_by_subject_within_their_own_domain() {
    let log = Log::new();
    let out = log.ingest(&[&foreign("Ersuchen")]);
    assert_eq!(out[0]["case"], "LR-2026-0001");
    let out = log.ingest(&[
        &foreign("AW: [LR-2026-0001] Ersuchen"),
        &police_request("[LR-2026-0001] not yours"),
    ]);
    assert_eq!(out[0]["case"], "LR-2026-0001");
    assert_eq!(out[1]["case"], "LR-2026-0002");
}

// ---- Numbering and time ----------------------------------------------------------

#[test]
fn references_are_gap_free_per_year() {
    let log = Log::new();
    let dec = Some("2026-12-31T23:59:00Z");
    let jan = Some("2027-01-01T00:00:30Z");
    let a = police_request("a");
    let out = log.ingest_at(dec, &[&a, &police_request("b")]);
    assert_eq!(
        (s(&out[0]["case"]), s(&out[1]["case"])),
        ("LR-2026-0001", "LR-2026-0002")
    );
    // A duplicate and a deferral take no number.
    let deferred = unverifiable_request();
    let out = log.ingest_at(
        jan,
        &[&a, &deferred, &police_request("c"), &police_request("d")],
    );
    let refs: Vec<&str> = out
        .iter()
        .map(|o| o["case"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(refs, ["LR-2026-0001", "-", "LR-2027-0001", "LR-2027-0002"]);
    assert_eq!(out[1]["decision"], "defer");
    // A late message stamped in the old year continues that year.
    let out = log.ingest_at(dec, &[&police_request("e")]);
    assert_eq!(out[0]["case"], "LR-2026-0003");
    assert_eq!(
        log.references(),
        [
            "LR-2026-0001",
            "LR-2026-0002",
            "LR-2026-0003",
            "LR-2027-0001",
            "LR-2027-0002"
        ]
    );
    let opened = log.show("LR-2027-0001")["case"]["opened_at"].clone();
    assert_eq!(opened, "2027-01-01T00:00:30Z");
    // A bad override is a usage error.
    let out = log.run_at(Some("yesterday"), &["cases", "list"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    log.assert_intact();
}

#[test]
fn deferrals_are_counted_until_quarantine() {
    let log = Log::with("[limits]\ndefer_max_tries = 3\n");
    let raw = unverifiable_request();
    let out = log.ingest(&[&raw]);
    assert_eq!(out[0]["decision"], "defer", "{}", out[0]);
    assert_eq!(out[0]["filing"], "deferred");
    assert_eq!(out[0]["deferrals"], 1);
    assert_eq!(out[0]["case"], Value::Null);
    assert_eq!(log.count("SELECT count(*) FROM messages"), 0);
    // As an MTA pipe sees it (second try): exit 75 in the human form too.
    let piped = log.run(&["ingest", log.write(&raw).to_str().unwrap()]);
    assert_eq!(piped.status.code(), Some(75), "{}", text(&piped));
    assert!(text(&piped).contains("decision=defer"), "{}", text(&piped));
    let out = log.ingest(&[&raw]);
    assert_eq!(out[0]["decision"], "quarantine", "{}", out[0]);
    assert_eq!(out[0]["case"], "LR-2026-0001");
    assert!(s(&out[0]["reason"]).contains("3 tries"));
    assert_eq!(log.status("LR-2026-0001"), "quarantined");
    let out = log.ingest(&[&raw]);
    assert_eq!(out[0]["filing"], "duplicate");
    log.assert_intact();
}

#[test]
fn reply_limits_come_from_the_log() {
    let log = Log::with("[limits]\nreplies_per_sender_per_day = 2\n");
    let day1 = Some("2026-11-02T09:00:00Z");
    let out = log.ingest_at(
        day1,
        &[
            &police_request("one"),
            &police_request("two"),
            &police_request("three"),
        ],
    );
    let replies: Vec<&Value> = out.iter().map(|o| &o["reply"]).collect();
    assert_eq!(
        replies,
        [
            &Value::from("acknowledgement"),
            &Value::from("acknowledgement"),
            &Value::Null
        ]
    );
    assert!(
        s(&log.show("LR-2026-0003")["messages"][0]["verdict"]["reply_suppressed"])
            .contains("replies_per_sender_per_day")
    );
    // A day later the sender may be answered again.
    let out = log.ingest_at(Some("2026-11-03T09:00:01Z"), &[&police_request("four")]);
    assert_eq!(out[0]["reply"], "acknowledgement");
    // The same case and kind: not again within 7 days, again after.
    let follow = |subject: &str| police_request(&format!("[LR-2026-0001] {subject}"));
    let out = log.ingest_at(Some("2026-11-08T09:00:00Z"), &[&follow("within a week")]);
    assert_eq!(out[0]["reply"], Value::Null);
    assert!(
        s(&log.show("LR-2026-0001")["messages"][1]["verdict"]["reply_suppressed"])
            .contains("7 days")
    );
    let out = log.ingest_at(Some("2026-11-09T09:00:01Z"), &[&follow("after a week")]);
    assert_eq!(out[0]["reply"], "acknowledgement");
    log.assert_intact();
}

// ---- The legal team's commands -------------------------------------------------

/// Three acknowledged cases, one quarantined, one out of jurisdiction.
fn five_cases(log: &Log) {
    let out = log.ingest(&[
        &police_request("one"),
        &police_request("two"),
        &police_request("three"),
        &forged("four"),
        &foreign("five"),
    ]);
    assert_eq!(out.len(), 5);
}

const ALL: [&str; 8] = [
    "received",
    "under_review",
    "responded",
    "challenged",
    "rejected",
    "closed",
    "quarantined",
    "out_of_jurisdiction",
];

/// The moves allowed from a status (the table in `src/case.rs`).
fn allowed(from: &str) -> &'static [&'static str] {
    match from {
        "received" => &["under_review"],
        "under_review" => &["responded", "challenged", "rejected"],
        "challenged" => &["responded", "closed"],
        "responded" | "rejected" => &["closed"],
        "quarantined" | "out_of_jurisdiction" => &["under_review", "closed"],
        "closed" => &["under_review"],
        _ => unreachable!(),
    }
}

/// Tries every move that is not allowed from the case's status: each is
/// refused with exit 1 and a message naming what is allowed, and the
/// case does not change.
fn refused_from(log: &Log, id: &str, from: &str) {
    assert_eq!(log.status(id), from);
    for to in ALL.iter().filter(|t| !allowed(from).contains(t)) {
        let out = log.run(&["cases", "set-status", id, to, "--note", "try"]);
        assert_eq!(code(&out), 1, "{from} → {to}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(id) && (err.contains("cannot move") || err.contains("already")),
            "{from} → {to}: {err}"
        );
    }
    assert_eq!(log.status(id), from);
}

fn moved(log: &Log, id: &str, to: &str, note: Option<&str>) {
    let mut args = vec!["cases", "set-status", id, to];
    if let Some(n) = note {
        args.extend(["--note", n]);
    }
    let out = log.run(&args);
    assert!(out.status.success(), "{id} → {to}: {}", text(&out));
    assert_eq!(log.status(id), to);
}

#[test]
fn every_status_transition_allowed_and_refused() {
    let log = Log::new();
    five_cases(&log);
    let events_before = log.count("SELECT count(*) FROM events");

    // Case 1: received → under_review → challenged → responded → closed →
    // under_review (reopened, with a note) → rejected → closed.
    refused_from(&log, "LR-2026-0001", "received");
    moved(&log, "LR-2026-0001", "under_review", None);
    refused_from(&log, "LR-2026-0001", "under_review");
    moved(&log, "LR-2026-0001", "challenged", Some("overbroad"));
    refused_from(&log, "LR-2026-0001", "challenged");
    moved(&log, "LR-2026-0001", "responded", None);
    refused_from(&log, "LR-2026-0001", "responded");
    moved(&log, "LR-2026-0001", "closed", None);
    refused_from(&log, "LR-2026-0001", "closed");
    let out = log.run(&["cases", "set-status", "LR-2026-0001", "under_review"]);
    failed_with(&out, 1, "--note");
    moved(
        &log,
        "LR-2026-0001",
        "under_review",
        Some("agency sent a follow-up"),
    );
    moved(&log, "LR-2026-0001", "rejected", None);
    refused_from(&log, "LR-2026-0001", "rejected");
    moved(&log, "LR-2026-0001", "closed", None);
    // Case 2: under_review → challenged → closed.
    moved(&log, "LR-2026-0002", "under_review", None);
    moved(&log, "LR-2026-0002", "challenged", None);
    moved(&log, "LR-2026-0002", "closed", Some("order quashed"));
    // Case 3: under_review → responded → closed.
    moved(&log, "LR-2026-0003", "under_review", None);
    moved(&log, "LR-2026-0003", "responded", None);
    moved(&log, "LR-2026-0003", "closed", None);
    // Quarantined and out of jurisdiction: a person may review or close.
    refused_from(&log, "LR-2026-0004", "quarantined");
    refused_from(&log, "LR-2026-0005", "out_of_jurisdiction");
    moved(&log, "LR-2026-0004", "under_review", None);
    moved(&log, "LR-2026-0005", "closed", None);
    let more = log.ingest(&[&forged("six"), &foreign("seven")]);
    assert_eq!(
        (s(&more[0]["case"]), s(&more[1]["case"])),
        ("LR-2026-0006", "LR-2026-0007")
    );
    moved(&log, "LR-2026-0006", "closed", None);
    moved(&log, "LR-2026-0007", "under_review", None);

    // Every move is one event naming the user and the note; refusals none.
    assert_eq!(
        log.count("SELECT count(*) FROM events WHERE kind = 'status_changed'"),
        17
    );
    let (actor, data): (String, String) = log
        .db()
        .query_row(
            "SELECT actor, data FROM events WHERE kind = 'status_changed' ORDER BY id LIMIT 1 OFFSET 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(actor, operator());
    let data: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        data,
        serde_json::json!({"from": "under_review", "to": "challenged", "note": "overbroad"})
    );
    assert!(log.count("SELECT count(*) FROM events") > events_before);

    // Usage errors exit 2; an unknown case exits 1.
    for args in [
        ["cases", "set-status", "LR-2026-0001", "archived"],
        ["cases", "set-status", "LR-26-1", "closed"],
    ] {
        assert_eq!(code(&log.run(&args)), 2, "{args:?}");
    }
    let out = log.run(&["cases", "set-status", "LR-2026-0999", "closed"]);
    failed_with(&out, 1, "no case LR-2026-0999");

    // `cases list --status`.
    let out = log.run(&["cases", "list", "--status", "closed", "--json"]);
    let closed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let refs: Vec<&str> = closed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| s(&c["reference"]))
        .collect();
    assert_eq!(
        refs,
        [
            "LR-2026-0001",
            "LR-2026-0002",
            "LR-2026-0003",
            "LR-2026-0005",
            "LR-2026-0006"
        ]
    );
    log.assert_intact();
}

#[test]
fn a_quarantined_request_is_released_only_with_a_persons_note() {
    let log = Log::new();
    let filed = log.ingest(&[
        &forged("Urgent disclosure"),
        &police_request("Production order"),
    ]);
    let (held, genuine) = (s(&filed[0]["case"]), s(&filed[1]["case"]));
    assert_eq!(filed[0]["decision"], "quarantine");
    // The decision is a person's: without a note, or for a case that is
    // not quarantined, nothing happens.
    let out = log.run(&["cases", "release", held, "--note", " "]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = log.run(&["cases", "release", genuine, "--note", "x"]);
    failed_with(&out, 1, "only a quarantined case is released");
    assert_eq!(log.status(held), "quarantined");

    let out = log.run(&[
        "cases",
        "release",
        held,
        "--note",
        "confirmed by phone with DI Smith on +350 200 00000",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("acknowledgement to officer@police.gi queued"),
        "{}",
        text(&out)
    );
    let shown = log.show(held);
    assert_eq!(shown["case"]["status"], "under_review");
    let replies = shown["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(
        (
            s(&replies[0]["kind"]),
            s(&replies[0]["recipient"]),
            s(&replies[0]["status"])
        ),
        ("acknowledgement", "officer@police.gi", "pending")
    );
    assert_eq!(replies[0]["in_reply_to"], shown["messages"][0]["msgid"]);
    let me = operator();
    let queued = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "reply_queued")
        .expect("a reply_queued event");
    assert_eq!(queued["actor"], me.as_str());
    assert_eq!(queued["data"]["released_by"], me.as_str());
    assert_eq!(
        queued["data"]["note"],
        "confirmed by phone with DI Smith on +350 200 00000"
    );
    // Released once: a second release is refused.
    let out = log.run(&["cases", "release", held, "--note", "again"]);
    assert_eq!(out.status.code(), Some(1));
    log.assert_intact();
}

#[test]
fn stats_count_requests_by_decision_and_outcome_with_quarantine_apart() {
    let log = Log::new();
    let filed = log.ingest(&[
        &police_request("Production order"),
        &government("Court order 2026/7"),
        &foreign("Auskunftsersuchen"),
        &forged("Urgent disclosure"),
    ]);
    let police = s(&filed[0]["case"]).to_string();
    let out = log.run(&["cases", "set", &police, "--outcome", "none_held"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(log.show(&police)["case"]["outcome"], "none_held");
    let out = log.run(&["cases", "set", &police, "--outcome", "lost"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let out = log.run(&["cases", "stats", "--year", "2026", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let f: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (f["cases"].as_u64(), f["requests"].as_u64()),
        (Some(4), Some(3))
    );
    assert_eq!(f["quarantined"], 1);
    assert_eq!(f["by_decision"]["acknowledge"], 2);
    assert_eq!(f["by_decision"]["reject"], 1);
    assert_eq!(f["by_agency"]["Royal Gibraltar Police"], 1);
    assert_eq!(f["by_agency"]["HM Government of Gibraltar"], 1);
    assert_eq!(f["by_agency"]["outside Gibraltar (rejected)"], 1);
    assert_eq!(f["by_outcome"]["none_held"], 1);
    assert_eq!(f["by_outcome"]["pending"], 1);
    // Stamped with the head of the chain as it was counted.
    let head = log.head();
    assert_eq!(f["audit_head"], head.as_str());
    let out = log.run(&["cases", "stats", "--year", "2026", "--csv"]);
    let csv = String::from_utf8(out.stdout).unwrap();
    assert!(csv.starts_with("section,key,count\nyear,2026,\n"), "{csv}");
    assert!(csv.contains(&format!("\naudit_head,{head},\n")), "{csv}");
    assert!(csv.contains("\ndecision,acknowledge,2\n"), "{csv}");
    assert!(csv.contains("\napart,quarantined,1\n"), "{csv}");
    let out = log.run(&["cases", "stats", "--year", "2025"]);
    assert!(text(&out).contains("requests: 0"), "{}", text(&out));
    log.assert_intact();
}

#[test]
fn case_fields_are_set_with_an_event_each() {
    let log = Log::new();
    log.ingest(&[&police_request("Production order")]);
    let id = "LR-2026-0001";
    let out = log.run(&[
        "cases",
        "set",
        id,
        "--hard-copy-served",
        "2026-11-05",
        "--user-notice",
        "prohibited",
        "--until",
        "2027-06-30",
        "--user-notified",
        "2027-07-01",
        "--deadline",
        "2026-12-01T17:00:00+01:00",
        "--kind",
        "search-warrant",
        "--emergency",
        "yes",
        "--note",
        "served by DC Smith at reception",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = log.show(id);
    let c = &shown["case"];
    assert_eq!(c["hard_copy_served"], "2026-11-05");
    assert_eq!(c["user_notice"], "prohibited");
    assert_eq!(c["user_notice_until"], "2027-06-30");
    assert_eq!(c["user_notified"], "2027-07-01");
    assert_eq!(c["deadline"], "2026-12-01T16:00:00Z");
    assert_eq!(c["kind"], "search_warrant");
    assert_eq!(c["emergency"], true);
    let changes: Vec<(&str, &str, &Value)> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "field_changed")
        .map(|e| (s(&e["actor"]), s(&e["data"]["field"]), &e["data"]["to"]))
        .collect();
    assert_eq!(changes.len(), 7, "{changes:?}");
    let me = operator();
    assert!(changes.iter().all(|(actor, _, _)| *actor == me));
    assert!(changes.contains(&(me.as_str(), "hard_copy_served", &Value::from("2026-11-05"))));
    assert!(
        shown["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["data"]["note"] == "served by DC Smith at reception")
    );

    // Permitting notice clears the end date; `none` clears a deadline.
    let out = log.run(&[
        "cases",
        "set",
        id,
        "--user-notice",
        "permitted",
        "--deadline",
        "none",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let c = log.show(id)["case"].clone();
    assert_eq!(
        (&c["user_notice"], &c["user_notice_until"], &c["deadline"]),
        (&Value::from("permitted"), &Value::Null, &Value::Null)
    );
    // A note alone is an event too.
    let before = log.count("SELECT count(*) FROM events");
    assert!(
        log.run(&["cases", "set", id, "--note", "called the officer"])
            .status
            .success()
    );
    assert_eq!(log.count("SELECT count(*) FROM events"), before + 1);
    // Without sudo the actor is the real user alone, whatever $USER says.
    let out = log
        .command(None, &["cases", "set", id, "--deadline", "2026-12-24"])
        .env_remove("SUDO_USER")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let expected = real_user();
    let actor: String = log
        .install
        .value("SELECT actor FROM events ORDER BY id DESC LIMIT 1");
    assert_eq!(actor, expected);
    assert_ne!(actor, "mallory");

    // Bad usage exits 2 and changes nothing.
    let before = log.count("SELECT count(*) FROM events");
    for args in [
        vec!["cases", "set", id],
        vec!["cases", "set", id, "--deadline", "next friday"],
        vec!["cases", "set", id, "--until", "2027-01-01"],
        vec![
            "cases",
            "set",
            id,
            "--user-notice",
            "permitted",
            "--until",
            "2027-01-01",
        ],
        vec!["cases", "set", id, "--user-notice", "maybe"],
        vec!["cases", "set", id, "--kind", "letter"],
        vec!["cases", "set", id, "--emergency", "perhaps"],
    ] {
        let out = log.run(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}", text(&out));
    }
    assert_eq!(log.count("SELECT count(*) FROM events"), before);
    assert_eq!(
        code(&log.run(&["cases", "set", "LR-2026-0002", "--note", "x"])),
        1
    );
    log.assert_intact();
}

#[test]
fn triage_sets_emergency_and_gag_order_on_the_case() {
    let log = Log::new();
    let raw = signed(
        &testkit::mail::message(
            "Detective Inspector <officer@police.gi>",
            "legal@ivpn.net",
            "Emergency disclosure request",
            "There is an imminent threat to life. Provide the connection logs for \
             i-AB12-CD34-EF56 used from 192.0.2.44 on 2026-10-30 14:22:05 UTC.\n\
             This request is subject to a non-disclosure order: do not notify the customer.\n",
        ),
        &world().keys.police,
        "police.gi",
        "s2026",
    );
    log.ingest(&[&raw]);
    let shown = log.show("LR-2026-0001");
    let c = &shown["case"];
    assert_eq!(
        (&c["kind"], &c["emergency"], &c["user_notice"]),
        (
            &Value::from("emergency"),
            &Value::Bool(true),
            &Value::from("prohibited_unconfirmed")
        )
    );
    let f = &shown["messages"][0]["findings"];
    assert_eq!(f["accounts"], serde_json::json!(["i-AB12-CD34-EF56"]));
    assert_eq!(f["ips"], serde_json::json!(["192.0.2.44"]));
    assert!(s(&f["no_logs_hint"]).contains("no-logs"));
    let human = log.run(&["cases", "show", "LR-2026-0001"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("prohibited, to be confirmed"), "{human}");
    assert!(
        human.contains("EMERGENCY") || human.contains("YES"),
        "{human}"
    );
}

// ---- Tampering -------------------------------------------------------------------

/// A log with three filings (twelve events) and a recorded head.
fn filed_log() -> Log {
    let log = Log::new();
    log.ingest(&[
        &police_request("one"),
        &police_request("two"),
        &foreign("three"),
    ]);
    log.assert_intact();
    log
}

/// Drops the append-only triggers, as an attacker with the file would.
fn drop_triggers(db: &Connection) {
    db.execute_batch(
        "DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete;
         DROP TRIGGER messages_no_update; DROP TRIGGER messages_no_delete;
         DROP TRIGGER verdicts_no_update; DROP TRIGGER verdicts_no_delete;",
    )
    .unwrap();
}

/// A copy of [`filed_log`] without its append-only triggers, and a
/// connection to change it with.
fn unprotected() -> (Log, Connection) {
    let log = filed_log().copy();
    let db = log.db();
    drop_triggers(&db);
    (log, db)
}

/// A copy of [`filed_log`] after `sql` ran on it without the triggers.
fn tampered(sql: &str) -> Log {
    let (log, db) = unprotected();
    db.execute_batch(sql).unwrap();
    log
}

/// `audit verify` fails (exit 1) and names `event` as the first bad one.
fn broken_at(log: &Log, event: i64, what: &str) {
    let out = log.audit(None);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    assert!(
        first.contains(&format!("first bad event {event}:")) && first.contains(what),
        "expected event {event} ({what}): {}",
        text(&out)
    );
}

#[test]
fn triggers_refuse_edits_and_deletions() {
    let log = filed_log();
    let db = log.db();
    for sql in [
        "UPDATE events SET actor = 'mallory' WHERE id = 2",
        "DELETE FROM events WHERE id = 12",
        "UPDATE messages SET raw = x'00' WHERE id = 1",
        "DELETE FROM messages WHERE id = 3",
        "UPDATE verdicts SET decision = 'acknowledge' WHERE id = 3",
    ] {
        let err = db.execute(sql, []).unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    log.assert_intact();
}

#[test]
fn edited_message_bytes_are_detected() {
    let (log, db) = unprotected();
    // One byte of message 2's body; message 2 was filed by event 6.
    let mut raw: Vec<u8> = db
        .query_row("SELECT raw FROM messages WHERE id = 2", [], |r| r.get(0))
        .unwrap();
    let last = raw.len() - 3;
    raw[last] ^= 0x20;
    db.execute("UPDATE messages SET raw = ?1 WHERE id = 2", [&raw])
        .unwrap();
    drop(db);
    broken_at(&log, 6, "message 2: its bytes do not match");

    // Re-hashing the bytes does not help: the event vouches for the hash.
    let db = log.db();
    db.execute(
        "UPDATE messages SET sha256 = ?1 WHERE id = 2",
        [legal_intake::audit::sha256_hex(&raw)],
    )
    .unwrap();
    drop(db);
    broken_at(&log, 6, "not the one its filing event vouches for");
}

#[test]
fn edited_events_are_detected() {
    let (log, db) = unprotected();
    db.execute(
        "UPDATE events SET data = replace(data, '\"decision\":\"reject\"', '\"decision\":\"acknowledge\"') WHERE kind = 'verdict' AND case_id = 3",
        [],
    )
    .unwrap();
    let id: i64 = db
        .query_row(
            "SELECT id FROM events WHERE kind = 'verdict' AND case_id = 3",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(db);
    broken_at(&log, id, "does not match its hash");

    // Recomputing that event's hash moves the break to the next event.
    let (log, db) = unprotected();
    db.execute("UPDATE events SET actor = 'mallory' WHERE id = 5", [])
        .unwrap();
    let e = event(&db, 5);
    db.execute(
        "UPDATE events SET hash = ?1 WHERE id = 5",
        [legal_intake::audit::event_hash(&e.prev_hash, &e)],
    )
    .unwrap();
    drop(db);
    broken_at(&log, 6, "does not follow event 5");
}

#[test]
fn deleted_inserted_and_swapped_events_are_detected() {
    // Deletion.
    broken_at(
        &tampered("DELETE FROM events WHERE id = 7"),
        8,
        "expected event 7",
    );

    // Insertion: a well-formed event slipped in after event 4, the rest
    // renumbered.
    let (log, db) = unprotected();
    db.execute_batch(
        "UPDATE events SET id = id + 1000 WHERE id > 4; UPDATE events SET id = id - 999 WHERE id > 1000;",
    )
    .unwrap();
    let prev = event(&db, 4);
    let mut forged = legal_intake::store::EventRow {
        id: 5,
        at: prev.at.clone(),
        actor: "legal-intake".into(),
        case_id: Some(1),
        kind: "note".into(),
        data: "{\"note\":\"disclosed everything\"}".into(),
        prev_hash: prev.hash.clone(),
        hash: String::new(),
    };
    forged.hash = legal_intake::audit::event_hash(&forged.prev_hash, &forged);
    db.execute(
        "INSERT INTO events (id, at, actor, case_id, kind, data, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        rusqlite::params![forged.id, forged.at, forged.actor, forged.case_id, forged.kind, forged.data, forged.prev_hash, forged.hash],
    )
    .unwrap();
    drop(db);
    broken_at(&log, 6, "");

    // Reordering: events 9 and 10 swap places.
    let log = tampered(
        "UPDATE events SET id = 0 WHERE id = 9; UPDATE events SET id = 9 WHERE id = 10; UPDATE events SET id = 10 WHERE id = 0;",
    );
    broken_at(&log, 9, "");
}

#[test]
fn edited_tables_are_detected_against_their_events() {
    // A case's status changed without an event.
    let log = filed_log().copy();
    log.db()
        .execute("UPDATE cases SET status = 'closed' WHERE id = 1", [])
        .unwrap();
    failed_with(
        &log.audit(None),
        1,
        "case LR-2026-0001: its status is \"closed\"",
    );

    // A queued reply redirected to someone else.
    let log = filed_log().copy();
    log.db()
        .execute(
            "UPDATE outbox SET recipient = 'attacker@example.com' WHERE id = 1",
            [],
        )
        .unwrap();
    failed_with(&log.audit(None), 1, "queued reply 1 differs");
    // The outbox's delivery fields may change without breaking anything.
    let log = filed_log().copy();
    log.db()
        .execute(
            "UPDATE outbox SET status = 'sent', attempts = 1 WHERE id = 1",
            [],
        )
        .unwrap();
    log.assert_intact();

    // A whole message deleted, with its verdict.
    let log = tampered(
        "PRAGMA foreign_keys = OFF; DELETE FROM verdicts WHERE message_id = 3; DELETE FROM messages WHERE id = 3;",
    );
    failed_with(
        &log.audit(None),
        1,
        "message 3 named by this event is missing",
    );
}

#[test]
fn an_earlier_head_must_still_be_in_the_chain() {
    let log = filed_log();
    let early = log.head();
    log.ingest(&[&police_request("four")]);
    assert!(
        log.run(&["cases", "set", "LR-2026-0001", "--note", "last word"])
            .status
            .success()
    );
    let late = log.head();
    assert_ne!(early, late);
    for head in [&early, &late] {
        let out = log.audit(Some(head));
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = log.audit(Some(&"ab".repeat(32)));
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("not the hash of any event"));

    // Cutting off the newest event leaves a consistent chain that only
    // the recorded head exposes.
    let cut = log.copy();
    let db = cut.db();
    drop_triggers(&db);
    db.execute(
        "DELETE FROM events WHERE id = (SELECT max(id) FROM events)",
        [],
    )
    .unwrap();
    drop(db);
    cut.assert_intact();
    let out = cut.audit(Some(&late));
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(cut.audit(Some(&early)).status.success());
}

fn event(db: &Connection, id: i64) -> legal_intake::store::EventRow {
    db.query_row(
        "SELECT id, at, actor, case_id, kind, data, prev_hash, hash FROM events WHERE id = ?1",
        [id],
        |r| {
            Ok(legal_intake::store::EventRow {
                id: r.get(0)?,
                at: r.get(1)?,
                actor: r.get(2)?,
                case_id: r.get(3)?,
                kind: r.get(4)?,
                data: r.get(5)?,
                prev_hash: r.get(6)?,
                hash: r.get(7)?,
            })
        },
    )
    .unwrap()
}

#[test]
fn a_newer_schema_is_refused() {
    let log = filed_log();
    log.db().pragma_update(None, "user_version", 99).unwrap();
    for args in [vec!["cases", "list"], vec!["audit", "verify"]] {
        failed_with(&log.run(&args), 1, "newer than this binary");
    }
    let out = log.ingest_files_at_status(&[log.write(&police_request("x"))]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    // Nothing to read is an error too, not an empty log.
    let empty = Log::new();
    failed_with(&empty.run(&["cases", "list"]), 1, "no case log");
    assert!(!empty.db_path().exists());
}

impl Log {
    fn ingest_files_at_status(&self, files: &[PathBuf]) -> Output {
        self.ingest_command(None, &[], files)
            .output()
            .expect("run legal-intake")
    }
}

// ---- Export ----------------------------------------------------------------------

/// A signed request with two attachments, one of them named to escape.
fn with_attachments() -> Vec<u8> {
    let body = "--b1\r\nContent-Type: text/plain\r\n\r\nPlease find the production order attached.\r\n\
--b1\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"Order 2026-117.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcfsj6IK\r\n\
--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"../../../etc/cron.d/x.sh\"\r\n\r\n\
echo pwned\r\n--b1--\r\n";
    let raw = format!(
        "From: Detective Inspector <officer@police.gi>\r\nTo: legal@ivpn.net\r\nSubject: Production order\r\n\
Date: Mon, 02 Nov 2026 10:00:00 +0000\r\nMessage-ID: <export-{}@police.gi>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n{body}",
        std::process::id()
    );
    genuine(raw.as_bytes())
}

#[test]
fn export_writes_the_bundle_byte_for_byte_and_never_overwrites() {
    let log = Log::new();
    let first = with_attachments();
    let second = police_request_with("Re: order", &[("In-Reply-To", &message_id(&first))]);
    log.ingest(&[&first, &second]);
    let out_dir = log.dir().join("bundle");
    let out = log.export("LR-2026-0001", &out_dir);
    assert!(out.status.success(), "{}", text(&out));

    assert_eq!(std::fs::read(out_dir.join("msg1.eml")).unwrap(), first);
    assert_eq!(std::fs::read(out_dir.join("msg2.eml")).unwrap(), second);
    assert_eq!(
        std::fs::read(out_dir.join("msg1-att1.pdf")).unwrap(),
        b"%PDF-1.4\n%\xc7\xec\x8f\xa2\n"
    );
    assert_eq!(
        std::fs::read(out_dir.join("msg1-att2.sh")).unwrap(),
        b"echo pwned"
    );
    assert!(!log.dir().join("etc").exists());

    // The manifest names every other file with its SHA-256.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("manifest.json")).unwrap()).unwrap();
    let listed: BTreeSet<String> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let name = s(&f["name"]).to_string();
            let bytes = std::fs::read(out_dir.join(&name)).unwrap();
            assert_eq!(
                s(&f["sha256"]),
                legal_intake::audit::sha256_hex(&bytes),
                "{name}"
            );
            name
        })
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "manifest.json")
        .collect();
    assert_eq!(listed, on_disk);
    for f in [
        "case.json",
        "verdicts.json",
        "events.json",
        "msg1.eml",
        "msg2.eml",
    ] {
        assert!(listed.contains(f), "{f} missing from {listed:?}");
    }
    assert_eq!(manifest["case"], "LR-2026-0001");
    assert_eq!(manifest["exported_by"], operator());
    let verdicts: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("verdicts.json")).unwrap()).unwrap();
    assert_eq!(verdicts[0]["verdict"]["decision"], "acknowledge");
    assert!(s(&verdicts[0]["verdict"]["evidence"]["dkim"][0]["key_record"]).starts_with("v=DKIM1"));
    let events: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("events.json")).unwrap()).unwrap();
    assert!(events["events"].as_array().unwrap().len() >= 6);
    // The export is itself recorded, with the manifest's hash.
    let recorded: String = log
        .db()
        .query_row(
            "SELECT data FROM events WHERE kind = 'case_exported'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let recorded: Value = serde_json::from_str(&recorded).unwrap();
    assert_eq!(
        s(&recorded["manifest_sha256"]),
        legal_intake::audit::sha256_hex(&std::fs::read(out_dir.join("manifest.json")).unwrap())
    );

    // A second export into the same folder is refused and changes nothing.
    let before: Vec<(String, Vec<u8>)> = snapshot(&out_dir);
    failed_with(
        &log.export("LR-2026-0001", &out_dir),
        1,
        "must not exist or must be empty",
    );
    assert_eq!(snapshot(&out_dir), before);
    // A folder holding anything at all is refused; an empty one is used.
    let busy = log.dir().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join(".keep"), b"").unwrap();
    assert_eq!(code(&log.export("LR-2026-0001", &busy)), 1);
    let empty = log.dir().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(log.export("LR-2026-0001", &empty).status.success());
    assert_eq!(std::fs::read(empty.join("msg1.eml")).unwrap(), first);
    // An unknown case exports nothing.
    let none = log.dir().join("none");
    assert_eq!(code(&log.export("LR-2026-0404", &none)), 1);
    assert!(!none.exists());
    log.assert_intact();
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

// ---- Concurrency and crashes -------------------------------------------------------

/// Many distinct acknowledged requests (Ed25519: cheap to sign and check).
fn many(n: usize, tag: &str) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| government(&format!("Request {tag}-{i}")))
        .collect()
}

#[test]
fn concurrent_ingest_processes_file_everything_once() {
    let log = Log::with(UNLIMITED);
    let shared: Vec<PathBuf> = many(10, "shared").iter().map(|m| log.write(m)).collect();
    let mut children: Vec<Child> = Vec::new();
    for p in 0..4 {
        let mut files: Vec<PathBuf> = many(50, &format!("p{p}"))
            .iter()
            .map(|m| log.write(m))
            .collect();
        // Every process also files the shared ones, at different points.
        files.splice(p * 10..p * 10, shared.iter().cloned());
        children.push(log.ingest_command(None, &[], &files).spawn().unwrap());
    }
    // `audit verify` while they write: always a consistent snapshot.
    let mut audits = 0;
    while children.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        // Looked at before the audit starts: a log created while the audit
        // was starting up is rightly "not there" for it.
        let existed = log.db_path().exists();
        let out = log.audit(None);
        if existed {
            assert!(out.status.success(), "audit during ingest: {}", text(&out));
            audits += 1;
        }
    }
    assert!(
        audits > 0,
        "audit verify ran while the processes were filing"
    );
    let mut new_lines = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(!text(&out).contains("locked"), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(stdout.lines().count(), 60);
        new_lines += stdout.lines().filter(|l| l.contains(" new=yes ")).count();
    }
    assert_eq!(new_lines, 210, "each message reported new exactly once");
    assert_eq!(log.count("SELECT count(*) FROM messages"), 210);
    assert_eq!(
        log.count("SELECT count(DISTINCT sha256) FROM messages"),
        210
    );
    assert_eq!(log.count("SELECT count(*) FROM outbox"), 210);
    let refs = log.references();
    let expected: Vec<String> = (1..=210).map(|n| format!("LR-2026-{n:04}")).collect();
    assert_eq!(refs, expected, "gap-free numbering under concurrency");
    log.assert_intact();
}

#[test]
fn a_killed_ingest_leaves_a_valid_log_and_a_rerun_completes_it() {
    let log = Log::with(UNLIMITED);
    let n = 2500;
    let files: Vec<PathBuf> = many(n, "crash").iter().map(|m| log.write(m)).collect();

    let mut child = log.ingest_command(None, &[], &files).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a first line").unwrap();
    assert!(first.contains("new=yes"), "{first}");
    // SIGKILL: no chance to finish a transaction or clean up.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.code().is_none(),
        "killed before it finished: {status}"
    );

    log.assert_intact();
    let filed_before = log.count("SELECT count(*) FROM messages") as usize;
    assert!(
        filed_before >= 1 && filed_before < n,
        "killed mid-run: {filed_before} of {n}"
    );

    let out = log.ingest_files_at(None, &files);
    assert_eq!(out.len(), n);
    let already: usize = out.iter().filter(|o| o["new"] == false).count();
    assert_eq!(
        already, filed_before,
        "what was committed is recognised, nothing else"
    );
    assert_eq!(log.count("SELECT count(*) FROM messages"), n as i64);
    let distinct: HashSet<String> = out.iter().map(|o| s(&o["sha256"]).to_string()).collect();
    assert_eq!(distinct.len(), n);
    assert_eq!(log.count("SELECT count(*) FROM cases"), n as i64);
    assert_eq!(
        log.count("SELECT max(number) FROM cases"),
        n as i64,
        "no gap left by the crash"
    );
    log.assert_intact();
}
