//! A throwaway Postfix (Debian's `postfix`, 3.7) on 127.0.0.1 as the
//! trusted MX (the tests' `mx1.ivpn.net`, passed to [`Postfix::start`]),
//! relaying `ivpn.net` over LMTP to a Dovecot of the tests: the real chain
//! that writes the `Received` line the product takes as SPF evidence.
//!
//! Each [`Postfix`] is its own instance in a temporary folder: its own
//! `config_directory`, `queue_directory`, `data_directory` and log file,
//! one SMTP listener on a port the OS chose, no DNS (`disable_dns_lookups`,
//! no reverse lookup of the client, so the client shows as `unknown`).
//! The `master` daemon runs in the foreground as a child process and gets
//! SIGTERM on drop. Postfix's master must run as root; a missing binary or
//! a non-root run fails the test with a message saying what is needed: CI
//! installs Postfix (scripts/install-test-deps) and runs as root.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::dovecot::stop;
use crate::free_port;

const MASTER: &str = "/usr/lib/postfix/sbin/master";
/// How long Postfix may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Read and write timeout of the SMTP client.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A running Postfix instance.
pub struct Postfix {
    dir: tempfile::TempDir,
    child: Child,
    /// The SMTP port.
    pub port: u16,
}

impl Postfix {
    /// Starts an MX named `myhostname` (the name its `Received` lines
    /// carry) for `ivpn.net` that delivers over LMTP to
    /// 127.0.0.1:`lmtp_port`.
    pub fn start(myhostname: &str, lmtp_port: u16) -> Postfix {
        assert!(
            Path::new(MASTER).is_file(),
            "the MTA tests need Postfix, and {MASTER} was not found: \
             run scripts/install-test-deps (or apt-get install postfix)"
        );
        let uid = Command::new("id").arg("-u").output().expect("run id");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "the MTA tests start Postfix, whose master daemon must run as root"
        );
        // The postfix account reaches the queue by path.
        let dir = tempfile::Builder::new()
            .prefix("legal-intake-postfix-")
            .tempdir_in("/tmp")
            .expect("create the Postfix folder");
        let root = dir.path().to_path_buf();
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        }
        for sub in ["conf", "queue", "data", "log"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        let status = Command::new("chown")
            .args(["postfix:", &root.join("data").display().to_string()])
            .status()
            .expect("run chown");
        assert!(status.success(), "chown postfix: the data directory");

        let mut last_failure = String::new();
        for _ in 0..5 {
            let port = free_port();
            fs::write(
                root.join("conf/main.cf"),
                main_cf(&root, myhostname, lmtp_port),
            )
            .unwrap();
            fs::write(root.join("conf/master.cf"), master_cf(port)).unwrap();
            // `postfix check` creates the queue's folders with the owners
            // and modes Postfix wants.
            let check = Command::new("/usr/sbin/postfix")
                .arg("-c")
                .arg(root.join("conf"))
                .arg("check")
                .output()
                .expect("run postfix check");
            assert!(
                check.status.success(),
                "postfix check: {}",
                String::from_utf8_lossy(&check.stderr)
            );
            let stderr = fs::File::create(root.join("log/master.err")).unwrap();
            let mut child = Command::new(MASTER)
                .arg("-c")
                .arg(root.join("conf"))
                .arg("-d")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {MASTER}: {e}"));
            match wait_ready(&mut child, port) {
                Ok(()) => return Postfix { dir, child, port },
                Err(why) => {
                    stop(&mut child);
                    last_failure = format!("{why}\n{}", read_log(&root));
                    if !last_failure.contains("in use") {
                        break;
                    }
                }
            }
        }
        panic!("Postfix did not start: {last_failure}");
    }

    /// Postfix's log so far, for failure messages.
    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }

    /// One SMTP transaction as a client at 127.0.0.1 that says `EHLO
    /// {ehlo}`: the message must be accepted (`250` after the data).
    pub fn send(&self, ehlo: &str, mail_from: &str, rcpt: &str, data: &[u8]) {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to Postfix");
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let expect = |code: &str, what: &str, reader: &mut BufReader<TcpStream>| {
            let mut reply = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("read a reply");
                reply.push_str(&line);
                // The last line of a reply has a space after the code.
                if line.len() < 4 || line.as_bytes()[3] != b'-' {
                    break;
                }
            }
            assert!(
                reply.starts_with(code),
                "{what}: expected {code}, got {reply}\n{}",
                self.log()
            );
        };
        expect("220", "greeting", &mut reader);
        let mut command = |line: String, code: &str, reader: &mut BufReader<TcpStream>| {
            writer.write_all(line.as_bytes()).unwrap();
            writer.write_all(b"\r\n").unwrap();
            expect(code, &line, reader);
        };
        command(format!("EHLO {ehlo}"), "250", &mut reader);
        command(format!("MAIL FROM:<{mail_from}>"), "250", &mut reader);
        command(format!("RCPT TO:<{rcpt}>"), "250", &mut reader);
        command("DATA".into(), "354", &mut reader);
        let mut body = Vec::with_capacity(data.len() + 5);
        for line in data.split_inclusive(|&b| b == b'\n') {
            if line.starts_with(b".") {
                body.push(b'.');
            }
            body.extend_from_slice(line);
        }
        if !body.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b".");
        command(String::from_utf8(body).unwrap(), "250", &mut reader);
        command("QUIT".into(), "221", &mut reader);
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn main_cf(root: &Path, myhostname: &str, lmtp_port: u16) -> String {
    let r = root.display();
    format!(
        "# legal-intake test instance (generated)
compatibility_level = 3.6
config_directory = {r}/conf
queue_directory = {r}/queue
data_directory = {r}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {myhostname}
mydestination =
relay_domains = ivpn.net
relay_transport = lmtp:inet:[127.0.0.1]:{lmtp_port}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
disable_dns_lookups = yes
smtp_host_lookup = native
lmtp_host_lookup = native
maillog_file = {r}/log/postfix.log
maillog_file_prefixes = {r}
alias_maps =
alias_database =
local_recipient_maps =
queue_run_delay = 1s
"
    )
}

