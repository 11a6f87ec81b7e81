//! Replies: the outgoing queue end to end. The real binary files requests
//! (`ingest`, or `run --once` over a real Dovecot) and sends the replies
//! to real SMTP servers on 127.0.0.1 (aiosmtpd, see `testkit::smtp_sink`); DKIM
//! signatures are verified by mail-auth against the test DNS server, where
//! the reply keys are published.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use legal_intake::config::DkimSigning;
use legal_intake::reply::{self, Reply, ReplyKind, Templates};
use legal_intake::signer::Signer;
use mail_auth::DkimResult;
use rusqlite::Connection;
use testkit::dkim::{KeyKind, TestKey, generate};
use testkit::dovecot::Dovecot;
use testkit::smtp_sink::{self, Broken, Misbehaviour, Options, Received, Sink};
use time::macros::datetime;

use crate::support::*;

/// The instant the tests file at (`LEGAL_INTAKE_NOW`).
const T: &str = "2026-11-02T10:00:00Z";

/// The reply signing keys of this run, published in the test DNS under
/// ivpn.net: RSA as PKCS#8 and as PKCS#1, Ed25519 as PKCS#8.
struct ReplyKeys {
    rsa: TestKey,
    /// The same RSA key in PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    rsa_pkcs1_pem: String,
    ed25519: TestKey,
}

fn reply_keys() -> &'static ReplyKeys {
    static KEYS: OnceLock<ReplyKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rsa = generate(KeyKind::Rsa(2048));
        let ed25519 = generate(KeyKind::Ed25519);
        let rsa_pkcs1_pem = openssl_traditional(&rsa.private_pem);
        assert!(rsa_pkcs1_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        world().dns.update(|z| {
            z.txt("reply-rsa._domainkey.ivpn.net", &rsa.dns_txt)
                .txt("reply-ed._domainkey.ivpn.net", &ed25519.dns_txt);
        });
        ReplyKeys {
            rsa,
            rsa_pkcs1_pem,
            ed25519,
        }
    })
}

