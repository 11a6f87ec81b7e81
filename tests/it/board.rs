//! The case board (`serve`) in a real headless Chromium (Debian's, over
//! chromedriver) against a case log filed by the real `ingest` from
//! messages verified against the test DNS server: signing in, each view,
//! an editor's changes and their audit events, hostile subjects, bodies
//! and attachment names rendered inert, and — with a plain HTTP client,
//! sending what no browser would — CSRF, roles and the sign-in limit.
//!
//! Screenshots of each view are written to `target/screenshots/` (or
//! `$LEGAL_INTAKE_SCREENSHOTS`), kept by CI as artefacts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use testkit::http;
use testkit::webdriver::Browser;

use crate::support::*;

const PASSWORD: &str = "correct horse battery staple";

/// A served case log: a police request (acknowledged), a foreign one
/// (rejected) and a forgery full of markup (quarantined); an editor
/// `alice` and a viewer `bob`.
struct Served {
    install: Install,
    child: Child,
    addr: SocketAddr,
    police: String,
    foreign: String,
    hostile: String,
}

/// What a forger writes where the board shows text.
const HOSTILE_SUBJECT: &str = "<script>alert(\"subject\")</script><img src=x onerror=alert(1)>";
const HOSTILE_NAME: &str = "\"><img src=x onerror=alert(3)>.html";

fn hostile_message() -> Vec<u8> {
    let raw = format!(
        "From: Detective Inspector <officer@police.gi>\r\n\
To: legal@ivpn.net\r\n\
Subject: {HOSTILE_SUBJECT}\r\n\
Date: {date}\r\n\
Message-ID: <hostile-1@police.gi>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\
\r\n\
--b\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>Production order</p><script>alert(\"body\")</script><img src=x onerror=alert(2)><a href=\"javascript:alert(4)\">click</a>\r\n\
--b\r\n\
Content-Type: text/html; name=\"x.html\"\r\n\
Content-Disposition: attachment; filename=\"\\\"><img src=x onerror=alert(3)>.html\"\r\n\
\r\n\
<script>alert(\"attachment\")</script>\r\n\
--b--\r\n",
        date = testkit::mail::rfc5322_date(1_793_613_600)
    );
    delivered(
        raw.as_bytes(),
        "mail.example.net",
        STRANGER_IP,
        "<officer@police.gi>",
    )
}