/// Postfix's standard services, none chrooted, and one SMTP listener.
fn master_cf(port: u16) -> String {
    let mut cf = format!("127.0.0.1:{port} inet n - n - - smtpd\n");
    for line in [
        "pickup unix n - n 60 1 pickup",
        "cleanup unix n - n - 0 cleanup",
        "qmgr unix n - n 300 1 qmgr",
        "tlsmgr unix - - n 1000? 1 tlsmgr",
        "rewrite unix - - n - - trivial-rewrite",
        "bounce unix - - n - 0 bounce",
        "defer unix - - n - 0 bounce",
        "trace unix - - n - 0 bounce",
        "verify unix - - n - 1 verify",
        "flush unix n - n 1000? 0 flush",
        "proxymap unix - - n - - proxymap",
        "smtp unix - - n - - smtp",
        "relay unix - - n - - smtp",
        "showq unix n - n - - showq",
        "error unix - - n - - error",
        "retry unix - - n - - error",
        "discard unix - - n - - discard",
        "local unix - n n - - local",
        "lmtp unix - - n - - lmtp",
        "anvil unix - - n - 1 anvil",
        "scache unix - - n - 1 scache",
        "postlog unix-dgram n - n - 1 postlogd",
    ] {
        cf.push_str(line);
        cf.push('\n');
    }
    cf
}

/// Waits until the SMTP port greets.
fn wait_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("postfix master exited early with {status}"));
        }
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut line = String::new();
            if BufReader::new(&stream).read_line(&mut line).is_ok() && line.starts_with("220") {
                let _ = (&stream).write_all(b"QUIT\r\n");
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no SMTP greeting on port {port} within {} s",
                START_TIMEOUT.as_secs()
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn read_log(root: &Path) -> String {
    let read = |p: PathBuf| fs::read_to_string(p).unwrap_or_default();
    format!(
        "{}{}",
        read(root.join("log/postfix.log")),
        read(root.join("log/master.err"))
    )
}
