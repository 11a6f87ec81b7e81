//! IMAP edge: connect and log in, watch the mailbox (IDLE or polling), fetch
//! raw messages, and move filed ones out of the inbox.
//!
//! This module owns every byte exchanged with the IMAP server and nothing
//! else: it does not decide what a message means, and it never moves a
//! message on its own initiative. The daemon loop calls, in order,
//! [`connect`], [`Session::ensure_mailbox`] for the processed and quarantine
//! folders, [`Session::select`], [`Session::uids`], [`Session::fetch`], and —
//! only after the pipeline has committed a message — [`Session::move_uid`];
//! then [`Session::idle`] until something changes.
//!
//! Errors come in two kinds ([`ImapError`]): *transient* ones (I/O, timeouts,
//! a server saying BYE) after which the caller reconnects with backoff, and
//! *fatal* ones (credentials or certificate rejected, a secret file missing,
//! a mailbox that cannot exist) that no quick retry will fix. After a
//! transient error the [`Session`] is unusable; every later call returns a
//! transient error too, so a caller that forgets to reconnect fails safe.
//!
//! async-imap is used for the transport, the response parser, LOGIN,
//! AUTHENTICATE and IDLE. Other commands are sent with its `run_command` and
//! their responses read here, because its higher-level helpers end a
//! response stream silently on EOF and drop a tagged `NO`, which would turn
//! a dropped connection into an apparently empty mailbox.
//!
//! Secrets: the password and the access token are read from their files at
//! each login, held only for the duration of the login, and never formatted
//! into an error or a log line. async-imap logs every command and response
//! at TRACE level through the `log` crate; the crate manifest caps `log` at
//! DEBUG so that those lines (which would carry the LOGIN command and
//! message bodies) are compiled out.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_imap::extensions::idle::IdleResponse;
use async_imap::imap_proto::{self, AttributeValue, MailboxDatum, Response, Status};
use async_imap::types::UnsolicitedResponse;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Tls};

/// Time allowed for everything from the TCP connect to a logged-in session
/// with its capabilities read.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Time allowed for one ordinary command (SELECT, SEARCH, MOVE, …) to
/// complete. A server that stalls longer is treated as gone.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Time allowed for one UID FETCH batch, which may carry tens of megabytes.
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);

/// The longest single IDLE. RFC 2177 lets a server drop an idle client
/// after 30 minutes, so [`Session::idle`] never waits longer than this,
/// whatever it is asked; the caller simply idles again.
pub const MAX_IDLE: Duration = Duration::from_secs(25 * 60);

/// The keyword set on a message that was copied to its target folder but
/// could not be removed from the inbox (a server with neither MOVE nor
/// UIDPLUS). [`Session::uids`] leaves such messages out.
pub const FILED_KEYWORD: &str = "$LegalIntakeFiled";

/// The capacity of async-imap's channel of unsolicited responses (a
/// constant in its source). When a drain finds it full, responses may have
/// been dropped, so new mail is assumed.
const UNSOLICITED_CAPACITY: usize = 100;

// ---- Errors ----------------------------------------------------------------

/// What went wrong talking to the IMAP server, split by what the caller
/// should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    /// The connection failed or broke (I/O error, timeout, the server said
    /// BYE or closed the connection, a temporary server-side failure). The
    /// session is unusable; reconnect with backoff.
    #[error("{0}")]
    Transient(String),
    /// Retrying soon will not help: credentials rejected, certificate
    /// invalid, a secret file missing, a mailbox the server refuses. Log it
    /// loudly and retry slowly (an operator has to act).
    #[error("{message}")]
    Fatal {
        /// Which kind of fatal problem, for the log line and for tests.
        kind: FatalKind,
        /// What happened, naming the file, host or mailbox concerned; never
        /// a secret.
        message: String,
    },
}

/// The kinds of [`ImapError::Fatal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatalKind {
    /// The server rejected the username, password or access token.
    Authentication,
    /// The server's certificate did not verify against the trusted roots.
    Certificate,
    /// The TLS handshake failed for another reason, or STARTTLS was refused.
    Tls,
    /// Our side is misconfigured: a secret or CA file is missing, empty or
    /// unreadable, or no username is set.
    Configuration,
    /// The server refused a command in a way a retry will not change (a
    /// missing mailbox, no permission, a protocol violation).
    Server,
}

impl ImapError {
    /// True when the caller should reconnect with backoff; false for a
    /// fatal error that needs an operator.
    pub fn is_transient(&self) -> bool {
        matches!(self, ImapError::Transient(_))
    }

    /// The kind of a fatal error; `None` for a transient one.
    pub fn fatal_kind(&self) -> Option<FatalKind> {
        match self {
            ImapError::Fatal { kind, .. } => Some(*kind),
            ImapError::Transient(_) => None,
        }
    }

    fn fatal(kind: FatalKind, message: impl Into<String>) -> Self {
        ImapError::Fatal {
            kind,
            message: message.into(),
        }
    }
}

fn transient(message: impl Into<String>) -> ImapError {
    ImapError::Transient(message.into())
}

fn broken() -> ImapError {
    transient("the IMAP connection broke earlier; reconnect")
}

// ---- Transport ---------------------------------------------------------------

/// The byte stream under the IMAP session: plain TCP (loopback only, by
/// configuration) or TLS over TCP. One type for both lets the session type
/// stay the same whatever `tls` says.
#[derive(Debug)]
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

type Client<T> = async_imap::Client<T>;
type Inner = async_imap::Session<Transport>;

// ---- Credentials -------------------------------------------------------------

/// A secret read from a file. It has no `Display`, and its `Debug` prints
/// nothing of the value, so it cannot reach a log line by accident.
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// How this login authenticates.
#[derive(Debug)]
enum Credentials {
    /// `LOGIN user password`.
    Password { user: String, password: Secret },
    /// `AUTHENTICATE XOAUTH2` with a bearer token.
    Token { user: String, token: Secret },
}

