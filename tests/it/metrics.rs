//! The Prometheus endpoint of `run` (`[metrics]`): the real binary against
//! a real Dovecot, scraped with a plain TCP client speaking HTTP/1.1.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use testkit::dovecot::Dovecot;

use crate::support::*;

fn metrics_section(port: u16) -> String {
    format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n")
}

/// Police mail whose key lookup times out: deferred, left in the inbox.
fn deferred_request() -> Vec<u8> {
    through_gateway(&police_signed_with("slow", "Preservation order"))
}

/// Unsigned mail claiming the police's address, from a stranger's server.
fn forged_request() -> Vec<u8> {
    delivered(
        &request("officer@police.gi", "URGENT disclosure"),
        "mail.example",
        STRANGER_IP,
        "<officer@police.gi>",
    )
}

/// An HTTP response as read off the wire.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of one series (`name{labels}`), when present.
    fn value(&self, series: &str) -> Option<f64> {
        self.body.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .map(|v| v.parse().expect("a sample value is a number"))
        })
    }

    /// A series that must be present.
    fn get(&self, series: &str) -> f64 {
        self.value(series)
            .unwrap_or_else(|| panic!("no {series} in\n{}", self.body))
    }
}

/// Sends `request` as is and reads the response up to the server's close.
fn exchange(port: u16, request: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.set_write_timeout(Some(Duration::from_secs(20)))?;
    stream.write_all(request)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).expect("the response is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of the head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_string(), v.trim().to_string())
        })
        .collect();
    let response = Response {
        status,
        headers,
        body: body.to_string(),
    };
    if request.starts_with(b"GET ") {
        let length: usize = response
            .header("Content-Length")
            .expect("Content-Length")
            .parse()
            .unwrap();
        assert_eq!(length, response.body.len(), "Content-Length is the body's");
    }
    assert_eq!(response.header("Connection"), Some("close"));
    Ok(response)
}

