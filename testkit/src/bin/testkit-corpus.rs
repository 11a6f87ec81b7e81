//! `testkit-corpus DIR [--count N] [--size BYTES]`: writes a benchmark
//! corpus for legal-intake into DIR (which must not exist):
//!
//! - `zone.txt`: a zone for `testkit-dns` with the Royal Gibraltar Police's
//!   DKIM key (RSA-2048, generated now), SPF and DMARC records;
//! - `msgs/00001.eml` …: N requests of about BYTES bytes each, DKIM-signed
//!   by police.gi and stored as the trusted MX `mx1.ivpn.net` delivered
//!   them (Received line with the police server's address, Return-Path).
//!
//! Every message differs (subject, body and Message-ID), so each is a
//! separate filing.

use std::path::PathBuf;
use std::process::ExitCode;

use testkit::dkim::{KeyKind, SignOptions, generate, sign};
use testkit::mail::{message, with_header};

const USAGE: &str = "usage: testkit-corpus DIR [--count N] [--size BYTES]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testkit-corpus: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    let mut count = 2000usize;
    let mut size = 20_000usize;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--count" => count = number(args.next())?,
            "--size" => size = number(args.next())?,
            _ if dir.is_none() && !a.starts_with('-') => dir = Some(PathBuf::from(a)),
            _ => return Err(USAGE.to_string()),
        }
    }
    let dir = dir.ok_or(USAGE)?;
    if dir.exists() {
        return Err(format!("{} already exists", dir.display()));
    }
    let msgs = dir.join("msgs");
    std::fs::create_dir_all(&msgs).map_err(|e| format!("cannot create {}: {e}", msgs.display()))?;

    let key = generate(KeyKind::Rsa(2048));
    let zone = format!(
        "s2026._domainkey.police.gi TXT {}\n\
         police.gi TXT v=spf1 ip4:192.0.2.10 -all\n\
         _dmarc.police.gi TXT v=DMARC1; p=reject\n",
        key.dns_txt
    );
    std::fs::write(dir.join("zone.txt"), zone).map_err(|e| e.to_string())?;

    let opts = SignOptions::new("police.gi", "s2026");
    // A paragraph of plausible request text, repeated to the wanted size.
    let paragraph = "Pursuant to the order of the Magistrates' Court of Gibraltar, the \
        Royal Gibraltar Police requests the preservation of records relating to \
        account i-ABCD-EFGH-JKLM for the period stated in the attached order.\n";
    for n in 1..=count {
        let mut body = format!("Reference RGP/{n:05}\n\n");
        while body.len() + paragraph.len() < size.saturating_sub(900) {
            body.push_str(paragraph);
        }
        let raw = message(
            "Detective Inspector <officer@police.gi>",
            "legal@ivpn.net",
            &format!("Preservation request RGP/{n:05}"),
            &body,
        );
        let raw = sign(&raw, &key, &opts);
        let raw = with_header(
            &raw,
            "Received",
            "from mail.police.gi (mail.police.gi [192.0.2.10])\r\n\tby mx1.ivpn.net (Postfix) with ESMTPS id 4Xy1Z2; Mon, 2 Nov 2026 10:00:00 +0000",
        );
        let raw = with_header(&raw, "Return-Path", "<officer@police.gi>");
        std::fs::write(msgs.join(format!("{n:05}.eml")), raw).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn number(v: Option<String>) -> Result<usize, String> {
    v.and_then(|s| s.parse().ok())
        .ok_or_else(|| USAGE.to_string())
}
