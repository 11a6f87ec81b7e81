//! `run` and `run --once` against a real Dovecot: folders, the case log,
//! crashes, dropped connections, UIDVALIDITY changes, IDLE and signals.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use testkit::dovecot::Dovecot;

use crate::support::*;

/// The four kinds of mail the daemon sorts.
fn mixed() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let foreign = foreign_request("Auskunftsersuchen");
    let forged = delivered(
        &request("officer@police.gi", "URGENT"),
        "mail.example",
        STRANGER_IP,
        "<officer@police.gi>",
    );
    let auto = testkit::mail::with_header(
        &police_request("Out of office"),
        "Auto-Submitted",
        "auto-replied",
    );
    vec![
        ("genuine", police_request("Production order"), "Processed"),
        ("foreign", foreign, "Processed"),
        ("forged", forged, "Quarantine"),
        ("auto_reply", auto, "Processed"),
    ]
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

fn spawn_daemon(install: &Install, args: &[&str]) -> Child {
    install.command(args).spawn().unwrap()
}

/// Appends `n` police requests, "`subject` 0" and on, to `mailbox`;
/// the messages in order.
fn fill(dovecot: &Dovecot, mailbox: &str, n: usize, subject: &str) -> Vec<Vec<u8>> {
    let mail: Vec<Vec<u8>> = (0..n)
        .map(|i| police_request(&format!("{subject} {i}")))
        .collect();
    for raw in &mail {
        dovecot.append(mailbox, raw);
    }
    mail
}

fn audit_ok(install: &Install) {
    let out = install.run(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "audit verify: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_mixed_batch_lands_in_the_right_folders_and_a_second_pass_changes_nothing() {
    let dovecot = Dovecot::start();
    let install = Install::watching(&dovecot, "", "");
    let mail = mixed();
    for (_, raw, _) in &mail {
        dovecot.append("INBOX", raw);
    }
    let log = install.run_once();

    assert!(dovecot.messages("INBOX").is_empty());
    let expect = |folder: &str| {
        sorted(
            mail.iter()
                .filter(|m| m.2 == folder)
                .map(|m| m.1.clone())
                .collect(),
        )
    };
    assert_eq!(
        sorted(dovecot.messages("Processed")),
        expect("Processed"),
        "byte-identical in Processed"
    );
    assert_eq!(sorted(dovecot.messages("Quarantine")), expect("Quarantine"));

    assert_eq!(install.count("SELECT count(*) FROM messages"), 4);
    assert_eq!(install.count("SELECT count(*) FROM cases"), 4);
    assert_eq!(
        install.count("SELECT count(*) FROM outbox WHERE kind = 'acknowledgement'"),
        1
    );
    assert_eq!(
        install.count("SELECT count(*) FROM outbox WHERE kind = 'rejection'"),
        1
    );
    // One INFO line per message with the stable fields.
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" message ") || l.contains("message uid="))
        .collect();
    assert_eq!(lines.len(), 4, "{log}");
    for l in &lines {
        for key in [
            "uid=",
            "case=LR-",
            "from=",
            "decision=",
            "reply=",
            "reason=",
            "ms=",
        ] {
            assert!(l.contains(key), "{key} missing in {l}");
        }
    }
    assert!(log.contains("decision=quarantine"));
    assert!(
        !log.contains("Dear IVPN Legal"),
        "bodies never reach the log"
    );

    // Each `--once` also tries the queued replies again (no SMTP server
    // listens here), which the audit chain records; filing writes nothing.
    let filing_events =
        "SELECT count(*) FROM events WHERE kind NOT IN ('reply_sending', 'reply_retry')";
    let events = install.count(filing_events);
    install.run_once();
    assert_eq!(
        install.count(filing_events),
        events,
        "a second pass writes nothing"
    );
    assert_eq!(dovecot.messages("Processed").len(), 3);
    assert_eq!(dovecot.messages("Quarantine").len(), 1);
    audit_ok(&install);
}