fn get(port: u16, path: &str) -> Response {
    exchange(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/plain\r\n\r\n")
            .as_bytes(),
    )
    .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Starts `run` with `[metrics]` on a free port and waits until the
/// endpoint answers. A port taken by someone else between choosing and
/// binding it is retried with another.
fn start_daemon(install: &Install, mut port: u16) -> (Child, u16) {
    for _ in 0..5 {
        let text = std::fs::read_to_string(&install.config).unwrap();
        let start = text.find("[metrics]").expect("a [metrics] section");
        std::fs::write(
            &install.config,
            format!("{}{}", &text[..start], metrics_section(port)),
        )
        .unwrap();
        let mut child = install
            .command(&["run"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let log = stderr_of(&mut child);
                assert!(
                    log.contains("Address already in use"),
                    "the daemon exited with {status}: {log}"
                );
                break;
            }
            if exchange(
                port,
                format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
            )
            .is_ok_and(|r| r.status == 200)
            {
                return (child, port);
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the metrics endpoint did not come up"
            );
            thread::sleep(Duration::from_millis(50));
        }
        port = free_port();
    }
    panic!("no free port for the metrics endpoint after 5 tries");
}

#[test]
fn run_serves_counters_and_case_log_figures_and_survives_garbage() {
    let dovecot = Dovecot::start();
    // The section is rewritten with the real port by `start_daemon`.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let install = Install::watching(&dovecot, "", &metrics_section(port));

    // `run --once` serves nothing: it succeeds while the port is taken.
    install.run_once();
    drop(held);

    let (mut daemon, port) = start_daemon(&install, port);
    let genuine = police_request("Production order RGP/2026/0117");
    let forged = forged_request();
    let deferred = deferred_request();
    dovecot.append("INBOX", &genuine);
    dovecot.append("INBOX", &forged);
    dovecot.append("INBOX", &deferred);
    wait_for(
        Duration::from_secs(60),
        "two messages filed and moved",
        || {
            dovecot.messages("Processed") == vec![genuine.clone()]
                && dovecot.messages("Quarantine") == vec![forged.clone()]
        },
    );
    // The reply cannot be delivered (nothing listens on the configured
    // SMTP port), so its first attempt ends in a retry.
    wait_for(Duration::from_secs(60), "the counters to catch up", || {
        let r = get(port, "/metrics");
        r.value("legal_intake_messages_total{decision=\"quarantine\"}") == Some(1.0)
            && r.value("legal_intake_messages_total{decision=\"defer\"}") == Some(1.0)
            && r.value("legal_intake_replies_total{outcome=\"retry\"}")
                .is_some_and(|n| n >= 1.0)
            && r.value("legal_intake_deferred_messages") == Some(1.0)
    });
    assert_eq!(dovecot.messages("INBOX"), vec![deferred], "deferred stays");

    let r = get(port, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let build = format!(
        "legal_intake_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    for (series, expected) in [
        ("legal_intake_up", 1.0),
        (build.as_str(), 1.0),
        ("legal_intake_messages_total{decision=\"acknowledge\"}", 1.0),
        ("legal_intake_messages_total{decision=\"quarantine\"}", 1.0),
        ("legal_intake_messages_total{decision=\"reject\"}", 0.0),
        ("legal_intake_messages_total{decision=\"defer\"}", 1.0),
        ("legal_intake_case_log_up", 1.0),
        (
            "legal_intake_case_log_verdicts{decision=\"acknowledge\"}",
            1.0,
        ),
        (
            "legal_intake_case_log_verdicts{decision=\"quarantine\"}",
            1.0,
        ),
        ("legal_intake_case_log_verdicts{decision=\"reject\"}", 0.0),
        // The acknowledgement waits for its next try; the forgery gets none.
        ("legal_intake_outbox_queue_depth", 1.0),
        ("legal_intake_replies_total{outcome=\"sent\"}", 0.0),
        ("legal_intake_replies_total{outcome=\"failed\"}", 0.0),
        ("legal_intake_replies_total{outcome=\"unknown\"}", 0.0),
        // `received` and `quarantined`: both open; the deferred message
        // is on no case yet.
        ("legal_intake_open_cases", 2.0),
        // Judged again only after a minute: it waits in the inbox.
        ("legal_intake_deferred_messages", 1.0),
        ("legal_intake_imap_errors_total{kind=\"transient\"}", 0.0),
        ("legal_intake_imap_errors_total{kind=\"fatal\"}", 0.0),
        ("legal_intake_deadlines_due_within_7_days", 0.0),
        ("legal_intake_deadlines_overdue", 0.0),
    ] {
        assert_eq!(r.get(series), expected, "{series}\n{}", r.body);
    }
    let since = r.get("legal_intake_seconds_since_last_pass");
    assert!((0.0..30.0).contains(&since), "{since}");
    for family in [
        "messages_total counter",
        "replies_total counter",
        "imap_errors_total counter",
        "open_cases gauge",
        "outbox_queue_depth gauge",
    ] {
        assert!(
            r.body.contains(&format!("# TYPE legal_intake_{family}\n")),
            "{family}\n{}",
            r.body
        );
    }
    assert!(
        r.body.contains("# HELP legal_intake_open_cases "),
        "{}",
        r.body
    );

    // Deadlines are read from the log at scrape time: a person sets them
    // with `cases set` while the daemon runs.
    let db = install.db();
    let reference = |status: &str| -> String {
        db.query_row(
            "SELECT reference FROM cases WHERE status = ?1",
            [status],
            |r| r.get(0),
        )
        .unwrap()
    };
    let today = time::OffsetDateTime::now_utc().date();
    let day = |d: time::Date| legal_intake::clock::day(d);
    for (case, deadline) in [
        (reference("received"), day(today + time::Duration::days(3))),
        (
            reference("quarantined"),
            day(today - time::Duration::days(3)),
        ),
    ] {
        let out = install.run(&["cases", "set", &case, "--deadline", &deadline]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let r = get(port, "/metrics");
    assert_eq!(r.get("legal_intake_deadlines_due_within_7_days"), 1.0);
    assert_eq!(r.get("legal_intake_deadlines_overdue"), 1.0);
    assert_eq!(r.get("legal_intake_open_cases"), 2.0);

    // Other paths, methods and hosts.
    let r = get(port, "/");
    assert_eq!(r.status, 404);
    assert!(!r.body.contains("legal_intake_"), "{}", r.body);
    assert_eq!(get(port, "/metrics/extra").status, 404);
    let r = exchange(
        port,
        format!("POST /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 3\r\n\r\nabc")
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("GET, HEAD"));
    let r = exchange(
        port,
        format!("HEAD /metrics HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert!(
        r.header("Content-Length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 0
    );
    // A page on a name rebound to 127.0.0.1 does not get the figures.
    let r = exchange(
        port,
        format!("GET /metrics HTTP/1.1\r\nHost: attacker.example:{port}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 403);
    assert!(!r.body.contains("legal_intake_"), "{}", r.body);

    // Garbage, an oversized head, and a client that says nothing: each
    // gets its answer (or its timeout) and the daemon carries on.
    let r = exchange(
        port,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    // Bytes beyond ASCII in a field value are obs-text, which HTTP
    // allows (RFC 9110 §5.5): read, not refused.
    let r = exchange(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX: \xff\xfe\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let r = exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(r.status, 400, "HTTP/1.1 without Host: {}", r.body);
    let mut big = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ".to_vec();
    big.resize(big.len() + 20_000, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    let r = exchange(port, &big).unwrap();
    assert_eq!(r.status, 431);
    let silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
    half.write_all(b"GET /metr").unwrap();
    let r = get(port, "/metrics");
    assert_eq!(
        r.status, 200,
        "a scrape is served while other clients dawdle"
    );
    // The silent client, and one that sends only blank lines (which
    // HTTP/1.1 allows before a request line), are cut off after the read
    // timeout without an answer.
    let mut blank = TcpStream::connect(("127.0.0.1", port)).unwrap();
    blank.write_all(b"\r\n\r\n").unwrap();
    for (what, mut client) in [("silent", silent), ("blank lines", blank)] {
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "", "{what}");
    }
    drop(half);

    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon is still running"
    );
    let r = get(port, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.get("legal_intake_messages_total{decision=\"acknowledge\"}"),
        1.0
    );

    let status = terminate(&mut daemon);
    let log = stderr_of(&mut daemon);
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0: {log}");
    assert!(log.contains("metrics endpoint listening"), "{log}");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the endpoint is closed with the daemon"
    );
}

#[test]
fn check_config_refuses_a_remote_listener_unless_allowed() {
    let remote = Install::new("[metrics]\nlisten = \"0.0.0.0:9187\"\n");
    let stderr = remote.refused(&["check-config"]);
    assert!(stderr.contains("config.toml: metrics.listen: "), "{stderr}");
    assert!(stderr.contains("allow_remote = true"), "{stderr}");

    let allowed = Install::new("[metrics]\nlisten = \"0.0.0.0:9187\"\nallow_remote = true\n");
    let out = allowed.run(&["check-config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("metrics http://0.0.0.0:9187/metrics"),
        "{stdout}"
    );

    let garbled = Install::new("[metrics]\nlisten = \"9187\"\n");
    let stderr = garbled.refused(&["check-config"]);
    assert!(stderr.contains("metrics.listen"), "{stderr}");
}

#[test]
fn a_metrics_port_in_use_stops_run_before_it_starts() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let install = Install::new(&metrics_section(port));
    let out = install.run(&["run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("metrics.listen 127.0.0.1:{port}")),
        "{stderr}"
    );
    drop(taken);
}