impl Credentials {
    /// Reads the secret named by the configuration. This happens at every
    /// login: the password may be rotated, and the access token is renewed
    /// by an external helper.
    fn read(cfg: &config::Imap) -> Result<Credentials, ImapError> {
        let user = cfg.username.clone().ok_or_else(|| {
            ImapError::fatal(
                FatalKind::Configuration,
                "imap.username is not set; it is required to log in",
            )
        })?;
        if let Some(path) = &cfg.access_token_file {
            let token = read_secret(path, "imap.access_token_file")?;
            // Token helpers write the token with or without a newline, and a
            // bearer token never contains white space.
            let token = token.trim().to_string();
            if token.is_empty() {
                return Err(ImapError::fatal(
                    FatalKind::Configuration,
                    format!("imap.access_token_file {} is empty", path.display()),
                ));
            }
            return Ok(Credentials::Token {
                user,
                token: Secret(token),
            });
        }
        let Some(path) = &cfg.password_file else {
            return Err(ImapError::fatal(
                FatalKind::Configuration,
                "neither imap.password_file nor imap.access_token_file is set",
            ));
        };
        let password = read_secret(path, "imap.password_file")?;
        if password.is_empty() {
            return Err(ImapError::fatal(
                FatalKind::Configuration,
                format!("imap.password_file {} is empty", path.display()),
            ));
        }
        if password.contains(['\r', '\n', '\0']) {
            return Err(ImapError::fatal(
                FatalKind::Configuration,
                format!(
                    "imap.password_file {} holds a line break or NUL inside the password",
                    path.display()
                ),
            ));
        }
        Ok(Credentials::Password {
            user,
            password: Secret(password),
        })
    }
}

/// [`config::read_secret`] with its failure as a configuration error.
fn read_secret(path: &Path, key: &str) -> Result<String, ImapError> {
    config::read_secret(path, key).map_err(|e| ImapError::fatal(FatalKind::Configuration, e))
}

/// The SASL XOAUTH2 initial client response (before base64), as Google and
/// Microsoft document it: `user=<user>^Aauth=Bearer <token>^A^A`.
pub fn xoauth2_initial_response(user: &str, token: &str) -> String {
    format!("user={user}\x01auth=Bearer {token}\x01\x01")
}

/// Answers the server's XOAUTH2 challenges: the initial response first, then
/// an empty line, which is what a failed XOAUTH2 exchange expects after the
/// server's JSON error challenge (the server then answers NO).
struct XOAuth2 {
    initial: Option<String>,
}

impl async_imap::Authenticator for XOAuth2 {
    type Response = String;

    fn process(&mut self, _challenge: &[u8]) -> String {
        self.initial.take().unwrap_or_default()
    }
}

// ---- TLS ---------------------------------------------------------------------

