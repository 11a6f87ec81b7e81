//! Shared test world: one real DNS server on 127.0.0.1 with the zones of
//! a few agencies, foreign senders and attackers, DKIM keys generated for
//! this run, and helpers to build messages as the MX would store them and
//! to run the real binary. The mail servers the tests talk to are
//! testkit's ([`testkit::dovecot`], [`testkit::smtp_sink`],
//! [`testkit::postfix`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;

use legal_intake::config::{self, Config};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use rusqlite::Connection;
use rusqlite::types::FromSql;
use testkit::dkim::{KeyKind, SignOptions, TestKey, generate, sign};
use testkit::dns::{DnsServer, Zone};
use testkit::dovecot::Dovecot;

pub use testkit::free_port;

/// The trusted MX of the test installation.
pub const MX: &str = "mx1.ivpn.net";
/// The Royal Gibraltar Police's outgoing server (SPF-authorised).
pub const POLICE_IP: &str = "192.0.2.10";
pub const POLICE_IP6: &str = "2001:db8::10";
/// An address nobody authorised.
pub const STRANGER_IP: &str = "203.0.113.66";

/// Selectors `slow0` … of police.gi whose key queries are never answered.
pub const NEVER_ANSWERING_KEYS: usize = 50;

/// Keys of this run, by name.
pub struct Keys {
    pub police: TestKey,
    pub police_1024: TestKey,
    pub police_512: TestKey,
    pub government: TestKey,
    pub other: TestKey,
}

pub struct World {
    pub dns: DnsServer,
    pub keys: Keys,
}

/// The world is built once per test process: key generation and the DNS
/// server are shared by every test.
pub fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let keys = Keys {
            police: generate(KeyKind::Rsa(2048)),
            police_1024: generate(KeyKind::Rsa(1024)),
            police_512: generate(KeyKind::Rsa(512)),
            government: generate(KeyKind::Ed25519),
            other: generate(KeyKind::Rsa(2048)),
        };
        let mut z = Zone::new();
        // Royal Gibraltar Police: RSA keys, SPF for its server, DMARC.
        z.txt("s2026._domainkey.police.gi", &keys.police.dns_txt)
            .txt("k1024._domainkey.police.gi", &keys.police_1024.dns_txt)
            .txt("k512._domainkey.police.gi", &keys.police_512.dns_txt)
            .txt("revoked._domainkey.police.gi", "v=DKIM1; k=rsa; p=")
            // A selector with an underscore inside it: a name DNS serves,
            // though not a host name.
            .txt("sel_1._domainkey.police.gi", &keys.police.dns_txt)
            .txt(
                "police.gi",
                &format!("v=spf1 ip4:{POLICE_IP} ip6:{POLICE_IP6} -all"),
            )
            .txt("_dmarc.police.gi", "v=DMARC1; p=reject")
            .txt("soft.police.gi", &format!("v=spf1 ip4:{POLICE_IP} ~all"))
            // The police relay the MTA tests connect from.
            .txt("relay.police.gi", "v=spf1 ip4:127.0.0.1 -all")
            .a("mail.police.gi", POLICE_IP.parse().unwrap())
            .timeout("slow._domainkey.police.gi")
            .timeout("_dmarc.cid.police.gi")
            // The police key with restrictions of its own (RFC 6376 §3.6.1).
            .txt(
                "testing._domainkey.police.gi",
                &format!("{}; t=y", keys.police.dns_txt),
            )
            .txt(
                "nomail._domainkey.police.gi",
                &format!("{}; s=tlsrpt", keys.police.dns_txt),
            )
            .txt(
                "sha1only._domainkey.police.gi",
                &format!("{}; h=sha1", keys.police.dns_txt),
            )
            // Another TXT record before the key at the key's name.
            .txt("multi._domainkey.police.gi", "site-verification=0123456789")
            .txt("multi._domainkey.police.gi", &keys.police.dns_txt)
            .servfail("broken._domainkey.police.gi")
            .servfail("flaky.police.gi");
        // HM Government of Gibraltar: Ed25519 under a public suffix (gov.gi).
        z.txt(
            "ed2026._domainkey.gibraltar.gov.gi",
            &keys.government.dns_txt,
        )
        .txt("gibraltar.gov.gi", "v=spf1 -all");
        // Authenticated senders that are not Gibraltar agencies.
        for d in [
            "bka.de",
            "freemail.example",
            "evilpolice.gi",
            "example.com",
            "xn--plice-6ve.gi", // "pоlice.gi" with a Cyrillic o
            "mailer.example",
        ] {
            z.txt(&format!("sel._domainkey.{d}"), &keys.other.dns_txt)
                .txt(d, &format!("v=spf1 ip4:{STRANGER_IP} -all"));
        }
        // The company's own domain, for mail from colleagues.
        z.txt("sel._domainkey.ivpn.net", &keys.other.dns_txt);
        // Keys that never answer, one name each.
        for n in 0..NEVER_ANSWERING_KEYS {
            z.timeout(&format!("slow{n}._domainkey.police.gi"));
        }
        let dns = DnsServer::start(z).expect("start the test DNS server");
        World { dns, keys }
    })
}