impl Served {
    fn start() -> Served {
        let port = free_port();
        let install = Install::new(&format!("[web]\nlisten = \"127.0.0.1:{port}\"\n"));
        let files = [
            install.file(
                "police.eml",
                &police_request("Production order, account i-ABCD-EFGH-JKLM"),
            ),
            install.file("foreign.eml", &foreign_request("Auskunftsersuchen")),
            install.file("hostile.eml", &hostile_message()),
        ];
        let mut args = vec!["ingest".to_string(), "--json".to_string()];
        args.extend(files.iter().map(|f| f.display().to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = install.run(&args);
        succeeded(&out);
        let filed: Value = serde_json::from_slice(&out.stdout).unwrap();
        let case = |i: usize, decision: &str| {
            assert_eq!(filed[i]["decision"], decision, "{filed}");
            filed[i]["case"].as_str().unwrap().to_string()
        };
        let (police, foreign, hostile) = (
            case(0, "acknowledge"),
            case(1, "reject"),
            case(2, "quarantine"),
        );
        let pw = install.file("password", format!("{PASSWORD}\n").as_bytes());
        for (name, role) in [("alice", "editor"), ("bob", "viewer")] {
            let out = install.run(&[
                "users",
                "add",
                name,
                "--role",
                role,
                "--password-file",
                &pw.display().to_string(),
            ]);
            succeeded(&out);
        }
        let child = Command::new(env!("CARGO_BIN_EXE_legal-intake"))
            .arg("--config")
            .arg(&install.config)
            .arg("serve")
            .env("LEGAL_INTAKE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(install.dir.path().join("serve.log")).unwrap())
            .spawn()
            .expect("start serve");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_for(Duration::from_secs(30), "the board to listen", || {
            http::request(addr, "GET", "/login", &[], b"").is_ok_and(|r| r.status == 200)
        });
        Served {
            install,
            child,
            addr,
            police,
            foreign,
            hostile,
        }
    }

    /// What `serve` logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.install.dir.path().join("serve.log")).unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `cases show --json`.
    fn show(&self, reference: &str) -> Value {
        let out = self.install.run(&["cases", "show", reference, "--json"]);
        succeeded(&out);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Signs in over plain HTTP; the session cookie and the page's CSRF
    /// token.
    fn sign_in(&self, name: &str, password: &str) -> (String, String) {
        let r = self.try_sign_in(name, password);
        assert_eq!(r.status, 303, "{}", r.text());
        let cookie = r
            .all("set-cookie")
            .into_iter()
            .find(|c| c.starts_with("legal_intake_session="))
            .expect("a session cookie")
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let page = self.get("/", &cookie);
        assert_eq!(page.status, 200);
        (cookie, csrf_of(&page.text()))
    }

    fn try_sign_in(&self, name: &str, password: &str) -> http::Response {
        let form = http::request(self.addr, "GET", "/login", &[], b"").unwrap();
        let login_cookie = form
            .header("set-cookie")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let body = format!(
            "name={name}&password={}&csrf={}",
            password.replace(' ', "+"),
            csrf_of(&form.text())
        );
        http::request(
            self.addr,
            "POST",
            "/login",
            &[
                ("Cookie", &login_cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            body.as_bytes(),
        )
        .unwrap()
    }

    fn get(&self, path: &str, cookie: &str) -> http::Response {
        http::request(self.addr, "GET", path, &[("Cookie", cookie)], b"").unwrap()
    }

    fn post(&self, path: &str, cookie: &str, body: &str) -> http::Response {
        http::request(
            self.addr,
            "POST",
            path,
            &[
                ("Cookie", cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            body.as_bytes(),
        )
        .unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            stop(&mut self.child);
        } else {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The command exited 0; its output otherwise.
fn succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first form's CSRF token on a page.
fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[at..at + 64].to_string()
}

fn screenshots() -> PathBuf {
    std::env::var_os("LEGAL_INTAKE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots"))
}

fn sign_in_with(browser: &Browser, served: &Served, name: &str, password: &str) {
    browser.goto(&served.url("/login"));
    browser.type_into("#name", name);
    browser.type_into("#password", password);
    browser.follow("#sign-in");
}

#[test]
fn an_editor_signs_in_works_a_case_and_signs_out() {
    let served = Served::start();
    let browser = Browser::start();
    let shots = screenshots();

    // Every page wants a session.
    browser.goto(&served.url(&format!("/cases/{}", served.police)));
    assert!(browser.url().ends_with("/login"), "{}", browser.url());
    browser.screenshot(&shots.join("login.png"));

    sign_in_with(&browser, &served, "alice", "not the password");
    assert!(
        browser
            .page_text()
            .contains("The name or the password is wrong."),
        "{}",
        browser.page_text()
    );
    sign_in_with(&browser, &served, "alice", PASSWORD);
    assert_eq!(browser.url(), served.url("/"));
    assert_eq!(browser.title(), "Open cases · legal-intake");
    let board = browser.page_text();
    assert!(
        board.contains(&served.police) && board.contains("alice (editor)"),
        "{board}"
    );
    assert!(board.contains("1 in quarantine"), "{board}");
    // The quarantined case is not among the open ones.
    assert!(!board.contains(&served.hostile), "{board}");
    let session = browser
        .cookies()
        .into_iter()
        .find(|c| c["name"] == "legal_intake_session")
        .expect("a session cookie");
    assert_eq!(
        (
            &session["httpOnly"],
            &session["secure"],
            &session["sameSite"]
        ),
        (
            &Value::Bool(true),
            &Value::Bool(true),
            &Value::from("Strict")
        ),
        "{session}"
    );
    browser.screenshot(&shots.join("board.png"));

    browser.follow("a[href=\"/deadlines\"]");
    assert!(
        browser.page_text().contains("Overdue"),
        "{}",
        browser.page_text()
    );
    browser.goto(&served.url("/quarantine"));
    let q = browser.page_text();
    assert!(q.contains(&served.hostile) && q.contains("Why held"), "{q}");
    browser.goto(&served.url("/search"));
    browser.type_into("#q", "i-ABCD-EFGH-JKLM");
    browser.follow("#search");
    let found = browser.page_text();
    assert!(found.contains(&served.police), "{found}");
    browser.screenshot(&shots.join("search.png"));
    browser.type_into("#q", "bka.de");
    browser.follow("#search");
    let found = browser.page_text();
    assert!(
        found.contains(&served.foreign) && !found.contains(&served.police),
        "{found}"
    );

    // The case page: the message as text, evidence, the reply as queued,
    // the audit trail.
    browser.goto(&served.url(&format!("/cases/{}", served.police)));
    let page = browser.page_text();
    for expected in [
        "Production order, account i-ABCD-EFGH-JKLM",
        "Please find attached a production order",
        "acknowledge",
        "dkim police.gi/s2026=pass",
        "acknowledgement to officer@police.gi",
        "case_opened",
    ] {
        assert!(page.contains(expected), "{expected} not in {page}");
    }
    browser.screenshot(&shots.join("case.png"));

    // A status change, a deadline and a note, each an audit event by
    // the account.
    browser.select("#status", "under_review");
    browser.type_into("#status-note", "reviewing with counsel");
    browser.follow("#move");
    assert!(browser.url().ends_with(&served.police), "{}", browser.url());
    browser.type_into("#fields-form input[name=deadline]", "2026-12-31");
    browser.select("#outcome", "none_held");
    browser.follow("#save-fields");
    browser.type_into("#note", "hard copy expected by courier");
    browser.follow("#add-note");
    let page = browser.page_text();
    assert!(
        page.contains("under_review") && page.contains("2026-12-31"),
        "{page}"
    );
    let shown = served.show(&served.police);
    assert_eq!(shown["case"]["status"], "under_review");
    assert_eq!(shown["case"]["deadline"], "2026-12-31");
    assert_eq!(shown["case"]["outcome"], "none_held");
    let by_alice: Vec<(&str, &Value)> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "web:alice")
        .map(|e| (e["kind"].as_str().unwrap(), &e["data"]))
        .collect();
    assert_eq!(
        by_alice.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        ["status_changed", "field_changed", "field_changed", "note"],
        "{by_alice:?}"
    );
    assert_eq!(by_alice[0].1["note"], "reviewing with counsel");
    assert_eq!(by_alice[3].1["note"], "hard copy expected by courier");

    // The year's figures, stamped with the audit head.
    browser.follow("a[href=\"/stats\"]");
    assert_eq!(
        browser.text("#requests"),
        "2 (authenticated: acknowledged or rejected)"
    );
    assert!(
        browser.text("#quarantined").starts_with("1 "),
        "{}",
        browser.page_text()
    );
    assert!(
        browser.page_text().contains("none held"),
        "{}",
        browser.page_text()
    );
    browser.screenshot(&shots.join("figures.png"));

    // Signing out ends the session: the page wants signing in again.
    browser.follow("form.who button");
    assert!(browser.url().ends_with("/login"), "{}", browser.url());
    browser.goto(&served.url("/"));
    assert!(browser.url().ends_with("/login"), "{}", browser.url());

    // Signing in and out are in the chain, which still verifies.
    let kinds = served.install.count(
        "SELECT count(*) FROM events WHERE actor = 'web:alice' AND kind IN ('signed_in', 'signed_out')",
    );
    assert_eq!(kinds, 2);
    let audit = served.install.run(&["audit", "verify"]);
    succeeded(&audit);
}

#[test]
fn hostile_subjects_bodies_and_attachment_names_are_inert() {
    let served = Served::start();
    let browser = Browser::start();
    sign_in_with(&browser, &served, "bob", PASSWORD);
    for path in [
        "/quarantine".to_string(),
        format!("/cases/{}", served.hostile),
        format!("/search?q={}", "script"),
    ] {
        browser.goto(&served.url(&path));
        assert_eq!(browser.dialog(), None, "{path}: a script ran");
        for css in [
            "script",
            "img",
            "[onerror]",
            "a[href^=javascript]",
            "iframe",
        ] {
            assert!(browser.find_all(css).is_empty(), "{path}: an element {css}");
        }
    }
    // The search for the markup found the case.
    browser.goto(&served.url("/search?q=onerror"));
    assert!(
        browser.page_text().contains(&served.hostile),
        "{}",
        browser.page_text()
    );
    // On the case page the markup is there to read, as text.
    browser.goto(&served.url(&format!("/cases/{}", served.hostile)));
    let text = browser.page_text();
    assert!(text.contains(HOSTILE_SUBJECT), "{text}");
    assert!(text.contains("Production order"), "{text}");
    assert!(
        text.contains("no text part; its HTML is shown as text"),
        "{text}"
    );
    browser.screenshot(&screenshots().join("hostile-case.png"));
    // A viewer has no forms to change anything.
    assert!(
        browser
            .find_all("#status-form, #fields-form, #note-form, #release-form")
            .is_empty()
    );

    // The attachment is listed with its hash and downloads as a file,
    // never as a page.
    let link = browser.find_all("table.attachments a");
    assert_eq!(link.len(), 1);
    assert_eq!(browser.text("table.attachments a"), HOSTILE_NAME);
    let (cookie, _) = served.sign_in("bob", PASSWORD);
    let shown = served.show(&served.hostile);
    let message = shown["messages"][0]["id"].as_i64().unwrap();
    let r = served.get(
        &format!("/cases/{}/messages/{message}/attachments/0", served.hostile),
        &cookie,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let disposition = r.header("content-disposition").unwrap();
    let plain = disposition
        .strip_prefix("attachment; filename=\"")
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("{disposition}"));
    assert!(
        plain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "{disposition}"
    );
    assert!(disposition.contains("filename*=UTF-8''"), "{disposition}");
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .contains("sandbox")
    );
    assert_eq!(r.text(), "<script>alert(\"attachment\")</script>");
}

#[test]
fn forms_without_the_sessions_token_or_an_editor_are_refused() {
    let served = Served::start();
    let (alice, alice_csrf) = served.sign_in("alice", PASSWORD);
    let (bob, bob_csrf) = served.sign_in("bob", PASSWORD);
    let status = |body: &str, cookie: &str| {
        served.post(&format!("/cases/{}/status", served.police), cookie, body)
    };
    // Every page carries the policy: no script, no frame, nothing foreign.
    let page = served.get("/", &alice);
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));

    // No token, another session's token, a made-up one: refused.
    for body in [
        "status=under_review".to_string(),
        format!("status=under_review&csrf={bob_csrf}"),
        format!("status=under_review&csrf={}", "0".repeat(64)),
    ] {
        let r = status(&body, &alice);
        assert_eq!(r.status, 403, "{body}: {}", r.text());
    }
    // No session at all: to the sign-in form, nothing changed.
    let r = status(&format!("status=under_review&csrf={alice_csrf}"), "");
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    // A viewer with a good token: refused for the role.
    let r = status(&format!("status=under_review&csrf={bob_csrf}"), &bob);
    assert_eq!(r.status, 403);
    assert!(r.text().contains("bob is a viewer"), "{}", r.text());
    assert_eq!(served.show(&served.police)["case"]["status"], "received");
    // A sign-in form posted without its cookie (from another site): refused.
    let r = served.post(
        "/login",
        "",
        &format!("name=alice&password={PASSWORD}&csrf={}", "1".repeat(64)),
    );
    assert_eq!(r.status, 403);

    // The editor with the right token: changed, and refused moves say why.
    let r = status(&format!("status=under_review&csrf={alice_csrf}"), &alice);
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some(&*format!("/cases/{}", served.police)))
    );
    assert_eq!(
        served.show(&served.police)["case"]["status"],
        "under_review"
    );
    let r = status(&format!("status=received&csrf={alice_csrf}"), &alice);
    assert_eq!(r.status, 409, "{}", r.text());
    let r = served.post(
        &format!("/cases/{}/fields", served.police),
        &alice,
        &format!("deadline=soon&csrf={alice_csrf}"),
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("is not a date"), "{}", r.text());
    let r = served.get("/cases/LR-2026-9999", &alice);
    assert_eq!(r.status, 404);

    // A quarantined request released by the editor, with the note the
    // decision needs: a viewer cannot, and nothing is released without it.
    let release = |cookie: &str, body: &str| {
        served.post(&format!("/cases/{}/release", served.hostile), cookie, body)
    };
    assert_eq!(
        release(&bob, &format!("note=x&csrf={bob_csrf}")).status,
        403
    );
    assert_eq!(
        release(&alice, &format!("note=&csrf={alice_csrf}")).status,
        400
    );
    let r = release(
        &alice,
        &format!("note=confirmed+by+phone&csrf={alice_csrf}"),
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let shown = served.show(&served.hostile);
    assert_eq!(shown["case"]["status"], "under_review");
    assert_eq!(shown["replies"][0]["kind"], "acknowledgement");
    let queued = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "reply_queued")
        .unwrap();
    assert_eq!(queued["actor"], "web:alice");
    assert_eq!(queued["data"]["note"], "confirmed by phone");
    let audit = served.install.run(&["audit", "verify"]);
    succeeded(&audit);

    // The evidence bundle, for a viewer too: one archive that tar opens,
    // the message in it byte for byte, the export an event by the account.
    let r = served.get(&format!("/cases/{}/bundle", served.police), &bob);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-disposition").unwrap(),
        format!(
            "attachment; filename=\"{0}-evidence.tar\"; filename*=UTF-8''{0}-evidence.tar",
            served.police
        )
    );
    let dir = served.install.dir.path().join("unpacked");
    std::fs::create_dir(&dir).unwrap();
    let tar = dir.join("bundle.tar");
    std::fs::write(&tar, &r.body).unwrap();
    let out = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&dir)
        .output()
        .unwrap();
    succeeded(&out);
    let folder = dir.join(&served.police);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(folder.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["exported_by"], "web:bob");
    let shown = served.show(&served.police);
    let eml = std::fs::read(folder.join("msg1.eml")).unwrap();
    assert_eq!(
        legal_intake::audit::sha256_hex(&eml),
        shown["messages"][0]["sha256"].as_str().unwrap()
    );
    assert!(
        shown["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "case_exported" && e["actor"] == "web:bob")
    );
}

#[test]
fn failed_sign_ins_are_limited_and_account_changes_end_sessions() {
    let served = Served::start();
    for i in 0..5 {
        let r = served.try_sign_in("alice", "wrong password here");
        assert_eq!(r.status, 401, "attempt {i}");
        assert!(r.text().contains("The name or the password is wrong."));
    }
    // Past the limit even the right password waits.
    let r = served.try_sign_in("alice", PASSWORD);
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(
        r.text().contains("Too many failed sign-ins"),
        "{}",
        r.text()
    );
    // An unknown name is answered as a wrong password.
    let r = served.try_sign_in("nobody", PASSWORD);
    assert_eq!(r.status, 401);
    // The limit is per account: bob still signs in.
    let (bob, _) = served.sign_in("bob", PASSWORD);
    // One line each for the admin tailing the journal, never a password.
    let log = served.log();
    assert_eq!(
        log.matches("sign-in refused: wrong name or password")
            .count(),
        6,
        "{log}"
    );
    assert!(
        log.contains("sign-in refused: too many failures account=alice peer=127.0.0.1"),
        "{log}"
    );
    assert!(
        log.contains("signed in to the case board account=bob"),
        "{log}"
    );
    assert!(
        !log.contains("wrong password here") && !log.contains(PASSWORD),
        "{log}"
    );

    // A new password ends bob's session; disabling ends the next one and
    // refuses signing in.
    let pw = served
        .install
        .file("new-password", b"another long passphrase\n");
    let out = served.install.run(&[
        "users",
        "passwd",
        "bob",
        "--password-file",
        &pw.display().to_string(),
    ]);
    succeeded(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 session(s) ended"));
    let r = served.get("/", &bob);
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    let (bob, _) = served.sign_in("bob", "another long passphrase");
    let out = served.install.run(&["users", "disable", "bob"]);
    assert!(out.status.success());
    assert_eq!(served.get("/", &bob).status, 303);
    assert_eq!(
        served.try_sign_in("bob", "another long passphrase").status,
        401
    );
    let list = served.install.run(&["users", "list", "--json"]);
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list[1]["name"], "bob");
    assert_eq!(list[1]["disabled"], true);
    assert!(
        !list.to_string().contains("argon2"),
        "no hash in the listing"
    );
    // Each account change is an audit event naming the operator, never
    // the password or its hash.
    let events: Vec<(String, String)> = served
        .install
        .db()
        .prepare("SELECT kind, data FROM events WHERE kind LIKE 'account_%' ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        events.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        [
            "account_added",
            "account_added",
            "account_password_changed",
            "account_disabled"
        ]
    );
    assert!(
        events
            .iter()
            .all(|(_, d)| !d.contains("argon2") && !d.contains("passphrase"))
    );
}