/// The TLS client configuration: the system's trusted roots plus the PEM
/// certificates of `ca_file`, the aws-lc-rs provider (the one already in the
/// tree through mail-auth), TLS 1.2 and 1.3.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, ImapError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "imap: part of the system certificate store is unusable and left out");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(path).map_err(|e| {
            ImapError::fatal(
                FatalKind::Configuration,
                format!("cannot read imap.ca_file {}: {e}", path.display()),
            )
        })?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                ImapError::fatal(
                    FatalKind::Configuration,
                    format!("imap.ca_file {} is not valid PEM: {e}", path.display()),
                )
            })?;
        if certs.is_empty() {
            return Err(ImapError::fatal(
                FatalKind::Configuration,
                format!("imap.ca_file {} holds no certificate", path.display()),
            ));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| {
                ImapError::fatal(
                    FatalKind::Configuration,
                    format!(
                        "imap.ca_file {} holds an unusable certificate: {e}",
                        path.display()
                    ),
                )
            })?;
        }
    }
    if roots.is_empty() {
        return Err(ImapError::fatal(
            FatalKind::Certificate,
            "no trusted certificate authorities: the system store is empty and imap.ca_file is not set",
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ImapError::fatal(FatalKind::Tls, format!("TLS set-up: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Runs the TLS handshake, verifying the certificate against `host` (a DNS
/// name or an IP address).
async fn handshake(
    config: Arc<ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, ImapError> {
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|_| {
        ImapError::fatal(
            FatalKind::Configuration,
            format!("imap.host `{host}` is not a valid TLS server name"),
        )
    })?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| tls_error(host, e))
}

/// Sorts a handshake failure: anything rustls itself rejected is fatal (a
/// certificate that does not verify will not start verifying on retry), a
/// plain I/O failure is transient.
fn tls_error(host: &str, e: io::Error) -> ImapError {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(
            err @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented),
        ) => ImapError::fatal(
            FatalKind::Certificate,
            format!("the certificate of {host} is not trusted: {err}"),
        ),
        Some(err) => ImapError::fatal(
            FatalKind::Tls,
            format!("TLS handshake with {host} failed: {err}"),
        ),
        None => transient(format!("TLS handshake with {host} failed: {e}")),
    }
}

// ---- Connecting --------------------------------------------------------------

/// Connects, secures the connection as `cfg.tls` says, reads the greeting,
/// logs in (LOGIN, or AUTHENTICATE XOAUTH2 when `access_token_file` is set)
/// and reads the capabilities. The whole sequence is bounded by
/// [`CONNECT_TIMEOUT`].
pub async fn connect(cfg: &config::Imap) -> Result<Session, ImapError> {
    // Local problems first: a missing secret or CA file is fatal and needs
    // no round trip to find out.
    let credentials = Credentials::read(cfg)?;
    let tls = match cfg.tls {
        Tls::None => None,
        Tls::Implicit | Tls::Starttls => Some(tls_config(cfg.ca_file.as_deref())?),
    };
    let session = timeout(CONNECT_TIMEOUT, connect_and_login(cfg, tls, credentials))
        .await
        .map_err(|_| {
            transient(format!(
                "connecting to {}:{} and logging in took longer than {} s",
                cfg.host,
                cfg.port,
                CONNECT_TIMEOUT.as_secs()
            ))
        })??;
    tracing::debug!(
        host = %cfg.host,
        port = cfg.port,
        idle = session.has(Capability::Idle),
        r#move = session.has(Capability::Move),
        uidplus = session.has(Capability::Uidplus),
        "imap: logged in"
    );
    Ok(session)
}

async fn connect_and_login(
    cfg: &config::Imap,
    tls: Option<Arc<ClientConfig>>,
    credentials: Credentials,
) -> Result<Session, ImapError> {
    let host = cfg.host.as_str();
    let tcp = TcpStream::connect((host, cfg.port))
        .await
        .map_err(|e| transient(format!("cannot connect to {host}:{}: {e}", cfg.port)))?;
    // IMAP is a request/response protocol of short lines: without this, a
    // command can wait for Nagle's delayed ACK.
    tcp.set_nodelay(true).ok();
    let client = match (cfg.tls, tls) {
        (Tls::Implicit, Some(tls)) => {
            let stream = handshake(tls, host, tcp).await?;
            let mut client = Client::new(Transport::Tls(Box::new(stream)));
            read_greeting(&mut client, host).await?;
            client
        }
        (Tls::Starttls, Some(tls)) => {
            let mut plain = Client::new(tcp);
            read_greeting(&mut plain, host).await?;
            plain
                .run_command_and_check_ok("STARTTLS", None)
                .await
                .map_err(|e| match e {
                    async_imap::error::Error::No(_) | async_imap::error::Error::Bad(_) => {
                        ImapError::fatal(FatalKind::Tls, format!("{host} refused STARTTLS: {e}"))
                    }
                    e => transient(format!("STARTTLS with {host}: {e}")),
                })?;
            // into_inner drops whatever async-imap had buffered after the
            // STARTTLS reply: anything sent in plain text before the
            // handshake is discarded, not read as if it came through TLS
            // (the STARTTLS command-injection attack).
            let stream = handshake(tls, host, plain.into_inner()).await?;
            Client::new(Transport::Tls(Box::new(stream)))
        }
        _ => {
            let mut client = Client::new(Transport::Plain(tcp));
            read_greeting(&mut client, host).await?;
            client
        }
    };
    let inner = login(client, credentials, host).await?;
    let mut session = Session {
        inner: Some(inner),
        capabilities: Vec::new(),
        new_data: false,
        selected: None,
    };
    session.read_capabilities().await?;
    Ok(session)
}

/// Reads the server greeting, which must come before any command (STACK.md:
/// async-imap does not read it by itself).
async fn read_greeting<T>(client: &mut Client<T>, host: &str) -> Result<(), ImapError>
where
    T: AsyncRead + AsyncWrite + Unpin + fmt::Debug + Send,
{
    let greeting = client
        .read_response()
        .await
        .map_err(|e| transient(format!("reading the greeting of {host}: {e}")))?
        .ok_or_else(|| transient(format!("{host} closed the connection before its greeting")))?;
    match greeting.parsed() {
        Response::Data {
            status: Status::Ok, ..
        } => Ok(()),
        Response::Data {
            status: Status::Bye,
            outcome,
        } => Err(transient(format!(
            "{host} refused the connection: {}",
            outcome.information.as_deref().unwrap_or("BYE")
        ))),
        Response::Data {
            status: Status::PreAuth,
            ..
        } => Err(ImapError::fatal(
            FatalKind::Server,
            format!("{host} greeted with PREAUTH; a login was expected"),
        )),
        other => Err(transient(format!(
            "{host} sent an unexpected greeting: {other:?}"
        ))),
    }
}

/// Logs in. A `NO` is fatal (the credentials are wrong), except with
/// RFC 5530's `[UNAVAILABLE]`, which says the authentication backend is
/// temporarily down.
async fn login(
    client: Client<Transport>,
    credentials: Credentials,
    host: &str,
) -> Result<Inner, ImapError> {
    let (user, result) = match credentials {
        Credentials::Password { user, password } => {
            let result = client.login(&user, &password.0).await;
            (user, result)
        }
        Credentials::Token { user, token } => {
            let auth = XOAuth2 {
                initial: Some(xoauth2_initial_response(&user, &token.0)),
            };
            let result = client.authenticate("XOAUTH2", auth).await;
            (user, result)
        }
    };
    result.map_err(|(e, _client)| {
        use async_imap::error::Error;
        match e {
            Error::No(text) if text.contains("[UNAVAILABLE]") => transient(format!(
                "{host} cannot authenticate {user} right now: {text}"
            )),
            Error::No(text) | Error::Bad(text) => ImapError::fatal(
                FatalKind::Authentication,
                format!("{host} rejected the login of {user}: {text}"),
            ),
            // A character IMAP cannot quote; the error names only the
            // character class, never the secret.
            Error::Validate(v) => ImapError::fatal(
                FatalKind::Configuration,
                format!("the username or secret for {user} cannot be sent: {v}"),
            ),
            Error::Parse(p) => transient(format!("{host}: unreadable reply to the login: {p}")),
            other => transient(format!("logging in to {host}: {other}")),
        }
    })
}

// ---- The session -------------------------------------------------------------

/// The server capabilities this module acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// RFC 2177: the server pushes changes; otherwise [`Session::idle`] polls.
    Idle,
    /// RFC 6851: `UID MOVE`, the atomic move.
    Move,
    /// RFC 4315: `UID EXPUNGE`, which removes only the named messages.
    Uidplus,
}

impl Capability {
    fn atom(self) -> &'static str {
        match self {
            Capability::Idle => "IDLE",
            Capability::Move => "MOVE",
            Capability::Uidplus => "UIDPLUS",
        }
    }
}

