//! SMTP servers on 127.0.0.1 for the reply tests.
//!
//! [`Sink`] is Debian's aiosmtpd (`python3-aiosmtpd`, installed by
//! scripts/install-test-deps) run by a small handler script written here:
//! it stores every message with its envelope (`MAIL FROM`, `RCPT TO`, the
//! EHLO name, whether the session was TLS and who authenticated) in a
//! folder, one `NNNNNN.eml` + `NNNNNN.json` pair per message, the JSON
//! written last so that a pair is complete once it shows. It can offer
//! STARTTLS or implicit TLS with a certificate from a CA made for it, and
//! require AUTH with a fixed user and password.
//!
//! [`Broken`] is a tiny SMTP server of our own that speaks real SMTP up to
//! the message content and then misbehaves: it closes the connection
//! without a final reply, or never answers at all — the two ways a
//! transaction can end without anyone knowing whether the message was
//! taken.
//!
//! A missing aiosmtpd fails the test with a message saying how to install
//! it: CI installs it, so a skip would only hide a broken set-up.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::accept::Acceptor;
use crate::free_port;

/// The AUTH user the sink accepts when started with [`Options::auth`].
pub const USER: &str = "legal@ivpn.net";
/// Its password (with characters that need care in AUTH PLAIN).
pub const PASSWORD: &str = "s3cret \"sm=tp\" pässword";

/// How long the sink may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The handler and server: aiosmtpd's `SMTP` protocol on an asyncio
/// server, so that AUTH (which aiosmtpd's command line cannot configure)
/// and TLS can be switched on.
const SCRIPT: &str = r#"
import asyncio, json, os, ssl, sys
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

out, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cert = sys.argv[4] if len(sys.argv) > 4 else None
key = sys.argv[5] if len(sys.argv) > 5 else None
user = os.environ.get("SINK_USER")
password = os.environ.get("SINK_PASSWORD")
# Stores the message, then waits this long before answering: a client
# stopped meanwhile cannot know the message arrived.
delay = int(os.environ.get("SINK_DELAY_MS", "0")) / 1000.0

class Store:
    def __init__(self):
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        base = os.path.join(out, "%06d" % self.n)
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content)
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "mail_options": envelope.mail_options,
            "helo": session.host_name,
            "tls": server.transport.get_extra_info("ssl_object") is not None,
            "login": session.auth_data.login.decode() if session.authenticated else None,
        }
        with open(base + ".json.tmp", "w") as f:
            json.dump(meta, f)
        os.rename(base + ".json.tmp", base + ".json")
        if delay:
            await asyncio.sleep(delay)
        return "250 2.0.0 Ok: stored as %06d" % self.n

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user \
        and auth_data.password.decode() == password
    # handled=False: aiosmtpd then answers 535 itself.
    return AuthResult(success=ok, handled=False, auth_data=auth_data)

def context():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx

handler = Store()
starttls = context() if mode == "starttls" else None
implicit = context() if mode == "implicit" else None

def factory():
    kwargs = {}
    if user:
        # aiosmtpd sees TLS only when it did the STARTTLS itself, so with
        # implicit TLS it must not insist on it before offering AUTH.
        kwargs = dict(authenticator=authenticator, auth_required=True,
                      auth_require_tls=starttls is not None)
    return SMTP(handler, hostname="sink.test", tls_context=starttls,
                require_starttls=starttls is not None, **kwargs)

async def main():
    server = await asyncio.get_running_loop().create_server(
        factory, host="127.0.0.1", port=port, ssl=implicit)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"#;

/// How a sink is set up.
#[derive(Default, Clone, Copy)]
pub struct Options {
    /// `Some("starttls")` or `Some("implicit")`: TLS with a certificate
    /// for 127.0.0.1 signed by a CA made for this sink ([`Sink::ca_file`]).
    pub tls: Option<&'static str>,
    /// Require AUTH as [`USER`] with [`PASSWORD`].
    pub auth: bool,
    /// Milliseconds between storing a message and answering for it.
    pub delay_ms: u64,
}

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The reverse path as aiosmtpd reports it: `<>` for the null path.
    pub mail_from: String,
    /// The forward paths, one per accepted `RCPT TO`.
    pub rcpt_tos: Vec<String>,
    /// The name the client gave in EHLO (or HELO).
    pub helo: String,
    /// Whether the session was TLS (STARTTLS or implicit).
    pub tls: bool,
    /// The AUTH identity, if the client authenticated.
    pub login: Option<String>,
    /// The message as transmitted (dot-stuffing undone).
    pub data: Vec<u8>,
}