impl World {
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns.addr()
    }
}

/// A temporary installation: a folder with a config file.
pub struct Install {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Install {
    /// Writes a config pointing at the test DNS; `extra` is appended
    /// (TOML sections) and may override nothing already set.
    pub fn new(extra: &str) -> Install {
        Self::with(world().dns_addr(), "", extra)
    }

    /// Full control over the `[auth]`/`[limits]` bodies.
    pub fn with(dns: SocketAddr, auth_extra: &str, extra: &str) -> Install {
        Self::full(
            dns,
            "[imap]\nhost = \"127.0.0.1\"\ntls = \"none\"\nusername = \"legal@ivpn.net\"\npassword_file = \"imap.password\"\n",
            auth_extra,
            extra,
        )
    }

    /// An installation watching `dovecot`; `imap_extra` goes into `[imap]`
    /// and `extra` is appended.
    pub fn watching(dovecot: &Dovecot, imap_extra: &str, extra: &str) -> Install {
        Self::full(
            world().dns_addr(),
            &dovecot.imap_config(imap_extra),
            "",
            extra,
        )
    }

    /// An installation watching a real IMAP server: `imap` is the whole
    /// `[imap]` section (see `Dovecot::imap_config`).
    pub fn full(dns: SocketAddr, imap: &str, auth_extra: &str, extra: &str) -> Install {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"{imap}

[smtp]
host = "127.0.0.1"
port = 2525
tls = "none"
from = "IVPN Legal <legal@ivpn.net>"

[dns]
nameservers = ["{dns}"]
timeout_secs = 1

[auth]
trusted_mx = ["{MX}"]
{auth_extra}

[store]
database = "cases.sqlite"

[[agency]]
name = "Royal Gibraltar Police"
domains = ["police.gi"]

[[agency]]
name = "HM Government of Gibraltar"
domains = ["gibraltar.gov.gi"]
{extra}
"#
            ),
        )
        .unwrap();
        Install { dir, config }
    }

    /// The configuration keeps the default `dns.timeout_secs` (5 s)
    /// instead of the tests' 1 s.
    pub fn with_default_dns_timeout(self) -> Install {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text.replacen("timeout_secs = 1\n", "", 1);
        std::fs::write(&self.config, text).unwrap();
        self
    }

    /// Runs the binary with `--config` and the arguments.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, None)
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = self.command(args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("run legal-intake");
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// The binary with `--config` and the arguments: no input, its output
    /// piped.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_legal-intake"));
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// [`Install::command`] as run through sudo by [`SUDO_CALLER`] with
    /// `USER=mallory`, the clock at `now` when given.
    pub fn operator_command(&self, args: &[&str], now: Option<&str>) -> Command {
        let mut cmd = self.command(args);
        cmd.env("USER", "mallory").env("SUDO_USER", SUDO_CALLER);
        match now {
            Some(t) => cmd.env("LEGAL_INTAKE_NOW", t),
            None => cmd.env_remove("LEGAL_INTAKE_NOW"),
        };
        cmd
    }

    /// `run --once`, which must succeed; its log.
    pub fn run_once(&self) -> String {
        let out = self.run(&["run", "--once"]);
        let log = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "run --once failed:\n{log}");
        log
    }

    /// Runs the binary, which must exit 2 (a usage or configuration
    /// error); its standard error.
    pub fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        err
    }

    /// Writes a message file into the installation folder.
    pub fn file(&self, name: &str, raw: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, raw).unwrap();
        p
    }

    /// `verify --json` over the files; the parsed JSON document.
    pub fn verify(&self, files: &[&Path]) -> serde_json::Value {
        let mut args = vec!["verify", "--json"];
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        args.extend(names.iter().map(String::as_str));
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "verify failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("verify --json prints JSON")
    }

    /// The installation's case log.
    pub fn db(&self) -> Connection {
        Connection::open(self.dir.path().join("cases.sqlite")).unwrap()
    }

    /// The one value a query returns (the first column of its first row).
    pub fn value<T: FromSql>(&self, sql: &str) -> T {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// The one integer a query such as `SELECT count(*) ...` returns.
    pub fn count(&self, sql: &str) -> i64 {
        self.value(sql)
    }

    /// The first column of every row a query returns, as text.
    pub fn texts(&self, sql: &str) -> Vec<String> {
        let db = self.db();
        let mut stmt = db.prepare(sql).unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }
}