/// The state of a mailbox just selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    /// UIDVALIDITY: when it changes, every UID seen before is meaningless.
    pub uid_validity: u32,
    /// The UID the next message will probably get, when the server says.
    pub uid_next: Option<u32>,
    /// How many messages the mailbox holds.
    pub exists: u32,
}

/// How [`Session::move_uid`] got a message out of the source mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveOutcome {
    /// `UID MOVE`: atomically moved.
    Moved,
    /// `UID COPY`, `\Deleted` on that message, `UID EXPUNGE` of that UID
    /// alone: moved, in three steps.
    CopiedAndExpunged,
    /// The server has neither MOVE nor UIDPLUS, and a bare `EXPUNGE` would
    /// also remove other clients' deleted messages: the message was copied
    /// to the target and left in the source with [`FILED_KEYWORD`] and
    /// `\Flagged`, for a person to clean up.
    FlaggedInPlace,
}

/// What ended a [`Session::idle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleOutcome {
    /// The server announced new messages (now or earlier): scan again.
    NewData,
    /// The wait ran out with no new message.
    Timeout,
    /// The cancellation token fired (shutdown).
    Cancelled,
}

/// A logged-in IMAP connection.
pub struct Session {
    /// `None` once the connection has broken (or while IDLE owns it); every
    /// call then fails with a transient error.
    inner: Option<Inner>,
    /// Upper-case capability atoms read after login.
    capabilities: Vec<String>,
    /// The server announced new messages since the last scan, in a response
    /// to some other command. Only EXISTS counts: Dovecot follows an
    /// EXPUNGE with `* 0 RECENT`, which is no news, while new mail always
    /// comes with EXISTS (RFC 3501 §7.3.1). Any EXISTS counts, even one that
    /// may not be an increase: a needless scan is cheap, a missed one is not. Remembered so that IDLE
    /// does not sleep through a message that arrived while we were busy.
    new_data: bool,
    /// The mailbox last selected, as configured (not encoded).
    selected: Option<String>,
}

/// Written by hand: async-imap's own `Debug` would print its read buffer,
/// which can hold message bodies.
impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("connected", &self.inner.is_some())
            .field("capabilities", &self.capabilities)
            .field("selected", &self.selected)
            .field("new_data", &self.new_data)
            .finish()
    }
}

impl Session {
    /// Whether the server offers `cap` (after any [`Session::pretend_without`]).
    pub fn has(&self, cap: Capability) -> bool {
        self.capabilities.iter().any(|c| c == cap.atom())
    }

    /// Forgets that the server offers `cap`, so that tests can exercise the
    /// fall-back paths of [`Session::move_uid`] and [`Session::idle`]: a
    /// real server (Dovecot, in the tests) cannot be made to lack MOVE or
    /// UIDPLUS.
    #[doc(hidden)]
    pub fn pretend_without(&mut self, cap: Capability) {
        self.capabilities.retain(|c| c != cap.atom());
    }

    /// The mailbox currently selected, if any.
    pub fn selected(&self) -> Option<&str> {
        self.selected.as_deref()
    }

    async fn read_capabilities(&mut self) -> Result<(), ImapError> {
        let mut caps = Vec::new();
        self.run("CAPABILITY", COMMAND_TIMEOUT, |r| {
            if let Response::Capabilities(list) = r {
                for c in list {
                    if let imap_proto::Capability::Atom(a) = c {
                        caps.push(a.to_ascii_uppercase());
                    }
                }
            }
        })
        .await?;
        self.capabilities = caps;
        Ok(())
    }

    /// Makes sure mailbox `name` exists, creating (and subscribing) it when
    /// missing. Returns whether it was created. Safe to call every time the
    /// daemon connects.
    pub async fn ensure_mailbox(&mut self, name: &str) -> Result<bool, ImapError> {
        if self.mailbox_exists(name).await? {
            return Ok(false);
        }
        let quoted = quote(&encode_mailbox_name(name));
        if let Err(e) = self
            .run(&format!("CREATE {quoted}"), COMMAND_TIMEOUT, |_| {})
            .await
        {
            // Another client may have created it in the meantime.
            if !e.is_transient() && self.mailbox_exists(name).await? {
                return Ok(false);
            }
            return Err(e);
        }
        // Mail clients hide unsubscribed folders; the legal team should see
        // this one. Not being able to subscribe is no reason to stop.
        if let Err(e) = self
            .run(&format!("SUBSCRIBE {quoted}"), COMMAND_TIMEOUT, |_| {})
            .await
        {
            if e.is_transient() {
                return Err(e);
            }
            tracing::warn!(mailbox = name, error = %e, "imap: cannot subscribe to the new mailbox");
        }
        tracing::info!(mailbox = name, "imap: created mailbox");
        Ok(true)
    }

    async fn mailbox_exists(&mut self, name: &str) -> Result<bool, ImapError> {
        let encoded = encode_mailbox_name(name);
        let mut found = false;
        self.run(
            &format!("LIST \"\" {}", quote(&encoded)),
            COMMAND_TIMEOUT,
            |r| {
                if let Response::MailboxData(MailboxDatum::List(list)) = r
                    && same_mailbox(&list.name, &encoded)
                {
                    found = true;
                }
            },
        )
        .await?;
        Ok(found)
    }