impl Received {
    /// The message as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).to_string()
    }

    /// The header block, unfolded, one field per line.
    pub fn headers(&self) -> Vec<String> {
        let text = self.text();
        let end = text.find("\r\n\r\n").unwrap_or(text.len());
        let mut out: Vec<String> = Vec::new();
        for line in text[..end].split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = out.last_mut() {
                    last.push(' ');
                    last.push_str(line.trim());
                }
            } else {
                out.push(line.to_string());
            }
        }
        out
    }

    /// The value of the one header field `name` (case-insensitive),
    /// failing the test when it is absent or repeated.
    pub fn header(&self, name: &str) -> String {
        let values = self.all(name);
        assert_eq!(values.len(), 1, "{name} in\n{}", self.text());
        values[0].clone()
    }

    /// Every value of header field `name`.
    pub fn all(&self, name: &str) -> Vec<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.headers()
            .iter()
            .filter(|h| h.to_ascii_lowercase().starts_with(&prefix))
            .map(|h| h[prefix.len()..].trim().to_string())
            .collect()
    }
}

/// A running aiosmtpd.
pub struct Sink {
    dir: tempfile::TempDir,
    child: Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    ca: Option<PathBuf>,
}

impl Sink {
    /// A plain sink (no TLS, no AUTH) on a port the OS chose.
    pub fn start() -> Sink {
        Self::start_with(free_port(), Options::default())
    }

    /// A plain sink on `port` (to bring a server "back up" where the
    /// daemon expects it).
    pub fn start_on(port: u16) -> Sink {
        Self::start_with(port, Options::default())
    }

    /// A sink on `port` set up as `options` say.
    pub fn start_with(port: u16, options: Options) -> Sink {
        let python = python();
        let dir = tempfile::Builder::new()
            .prefix("legal-intake-smtp-")
            .tempdir()
            .unwrap();
        let script = dir.path().join("sink.py");
        fs::write(&script, SCRIPT).unwrap();
        let out = dir.path().join("mail");
        fs::create_dir(&out).unwrap();
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .arg(&out)
            .arg(port.to_string())
            .arg(options.tls.unwrap_or("plain"));
        let ca = options.tls.map(|_| {
            let (ca, cert, key) = certificates(dir.path());
            cmd.arg(cert).arg(key);
            ca
        });
        if options.auth {
            cmd.env("SINK_USER", USER).env("SINK_PASSWORD", PASSWORD);
        }
        cmd.env("SINK_DELAY_MS", options.delay_ms.to_string());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                fs::File::create(dir.path().join("stderr")).unwrap(),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
        // The script prints "ready" once it listens.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) if line.trim() == "ready" => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "aiosmtpd did not start on port {port} ({other:?}): {}",
                    fs::read_to_string(dir.path().join("stderr")).unwrap_or_default()
                );
            }
        }
        Sink {
            dir,
            child,
            port,
            ca,
        }
    }

    /// The PEM certificate of the CA that signed the sink's certificate.
    pub fn ca_file(&self) -> &Path {
        self.ca.as_deref().expect("started with TLS")
    }

    /// The messages received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        let out = self.dir.path().join("mail");
        let mut names: Vec<PathBuf> = fs::read_dir(&out)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|json| {
                let meta: serde_json::Value =
                    serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
                let s = |k: &str| meta[k].as_str().unwrap_or_default().to_string();
                Received {
                    mail_from: s("mail_from"),
                    rcpt_tos: meta["rcpt_tos"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_string())
                        .collect(),
                    helo: s("helo"),
                    tls: meta["tls"].as_bool().unwrap_or(false),
                    login: meta["login"].as_str().map(str::to_string),
                    data: fs::read(json.with_extension("eml")).unwrap(),
                }
            })
            .collect()
    }

    /// Waits until at least `n` messages arrived; returns them all.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                started.elapsed() < limit,
                "expected {n} messages at the sink, got {}",
                got.len()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's interpreter, which sees Debian's python3-aiosmtpd even where