#[test]
fn deferred_messages_stay_until_their_tries_run_out() {
    let dovecot = Dovecot::start();
    let install = Install::watching(&dovecot, "", "[limits]\ndefer_max_tries = 2\n");
    let raw = through_gateway(&police_signed_with("slow", "Order"));
    dovecot.append("INBOX", &raw);
    assert!(install.run_once().contains("decision=defer"));
    assert_eq!(
        dovecot.messages("INBOX"),
        vec![raw.clone()],
        "a deferred message stays in the inbox"
    );
    assert_eq!(install.count("SELECT count(*) FROM messages"), 0);

    install.run_once();
    assert!(dovecot.messages("INBOX").is_empty());
    assert_eq!(dovecot.messages("Quarantine"), vec![raw]);
    let reason: String = install.value("SELECT reason FROM verdicts");
    assert!(reason.contains("defer_max_tries"), "{reason}");
}

#[test]
fn a_uidvalidity_change_and_redelivered_copies_refile_nothing() {
    let dovecot = Dovecot::start();
    dovecot.create_mailbox("legal");
    let install = Install::watching(&dovecot, "mailbox = \"legal\"\n", "");
    let old = fill(&dovecot, "legal", 3, "Old");
    install.run_once();
    assert_eq!(install.count("SELECT count(*) FROM messages"), 3);
    let events = install.count("SELECT count(*) FROM events");

    // The mailbox is recreated (a new UIDVALIDITY) and holds the old
    // messages again next to a new one.
    dovecot.delete_mailbox("legal");
    dovecot.create_mailbox("legal");
    for raw in &old {
        dovecot.append("legal", raw);
    }
    let new = police_request("New");
    dovecot.append("legal", &new);
    install.run_once();

    assert_eq!(
        install.count("SELECT count(*) FROM messages"),
        4,
        "only the new message is filed"
    );
    assert!(install.count("SELECT count(*) FROM events") > events);
    assert!(
        dovecot.messages("legal").is_empty(),
        "old copies are moved out too"
    );
    assert_eq!(
        dovecot
            .messages("Processed")
            .iter()
            .filter(|m| **m == new)
            .count(),
        1
    );
    audit_ok(&install);
}

#[test]
fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    let dovecot = Dovecot::start();
    let install = Install::watching(&dovecot, "", "");
    let mail = fill(&dovecot, "INBOX", 40, "Request");
    // A fixed sequence of pseudo-random delays, so a failure reproduces.
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..12 {
        let delay = 40 + xorshift(&mut seed) % 400;
        let mut child = spawn_daemon(&install, &["run", "--once"]);
        thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
    }
    install.run_once();

    assert!(dovecot.messages("INBOX").is_empty());
    assert_eq!(
        sorted(dovecot.messages("Processed")),
        sorted(mail.clone()),
        "every message moved exactly once"
    );
    assert_eq!(
        install.count("SELECT count(*) FROM messages"),
        40,
        "every message filed exactly once"
    );
    assert_eq!(
        install.count("SELECT count(DISTINCT sha256) FROM messages"),
        40
    );
    // One sender: the per-sender daily cap (10) holds across the crashes.
    assert_eq!(install.count("SELECT count(*) FROM outbox"), 10);
    audit_ok(&install);
}

#[test]
fn idle_files_a_new_message_without_waiting_for_the_poll() {
    let dovecot = Dovecot::start();
    let install = Install::watching(&dovecot, "poll_interval_secs = 300\n", "");
    let mut daemon = spawn_daemon(&install, &["run"]);
    // The first pass creates the folders; then the daemon is idle.
    wait_for(Duration::from_secs(30), "the first pass", || {
        dovecot.mailboxes().iter().any(|m| m == "Quarantine")
    });
    thread::sleep(Duration::from_millis(300));
    let raw = police_request("Arrives while idle");
    let appended = Instant::now();
    dovecot.append("INBOX", &raw);
    // Well under the 300 s poll interval: only IDLE can explain it.
    wait_for(Duration::from_secs(20), "the message to be filed", || {
        dovecot.messages("Processed").contains(&raw)
    });
    eprintln!("arrival → filed and moved: {:?}", appended.elapsed());
    stop(&mut daemon);
    let log = stderr_of(&mut daemon);
    assert!(log.contains("decision=acknowledge"), "{log}");
}