    /// Selects mailbox `name` (read-write) and reports its UIDVALIDITY, next
    /// UID and size.
    pub async fn select(&mut self, name: &str) -> Result<Selected, ImapError> {
        let mut uid_validity = None;
        let mut uid_next = None;
        let mut exists = 0;
        self.selected = None;
        self.run(
            &format!("SELECT {}", quote(&encode_mailbox_name(name))),
            COMMAND_TIMEOUT,
            |r| match r {
                Response::MailboxData(MailboxDatum::Exists(n)) => exists = *n,
                Response::Data {
                    status: Status::Ok,
                    outcome,
                } => match outcome.code {
                    Some(imap_proto::ResponseCode::UidValidity(v)) => uid_validity = Some(v),
                    Some(imap_proto::ResponseCode::UidNext(n)) => uid_next = Some(n),
                    _ => {}
                },
                _ => {}
            },
        )
        .await?;
        // The EXISTS responses of SELECT describe the mailbox we are about
        // to scan, not news.
        self.new_data = false;
        let uid_validity = uid_validity.ok_or_else(|| {
            ImapError::fatal(
                FatalKind::Server,
                format!("the server sent no UIDVALIDITY for mailbox {name}"),
            )
        })?;
        self.selected = Some(name.to_string());
        Ok(Selected {
            uid_validity,
            uid_next,
            exists,
        })
    }

    /// The UIDs of the messages in the selected mailbox, ascending
    /// (`UID SEARCH ALL`). On a server without MOVE and UIDPLUS, messages
    /// already filed and left in place ([`MoveOutcome::FlaggedInPlace`])
    /// are left out, or they would be fetched again on every pass.
    pub async fn uids(&mut self) -> Result<Vec<u32>, ImapError> {
        let query = if self.flags_instead_of_expunge() {
            format!("UID SEARCH UNKEYWORD {FILED_KEYWORD}")
        } else {
            "UID SEARCH ALL".to_string()
        };
        // This search covers every message announced so far.
        self.new_data = false;
        let mut uids = BTreeSet::new();
        self.run(&query, COMMAND_TIMEOUT, |r| {
            if let Response::MailboxData(MailboxDatum::Search(found)) = r {
                uids.extend(found.iter().copied());
            }
        })
        .await?;
        Ok(uids.into_iter().collect())
    }

    /// Fetches the raw messages with these UIDs from the selected mailbox in
    /// one `UID FETCH … (UID BODY.PEEK[])`: the bytes exactly as stored, and
    /// `\Seen` left alone. The result is in ascending UID order; a UID that
    /// no longer exists is simply absent. The caller chooses the batch size;
    /// a few hundred UIDs keep the command line well under servers' limits
    /// (Dovecot's is 64 KiB) even when the UIDs are scattered.
    pub async fn fetch(&mut self, uids: &[u32]) -> Result<Vec<(u32, Vec<u8>)>, ImapError> {
        let wanted: BTreeSet<u32> = uids.iter().copied().collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut found: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
        self.run(
            &format!("UID FETCH {} (UID BODY.PEEK[])", uid_set(&wanted)),
            FETCH_TIMEOUT,
            |r| {
                if let Response::Fetch(_, attrs) = r {
                    let mut uid = None;
                    let mut body = None;
                    for a in attrs {
                        match a {
                            AttributeValue::Uid(u) => uid = Some(*u),
                            AttributeValue::BodySection {
                                section: None,
                                data: Some(d),
                                ..
                            } => body = Some(d),
                            _ => {}
                        }
                    }
                    // Unsolicited FETCH responses (flag changes made by
                    // another client) carry no body, or a UID we did not ask
                    // for: skip them.
                    if let (Some(uid), Some(body)) = (uid, body)
                        && wanted.contains(&uid)
                    {
                        found.entry(uid).or_insert_with(|| body.to_vec());
                    }
                }
            },
        )
        .await?;
        Ok(found.into_iter().collect())
    }

    /// Moves message `uid` of the selected mailbox to mailbox `to`: with
    /// `UID MOVE` when the server has MOVE, else `UID COPY` + `\Deleted` +
    /// `UID EXPUNGE uid` when it has UIDPLUS, else copies it and flags it in
    /// place (see [`MoveOutcome::FlaggedInPlace`]). Never a bare `EXPUNGE`,
    /// which would also remove messages other clients marked deleted.
    ///
    /// Safe to repeat: a UID that is no longer in the mailbox is not an
    /// error. A failure between the steps of the fall-backs (after the COPY)
    /// can leave a second copy in `to` when the move is retried; it never
    /// loses the message. `to` must exist ([`Session::ensure_mailbox`]).
    pub async fn move_uid(&mut self, uid: u32, to: &str) -> Result<MoveOutcome, ImapError> {
        self.move_uids(&[uid], to).await
    }

    /// [`Session::move_uid`] for several messages at once: one `UID MOVE`
    /// (or one round of the fall-back) for the whole UID set, which is
    /// what keeps a pass over thousands of messages from waiting on one
    /// server round trip, and one disk sync, per message.
    pub async fn move_uids(&mut self, uids: &[u32], to: &str) -> Result<MoveOutcome, ImapError> {
        if self.selected.is_none() {
            return Err(ImapError::fatal(
                FatalKind::Server,
                "move_uid called with no mailbox selected",
            ));
        }
        let wanted: BTreeSet<u32> = uids.iter().copied().collect();
        if wanted.is_empty() {
            return Ok(if self.has(Capability::Move) {
                MoveOutcome::Moved
            } else if self.has(Capability::Uidplus) {
                MoveOutcome::CopiedAndExpunged
            } else {
                MoveOutcome::FlaggedInPlace
            });
        }
        let set = uid_set(&wanted);
        let target = quote(&encode_mailbox_name(to));
        if self.has(Capability::Move) {
            self.run(&format!("UID MOVE {set} {target}"), COMMAND_TIMEOUT, |_| {})
                .await?;
            return Ok(MoveOutcome::Moved);
        }
        self.run(&format!("UID COPY {set} {target}"), COMMAND_TIMEOUT, |_| {})
            .await?;
        if self.has(Capability::Uidplus) {
            self.run(
                &format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"),
                COMMAND_TIMEOUT,
                |_| {},
            )
            .await?;
            self.run(&format!("UID EXPUNGE {set}"), COMMAND_TIMEOUT, |_| {})
                .await?;
            return Ok(MoveOutcome::CopiedAndExpunged);
        }
        self.run(
            &format!("UID STORE {set} +FLAGS.SILENT ({FILED_KEYWORD} \\Flagged)"),
            COMMAND_TIMEOUT,
            |_| {},
        )
        .await?;
        tracing::warn!(
            uids = %set,
            to,
            "imap: the server has neither MOVE nor UIDPLUS; the messages were copied and left flagged {FILED_KEYWORD}"
        );
        Ok(MoveOutcome::FlaggedInPlace)
    }