fn openssl_traditional(pkcs8: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["pkey", "-traditional"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl (scripts/install-test-deps)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pkcs8.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// An `[smtp]` section for a server on 127.0.0.1:`port`.
fn smtp(port: u16, extra: &str) -> String {
    format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfrom = \"IVPN Legal <legal@ivpn.net>\"\n{extra}"
    )
}

/// A Dovecot for the daemon to watch and an installation watching it,
/// whose `[smtp]` section is `smtp` (the shared template's is replaced).
struct Rig {
    dovecot: Dovecot,
    install: Install,
}

impl Rig {
    fn new(smtp: &str, extra: &str) -> Rig {
        let dovecot = Dovecot::start();
        let install = Install::watching(&dovecot, "", extra);
        let rig = Rig { dovecot, install };
        rig.set_smtp(smtp);
        rig
    }

    /// A rig sending to 127.0.0.1:`port`, with one police request filed.
    fn with_order(port: u16) -> Rig {
        let rig = Rig::new(&smtp(port, ""), "");
        rig.ingest(&[police_request("Order")]);
        rig
    }

    /// Starts a working SMTP server and sends to it from now on.
    fn working_sink(&self) -> Sink {
        let sink = Sink::start();
        self.set_smtp(&smtp(sink.port, ""));
        sink
    }

    /// Replaces the `[smtp]` section of the configuration.
    fn set_smtp(&self, section: &str) {
        let text = std::fs::read_to_string(&self.install.config).unwrap();
        let start = text.find("[smtp]\n").expect("an [smtp] section");
        let end = start + text[start..].find("\n[dns]").unwrap();
        let text = format!("{}{}\n{}", &text[..start], section, &text[end..]);
        std::fs::write(&self.install.config, text).unwrap();
    }

    fn dir(&self) -> &Path {
        self.install.dir.path()
    }

    /// Runs the binary with the clock at `now` (when given).
    fn run(&self, args: &[&str], now: Option<&str>) -> Output {
        self.install.operator_command(args, now).output().unwrap()
    }

    /// Starts the binary with the clock at `now` (when given).
    fn spawn(&self, args: &[&str], now: Option<&str>) -> Child {
        self.install.operator_command(args, now).spawn().unwrap()
    }

    /// A command that must succeed; its standard output.
    fn ok(&self, args: &[&str], now: Option<&str>) -> String {
        let out = self.run(args, now);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `run --once` at `now`, which must succeed; returns its log.
    fn once(&self, now: Option<&str>) -> String {
        let out = self.run(&["run", "--once"], now);
        let log = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "run --once failed:\n{log}");
        log
    }

    /// Files messages with `ingest` at `T`.
    fn ingest(&self, messages: &[Vec<u8>]) {
        let files: Vec<String> = messages
            .iter()
            .enumerate()
            .map(|(i, raw)| self.install.file(&format!("m{i}.eml"), raw))
            .map(|p| p.display().to_string())
            .collect();
        let mut args = vec!["ingest"];
        args.extend(files.iter().map(String::as_str));
        let out = self.run(&args, Some(T));
        assert!(
            out.status.success(),
            "ingest: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn db(&self) -> Connection {
        self.install.db()
    }

    fn count(&self, sql: &str) -> i64 {
        self.install.count(sql)
    }

    fn text(&self, sql: &str) -> String {
        self.install.value(sql)
    }

    /// (status, attempts, last_error, next_attempt_at) of outbox row 1.
    fn row(&self) -> (String, i64, Option<String>, String) {
        self.db()
            .query_row(
                "SELECT status, attempts, last_error, next_attempt_at FROM outbox WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap()
    }

    /// The kinds of the events of case 1 about replies, in order.
    fn reply_events(&self) -> Vec<String> {
        self.install
            .texts("SELECT kind FROM events WHERE kind LIKE 'reply_%' ORDER BY id")
    }

    fn audit_ok(&self) {
        let out = self.run(&["audit", "verify"], None);
        assert!(
            out.status.success(),
            "audit verify: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    fn show(&self, reference: &str) -> String {
        let out = self.run(&["cases", "show", reference], None);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

fn assert_signed_by_ivpn(r: &Received) {
    let results = dkim_results(&r.data);
    assert_eq!(
        results,
        vec![("ivpn.net".to_string(), DkimResult::Pass)],
        "{}",
        r.text()
    );
}

const DKIM_RSA: &str = "[dkim_signing]\ndomain = \"ivpn.net\"\nselector = \"reply-rsa\"\nprivate_key_file = \"dkim.pem\"\n";

#[test]
fn acknowledgement_and_rejection_arrive_once_each_signed_threaded_and_to_the_from_address() {
    let keys = reply_keys();
    let sink = Sink::start();
    let rig = Rig::new(&smtp(sink.port, ""), DKIM_RSA);
    std::fs::write(rig.dir().join("dkim.pem"), &keys.rsa.private_pem).unwrap();
    // Reply-To names someone else: the reply must still go to From.
    let ack = police_request_with(
        "Production order RGP/2026/0117",
        &[("Reply-To", "collector@example.com")],
    );
    let rej = foreign_request("Auskunftsersuchen");
    rig.ingest(&[ack, rej]);
    let log = rig.once(Some(T));

    let got = sink.wait_for(2, Duration::from_secs(10));
    assert_eq!(got.len(), 2, "exactly one message per reply");
    let by_kind = |needle: &str| {
        got.iter()
            .find(|r| r.text().contains(needle))
            .unwrap_or_else(|| panic!("no reply containing {needle:?}"))
    };
    let request_ids = rig.install.texts("SELECT msgid FROM messages ORDER BY id");
    let reply_ids = rig.install.texts("SELECT msgid FROM outbox ORDER BY id");
    for (i, (r, to, reference, subject)) in [
        (
            by_kind("not acceptance of service"),
            "officer@police.gi",
            "LR-2026-0001",
            "Production order RGP/2026/0117",
        ),
        (
            by_kind("will not be processed"),
            "ermittler@bka.de",
            "LR-2026-0002",
            "Auskunftsersuchen",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        // The envelope: the null reverse path (RFC 3834), the From address.
        assert_eq!(r.mail_from, "<>", "MAIL FROM:<>");
        assert_eq!(r.rcpt_tos, vec![to.to_string()]);
        assert!(!r.helo.is_empty());
        // The header.
        assert_eq!(r.header("To"), format!("<{to}>"));
        assert!(!r.text().contains("collector@example.com"));
        assert_eq!(r.header("From"), "\"IVPN Legal\" <legal@ivpn.net>");
        assert_eq!(r.header("Subject"), format!("[{reference}] Re: {subject}"));
        assert_eq!(r.header("In-Reply-To"), request_ids[i]);
        assert!(r.header("References").contains(&request_ids[i]));
        assert_eq!(
            r.header("Message-ID"),
            reply_ids[i],
            "the ID recorded at filing"
        );
        assert_eq!(r.header("Auto-Submitted"), "auto-replied");
        assert_eq!(r.header("X-Auto-Response-Suppress"), "All");
        assert_eq!(r.header("Date"), "Mon, 2 Nov 2026 10:00:00 +0000");
        assert!(r.text().contains(reference));
        assert_signed_by_ivpn(r);
    }

    assert_eq!(
        rig.count("SELECT count(*) FROM outbox WHERE status = 'sent' AND attempts = 1 AND sent_at IS NOT NULL"),
        2
    );
    assert_eq!(
        rig.reply_events(),
        [
            "reply_queued",
            "reply_queued",
            "reply_sending",
            "reply_sent",
            "reply_sending",
            "reply_sent"
        ]
    );
    let sent: String =
        rig.text("SELECT data FROM events WHERE kind = 'reply_sent' ORDER BY id LIMIT 1");
    let sent: serde_json::Value = serde_json::from_str(&sent).unwrap();
    assert_eq!(sent["envelope_from"], "<>");
    assert_eq!(sent["dkim"], "d=ivpn.net s=reply-rsa");
    assert!(sent["response"].as_str().unwrap().starts_with("250"));
    // One line per reply in the log, with the stable fields.
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" reply ")).collect();
    assert_eq!(lines.len(), 2, "{log}");
    for l in lines {
        for key in [
            "case=LR-2026-000",
            "outbox=",
            "to=",
            "status=sent",
            "attempt=1",
        ] {
            assert!(l.contains(key), "{key} missing in {l}");
        }
    }

    // Nothing is sent twice.
    rig.once(Some(T));
    assert_eq!(sink.received().len(), 2);
    assert!(
        rig.show("LR-2026-0001")
            .contains("sent 2026-11-02T10:00:00Z")
    );
    rig.audit_ok();
}

#[test]
fn every_accepted_key_form_signs_replies_that_verify() {
    let keys = reply_keys();
    let dir = tempfile::tempdir().unwrap();
    let message = reply::render(
        &Templates::builtin(),
        &fixed_reply(ReplyKind::Acknowledgement),
    );
    for (name, pem, selector) in [
        ("RSA, PKCS#8", keys.rsa.private_pem.as_str(), "reply-rsa"),
        ("RSA, PKCS#1", keys.rsa_pkcs1_pem.as_str(), "reply-rsa"),
        (
            "Ed25519, PKCS#8",
            keys.ed25519.private_pem.as_str(),
            "reply-ed",
        ),
    ] {
        let path = dir.path().join(format!("{selector}.pem"));
        std::fs::write(&path, pem).unwrap();
        let signer = Signer::load(&DkimSigning {
            domain: "ivpn.net".into(),
            selector: selector.into(),
            private_key_file: path,
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let signed = signer.sign(&message).unwrap();
        assert_eq!(
            dkim_results(&signed),
            vec![("ivpn.net".to_string(), DkimResult::Pass)],
            "{name}"
        );
        // The signature covers the headers that matter.
        let text = String::from_utf8_lossy(&signed).replace("\r\n\t", " ");
        let header = &text[..text.find("\r\n").unwrap()];
        let h = header
            .split(';')
            .map(str::trim)
            .find_map(|tag| tag.strip_prefix("h="))
            .unwrap_or_else(|| panic!("{name}: no h= in {header}"))
            .to_ascii_lowercase();
        for field in [
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "in-reply-to",
            "auto-submitted",
        ] {
            assert!(h.split(':').any(|f| f.trim() == field), "{name}: h={h}");
        }
    }
}

#[test]
fn check_config_refuses_an_unusable_signing_key_or_template() {
    let install = Install::new(DKIM_RSA);
    let check = |what: &str| {
        let out = install.run(&["check-config"]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        err
    };
    // Missing, not a key, an EC key (not DKIM).
    let err = check("missing");
    assert!(err.contains("dkim_signing.private_key_file"), "{err}");
    std::fs::write(install.dir.path().join("dkim.pem"), "not a key\n").unwrap();
    let err = check("garbage");
    assert!(
        err.contains("dkim_signing.private_key_file") && err.contains("no PEM private key"),
        "{err}"
    );
    let ec = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .output()
        .unwrap();
    std::fs::write(install.dir.path().join("dkim.pem"), &ec.stdout).unwrap();
    let err = check("EC");
    assert!(err.contains("dkim_signing.private_key_file"), "{err}");
    // A key that loads passes, and so does `run` get past its checks.
    std::fs::write(
        install.dir.path().join("dkim.pem"),
        &reply_keys().rsa.private_pem,
    )
    .unwrap();
    let out = install.run(&["check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A template with an unknown placeholder is named.
    std::fs::create_dir(install.dir.path().join("templates")).unwrap();
    std::fs::write(
        install.dir.path().join("templates/rejection.txt"),
        "Dear {agnecy},\n",
    )
    .unwrap();
    let err = check("template");
    assert!(
        err.contains("templates/rejection.txt") && err.contains("agnecy"),
        "{err}"
    );
}

#[test]
fn a_subject_with_encoded_line_breaks_adds_no_header_to_the_reply() {
    let sink = Sink::start();
    let rig = Rig::new(&smtp(sink.port, ""), "");
    // "Order\r\nBcc: victim@example.org\r\nX-Evil: 1" as an encoded word,
    // which a decoder turns back into line breaks.
    let subject = "=?utf-8?B?T3JkZXINCkJjYzogdmljdGltQGV4YW1wbGUub3JnDQpYLUV2aWw6IDE=?=";
    rig.ingest(&[police_request(subject)]);
    rig.once(Some(T));
    let got = sink.wait_for(1, Duration::from_secs(10));
    let r = &got[0];
    assert_eq!(r.rcpt_tos, vec!["officer@police.gi".to_string()]);
    for h in r.headers() {
        let name = h.split(':').next().unwrap().to_ascii_lowercase();
        assert!(name != "bcc" && name != "x-evil", "injected header {h:?}");
    }
    assert_eq!(
        r.header("Subject"),
        "[LR-2026-0001] Re: Order Bcc: victim@example.org X-Evil: 1"
    );
}

#[test]
fn automatic_requests_get_no_reply_and_the_reason_is_audited() {
    let sink = Sink::start();
    let rig = Rig::new(&smtp(sink.port, ""), "");
    let null_sender = delivered(
        &police_signed_with("s2026", "Bounce"),
        "mail.police.gi",
        POLICE_IP,
        "<>",
    );
    rig.ingest(&[
        police_request_with("Out of office", &[("Auto-Submitted", "auto-replied")]),
        police_request_with("Digest", &[("List-Id", "<alerts.police.gi>")]),
        null_sender,
    ]);
    // `run --once` returns after its sends: the sink has all there is.
    rig.once(Some(T));
    assert!(sink.received().is_empty(), "no reply to automatic mail");
    assert_eq!(rig.count("SELECT count(*) FROM outbox"), 0);
    assert_eq!(
        rig.count("SELECT count(*) FROM verdicts WHERE decision = 'acknowledge' AND reply = 0"),
        3
    );
    // Each suppression is in the audit chain with its reason.
    let reasons: Vec<String> = rig
        .install
        .texts("SELECT data FROM events WHERE kind = 'verdict' ORDER BY id")
        .iter()
        .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
        .map(|v| {
            v["reply_suppressed"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(reasons.len(), 3);
    for (reason, needle) in reasons
        .iter()
        .zip(["Auto-Submitted", "List-", "return path"])
    {
        assert!(
            reason.starts_with("automatic message") && reason.contains(needle),
            "{reason}"
        );
    }
    assert!(
        rig.show("LR-2026-0001")
            .contains("no reply: automatic message")
    );
}

#[test]
fn the_per_sender_daily_cap_holds() {
    let sink = Sink::start();
    let rig = Rig::new(
        &smtp(sink.port, ""),
        "[limits]\nreplies_per_sender_per_day = 2\n",
    );
    let requests: Vec<Vec<u8>> = (0..4)
        .map(|i| police_request(&format!("Request {i}")))
        .collect();
    rig.ingest(&requests);
    rig.once(Some(T));
    assert_eq!(sink.received().len(), 2);
    assert_eq!(rig.count("SELECT count(*) FROM cases"), 4);
    assert_eq!(rig.count("SELECT count(*) FROM outbox"), 2);
    assert_eq!(
        rig.count(
            "SELECT count(*) FROM events WHERE kind = 'verdict' \
             AND json_extract(data, '$.reply_suppressed') LIKE '%limits.replies_per_sender_per_day%'"
        ),
        2
    );
}

#[test]
fn the_bytes_sent_are_kept_and_exported_whatever_the_templates_say_later() {
    let sink = Sink::start();
    let rig = Rig::with_order(sink.port);
    rig.once(Some(T));
    let got = sink.wait_for(1, Duration::from_secs(10));
    // The acknowledgement's template changes after it went out.
    let templates = rig.dir().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(
        templates.join("acknowledgement.txt"),
        "A new text for {agency}, case {reference}.\n",
    )
    .unwrap();
    std::fs::write(
        templates.join("rejection.txt"),
        "Not ours, {agency}: {reference}.\n",
    )
    .unwrap();
    let out_dir = rig.dir().join("bundle");
    rig.ok(
        &[
            "cases",
            "export",
            "LR-2026-0001",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        Some(T),
    );
    let exported = std::fs::read(out_dir.join("out1-acknowledgement.eml")).unwrap();
    // As the server read it (which adds the line break before the dot).
    assert_eq!(exported.trim_ascii_end(), got[0].data.trim_ascii_end());
    assert!(String::from_utf8_lossy(&exported).contains("confirms that it received"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("manifest.json")).unwrap()).unwrap();
    let entry = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "out1-acknowledgement.eml")
        .expect("listed in the manifest")
        .clone();
    assert_eq!(entry["size"], exported.len());
    assert!(
        entry["what"]
            .as_str()
            .unwrap()
            .contains("exactly as handed")
    );
}

#[test]
fn a_server_that_is_down_makes_the_reply_wait_and_later_deliver_exactly_once() {
    let port = crate::support::free_port();
    let rig = Rig::with_order(port);
    let log = rig.once(Some(T));
    let (status, attempts, error, next) = rig.row();
    assert_eq!((status.as_str(), attempts), ("pending", 1), "{log}");
    assert!(
        error.as_deref().unwrap_or("").contains("connecting"),
        "{error:?}"
    );
    assert_eq!(
        next, "2026-11-02T10:01:00Z",
        "the first retry after a minute"
    );
    assert!(log.contains("status=pending"), "{log}");
    // Down again: the second wait is twice the first.
    rig.once(Some(T));
    let (status, attempts, _, next) = rig.row();
    assert_eq!(
        (status.as_str(), attempts, next.as_str()),
        ("pending", 2, "2026-11-02T10:02:00Z")
    );

    let sink = Sink::start_on(port);
    // The daemon respects the wait: at 10:01:30 the retry is not due.
    let mut daemon = rig.spawn(&["run"], Some("2026-11-02T10:01:30Z"));
    wait_for(Duration::from_secs(30), "the daemon's first pass", || {
        rig.dovecot.mailboxes().iter().any(|m| m == "Quarantine")
    });
    thread::sleep(Duration::from_millis(1500));
    stop(&mut daemon);
    assert!(sink.received().is_empty(), "sent before it was due");
    assert_eq!(rig.row().0, "pending");
    // At 10:03 it is: the daemon sends it without any new mail arriving.
    let mut daemon = rig.spawn(&["run"], Some("2026-11-02T10:03:00Z"));
    sink.wait_for(1, Duration::from_secs(30));
    stop(&mut daemon);
    let (status, attempts, _, _) = rig.row();
    assert_eq!((status.as_str(), attempts), ("sent", 3));
    // And never again.
    rig.once(Some(T));
    assert_eq!(sink.received().len(), 1);
    assert_eq!(
        rig.reply_events(),
        [
            "reply_queued",
            "reply_sending",
            "reply_retry",
            "reply_sending",
            "reply_retry",
            "reply_sending",
            "reply_sent"
        ]
    );
    rig.audit_ok();
}

#[test]
fn a_reply_not_accepted_for_5_days_fails_and_a_person_can_send_it_again() {
    let port = crate::support::free_port();
    let rig = Rig::with_order(port);
    rig.once(Some("2026-11-07T09:59:00Z"));
    assert_eq!(rig.row().0, "pending", "not yet 5 days");
    rig.once(Some("2026-11-07T10:00:00Z"));
    let (status, attempts, error, _) = rig.row();
    assert_eq!((status.as_str(), attempts), ("failed", 2));
    assert!(error.is_some());
    let shown = rig.show("LR-2026-0001");
    assert!(
        shown.contains("FAILED") && shown.contains("cases resend LR-2026-0001"),
        "{shown}"
    );
    // Failed rows are not retried.
    rig.once(Some("2026-11-08T10:00:00Z"));
    assert_eq!(rig.row().1, 2);

    let said = rig.ok(
        &["cases", "resend", "LR-2026-0001", "--note", "server fixed"],
        Some("2026-11-09T08:00:00Z"),
    );
    assert!(
        said.contains(&format!("failed → pending (by {})", operator())),
        "{said}"
    );
    let sink = Sink::start_on(port);
    rig.once(Some("2026-11-09T08:00:00Z"));
    assert_eq!(sink.wait_for(1, Duration::from_secs(10)).len(), 1);
    assert_eq!(rig.row().0, "sent");
    rig.audit_ok();
}

#[test]
fn a_connection_dropped_after_the_content_is_sent_again_unchanged_then_waits_for_a_person() {
    let broken = Broken::start(Misbehaviour::CloseAfterContent);
    let rig = Rig::with_order(broken.port);
    // The server may have the reply each time: the same bytes go again,
    // MAX_AUTO_RESENDS (3) times, a minute, two, four apart ...
    let drains = [
        "2026-11-02T10:00:00Z",
        "2026-11-02T10:01:00Z",
        "2026-11-02T10:03:00Z",
        "2026-11-02T10:07:00Z",
    ];
    for (i, at) in drains.iter().enumerate() {
        rig.once(Some(at));
        let (status, attempts, error, _) = rig.row();
        let expected = if i < 3 { "pending" } else { "unknown" };
        assert_eq!((status.as_str(), attempts), (expected, i as i64 + 1));
        assert!(
            error
                .as_deref()
                .unwrap_or("")
                .contains("after the message content was sent"),
            "{error:?}"
        );
    }
    let contents = broken.contents.lock().unwrap().clone();
    assert_eq!(contents.len(), 4, "the first send and three re-sends");
    assert!(
        contents.iter().all(|c| c == &contents[0]),
        "every re-send is the same message, byte for byte"
    );
    assert_eq!(
        rig.reply_events(),
        [
            "reply_queued",
            "reply_sending",
            "reply_resend_auto",
            "reply_sending",
            "reply_resend_auto",
            "reply_sending",
            "reply_resend_auto",
            "reply_sending",
            "reply_unknown"
        ]
    );
    // ... and then it waits for a person: never sent by itself again.
    rig.once(Some("2026-11-03T10:00:00Z"));
    assert_eq!(
        broken.connections.load(std::sync::atomic::Ordering::SeqCst),
        4
    );
    assert_eq!(rig.row().0, "unknown");
    let shown = rig.show("LR-2026-0001");
    assert!(
        shown.contains("UNKNOWN whether it was delivered")
            && shown.contains("cases resend LR-2026-0001")
            && shown.contains("re-sent automatically 3 time(s)")
            && shown.contains("bytes handed to the server are kept"),
        "{shown}"
    );

    // A person decides to send it again, now to a working server.
    rig.ok(&["cases", "resend", "LR-2026-0001"], Some(T));
    assert_eq!(rig.row().0, "pending");
    let resend: (String, String) = rig
        .db()
        .query_row(
            "SELECT actor, data FROM events WHERE kind = 'reply_resend'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(resend.0, operator(), "the event names who decided");
    assert!(resend.1.contains("\"from\":\"unknown\""), "{}", resend.1);
    let sink = rig.working_sink();
    rig.once(Some(T));
    let got = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(rig.row().0, "sent");
    // The same reply, byte for byte, as the one that may have arrived.
    assert_eq!(got[0].data, contents[0]);
    // Nothing left to resend.
    let again = rig.run(&["cases", "resend", "LR-2026-0001"], Some(T));
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to send again"));
    rig.audit_ok();
}

#[test]
fn a_connection_dropped_before_the_content_is_retried() {
    let broken = Broken::start(Misbehaviour::CloseAtData);
    let rig = Rig::with_order(broken.port);
    rig.once(Some(T));
    let (status, attempts, error, _) = rig.row();
    assert_eq!((status.as_str(), attempts), ("pending", 1), "{error:?}");
    assert!(broken.contents.lock().unwrap().is_empty());
}

#[test]
fn a_process_killed_while_the_content_goes_out_is_followed_by_the_same_message() {
    let broken = Broken::start(Misbehaviour::HangAfterContent);
    let rig = Rig::with_order(broken.port);
    let mut child = rig.spawn(&["run", "--once"], Some(T));
    wait_for(
        Duration::from_secs(30),
        "the content to reach the server",
        || !broken.contents.lock().unwrap().is_empty(),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(rig.row().0, "sending", "committed before the transaction");
    let started: Option<String> = rig
        .install
        .value("SELECT content_started_at FROM outbox WHERE id = 1");
    assert!(started.is_some(), "committed before the content went out");
    // The next run, at once (no lease to wait out: the process is gone),
    // sends the same bytes again.
    let sink = rig.working_sink();
    let log = rig.once(Some(T));
    let got = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(rig.row().0, "sent", "{log}");
    assert_eq!(got[0].data, broken.contents.lock().unwrap()[0]);
    assert_eq!(
        rig.reply_events(),
        [
            "reply_queued",
            "reply_sending",
            "reply_resend_auto",
            "reply_sending",
            "reply_sent"
        ]
    );
    assert!(
        rig.show("LR-2026-0001")
            .contains("re-sent automatically 1 time(s)")
    );
    rig.audit_ok();
}

#[test]
fn a_process_killed_before_the_content_goes_out_is_simply_tried_again() {
    let broken = Broken::start(Misbehaviour::HangAtData);
    let rig = Rig::with_order(broken.port);
    let mut child = rig.spawn(&["run", "--once"], Some(T));
    wait_for(Duration::from_secs(30), "the DATA command", || {
        broken.connections.load(std::sync::atomic::Ordering::SeqCst) == 1
            && rig.row().0 == "sending"
    });
    // Give the client the moment it needs to send DATA.
    thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    let sink = rig.working_sink();
    let log = rig.once(Some(T));
    let got = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(got.len(), 1);
    assert!(broken.contents.lock().unwrap().is_empty());
    assert_eq!(rig.row().0, "sent", "{log}");
    assert_eq!(
        rig.reply_events(),
        [
            "reply_queued",
            "reply_sending",
            "reply_retry",
            "reply_sending",
            "reply_sent"
        ]
    );
    let retry = rig.text("SELECT data FROM events WHERE kind = 'reply_retry'");
    assert!(retry.contains("before any content was sent"), "{retry}");
    rig.audit_ok();
}

#[test]
fn kill_9_while_replies_are_being_sent_loses_none_and_repeats_only_identical_bytes() {
    // A server that stores each message, then takes 200 ms to say so: a
    // kill in that window leaves a reply the server has but the sender
    // never heard about.
    let sink = Sink::start_with(
        crate::support::free_port(),
        Options {
            delay_ms: 200,
            ..Options::default()
        },
    );
    let rig = Rig::new(&smtp(sink.port, ""), "");
    const N: usize = 12;
    let requests: Vec<Vec<u8>> = (0..N)
        .map(|i| police_request_from(&format!("officer{i}@police.gi"), &format!("Order {i}")))
        .collect();
    rig.ingest(&requests);
    // A fixed sequence of pseudo-random delays, so a failure reproduces.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut kills = 0;
    for _ in 0..10 {
        let delay = 100 + xorshift(&mut seed) % 500;
        let mut child = rig.spawn(&["run", "--once"], Some(T));
        thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_none() {
            kills += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    rig.once(Some(T));

    let db = rig.db();
    let mut stmt = db
        .prepare(
            "SELECT msgid, status, bytes FROM outbox WHERE kind = 'acknowledgement' ORDER BY id",
        )
        .unwrap();
    let rows: Vec<(String, String, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), N, "one acknowledgement per request");
    let got = sink.received();
    let mut duplicates = 0;
    for (msgid, status, bytes) in &rows {
        assert_eq!(status, "sent", "{msgid}");
        let copies: Vec<_> = got
            .iter()
            .filter(|m| m.header("Message-ID") == *msgid)
            .collect();
        assert!(!copies.is_empty(), "{msgid} never reached the server");
        // (The end of the content as the server read it carries the line
        // break before the final dot.)
        let trimmed = |b: &[u8]| b.trim_ascii_end().to_vec();
        for copy in &copies {
            assert!(
                trimmed(&copy.data) == trimmed(bytes),
                "{msgid}: every copy is the stored bytes"
            );
        }
        duplicates += copies.len() - 1;
    }
    assert!(
        duplicates <= kills,
        "{duplicates} repeated copies for {kills} kills"
    );
    eprintln!("{kills} kills, {duplicates} repeated copies, {N} replies delivered");
    assert!(kills > 0, "the storm must interrupt something");
    rig.audit_ok();
}

#[test]
fn starttls_implicit_tls_and_auth_with_the_password_file() {
    for mode in ["starttls", "implicit"] {
        let sink = Sink::start_with(
            crate::support::free_port(),
            Options {
                tls: Some(mode),
                auth: true,
                ..Options::default()
            },
        );
        let section = |password_file: &str| {
            smtp(
                sink.port,
                &format!(
                    "ca_file = \"{}\"\nusername = \"{}\"\npassword_file = \"{password_file}\"\n",
                    sink.ca_file().display(),
                    smtp_sink::USER
                ),
            )
            .replace("tls = \"none\"", &format!("tls = \"{mode}\""))
        };
        let rig = Rig::new(&section("smtp.password"), "");
        std::fs::write(rig.dir().join("smtp.password"), "wrong\n").unwrap();
        rig.ingest(&[police_request("Order")]);
        let log = rig.once(Some(T));
        let (status, _, error, _) = rig.row();
        assert_eq!(
            status, "pending",
            "{mode}: a refused login is retried\n{log}"
        );
        assert!(
            error.as_deref().unwrap_or("").contains("AUTH"),
            "{mode}: {error:?}"
        );
        std::fs::write(
            rig.dir().join("smtp.password"),
            format!("{}\n", smtp_sink::PASSWORD),
        )
        .unwrap();
        let log2 = rig.once(Some(T));
        assert_eq!(rig.row().0, "sent", "{mode}: {log2}");
        let got = sink.wait_for(1, Duration::from_secs(10));
        assert!(got[0].tls, "{mode}: over TLS");
        assert_eq!(got[0].login.as_deref(), Some(smtp_sink::USER), "{mode}");
        assert_eq!(rig.row().0, "sent");
        for l in [log, log2] {
            assert!(
                !l.contains(smtp_sink::PASSWORD) && !l.contains("wrong"),
                "{mode}: secret in the log"
            );
        }
    }
}

#[test]
fn an_envelope_sender_can_be_configured() {
    let sink = Sink::start();
    let rig = Rig::new(
        &smtp(sink.port, "envelope_from = \"bounces@ivpn.net\"\n"),
        "",
    );
    rig.ingest(&[police_request("Order")]);
    rig.once(Some(T));
    let got = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(got[0].mail_from, "bounces@ivpn.net");
}

#[test]
fn run_once_files_from_dovecot_and_the_reply_arrives() {
    let sink = Sink::start();
    let rig = Rig::new(&smtp(sink.port, ""), "");
    let raw = police_request("Search warrant");
    rig.dovecot.append("INBOX", &raw);
    rig.once(None);
    assert_eq!(rig.dovecot.messages("Processed"), vec![raw]);
    let got = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(got.len(), 1);
    let year = time::OffsetDateTime::now_utc().year();
    assert_eq!(
        got[0].header("Subject"),
        format!("[LR-{year}-0001] Re: Search warrant")
    );
    assert_eq!(got[0].rcpt_tos, vec!["officer@police.gi".to_string()]);
    assert_eq!(rig.row().0, "sent");
    rig.audit_ok();
}

/// A reply with everything fixed, for the snapshots and the signer.
fn fixed_reply(kind: ReplyKind) -> Reply<'static> {
    static REFS: OnceLock<Vec<String>> = OnceLock::new();
    Reply {
        kind,
        reference: "LR-2026-0042",
        agency: Some("Royal Gibraltar Police"),
        from: "IVPN Legal <legal@ivpn.net>",
        to: "j.bosano@police.gi",
        original_subject: Some(
            "Production order RGP/2026/0117 concerning account i-ABCD-EFGH-JKLM",
        ),
        in_reply_to: Some("<req-1@police.gi>"),
        references: REFS.get_or_init(|| vec!["<thread-0@police.gi>".to_string()]),
        received: datetime!(2026-11-02 09:58:12 UTC),
        message_id: "<LR-2026-0042.0123456789abcdef01234567@ivpn.net>",
        date: datetime!(2026-11-02 10:00:05 UTC),
    }
}

fn snapshot_text(kind: ReplyKind) -> String {
    let bytes = reply::render(&Templates::builtin(), &fixed_reply(kind));
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        !text.replace("\r\n", "").contains('\n'),
        "every line ends in CRLF"
    );
    assert!(
        text.split("\r\n").all(|l| l.chars().count() <= 78),
        "no line longer than 78 characters:\n{text}"
    );
    text.replace("\r\n", "\n")
}

#[test]
fn the_acknowledgement_as_rendered() {
    insta::assert_snapshot!("acknowledgement", snapshot_text(ReplyKind::Acknowledgement));
}

#[test]
fn the_rejection_as_rendered() {
    insta::assert_snapshot!("rejection", snapshot_text(ReplyKind::Rejection));
}
