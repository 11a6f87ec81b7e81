//! A throwaway Dovecot (Debian's `dovecot-imapd`, 2.3) on 127.0.0.1 for
//! the IMAP tests, and a small synchronous IMAP client to look at and
//! change its mailboxes from the side, as another mail client would.
//!
//! Each [`Dovecot`] is its own instance in a temporary folder: its own
//! `base_dir`, `state_dir`, `instance_name` and log, listeners on ports the
//! OS chose, one `passwd-file` user with a `{PLAIN}` password, and maildir
//! storage under the folder. It never touches the system's Dovecot. The
//! master runs in the foreground as a child process and gets SIGTERM on
//! drop.
//!
//! A missing `dovecot` binary fails the test with a message saying how to
//! install it: CI installs it (scripts/install-test-deps), so a skip would
//! only hide a broken set-up.

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::accept::Acceptor;
use crate::free_port;

/// The test user's login name.
pub const USER: &str = "legal@ivpn.net";
/// The test user's password (with a space and a quote, which LOGIN must
/// quote correctly).
pub const PASSWORD: &str = "correct horse \"battery\" staple";

/// How long Dovecot may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Read and write timeout of the side client: a stuck server fails the
/// test instead of hanging it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A running Dovecot instance.
pub struct Dovecot {
    /// Everything of this instance: configuration, sockets, logs, mail.
    dir: tempfile::TempDir,
    /// The `dovecot -F` master process.
    child: Child,
    /// The plain IMAP port. With TLS on (`ssl = yes`) it offers STARTTLS
    /// and still accepts plain-text logins, which the side client uses.
    pub port: u16,
    /// The implicit-TLS (IMAPS) port, when started with TLS.
    pub tls_port: Option<u16>,
    /// The LMTP port, when started with LMTP: what an MTA delivers to.
    pub lmtp_port: Option<u16>,
    /// The PEM certificate of the CA that signed the server certificate.
    ca: Option<PathBuf>,
    /// The token-info endpoint, when started with OAuth 2.
    oauth: Option<TokenInfo>,
    /// The side client's way in.
    account: Account,
}

/// How an instance is set up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Plain,
    Tls,
    OAuth2,
    /// Plain IMAP and an LMTP listener, as the mailbox server behind an MX.
    Lmtp,
}

impl Dovecot {
    /// Plain IMAP only (`ssl = no`).
    pub fn start() -> Dovecot {
        Self::launch(Flavour::Plain)
    }

    /// TLS with a certificate for 127.0.0.1 and localhost, signed by a CA
    /// generated for this instance: implicit TLS on [`Dovecot::tls_port`],
    /// STARTTLS on [`Dovecot::port`].
    pub fn start_tls() -> Dovecot {
        Self::launch(Flavour::Tls)
    }

    /// Plain IMAP plus XOAUTH2, checked by Dovecot's `oauth2` passdb against
    /// a token-info endpoint served by this harness; see
    /// [`Dovecot::accept_token`].
    pub fn start_oauth2() -> Dovecot {
        Self::launch(Flavour::OAuth2)
    }

    /// Plain IMAP plus LMTP on [`Dovecot::lmtp_port`], delivering into
    /// the test user's INBOX with Dovecot's own `Received` line, as behind
    /// a real MX.
    pub fn start_lmtp() -> Dovecot {
        Self::launch(Flavour::Lmtp)
    }