#[test]
fn sigterm_mid_pass_exits_0_and_the_next_run_completes() {
    let dovecot = Dovecot::start();
    let install = Install::watching(&dovecot, "", "");
    let mail = fill(&dovecot, "INBOX", 80, "Bulk");
    let mut daemon = spawn_daemon(&install, &["run"]);
    wait_for(Duration::from_secs(30), "the first filed message", || {
        // The file can exist a moment before its tables do.
        install.dir.path().join("cases.sqlite").exists()
            && install
                .db()
                .query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))
                .is_ok_and(|n| n > 0)
    });
    stop(&mut daemon);
    let after_term = install.count("SELECT count(*) FROM messages");
    // Whatever was filed was also moved: the batch in hand was finished.
    assert_eq!(dovecot.messages("Processed").len() as i64, after_term);

    install.run_once();
    assert_eq!(install.count("SELECT count(*) FROM messages"), 80);
    assert_eq!(sorted(dovecot.messages("Processed")), sorted(mail));
    audit_ok(&install);
}

#[test]
fn tls_with_the_configured_ca() {
    let dovecot = Dovecot::start_tls();
    let install = Install::watching(&dovecot, "", "");
    let raw = police_request("Over TLS");
    dovecot.append("INBOX", &raw);
    install.run_once();
    assert_eq!(dovecot.messages("Processed"), vec![raw]);
}

/// A TCP proxy between the daemon and Dovecot that breaks its first
/// connections at chosen moments: after `cut_after` bytes from the server
/// (mid-FETCH of a large message), or right after the client sends a
/// `MOVE` (the server may or may not have done it).
struct Proxy {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl Proxy {
    fn start(upstream: u16, cut_after: usize, cut_on_move: bool, broken: usize) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let n = count.fetch_add(1, Ordering::SeqCst);
                let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                let break_this = n < broken;
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                // Client → server: optionally cut right after a MOVE.
                thread::spawn(move || pipe(c2, s2, usize::MAX, break_this && cut_on_move));
                // Server → client: optionally cut after `cut_after` bytes.
                thread::spawn(move || {
                    pipe(
                        server,
                        client,
                        if break_this { cut_after } else { usize::MAX },
                        false,
                    )
                });
            }
        });
        Proxy { port, connections }
    }

    /// An installation watching `dovecot` through this proxy.
    fn install(&self, dovecot: &Dovecot) -> Install {
        let imap = dovecot.imap_config("").replace(
            &format!("port = {}", dovecot.port),
            &format!("port = {}", self.port),
        );
        Install::full(world().dns_addr(), &imap, "", "")
    }
}

/// Waits for the daemon to empty the inbox through a [`Proxy`].
fn wait_for_empty_inbox(dovecot: &Dovecot) {
    wait_for(
        Duration::from_secs(60),
        "the inbox to be emptied through the proxy",
        || dovecot.messages("INBOX").is_empty(),
    );
}