    /// The sizes (`RFC822.SIZE`) of these messages, ascending by UID, so
    /// that the caller can fetch in batches of bounded bytes.
    pub async fn sizes(&mut self, uids: &[u32]) -> Result<Vec<(u32, u32)>, ImapError> {
        let wanted: BTreeSet<u32> = uids.iter().copied().collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut found: std::collections::BTreeMap<u32, u32> = Default::default();
        self.run(
            &format!("UID FETCH {} (UID RFC822.SIZE)", uid_set(&wanted)),
            COMMAND_TIMEOUT,
            |r| {
                if let Response::Fetch(_, attrs) = r {
                    let mut uid = None;
                    let mut size = None;
                    for a in attrs {
                        match a {
                            AttributeValue::Uid(u) => uid = Some(*u),
                            AttributeValue::Rfc822Size(n) => size = Some(*n),
                            _ => {}
                        }
                    }
                    if let (Some(uid), Some(size)) = (uid, size)
                        && wanted.contains(&uid)
                    {
                        found.insert(uid, size);
                    }
                }
            },
        )
        .await?;
        Ok(found.into_iter().collect())
    }

    fn flags_instead_of_expunge(&self) -> bool {
        !self.has(Capability::Move) && !self.has(Capability::Uidplus)
    }

    /// Waits until the server announces new messages in the selected
    /// mailbox, `wait` passes (at most [`MAX_IDLE`]), or `cancel` fires.
    ///
    /// With IDLE, this is one IDLE command; notifications other than new
    /// messages (expunges, flag changes) are skipped and the wait goes on.
    /// Announcements that arrived earlier, with the responses to other
    /// commands, end the wait at once. Without IDLE, it sleeps for `wait`
    /// (pass the poll interval) and then sends a NOOP. Re-issuing IDLE
    /// within 29 minutes is the caller's loop: call this again.
    ///
    /// Stop it with `cancel`, not by dropping the future: IDLE has to be
    /// ended with DONE, and a session whose IDLE was dropped is unusable
    /// (every later call returns a transient error).
    pub async fn idle(
        &mut self,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<IdleOutcome, ImapError> {
        if self.inner.is_none() {
            return Err(broken());
        }
        if cancel.is_cancelled() {
            return Ok(IdleOutcome::Cancelled);
        }
        self.drain_unsolicited();
        if std::mem::take(&mut self.new_data) {
            return Ok(IdleOutcome::NewData);
        }
        let wait = wait.min(MAX_IDLE);
        if !self.has(Capability::Idle) {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(IdleOutcome::Cancelled),
                _ = tokio::time::sleep(wait) => {}
            }
            return Ok(if self.noop().await? {
                IdleOutcome::NewData
            } else {
                IdleOutcome::Timeout
            });
        }

        let inner = self.inner.take().ok_or_else(broken)?;
        let mut handle = inner.idle();
        match timeout(COMMAND_TIMEOUT, handle.init()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(transient(format!("starting IDLE: {e}"))),
            Err(_) => return Err(transient("the server did not accept IDLE in time")),
        }
        let deadline = Instant::now() + wait;
        let outcome = loop {
            // async-imap's own timeout restarts with every response,
            // including Dovecot's "* OK Still here"; the deadline here is
            // the one that counts.
            let (response, _stop) = handle.wait_with_timeout(MAX_IDLE + Duration::from_secs(60));
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break IdleOutcome::Cancelled,
                _ = tokio::time::sleep_until(deadline) => break IdleOutcome::Timeout,
                r = response => match r {
                    Ok(IdleResponse::NewData(data)) => match data.parsed() {
                        Response::MailboxData(MailboxDatum::Exists(_)) => {
                            break IdleOutcome::NewData;
                        }
                        Response::Data { status: Status::Bye, outcome } => {
                            return Err(transient(format!(
                                "the server ended the connection during IDLE: {}",
                                outcome.information.as_deref().unwrap_or("BYE")
                            )));
                        }
                        // Expunges and flag changes: nothing to fetch.
                        _ => continue,
                    },
                    Ok(IdleResponse::Timeout) => break IdleOutcome::Timeout,
                    // We never trigger the stop source, so the stream ended:
                    // the server closed the connection.
                    Ok(IdleResponse::ManualInterrupt) => {
                        return Err(transient("the server closed the connection during IDLE"));
                    }
                    Err(e) => return Err(transient(format!("during IDLE: {e}"))),
                }
            }
        };
        let inner = match timeout(COMMAND_TIMEOUT, handle.done()).await {
            Ok(Ok(inner)) => inner,
            Ok(Err(e)) => return Err(transient(format!("ending IDLE: {e}"))),
            Err(_) => return Err(transient("the server did not end IDLE in time")),
        };
        self.inner = Some(inner);
        // Responses that came between our DONE and the server's OK went to
        // async-imap's channel.
        self.drain_unsolicited();
        Ok(match outcome {
            IdleOutcome::Cancelled => IdleOutcome::Cancelled,
            IdleOutcome::NewData => {
                self.new_data = false;
                IdleOutcome::NewData
            }
            IdleOutcome::Timeout if std::mem::take(&mut self.new_data) => IdleOutcome::NewData,
            IdleOutcome::Timeout => IdleOutcome::Timeout,
        })
    }

    /// Sends NOOP, which keeps the connection alive and lets the server
    /// report changes. Returns whether new messages were announced since the
    /// last scan (and forgets that they were).
    pub async fn noop(&mut self) -> Result<bool, ImapError> {
        self.run("NOOP", COMMAND_TIMEOUT, |_| {}).await?;
        self.drain_unsolicited();
        Ok(std::mem::take(&mut self.new_data))
    }

    /// Logs out and closes the connection.
    pub async fn logout(mut self) -> Result<(), ImapError> {
        self.run("LOGOUT", COMMAND_TIMEOUT, |_| {}).await?;
        if let Some(mut inner) = self.inner.take() {
            // The TLS close_notify; the server may already have closed.
            timeout(Duration::from_secs(5), inner.get_mut().shutdown())
                .await
                .ok();
        }
        Ok(())
    }

    /// Empties async-imap's bounded channel of unsolicited responses (filled
    /// by IDLE's start and end; it drops what does not fit), noting any
    /// announcement of new messages.
    fn drain_unsolicited(&mut self) {
        let Some(inner) = &self.inner else { return };
        let mut count = 0;
        while let Ok(r) = inner.unsolicited_responses.try_recv() {
            count += 1;
            if matches!(r, UnsolicitedResponse::Exists(_)) {
                self.new_data = true;
            }
        }
        if count >= UNSOLICITED_CAPACITY {
            // Responses may have been dropped; one of them could have been
            // an EXISTS.
            self.new_data = true;
        }
    }

    /// Sends one command and reads responses up to its tagged completion,
    /// passing each untagged response to `on_untagged`. A tagged NO or BAD
    /// becomes an error; EOF, I/O errors and the time limit break the
    /// session (and are transient).
    async fn run<F>(
        &mut self,
        command: &str,
        limit: Duration,
        on_untagged: F,
    ) -> Result<(), ImapError>
    where
        F: FnMut(&Response<'_>),
    {
        let verb = command_verb(command);
        let Some(inner) = self.inner.as_mut() else {
            return Err(broken());
        };
        let new_data = &mut self.new_data;
        match timeout(
            limit,
            exchange(inner, command, &verb, new_data, on_untagged),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Failure::Refused(e))) => Err(e),
            Ok(Err(Failure::Broken(e))) => {
                self.inner = None;
                Err(e)
            }
            Err(_) => {
                self.inner = None;
                Err(transient(format!(
                    "{verb} got no complete answer within {} s",
                    limit.as_secs()
                )))
            }
        }
    }
}