    fn launch(flavour: Flavour) -> Dovecot {
        let binary = dovecot_binary();
        let version = Command::new(&binary)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        assert!(
            version.starts_with("2.3"),
            "these tests are written for Dovecot 2.3 (Debian 12's dovecot-imapd); {} reports `{version}`",
            binary.display()
        );
        let users = Users::for_this_process();
        // Dovecot's unprivileged processes must be able to reach the folder,
        // which a private TMPDIR may not allow.
        let base = if users.root {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("legal-intake-dovecot-")
            .tempdir_in(base)
            .expect("create the Dovecot folder");
        let root = dir.path().to_path_buf();
        // The login processes (another account than the mail user) reach
        // their sockets under base_dir by path.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        }
        for sub in ["run", "state", "log", "home", "home/legal"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        fs::write(
            root.join("passwd"),
            format!("{USER}:{{PLAIN}}{PASSWORD}::::::\n"),
        )
        .unwrap();
        let ca = (flavour == Flavour::Tls).then(|| make_certificates(&root));
        let oauth = (flavour == Flavour::OAuth2).then(TokenInfo::start);
        if let Some(oauth) = &oauth {
            fs::write(
                root.join("dovecot-oauth2.conf.ext"),
                format!(
                    "tokeninfo_url = http://127.0.0.1:{}/tokeninfo?access_token=\nusername_attribute = email\n",
                    oauth.accept.port
                ),
            )
            .unwrap();
        }
        if users.root {
            chown_tree(&root, &users.mail_user);
        }

        // Ports are chosen by binding port 0 and releasing it; another
        // process may grab one before Dovecot binds it, so a collision is
        // retried with fresh ports.
        let mut last_failure = String::new();
        for attempt in 0..5 {
            let port = free_port();
            let tls_port = (flavour == Flavour::Tls).then(free_port);
            let lmtp_port = (flavour == Flavour::Lmtp).then(free_port);
            let conf = root.join("dovecot.conf");
            let ports = Ports {
                imap: port,
                tls: tls_port,
                lmtp: lmtp_port,
            };
            fs::write(&conf, dovecot_conf(&root, &users, flavour, ports, attempt)).unwrap();
            // A fresh log per attempt, so that the failure reported is this
            // attempt's.
            let _ = fs::remove_file(root.join("log/dovecot.log"));
            let stderr = fs::File::create(root.join("log/stderr")).unwrap();
            let mut child = Command::new(&binary)
                .arg("-F")
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            match wait_ready(&mut child, port, tls_port.or(lmtp_port)) {
                Ok(()) => {
                    return Dovecot {
                        dir,
                        child,
                        port,
                        tls_port,
                        lmtp_port,
                        ca,
                        oauth,
                        account: Account {
                            port,
                            user: USER.to_string(),
                            password: PASSWORD.to_string(),
                        },
                    };
                }
                Err(why) => {
                    stop(&mut child);
                    last_failure = format!("{why}\n{}", read_log(&root));
                    if !last_failure.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("Dovecot did not start: {last_failure}");
    }

    /// The instance's folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate (PEM) that signed the server certificate.
    /// Panics unless started with [`Dovecot::start_tls`].
    pub fn ca_file(&self) -> &Path {
        self.ca.as_deref().expect("started without TLS")
    }

    /// Dovecot's log so far (and its stderr), for failure messages.
    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }

    /// Writes the test user's password into the folder (with the trailing
    /// newline `echo` would add) and returns its path.
    pub fn password_file(&self) -> PathBuf {
        let path = self.dir.path().join("imap.password");
        fs::write(&path, format!("{PASSWORD}\n")).unwrap();
        path
    }

    /// The `[imap]` section of a configuration file for this instance: host
    /// 127.0.0.1, its port, `tls = "none"` (or `"implicit"` with `ca_file`
    /// when started with TLS), the test user and a password file written
    /// into the folder. `extra` is appended inside the section (more keys,
    /// such as `poll_interval_secs = 1`).
    pub fn imap_config(&self, extra: &str) -> String {
        let password_file = self.password_file();
        let tls = match (self.tls_port, &self.ca) {
            (Some(port), Some(ca)) => format!(
                "port = {port}\ntls = \"implicit\"\nca_file = \"{}\"\n",
                ca.display()
            ),
            _ => format!("port = {}\ntls = \"none\"\n", self.port),
        };
        format!(
            "[imap]\nhost = \"127.0.0.1\"\n{tls}username = \"{USER}\"\npassword_file = \"{}\"\n{extra}\n",
            password_file.display()
        )
    }

    /// A cloneable handle for the side client, for use from another thread.
    pub fn account(&self) -> Account {
        self.account.clone()
    }

    /// Appends a raw message to `mailbox`; returns its UID.
    pub fn append(&self, mailbox: &str, raw: &[u8]) -> u32 {
        self.account.append(mailbox, raw)
    }

    /// Appends with flags, such as `\Deleted` or `\Seen`.
    pub fn append_with_flags(&self, mailbox: &str, flags: &str, raw: &[u8]) -> u32 {
        self.account.append_with_flags(mailbox, flags, raw)
    }

    /// The raw bytes of every message in `mailbox`, in UID order.
    pub fn messages(&self, mailbox: &str) -> Vec<Vec<u8>> {
        self.account.messages(mailbox)
    }

    /// Every message in `mailbox` with its UID and flags.
    pub fn stored(&self, mailbox: &str) -> Vec<Stored> {
        self.account.stored(mailbox)
    }

    /// The names of all mailboxes.
    pub fn mailboxes(&self) -> Vec<String> {
        self.account.mailboxes()
    }

    /// Creates a mailbox.
    pub fn create_mailbox(&self, name: &str) {
        self.account.create_mailbox(name)
    }

    /// Deletes a mailbox; re-creating it gives it a new UIDVALIDITY.
    pub fn delete_mailbox(&self, name: &str) {
        self.account.delete_mailbox(name)
    }

    /// Makes the token-info endpoint accept `token` for the test user.
    /// Panics unless started with [`Dovecot::start_oauth2`].
    pub fn accept_token(&self, token: &str) {
        let oauth = self.oauth.as_ref().expect("started without OAuth 2");
        oauth.valid.lock().unwrap().insert(token.to_string());
    }

    /// The tokens Dovecot asked the token-info endpoint about, in order.
    pub fn tokens_seen(&self) -> Vec<String> {
        let oauth = self.oauth.as_ref().expect("started without OAuth 2");
        oauth.seen.lock().unwrap().clone()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Waits until the plain port greets and the other port (TLS or LMTP, if
/// any) accepts.
fn wait_ready(child: &mut Child, port: u16, tls_port: Option<u16>) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("dovecot exited early with {status}"));
        }
        if greets(port) && tls_port.is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no IMAP greeting on port {port} within {} s",
                START_TIMEOUT.as_secs()
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM to a server's master process (which stops its children), a
/// few seconds' grace, then SIGKILL. Shared with the Postfix harness.
pub(crate) fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn read_log(root: &Path) -> String {
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap_or_default();
    format!("{}{}", read("log/dovecot.log"), read("log/stderr"))
}

/// Finds `dovecot`, which Debian installs in /usr/sbin (often not on a
/// non-root PATH).
fn dovecot_binary() -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("dovecot"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(["/usr/sbin/dovecot".into(), "/usr/local/sbin/dovecot".into()])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the IMAP tests need Dovecot, and `dovecot` was not found: \
                 run scripts/install-test-deps (or apt-get install dovecot-imapd)"
            )
        })
}

/// The accounts Dovecot's processes run as. As root, Dovecot refuses to run
/// mail processes as root: they run as `nobody` (and the login processes as
/// `dovenull` where it exists), and the folder is handed to `nobody`. As an
/// ordinary user, everything runs as that user.
struct Users {
    root: bool,
    mail_user: String,
    mail_uid: String,
    mail_gid: String,
    /// Group *name*: `default_internal_group` does not take a number.
    mail_group: String,
    login_user: String,
}

impl Users {
    fn for_this_process() -> Users {
        let id = |args: &[&str]| {
            let out = Command::new("id").args(args).output().expect("run id");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        if id(&["-u"]) == "0" {
            let login_user = if Command::new("id")
                .arg("dovenull")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                "dovenull"
            } else {
                "nobody"
            };
            Users {
                root: true,
                mail_user: "nobody".into(),
                mail_uid: id(&["-u", "nobody"]),
                mail_gid: id(&["-g", "nobody"]),
                mail_group: id(&["-gn", "nobody"]),
                login_user: login_user.into(),
            }
        } else {
            let me = id(&["-un"]);
            Users {
                root: false,
                mail_uid: id(&["-u"]),
                mail_gid: id(&["-g"]),
                mail_group: id(&["-gn"]),
                login_user: me.clone(),
                mail_user: me,
            }
        }
    }
}

fn chown_tree(root: &Path, user: &str) {
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:"))
        .arg(root)
        .status()
        .expect("run chown");
    assert!(status.success(), "chown -R {user}: {}", root.display());
}

/// Whether an IMAP server on `port` sends its `* OK` greeting.
fn greets(port: u16) -> bool {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("* OK")
}

/// The listeners of one instance.
#[derive(Clone, Copy)]
struct Ports {
    imap: u16,
    tls: Option<u16>,
    lmtp: Option<u16>,
}

/// The whole configuration; nothing is read from /etc/dovecot.
fn dovecot_conf(
    root: &Path,
    users: &Users,
    flavour: Flavour,
    ports: Ports,
    attempt: u32,
) -> String {
    let (port, tls_port) = (ports.imap, ports.tls);
    static INSTANCE: AtomicUsize = AtomicUsize::new(0);
    let instance = format!(
        "legal-intake-test-{}-{}-{attempt}",
        std::process::id(),
        INSTANCE.fetch_add(1, Ordering::Relaxed)
    );
    let r = root.display();
    let ssl = match flavour {
        Flavour::Tls => {
            format!("ssl = yes\nssl_cert = <{r}/server.pem\nssl_key = <{r}/server.key\n")
        }
        _ => "ssl = no\n".to_string(),
    };
    let imaps = match tls_port {
        Some(p) => format!(
            "  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {p}\n    ssl = yes\n  }}\n"
        ),
        None => "  inet_listener imaps {\n    port = 0\n  }\n".to_string(),
    };
    let (mechanisms, oauth_passdb, password_mechanisms) = match flavour {
        Flavour::OAuth2 => (
            "plain login xoauth2",
            format!(
                "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2\n  args = {r}/dovecot-oauth2.conf.ext\n}}\n"
            ),
            "  mechanisms = plain login\n",
        ),
        _ => ("plain login", String::new(), ""),
    };
    let (protocols, lmtp) = match ports.lmtp {
        Some(p) => (
            "imap lmtp",
            format!(
                "service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {p}\n  }}\n}}\npostmaster_address = postmaster@ivpn.net\n"
            ),
        ),
        None => ("imap", String::new()),
    };
    let user = &users.mail_user;
    format!(
        r#"# legal-intake test instance (generated)
base_dir = {r}/run
state_dir = {r}/state
instance_name = {instance}
log_path = {r}/log/dovecot.log
info_log_path = {r}/log/dovecot.log
listen = 127.0.0.1
protocols = {protocols}
{ssl}disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
# The default 2 s pause after a failed login only slows the tests down.
auth_failure_delay = 0
default_login_user = {login}
default_internal_user = {user}
default_internal_group = {group}
mail_location = maildir:~/Maildir
{oauth_passdb}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {r}/passwd
{password_mechanisms}}}
userdb {{
  driver = passwd-file
  args = username_format=%u {r}/passwd
  default_fields = uid={uid} gid={gid} home={r}/home/%n
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
{imaps}}}
protocol imap {{
  mail_max_userip_connections = 1000
}}
{lmtp}"#,
        login = users.login_user,
        group = users.mail_group,
        uid = users.mail_uid,
        gid = users.mail_gid,
    )
}

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it
/// ([`crate::tls::test_ca`]); returns the CA's PEM path.
fn make_certificates(root: &Path) -> PathBuf {
    crate::tls::test_ca(root, "legal-intake test CA").ca
}

