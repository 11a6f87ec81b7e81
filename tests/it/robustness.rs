//! Pathological inputs: every one gets a decision, none crashes or hangs.

use std::time::{Duration, Instant};

use crate::support::*;

/// A deterministic byte soup (xorshift), so failures reproduce.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len).map(|_| xorshift(&mut seed) as u8).collect()
}

fn nested_multipart(depth: usize) -> Vec<u8> {
    let mut out = b"From: officer@police.gi\r\nSubject: deep\r\nMIME-Version: 1.0\r\n".to_vec();
    for i in 0..depth {
        out.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n")
                .as_bytes(),
        );
    }
    out.extend_from_slice(b"Content-Type: text/plain\r\n\r\nleaf\r\n");
    for i in (0..depth).rev() {
        out.extend_from_slice(format!("--b{i}--\r\n").as_bytes());
    }
    out
}

fn repeated(header: &str, times: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() * times + 64);
    for _ in 0..times {
        out.extend_from_slice(header.as_bytes());
    }
    out.extend_from_slice(b"From: officer@police.gi\r\n\r\nbody\r\n");
    out
}

#[test]
fn pathological_inputs_get_a_decision() {
    let install = Install::new("");
    let mut huge_line = b"From: officer@police.gi\r\nSubject: ".to_vec();
    huge_line.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge_line.extend_from_slice(b"\r\n\r\nbody\r\n");
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("binary", noise(64 * 1024, 0x9E37_79B9_7F4A_7C15)),
        (
            "no_header_section",
            b"just some words without any header\r\nand more\r\n".to_vec(),
        ),
        ("only_blank_lines", b"\r\n\r\n\r\n".to_vec()),
        (
            "bare_lf",
            b"From: officer@police.gi\nSubject: lf\n\nbody\n".to_vec(),
        ),
        (
            "bare_cr",
            b"From: officer@police.gi\rSubject: cr\r\rbody\r".to_vec(),
        ),
        (
            "nul_bytes",
            b"From: offi\0cer@police.gi\r\nSubject: \0\0\r\n\r\n\0body\0\r\n".to_vec(),
        ),
        ("header_line_1mb", huge_line),
        ("headers_100k", repeated("X-Filler: value\r\n", 100_000)),
        (
            "received_10k",
            repeated(
                &format!(
                    "Received: from a ([{STRANGER_IP}]) by {MX} with ESMTP; Mon, 2 Nov 2026 10:00:00 +0000\r\n"
                ),
                10_000,
            ),
        ),
        (
            "dkim_garbage_1k",
            repeated(
                "DKIM-Signature: v=1; a=rsa-sha256; d=police.gi; s=\0; bh=!!; b=??\r\n",
                1_000,
            ),
        ),
        ("from_1k", repeated("From: officer@police.gi\r\n", 1_000)),
        ("multipart_10k_deep", nested_multipart(10_000)),
        (
            "invalid_utf8",
            b"From: \xff\xfe@\xfd.gi\r\nSubject: \xc3\x28\r\n\r\n\xff\r\n".to_vec(),
        ),
        (
            "header_without_colon",
            b"From officer@police.gi\r\nSubject x\r\n\r\nbody\r\n".to_vec(),
        ),
        ("folded_forever", {
            let mut v = b"From: officer@police.gi\r\nSubject: a".to_vec();
            for _ in 0..50_000 {
                v.extend_from_slice(b"\r\n a");
            }
            v.extend_from_slice(b"\r\n\r\nbody\r\n");
            v
        }),
    ];
    let files: Vec<_> = inputs
        .iter()
        .map(|(name, raw)| install.file(&format!("{name}.eml"), raw))
        .collect();
    let refs: Vec<_> = files.iter().map(|p| p.as_path()).collect();
    let started = Instant::now();
    let out = install.verify(&refs);
    // A guard against hangs, not a speed target (see benches/ for that).
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
    let reports = out.as_array().unwrap();
    assert_eq!(reports.len(), inputs.len());
    for ((name, raw), r) in inputs.iter().zip(reports) {
        // None of these is authenticated, so none may be acknowledged or
        // rejected; every one is set aside for a person.
        assert_eq!(r["decision"], "quarantine", "{name}: {r}");
        assert_eq!(r["reply"], false, "{name}");
        assert_eq!(r["size"], raw.len(), "{name}");
        assert!(!r["reason"].as_str().unwrap().is_empty(), "{name}");
    }
}

/// `check-config` exits 2 naming the file, `key` and `reason`.
fn refused_naming(install: &Install, key: &str, reason: &str) {
    let err = install.refused(&["check-config"]);
    assert!(
        err.contains("config.toml") && err.contains(key) && err.contains(reason),
        "{err}"
    );
}

#[test]
fn a_bad_configuration_exits_2_naming_file_key_and_reason() {
    let install = Install::new("[limits]\ndefer_max_tries = \"five\"\n");
    refused_naming(&install, "limits.defer_max_tries", "invalid type");

    let install = Install::new("[imap2]\nhost = \"x\"\n");
    let out = install.run(&["verify", "/dev/null"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "verify refuses a bad config too"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("imap2"));

    // A domain cannot be both the company's and an agency's.
    let overlap = Install::with(
        world().dns_addr(),
        "own_domains = [\"ivpn.net\", \"cid.police.gi\"]\n",
        "",
    );
    refused_naming(&overlap, "auth.own_domains[1]", "Royal Gibraltar Police");

    let good = Install::new("");
    let out = good.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_legal-intake"))
        .args(["--config", "/nonexistent/config.toml", "check-config"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/config.toml"));
}

#[test]
fn log_lines_in_json_carry_the_stable_fields() {
    let install = Install::new("");
    let raw = police_request_from("officer@police.gi", "Warrant");
    let file = install.file("one.eml", &raw);
    let out = install.run(&["--log-format", "json", "ingest", file.to_str().unwrap()]);
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let line = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "message")
        .unwrap_or_else(|| panic!("no JSON message line in {stderr}"));
    assert_eq!(line["decision"], "acknowledge");
    assert_eq!(line["from"], "officer@police.gi");
    assert_eq!(line["uid"], "-");
    assert!(line["case"].as_str().unwrap().starts_with("LR-"));
    for key in ["reply", "reason", "level", "timestamp"] {
        assert!(line.get(key).is_some(), "{key} missing: {line}");
    }
    assert!(
        !stderr.contains("Dear IVPN Legal"),
        "bodies never reach the log"
    );
}