/// another `python3` comes first on PATH.
fn python() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/python3");
    let python = if debian.exists() {
        debian
    } else {
        PathBuf::from("python3")
    };
    let ok = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the reply tests need aiosmtpd for {}: apt-get install python3-aiosmtpd (scripts/install-test-deps)",
        python.display()
    );
    python
}

/// A CA and a certificate for 127.0.0.1 and localhost signed by it
/// ([`crate::tls::test_ca`]): (CA certificate, server certificate, server key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca = crate::tls::test_ca(dir, "legal-intake test SMTP CA");
    (ca.ca, ca.cert, ca.key)
}

/// How [`Broken`] ends a transaction once it has the message content.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Answers `DATA` with 354, reads the content up to the final `.`,
    /// then closes the connection without a reply.
    CloseAfterContent,
    /// Closes the connection right after reading the `DATA` command,
    /// before any content could be sent.
    CloseAtData,
    /// Reads the content and then never answers, holding the connection
    /// open.
    HangAfterContent,
    /// Reads the `DATA` command and never answers it (no 354), holding
    /// the connection open: no content can go out.
    HangAtData,
}

/// A hand-written SMTP server that breaks its transactions (module docs).
pub struct Broken {
    /// The port it listens on, on 127.0.0.1 (chosen by the OS).
    pub port: u16,
    /// Message contents it read in full (up to the final dot).
    pub contents: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    _accept: Acceptor,
}

impl Broken {
    /// Starts a server that ends every transaction `how` says.
    pub fn start(how: Misbehaviour) -> Broken {
        let contents = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (c, n) = (contents.clone(), connections.clone());
        let accept = Acceptor::start("broken SMTP server", move |stream, stop| {
            n.fetch_add(1, Ordering::SeqCst);
            let (c, s) = (c.clone(), stop.clone());
            thread::spawn(move || {
                let _ = converse(stream, how, &c, &s);
            });
        });
        Broken {
            port: accept.port,
            contents,
            connections,
            _accept: accept,
        }
    }
}

fn converse(
    stream: TcpStream,
    how: Misbehaviour,
    contents: &Mutex<Vec<Vec<u8>>>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = stream.try_clone()?;
    let mut lines = BufReader::new(stream);
    out.write_all(b"220 broken.test ESMTP\r\n")?;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => out.write_all(b"250-broken.test\r\n250 8BITMIME\r\n")?,
            "HELO" | "MAIL" | "RCPT" | "RSET" | "NOOP" => out.write_all(b"250 2.0.0 Ok\r\n")?,
            "QUIT" => {
                out.write_all(b"221 2.0.0 Bye\r\n")?;
                return Ok(());
            }
            "DATA" if how == Misbehaviour::CloseAtData => {
                return Ok(());
            }
            "DATA" if how == Misbehaviour::HangAtData => {
                hold(&mut lines, stop);
                return Ok(());
            }
            "DATA" => {
                out.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                let mut content = Vec::new();
                loop {
                    let mut raw = Vec::new();
                    if lines.read_until(b'\n', &mut raw)? == 0 {
                        return Ok(());
                    }
                    if raw == b".\r\n" {
                        break;
                    }
                    content.extend_from_slice(raw.strip_prefix(b".").unwrap_or(&raw));
                }
                contents.lock().unwrap().push(content);
                if how == Misbehaviour::HangAfterContent {
                    hold(&mut lines, stop);
                }
                return Ok(());
            }
            _ => out.write_all(b"502 5.5.2 Not implemented\r\n")?,
        }
    }
}

/// Holds the connection, answering nothing, until the client closes it or
/// the test ends.
fn hold(lines: &mut BufReader<TcpStream>, stop: &AtomicBool) {
    let mut sink = [0u8; 64];
    while !stop.load(Ordering::SeqCst) {
        match lines.get_mut().read(&mut sink) {
            Ok(0) => return,
            _ => thread::sleep(Duration::from_millis(50)),
        }
    }
}