/// How a command failed: the server refused it (the connection is fine),
/// or the connection broke.
enum Failure {
    Refused(ImapError),
    Broken(ImapError),
}

async fn exchange<F>(
    inner: &mut Inner,
    command: &str,
    verb: &str,
    new_data: &mut bool,
    mut on_untagged: F,
) -> Result<(), Failure>
where
    F: FnMut(&Response<'_>),
{
    let tag = inner
        .run_command(command)
        .await
        .map_err(|e| Failure::Broken(transient(format!("sending {verb}: {e}"))))?;
    let mut bye = None;
    loop {
        let Some(response) = inner
            .read_response()
            .await
            .map_err(|e| Failure::Broken(transient(format!("reading the reply to {verb}: {e}"))))?
        else {
            return Err(Failure::Broken(transient(match bye {
                Some(text) => format!("the server ended the connection during {verb}: {text}"),
                None => format!("the server closed the connection during {verb}"),
            })));
        };
        match response.parsed() {
            Response::Done {
                tag: t,
                status,
                outcome,
            } if *t == tag => {
                return match status {
                    Status::Ok => Ok(()),
                    _ => Err(Failure::Refused(refusal(verb, status, outcome))),
                };
            }
            Response::Data {
                status: Status::Bye,
                outcome,
            } => {
                // Expected after LOGOUT; otherwise the server is going away
                // and EOF follows.
                bye = Some(outcome.information.as_deref().unwrap_or("BYE").to_string());
            }
            other => {
                if matches!(other, Response::MailboxData(MailboxDatum::Exists(_))) {
                    *new_data = true;
                }
                on_untagged(other);
            }
        }
    }
}

/// Sorts a tagged NO or BAD. RFC 5530 response codes say whether a retry
/// may help. Without one (Dovecot 2.3 answers a SELECT of a missing mailbox
/// with a bare `NO Mailbox doesn't exist`), a NO to SELECT or CREATE is
/// taken as fatal (the configured mailbox cannot be used) and any other NO
/// as transient (a reconnect and a fresh look cost little); a BAD is always
/// fatal (we sent something the server will never accept).
fn refusal(verb: &str, status: &Status, outcome: &imap_proto::Outcome<'_>) -> ImapError {
    const RETRY: &[&str] = &[
        "UNAVAILABLE",
        "INUSE",
        "OVERQUOTA",
        "LIMIT",
        "SERVERBUG",
        "EXPUNGEISSUED",
    ];
    const GIVE_UP: &[&str] = &[
        "TRYCREATE",
        "NONEXISTENT",
        "NOPERM",
        "CANNOT",
        "ALREADYEXISTS",
        "CLIENTBUG",
        "CONTACTADMIN",
    ];
    let text = outcome.information.as_deref().unwrap_or("");
    // imap-proto parses the RFC 3501 codes; the RFC 5530 ones stay at the
    // start of the text.
    let code = match &outcome.code {
        Some(c) => format!("{c:?}").to_ascii_uppercase(),
        None => text
            .strip_prefix('[')
            .and_then(|t| t.split([']', ' ']).next())
            .unwrap_or("")
            .to_ascii_uppercase(),
    };
    let word = if *status == Status::Bad { "BAD" } else { "NO" };
    let message = format!("the server answered {verb} with {word}: {text}");
    let fatal = *status == Status::Bad
        || GIVE_UP.contains(&code.as_str())
        || (!RETRY.contains(&code.as_str()) && matches!(verb, "SELECT" | "CREATE"));
    if fatal {
        ImapError::fatal(FatalKind::Server, message)
    } else {
        transient(message)
    }
}

/// The command name for error messages: never the arguments, which for
/// other commands could be long and are of no use in a log line.
fn command_verb(command: &str) -> String {
    let mut words = command.split(' ');
    match words.next() {
        Some("UID") => format!("UID {}", words.next().unwrap_or("")),
        Some(w) => w.to_string(),
        None => String::new(),
    }
}

// ---- Pure helpers ------------------------------------------------------------

/// A sorted set of UIDs in IMAP sequence-set form, runs collapsed:
/// `{1,2,3,7}` → `1:3,7`.
fn uid_set(uids: &BTreeSet<u32>) -> String {
    let mut out = String::new();
    let mut iter = uids.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end.wrapping_add(1))) && end != u32::MAX {
            end = iter.next().unwrap_or(end);
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
    }
    out
}

