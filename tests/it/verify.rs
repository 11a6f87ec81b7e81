//! `verify` against a real DNS server: every row of the hostile-sender
//! checklist, every decision, every reply suppression rule, and `defer`.

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::dkim::sign;
use testkit::mail::with_header;

use crate::support::*;

/// One case of the table: a message and what `verify` must say of it.
struct Case {
    name: &'static str,
    raw: Vec<u8>,
    decision: &'static str,
    reply: bool,
    /// A fragment the reason must contain (lowercase comparison).
    reason_has: &'static str,
}

fn case(
    name: &'static str,
    raw: Vec<u8>,
    decision: &'static str,
    reply: bool,
    reason_has: &'static str,
) -> Case {
    Case {
        name,
        raw,
        decision,
        reply,
        reason_has,
    }
}

/// Runs the table through one `verify --json` process and checks each row.
fn check(install: &Install, cases: Vec<Case>) -> Vec<Value> {
    let files: Vec<_> = cases
        .iter()
        .map(|c| install.file(&format!("{}.eml", c.name), &c.raw))
        .collect();
    let refs: Vec<_> = files.iter().map(|p| p.as_path()).collect();
    let out = install.verify(&refs);
    let reports = out.as_array().expect("an array for several files").clone();
    assert_eq!(reports.len(), cases.len());
    let mut failures = Vec::new();
    for (c, r) in cases.iter().zip(&reports) {
        assert!(
            r["file"]
                .as_str()
                .unwrap()
                .ends_with(&format!("{}.eml", c.name)),
            "output keeps argument order"
        );
        let reason = r["reason"].as_str().unwrap_or_default().to_lowercase();
        if r["decision"] != c.decision || r["reply"] != c.reply || !reason.contains(c.reason_has) {
            failures.push(format!(
                "{}: expected {} reply={} reason~{:?}, got {} reply={} reason={:?}\n  dkim={} spf={}",
                c.name, c.decision, c.reply, c.reason_has, r["decision"], r["reply"], r["reason"], r["dkim"], r["spf"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    reports
}

/// `raw` with its DKIM-Signature field (and its folded lines) moved to
/// the end of the header section, below a line `X-Note` with no colon.
fn hidden_below_a_colonless_line(raw: &[u8]) -> Vec<u8> {
    let (fields, body) = testkit::mail::fields(raw);
    let (signature, rest): (Vec<&[u8]>, Vec<&[u8]>) = fields
        .into_iter()
        .partition(|f| testkit::mail::is_field(f, "DKIM-Signature"));
    assert!(!signature.is_empty(), "a signed message");
    [
        rest.concat(),
        b"X-Note\r\n".to_vec(),
        signature.concat(),
        b"\r\n".to_vec(),
        body.to_vec(),
    ]
    .concat()
}

/// `top` and then `raw`'s header section with a `Date` whose zone is one
/// letter before each of its From, Subject and Message-ID fields, and its
/// own (signed) Date last, so that DKIM still verifies.
fn behind_one_letter_zones(raw: &[u8], top: &str) -> Vec<u8> {
    let (fields, body) = testkit::mail::fields(raw);
    let (date, rest): (Vec<&[u8]>, Vec<&[u8]>) = fields
        .into_iter()
        .partition(|f| testkit::mail::is_field(f, "Date"));
    assert!(!date.is_empty(), "a dated message");
    let mut out = top.as_bytes().to_vec();
    for field in rest {
        if ["From", "Subject", "Message-ID"]
            .iter()
            .any(|n| testkit::mail::is_field(field, n))
        {
            out.extend_from_slice(b"Date: Mon, 2 Nov 2026 09:58:12 Z\r\n");
        }
        out.extend_from_slice(field);
    }
    [out, date.concat(), b"\r\n".to_vec(), body.to_vec()].concat()
}

fn police_signed(subject: &str) -> Vec<u8> {
    let w = world();
    signed(
        &request("Detective Inspector <officer@police.gi>", subject),
        &w.keys.police,
        "police.gi",
        "s2026",
    )
}

/// A request from `from`, signed by and sent from freemail.example.
fn via_freemail(from: &str) -> Vec<u8> {
    delivered(
        &signed(
            &request(from, "x"),
            &world().keys.other,
            "freemail.example",
            "sel",
        ),
        "mail.freemail.example",
        STRANGER_IP,
        "<tips@freemail.example>",
    )
}

#[test]
fn genuine_requests_are_acknowledged() {
    let w = world();
    let install = Install::new("");
    let gov = signed(
        &request("Attorney General <ag@gibraltar.gov.gi>", "Court order"),
        &w.keys.government,
        "gibraltar.gov.gi",
        "ed2026",
    );
    let cases = vec![
        case(
            "rsa",
            from_police_server(&police_signed("Production order")),
            "acknowledge",
            true,
            "dkim signature of police.gi verified",
        ),
        case(
            "subdomain",
            from_police_server(&signed(
                &request("officer@cid.police.gi", "Warrant"),
                &w.keys.police,
                "police.gi",
                "s2026",
            )),
            "acknowledge",
            true,
            "royal gibraltar police",
        ),
        case(
            "ed25519",
            delivered(
                &gov,
                "mail.gibraltar.gov.gi",
                "198.51.100.20",
                "<ag@gibraltar.gov.gi>",
            ),
            "acknowledge",
            true,
            "gibraltar.gov.gi",
        ),
        // Relayed through a gateway: SPF fails, the aligned signature is enough.
        case(
            "relayed",
            delivered(
                &police_signed("x"),
                "gw.example",
                "198.51.100.7",
                "<officer@police.gi>",
            ),
            "acknowledge",
            true,
            "dkim",
        ),
        // No signature at all, but SPF passes for an aligned envelope domain.
        case(
            "spf_only",
            from_police_server(&request("officer@police.gi", "Subpoena")),
            "acknowledge",
            true,
            "spf pass for police.gi",
        ),
        case(
            "spf_ipv6",
            delivered(
                &request("officer@police.gi", "x"),
                "mail.police.gi",
                &format!("IPv6:{POLICE_IP6}"),
                "<officer@police.gi>",
            ),
            "acknowledge",
            true,
            "spf pass",
        ),
        // A 1024-bit key is the smallest RFC 8301 allows.
        case(
            "rsa_1024",
            through_gateway(&signed(
                &request("officer@police.gi", "x"),
                &w.keys.police_1024,
                "police.gi",
                "k1024",
            )),
            "acknowledge",
            true,
            "dkim",
        ),
    ];
    let reports = check(&install, cases);
    let rsa = &reports[0];
    assert_eq!(rsa["agency"], "Royal Gibraltar Police");
    assert_eq!(rsa["from"], "officer@police.gi");
    assert_eq!(rsa["from_domain"], "police.gi");
    assert_eq!(rsa["dkim"][0]["domain"], "police.gi");
    assert_eq!(rsa["dkim"][0]["selector"], "s2026");
    assert_eq!(rsa["dkim"][0]["result"], "pass");
    assert_eq!(rsa["spf"]["result"], "pass");
    assert_eq!(rsa["spf"]["domain"], "police.gi");
    assert_eq!(rsa["spf"]["ip"], POLICE_IP);
    assert_eq!(rsa["dmarc"]["result"], "pass");
    assert_eq!(reports[2]["dkim"][0]["result"], "pass");
    assert_eq!(reports[2]["agency"], "HM Government of Gibraltar");
    assert_eq!(reports[3]["spf"]["result"], "fail");
}

#[test]
fn hostile_senders_are_quarantined() {
    let w = world();
    let install = Install::new("");
    let good = police_signed("Production order");
    let mut body_changed = good.clone();
    body_changed.extend_from_slice(b"P.S. also send everything about i-ZZZZ-ZZZZ-ZZZZ\r\n");
    let mut l_opts = opts("police.gi", "s2026");
    l_opts.body_length = true;
    let mut appended = sign(
        &request("officer@police.gi", "Order"),
        &w.keys.police,
        &l_opts,
    );
    appended.extend_from_slice(b"\r\nAppended by an attacker: disclose everything.\r\n");
    let mut sha1 = opts("police.gi", "s2026");
    sha1.sha1 = true;
    let mut expired = opts("police.gi", "s2026");
    expired.expiration = Some(1_600_000_000);
    let two_froms_signed = {
        let raw = request("officer@police.gi", "Order");
        let raw = with_header(&raw, "From", "attacker@evil.example");
        let mut o = opts("police.gi", "s2026");
        o.headers = ["From", "From", "Subject", "Date"]
            .map(String::from)
            .to_vec();
        sign(&raw, &w.keys.police, &o)
    };
    let forged_below = {
        // The attacker writes a Received line that looks like the MX's;
        // the real MX line above it records the attacker's address.
        let raw = request("officer@police.gi", "Order");
        let raw = with_header(
            &raw,
            "Received",
            &format!(
                "from mail.police.gi (mail.police.gi [{POLICE_IP}])\r\n\tby {MX} (Postfix) with ESMTPS id FAKE; Mon, 2 Nov 2026 09:59:00 +0000"
            ),
        );
        delivered(&raw, "mail.police.gi", STRANGER_IP, "<officer@police.gi>")
    };
    let with_fake_results = with_header(
        &request("officer@police.gi", "Order"),
        "Authentication-Results",
        "mx1.ivpn.net; dkim=pass header.d=police.gi; spf=pass smtp.mailfrom=police.gi; dmarc=pass",
    );
    let cases = vec![
        // A genuine signed request replayed with a Subject of the
        // attacker's above the signed one (h= does not oversign it): the
        // signature passes, but which subject it covers cannot be told,
        // and the subject steers the case, the triage and the reply.
        case(
            "second_subject_unsigned",
            from_police_server(&with_header(
                &good,
                "Subject",
                "EMERGENCY: threat to life [LR-2026-0001]",
            )),
            "quarantine",
            false,
            "2 subject headers",
        ),
        case(
            "second_references_unsigned",
            from_police_server(&with_header(&good, "References", "<other@case.example>")),
            "acknowledge",
            true,
            "",
        ),
        case(
            "second_from_unsigned",
            from_police_server(&with_header(&good, "From", "attacker@evil.example")),
            "quarantine",
            false,
            "2 from headers",
        ),
        case(
            "second_from_signed",
            from_police_server(&two_froms_signed),
            "quarantine",
            false,
            "2 from headers",
        ),
        case(
            "several_mailboxes",
            from_police_server(&signed(
                &request("officer@police.gi, attacker@evil.example", "x"),
                &w.keys.police,
                "police.gi",
                "s2026",
            )),
            "quarantine",
            false,
            "2 mailboxes",
        ),
        case(
            "no_from",
            from_police_server(b"To: legal@ivpn.net\r\nSubject: order\r\n\r\nbody\r\n"),
            "quarantine",
            false,
            "no from header",
        ),
        case(
            "unaligned_signature",
            delivered(
                &signed(
                    &request("officer@police.gi", "x"),
                    &w.keys.other,
                    "mailer.example",
                    "sel",
                ),
                "mailer.example",
                STRANGER_IP,
                "<bounce@mailer.example>",
            ),
            "quarantine",
            false,
            "no dkim signature aligned",
        ),
        // Body changed after signing: SPF passes, but the broken aligned
        // signature is not outweighed by a path check.
        case(
            "body_changed",
            from_police_server(&body_changed),
            "quarantine",
            false,
            "body hash",
        ),
        // The same broken signature moved below a header line without a
        // colon: mail-auth's reader stopped there and saw no signature, so
        // the SPF pass alone acknowledged it. Such a line is malformed.
        case(
            "signature_hidden_below_a_line_without_a_colon",
            from_police_server(&hidden_below_a_colonless_line(&body_changed)),
            "quarantine",
            false,
            "neither a header field",
        ),
        // A genuine signed message (here one the police sent elsewhere)
        // under the attacker's own From, Subject and Message-ID, each of
        // the signed fields behind a Date with a one-letter zone: mail-parser
        // read each such Date as swallowing the next line, so it saw one
        // From (the attacker's) while DKIM verified the signed one below.
        case(
            "signed_fields_hidden_behind_one_letter_zones",
            through_gateway(&behind_one_letter_zones(
                &police_signed("Re: your enquiry"),
                "From: Chief Constable <chief@police.gi>\r\nSubject: EMERGENCY disclosure\r\nMessage-ID: <forged-1@police.gi>\r\n",
            )),
            "quarantine",
            false,
            "read two ways",
        ),
        case(
            "appended_beyond_l",
            from_police_server(&appended),
            "quarantine",
            false,
            "l=",
        ),
        case(
            "rsa_sha1",
            through_gateway(&sign(
                &request("officer@police.gi", "x"),
                &w.keys.police,
                &sha1,
            )),
            "quarantine",
            false,
            "rsa-sha1",
        ),
        case(
            "rsa_512",
            through_gateway(&signed(
                &request("officer@police.gi", "x"),
                &w.keys.police_512,
                "police.gi",
                "k512",
            )),
            "quarantine",
            false,
            "512 bits is too short",
        ),
        case(
            "expired",
            through_gateway(&sign(
                &request("officer@police.gi", "x"),
                &w.keys.police,
                &expired,
            )),
            "quarantine",
            false,
            "expired",
        ),
        case(
            "revoked_key",
            through_gateway(&police_signed_with("revoked", "x")),
            "quarantine",
            false,
            "dkim signature of police.gi",
        ),
        case(
            "missing_key",
            through_gateway(&police_signed_with("nosuch", "x")),
            "quarantine",
            false,
            "no key record",
        ),
        case(
            "spf_fail",
            delivered(
                &request("officer@police.gi", "x"),
                "mail.example",
                STRANGER_IP,
                "<officer@police.gi>",
            ),
            "quarantine",
            false,
            "spf fail",
        ),
        case(
            "spf_softfail",
            delivered(
                &request("officer@soft.police.gi", "x"),
                "mail.example",
                STRANGER_IP,
                "<officer@soft.police.gi>",
            ),
            "quarantine",
            false,
            "spf softfail",
        ),
        case(
            "forged_received_below",
            forged_below,
            "quarantine",
            false,
            "spf fail",
        ),
        case(
            "fake_auth_results",
            delivered(
                &with_fake_results,
                "mail.example",
                STRANGER_IP,
                "<officer@police.gi>",
            ),
            "quarantine",
            false,
            "not authenticated",
        ),
        // A display name that imitates an agency is not evidence.
        case(
            "display_name",
            via_freemail("\"Royal Gibraltar Police <officer@police.gi>\" <tips@freemail.example>"),
            "reject",
            true,
            "freemail.example is not a gibraltar agency",
        ),
    ];
    // Two @ in the From address, signed by and sent from the freemail
    // domain: authenticated for freemail.example, but which domain a
    // reader sees depends on the reader. Never a reply.
    let mut cases = cases;
    for (name, from) in [
        ("two_ats", "officer@police.gi@freemail.example"),
        (
            "two_ats_bracketed",
            "Officer <officer@police.gi@freemail.example>",
        ),
        ("quoted_at", "\"officer@police.gi\"@freemail.example"),
    ] {
        cases.push(case(name, via_freemail(from), "quarantine", false, ""));
    }
    let reports = check(&install, cases);
    let by_name = |n: &str| {
        reports
            .iter()
            .find(|r| r["file"].as_str().unwrap().ends_with(&format!("/{n}.eml")))
            .unwrap()
    };
    assert_eq!(by_name("rsa_sha1")["dkim"][0]["result"], "policy");
    assert_eq!(by_name("appended_beyond_l")["dkim"][0]["result"], "policy");
    assert_eq!(
        by_name("appended_beyond_l")["dkim"][0]["algorithm"],
        "rsa-sha256"
    );
    assert_eq!(by_name("rsa_512")["dkim"][0]["result"], "policy");
    assert_eq!(by_name("body_changed")["dkim"][0]["result"], "fail");
    assert_eq!(by_name("body_changed")["spf"]["result"], "pass");
    assert_eq!(by_name("forged_received_below")["spf"]["ip"], STRANGER_IP);
    assert_eq!(by_name("display_name")["agency"], Value::Null);
    assert_eq!(by_name("no_from")["from"], Value::Null);
}

#[test]
fn authenticated_outsiders_are_rejected() {
    let w = world();
    let install = Install::new("");
    let from_other = |from: &str, d: &str| {
        delivered(
            &signed(
                &request(from, "Request for subscriber data"),
                &w.keys.other,
                d,
                "sel",
            ),
            &format!("mail.{d}"),
            STRANGER_IP,
            &format!("<{from}>"),
        )
    };
    let cases = vec![
        case(
            "foreign_agency",
            from_other("ermittler@bka.de", "bka.de"),
            "reject",
            true,
            "not a gibraltar agency",
        ),
        case(
            "free_mail",
            from_other("detective@freemail.example", "freemail.example"),
            "reject",
            true,
            "not a gibraltar agency",
        ),
        case(
            "lookalike_prefix",
            from_other("officer@evilpolice.gi", "evilpolice.gi"),
            "reject",
            true,
            "evilpolice.gi",
        ),
        case(
            "lookalike_suffix",
            from_other("officer@police.gi.example.com", "example.com"),
            "reject",
            true,
            "police.gi.example.com",
        ),
        case(
            "idn_homograph",
            from_other("officer@xn--plice-6ve.gi", "xn--plice-6ve.gi"),
            "reject",
            true,
            "xn--plice-6ve.gi",
        ),
        // SPF alone authenticates an outsider too.
        case(
            "foreign_spf_only",
            delivered(
                &request("ermittler@bka.de", "x"),
                "mail.bka.de",
                STRANGER_IP,
                "<ermittler@bka.de>",
            ),
            "reject",
            true,
            "spf pass",
        ),
    ];
    let reports = check(&install, cases);
    for r in &reports {
        assert_eq!(r["agency"], Value::Null);
        assert_eq!(r["dmarc"]["result"], "pass");
    }
}

#[test]
fn automatic_messages_get_no_reply() {
    let install = Install::new("");
    let base = police_signed("Out of office");
    let mut cases = Vec::new();
    for (name, header, value) in [
        ("auto_submitted", "Auto-Submitted", "auto-replied"),
        ("precedence_bulk", "Precedence", "bulk"),
        ("precedence_junk", "Precedence", "junk"),
        ("precedence_list", "Precedence", "list"),
        ("list_id", "List-Id", "<alerts.police.gi>"),
        (
            "list_unsubscribe",
            "List-Unsubscribe",
            "<mailto:leave@police.gi>",
        ),
        ("suppress_all", "X-Auto-Response-Suppress", "All"),
        ("suppress_oof", "X-Auto-Response-Suppress", "DR, OOF"),
        (
            "suppress_autoreply",
            "X-Auto-Response-Suppress",
            "AutoReply",
        ),
    ] {
        cases.push(case(
            name,
            from_police_server(&with_header(&base, header, value)),
            "acknowledge",
            false,
            "dkim",
        ));
    }
    cases.push(case(
        "null_return_path",
        delivered(&base, "mail.police.gi", POLICE_IP, "<>"),
        "acknowledge",
        false,
        "dkim",
    ));
    let w = world();
    for (name, local) in [
        ("mailer_daemon", "MAILER-DAEMON"),
        ("postmaster", "postmaster"),
        ("owner", "owner-alerts"),
        ("request", "alerts-request"),
        ("noreply", "noreply"),
    ] {
        let raw = signed(
            &request(&format!("{local}@police.gi"), "x"),
            &w.keys.police,
            "police.gi",
            "s2026",
        );
        cases.push(case(
            name,
            from_police_server(&raw),
            "acknowledge",
            false,
            "dkim",
        ));
    }
    // Auto-Submitted: no is a person's message.
    cases.push(case(
        "auto_submitted_no",
        from_police_server(&with_header(&base, "Auto-Submitted", "no")),
        "acknowledge",
        true,
        "dkim",
    ));
    // Comments are not part of the keyword (RFC 3834 §5, RFC 5322 CFWS).
    cases.push(case(
        "auto_submitted_no_with_comment",
        from_police_server(&with_header(&base, "Auto-Submitted", "no (personal)")),
        "acknowledge",
        true,
        "dkim",
    ));
    // An agency gateway's VERP envelope sender is not an automatic message.
    cases.push(case(
        "gateway_bounce_envelope",
        delivered(
            &base,
            "mail.police.gi",
            POLICE_IP,
            "<bounces+officer=police.gi@gateway.police.gi>",
        ),
        "acknowledge",
        true,
        "dkim",
    ));
    let reports = check(&install, cases);
    let suppressed = reports
        .iter()
        .filter(|r| r["reply_suppressed"].is_string())
        .count();
    assert_eq!(suppressed, reports.len() - 3);
}

#[test]
fn dns_failures_defer() {
    let install = Install::new("");
    let mut body_changed = police_signed("x");
    body_changed.extend_from_slice(b"altered\r\n");
    let signed_with = |selector: &str| through_gateway(&police_signed_with(selector, "x"));
    let cases = vec![
        case(
            "key_timeout",
            signed_with("slow"),
            "defer",
            false,
            "could not be fetched",
        ),
        case(
            "key_servfail",
            signed_with("broken"),
            "defer",
            false,
            "could not be fetched",
        ),
        // SPF of an aligned envelope domain that SERVFAILs, no signature.
        case(
            "spf_servfail",
            delivered(
                &request("officer@police.gi", "x"),
                "mail.police.gi",
                POLICE_IP,
                "<bounce@flaky.police.gi>",
            ),
            "defer",
            false,
            "spf check of flaky.police.gi",
        ),
        // A broken aligned signature cannot be rescued by waiting for SPF.
        case(
            "broken_and_spf_servfail",
            delivered(
                &body_changed,
                "mail.police.gi",
                POLICE_IP,
                "<bounce@flaky.police.gi>",
            ),
            "quarantine",
            false,
            "body hash",
        ),
    ];
    let reports = check(&install, cases);
    assert_eq!(reports[0]["dkim"][0]["result"], "temperror");
    assert_eq!(reports[1]["dkim"][0]["result"], "temperror");
    assert_eq!(reports[2]["spf"]["result"], "temperror");
    assert_eq!(reports[0]["dmarc"]["result"], "temperror");
}

#[test]
fn fifty_never_answering_keys_are_judged_within_one_lookup_timeout() {
    let w = world();
    // Default limits: dns.timeout_secs 5, auth.time_budget_secs 30,
    // auth.max_signatures 8 (all the aligned ones are examined).
    let install = Install::new("").with_default_dns_timeout();
    // From a police sub-domain whose _dmarc record never answers either.
    let mut raw = request("officer@cid.police.gi", "Many signatures");
    for n in 0..NEVER_ANSWERING_KEYS {
        raw = signed(&raw, &w.keys.police, "police.gi", &format!("slow{n}"));
    }
    let file = install.file("many.eml", &through_gateway(&raw));
    let started = Instant::now();
    let r = install.verify(&[&file]);
    // Not a speed target: the lookups run at once, so the wait is one
    // lookup's timeout, not fifty.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(r["decision"], "defer", "{r}");
    let dkim = r["dkim"].as_array().unwrap();
    assert_eq!(dkim.len(), NEVER_ANSWERING_KEYS);
    assert!(dkim.iter().all(|d| d["result"] == "temperror"), "{r}");
    // Listed in the order of the message's signatures (the last one added
    // is on top).
    let selectors: Vec<&str> = dkim
        .iter()
        .map(|d| d["selector"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..NEVER_ANSWERING_KEYS)
        .rev()
        .map(|n| format!("slow{n}"))
        .collect();
    assert_eq!(selectors, expected);
    assert!(r["dmarc"]["record"].is_null(), "{r}");
}

#[test]
fn the_budget_bounds_what_the_timeouts_do_not() {
    let w = world();
    let install =
        Install::with(w.dns_addr(), "time_budget_secs = 1", "").with_default_dns_timeout();
    let raw = through_gateway(&police_signed_with("slow", "x"));
    let r = install.verify(&[&install.file("slow.eml", &raw)]);
    assert_eq!(r["decision"], "defer");
    assert!(
        r["dkim"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("time budget"),
        "{r}"
    );
}

#[test]
fn one_aligned_signature_among_many_still_verifies() {
    let w = world();
    let install = Install::with(w.dns_addr(), "max_signatures = 3", "");
    let genuine = police_signed_with("s2026", "Signed by many");
    // Ten unaligned signatures on top.
    let mut unaligned = genuine.clone();
    for _ in 0..10 {
        unaligned = signed(&unaligned, &w.keys.other, "mailer.example", "sel");
    }
    // Ten bogus signatures claiming the police's own key on top: the cap
    // does not hide the genuine one below them.
    let mut bogus = genuine.clone();
    for _ in 0..10 {
        bogus = signed(&bogus, &w.keys.other, "police.gi", "s2026");
    }
    let cases = [unaligned, bogus]
        .into_iter()
        .zip(["unaligned", "bogus"])
        .map(|(raw, name)| {
            case(
                name,
                through_gateway(&raw),
                "acknowledge",
                true,
                "dkim signature of police.gi verified",
            )
        })
        .collect();
    let reports = check(&install, cases);
    let bogus = reports[1]["dkim"].as_array().unwrap();
    assert_eq!(bogus.len(), 11);
    assert!(
        bogus[..10].iter().all(|d| d["result"] == "fail"),
        "{bogus:?}"
    );
    assert_eq!(bogus[10]["result"], "pass");
}

#[test]
fn examination_stops_at_the_first_aligned_pass() {
    let w = world();
    let install = Install::new("");
    // A genuine signature below one whose key never answers.
    let raw = signed(
        &police_signed_with("s2026", "x"),
        &w.keys.police,
        "police.gi",
        "slow",
    );
    let r = install.verify(&[&install.file("two.eml", &through_gateway(&raw))]);
    assert_eq!(r["decision"], "acknowledge", "{r}");
    assert_eq!(r["dkim"][0]["selector"], "slow");
    assert_eq!(r["dkim"][0]["result"], "none");
    assert!(
        r["dkim"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("an aligned signature had already verified"),
        "{r}"
    );
    assert_eq!(r["dkim"][1]["result"], "pass");
}

#[test]
fn signatures_and_keys_are_held_to_their_own_restrictions() {
    let w = world();
    let install = Install::new("");
    let mut without_from = opts("police.gi", "s2026");
    without_from.headers = ["To", "Subject", "Date", "Message-ID"]
        .map(String::from)
        .to_vec();
    let with_selector = |selector: &str| police_signed_with(selector, "x");
    let cases = vec![
        // The From header is not signed: the signature is ignored, and
        // as an aligned broken signature it outweighs an SPF pass.
        case(
            "from_not_signed",
            from_police_server(&sign(
                &request("officer@police.gi", "x"),
                &w.keys.police,
                &without_from,
            )),
            "quarantine",
            false,
            "from header is not signed",
        ),
        // A key in testing mode: the message counts as unsigned, so SPF
        // decides.
        case(
            "testing_key_spf_pass",
            from_police_server(&with_selector("testing")),
            "acknowledge",
            true,
            "spf pass",
        ),
        case(
            "testing_key_spf_fail",
            through_gateway(&with_selector("testing")),
            "quarantine",
            false,
            "",
        ),
        // A key for another service, a key that excludes SHA-256.
        case(
            "key_not_for_email",
            from_police_server(&with_selector("nomail")),
            "quarantine",
            false,
            "not for e-mail",
        ),
        case(
            "key_without_sha256",
            from_police_server(&with_selector("sha1only")),
            "quarantine",
            false,
            "sha256",
        ),
        // An underscore inside the selector is looked up, not deferred.
        case(
            "underscore_in_selector",
            through_gateway(&with_selector("sel_1")),
            "acknowledge",
            true,
            "dkim signature of police.gi verified",
        ),
        // d= with a trailing dot makes a name no lookup can answer: a
        // malformed aligned signature, which outweighs an SPF pass (and
        // never defers the message).
        case(
            "trailing_dot_in_d",
            from_police_server(&signed(
                &request("officer@police.gi", "x"),
                &w.keys.police,
                "police.gi.",
                "s2026",
            )),
            "quarantine",
            false,
            "",
        ),
        case(
            "empty_label_in_s",
            through_gateway(&with_selector("s2026.")),
            "quarantine",
            false,
            "",
        ),
        // The key is found among other TXT records at its name.
        case(
            "key_among_other_records",
            through_gateway(&with_selector("multi")),
            "acknowledge",
            true,
            "dkim signature of police.gi verified",
        ),
    ];
    let reports = check(&install, cases);
    assert_eq!(reports[0]["dkim"][0]["result"], "permerror");
    assert_eq!(reports[1]["dkim"][0]["result"], "none");
    assert!(
        reports[1]["dkim"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("t=y")
    );
    assert_eq!(reports[3]["dkim"][0]["result"], "permerror");
    assert_eq!(reports[4]["dkim"][0]["result"], "permerror");
    for malformed in [&reports[6], &reports[7]] {
        assert_eq!(malformed["dkim"][0]["result"], "permerror", "{malformed}");
        assert!(
            malformed["dkim"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("valid key name")
        );
    }
}

#[test]
fn trusted_hop_selection() {
    let w = world();
    let install = Install::with(
        w.dns_addr(),
        "internal_networks = [\"198.51.100.0/24\"]",
        "",
    );
    let plain = request("officer@police.gi", "Unsigned");
    // An internal relay between the MX and the store is passed over.
    let via_relay = {
        let raw = with_header(
            &plain,
            "Received",
            &format!(
                "from mail.police.gi (mail.police.gi [{POLICE_IP}])\r\n\tby {MX} (Postfix) with ESMTPS id A1; Mon, 2 Nov 2026 10:00:00 +0000"
            ),
        );
        delivered(
            &raw,
            "relay.ivpn.net",
            "198.51.100.2",
            "<officer@police.gi>",
        )
    };
    // LMTP delivery by the same host name is passed over.
    let via_lmtp = {
        let raw = from_police_server(&plain);
        with_header(
            &raw,
            "Received",
            &format!("from {MX} by {MX} (Dovecot) with LMTP id B2; Mon, 2 Nov 2026 10:00:01 +0000"),
        )
    };
    // A Received line by an untrusted name is no evidence at all.
    let untrusted = with_header(
        &with_header(&plain, "Return-Path", "<officer@police.gi>"),
        "Received",
        &format!(
            "from mail.police.gi (mail.police.gi [{POLICE_IP}])\r\n\tby mx.elsewhere.example with ESMTP id C3; Mon, 2 Nov 2026 10:00:00 +0000"
        ),
    );
    // Exim's words for SMTP (a client that asked for SMTPUTF8; STARTTLS
    // then HELO) are SMTP.
    let exim = |word: &str| {
        with_header(
            &with_header(&plain, "Return-Path", "<officer@police.gi>"),
            "Received",
            &format!(
                "from [{POLICE_IP}] (helo=mail.police.gi)\r\n\tby {MX} with {word} (Exim 4.96)\r\n\t(envelope-from <officer@police.gi>)\r\n\tid 1vRW33-0095gM-DE\r\n\tfor legal@ivpn.net; Mon, 02 Nov 2026 10:00:00 +0000"
            ),
        )
    };
    // A trusted line with a word the policy does not know, written over a
    // line the sender forged: the search stops at the trusted line, so the
    // forged one is never read.
    let unknown_word = |word: &str| {
        let forged = with_header(
            &with_header(&plain, "Return-Path", "<officer@police.gi>"),
            "Received",
            &format!(
                "from mail.police.gi (mail.police.gi [{POLICE_IP}])\r\n\tby {MX} (Postfix) with ESMTPS id 1AAAA; Mon, 2 Nov 2026 09:59:00 +0000"
            ),
        );
        with_header(
            &forged,
            "Received",
            &format!(
                "from [203.0.113.66] (helo=mx.evil.example)\r\n\tby {MX} with {word} (Exim 4.96)\r\n\tid 1vRW33-0095gM-DE\r\n\tfor legal@ivpn.net; Mon, 02 Nov 2026 10:00:00 +0000"
            ),
        )
    };
    let cases = vec![
        case(
            "via_internal_relay",
            via_relay,
            "acknowledge",
            true,
            "spf pass",
        ),
        case("via_lmtp", via_lmtp, "acknowledge", true, "spf pass"),
        case(
            "exim_utf8esmtps",
            exim("utf8esmtps"),
            "acknowledge",
            true,
            "spf pass",
        ),
        case("exim_smtps", exim("smtps"), "acknowledge", true, "spf pass"),
        case(
            "unknown_word_over_a_forged_line",
            unknown_word("essmtpx"),
            "quarantine",
            false,
            "records no smtp transfer",
        ),
        case(
            "local_submission_over_a_forged_line",
            unknown_word("local-esmtp"),
            "quarantine",
            false,
            "records no smtp transfer",
        ),
        case(
            "untrusted_mx",
            untrusted,
            "quarantine",
            false,
            "no received line from a trusted mx",
        ),
    ];
    check(&install, cases);
}

#[test]
fn output_shapes_and_stdin() {
    let install = Install::new("");
    let raw = from_police_server(&police_signed("Single"));
    let file = install.file("one.eml", &raw);
    let single = install.verify(&[&file]);
    assert!(single.is_object(), "one file gives one object");
    for key in [
        "file",
        "message_id",
        "sha256",
        "from",
        "from_domain",
        "dkim",
        "spf",
        "dmarc",
        "agency",
        "decision",
        "reason",
        "reply",
    ] {
        assert!(single.get(key).is_some(), "missing {key}");
    }
    use sha2::Digest;
    assert_eq!(single["sha256"], hex::encode(sha2::Sha256::digest(&raw)));
    assert!(single["message_id"].as_str().unwrap().starts_with('<'));

    let out = install.run_with_stdin(&["verify", "--json", "-"], Some(&raw));
    assert!(out.status.success());
    let from_stdin: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(from_stdin["file"], "-");
    assert_eq!(from_stdin["decision"], "acknowledge");

    let text = install.run(&["verify", file.to_str().unwrap()]);
    let line = String::from_utf8(text.stdout).unwrap();
    assert!(
        line.contains("decision=acknowledge") && line.contains("reply=yes"),
        "{line}"
    );

    let missing = install.run(&["verify", "/nonexistent/x.eml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/x.eml"));
}

#[test]
fn oversized_messages_are_quarantined_unparsed() {
    let install = Install::new("[limits]\nmax_message_bytes = 4096\n");
    let mut raw = police_signed("Big");
    raw.extend(std::iter::repeat_n(b'A', 10_000));
    raw.extend_from_slice(b"\r\n");
    let r = install.verify(&[&install.file("big.eml", &from_police_server(&raw))]);
    assert_eq!(r["decision"], "quarantine");
    assert!(
        r["reason"].as_str().unwrap().contains("max_message_bytes"),
        "{r}"
    );
    assert_eq!(r["dkim"], serde_json::json!([]));
}
