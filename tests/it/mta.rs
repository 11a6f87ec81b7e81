//! Through a real MX: a hostile client talks SMTP to Postfix 3.7 (the
//! trusted MX `mx1.ivpn.net`), Postfix writes its `Received` line and hands
//! the message over LMTP to Dovecot, and the message as stored in the
//! mailbox goes through `verify --json`. What an MTA writes into the trusted
//! line is exactly what these tests are about, so they use a real one.
//!
//! Every connection comes from 127.0.0.1. `police.gi` authorises only
//! 192.0.2.10 (and 2001:db8::10); `relay.police.gi` authorises 127.0.0.1,
//! so that a client that tells the truth can pass through the same chain.

use std::time::Duration;

use serde_json::Value;
use testkit::dovecot::{self, Dovecot};
use testkit::postfix::Postfix;

use crate::support::*;

/// EHLO names that smuggle the agency's authorised address into the
/// trusted line, each written by Postfix into it unchanged.
const HOSTILE_EHLO: &[&str] = &[
    "a[192.0.2.10]by",
    "x[192.0.2.10]id",
    "with[192.0.2.10]",
    "via[192.0.2.10]",
    "for[192.0.2.10]",
    "a[IPv6:2001:db8::10]by",
    "[192.0.2.10]by",
    "x(mail.police.gi[192.0.2.10])",
    "by[192.0.2.10]",
];

/// The chain: Dovecot with LMTP behind Postfix.
struct Chain {
    dovecot: Dovecot,
    postfix: Postfix,
}

impl Chain {
    fn start() -> Chain {
        let dovecot = Dovecot::start_lmtp();
        let postfix = Postfix::start(MX, dovecot.lmtp_port.expect("started with LMTP"));
        Chain { dovecot, postfix }
    }

    /// Sends each `(ehlo, envelope sender, subject)` as an unsigned police
    /// request and returns the messages as stored, in the same order.
    fn deliver(&self, sends: &[(&str, &str, String)]) -> Vec<Vec<u8>> {
        for (ehlo, mail_from, subject) in sends {
            let raw = request("Detective Inspector <officer@police.gi>", subject);
            self.postfix.send(ehlo, mail_from, dovecot::USER, &raw);
        }
        wait_for(
            Duration::from_secs(60),
            "Postfix to deliver over LMTP",
            || self.dovecot.messages("INBOX").len() >= sends.len(),
        );
        let stored = self.dovecot.messages("INBOX");
        sends
            .iter()
            .map(|(ehlo, _, subject)| {
                stored
                    .iter()
                    .find(|m| {
                        String::from_utf8_lossy(m).contains(&format!("Subject: {subject}\r\n"))
                    })
                    .unwrap_or_else(|| {
                        panic!(
                            "the message sent with EHLO {ehlo} was not delivered\n{}",
                            self.postfix.log()
                        )
                    })
                    .clone()
            })
            .collect()
    }
}

/// `verify --json` over the messages, one result each.
fn verify(install: &Install, messages: &[Vec<u8>]) -> Vec<Value> {
    let files: Vec<_> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| install.file(&format!("m{i}.eml"), m))
        .collect();
    let paths: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    match install.verify(&paths) {
        Value::Array(all) => all,
        one => vec![one],
    }
}

/// The trusted MX's line as stored: the `Received` header Postfix added.
fn postfix_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let start = text
        .find(&format!("by {MX} (Postfix)"))
        .expect("a Received line by the trusted MX");
    let line_start = text[..start].rfind("Received: ").expect("its header name");
    text[line_start..start].to_string()
}

#[test]
fn an_address_in_the_ehlo_name_is_never_taken_for_the_client() {
    let chain = Chain::start();
    let install = Install::new("");
    let sends: Vec<_> = HOSTILE_EHLO
        .iter()
        .enumerate()
        .map(|(i, ehlo)| (*ehlo, "officer@police.gi", format!("Order {i}")))
        .collect();
    let stored = chain.deliver(&sends);
    for ((ehlo, _, _), raw) in sends.iter().zip(&stored) {
        // The attack is real: Postfix kept the bracketed address.
        let line = postfix_line(raw);
        assert!(
            line.contains("192.0.2.10") || line.contains("2001:db8::10"),
            "EHLO {ehlo}: Postfix wrote {line}"
        );
    }
    for ((ehlo, _, _), r) in sends.iter().zip(verify(&install, &stored)) {
        let spf = &r["spf"];
        assert_eq!(r["decision"], "quarantine", "EHLO {ehlo}: {r}");
        assert_eq!(r["reply"], false, "EHLO {ehlo}: {r}");
        assert_eq!(spf["result"], "none", "EHLO {ehlo}: {spf}");
        assert_eq!(spf["ip"], Value::Null, "EHLO {ehlo}: {spf}");
        assert!(spf.get("helo").is_none(), "EHLO {ehlo}: {spf}");
        let reason = spf["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("cannot be read as evidence"),
            "EHLO {ehlo}: {reason}"
        );
    }
}

#[test]
fn a_truthful_client_is_read_from_the_mtas_own_comment() {
    let chain = Chain::start();
    let install = Install::new("");
    let sends = vec![
        // The envelope's domain authorises 127.0.0.1: SPF passes, aligned.
        (
            "mail.police.gi",
            "officer@relay.police.gi",
            "Order relayed".to_string(),
        ),
        // A whole address literal is a valid EHLO, and still not the client.
        (
            "[192.0.2.10]",
            "officer@police.gi",
            "Order literal".to_string(),
        ),
        // The agency's own name from the wrong address: SPF fails.
        (
            "mail.police.gi",
            "officer@police.gi",
            "Order unauthorised".to_string(),
        ),
    ];
    let stored = chain.deliver(&sends);
    let results = verify(&install, &stored);

    let relayed = &results[0];
    assert_eq!(relayed["decision"], "acknowledge", "{relayed}");
    assert_eq!(relayed["spf"]["result"], "pass", "{relayed}");
    assert_eq!(relayed["spf"]["ip"], "127.0.0.1", "{relayed}");
    assert_eq!(relayed["spf"]["helo"], "mail.police.gi", "{relayed}");
    assert_eq!(relayed["spf"]["domain"], "relay.police.gi", "{relayed}");

    for r in &results[1..] {
        assert_eq!(r["decision"], "quarantine", "{r}");
        assert_eq!(r["spf"]["result"], "fail", "{r}");
        assert_eq!(r["spf"]["ip"], "127.0.0.1", "{r}");
    }
    assert_eq!(results[1]["spf"]["helo"], "[192.0.2.10]");
}
