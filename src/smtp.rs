//! Edge: one SMTP transaction per reply.
//!
//! lettre's low-level async connection (tokio + rustls with aws-lc-rs, the
//! system's roots plus `smtp.ca_file`) is driven step by step rather than
//! through a transport, because what a failure means depends on where it
//! happened:
//!
//! ```text
//! connect ─ TLS ─ EHLO ─ STARTTLS ─ AUTH ─ MAIL ─│─ RCPT ─ DATA ─│─ content ─ "."  ─ final reply
//!        session: Transient                     │ 4xx Transient │ no reply: Unknown
//!                                               │ 5xx Permanent │ 4xx Transient, 5xx Permanent
//! ```
//!
//! Before `RCPT` nothing is about this message: a refusal there (TLS, a
//! wrong password, a server that will not take `MAIL FROM:<>`) is for the
//! operator to fix, so it is always retried. `RCPT` and `DATA` answers are
//! about this message and this recipient. Once the content has started to
//! go out, the server may have taken the message even if no final answer
//! arrives (a dropped connection, a timeout): that is [`Delivery::Unknown`].
//! The caller is told, through the `content_starts` future of
//! [`Client::send`], just before the first byte of content goes out, so it
//! can record that moment durably: a process killed before it certainly
//! delivered nothing.
//!
//! The password is read from `smtp.password_file` for every connection (a
//! rotated credential needs no restart) and never logged; lettre's own
//! tracing is not compiled in.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use lettre::Address;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
#[allow(deprecated)]
use lettre::transport::smtp::client::AsyncNetworkStream;
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters,
};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use crate::config::{self, Tls};

/// How long connecting (TCP and implicit TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the polite `QUIT` after a transaction may take.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The server took the message; its final reply.
    Accepted(String),
    /// Not accepted, and certainly not delivered: try again later.
    Transient(String),
    /// Refused for good (a 5xx answer about this message or recipient).
    Permanent(String),
    /// The content went out, but no final reply came back: the server may
    /// or may not have taken it.
    Unknown(String),
}

/// Where in the transaction an attempt is (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Session,
    Recipient,
    Content,
}

/// An SMTP client for the configured server.
#[derive(Clone)]
pub struct Client {
    host: String,
    port: u16,
    tls: Tls,
    /// Built once: loading the system's roots is not free.
    tls_parameters: Option<TlsParameters>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    /// `None`: the null reverse path `<>` (RFC 3834 §3.3).
    envelope_from: Option<Address>,
    hello: ClientId,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Prepares a client for `[smtp]`: TLS parameters with the extra CA
    /// file, the envelope sender, the EHLO name.
    pub fn new(cfg: &config::Smtp) -> anyhow::Result<Client> {
        // A literal IPv6 address may be written in brackets.
        let host = cfg.host.trim_matches(|c| c == '[' || c == ']').to_string();
        let tls_parameters = match cfg.tls {
            Tls::None => None,
            Tls::Implicit | Tls::Starttls => {
                let mut builder = TlsParameters::builder(host.clone());
                if let Some(ca) = &cfg.ca_file {
                    let pem = std::fs::read(ca)
                        .with_context(|| format!("cannot read smtp.ca_file {}", ca.display()))?;
                    let cert = Certificate::from_pem(&pem).map_err(|e| {
                        anyhow::anyhow!("smtp.ca_file {}: not PEM certificates: {e}", ca.display())
                    })?;
                    builder = builder.add_root_certificate(cert);
                }
                Some(
                    builder
                        .build_rustls()
                        .map_err(|e| anyhow::anyhow!("cannot set up TLS for SMTP: {e}"))?,
                )
            }
        };
        let envelope_from = match &cfg.envelope_from {
            Some(a) => Some(a.parse::<Address>().map_err(|e| {
                anyhow::anyhow!("smtp.envelope_from `{a}` is not usable as an envelope sender: {e}")
            })?),
            None => None,
        };
        Ok(Client {
            host,
            port: cfg.port,
            tls: cfg.tls,
            tls_parameters,
            username: cfg.username.clone(),
            password_file: cfg.password_file.clone(),
            envelope_from,
            hello: hello_name(),
        })
    }

