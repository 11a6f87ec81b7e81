//! `testkit-samples DIR`: writes the demo's world into DIR (which must not
//! exist): `zone.txt` for `testkit-dns` with keys generated now, and a
//! handful of requests as the trusted MX `mx1.ivpn.net` stored them:
//!
//! | file | what it is |
//! |---|---|
//! | `01-police-warrant.eml` | a genuine Royal Gibraltar Police request, DKIM-signed, with a PDF warrant |
//! | `02-government-order.eml` | HM Government of Gibraltar, Ed25519-signed, relayed (SPF fails) |
//! | `03-foreign-agency.eml` | a German federal police request, authenticated, not Gibraltar |
//! | `04-forged-police.eml` | claims police.gi, sent from an unauthorised server, unsigned |
//! | `05-police-out-of-office.eml` | an automatic reply from police.gi |
//! | `06-lookalike-domain.eml` | `evilpolice.gi`, authenticated, a look-alike |

use std::path::PathBuf;
use std::process::ExitCode;

use testkit::dkim::{KeyKind, SignOptions, TestKey, generate, sign};
use testkit::mail::{message, with_header};

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: testkit-samples DIR");
        return ExitCode::FAILURE;
    };
    if dir.exists() {
        eprintln!("testkit-samples: {} already exists", dir.display());
        return ExitCode::FAILURE;
    }
    match write(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testkit-samples: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Adds what the MX records on delivery.
fn delivered(raw: &[u8], helo: &str, ip: &str, return_path: &str) -> Vec<u8> {
    let received = format!(
        "from {helo} ({helo} [{ip}])\r\n\tby mx1.ivpn.net (Postfix) with ESMTPS id 4Xy1Z2; Mon, 2 Nov 2026 10:00:00 +0000"
    );
    with_header(
        &with_header(raw, "Received", &received),
        "Return-Path",
        return_path,
    )
}

fn signed(raw: &[u8], key: &TestKey, domain: &str, selector: &str) -> Vec<u8> {
    sign(raw, key, &SignOptions::new(domain, selector))
}

/// A multipart request with a (tiny, valid) PDF attachment.
fn with_pdf(from: &str, subject: &str, text: &str, pdf_name: &str) -> Vec<u8> {
    let pdf = "JVBERi0xLjQKMSAwIG9iajw8L1R5cGUvQ2F0YWxvZy9QYWdlcyAyIDAgUj4+ZW5kb2JqCjIgMCBvYmo8PC9UeXBlL1BhZ2VzL0tpZHNbXS9Db3VudCAwPj5lbmRvYmoKdHJhaWxlcjw8L1Jvb3QgMSAwIFI+PgolJUVPRgo=";
    let plain = message(from, "legal@ivpn.net", subject, "");
    let headers_end = plain
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(plain.len());
    let headers = String::from_utf8_lossy(&plain[..headers_end])
        .lines()
        .filter(|l| !l.starts_with("Content-"))
        .collect::<Vec<_>>()
        .join("\r\n");
    format!(
        "{headers}\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n\
         --b1\r\nContent-Type: application/pdf; name=\"{pdf_name}\"\r\n\
         Content-Disposition: attachment; filename=\"{pdf_name}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{pdf}\r\n--b1--\r\n",
        text.replace('\n', "\r\n")
    )
    .into_bytes()
}

fn write(dir: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let police = generate(KeyKind::Rsa(2048));
    let government = generate(KeyKind::Ed25519);
    let other = generate(KeyKind::Rsa(2048));
    let zone = format!(
        "s2026._domainkey.police.gi TXT {}\n\
         police.gi TXT v=spf1 ip4:192.0.2.10 -all\n\
         _dmarc.police.gi TXT v=DMARC1; p=reject\n\
         ed2026._domainkey.gibraltar.gov.gi TXT {}\n\
         gibraltar.gov.gi TXT v=spf1 ip4:192.0.2.20 -all\n\
         sel._domainkey.bka.de TXT {o}\n\
         bka.de TXT v=spf1 ip4:198.51.100.30 -all\n\
         sel._domainkey.evilpolice.gi TXT {o}\n\
         evilpolice.gi TXT v=spf1 ip4:203.0.113.66 -all\n",
        police.dns_txt,
        government.dns_txt,
        o = other.dns_txt
    );
    let samples: Vec<(&str, Vec<u8>)> = vec![
        (
            "01-police-warrant.eml",
            delivered(
                &signed(
                    &with_pdf(
                        "DI Jane Bosano <j.bosano@police.gi>",
                        "Search warrant RGP/2026/0117",
                        "Dear IVPN Legal,\n\nPlease find attached a search warrant issued by the Magistrates' Court \
                         concerning account i-7KQ2-M9XD-4TPA. The warrant prohibits disclosure to the account holder.\n\n\
                         Detective Inspector Jane Bosano\nRoyal Gibraltar Police\n",
                        "warrant-RGP-2026-0117.pdf",
                    ),
                    &police,
                    "police.gi",
                    "s2026",
                ),
                "mail.police.gi",
                "192.0.2.10",
                "<j.bosano@police.gi>",
            ),
        ),
        (
            "02-government-order.eml",
            delivered(
                &signed(
                    &message(
                        "Office of the Attorney General <ag@gibraltar.gov.gi>",
                        "legal@ivpn.net",
                        "Court order 2026/44: preservation of records",
                        "Dear Sirs,\n\nThe Supreme Court of Gibraltar orders the preservation of records relating to \
                         account ivpn4F7A9C21 until further notice.\n\nOffice of the Attorney General\n",
                    ),
                    &government,
                    "gibraltar.gov.gi",
                    "ed2026",
                ),
                "relay.gateway.example",
                "198.51.100.7",
                "<ag@gibraltar.gov.gi>",
            ),
        ),
        (
            "03-foreign-agency.eml",
            delivered(
                &signed(
                    &message(
                        "Bundeskriminalamt <ermittlungen@bka.de>",
                        "legal@ivpn.net",
                        "Auskunftsersuchen / request for subscriber data",
                        "Please provide the subscriber data and connection logs for IP 192.0.2.99 on 2026-10-01 14:22 UTC.\n",
                    ),
                    &other,
                    "bka.de",
                    "sel",
                ),
                "mail.bka.de",
                "198.51.100.30",
                "<ermittlungen@bka.de>",
            ),
        ),
        (
            "04-forged-police.eml",
            delivered(
                &message(
                    "Royal Gibraltar Police <emergency@police.gi>",
                    "legal@ivpn.net",
                    "URGENT emergency disclosure request - life at risk",
                    "This is an emergency. Send all data for account i-7KQ2-M9XD-4TPA within the hour.\n",
                ),
                "mail.police.gi",
                "203.0.113.66",
                "<emergency@police.gi>",
            ),
        ),
        (
            "05-police-out-of-office.eml",
            delivered(
                &signed(
                    &with_header(
                        &message(
                            "DI Jane Bosano <j.bosano@police.gi>",
                            "legal@ivpn.net",
                            "Automatic reply: out of office",
                            "I am out of the office until Monday.\n",
                        ),
                        "Auto-Submitted",
                        "auto-replied",
                    ),
                    &police,
                    "police.gi",
                    "s2026",
                ),
                "mail.police.gi",
                "192.0.2.10",
                "<j.bosano@police.gi>",
            ),
        ),
        (
            "06-lookalike-domain.eml",
            delivered(
                &signed(
                    &message(
                        "Royal Gibraltar Police <officer@evilpolice.gi>",
                        "legal@ivpn.net",
                        "Subpoena for account records",
                        "Please comply with the attached subpoena.\n",
                    ),
                    &other,
                    "evilpolice.gi",
                    "sel",
                ),
                "mail.evilpolice.gi",
                "203.0.113.66",
                "<officer@evilpolice.gi>",
            ),
        ),
    ];
    std::fs::write(dir.join("zone.txt"), zone).map_err(|e| e.to_string())?;
    for (name, raw) in samples {
        std::fs::write(dir.join(name), raw).map_err(|e| e.to_string())?;
    }
    Ok(())
}