fn pipe(mut from: TcpStream, mut to: TcpStream, limit: usize, cut_on_move: bool) {
    let mut sent = 0usize;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let n = n.min(limit - sent);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
        let moved = cut_on_move
            && buf[..n]
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"UID MOVE "));
        if sent >= limit || moved {
            if moved {
                // Let the server act on it before the line drops.
                thread::sleep(Duration::from_millis(100));
            }
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[test]
fn dropped_connections_mid_fetch_and_mid_move_change_nothing() {
    let dovecot = Dovecot::start();
    // A 2 MB message: its FETCH is cut in the middle.
    let big = {
        let mut body = String::new();
        while body.len() < 2_000_000 {
            body.push_str("Annex: transaction records of the account under investigation.\n");
        }
        genuine(&testkit::mail::message(
            "officer@police.gi",
            "legal@ivpn.net",
            "Large annex",
            &body,
        ))
    };
    let small: Vec<Vec<u8>> = (0..5)
        .map(|i| police_request(&format!("Small {i}")))
        .collect();
    dovecot.append("INBOX", &big);
    for raw in &small {
        dovecot.append("INBOX", raw);
    }
    for (cut_after, cut_on_move) in [(600_000, false), (usize::MAX, true)] {
        let proxy = Proxy::start(dovecot.port, cut_after, cut_on_move, 2);
        let install = proxy.install(&dovecot);
        let mut daemon = spawn_daemon(&install, &["run"]);
        wait_for_empty_inbox(&dovecot);
        // A cut FETCH breaks the first two connections before anything is
        // filed; a cut MOVE breaks the one that did the work. Either way
        // the daemon comes back.
        let needed = if cut_on_move { 2 } else { 3 };
        wait_for(Duration::from_secs(30), "the daemon to reconnect", || {
            proxy.connections.load(Ordering::SeqCst) >= needed
        });
        stop(&mut daemon);
        assert_eq!(
            install.count("SELECT count(*) FROM messages"),
            6,
            "every message filed once"
        );
        let processed = dovecot.messages("Processed");
        for raw in small.iter().chain([&big]) {
            assert_eq!(
                processed.iter().filter(|m| *m == raw).count(),
                1,
                "moved exactly once"
            );
        }
        audit_ok(&install);
        // Put everything back for the second round.
        for raw in processed {
            dovecot.append("INBOX", &raw);
        }
        dovecot.delete_mailbox("Processed");
    }
}

#[test]
fn sighup_reloads_the_configuration_and_keeps_the_old_one_when_invalid() {
    let dovecot = Dovecot::start();
    let install = Install::watching(&dovecot, "poll_interval_secs = 300\n", "");
    let original = std::fs::read_to_string(&install.config).unwrap();
    let mut daemon = spawn_daemon(&install, &["run"]);
    wait_for(Duration::from_secs(30), "the first pass", || {
        dovecot.mailboxes().iter().any(|m| m == "Quarantine")
    });
    let decision_of = |subject: &str| -> Option<String> {
        install.db()
            .query_row(
                "SELECT v.decision FROM verdicts v JOIN messages m ON m.id = v.message_id WHERE m.subject = ?1",
                [subject],
                |r| r.get(0),
            )
            .ok()
    };
    // SIGHUP, then a German request: its decision once it is filed.
    let reload_and_judge = |subject: &str, what: &str| {
        signal(&daemon, "-HUP");
        thread::sleep(Duration::from_millis(500));
        dovecot.append("INBOX", &foreign_request(subject));
        wait_for(Duration::from_secs(20), what, || {
            decision_of(subject).is_some()
        });
        decision_of(subject)
    };

    // A new agency, announced with SIGHUP while the daemon is in IDLE.
    std::fs::write(
        &install.config,
        format!("{original}\n[[agency]]\nname = \"Bundeskriminalamt\"\ndomains = [\"bka.de\"]\n"),
    )
    .unwrap();
    assert_eq!(
        reload_and_judge("After reload", "the first German request").as_deref(),
        Some("acknowledge"),
        "the new allowlist applies"
    );

    // An invalid file is refused and the running configuration kept.
    std::fs::write(&install.config, "[imap]\nhost = \n").unwrap();
    assert_eq!(
        reload_and_judge("After a bad reload", "the second German request").as_deref(),
        Some("acknowledge")
    );

    stop(&mut daemon);
    let log = stderr_of(&mut daemon);
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(log.contains("new configuration refused"), "{log}");
}

#[test]
fn check_config_connect_tries_every_server_one_line_each() {
    let dovecot = Dovecot::start();
    let install = Install::watching(&dovecot, "", "");
    let out = install.run(&["check-config", "--connect"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // Nothing listens on the configured SMTP port: that check fails, the
    // others pass, and the exit status says so.
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("imap: ok: 127.0.0.1:")
            && l.contains("INBOX holds 0 messages")
            && l.contains("IDLE")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("smtp: FAILED:")),
        "{text}"
    );
    assert!(
        text.lines().any(
            |l| l.starts_with("dns police.gi: ok: SPF v=spf1 ip4:192.0.2.10")
                && l.contains("DMARC v=DMARC1; p=reject")
        ),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l
                .starts_with("dns gibraltar.gov.gi: ok: SPF v=spf1 -all; DMARC none published")),
        "{text}"
    );
    let secret = std::fs::read_to_string(dovecot.password_file()).unwrap();
    assert!(!text.contains(secret.trim()), "the password never appears");

    // A wrong password is reported on the IMAP line.
    std::fs::write(dovecot.password_file(), "wrong\n").ok();
    let bad = install.run(&["check-config", "--connect"]);
    let text = String::from_utf8_lossy(&bad.stdout).to_string();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text.lines().any(|l| l.starts_with("imap: FAILED:")),
        "{text}"
    );
}