/// The product's view of a [`Dovecot`]: its `[imap]` section read through
/// the real configuration loader (testkit knows nothing of the product's
/// configuration types).
pub trait DovecotImap {
    /// [`Dovecot::imap_config`] parsed as the daemon would see it.
    fn imap(&self, extra: &str) -> config::Imap;
}

impl DovecotImap for Dovecot {
    fn imap(&self, extra: &str) -> config::Imap {
        let path = self.dir().join("config.toml");
        Config::parse(&path, &self.imap_config(extra))
            .unwrap_or_else(|e| panic!("the harness wrote a bad [imap] section: {e}"))
            .imap
    }
}

/// A request as the sender writes it.
pub fn request(from: &str, subject: &str) -> Vec<u8> {
    testkit::mail::message(
        from,
        "legal@ivpn.net",
        subject,
        "Dear IVPN Legal,\n\nPlease find attached a production order concerning account i-ABCD-EFGH-JKLM.\n\nDetective Inspector\n",
    )
}

/// Signs with `key` for `domain`/`selector` using the default options.
pub fn signed(raw: &[u8], key: &TestKey, domain: &str, selector: &str) -> Vec<u8> {
    sign(raw, key, &opts(domain, selector))
}

pub fn opts(domain: &str, selector: &str) -> SignOptions {
    SignOptions::new(domain, selector)
}

/// What the trusted MX adds on delivery: its Received line for a client
/// with the given HELO name and address literal, then the Return-Path.
pub fn delivered(raw: &[u8], helo: &str, ip_literal: &str, return_path: &str) -> Vec<u8> {
    let received = format!(
        "from {helo} ({helo} [{ip_literal}])\r\n\tby {MX} (Postfix) with ESMTPS id 4Xy1Z2; Mon, 2 Nov 2026 10:00:00 +0000"
    );
    let raw = testkit::mail::with_header(raw, "Received", &received);
    testkit::mail::with_header(&raw, "Return-Path", return_path)
}

/// The usual path for police mail: their server, their envelope.
pub fn from_police_server(raw: &[u8]) -> Vec<u8> {
    delivered(raw, "mail.police.gi", POLICE_IP, "<officer@police.gi>")
}

/// Police mail relayed through a gateway that their SPF does not name.
pub fn through_gateway(raw: &[u8]) -> Vec<u8> {
    delivered(raw, "gw.example", STRANGER_IP, "<officer@police.gi>")
}

/// `raw` as the police send it: signed with their key (`s2026`) and
/// delivered from their server.
pub fn genuine(raw: &[u8]) -> Vec<u8> {
    from_police_server(&signed(raw, &world().keys.police, "police.gi", "s2026"))
}