// ---- OAuth 2 token info --------------------------------------------------------

/// A minimal HTTP endpoint in the style of Google's tokeninfo: a known
/// token gets `{"email": USER}`, anything else 401.
struct TokenInfo {
    valid: Arc<Mutex<HashSet<String>>>,
    seen: Arc<Mutex<Vec<String>>>,
    accept: Acceptor,
}

impl TokenInfo {
    fn start() -> TokenInfo {
        let valid = Arc::new(Mutex::new(HashSet::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (v, s) = (valid.clone(), seen.clone());
        let accept = Acceptor::start("token-info endpoint", move |conn, _| {
            let _ = answer_tokeninfo(conn, &v, &s);
        });
        TokenInfo {
            valid,
            seen,
            accept,
        }
    }
}

fn answer_tokeninfo(
    conn: TcpStream,
    valid: &Mutex<HashSet<String>>,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Headers up to the blank line; a GET has no body.
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let token = request_line
        .split(' ')
        .nth(1)
        .and_then(|path| path.split_once("access_token="))
        .map(|(_, t)| t.to_string())
        .unwrap_or_default();
    seen.lock().unwrap().push(token.clone());
    let (status, body) = if valid.lock().unwrap().contains(&token) {
        ("200 OK", format!("{{\"email\":\"{USER}\"}}"))
    } else {
        (
            "401 Unauthorized",
            "{\"error\":\"invalid_token\"}".to_string(),
        )
    };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

// ---- The side client -------------------------------------------------------------

/// One message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its UID in the mailbox.
    pub uid: u32,
    /// Flags and keywords as the server lists them (`\Seen`, `$Label`).
    pub flags: Vec<String>,
    /// The message's bytes as stored (`BODY[]`).
    pub raw: Vec<u8>,
}

/// Login details of the test user; every call opens its own short
/// connection, so an `Account` can be used from any thread while the code
/// under test holds its own connection.
#[derive(Clone)]
pub struct Account {
    port: u16,
    user: String,
    password: String,
}

impl Account {
    /// Appends a raw message to `mailbox`; returns its UID (APPENDUID).
    pub fn append(&self, mailbox: &str, raw: &[u8]) -> u32 {
        self.append_with_flags(mailbox, "", raw)
    }

    /// Appends with flags, such as `\Deleted`.
    pub fn append_with_flags(&self, mailbox: &str, flags: &str, raw: &[u8]) -> u32 {
        let mut c = Conn::open(self);
        let flags = if flags.is_empty() {
            String::new()
        } else {
            format!(" ({flags})")
        };
        let tag = c.send(&format!(
            "APPEND {}{flags} {{{}}}",
            quoted(mailbox),
            raw.len()
        ));
        let cont = c.read_response();
        assert!(
            cont.starts_with(b"+"),
            "APPEND to {mailbox} was not accepted: {}",
            String::from_utf8_lossy(&cont)
        );
        c.write(raw);
        c.write(b"\r\n");
        let (_, done) = c.finish(&tag);
        // `tag OK [APPENDUID <validity> <uid>] ...`
        let text = String::from_utf8_lossy(&done);
        text.split("[APPENDUID ")
            .nth(1)
            .and_then(|rest| rest.split([' ', ']']).nth(1))
            .and_then(|uid| uid.parse().ok())
            .unwrap_or_else(|| panic!("no APPENDUID in `{text}`"))
    }

    /// The raw bytes of every message in `mailbox`, in UID order.
    pub fn messages(&self, mailbox: &str) -> Vec<Vec<u8>> {
        self.stored(mailbox).into_iter().map(|s| s.raw).collect()
    }

    /// Every message in `mailbox` with UID and flags, read with EXAMINE and
    /// BODY.PEEK[] so that looking changes nothing.
    pub fn stored(&self, mailbox: &str) -> Vec<Stored> {
        let mut c = Conn::open(self);
        let untagged = c.command(&format!("EXAMINE {}", quoted(mailbox)));
        let exists = untagged
            .iter()
            .filter_map(|r| {
                let t = String::from_utf8_lossy(r);
                let t = t.trim_end();
                t.strip_prefix("* ")?
                    .strip_suffix(" EXISTS")?
                    .parse::<u32>()
                    .ok()
            })
            .next_back()
            .unwrap_or(0);
        if exists == 0 {
            return Vec::new();
        }
        let mut out: Vec<Stored> = c
            .command("UID FETCH 1:* (UID FLAGS BODY.PEEK[])")
            .iter()
            .filter_map(|r| parse_fetch(r))
            .collect();
        out.sort_by_key(|s| s.uid);
        out
    }

    /// The names of all mailboxes.
    pub fn mailboxes(&self) -> Vec<String> {
        let mut c = Conn::open(self);
        c.command("LIST \"\" \"*\"")
            .iter()
            .filter_map(|r| {
                let mut p = Parser::new(r);
                let items = p.items();
                match items.as_slice() {
                    [Item::Atom(star), Item::Atom(list), _, _, name]
                        if star == "*" && list == "LIST" =>
                    {
                        name.text()
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Creates a mailbox.
    pub fn create_mailbox(&self, name: &str) {
        Conn::open(self).command(&format!("CREATE {}", quoted(name)));
    }

    /// Deletes a mailbox; re-creating it gives it a new UIDVALIDITY.
    pub fn delete_mailbox(&self, name: &str) {
        Conn::open(self).command(&format!("DELETE {}", quoted(name)));
    }

    /// Moves one message, as another mail client would.
    pub fn move_message(&self, mailbox: &str, uid: u32, to: &str) {
        let mut c = Conn::open(self);
        c.command(&format!("SELECT {}", quoted(mailbox)));
        c.command(&format!("UID MOVE {uid} {}", quoted(to)));
    }
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// One connection of the side client: tagged commands, responses read
/// whole (literals included), any NO or BAD a test failure.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_tag: u32,
}

impl Conn {
    fn open(account: &Account) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", account.port))
            .unwrap_or_else(|e| panic!("side client: connect to port {}: {e}", account.port));
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        let mut c = Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            next_tag: 0,
        };
        let greeting = c.read_response();
        assert!(
            greeting.starts_with(b"* OK"),
            "side client: greeting {}",
            String::from_utf8_lossy(&greeting)
        );
        c.command(&format!(
            "LOGIN {} {}",
            quoted(&account.user),
            quoted(&account.password)
        ));
        c
    }

    fn write(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .expect("side client: write to Dovecot");
    }

    fn send(&mut self, command: &str) -> String {
        self.next_tag += 1;
        let tag = format!("s{}", self.next_tag);
        self.write(format!("{tag} {command}\r\n").as_bytes());
        tag
    }

    /// Sends a command; returns its untagged responses.
    fn command(&mut self, command: &str) -> Vec<Vec<u8>> {
        let tag = self.send(command);
        let (untagged, _) = self.finish(&tag);
        untagged
    }

    /// Reads up to the tagged completion of `tag`, which must be OK.
    fn finish(&mut self, tag: &str) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut untagged = Vec::new();
        loop {
            let r = self.read_response();
            if r.starts_with(format!("{tag} ").as_bytes()) {
                assert!(
                    r[tag.len() + 1..].starts_with(b"OK"),
                    "side client: {}",
                    String::from_utf8_lossy(&r)
                );
                return (untagged, r);
            }
            untagged.push(r);
        }
    }

    /// One response: a line, and when it ends with a literal `{n}`, the n
    /// bytes and the rest of the response, repeatedly.
    fn read_response(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let start = out.len();
            let n = self
                .reader
                .read_until(b'\n', &mut out)
                .expect("side client: read from Dovecot");
            assert!(n > 0, "side client: Dovecot closed the connection");
            let line = &out[start..];
            let Some(len) = literal_length(line) else {
                return out;
            };
            let mut literal = vec![0; len];
            self.reader
                .read_exact(&mut literal)
                .expect("side client: read a literal");
            out.extend_from_slice(&literal);
        }
    }
}

/// The `n` of a line ending in `{n}\r\n`.
fn literal_length(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r\n")?;
    let line = line.strip_suffix(b"}")?;
    let open = line.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&line[open + 1..]).ok()?.parse().ok()
}

/// A parsed IMAP value: enough of RFC 3501's syntax for FETCH and LIST.
#[derive(Debug)]
enum Item {
    Atom(String),
    Bytes(Vec<u8>),
    List(Vec<Item>),
}

impl Item {
    fn text(&self) -> Option<String> {
        match self {
            Item::Atom(a) => Some(a.clone()),
            Item::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Item::List(_) => None,
        }
    }
}

struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Parser { buf, pos: 0 }
    }