    /// Connects, secures, greets and authenticates, then says goodbye,
    /// sending nothing: the `check-config --connect` probe. The text says
    /// what was checked, or what failed.
    pub async fn probe(&self) -> Result<String, String> {
        let session = tokio::time::timeout(CONNECT_TIMEOUT, self.session())
            .await
            .map_err(|_| format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))?;
        let mut conn = match session {
            Ok(c) => c,
            Err(e) => {
                return Err(match classify(Phase::Session, &e) {
                    Delivery::Accepted(t)
                    | Delivery::Transient(t)
                    | Delivery::Permanent(t)
                    | Delivery::Unknown(t) => t,
                });
            }
        };
        let _ = tokio::time::timeout(QUIT_TIMEOUT, conn.quit()).await;
        let tls = match self.tls {
            Tls::Implicit => "implicit TLS",
            Tls::Starttls => "STARTTLS",
            Tls::None => "no TLS",
        };
        Ok(match &self.username {
            Some(u) => format!("{}:{} ({tls}), authenticated as {u}", self.host, self.port),
            None => format!("{}:{} ({tls}), no AUTH configured", self.host, self.port),
        })
    }

    /// The envelope sender as the log and the audit events show it.
    pub fn envelope_from(&self) -> String {
        self.envelope_from
            .as_ref()
            .map_or_else(|| "<>".to_string(), |a| format!("<{a}>"))
    }

    /// Sends `message` to `recipient` in one transaction, within `limit`.
    /// `content_starts` runs once the server has said it will take the
    /// content (after `DATA`), before any of it is written: the caller
    /// records there, durably, that delivery may happen from now on. If it
    /// fails, the transaction is abandoned with nothing sent (transient).
    pub async fn send<F>(
        &self,
        recipient: &str,
        message: &[u8],
        limit: Duration,
        content_starts: F,
    ) -> Delivery
    where
        F: Future<Output = Result<(), String>>,
    {
        let mut phase = Phase::Session;
        let mut conn = None;
        let result = tokio::time::timeout(
            limit,
            self.transaction(&mut phase, &mut conn, recipient, message, content_starts),
        )
        .await;
        let delivery = match result {
            Ok(Ok(reply)) => Delivery::Accepted(reply),
            Ok(Err(e)) => classify(phase, &e),
            Err(_) => {
                let what = format!("no answer within {} s", limit.as_secs());
                if phase == Phase::Content {
                    Delivery::Unknown(format!("{what} after the message content was sent"))
                } else {
                    Delivery::Transient(what)
                }
            }
        };
        // Closing is a courtesy outside the transaction's time limit: the
        // outcome is settled, and a server slow to say goodbye must not
        // turn an accepted message into an unknown one.
        if let Some(mut conn) = conn {
            let accepted = matches!(delivery, Delivery::Accepted(_));
            let close = async move {
                if accepted {
                    let _ = conn.quit().await;
                } else {
                    conn.abort().await;
                }
            };
            let _ = tokio::time::timeout(QUIT_TIMEOUT, close).await;
        }
        delivery
    }

    /// The transaction up to the server's final reply; the connection is
    /// left in `slot` for [`Client::send`] to close.
    async fn transaction(
        &self,
        phase: &mut Phase,
        slot: &mut Option<AsyncSmtpConnection>,
        recipient: &str,
        message: &[u8],
        content_starts: impl Future<Output = Result<(), String>>,
    ) -> Result<String, Failure> {
        let conn = slot.insert(self.session().await?);
        self.envelope_and_content(conn, phase, recipient, message, content_starts)
            .await
    }

    /// Connects, secures, greets and authenticates.
    async fn session(&self) -> Result<AsyncSmtpConnection, Failure> {
        let tcp = self.connect().await?;
        let stream: Box<dyn AsyncTokioStream> = match (self.tls, &self.tls_parameters) {
            (Tls::Implicit, Some(params)) => {
                // lettre's own TLS (rustls, the same roots as STARTTLS)
                // over our socket; its stream is futures-io, hence compat.
                #[allow(deprecated)]
                let mut net = AsyncNetworkStream::use_existing_tokio1(Box::new(tcp));
                tokio::time::timeout(CONNECT_TIMEOUT, net.upgrade_tls(params.clone()))
                    .await
                    .map_err(|_| {
                        Failure::Other(format!(
                            "TLS handshake: no answer within {} s",
                            CONNECT_TIMEOUT.as_secs()
                        ))
                    })?
                    .map_err(|e| Failure::smtp("TLS handshake", e))?;
                Box::new(ImplicitTls(net.compat()))
            }
            _ => Box::new(tcp),
        };
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.hello)
            .await
            .map_err(|e| Failure::smtp("greeting", e))?;
        if self.tls == Tls::Starttls {
            // Never fall back to plain text: without STARTTLS there is no
            // transaction.
            if !conn.can_starttls() {
                return Err(Failure::Other(
                    "the server does not offer STARTTLS (smtp.tls = \"starttls\")".into(),
                ));
            }
            let params = self
                .tls_parameters
                .clone()
                .ok_or_else(|| Failure::Other("no TLS parameters".into()))?;
            conn.starttls(params, &self.hello)
                .await
                .map_err(|e| Failure::smtp("STARTTLS", e))?;
        }
        if let Some(user) = &self.username {
            let password = match &self.password_file {
                Some(path) => crate::config::read_secret(path, "smtp.password_file")
                    .map_err(Failure::Other)?,
                None => String::new(),
            };
            conn.auth(
                &[Mechanism::Plain, Mechanism::Login],
                &Credentials::new(user.clone(), password),
            )
            .await
            .map_err(|e| Failure::smtp("AUTH", e))?;
        }
        Ok(conn)
    }

    /// The TCP connection, with Nagle's algorithm off. lettre writes the
    /// content and the final `.` in two writes; with Nagle on, the second
    /// waits for the server's delayed ACK of the first (40 ms on Linux), on
    /// every message: ten replies took half a second on loopback.
    async fn connect(&self) -> Result<TcpStream, Failure> {
        let what = format!("connecting to {}:{}", self.host, self.port);
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| {
            Failure::Other(format!(
                "{what}: no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| Failure::Other(format!("{what}: {e}")))?;
        tcp.set_nodelay(true)
            .map_err(|e| Failure::Other(format!("{what}: cannot set TCP_NODELAY: {e}")))?;
        Ok(tcp)
    }

    async fn envelope_and_content(
        &self,
        conn: &mut AsyncSmtpConnection,
        phase: &mut Phase,
        recipient: &str,
        message: &[u8],
        content_starts: impl Future<Output = Result<(), String>>,
    ) -> Result<String, Failure> {
        let to: Address = recipient.parse().map_err(|e| {
            Failure::Refused(format!(
                "the recipient `{recipient}` is not an address SMTP can carry: {e}"
            ))
        })?;
        let info = conn.server_info();
        let mut params = Vec::new();
        if !recipient.is_ascii() {
            if !info.supports_feature(Extension::SmtpUtfEight) {
                return Err(Failure::Refused(
                    "the recipient address is not ASCII and the server lacks SMTPUTF8".into(),
                ));
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        if !message.is_ascii() {
            if !info.supports_feature(Extension::EightBitMime) {
                return Err(Failure::Refused(
                    "the message is not ASCII and the server lacks 8BITMIME".into(),
                ));
            }
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        conn.command(Mail::new(self.envelope_from.clone(), params))
            .await
            .map_err(|e| Failure::smtp("MAIL FROM", e))?;
        *phase = Phase::Recipient;
        conn.command(Rcpt::new(to, vec![]))
            .await
            .map_err(|e| Failure::smtp("RCPT TO", e))?;
        conn.command(Data)
            .await
            .map_err(|e| Failure::smtp("DATA", e))?;
        content_starts.await.map_err(|e| {
            Failure::Other(format!(
                "cannot record that the content is going out, so none was sent: {e}"
            ))
        })?;
        // From here on the server may end up with the message whatever
        // happens to the connection.
        *phase = Phase::Content;
        let reply = conn
            .message(message)
            .await
            .map_err(|e| Failure::smtp("end of data", e))?;
        Ok(reply_text(reply.code().to_string(), reply.message()))
    }
}

/// lettre's implicit-TLS stream as the tokio stream lettre takes.
#[allow(deprecated)]
#[derive(Debug)]
struct ImplicitTls(Compat<AsyncNetworkStream>);

#[allow(deprecated)]
impl AsyncTokioStream for ImplicitTls {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().peer_addr()
    }
}

impl tokio::io::AsyncRead for ImplicitTls {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ImplicitTls {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A failed step.
#[derive(Debug)]
enum Failure {
    /// lettre's error at a named step.
    Smtp {
        step: &'static str,
        error: lettre::transport::smtp::Error,
    },
    /// This message cannot be sent as it is.
    Refused(String),
    /// Anything else (a missing password file, no STARTTLS).
    Other(String),
}

impl Failure {
    fn smtp(step: &'static str, error: lettre::transport::smtp::Error) -> Failure {
        Failure::Smtp { step, error }
    }
}

/// What a failure at `phase` means for the message.
fn classify(phase: Phase, failure: &Failure) -> Delivery {
    match failure {
        Failure::Refused(why) => Delivery::Permanent(why.clone()),
        Failure::Other(why) => Delivery::Transient(why.clone()),
        Failure::Smtp { step, error } => {
            let text = format!("{step}: {}", one_line(&error.to_string()));
            // A numbered answer is the server's verdict; anything else is a
            // broken connection, a timeout or garbage.
            let answered = error.status().is_some();
            match phase {
                Phase::Session => Delivery::Transient(text),
                Phase::Recipient if error.is_permanent() => Delivery::Permanent(text),
                Phase::Recipient => Delivery::Transient(text),
                Phase::Content if answered && error.is_permanent() => Delivery::Permanent(text),
                Phase::Content if answered => Delivery::Transient(text),
                Phase::Content => Delivery::Unknown(format!(
                    "{text} (after the message content was sent, with no final reply)"
                )),
            }
        }
    }
}

fn reply_text<'a>(code: String, lines: impl Iterator<Item = &'a str>) -> String {
    let text: Vec<&str> = lines.collect();
    one_line(&format!("{code} {}", text.join(" ")))
}

/// Server text as one bounded line (it goes into logs and events).
fn one_line(s: &str) -> String {
    crate::text::clean(s, 300)
}

/// The name given in EHLO: this host's name as the kernel knows it, or an
/// address literal when it has none usable.
fn hello_name() -> ClientId {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let usable = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if usable {
        ClientId::Domain(name)
    } else {
        ClientId::Ipv4(std::net::Ipv4Addr::LOCALHOST)
    }
}