#[test]
fn a_backlog_of_several_batches_is_filed_and_moved_exactly_once() {
    let dovecot = Dovecot::start();
    let install = Install::watching(&dovecot, "", "");
    // Two batches (256 messages, then 45), with a copy of a message of
    // the first (UID 224) in the second: it is judged while the
    // original's batch is being committed, and must still be filed only
    // once.
    let mail = fill(&dovecot, "INBOX", 300, "Backlog");
    dovecot.append("INBOX", &mail[223]);
    let log = install.run_once();
    assert!(dovecot.messages("INBOX").is_empty());
    assert_eq!(
        install.count("SELECT count(*) FROM messages"),
        300,
        "the copy is not filed again"
    );
    let processed = dovecot.messages("Processed");
    assert_eq!(processed.len(), 301, "both copies moved");
    assert_eq!(processed.iter().filter(|m| **m == mail[223]).count(), 2);
    assert_eq!(
        log.matches("filing=new").count(),
        300,
        "one line per filed message"
    );
    audit_ok(&install);
}

#[test]
fn the_daily_reply_cap_holds_within_one_batch_whatever_the_address_case() {
    let dovecot = Dovecot::start();
    let install = Install::watching(&dovecot, "", "[limits]\nreplies_per_sender_per_day = 3\n");
    // One fetch, one batch, one transaction: six requests from one
    // officer under three spellings of the address, two from a colleague.
    let spellings = [
        "officer@police.gi",
        "Officer@Police.GI",
        "OFFICER@POLICE.GI",
    ];
    for i in 0..6 {
        dovecot.append(
            "INBOX",
            &police_request_from(spellings[i % 3], &format!("Order {i}")),
        );
    }
    for i in 0..2 {
        dovecot.append(
            "INBOX",
            &police_request_from("sergeant@police.gi", &format!("Warrant {i}")),
        );
    }
    install.run_once();
    assert_eq!(install.count("SELECT count(*) FROM cases"), 8);
    assert_eq!(
        install.count("SELECT count(*) FROM outbox WHERE lower(recipient) = 'officer@police.gi'"),
        3,
        "the cap counts every spelling of one address"
    );
    assert_eq!(
        install.count("SELECT count(*) FROM outbox WHERE recipient = 'sergeant@police.gi'"),
        2,
        "another sender has a cap of its own"
    );
    assert_eq!(
        install.count("SELECT count(*) FROM verdicts WHERE reply_suppressed LIKE '%replies_per_sender_per_day%'"
        ),
        3
    );
    // A second batch a moment later reads the first one's replies back.
    dovecot.append(
        "INBOX",
        &police_request_from("officer@police.gi", "Order 6"),
    );
    install.run_once();
    assert_eq!(
        install.count("SELECT count(*) FROM outbox WHERE lower(recipient) = 'officer@police.gi'"),
        3
    );
}

#[test]
fn a_move_cut_while_the_next_batch_is_filed_still_commits_that_batch() {
    let dovecot = Dovecot::start();
    // Two batches (256, then 44): the first one's MOVE goes out while the
    // second is being filed, and the connection drops right after it.
    let mail = fill(&dovecot, "INBOX", 300, "Pipelined");
    let proxy = Proxy::start(dovecot.port, usize::MAX, true, 1);
    let install = proxy.install(&dovecot);
    let mut daemon = spawn_daemon(&install, &["run"]);
    // 300 log lines overflow a pipe: read them as they come.
    let mut stderr = daemon.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut log = String::new();
        stderr.read_to_string(&mut log).unwrap();
        log
    });
    wait_for_empty_inbox(&dovecot);
    stop(&mut daemon);
    let log = reader.join().unwrap();
    assert!(
        proxy.connections.load(Ordering::SeqCst) >= 2,
        "the cut connection was replaced"
    );
    assert_eq!(install.count("SELECT count(*) FROM messages"), 300);
    assert_eq!(log.matches("filing=new").count(), 300, "{log}");
    // The second batch was committed on the broken connection and only
    // moved on the next one.
    assert!(
        log.lines().any(|l| l.contains("pass complete")
            && l.contains("filed=0")
            && !l.contains("moved=0")),
        "{log}"
    );
    let processed = dovecot.messages("Processed");
    assert_eq!(processed.len(), 300);
    assert_eq!(sorted(processed), sorted(mail));
    audit_ok(&install);
}