    /// All items up to the end of the response (or a closing parenthesis).
    fn items(&mut self) -> Vec<Item> {
        let mut items = Vec::new();
        loop {
            while self.pos < self.buf.len() && self.buf[self.pos] == b' ' {
                self.pos += 1;
            }
            match self.buf.get(self.pos) {
                None | Some(b'\r') | Some(b'\n') => return items,
                Some(b')') => {
                    self.pos += 1;
                    return items;
                }
                Some(b'(') => {
                    self.pos += 1;
                    items.push(Item::List(self.items()));
                }
                Some(b'"') => items.push(Item::Bytes(self.quoted())),
                Some(b'{') => items.push(Item::Bytes(self.literal())),
                Some(_) => items.push(Item::Atom(self.atom())),
            }
        }
    }

    fn quoted(&mut self) -> Vec<u8> {
        self.pos += 1;
        let mut out = Vec::new();
        while let Some(&b) = self.buf.get(self.pos) {
            self.pos += 1;
            match b {
                b'\\' => {
                    out.push(self.buf[self.pos]);
                    self.pos += 1;
                }
                b'"' => break,
                _ => out.push(b),
            }
        }
        out
    }

    fn literal(&mut self) -> Vec<u8> {
        let close = self.pos
            + self.buf[self.pos..]
                .iter()
                .position(|&b| b == b'}')
                .unwrap();
        let len: usize = std::str::from_utf8(&self.buf[self.pos + 1..close])
            .unwrap()
            .parse()
            .unwrap();
        let start = close + 3; // "}\r\n"
        self.pos = start + len;
        self.buf[start..start + len].to_vec()
    }