/// A mailbox name as an IMAP quoted string. The configuration already
/// refuses quotes and line breaks; backslashes are escaped here.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Whether a name from a LIST response is the mailbox we asked about.
/// INBOX is case-insensitive (RFC 3501 §5.1); other names are not.
fn same_mailbox(listed: &str, encoded: &str) -> bool {
    listed == encoded
        || (listed.eq_ignore_ascii_case("INBOX") && encoded.eq_ignore_ascii_case("INBOX"))
}

/// Encodes a mailbox name in IMAP's modified UTF-7 (RFC 3501 §5.1.3), which
/// a server without UTF8=ACCEPT requires for anything beyond printable
/// ASCII: `Quarantäne` → `Quarant&AOQ-ne`, `&` → `&-`.
pub fn encode_mailbox_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush_utf7(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush_utf7(&mut pending, &mut out);
    out
}

/// Writes `&<modified base64 of UTF-16BE>-` for the pending characters.
fn flush_utf7(pending: &mut Vec<u16>, out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";
    if pending.is_empty() {
        return;
    }
    let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
    out.push('&');
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        // Modified base64 has no padding: emit only the sextets that carry
        // input bits.
        let sextets = chunk.len() + 1;
        for i in 0..sextets {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
        }
    }
    out.push('-');
    pending.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoauth2_response_has_the_documented_layout() {
        assert_eq!(
            xoauth2_initial_response("legal@ivpn.net", "ya29.token"),
            "user=legal@ivpn.net\x01auth=Bearer ya29.token\x01\x01"
        );
    }

    #[test]
    fn uid_sets_collapse_runs() {
        let check = |uids: &[u32], expected: &str| {
            let set: BTreeSet<u32> = uids.iter().copied().collect();
            assert_eq!(uid_set(&set), expected, "{uids:?}");
        };
        check(&[5], "5");
        check(&[1, 2, 3, 7], "1:3,7");
        check(&[9, 1, 3, 2, 10], "1:3,9:10");
        check(&[4, 6, 8], "4,6,8");
        check(&[u32::MAX - 1, u32::MAX], "4294967294:4294967295");
    }

    #[test]
    fn mailbox_names_are_modified_utf7() {
        let check = |name: &str, expected: &str| assert_eq!(encode_mailbox_name(name), expected);
        check("Processed", "Processed");
        check("INBOX.Legal Quarantine", "INBOX.Legal Quarantine");
        check("R&D", "R&-D");
        // RFC 3501 §5.1.3's example.
        check("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-");
        check("Quarantäne", "Quarant&AOQ-ne");
        // A character outside the BMP goes as a surrogate pair.
        check("📁", "&2D3cwQ-");
    }

    #[test]
    fn refusals_are_sorted_by_response_code() {
        let outcome = |text: &'static str| imap_proto::Outcome {
            code: None,
            information: Some(text.into()),
        };
        let check = |status: Status, text: &'static str, transient: bool| {
            let e = refusal("UID FETCH", &status, &outcome(text));
            assert_eq!(e.is_transient(), transient, "{text}: {e}");
            assert!(e.to_string().contains(text), "{e}");
        };
        check(Status::No, "[NONEXISTENT] Mailbox doesn't exist: X", false);
        check(Status::No, "[NOPERM] Permission denied", false);
        check(Status::No, "[UNAVAILABLE] Temporary failure", true);
        check(Status::No, "[SERVERBUG] Internal error", true);
        check(Status::No, "Something odd", true);
        check(Status::Bad, "Error in IMAP command", false);
        // A bare NO to SELECT: the mailbox cannot be used.
        let bare = outcome("Mailbox doesn't exist: Nowhere");
        assert!(!refusal("SELECT", &Status::No, &bare).is_transient());
        assert!(refusal("UID FETCH", &Status::No, &bare).is_transient());
        let busy = outcome("[INUSE] Mailbox is locked");
        assert!(refusal("SELECT", &Status::No, &busy).is_transient());
        let try_create = imap_proto::Outcome {
            code: Some(imap_proto::ResponseCode::TryCreate),
            information: Some("Mailbox doesn't exist".into()),
        };
        assert!(!refusal("UID MOVE", &Status::No, &try_create).is_transient());
    }

    #[test]
    fn command_verbs_never_carry_arguments() {
        assert_eq!(command_verb("UID FETCH 1:3 (UID BODY.PEEK[])"), "UID FETCH");
        assert_eq!(command_verb("SELECT \"INBOX\""), "SELECT");
        assert_eq!(command_verb("NOOP"), "NOOP");
    }
}