/// A request from officer@police.gi signed with the police key under
/// `selector`, not yet delivered.
pub fn police_signed_with(selector: &str, subject: &str) -> Vec<u8> {
    signed(
        &request("officer@police.gi", subject),
        &world().keys.police,
        "police.gi",
        selector,
    )
}

/// A genuine Royal Gibraltar Police request: DKIM-signed, delivered from
/// their server.
pub fn police_request(subject: &str) -> Vec<u8> {
    police_request_from("Detective Inspector <officer@police.gi>", subject)
}

/// [`police_request`] with extra header fields (added before signing).
pub fn police_request_with(subject: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut raw = request("Detective Inspector <officer@police.gi>", subject);
    for (name, value) in headers {
        raw = testkit::mail::with_header(&raw, name, value);
    }
    genuine(&raw)
}

/// A request claiming to be from the police, with no evidence: quarantined.
pub fn forged(subject: &str) -> Vec<u8> {
    request("Detective Inspector <officer@police.gi>", subject)
}

/// The `Message-ID` of a message as written (angle brackets included).
pub fn message_id(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    text.lines()
        .find_map(|l| l.strip_prefix("Message-ID: "))
        .expect("a Message-ID")
        .trim()
        .to_string()
}

/// A police request whose key server fails (SERVFAIL) and that has no
/// SPF path to fall back on: deferred.
pub fn unverifiable_request() -> Vec<u8> {
    police_signed_with("broken", "key server down")
}

/// [`police_request`] with another From (an address at police.gi).
pub fn police_request_from(from: &str, subject: &str) -> Vec<u8> {
    genuine(&request(from, subject))
}

/// An authenticated request from a foreign agency (bka.de).
pub fn foreign_request(subject: &str) -> Vec<u8> {
    let w = world();
    delivered(
        &signed(
            &request("ermittler@bka.de", subject),
            &w.keys.other,
            "bka.de",
            "sel",
        ),
        "mail.bka.de",
        STRANGER_IP,
        "<ermittler@bka.de>",
    )
}

/// Waits for `cond`, failing the test after `limit`: a guard against a
/// hang, not a speed target.
pub fn wait_for(limit: std::time::Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Sends `sig` (such as `-HUP`) to a process started by a test.
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// SIGTERM to a daemon started by a test; how it exited.
pub fn terminate(child: &mut Child) -> ExitStatus {
    signal(child, "-TERM");
    child.wait().unwrap()
}

/// SIGTERM to a daemon started by a test, which must exit 0.
pub fn stop(child: &mut Child) {
    assert_eq!(terminate(child).code(), Some(0), "SIGTERM exits 0");
}

/// All a child wrote to its piped standard error.
pub fn stderr_of(child: &mut Child) -> String {
    use std::io::Read;
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("standard error piped")
        .read_to_string(&mut log)
        .unwrap();
    log
}

/// The next number of a fixed pseudo-random sequence (xorshift), so that
/// a failure reproduces.
pub fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// DKIM results of a received message, verified against the test DNS.
pub fn dkim_results(data: &[u8]) -> Vec<(String, DkimResult)> {
    let (config, opts) = testkit::dns::resolver_config(world().dns_addr());
    let auth = MessageAuthenticator::new(config, opts).unwrap();
    let parsed = AuthenticatedMessage::parse(data).expect("a parsable message");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(auth.verify_dkim(&parsed))
        .iter()
        .map(|o| {
            (
                o.signature().map(|s| s.d.clone()).unwrap_or_default(),
                o.result().clone(),
            )
        })
        .collect()
}

/// The caller a test's commands claim to have come through sudo from.
pub const SUDO_CALLER: &str = "alice";

/// The audit actor of a command run by this test process with `USER=mallory`
/// and `SUDO_USER=alice`: the real uid's name, the sudo caller named as such.
pub fn operator() -> String {
    let me = real_user();
    assert!(!me.is_empty() && me != "mallory");
    format!("{me} (sudo from {SUDO_CALLER})")
}

/// The name of this test process's real user, as `id -un` prints it.
pub fn real_user() -> String {
    let id = std::process::Command::new("id")
        .arg("-un")
        .output()
        .expect("id -un");
    String::from_utf8_lossy(&id.stdout).trim().to_string()
}