    fn atom(&mut self) -> String {
        let start = self.pos;
        // Square brackets belong to atoms such as BODY[] and may hold
        // spaces (BODY[HEADER.FIELDS (A B)]); not needed here.
        while let Some(&b) = self.buf.get(self.pos) {
            if matches!(b, b' ' | b'(' | b')' | b'\r' | b'\n') {
                break;
            }
            self.pos += 1;
        }
        String::from_utf8_lossy(&self.buf[start..self.pos]).into_owned()
    }
}

/// `* n FETCH (UID u FLAGS (...) BODY[] {len}...)` → [`Stored`].
fn parse_fetch(response: &[u8]) -> Option<Stored> {
    let items = Parser::new(response).items();
    let [Item::Atom(star), _, Item::Atom(fetch), Item::List(attrs)] = items.as_slice() else {
        return None;
    };
    if star != "*" || !fetch.eq_ignore_ascii_case("FETCH") {
        return None;
    }
    let (mut uid, mut flags, mut raw) = (None, Vec::new(), None);
    for pair in attrs.chunks(2) {
        match pair {
            [Item::Atom(name), Item::Atom(value)] if name == "UID" => uid = value.parse().ok(),
            [Item::Atom(name), Item::List(list)] if name == "FLAGS" => {
                flags = list.iter().filter_map(Item::text).collect();
            }
            [Item::Atom(name), Item::Bytes(body)] if name == "BODY[]" => raw = Some(body.clone()),
            _ => {}
        }
    }
    Some(Stored {
        uid: uid?,
        flags,
        raw: raw?,
    })
}
